"""The task's metric: MCC beside accuracy and F1 in every record, `analysis.metric` (by default the data's)
names what the report leads with, F1's averaging is said, and records without MCC stay readable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from records_factory import make_record, make_study, write

from ftvar.data.prepare import prepare
from ftvar.report.build import build_report
from ftvar.stats.analysis import analyze, collect
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from ftvar.train.engine import scores
from ftvar.train.runner import run_trial
from tests.helpers import SHARED_DATA, shared_data


def test_scores_hold_mcc_zero_for_one_class_and_f1_macro_for_more() -> None:
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    tp, tn, fp, fn = 2, 1, 1, 1
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    got = scores(y, pred, 1.0, 2).metrics
    assert got["mcc"] == pytest.approx(want) and got["accuracy"] == pytest.approx(0.6)
    assert scores(y, np.ones(5, dtype=np.int64), 1.0, 2).metrics["mcc"] == 0.0  # one class: no correlation
    three = scores(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]), 1.0, 3).metrics
    assert three["f1"] == pytest.approx((1 + 0 + 0.8) / 3)  # macro: the unweighted mean of the classes' F1
    assert 0 < three["mcc"] < 1  # type: ignore[operator]


def test_the_primary_metric_is_the_studys_else_the_tasks_else_accuracy(tmp_path: Path) -> None:
    assert load_study("paper").metric == load_study("smoke").metric == "accuracy"
    assert load_study("paper", ["data.hub=glue/cola"]).metric == "mcc"  # GLUE's score for CoLA
    assert load_study("paper", ["data.hub=nyu-mll/glue/cola"]).metric == "mcc"
    assert load_study("paper", ["analysis.metric=f1"]).metric == "f1"
    # the built-ins: GLUE from the Hub by default, the shared TSVs with two overrides (their columns)
    for name, metric, columns in (
        ("rte", "accuracy", ("sentence1", "sentence2")),
        ("mrpc", "accuracy", ("sentence1", "sentence2")),
        ("cola", "mcc", ("sentence",)),
    ):
        hub = load_study(name)
        assert hub.data.source == "hub" and hub.data.hub == f"glue/{name}" and hub.metric == metric
        assert [len(hub.grid.values(a)) for a in ("learning_rate", "batch_size", "epochs")] == [4, 4, 3]
        assert hub.grid.init_seed == (0, 1, 2, 3, 4) and len(expand(hub)) == 240 + 5
        folder = SHARED_DATA / name
        local = load_study(
            name, [f"data.train={folder / 'train.tsv'}", f"data.eval={folder / 'validation.tsv'}"]
        )
        assert local.data.source == "files" and local.data.text_columns == columns and local.metric == metric
        if folder.is_dir():
            header = (folder / "train.tsv").read_text().split("\n", 1)[0].split("\t")
            assert [*columns, "label"] == header


def test_records_without_mcc_are_read_and_the_report_says_it_is_missing(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 1e-4], bs=[16], ep=[1], seeds=[0, 1], metric="mcc", bootstrap=0)
    records = StudyPaths.of(tmp_path, study.name).records
    for i, (lr, seed) in enumerate([(1e-5, 0), (1e-5, 1), (1e-4, 0), (1e-4, 1)]):
        rec = make_record(
            study, learning_rate=lr, batch_size=16, epochs=1, seed=seed, metrics={"accuracy": 0.7 + i / 100}
        )
        if i >= 2:  # written by this ftvar; the first two as before MCC was recorded
            rec["metrics"]["mcc"] = 0.3 + i / 10
        write(records, rec)
    table = collect(study, tmp_path).table
    assert table["mcc"].isna().tolist() == [True, True, False, False] and table["mcc"].dtype == "float64"
    analysis = analyze(study, table)
    assert analysis.metric == "mcc" and analysis.metrics == ("mcc", "accuracy", "f1", "eval_loss")
    assert "MCC is missing for 2 of 4 ok trials (records written before ftvar recorded it)" in " ".join(
        analysis.notes
    )
    assert analysis.configurations["mcc_mean"].iloc[0] == pytest.approx(0.55)  # the best MCC first
    for rec_file in records.glob("*.json"):  # none has MCC: not fitted, and said so
        rec = json.loads(rec_file.read_text())
        rec["metrics"].pop("mcc", None)
        rec_file.write_text(json.dumps(rec))
    none = analyze(study, collect(study, tmp_path).table)
    assert "no ok trial has a value for MCC (records written before ftvar recorded it)" in " ".join(
        none.notes
    )
    assert none.expected_max == [] and {f.metric for f in none.fits} == {"accuracy", "f1", "eval_loss"}


@pytest.mark.slow
def test_cola_end_to_end_records_mcc_and_the_report_leads_with_it(tmp_path: Path) -> None:
    cola = shared_data("cola")
    study_file = tmp_path / "cola.toml"
    study_file.write_text(
        'name = "cola-tiny"\n[model]\ntokenizer = "train"\ntiny = { dim = 32, layers = 1, heads = 2 }\n'
        f'[data]\ntrain = "{cola / "train.tsv"}"\neval = "{cola / "validation.tsv"}"\n'
        "train_limit = 128\neval_limit = 128\nmax_length = 32\n"
        # 30 epochs of 4 steps: the tiny model overfits and predicts both classes, so MCC varies (a shorter
        # run predicts the majority class only: MCC 0 everywhere, and nothing for the report to lead with)
        "[grid]\nlearning_rate = [3e-3, 1e-2]\nbatch_size = [32]\nepochs = [30]\nseed = [0, 1]\n"
        "[train]\neval_every = 60\n"  # a learning curve: points at steps 60 and 120
        '[analysis]\nmetric = "mcc"\nbaseline = "none"\ndegree = 1\nbootstrap = 50\n'
    )
    study = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path / "out", study.name)
    prepare(study, paths)
    records = [run_trial(study, trial, paths) for trial in expand(study)]
    mccs = [rec["metrics"]["mcc"] for rec in records]
    for rec in records:
        assert rec["status"] == "ok" and rec["label_names"] == ["0", "1"]
        mcc = rec["metrics"]["mcc"]
        assert isinstance(mcc, float) and -1 <= mcc <= 1
        if len([c for c in rec["eval"]["pred_counts"] if c]) == 1:
            assert mcc == 0.0  # one predicted class: MCC says what accuracy (the majority share) hides
        assert [p["step"] for p in rec["curve"]] == [60, 120] and rec["curve"][-1]["mcc"] == mcc

    result = build_report(study, tmp_path / "out")
    data = json.loads(result.json.read_text())
    assert data["analysis"]["metric"] == "mcc" and data["analysis"]["f1_average"] == "binary"
    assert data["variance"][0]["metric"] == "mcc" and data["best"][0]["metric"] == "mcc"
    curve = data["expected_max"]["curves"][0]
    assert curve["group"] == "all trials" and curve["mean"][0] == pytest.approx(np.mean(mccs))
    v, n = np.sort(mccs), len(mccs)  # the best of n draws with replacement (Dodge et al. 2019)
    assert curve["mean"][-1] == pytest.approx(
        sum(((i / n) ** n - ((i - 1) / n) ** n) * v[i - 1] for i in range(1, n + 1))
    )
    configs = pd.DataFrame(data["configurations"])
    assert configs["mcc_mean"].is_monotonic_decreasing
    md = result.markdown.read_text()
    lead = md.split("## Findings")[0]
    first = lead.split("## What matters\n\n", 1)[1]
    assert first.startswith("**MCC**: hyperparameters explain")
    assert len(set(mccs)) == 4 and "**MCC**: run learning rate = " in lead and "Expected best MCC of" in lead
    assert "Primary metric: MCC (the Matthews correlation coefficient" in md
    assert "F1 is binary" in md and "top 10 by mean MCC" in md
    assert "| epochs | ok/trials | degenerate | MCC | accuracy | F1 | eval loss |" in md
    assert pd.read_csv(result.collected.csv)["mcc"].notna().all()
    # the learning curves and the early stopping are about MCC too (issue 23)
    curves = data["learning_curves"]
    assert curves["metric"] == "mcc" and curves["trials_with_curves"] == 4
    assert curves["early_stopping"][0]["fractions"] == [0.5]  # step 60 of 120
    assert "Learning curves and early stopping" in md and "expected best final MCC" in md
