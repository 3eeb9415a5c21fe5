"""A study's state on disk: record statuses, the launches ledger (`launches.jsonl`) and the mixing check."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftvar.config import Study
from ftvar.errors import FtvarError
from ftvar.record import read_status, study_hashes, utc_now
from ftvar.trial import StudyPaths, Trial, expand


def trial_statuses(
    study: Study, paths: StudyPaths, trials: Sequence[Trial] | None = None
) -> dict[str, str | None]:
    """Trial id → status of its record (None: no record yet)."""
    return {t.trial_id: read_status(paths.record(t.trial_id)) for t in (trials or expand(study))}


def pending(study: Study, paths: StudyPaths) -> tuple[list[Trial], list[Trial]]:
    """(trials to run, trials skipped because they already have an ok record)."""
    todo: list[Trial] = []
    done: list[Trial] = []
    for trial in expand(study):
        (done if read_status(paths.record(trial.trial_id)) == "ok" else todo).append(trial)
    return todo, done


def check_no_mixing(study: Study, paths: StudyPaths) -> None:
    """Refuse to add records of this study next to records of a different study hash."""
    foreign = {h: n for h, n in study_hashes(paths.records).items() if h != study.hash}
    if foreign:
        h, n = next(iter(foreign.items()))
        raise FtvarError(
            f"{paths.records} holds {n} record(s) of another version of study {study.name!r} "
            f"(hash {h}; this one is {study.hash}): its model, data or training settings changed. "
            "Use another name or --out, or move the old records away"
        )


def append_launch(paths: StudyPaths, entry: dict[str, Any]) -> None:
    """Add one launch (executor, job or array ids, trial ids) to `launches.jsonl`."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.launches.open("a") as fh:
        fh.write(json.dumps({"at": utc_now(), **entry}) + "\n")


def read_launches(paths: StudyPaths) -> list[dict[str, Any]]:
    """Every launch of the study, oldest first; unreadable lines are skipped."""
    if not paths.launches.is_file():
        return []
    out = []
    for line in paths.launches.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
