"""Sentence pairs: `data.text_column = [a, b]` is read, checked, encoded as a pair into the cache (with token
type ids where the tokenizer makes them) and its token types reach every engine whose model takes them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig
from transformers.models.distilbert import DistilBertForSequenceClassification

from ftvar.data.cache import Split, load_prepared
from ftvar.data.load import limit, load_raw
from ftvar.data.prepare import prepare
from ftvar.errors import FtvarError, StudyError
from ftvar.store.paths import StudyPaths
from ftvar.study.config import TrainConfig, load_study
from ftvar.study.trial import Trial, expand
from ftvar.train.engine import FitJob, collate, for_model, takes_token_types
from ftvar.train.fast import FastEngine
from ftvar.train.plain import PlainEngine
from ftvar.train.runner import run_trial
from ftvar.train.stack import StackEngine
from tests.helpers import ftvar, minilm_package, one_error_line, shared_data

PAIR = 'data.text_column=["sentence1", "sentence2"]'


def files(tmp_path: Path, header: str, rows: list[str]) -> list[str]:
    """--set overrides for a train and an eval TSV with these rows."""
    for split in ("train", "eval"):
        (tmp_path / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n")
    return [f"data.train={tmp_path / 'train.tsv'}", f"data.eval={tmp_path / 'eval.tsv'}"]


def test_text_column_takes_a_pair_of_names_or_indices_and_single_texts_keep_their_hash(
    tmp_path: Path,
) -> None:
    data = files(tmp_path, "a\tb\tlabel", ["x y\tz\t0", "u\tv w\t1"])
    study = load_study("paper", [*data, 'data.text_column=["a", "b"]'])
    assert study.data.text_column == ("a", "b") and study.data.text_columns == ("a", "b")
    single = load_study("paper", data)
    assert load_study("paper", [*data, 'data.text_column=["sentence"]']).hash == single.hash
    assert study.hash != single.hash and study.data_hash != single.data_hash
    indexed = load_study(
        "paper", [*data, "data.header=false", "data.text_column=[0, 1]", "data.label_column=2"]
    )
    assert indexed.data.text_columns == (0, 1)
    for bad, message in (
        ('data.text_column=["a", "b", "c"]', "one column or a sentence pair of two, got 3"),
        ('data.text_column=["a", "a"]', "names one column twice"),
        ('data.text_column=["a", "label"]', "'label' is also a text column"),
        ('data.text_column=["a", 1]', "must be a string or an integer or a list of strings"),
    ):
        with pytest.raises(StudyError, match=message):
            load_study("paper", [*data, bad])
    with pytest.raises(StudyError, match=r"must be a 0-based index when data\.header = false"):
        load_study(
            "paper", [*data, "data.header=false", 'data.text_column=["a", "b"]', "data.label_column=2"]
        )


def test_a_pair_column_that_is_missing_empty_or_not_text_is_one_error_that_lists_the_columns(
    tmp_path: Path,
) -> None:
    header = "sentence1\tsentence2\tempty\tnumber\tlabel"
    data = files(tmp_path, header, ["a b\tc\t\t3\t0", "d\te f\t\t4\t1"])
    columns = "columns: sentence1, sentence2, empty, number, label"
    why = {
        "missing": "is not a column of the train split",
        "empty": "is empty",
        "number": "is not text (its values are int64)",
    }
    for second, reason in why.items():
        study = load_study("paper", [*data, f'data.text_column=["sentence1", "{second}"]'])
        with pytest.raises(
            FtvarError, match=rf"data\.text_column.*'{second}'.*{re.escape(reason)}.*; {columns}$"
        ):
            load_raw(study, tmp_path / "work")
    # through the CLI: one line, exit code 2, nothing written
    study_file = tmp_path / "pairs.toml"
    study_file.write_text(
        'name = "pairs"\n[model]\ntokenizer = "train"\ntiny = { dim = 16, layers = 1, heads = 2 }\n'
        f'[data]\ntrain = "{tmp_path / "train.tsv"}"\neval = "{tmp_path / "eval.tsv"}"\n'
        'text_column = ["sentence1", "number"]\n'
    )
    out = ftvar("launch", str(study_file), "--executor", "local", "--out", str(tmp_path / "out"))
    assert "'number' of the train split is not text" in one_error_line(out)
    assert not (tmp_path / "out").exists()


def pair_split(rows: int, seed: int) -> Split:
    """Pairs of token ids: [CLS]=2 a [SEP]=3 b [SEP], token type 0 for the first text, 1 for the second; the
    label is whether the two texts start alike."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, 16), dtype=np.int32)
    types = np.zeros((rows, 16), dtype=np.int8)
    lengths = np.zeros(rows, dtype=np.int32)
    for i in range(rows):
        a, b = rng.integers(5, 40, rng.integers(2, 6)), rng.integers(5, 40, rng.integers(2, 6))
        row = [2, *a, 3, *b, 3]
        ids[i, : len(row)], lengths[i] = row, len(row)
        types[i, len(a) + 2 : len(row)] = 1
    labels = (ids[:, 1] % 2 == ids[np.arange(rows), np.argmax(types, axis=1)] % 2).astype(np.int64)
    return Split(ids, lengths, labels, types)


