"""Prepare a study's data once: check that its models are cached, tokenize every split into an Arrow cache,
and fetch models, tokenizers and Hub datasets ahead of time (`ftvar prefetch`).

`prepare()` runs once per study, before any trial (on the login node for SLURM). It writes one folder per
distinct tokenization the study needs, `<out>/<study>/cache/<key>/` (tokenizer, max_length, train_limit;
ftvar.study.trial.data_key) with the train, eval and (when the study holds one out) test splits and the eval
and test texts for the report's per-example tables, atomically: each is built in a temp folder beside it and
renamed into place, so trials either see a complete cache or none. Trials only read it (ftvar.data.cache),
without importing datasets.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from ftvar.data.cache import CACHE_VERSION, is_ready, variants
from ftvar.data.load import limit, load_hub, load_raw, map_labels, not_loadable, split_test
from ftvar.data.tokenizer import load_tokenizer
from ftvar.store.files import write_failed, write_json
from ftvar.store.paths import TEXTS_FILE, StudyPaths
from ftvar.store.record import utc_now
from ftvar.study.config import ModelConfig, Study
from ftvar.study.trial import Settings, expand, settings


def check_model_available(study: Study, m: ModelConfig) -> None:
    """Fail fast, before tokenizing, when a Hub model is not cached (trials never download)."""
    if m.tiny is not None:
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(m.name_or_path)
    except (OSError, ValueError) as exc:
        raise not_loadable(study, f"model {m.name_or_path}", exc) from None


def prepare(study: Study, paths: StudyPaths) -> bool:
    """Build every tokenized cache the study needs that is not up to date. Returns True when it built one."""
    todo = [(f, key, s) for f, (key, s) in variants(study, paths).items() if not is_ready(f, key)]
    if not todo:
        return False
    for model in dict.fromkeys(s.model for _, _, s in todo):
        check_model_available(study, model)
    out_existed = paths.root.parent.exists()
    for folder, key, s in todo:
        work = paths.root.parent
        try:
            paths.root.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{study.name}.cache.", dir=paths.root.parent))
            _build_cache(study, s, key, work)
        except BaseException as exc:
            if work != paths.root.parent:
                shutil.rmtree(work, ignore_errors=True)
            if not out_existed:
                shutil.rmtree(paths.root.parent, ignore_errors=True)
            if isinstance(exc, OSError) and _refused_write(exc, paths.root.parent):
                raise write_failed(folder, exc, "build the data cache") from None
            raise
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                stale = folder.parent / f".{key}-stale-{os.getpid()}"
                folder.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            (work / "out").rename(folder)
        except OSError as exc:
            raise write_failed(folder, exc, "build the data cache") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return True


def _refused_write(exc: OSError, out: Path) -> bool:
    """Whether an error while building a cache is the file system refusing a write (a full disk, a
    read-only one, a name too long, a permission on the output folder), not a problem of the data."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG):
        return True
    return exc.filename is not None and str(exc.filename).startswith(str(out))


def _build_cache(study: Study, s: Settings, key: str, work: Path) -> None:
    d = s.data
    raw = load_raw(study, work, d)
    splits = {
        "train": limit(raw["train"], d.train_limit, d.data_seed),
        "eval": limit(raw["eval"], d.eval_limit, d.data_seed),
    }
    if "test" in raw:
        splits["test"] = raw["test"]
    elif d.test_fraction is not None:
        splits["eval"], splits["test"] = split_test(splits["eval"], d.test_fraction, d.data_seed)
    raw, label_names = map_labels(DatasetDict(splits))
    tokenizer = load_tokenizer(study, s.model, raw["train"])
    out = work / "out"
    tokenizer.save_pretrained(str(out / "tokenizer"))
    pair = "text_pair" in raw["train"].column_names
    # the texts of the evaluated rows, for the report's per-example tables (trials read only the token ids);
    # a sentence pair as "first ‖ second"
    texts = {
        split: [f"{a} ‖ {b}" for a, b in zip(raw[split]["text"], raw[split]["text_pair"], strict=True)]
        if pair
        else list(raw[split]["text"])
        for split in ("eval", "test")
        if split in raw
    }
    write_json(out / TEXTS_FILE, {"format": "ftvar-texts/1", **texts})

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        """Token ids (a pair as the tokenizer joins two texts, the longer one truncated first) and, for a
        pair whose tokenizer makes them, the token type ids (which text each token belongs to)."""
        texts = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        enc = tokenizer(*texts, truncation="longest_first", max_length=d.max_length)
        out = {"input_ids": enc["input_ids"]}
        if pair and "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    text_columns = [c for c in ("text", "text_pair") if c in raw["train"].column_names]
    tokenized = raw.map(encode, batched=True, batch_size=1000, remove_columns=text_columns)
    for split in tokenized:
        tokenized[split].flatten_indices().save_to_disk(str(out / split))
    lengths = [len(x) for x in tokenized["train"]["input_ids"]]
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "study_hash": study.hash,
        "label_names": label_names,
        "n_train": len(tokenized["train"]),
        "n_eval": len(tokenized["eval"]),
        "n_test": len(tokenized["test"]) if "test" in tokenized else 0,
        "mean_train_tokens": sum(lengths) / max(1, len(lengths)),
        "max_length": d.max_length,
        "train_limit": d.train_limit,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "text_pair": pair,
        "token_type_ids": "token_type_ids" in tokenized["train"].column_names,
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
        load_hub(study)
        fetched.append(f"dataset {study.data.hub}")
    return list(dict.fromkeys(fetched))
