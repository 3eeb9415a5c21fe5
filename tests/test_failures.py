"""The failure model (ftvar.stats.failures): Firth's penalised logistic regression against a brute-force
optimiser, finite under separation, and the model on a study whose failure rate rises with the learning
rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from records_factory import make_study, simulate
from scipy.optimize import minimize

from ftvar.stats.failures import firth, model_failures


def _penalised(x: np.ndarray, y: np.ndarray, b: np.ndarray) -> float:
    eta = x @ b
    p = 1 / (1 + np.exp(-eta))
    w = p * (1 - p)
    return float(np.sum(y * eta - np.logaddexp(0, eta)) + 0.5 * np.linalg.slogdet((x * w[:, None]).T @ x)[1])


@pytest.mark.parametrize("separated", [False, True])
def test_firth_maximises_the_penalised_likelihood_even_under_separation(separated: bool) -> None:
    rng = np.random.default_rng(0)
    n = 300
    x = np.column_stack([np.ones(n), rng.normal(size=n), 1e-4 * rng.normal(size=n)])  # scales differ
    y = (x[:, 1] > 0.5).astype(float) if separated else (rng.random(n) < 1 / (1 + np.exp(-x[:, 1]))) * 1.0
    got = firth(x, y)
    ref = minimize(
        lambda b: -_penalised(x, y, b),
        got.beta * 0.9,
        method="Nelder-Mead",
        options={"maxiter": 40_000, "xatol": 1e-10, "fatol": 1e-12},
    )
    assert got.converged and np.all(np.isfinite(got.beta))
    assert got.loglik == pytest.approx(_penalised(x, y, got.beta), abs=1e-6)  # the columns' own scale
    assert got.loglik >= -ref.fun - 1e-6


def test_the_failure_model_finds_what_moves_the_failure_rate() -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4, 3e-4], bs=[16, 32], ep=[1, 2], seeds=list(range(5)))

    def p_fail(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) + 4.26
        return np.asarray(1 / (1 + np.exp(-(-1.0 + 3.0 * x))))

    table = simulate(study, lambda r: np.full(len(r), 0.85), degenerate=p_fail, rng=np.random.default_rng(4))
    trials = table[table["kind"] == "trial"].copy()
    trials.loc[trials.index[:3], "status"] = "failed"  # crashes: counted, not modelled
    trials.loc[trials.index[3:5], ["status", "accuracy"]] = ["diverged", np.nan]
    model = model_failures(trials, study.axes, 1)
    assert model.status == "ok" and model.n_crashed == 3 and model.n_diverged == 2
    assert any("crashed" in n for n in model.notes)
    lr = next(t for t in model.terms if t.term == "lr")
    bs = next(t for t in model.terms if t.term == "bs")
    assert lr.significant and lr.coef is not None and 1.5 < lr.coef < 5.0
    assert not bs.significant
    effect = next(e for e in model.effects if e.axis == "learning_rate")
    assert effect.rates[0] < 0.2 < 0.6 < effect.rates[-1]  # from rare to common across the learning rates
    assert effect.observed[-1] > effect.observed[0]


def test_no_failure_or_only_failures_is_said_not_fitted() -> None:
    study = make_study(lr=[1e-5, 1e-4], bs=[16], ep=[1], seeds=[0, 1])
    none = simulate(study, lambda r: np.full(len(r), 0.85), rng=np.random.default_rng(0))
    assert model_failures(none[none["kind"] == "trial"], study.axes, 1).message == (
        "no run failed to learn: nothing to model"
    )
    every = simulate(study, lambda r: np.full(len(r), 0.85), degenerate=1.0, rng=np.random.default_rng(0))
    assert "every run failed" in str(model_failures(every[every["kind"] == "trial"], study.axes, 1).message)


def test_weighted_rows_give_the_fit_of_the_trials_one_by_one() -> None:
    rng = np.random.default_rng(2)
    groups = np.column_stack([np.ones(6), np.arange(6) - 2.5])
    counts = np.array([5, 9, 3, 7, 4, 8])
    x = np.repeat(groups, counts, axis=0)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-x[:, 1]))).astype(float)
    one = firth(x, y)
    codes = np.repeat(np.arange(6), counts)
    share = np.bincount(codes, weights=y) / counts
    weighted = firth(groups, share, weights=counts)
    assert np.allclose(one.beta, weighted.beta, atol=1e-7) and one.loglik == pytest.approx(weighted.loglik)
