"""Data for a study: load (Hub, local files or synthetic), map labels, tokenize once into an Arrow cache.

`prepare()` runs once per study, before any trial (on the login node for SLURM). It writes one folder per
distinct tokenization the study needs, `<out>/<study>/cache/<key>/` (tokenizer, max_length, train_limit;
ftvar.trial.data_key), atomically: each is built in a temp folder beside it and renamed into place, so trials
either see a complete cache or none. Trials only read it (ftvar.train.cache), without importing datasets.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from ftvar import synthetic
from ftvar.config import DataConfig, ModelConfig, Study
from ftvar.errors import FtvarError
from ftvar.record import utc_now
from ftvar.train.cache import CACHE_VERSION, is_ready, variants
from ftvar.trial import Settings, StudyPaths, expand, settings

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def prefetch_hint(study: Study) -> str:
    name = study.source.removeprefix("builtin:")
    return f"run `ftvar prefetch {name}` on a machine with internet access (HF_HOME={hf_home()})"


def not_loadable(study: Study, what: str, exc: Exception) -> FtvarError:
    """Offline (every command but prefetch), a load failure means the cache lacks it: say how to fill it."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return FtvarError(f"{what} is not in the Hugging Face cache: {prefetch_hint(study)}")
    return FtvarError(f"cannot load {what}: {exc}")


def hf_home() -> str:
    return os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))


# ------------------------------------------------------------------------------------------------ loading


def _load_files(d: DataConfig, train: str, evaluation: str, cache_dir: Path) -> DatasetDict:
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
    try:
        loaded = datasets.load_dataset(
            builder, data_files={"train": train, "eval": evaluation}, cache_dir=str(cache_dir), **kwargs
        )
    except Exception as exc:  # a parser error from pandas/pyarrow: report it with the file name
        raise FtvarError(f"cannot read {train} / {evaluation} as {fmt}: {exc}") from None
    assert isinstance(loaded, DatasetDict)
    return loaded


def _load_hub(study: Study) -> DatasetDict:
    d = study.data
    name, config = d.hub_id_and_config()
    try:
        parts = {
            split: datasets.load_dataset(name, config, split=hub_split)
            for split, hub_split in (("train", d.train_split), ("eval", d.eval_split))
        }
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
        raise not_loadable(study, f"dataset {d.hub}", exc) from None
    return DatasetDict({k: v for k, v in parts.items() if isinstance(v, Dataset)})


def load_raw(study: Study, work: Path, d: DataConfig | None = None) -> DatasetDict:
    """The train and eval splits with two columns, `text` (str) and `label` (as in the source)."""
    d = d or study.data
    if d.source == "synthetic":
        assert d.synthetic is not None
        s = d.synthetic
        train, evaluation = synthetic.write_splits(work / "synthetic", s.train, s.eval, s.seed, s.label_noise)
        raw = _load_files(DataConfig(format="tsv"), str(train), str(evaluation), work / "hf")
    elif d.source == "files":
        assert d.train is not None and d.eval is not None
        raw = _load_files(d, d.train, d.eval, work / "hf")
    else:
        raw = _load_hub(study)
    text_col, label_col = (str(c) for c in (d.text_column, d.label_column))
    if d.source == "synthetic":
        text_col, label_col = "sentence", "label"
    if text_col == label_col:
        raise FtvarError(f"data.text_column and data.label_column are both {text_col!r}")
    for split in ("train", "eval"):
        columns = raw[split].column_names
        for key, col in (("text_column", text_col), ("label_column", label_col)):
            if col not in columns:
                raise FtvarError(
                    f"data.{key} = {col!r} is not a column of the {split} split; "
                    f"columns: {', '.join(columns)}"
                )
        renames = {c: n for c, n in ((text_col, "text"), (label_col, "label")) if c != n}
        renamed = raw[split].select_columns([text_col, label_col]).rename_columns(renames)
        raw[split] = renamed.filter(lambda row: row["text"] is not None and row["label"] is not None)
    return raw


def _limit(ds: Dataset, limit: int, seed: int) -> Dataset:
    if limit <= 0 or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit)).flatten_indices()


