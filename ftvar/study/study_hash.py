"""The study hash: what changes a trial's result (model, data contents, training), not where files lie.

A local model or tokenizer folder counts by its files' contents (sha256; cached by path, size and modification
time, so a repeated launch reads nothing twice), a Hub model or dataset by its name and, where the local
Hugging Face cache knows it, the commit its `main` resolves to. `TRAINING` versions what ftvar's own training
does with the same settings: records made by an ftvar that trained differently never mix with new ones.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftvar.study.synthetic import GENERATOR_VERSION

# 2: every trial draws its own dropout masks (ftvar.train.noise), TF32 only when asked for; 1: before
TRAINING = 2


def file_digest(path: str) -> str:
    """sha256 of a file's contents."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _digest_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("FTVAR_CACHE") or Path(base) / "ftvar") / "digests.json"


def cached_digest(path: Path) -> str:
    """sha256 of a file, remembered across runs by (real path, size, modification time): model weights are
    read once, not at every launch. The cache is best effort: an unwritable one only costs the reading."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = _digest_cache()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return str(known[key])
    digest = file_digest(str(path))
    known[key] = digest
    with contextlib.suppress(OSError):
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".digests.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(known, fh)
            os.replace(tmp, store)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return digest


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def hub_revision(repo_id: str, kind: str = "model") -> str | None:
    """The commit `main` of a Hub repository resolves to in the local Hugging Face cache, or None when the
    cache does not hold it (read from the cache's refs, never over the network)."""
    ref = _hub_cache() / f"{kind}s--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        revision = ref.read_text().strip()
    except OSError:
        return None
    return revision or None


@functools.cache
def model_identity(value: str | None) -> Any:
    """A model or tokenizer as the hash sees it: a local folder by its files' names and contents (not its
    path); a Hub id by name and, where the local cache knows it, revision; else as is."""
    if not isinstance(value, str) or value == "train":
        return value
    folder = Path(value)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        return {"folder": folder.name, "files": [(p.name, cached_digest(p)) for p in files]}
    revision = hub_revision(value)
    return {"hub": value, "revision": revision} if revision else value


def _hub_dataset(data: Mapping[str, Any]) -> str | None:
    """The dataset id of `data.hub` ("glue/sst2" → "glue"; "org/name/config" → "org/name")."""
    hub = data.get("hub")
    if not isinstance(hub, str):
        return None
    if data.get("hub_config") is not None or "/" not in hub:
        return hub
    return hub.rsplit("/", 1)[0]


def study_hash(
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    train: Mapping[str, Any],
    training: int | None = TRAINING,
) -> str:
    """12 hex digits over what changes a trial's result: model, data (file contents, not paths), training
    settings and how ftvar trains (`training`; None for hashes of the data alone).

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
    dataset = _hub_dataset(d)
    revision = hub_revision(dataset, "dataset") if dataset else None
    if revision:
        d["hub_revision"] = revision
    payload: dict[str, Any] = {"model": m, "data": d, "train": dict(train)}
    if training is not None:
        payload["training"] = training
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
