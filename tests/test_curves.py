"""Learning curves (issue 23): where a trial is evaluated, the curves read back per configuration with failed
runs apart, Dodge et al. 2020's early-stopping estimate against brute force, and the report's section. No
training here (tests/test_invariance.py and tests/test_engines.py train with curves)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from records_factory import make_record, make_study, write

from ftvar.report.build import build_report
from ftvar.stats.curves import failed_runs, learning_curves
from ftvar.stats.early_stopping import analyse_pool, expected_best_kept, expected_max_exact
from ftvar.store.collect import collect
from ftvar.store.paths import StudyPaths
from ftvar.train.curve import curve_steps


def test_the_steps_a_trial_is_evaluated_at() -> None:
    assert curve_steps(1.0, 63, 126) == [63, 126]  # the default: once an epoch
    assert curve_steps(0.5, 63, 126) == [32, 63, 95, 126]  # halves round up; each epoch's end kept
    assert curve_steps(0.25, 8, 24) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert curve_steps(10, 63, 126) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 126]  # steps
    assert curve_steps(2.0, 10, 50) == [20, 40, 50]  # every two epochs, and the end
    assert curve_steps(1e-9, 10, 5) == [1, 2, 3, 4, 5]  # more often than every step: every step, fast
    assert curve_steps(0, 63, 126) == [] and curve_steps(0.0, 63, 126) == []  # no curve
    assert curve_steps(500, 63, 126) == [126]  # only the end


def brute_force(early: list[float], final: list[float], n: int, k: int) -> float:
    """The expected best final among the k best-early of n drawn: every n-subset, every order of ties."""
    total, values = 0.0, []
    for subset in itertools.combinations(range(len(final)), n):
        orders = list(itertools.permutations(subset))  # a random tie-break: every order equally likely
        outcomes = []
        for order in orders:
            ranked = sorted(order, key=lambda i: -early[i])  # stable: ties keep the order's sequence
            outcomes.append(max(final[i] for i in ranked[:k]))
        values.append(sum(outcomes) / len(outcomes))
    total = sum(values) / len(values)
    return total


def test_expected_best_of_the_kept_runs_matches_brute_force() -> None:
    early = [0.5, 0.7, 0.7, 0.6, 0.9, 0.55]  # ties at 0.7
    final = [0.52, 0.80, 0.60, 0.75, 0.85, 0.70]
    rng = np.random.default_rng(0)
    for n, k in ((2, 1), (4, 1), (4, 2), (5, 3)):
        got, se = expected_best_kept(np.array(early), np.array(final), n, k, rng)
        want = brute_force(early, final, n, k)
        assert abs(got - want) < 4 * se + 1e-12, (n, k, got, want, se)
        assert se < 0.002
    # every run continued is expected max: the exact formula against every subset
    for n in range(1, 7):
        subsets = list(itertools.combinations(final, n))
        assert expected_max_exact(np.array(final), n) == pytest.approx(np.mean([max(s) for s in subsets]))


def test_early_stopping_saves_compute_when_early_scores_predict_final_ones() -> None:
    final = np.linspace(0.5, 0.9, 12)
    predictive = [[(0.5, f - 0.1), (1.0, f)] for f in final]
    pool = analyse_pool("seeds", predictive, final)
    assert pool is not None and pool.fractions == [0.5]
    keep1 = next(s for s in pool.schedules if s.keep == 1)
    # starting n and continuing the best one gets the best of n for (n + 1) / 2 runs of compute
    for n, compute, value, se in zip(keep1.n, keep1.compute, keep1.expected, keep1.se, strict=True):
        assert compute == pytest.approx(n * 0.5 + 0.5)
        assert value == pytest.approx(expected_max_exact(final, n), abs=4 * se + 1e-12)
    # an early score that says nothing (every run ties): keeping one of n is one random run, whatever n
    noise = [[(0.5, 0.5), (1.0, f)] for f in final]
    useless = analyse_pool("seeds", noise, final, seed=3)
    assert useless is not None
    flat = next(s for s in useless.schedules if s.keep == 1 and s.n[-1] == 12)
    for value, se in zip(flat.expected, flat.se, strict=True):
        assert value == pytest.approx(float(np.mean(final)), abs=4 * se + 1e-12)


def test_a_failed_run_is_no_better_than_the_majority_class_as_mosbach_et_al_define_it() -> None:
    rows = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "ok", "diverged", "ok"],
            "accuracy": [0.60, 0.527, 0.48, 0.5271, None, 0.70],  # the majority share: 146 of 277 (0.527)
            "majority_share": [146 / 277] * 6,
            "n_eval": [277] * 6,
            "degenerate": [False, True, False, False, None, False],
            "mcc": [0.2, 0.0, -0.05, 0.01, None, -0.01],
        }
    )
    # learned; one class; below the majority share (both classes predicted: not degenerate, but failed);
    # the majority share within half an example; diverged; MCC < 0 counts only where MCC is the metric
    assert failed_runs(rows, "accuracy").tolist() == [False, True, True, True, True, False]
    assert failed_runs(rows, "mcc").tolist() == [False, True, True, True, True, True]


def curve(points: list[tuple[int, float, float]], per_epoch: int = 10) -> list[dict[str, Any]]:
    return [
        {"step": s, "epoch": s / per_epoch, "train_loss": loss, "accuracy": acc, "f1": acc, "mcc": 0.0}
        for s, loss, acc in points
    ]


def write_curved_study(out: Path) -> Any:
    """Two learning rates × 6 seeds, 30 steps each with points at 10, 20, 30; at lr 1e-4, seeds 4 and 5
    fail (one class predicted, the loss stays at ln 2); one trial at 1e-5 diverges; the early accuracy
    predicts the final one."""
    study = make_study(name="curvy", lr=[1e-5, 1e-4], bs=[16], ep=[3], seeds=list(range(6)), bootstrap=20)
    records = StudyPaths.of(out, study.name).records
    for lr, seed in itertools.product([1e-5, 1e-4], range(6)):
        failed = lr == 1e-4 and seed >= 4
        diverged = lr == 1e-5 and seed == 5
        final = 0.5 if failed else 0.6 + 0.02 * seed + (0.1 if lr == 1e-4 else 0)
        status = "diverged" if diverged else "ok"
        rec = make_record(
            study,
            learning_rate=lr,
            batch_size=16,
            epochs=3,
            seed=seed,
            status=status,
            metrics={"accuracy": final, "mcc": 0.0 if failed else 0.3},
        )
        rec["steps"] = 20 if diverged else 30
        if failed:
            rec["eval"] = {"label_counts": [250, 250], "pred_counts": [500, 0], "majority_share": 0.5}
            rec["eval"]["degenerate"] = True
            rec["curve"] = curve([(10, 0.693, 0.5), (20, 0.694, 0.5), (30, 0.693, 0.5)])
        elif diverged:
            rec["curve"] = curve([(10, 0.6, 0.55)])
        else:
            rec["curve"] = curve([(10, 0.6, final - 0.05), (20, 0.5, final - 0.02), (30, 0.4, final)])
        write(records, rec)
    return study


def test_curves_per_configuration_with_failed_runs_apart(tmp_path: Path) -> None:
    study = write_curved_study(tmp_path)
    table = collect(study, tmp_path).table
    curves = learning_curves(table, study.axes, "accuracy")
    assert (curves.n_trials, curves.n_failed, curves.n_with, curves.n_without) == (12, 3, 12, 0)
    by = {c.label: c for c in curves.configs}
    assert set(by) == {"lr=1e-05", "lr=0.0001"}
    high = by["lr=0.0001"]
    assert high.n_failed == 2 and high.failed_rate == pytest.approx(1 / 3)
    assert {r.seeds for r in high.runs if r.failed} == {"seed 4", "seed 5"}
    assert high.band is not None and high.band.n_runs == 4 and high.band.epoch == [1.0, 2.0, 3.0]
    assert high.band.median["accuracy"][-1] == pytest.approx(0.73)  # seeds 0–3: 0.70, 0.72, 0.74, 0.76
    low = by["lr=1e-05"]
    diverged = next(r for r in low.runs if r.status == "diverged")
    assert diverged.failed and diverged.fraction == [pytest.approx(1 / 3)] and diverged.final is None
    # early stopping: the whole study, then each configuration's seeds (the diverged trial has no final)
    assert [(p.name, p.n_trials) for p in curves.pools] == [
        ("all trials", 11),
        ("lr=1e-05", 5),
        ("lr=0.0001", 6),
    ]
    assert curves.pools[0].fractions == [pytest.approx(1 / 3), pytest.approx(2 / 3)]


def test_the_report_shows_the_curves_the_failed_runs_and_early_stopping(tmp_path: Path) -> None:
    study = write_curved_study(tmp_path)
    result = build_report(study, tmp_path)
    md = result.markdown.read_text()
    section = md.split("## Learning curves and early stopping")[1].split("\n## ")[0]
    assert "**Failed runs: 3 of 12 (25%)**" in section
    assert "| lr=0.0001 | 6 | 2 (33%) |" in section
    assert "![learning curves per configuration](learning_curves.png)" in section
    assert "**Early stopping (all trials, N = 11):** starting" in section
    assert "exchangeable" in section and "early_stopping.png" in section
    data = json.loads(result.json.read_text())
    lc = data["learning_curves"]
    assert lc["failed"] == 3 and lc["trials"] == 12 and lc["failed_rate"] == 0.25
    assert [c["label"] for c in lc["configurations"]] == ["lr=1e-05", "lr=0.0001"]
    pool = lc["early_stopping"][0]
    assert pool["name"] == "all trials" and pool["full"]["n"][-1] == 11
    assert all(math.isfinite(v) for s in pool["schedules"] for v in s["expected"])
    for name in ("learning_curves.png", "early_stopping.png"):
        assert (result.folder / name).read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in result.html.read_text()


def test_records_without_curves_give_the_report_of_before(tmp_path: Path) -> None:
    study = make_study(name="flat", lr=[1e-5, 1e-4], bs=[16], ep=[1], seeds=[0, 1], bootstrap=20)
    records = StudyPaths.of(tmp_path, study.name).records
    for lr, seed in itertools.product([1e-5, 1e-4], [0, 1]):
        acc = 0.7 + seed * 0.01 + lr * 100
        write(
            records,
            make_record(
                study, learning_rate=lr, batch_size=16, epochs=1, seed=seed, metrics={"accuracy": acc}
            ),
        )
    result = build_report(study, tmp_path)
    assert "Learning curves" not in result.markdown.read_text()
    assert "learning_curves" not in json.loads(result.json.read_text())
