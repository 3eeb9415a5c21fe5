"""What a valid trial record is: its JSON Schema (`record.schema.json`, shipped beside this module), the check
that a record is finite and follows it, and how an older record is read as the current version.

jsonschema-rs only: the collector and every reader import this without torch.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs

from ftvar.errors import RecordError

SCHEMA_VERSION = 2  # 2: init_seed/order_seed and other axes in params (readers accept 1)
STATUSES = ("ok", "failed", "diverged")
METRICS = ("accuracy", "f1", "eval_loss", "train_loss", "mcc")  # mcc: absent in older records


def json_schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), shipped as ftvar/store/record.schema.json."""
    loaded: dict[str, Any] = json.loads(
        resources.files("ftvar.store").joinpath("record.schema.json").read_text()
    )
    return loaded


@cache
def _validator() -> jsonschema_rs.Validator:
    """The schema compiled by jsonschema-rs (3 µs a record against fastjsonschema's 21 µs; the same answers:
    both take 16.0 for an integer, as JSON Schema says)."""
    return jsonschema_rs.validator_for(
        json_schema(), formats={"date-time": _is_datetime}, validate_formats=True
    )


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


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record read as version 2: its one `seed` set both the init and the data-order seed."""
    if record.get("schema_version") == 1:
        params = record["params"]
        baseline = record.get("kind") == "baseline"
        params.setdefault("init_seed", params.get("seed"))
        params.setdefault("order_seed", None if baseline else params.get("seed"))
    return record
