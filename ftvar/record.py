"""JSON trial records: the only channel between the cluster and the analysis.

One file per trial, `<out>/<study>/records/<trial_id>.json`, written atomically: a temp file in the same
folder (`.<id>.json.<random>.part`, never matched by `*.json`), flushed, fsynced, renamed over the target,
and the folder fsynced (ftvar.atomic). Readers therefore see either no file or a whole one. A record never
holds a non-finite number (JSON has none; Python's reader would accept `NaN`) and never a secret: the study
config it embeds has its `[cluster.env]` values and anything secret-looking redacted. This module needs only
the standard library, orjson and jsonschema-rs: the collector imports it without torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from ftvar import __version__
from ftvar.atomic import write_atomic as _write_file
from ftvar.errors import RecordError

SCHEMA_VERSION = 2  # 2: init_seed/order_seed and other axes in params (readers accept 1)
STATUSES = ("ok", "failed", "diverged")
METRICS = ("accuracy", "f1", "eval_loss", "train_loss")
REDACTED = "<redacted>"
# names of variables and keys that hold secrets (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD,
# ...; not TOKENIZERS_PARALLELISM)
SECRET_NAME_RE = re.compile(
    r"(^|[^A-Za-z])(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?)([^A-Za-z]|$)",
    re.IGNORECASE,
)
# values that look like credentials whatever their name: Hugging Face, GitHub, OpenAI-style and AWS keys,
# Slack tokens, PEM private keys
SECRET_VALUE_RE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,})\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), shipped as ftvar/schemas/record.schema.json."""
    loaded: dict[str, Any] = json.loads(
        resources.files("ftvar.schemas").joinpath("record.schema.json").read_text()
    )
    return loaded


@cache
def _validator() -> jsonschema_rs.Validator:
    """The schema compiled by jsonschema-rs (3 µs a record against fastjsonschema's 21 µs; the same answers:
    both take 16.0 for an integer, as JSON Schema says)."""
    return jsonschema_rs.validator_for(schema(), formats={"date-time": _is_datetime}, validate_formats=True)


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def validate(record: Any, check_finite: bool = True) -> None:
    """Raise RecordError naming the first field that breaks the schema, or the first non-finite number
    (`check_finite=False` for what `read_record`'s parser gave: plain JSON values, none non-finite)."""
    if check_finite:
        where = _non_finite(record, "")
        if where is not None:
            raise RecordError(
                f"not a valid ftvar record: {where} is not a finite number; non-finite metrics are never ok "
                "(a trial whose loss or metrics are NaN or infinite is 'diverged', with null metrics)"
            )
        try:  # as it will be written: jsonschema-rs takes exact JSON types only (not torch's version string)
            record = json.loads(json.dumps(record))
        except (TypeError, ValueError) as exc:
            raise RecordError(f"not a valid ftvar record: not JSON ({exc})") from None
    try:
        _validator().validate(record)
    except jsonschema_rs.ValidationError as exc:
        where = ".".join(str(k) for k in exc.instance_path) or "the record"
        raise RecordError(f"not a valid ftvar record: {where}: {exc.message}") from None
    except ValueError as exc:  # jsonschema-rs: "Recursion limit reached" (before 0.35 also huge integers)
        why = "nested deeper than any record is" if "recursion" in str(exc).lower() else "unreadable"
        raise RecordError(f"not a valid ftvar record: {why} ({exc})") from None


def _non_finite(value: Any, where: str) -> str | None:
    """The path (`metrics.accuracy = nan`) of the first NaN or infinity inside `value`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the record'} = {value}"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def redact(value: Any, secret: bool = False) -> Any:
    """A copy of `value` (JSON-like) with secrets replaced by "<redacted>": everything under a secret-looking
    key, strings that look like credentials, and the password of a URL."""
    if isinstance(value, dict):
        return {k: redact(v, secret or bool(SECRET_NAME_RE.search(str(k)))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secret) for v in value]
    if isinstance(value, str):
        if secret or SECRET_VALUE_RE.search(value):
            return REDACTED
        return URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
    return REDACTED if secret and value is not None else value


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """The study config as records embed it: `[cluster.env]` values are redacted whatever their names (they
    are written into sbatch scripts, not into the shared record), and secret-looking values anywhere."""
    out: dict[str, Any] = redact(config)
    cluster = out.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("env"), dict):
        cluster["env"] = dict.fromkeys(cluster["env"], REDACTED)
    return out


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
    """Write JSON to `path` so that no reader ever sees a partial file (ValueError on NaN or infinity)."""
    _write_file(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Redact secrets, validate, then write atomically; returns what was written. A record that breaks the
    schema or holds a non-finite number is refused with RecordError: it is never written."""
    study = record.get("study")
    if isinstance(study, dict) and isinstance(study.get("config"), dict):
        record = {**record, "study": {**study, "config": redact_config(study["config"])}}
    validate(record)
    write_atomic(path, record)
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


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record read as version 2: its one `seed` set both the init and the data-order seed."""
    if record.get("schema_version") == 1:
        params = record["params"]
        baseline = record.get("kind") == "baseline"
        params.setdefault("init_seed", params.get("seed"))
        params.setdefault("order_seed", None if baseline else params.get("seed"))
    return record


def load_json(path: Path) -> Any:
    """A file's JSON value, or None when it is missing, unreadable or not JSON (deep nesting included: it
    exhausts the parser's recursion)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


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
