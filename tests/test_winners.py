"""Inference on winners (ftvar.stats.winners) and the best configuration built on it (ftvar.stats.optimum):
the truncated normal it inverts, the hybrid interval's coverage where the naive one fails, settable values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from records_factory import make_study, simulate
from scipy import stats

from ftvar.stats.analysis import _noise, search_space
from ftvar.stats.optimum import Space, best, settable
from ftvar.stats.terms import build
from ftvar.stats.winners import _cdf, infer_winner
from ftvar.study.design import Range


def test_the_truncated_normal_matches_scipy_far_into_the_tails() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        mu, lo = rng.normal(0, 20), rng.normal(0, 20)
        up = lo + abs(rng.normal(0, 5)) + 1e-6
        y = rng.uniform(lo, up)
        lo = -np.inf if rng.random() < 0.2 else lo
        up = np.inf if rng.random() < 0.2 else up
        want = stats.truncnorm.cdf(y - mu, lo - mu, up - mu)
        assert _cdf(y, mu, 1.0, lo, up) == pytest.approx(want, abs=1e-9)


def test_the_hybrid_interval_covers_a_winner_where_the_naive_one_does_not() -> None:
    """48 independent unit-variance estimates, the largest chosen: under a flat truth the naive interval
    around it covers about a quarter of the time and the estimate is biased up by about two standard errors;
    the hybrid interval covers at its level (measured 0.959 over 2,000 draws). 300 draws: Monte Carlo SE
    0.013; the bound 0.91 lies 3 SE below nominal, and the naive interval (≈ 0.27) fails it by far."""
    rng = np.random.default_rng(0)
    k, draws = 48, 300
    hybrid = naive = above = 0
    for _ in range(draws):
        x = rng.normal(0, 1, k)
        w = int(np.argmax(x))
        got = infer_winner(x, np.eye(k)[w], float(x[w]), 1.0, w)
        hybrid += got.ci_low <= 0 <= got.ci_high
        naive += abs(x[w]) <= 1.96
        above += got.median_unbiased > 0
    assert hybrid / draws >= 0.91, hybrid / draws
    assert naive / draws <= 0.5
    assert 0.4 <= above / draws <= 0.6  # the corrected estimate is median-unbiased


def test_a_clear_winner_gets_the_plain_interval() -> None:
    x = np.array([10.0, 0.0, 0.2, -0.5])
    got = infer_winner(x, np.eye(4)[0], 10.0, 1.0, 0)
    assert got.lower_truncation < 1.0  # it would have won from far below
    assert got.ci_low == pytest.approx(10 - 1.96, abs=0.15) and got.ci_high == pytest.approx(
        10 + 1.96, abs=0.15
    )
    assert got.median_unbiased == pytest.approx(10.0, abs=1e-3)


def test_settable_values_are_integers_powers_of_two_steps_or_three_digits() -> None:
    space = Space(
        ranges={
            "batch_size": Range(8, 128, "log", "pow2"),
            "train.warmup_ratio": Range(0.0, 0.2, round=0.05),
        },
        integer=frozenset({"batch_size", "epochs"}),
        grid=False,
    )
    assert settable(np.array([20.89, 45.0]), "batch_size", space).tolist() == [16.0, 32.0]
    assert settable(np.array([2.4, 2.6]), "epochs", space).tolist() == [2.0, 3.0]
    assert settable(np.array([0.123]), "train.warmup_ratio", space).tolist() == [0.1]
    assert settable(np.array([1.2493e-4]), "learning_rate", space).tolist() == [1.25e-4]


def _grid_mean(study, curvature):  # type: ignore[no-untyped-def]
    lr_c = float(np.mean(np.log10(study.grid.learning_rate)))

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) - lr_c
        return np.asarray(0.85 + (0.01 * x + curvature * x * x) * (curvature != 0))

    return mean


@pytest.mark.parametrize("curvature", [0.0, -0.05])
def test_the_best_value_interval_covers_under_a_flat_truth_and_under_curvature(curvature: float) -> None:
    """The recommended configuration's value on a 4 × 3 grid × 3 seeds: its interval (inference on winners,
    Satterthwaite df for the seed variance) covers the configuration's true mean over seeds. bench/
    bench_analysis.py measures 0.95 under a flat truth and 0.94 under curvature over 1,000 studies on the
    paper's grid; the percentile interval of the best value it replaced covered 0.575 under a flat truth.
    100 studies (Monte Carlo SE 0.022): the bound 0.88 is 3.2 SE below nominal and far above 0.575."""
    study = make_study(lr=[1e-5, 3e-5, 1e-4, 3e-4], bs=[16, 32, 64], ep=[1], seeds=[0, 1, 2])
    mean = _grid_mean(study, curvature)
    space = search_space(study)
    rng = np.random.default_rng(11)
    hits, studies, naive = 0, 100, []
    for r in range(studies):
        table = simulate(study, mean, init_sd=0.01, noise=0.01, rng=rng)
        rows = table[table["kind"] == "trial"].reset_index(drop=True)
        md = build(rows, study.axes, 2)
        y = rows["accuracy"].to_numpy()
        b = best(md, y, "accuracy", True, 2, 0, r, space, _noise(md, y))
        truth = float(mean(pd.DataFrame([b.recommended]))[0])
        assert b.ci_low is not None and b.ci_high is not None and b.value_from == "trials"
        assert b.recommended["batch_size"] in (16, 32, 64)  # a level of the design, an integer
        hits += b.ci_low <= truth <= b.ci_high
        naive.append(b.predicted - truth)
    assert hits / studies >= 0.88, hits / studies
    if curvature == 0.0:
        assert np.mean(naive) > 0.002  # the selected configuration's own mean is biased up: the curse is real


def test_lack_of_fit_makes_the_grid_choose_by_the_configurations_means() -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3], bs=[16], ep=[1], seeds=[0, 1, 2, 3])
    mean = _grid_mean(study, -0.08)  # a peak a straight line cannot follow
    table = simulate(study, mean, init_sd=0.005, noise=0.004, rng=np.random.default_rng(2))
    rows = table[table["kind"] == "trial"].reset_index(drop=True)
    md = build(rows, study.axes, 1)
    y = rows["accuracy"].to_numpy()
    b = best(md, y, "accuracy", True, 1, 0, 0, search_space(study), _noise(md, y))
    assert b.selected_by == "means" and any("lack of fit" in n for n in b.notes)
    assert b.recommended["learning_rate"] == pytest.approx(1e-4)  # the peak, not an end of the line
