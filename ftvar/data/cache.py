"""A study's tokenized data as arrays, read straight from the Arrow cache (pyarrow and numpy; no datasets).

`ftvar.data.prepare` builds `<out>/<study>/cache/<key>/` once per distinct tokenization (tokenizer,
max_length, train_limit). A trial only reads it: each split's (train, eval, and test when the study holds one
out) token ids padded into one [rows × longest] int32 array, the row lengths and the labels (and a sentence
pair's token type ids, padded alike, where its tokenizer makes them). Reading memory-maps the Arrow files;
padding is one vectorised copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ftvar.errors import FtvarError
from ftvar.store.files import load_json
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.trial import Settings, Trial, data_key, expand, settings

# 4: texts.json (the eval and test texts), a held-out test split; 3: one folder per data key; 2: deterministic
# trained WordPiece vocabulary. A sentence pair's cache adds a `token_type_ids` column without a new version:
# a single text's cache is as before, and a pair study's data key (its text columns) is new.
CACHE_VERSION = 4


@dataclass(frozen=True)
class Split:
    """A tokenized split: ids padded with the pad id to the longest row, the row lengths, the labels."""

    ids: np.ndarray  # [rows, longest] int32
    lengths: np.ndarray  # [rows] int32
    labels: np.ndarray  # [rows] int64
    types: np.ndarray | None = None  # [rows, longest] int8: a sentence pair's token type ids (0 pads), if any

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Prepared:
    """What a trial needs: the tokenized splits, the tokenizer folder and the label names."""

    folder: Path
    label_names: list[str]
    n_train: int
    n_eval: int
    vocab_size: int
    pad_token_id: int
    train: Split
    eval: Split
    test: Split | None = None  # the held-out test split, when the study has one

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / "tokenizer"


def read_meta(folder: Path) -> dict[str, Any] | None:
    meta = load_json(folder / "meta.json")
    return meta if isinstance(meta, dict) else None


def cache_folder(study: Study, paths: StudyPaths, trial: Trial) -> tuple[Path, str]:
    """Where a trial's tokenized data lives, and its data key."""
    key = data_key(study, settings(study, trial))
    return paths.cache_for(key), key


def is_ready(folder: Path, key: str) -> bool:
    meta = read_meta(folder)
    return meta is not None and meta.get("key") == key and meta.get("version") == CACHE_VERSION


def variants(study: Study, paths: StudyPaths) -> dict[Path, tuple[str, Settings]]:
    """Every cache folder the study's trials need: folder → (data key, settings of a trial that needs it)."""
    out: dict[Path, tuple[str, Settings]] = {}
    for trial in expand(study):
        folder, key = cache_folder(study, paths, trial)
        out.setdefault(folder, (key, settings(study, trial)))
    return out


def is_prepared(study: Study, paths: StudyPaths) -> bool:
    """Whether every cache the study needs is built (checked without importing `datasets`)."""
    return all(is_ready(folder, key) for folder, (key, _) in variants(study, paths).items())


def read_split(folder: Path, pad_id: int) -> Split:
    """One split saved by `datasets.Dataset.save_to_disk` (columns `input_ids`, `label`, and a sentence pair's
    `token_type_ids` where its tokenizer makes them) as arrays."""
    state = json.loads((folder / "state.json").read_text())
    batches = []
    for entry in state["_data_files"]:
        with pa.memory_map(str(folder / entry["filename"])) as source:
            batches.append(pa.ipc.open_stream(source).read_all())
    table = pa.concat_tables(batches)
    padded, lengths = _padded(table.column("input_ids").combine_chunks(), pad_id, np.int32)
    labels = integers(table.column("label").combine_chunks()).astype(np.int64)
    types = None
    if "token_type_ids" in table.column_names:
        types, _ = _padded(table.column("token_type_ids").combine_chunks(), 0, np.int8)
    return Split(padded, lengths, labels, types)


def _padded(rows: pa.ListArray, pad: int, dtype: type[np.integer[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a [rows × longest] array padded with `pad`, and the row lengths."""
    offsets = integers(rows.offsets)
    flat = integers(rows.values).astype(dtype, copy=False)
    lengths = np.diff(offsets).astype(np.int32)
    longest = int(lengths.max()) if len(lengths) else 1
    padded = np.full((len(lengths), longest), pad, dtype=dtype)
    padded[np.arange(longest)[None, :] < lengths[:, None]] = flat[offsets[0] : offsets[-1]]
    return padded, lengths


def integers(array: pa.Array) -> np.ndarray:
    """An integer Arrow array as numpy: a view of its data buffer when it has no nulls. (pyarrow's
    `to_numpy` imports pandas on its first call, about a second of a trial's start-up on a GPU node.)"""
    kind = array.type
    if not pa.types.is_integer(kind) or array.null_count:
        return np.asarray(array.to_numpy(zero_copy_only=False))
    dtype = np.dtype(f"{'u' if pa.types.is_unsigned_integer(kind) else ''}int{kind.bit_width}")
    if len(array) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset : array.offset + len(array)]


def load_prepared(study: Study, paths: StudyPaths, trial: Trial) -> Prepared:
    """The tokenized splits of a trial's data. Raises when the cache is missing or of another study."""
    folder, key = cache_folder(study, paths, trial)
    if not is_ready(folder, key):
        raise FtvarError(
            f"no tokenized cache for study {study.name} (hash {study.hash}) in {folder}: "
            "`ftvar launch` builds it before any trial runs"
        )
    meta = read_meta(folder)
    assert meta is not None
    pad = int(meta["pad_token_id"] or 0)
    return Prepared(
        folder=folder,
        label_names=list(meta["label_names"]),
        n_train=int(meta["n_train"]),
        n_eval=int(meta["n_eval"]),
        vocab_size=int(meta["vocab_size"]),
        pad_token_id=pad,
        train=read_split(folder / "train", pad),
        eval=read_split(folder / "eval", pad),
        test=read_split(folder / "test", pad) if int(meta.get("n_test") or 0) else None,
    )
