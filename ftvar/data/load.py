"""A study's raw data: the train and eval splits (and a held-out test split when the study has one) loaded
(Hub, local files or synthetic) with datasets, as a `text` column (and `text_pair` for a sentence pair) and a
`label` column, subsampled, and the labels mapped to ids."""

from __future__ import annotations

import csv
import os
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, DatasetDict

from ftvar.data.hub import hf_home
from ftvar.errors import FtvarError
from ftvar.study import synthetic
from ftvar.study.config import DataConfig, Study

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()


def prefetch_hint(study: Study) -> str:
    name = study.source.removeprefix("builtin:")
    return f"run `ftvar prefetch {name}` on a machine with internet access (HF_HOME={hf_home()})"


def not_loadable(study: Study, what: str, exc: Exception) -> FtvarError:
    """Offline (every command but prefetch), a load failure means the cache lacks it: say how to fill it."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return FtvarError(f"{what} is not in the Hugging Face cache: {prefetch_hint(study)}")
    return FtvarError(f"cannot load {what}: {exc}")


def _load_files(
    d: DataConfig, train: str, evaluation: str, cache_dir: Path, test: str | None = None
) -> DatasetDict:
    fmt = d.file_format(train)
    kwargs: dict[str, Any] = {}
    if fmt in ("tsv", "csv"):
        builder = "csv"
        kwargs["delimiter"] = "\t" if fmt == "tsv" else ","
        if fmt == "tsv":
            kwargs["quoting"] = csv.QUOTE_NONE
        if not d.header:
            kwargs["header"] = None
    else:
        builder = {"jsonl": "json", "parquet": "parquet"}[fmt]
    files = {"train": train, "eval": evaluation, **({"test": test} if test is not None else {})}
    try:
        loaded = datasets.load_dataset(builder, data_files=files, cache_dir=str(cache_dir), **kwargs)
    except Exception as exc:  # a parser error from pandas/pyarrow: report it with the file name
        raise FtvarError(f"cannot read {' / '.join(files.values())} as {fmt}: {exc}") from None
    assert isinstance(loaded, DatasetDict)
    return loaded


def load_hub(study: Study) -> DatasetDict:
    d = study.data
    name, config = d.hub_id_and_config()
    try:
        parts = {
            split: datasets.load_dataset(name, config, split=hub_split)
            for split, hub_split in (
                ("train", d.train_split),
                ("eval", d.eval_split),
                *((("test", d.test_split),) if d.test_split is not None else ()),
            )
        }
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
        raise not_loadable(study, f"dataset {d.hub}", exc) from None
    return DatasetDict({k: v for k, v in parts.items() if isinstance(v, Dataset)})


def load_raw(study: Study, work: Path, d: DataConfig | None = None) -> DatasetDict:
    """The train and eval splits with the columns `text` (str), `text_pair` (str, for a sentence pair) and
    `label` (as in the source). A text column that is missing, empty or not strings is an error naming it."""
    d = d or study.data
    if d.source == "synthetic":
        assert d.synthetic is not None
        s = d.synthetic
        train, evaluation = synthetic.write_splits(work / "synthetic", s.train, s.eval, s.seed, s.label_noise)
        raw = _load_files(DataConfig(format="tsv"), str(train), str(evaluation), work / "hf")
    elif d.source == "files":
        assert d.train is not None and d.eval is not None
        raw = _load_files(d, d.train, d.eval, work / "hf", d.test)
    else:
        raw = load_hub(study)
    text_cols, label_col = [str(c) for c in d.text_columns], str(d.label_column)
    if d.source == "synthetic":
        text_cols, label_col = ["sentence"], "label"
    if label_col in text_cols:
        raise FtvarError(f"data.text_column and data.label_column are both {label_col!r}")
    names = dict(zip(text_cols, TEXT_NAMES, strict=False)) | {label_col: "label"}
    for split in raw:
        columns = raw[split].column_names
        for col in names:
            key = "label_column" if col == label_col else "text_column"
            if col not in columns:
                raise FtvarError(
                    f"data.{key} = {col!r} is not a column of the {split} split; "
                    f"columns: {', '.join(columns)}"
                )
        renames = {c: n for c, n in names.items() if c != n}
        renamed = raw[split].select_columns(list(names)).rename_columns(renames)
        for col, name in zip(text_cols, TEXT_NAMES, strict=False):
            check_text(renamed, name, col, split, columns)
        raw[split] = renamed.filter(partial(_complete, list(names.values())))
    return raw


def _complete(columns: list[str], row: dict[str, Any]) -> bool:
    """A row with a value in every column (rows with a missing text or label are left out)."""
    return all(row[c] is not None for c in columns)


TEXT_NAMES = ("text", "text_pair")  # the text column(s) as the tokenizer takes them: text, or a pair


def check_text(ds: Dataset, name: str, col: str, split: str, columns: list[str]) -> None:
    """A text column must hold text: strings, not all of them missing or blank."""
    feature = ds.features[name]
    dtype = getattr(feature, "dtype", type(feature).__name__)
    where = f"data.text_column {col!r} of the {split} split"
    values = [v for v in ds.unique(name) if v is not None]
    if not values or (dtype in ("string", "large_string") and not any(str(v).strip() for v in values)):
        raise FtvarError(f"{where} is empty; columns: {', '.join(columns)}")
    if dtype not in ("string", "large_string"):
        raise FtvarError(f"{where} is not text (its values are {dtype}); columns: {', '.join(columns)}")


def limit(ds: Dataset, limit: int, seed: int) -> Dataset:
    if limit <= 0 or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit)).flatten_indices()


def split_test(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """The eval rows split into (eval, test): a seeded `fraction` of them held out as the test split, each
    part in the rows' original order. Both parts must keep a row."""
    n_test = round(fraction * len(ds))
    if not 0 < n_test < len(ds):
        raise FtvarError(
            f"data.test_fraction = {fraction:g} of {len(ds)} eval rows leaves "
            f"{'no test row' if n_test <= 0 else 'no eval row'}: choose a fraction that keeps rows in both"
        )
    order = np.random.default_rng(seed).permutation(len(ds))
    test_rows = np.sort(order[:n_test])
    eval_rows = np.sort(order[n_test:])
    return ds.select(eval_rows.tolist()).flatten_indices(), ds.select(test_rows.tolist()).flatten_indices()


def map_labels(raw: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Labels → ids 0..K-1 in sorted order of the train split's values; eval (and test) labels must all be
    known."""
    train_values = set(raw["train"].unique("label"))
    for split in ("eval", "test"):
        if split not in raw:
            continue
        unknown = set(raw[split].unique("label")) - train_values
        if unknown:
            shown = ", ".join(sorted(map(str, unknown))[:5])
            raise FtvarError(f"the {split} split has labels the train split lacks: {shown}")
    if len(train_values) < 2:
        raise FtvarError(f"the train split has {len(train_values)} label value(s); a classifier needs ≥ 2")
    ordered = sorted(train_values, key=lambda v: (isinstance(v, str), v))
    index = {v: i for i, v in enumerate(ordered)}
    mapped = raw.map(lambda batch: {"label": [index[v] for v in batch["label"]]}, batched=True)
    mapped = mapped.cast_column("label", datasets.Value("int64"))
    return mapped, [str(v) for v in ordered]