class Spy:
    """Counts the forward calls of a model, and those that got token type ids."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls, self.with_types = 0, 0
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.calls += 1
        self.with_types += "token_type_ids" in kwargs


def bert(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def job(
    model: torch.nn.Module, train: Split, evaluation: Split, seed: int = 0, engine: str = "plain"
) -> FitJob:
    trial = Trial(f"t{seed}", 1e-3, 8, 1, seed, seed)
    settings = TrainConfig(device="cpu", engine=engine)
    return FitJob(model, for_model(train, model), for_model(evaluation, model), trial, settings,
                  torch.device("cpu"), 0, 2)  # fmt: skip


def test_token_types_reach_every_engine_whose_model_takes_them() -> None:
    train, evaluation = pair_split(16, 0), pair_split(8, 1)
    batch = collate(train, np.array([3, 1]), torch.device("cpu"))
    width = int(train.lengths[[3, 1]].max())
    assert batch["token_type_ids"].tolist() == train.types[[3, 1], :width].tolist()  # type: ignore[index]
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=48, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    )
    roberta_like = bert(0)
    roberta_like.config.type_vocab_size = 1  # a forward that takes token types, one type only (RoBERTa)
    assert takes_token_types(bert(0)) and not takes_token_types(distil)
    assert not takes_token_types(roberta_like)
    assert for_model(train, distil).types is None and for_model(train, bert(0)).types is train.types
    assert "token_type_ids" not in collate(for_model(train, distil), np.array([0]), torch.device("cpu"))

    # plain and fast: 2 training steps and 1 evaluation batch each, every forward with the token types
    results = {}
    for engine in (PlainEngine(), FastEngine()):
        model = bert(0)
        spy = Spy(model)
        results[engine.name] = engine.fit(job(model, train, evaluation, engine=engine.name))
        assert spy.calls == spy.with_types == 3, engine.name
    assert results["fast"].metrics["accuracy"] == results["plain"].metrics["accuracy"]
    assert results["fast"].metrics["eval_loss"] == pytest.approx(
        results["plain"].metrics["eval_loss"], rel=1e-5
    )
    # the stack: its vmapped forward runs the base model with them (2 steps), each member's evaluation too
    models = [bert(0), bert(1)]
    spies = [Spy(m) for m in models]
    StackEngine().fit(
        [job(models[0], train, evaluation, 0, "fast"), job(models[1], train, evaluation, 1, "fast")]
    )
    assert [(s.calls, s.with_types) for s in spies] == [(3, 3), (1, 1)]
    # the Trainer (2 steps; its evaluation is the plain one)
    pytest.importorskip("accelerate")
    from ftvar.train.trainer import TrainerEngine

    model = bert(0)
    spy = Spy(model)
    assert TrainerEngine().fit(job(model, train, evaluation, engine="trainer")).steps == 2
    assert spy.calls == spy.with_types == 3


@pytest.mark.slow
def test_rte_pairs_end_to_end_cache_holds_pair_encodings_and_token_types(tmp_path: Path) -> None:
    rte = shared_data("rte")
    study_file = tmp_path / "rte.toml"
    study_file.write_text(
        'name = "rte-tiny"\n[model]\ntokenizer = "train"\ntiny = { dim = 16, layers = 1, heads = 2 }\n'
        f'[data]\ntrain = "{rte / "train.tsv"}"\neval = "{rte / "validation.tsv"}"\n'
        'text_column = ["sentence1", "sentence2"]\ntrain_limit = 64\neval_limit = 32\nmax_length = 48\n'
        "[grid]\nlearning_rate = [1e-3]\nbatch_size = [32]\nepochs = [1]\nseed = [0]\n"
        '[analysis]\nbaseline = "none"\n'
    )
    study = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path, study.name)
    prepare(study, paths)
    (trial,) = expand(study)
    prepared = load_prepared(study, paths, trial)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared.tokenizer_dir))
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    train = prepared.train
    assert train.types is not None and train.ids.shape == train.types.shape and len(train) == 64
    assert prepared.label_names == ["entailment", "not_entailment"] and train.lengths.max() <= 48
    for row, n in zip(train.ids, train.lengths, strict=True):
        assert row[0] == cls and row[n - 1] == sep and list(row[:n]).count(sep) == 2
    for ids, types, n in zip(train.ids, train.types, train.lengths, strict=True):
        first_sep = list(ids).index(sep)  # [CLS] a [SEP] has type 0, b [SEP] type 1, padding 0
        assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 : n]) == {1}
        assert not types[n:].any()
    # the longer text is truncated first: rows longer than 48 tokens keep RTE's short hypothesis whole
    rows = limit(load_raw(study, tmp_path / "raw")["train"], 64, 0)
    cut = 0
    for i in range(len(train)):
        hypothesis = tokenizer(rows[i]["text_pair"], add_special_tokens=False)["input_ids"]
        premise = tokenizer(rows[i]["text"], add_special_tokens=False)["input_ids"]
        if len(premise) + len(hypothesis) + 3 <= 48:
            continue
        cut += 1
        ids = list(train.ids[i])
        first_sep = ids.index(sep)
        assert train.lengths[i] == 48 and ids[first_sep + 1 : 47] == hypothesis
        assert ids[1:first_sep] == premise[: first_sep - 1] < premise
    assert cut >= 10, "too few rows reach max_length: the truncation is not exercised"
    record = run_trial(study, trial, paths)
    assert record["status"] == "ok" and record["n_train"] == 64 and record["n_eval"] == 32
    assert -1 <= record["metrics"]["mcc"] <= 1  # the tiny DistilBERT takes no token types (it trains without)
    assert [p["step"] for p in record["curve"]] == [2]  # its learning curve: once an epoch, the default

    # the model's own tokenizer (MiniLM's, a BERT): its pair encoding and token types, in the cache as well
    minilm = minilm_package().get_model_path()
    other = load_study(
        "paper",
        [
            f"model.name_or_path={minilm}", f"data.train={rte / 'train.tsv'}",
            f"data.eval={rte / 'validation.tsv'}", PAIR, "data.train_limit=8", "data.eval_limit=8",
        ],
    )  # fmt: skip
    other_paths = StudyPaths.of(tmp_path, other.name)
    prepare(other, other_paths)
    got = load_prepared(other, other_paths, expand(other)[-1]).train
    minilm_tokenizer = AutoTokenizer.from_pretrained(minilm)
    raw = limit(load_raw(other, tmp_path / "raw2")["train"], 8, 0)
    for i, row in enumerate(raw):  # the cache's rows, in order, as MiniLM's tokenizer encodes the pair
        want = minilm_tokenizer(row["text"], row["text_pair"], truncation="longest_first", max_length=128)
        assert list(got.ids[i][: got.lengths[i]]) == want["input_ids"]
        assert got.types is not None and list(got.types[i][: got.lengths[i]]) == want["token_type_ids"]
    assert set(np.unique(got.types)) == {0, 1}
