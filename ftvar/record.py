"""JSON trial records: the only channel between the cluster and the analysis.

One file per trial, `<out>/<study>/records/<trial_id>.json`, written atomically: a temp file in the same
folder (`.<id>.<random>.part`, never matched by `*.json`), flushed, fsynced, renamed over the target, and the
folder fsynced. Readers therefore see either no file or a whole one. This module needs only the standard
library and fastjsonschema: the collector imports it without torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema

from ftvar import __version__
from ftvar.errors import RecordError

SCHEMA_VERSION = 2  # 2: init_seed/order_seed and other axes in params (readers accept 1)
STATUSES = ("ok", "failed", "diverged")
METRICS = ("accuracy", "f1", "eval_loss", "train_loss")


def schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), shipped as ftvar/schemas/record.schema.json."""
    loaded: dict[str, Any] = json.loads(
        resources.files("ftvar.schemas").joinpath("record.schema.json").read_text()
    )
    return loaded


@cache
def _validator() -> Callable[[Any], Any]:
    return fastjsonschema.compile(schema(), formats={"date-time": _is_datetime})


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def validate(record: Any) -> None:
    """Raise RecordError naming the first field that breaks the schema."""
    try:
        _validator()(record)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise RecordError(f"not a valid ftvar record: {exc.message}") from None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: non-finite numbers become null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def environment(device: str, torch_version: str, transformers_version: str) -> dict[str, Any]:
    env = os.environ
    image = (
        env.get("FTVAR_CONTAINER_IMAGE") or env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER")
    )
    return {
        "host": socket.gethostname(),
        "device": device,
        "torch": torch_version,
        "transformers": transformers_version,
        "ftvar": __version__,
        "python": platform.python_version(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "container_image": image,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
    }


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; records are read by others on shared storage
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Validate, then write atomically. A record that breaks the schema is a bug: it is never written."""
    validate(record)
    write_atomic(path, record)


def read_record(path: Path) -> dict[str, Any]:
    """Parse and validate one record file; RecordError says why it was rejected."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path.name}: unreadable or not JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "trial_id" not in data:
        raise RecordError(f"{path.name}: not an ftvar record (no schema_version/trial_id)")
    try:
        validate(data)
    except RecordError as exc:
        raise RecordError(f"{path.name}: {exc}") from None
    if path.stem != data["trial_id"]:
        raise RecordError(f"{path.name}: file name does not match trial_id {data['trial_id']!r}")
    return upgrade(data)


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record read as version 2: its one `seed` set both the init and the data-order seed."""
    if record.get("schema_version") == 1:
        params = record["params"]
        baseline = record.get("kind") == "baseline"
        params.setdefault("init_seed", params.get("seed"))
        params.setdefault("order_seed", None if baseline else params.get("seed"))
    return record


def read_status(path: Path) -> str | None:
    """The status of a record file, or None when it is missing or unreadable (cheap: no schema check)."""
    try:
        status = json.loads(path.read_bytes()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in STATUSES else None


def study_hashes(records_dir: Path) -> dict[str, int]:
    """How many records of each study hash a records folder holds (to refuse mixing studies)."""
    counts: dict[str, int] = {}
    if not records_dir.is_dir():
        return counts
    for path in records_dir.glob("*.json"):
        try:
            h = json.loads(path.read_bytes())["study"]["hash"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        counts[h] = counts.get(h, 0) + 1
    return counts
