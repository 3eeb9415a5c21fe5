"""A study's records as an export reads them: every valid record of this study version, in trial-id order,
with its hyperparameters, final metrics and learning curve as plain values.

Each file is read and validated as the collector reads it (`ftvar.store.record.read_record`); a file it
would skip is skipped here too and listed. A trial has one record file (`<trial_id>.json`), so there is one
record per trial id.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ftvar.errors import FtvarError, RecordError
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_record
from ftvar.study.config import Study

# what an export writes from a record: bump it when that changes, so that a re-export rewrites every run
EXPORT_FORMAT = 1
METRIC_ORDER = ("accuracy", "f1", "mcc", "eval_loss", "train_loss")  # shown first, in this order
CURVE_AXES = ("step", "epoch")  # a curve point's position; every other key of a point is a metric

HParam = bool | int | float | str


@dataclass(frozen=True)
class StudyRecords:
    """The records of one study version, ready to export."""

    study: str
    hash: str
    root: Path  # the study's folder, <out>/<study>
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    @property
    def report(self) -> Path:
        return StudyPaths(self.root).report


def read_study_records(study: Study, out: Path) -> StudyRecords:
    """Every valid record of this study (its name and hash) under `out`; FtvarError when there is none."""
    paths = StudyPaths.of(out, study.name)
    if not paths.records.is_dir():
        raise FtvarError(
            f"no records folder {paths.records}: nothing to export (run `ftvar launch {study.name}` first, "
            "or pass the --out it was launched with)"
        )
    records: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(paths.records.glob("*.json")):
        try:
            rec = read_record(path)
        except RecordError as exc:
            skipped.append((str(path), str(exc)))
            continue
        name, hash_ = rec["study"]["name"], rec["study"]["hash"]
        if (name, hash_) != (study.name, study.hash):
            skipped.append(
                (str(path), f"record of study {name!r} (hash {hash_}), not {study.name!r} ({study.hash})")
            )
            continue
        records.append(rec)
    if not records:
        why = f"; {len(skipped)} file(s) skipped, e.g. {skipped[0][1]}" if skipped else ""
        raise FtvarError(
            f"no records of study {study.name!r} (hash {study.hash}) in {paths.records}: "
            f"nothing to export{why}"
        )
    return StudyRecords(study.name, study.hash, paths.root, records, skipped)


def hparams(record: dict[str, Any]) -> dict[str, HParam]:
    """The trial's hyperparameters: every axis and both seeds, without those it does not have (null: a
    baseline's learning rate, a seed shorthand that does not apply)."""
    return {k: v for k, v in record["params"].items() if v is not None}


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The metrics the record ends with (all it has: accuracy, f1, eval_loss, train_loss, mcc, …), without
    those that could not be computed (null)."""
    return {k: float(v) for k, v in record["metrics"].items() if _number(v)}


def curve_points(record: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """The learning curve (absent from older records) as (step, {metric: value}), null values left out."""
    points = []
    for point in record.get("curve") or []:
        values = {k: float(v) for k, v in point.items() if k not in CURVE_AXES and _number(v)}
        if values:
            points.append((int(point["step"]), values))
    return points


def final_step(record: dict[str, Any]) -> int:
    """The step at which the final metrics hold: the trial's last optimizer step (0 for a baseline)."""
    steps = record.get("steps")
    if isinstance(steps, int):
        return steps
    points = record.get("curve") or []
    return int(points[-1]["step"]) if points else 0


def seconds(timestamp: str) -> float:
    """An ISO 8601 time of a record as seconds since the epoch."""
    return datetime.fromisoformat(timestamp).timestamp()


def fingerprint(record: dict[str, Any]) -> str:
    """A digest of the record and of what an export makes of it: equal digests, equal exports."""
    raw = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"%d:" % EXPORT_FORMAT + raw).hexdigest()


def metric_names(records: list[dict[str, Any]]) -> list[str]:
    """Every final metric any record has, the usual ones first."""
    names = {k for rec in records for k in final_metrics(rec)}
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
