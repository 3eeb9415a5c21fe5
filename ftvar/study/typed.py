"""Typed TOML: build nested frozen dataclasses from parsed TOML, with errors that name the key.

Unknown keys are errors that list the valid keys; a scalar where a list is expected is a one-value list (a
`tuple[X, ...]` field takes a list only, kept as a tuple).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ftvar.errors import StudyError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(item) or _type_name(item)}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except StudyError:
                continue
        raise StudyError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        items = value if isinstance(value, list) else [value]  # a scalar is a one-value list
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:  # tuple[X, ...]: a list of X, kept as a tuple (hashable, like the frozen tables)
        if not isinstance(value, list):
            raise StudyError(f"{where} must be {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise StudyError(f"{where} must be a table, got {value!r}")
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise StudyError(f"{where} must be a table, got {value!r}")
        return build(typing.cast(type, tp), value, where)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool) and where.endswith("env"):
        return str(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise StudyError(f"{where} must be {_type_name(tp)}, got {value!r}")


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        prefix = f"{where}." if where else ""
        raise StudyError(
            f"unknown key {prefix}{unknown[0]}; valid keys{' in [' + where + ']' if where else ''}: "
            + ", ".join(valid)
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)