def map_labels(raw: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Labels → ids 0..K-1 in sorted order of the train split's values; eval labels must all be known."""
    train_values = set(raw["train"].unique("label"))
    eval_values = set(raw["eval"].unique("label"))
    unknown = eval_values - train_values
    if unknown:
        shown = ", ".join(sorted(map(str, unknown))[:5])
        raise FtvarError(f"the eval split has labels the train split lacks: {shown}")
    if len(train_values) < 2:
        raise FtvarError(f"the train split has {len(train_values)} label value(s); a classifier needs ≥ 2")
    ordered = sorted(train_values, key=lambda v: (isinstance(v, str), v))
    index = {v: i for i, v in enumerate(ordered)}
    mapped = raw.map(lambda batch: {"label": [index[v] for v in batch["label"]]}, batched=True)
    mapped = mapped.cast_column("label", datasets.Value("int64"))
    return mapped, [str(v) for v in ordered]


# --------------------------------------------------------------------------------------------- tokenizer


def wordpiece_vocab(
    texts: Iterator[list[str]], vocab_size: int, normalizer: Any, pre_tokenizer: Any
) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: special tokens, every character (alone and as `##c`), then the
    most frequent words, ties broken alphabetically. The library's WordPieceTrainer numbers subword tokens
    in hash-map order, so its vocabularies differ between runs on the same data (huggingface/tokenizers#1794);
    a study rebuilt from scratch must tokenize exactly as before."""
    counts: Counter[str] = Counter()
    for batch in texts:
        for text in batch:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    ranked = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += ranked[: max(0, vocab_size - len(tokens))]
    return {token: i for i, token in enumerate(tokens)}


def train_tokenizer(texts: Iterator[list[str]], vocab_size: int) -> Any:
    """A lower-cased BERT-style WordPiece tokenizer whose vocabulary is learned from the given texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(texts, vocab_size, normalizer, pre_tokenizer)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_tokenizer(study: Study, m: ModelConfig, train: Dataset) -> Any:
    from transformers import AutoTokenizer

    if m.tokenizer == "train":
        batches = (train[i : i + 1000]["text"] for i in range(0, len(train), 1000))
        return train_tokenizer(batches, m.vocab_size)
    source = m.tokenizer or m.name_or_path
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise not_loadable(study, f"tokenizer {source}", exc) from None


def check_model_available(study: Study, m: ModelConfig) -> None:
    """Fail fast, before tokenizing, when a Hub model is not cached (trials never download)."""
    if m.tiny is not None:
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(m.name_or_path)
    except (OSError, ValueError) as exc:
        raise not_loadable(study, f"model {m.name_or_path}", exc) from None


# ---------------------------------------------------------------------------------------------- the cache


def prepare(study: Study, paths: StudyPaths) -> bool:
    """Build every tokenized cache the study needs that is not up to date. Returns True when it built one."""
    todo = [(f, key, s) for f, (key, s) in variants(study, paths).items() if not is_ready(f, key)]
    if not todo:
        return False
    for model in dict.fromkeys(s.model for _, _, s in todo):
        check_model_available(study, model)
    out_existed = paths.root.parent.exists()
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    for folder, key, s in todo:
        work = Path(tempfile.mkdtemp(prefix=f".{study.name}.cache.", dir=paths.root.parent))
        try:
            _build_cache(study, s, key, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if not out_existed:
                shutil.rmtree(paths.root.parent, ignore_errors=True)
            raise
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                stale = folder.parent / f".{key}-stale-{os.getpid()}"
                folder.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            (work / "out").rename(folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return True


def _build_cache(study: Study, s: Settings, key: str, work: Path) -> None:
    d = s.data
    raw = load_raw(study, work, d)
    raw = DatasetDict(
        {
            "train": _limit(raw["train"], d.train_limit, d.data_seed),
            "eval": _limit(raw["eval"], d.eval_limit, d.data_seed),
        }
    )
    raw, label_names = map_labels(raw)
    tokenizer = load_tokenizer(study, s.model, raw["train"])
    out = work / "out"
    tokenizer.save_pretrained(str(out / "tokenizer"))

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], truncation=True, max_length=d.max_length)
        return {"input_ids": enc["input_ids"]}

    tokenized = raw.map(encode, batched=True, batch_size=1000, remove_columns=["text"])
    for split in ("train", "eval"):
        tokenized[split].flatten_indices().save_to_disk(str(out / split))
    lengths = [len(x) for x in tokenized["train"]["input_ids"]]
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "study_hash": study.hash,
        "label_names": label_names,
        "n_train": len(tokenized["train"]),
        "n_eval": len(tokenized["eval"]),
        "mean_train_tokens": sum(lengths) / max(1, len(lengths)),
        "max_length": d.max_length,
        "train_limit": d.train_limit,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "created_at": utc_now(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def prefetch(study: Study) -> list[str]:
    """Download every model, tokenizer and Hub dataset the study uses into the HF cache. Returns what was
    fetched."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fetched = []
    models = dict.fromkeys(settings(study, t).model for t in expand(study))
    for m in models:
        if m.tiny is None:
            AutoModelForSequenceClassification.from_pretrained(m.name_or_path)
            fetched.append(f"model {m.name_or_path}")
        if m.tokenizer not in (None, "train") or m.tiny is None:
            AutoTokenizer.from_pretrained(m.tokenizer or m.name_or_path)
            fetched.append(f"tokenizer {m.tokenizer or m.name_or_path}")
    if study.data.source == "hub":
        _load_hub(study)
        fetched.append(f"dataset {study.data.hub}")
    return list(dict.fromkeys(fetched))
