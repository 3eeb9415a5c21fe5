"""Trials keep their per-example predictions and score a held-out test split: the sidecar beside the record,
the same rows and predictions from the plain and the fast engine, the test split's data and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftvar.data import cache
from ftvar.data.prepare import prepare
from ftvar.errors import FtvarError
from ftvar.store.files import load_json
from ftvar.store.paths import StudyPaths
from ftvar.store.predictions import read_predictions
from ftvar.study.config import Study, load_study
from ftvar.study.trial import expand
from ftvar.train.runner import run_trial


def tiny(tmp_path: Path, *overrides: str) -> tuple[Study, StudyPaths]:
    study = load_study(
        "smoke",
        [
            "data.synthetic.train=160",
            "data.synthetic.eval=60",
            "model.tiny.dim=16",
            "model.tiny.layers=1",
            "grid.learning_rate=[3e-3]",
            "grid.batch_size=[32]",
            "grid.epochs=[1]",
            *overrides,
        ],
    )
    return study, StudyPaths.of(tmp_path / "out", study.name)


def test_a_trial_writes_its_predictions_and_its_test_score(tmp_path: Path) -> None:
    study, paths = tiny(tmp_path, "data.test_fraction=0.25")
    assert prepare(study, paths)
    prepared = cache.load_prepared(study, paths, expand(study)[0])
    assert prepared.test is not None and (prepared.n_eval, len(prepared.test)) == (45, 15)
    texts = load_json(paths.texts(prepared.folder.name))
    assert len(texts["eval"]) == 45 and len(texts["test"]) == 15  # type: ignore[index]
    trial = next(t for t in expand(study) if not t.is_baseline)
    rec = run_trial(study, trial, paths)
    run_trial(study, next(t for t in expand(study) if t.is_baseline), paths)
    assert rec["status"] == "ok" and rec["test"]["n"] == 15
    got = read_predictions(paths.prediction(rec["trial_id"]))
    ev, test = got.splits["eval"], got.splits["test"]
    assert got.data_key == prepared.folder.name and len(ev) == 45 and len(test) == 15
    assert np.array_equal(ev.labels, prepared.eval.labels) and np.array_equal(
        test.labels, prepared.test.labels
    )
    assert np.mean(ev.predicted == ev.labels) == pytest.approx(rec["metrics"]["accuracy"])
    assert np.mean(test.predicted == test.labels) == pytest.approx(rec["test"]["metrics"]["accuracy"])
    clear = np.abs(ev.probabilities[:, 1] - ev.probabilities[:, 0]) > 2e-4  # not tied after rounding
    assert np.array_equal(ev.probabilities.argmax(axis=1)[clear], ev.predicted[clear])
    assert np.allclose(ev.probabilities.sum(axis=1), 1, atol=2e-4)
    assert paths.prediction("baseline").is_file()  # the un-fine-tuned model's predictions too
    # the fast engine (same trial: the engine is not in the trial id) sorts the rows by length to evaluate
    # them; its predictions come back in row order, the same as the plain loop's on a CPU
    fast_study, _ = tiny(tmp_path, "data.test_fraction=0.25", "train.engine=fast")
    assert run_trial(fast_study, trial, paths)["engine"]["name"] == "fast"
    fast = read_predictions(paths.prediction(trial.trial_id)).splits["eval"]
    assert np.array_equal(fast.predicted, ev.predicted)
    assert not list(paths.records.glob(".*part")) and not list(paths.predictions.glob(".*part"))


def test_a_test_fraction_is_a_seeded_split_of_the_eval_rows(tmp_path: Path) -> None:
    study, paths = tiny(tmp_path, "data.test_fraction=0.5", "data.data_seed=3")
    prepare(study, paths)
    again, other = tiny(tmp_path / "b", "data.test_fraction=0.5", "data.data_seed=3")
    prepare(again, other)
    texts = load_json(paths.texts(cache.cache_folder(study, paths, expand(study)[0])[0].name))
    same = load_json(other.texts(cache.cache_folder(again, other, expand(again)[0])[0].name))
    assert texts == same  # seeded
    assert not set(texts["eval"]) & set(texts["test"])  # type: ignore[index]
    assert len(texts["eval"]) + len(texts["test"]) == 60  # type: ignore[index]


def test_test_splits_that_cannot_be_used_are_errors_and_nothing_is_written(tmp_path: Path) -> None:
    study, paths = tiny(tmp_path, "data.test_fraction=0.001")
    with pytest.raises(FtvarError, match=r"data.test_fraction = 0.001 of 60 eval rows leaves no test row"):
        prepare(study, paths)
    assert not (tmp_path / "out").exists()
    for name, rows in (("train", ["good\tpos", "bad\tneg"]), ("eval", ["ok\tpos"]), ("test", ["hm\tmeh"])):
        (tmp_path / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    files = tmp_path / "files.toml"
    files.write_text(
        'name = "files"\n[model]\ntokenizer = "train"\ntiny = {dim = 16, layers = 1, heads = 2}\n'
        '[data]\ntrain = "train.tsv"\neval = "eval.tsv"\ntest = "test.tsv"\n'
    )
    study = load_study(str(files))
    with pytest.raises(FtvarError, match="the test split has labels the train split lacks: meh"):
        prepare(study, StudyPaths.of(tmp_path / "out", study.name))
    assert not (tmp_path / "out").exists()
