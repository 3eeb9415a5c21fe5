"""A study folder as a launch finds it: each trial's record status, the trials left to run, whether the folder
holds another version of the study, and whether `--out` can be written.

A study folder holds one version of a study (one study hash): its records, the launches in `launches.jsonl`
(each with the hash it ran) and the data cache (`cache/<key>/meta.json` names its hash) must all agree before
anything is added.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from ftvar.errors import FtvarError
from ftvar.store.files import read_json
from ftvar.store.launches import read_launches
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_status, study_hashes
from ftvar.study.config import Study
from ftvar.study.trial import Trial, expand


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
    """Refuse to add anything of this study to a folder that holds another version of it (another study
    hash): in its records, in the launches of `launches.jsonl` (an array that has written no record yet) or
    in its data cache (which a launch would rebuild under the running tasks)."""
    found: list[tuple[str, str]] = []  # (hash, what)
    for h, n in study_hashes(paths.records).items():
        if h != study.hash:
            found.append((h, f"{n} record(s) in {paths.records}"))
    arrays: dict[str, list[str]] = {}
    for entry in read_launches(paths):
        launched_hash = entry.get("hash")
        if isinstance(launched_hash, str) and launched_hash != study.hash:
            arrays.setdefault(launched_hash, []).append(str(entry.get("array_id") or entry.get("executor")))
    for h, launched in arrays.items():
        found.append((h, f"{len(launched)} launch(es) in {paths.launches} ({', '.join(launched[:3])})"))
    for folder in sorted(paths.cache.glob("*/")) if paths.cache.is_dir() else []:
        meta = read_json(folder / "meta.json")  # one cache per tokenization, each says which study built it
        built_by = meta.get("study_hash") if meta is not None else None
        if isinstance(built_by, str) and built_by != study.hash:
            found.append((built_by, f"the data cache {folder}"))
    if found:
        h = found[0][0]
        what = "; ".join(w for fh, w in found if fh == h)
        raise FtvarError(
            f"{paths.root} belongs to another version of study {study.name!r} (hash {h}; this one is "
            f"{study.hash}): {what}. Its model, data or training settings changed, or an ftvar that trains "
            "differently made it (0.1 drew dropout from a shared generator). Use another name or "
            f"--out, or move {paths.root} away"
        )


def check_out(out: Path, study_root: Path | None = None) -> None:
    """`--out` must be a folder this process can write in, or a new folder inside one; so must the study's
    folder in it, when it exists."""
    out = Path(out).expanduser()
    if study_root is not None and study_root.is_dir():
        _probe(study_root, f"--out {out}")
        return
    if out.exists() and not out.is_dir():
        raise FtvarError(f"--out {out} is a file, not a folder")
    target = out if out.exists() else out.parent
    if not out.exists() and not target.is_dir():
        what = "is a file" if target.exists() else "does not exist"
        raise FtvarError(f"--out {out}: its parent folder {target} {what}; create the folder first")
    _probe(target, f"--out {out}")


def _probe(folder: Path, what: str) -> None:
    """Raise FtvarError unless a file can be created in `folder` (root ignores permission bits, so only
    trying tells; O_TMPFILE, where it exists, leaves nothing visible)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise FtvarError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None
