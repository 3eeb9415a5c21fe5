"""The study hash: what changes a trial's result (model, data contents, training), not where files lie."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftvar.config import ModelConfig, Study


def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _model_identity(m: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = dataclasses.asdict(m)
    for key in ("name_or_path", "tokenizer"):
        value = out[key]
        if m.tiny is not None and key == "name_or_path":
            out[key] = None  # unused
        elif isinstance(value, str) and value != "train" and Path(value).is_dir():
            cfg = Path(value) / "config.json"
            listing = sorted((p.name, p.stat().st_size) for p in Path(value).iterdir() if p.is_file())
            out[key] = {
                "folder": Path(value).name,
                "files": listing,
                "config": _file_digest(str(cfg)) if cfg.is_file() else None,
            }
    return out


def study_hash(study: Study) -> str:
    """12 hex digits over what changes a trial's result: model, data (file contents, not paths), training.

    The grid, the analysis and the cluster settings are left out, so that growing the grid keeps the records
    of trials already run.
    """
    data = dataclasses.asdict(study.data)
    for key in ("train", "eval"):
        if data[key] is not None:
            data[key] = {"name": Path(data[key]).name, "sha256": _file_digest(data[key])}
    if study.data.synthetic is not None:
        from ftvar.synthetic import GENERATOR_VERSION

        data["synthetic"]["generator_version"] = GENERATOR_VERSION
    payload = {"model": _model_identity(study.model), "data": data, "train": dataclasses.asdict(study.train)}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
