"""The study hash: what changes a trial's result (model, data contents, training), not where files lie."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftvar.study.synthetic import GENERATOR_VERSION


def file_digest(path: str) -> str:
    """sha256 of a file's contents."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_identity(value: str | None) -> Any:
    """A local model or tokenizer folder by name, file sizes and config digest (not its path); else as is."""
    if not isinstance(value, str) or value == "train" or not Path(value).is_dir():
        return value
    cfg = Path(value) / "config.json"
    listing = sorted((p.name, p.stat().st_size) for p in Path(value).iterdir() if p.is_file())
    return {
        "folder": Path(value).name,
        "files": listing,
        "config": file_digest(str(cfg)) if cfg.is_file() else None,
    }


def study_hash(model: Mapping[str, Any], data: Mapping[str, Any], train: Mapping[str, Any]) -> str:
    """12 hex digits over what changes a trial's result: model, data (file contents, not paths), training.

    Takes the `[model]`, `[data]` and `[train]` tables as plain dicts, without the settings that are axes. The
    grid, the analysis and the cluster settings are left out, so that growing the grid keeps the records of
    trials already run.
    """
    m = dict(model)
    if "name_or_path" in m:  # absent when it is an axis (trial ids cover it then)
        m["name_or_path"] = None if m.get("tiny") is not None else model_identity(m["name_or_path"])
    m["tokenizer"] = model_identity(m.get("tokenizer"))
    d = dict(data)
    for key in ("train", "eval", "test"):
        if d.get(key) is not None:
            d[key] = {"name": Path(d[key]).name, "sha256": file_digest(d[key])}
    if d.get("synthetic") is not None:
        d["synthetic"] = {**d["synthetic"], "generator_version": GENERATOR_VERSION}
    payload = {"model": m, "data": d, "train": dict(train)}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
