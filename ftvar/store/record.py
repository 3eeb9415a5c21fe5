"""Trial records on disk: one JSON file per trial, the only channel between the cluster and the analysis.

One file per trial, `<out>/<study>/records/<trial_id>.json`, written atomically (ftvar.store.files): readers
see either no file or a whole one. A record is redacted (ftvar.store.redact) and validated
(ftvar.store.schema) before it is written, and validated again when it is read. It never holds a non-finite
number (JSON has none; Python's reader would accept `NaN`). Standard library, orjson and jsonschema-rs only:
the collector imports this without torch.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ftvar.errors import RecordError
from ftvar.store.files import write_json
from ftvar.store.redact import redact_config
from ftvar.store.schema import upgrade, validate


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: non-finite numbers become null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Redact secrets, validate, then write atomically; returns what was written. A record that breaks the
    schema or holds a non-finite number is refused with RecordError: it is never written."""
    study = record.get("study")
    if isinstance(study, dict) and isinstance(study.get("config"), dict):
        record = {**record, "study": {**study, "config": redact_config(study["config"])}}
    validate(record)
    write_json(path, record)
    return record


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise _NonFinite(text)
    return value


def _parse(raw: bytes) -> Any:
    """The JSON value of a record file, read by orjson (2 µs a record; an integer beyond 64 bits comes as a
    float, which the collector's range check catches); where orjson refuses the text, by Python's reader,
    which names a non-finite number (`NaN`, `Infinity`, `1e999`: orjson refuses them all alike) and reads
    what orjson does not (UTF-16, lone surrogates)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)


def read_record(path: Path) -> dict[str, Any]:
    """Parse and validate one record file; RecordError says why it was rejected."""
    try:
        data = _parse(path.read_bytes())
    except _NonFinite as exc:
        raise RecordError(
            f"{path.name}: holds the non-finite number {exc} (not JSON; non-finite metrics are never ok)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RecordError(f"{path.name}: unreadable or not JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "trial_id" not in data:
        raise RecordError(f"{path.name}: not an ftvar record (no schema_version/trial_id)")
    try:
        validate(data, check_finite=False)
    except RecordError as exc:
        raise RecordError(f"{path.name}: {exc}") from None
    if path.stem != data["trial_id"]:
        raise RecordError(f"{path.name}: file name does not match trial_id {data['trial_id']!r}")
    return upgrade(data)


def read_status(path: Path) -> str | None:
    """The status of a record file, or None when it is missing, unreadable or invalid: a record the
    collector would skip (corrupt, non-finite, breaking the schema) does not count, so a launch reruns it."""
    try:
        return str(read_record(path)["status"])
    except RecordError:
        return None


def study_hashes(records_dir: Path) -> dict[str, int]:
    """How many records of each study hash a records folder holds (to refuse mixing studies)."""
    counts: dict[str, int] = {}
    if not records_dir.is_dir():
        return counts
    for path in records_dir.glob("*.json"):
        try:
            h = json.loads(path.read_bytes())["study"]["hash"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
        if isinstance(h, str):
            counts[h] = counts.get(h, 0) + 1
    return counts
