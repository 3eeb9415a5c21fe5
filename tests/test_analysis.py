"""The regressions: known quadratics with noise, relative vs absolute vs paired, degenerate grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from records_factory import Truth, make_study, synth_study, synth_table

from ftvar.analysis import (
    FIT_METRICS,
    VARIABLES,
    analyze,
    build_design,
    collect,
    default_reference,
    fit_ols,
)
from ftvar.config import Study

# true coefficients in the centred log coding (lr = log10 lr − mean, bs = log2 bs − mean, ep = epochs − mean)
TRUTH = {
    "Intercept": 0.85,
    "lr": 0.02,
    "bs": -0.012,
    "ep": 0.004,
    "I(lr ** 2)": -0.03,
    "lr:bs": 0.0,
    "lr:ep": 0.0,
    "I(bs ** 2)": 0.0,
    "bs:ep": 0.003,
    "I(ep ** 2)": 0.0,
}
NULL_TERMS = [t for t, v in TRUTH.items() if v == 0.0]


def centres(study: Study) -> tuple[float, float, float]:
    g = study.grid
    return (
        float(np.mean(np.log10(g.learning_rate))),
        float(np.mean(np.log2(g.batch_size))),
        float(np.mean(g.epochs)),
    )


def quadratic(study: Study) -> Truth:
    c_lr, c_bs, c_ep = centres(study)

    def truth(lr: float, bs: float, ep: float) -> float:
        x, z, e = lr - c_lr, bs - c_bs, ep - c_ep
        t = TRUTH
        return (
            t["Intercept"]
            + t["lr"] * x
            + t["bs"] * z
            + t["ep"] * e
            + t["I(lr ** 2)"] * x * x
            + t["lr:bs"] * x * z
            + t["lr:ep"] * x * e
            + t["I(bs ** 2)"] * z * z
            + t["bs:ep"] * z * e
            + t["I(ep ** 2)"] * e * e
        )

    return truth


def test_collected_fit_recovers_the_truth_within_its_confidence_intervals(tmp_path: Path) -> None:
    """One fixed dataset through records and collect; the coverage rate itself is the next test's job."""
    study = make_study()
    synth_study(tmp_path, study, quadratic(study), noise=0.005, rng=np.random.default_rng(0))
    fit = analyze(study, collect(study, tmp_path).table).fit("accuracy", "absolute")
    assert fit.ok and fit.n == 4 * 4 * 3 * 3
    assert {t.term for t in fit.terms} == set(TRUTH)
    for term in fit.terms:
        assert term.ci_low <= TRUTH[term.term] <= term.ci_high, term
    assert fit.term("lr").significant and fit.term("bs").significant  # type: ignore[union-attr]


def test_confidence_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    study = make_study()
    rng = np.random.default_rng(11)
    covered = dict.fromkeys(TRUTH, 0)
    runs = 40
    for _ in range(runs):
        trials = synth_table(study, quadratic(study), noise=0.01, rng=rng)
        design, data = build_design(trials[trials["kind"] == "trial"], "log", 2)
        fit = fit_ols(data, "accuracy", design, "accuracy", "absolute", "log")
        for t in fit.terms:
            covered[t.term] += t.ci_low <= TRUTH[t.term] <= t.ci_high
    assert all(c / runs >= 0.8 for c in covered.values()), covered


@pytest.mark.parametrize("coding", ["log", "raw"])
def test_coefficients_match_numpy_least_squares_of_the_same_design(coding: str) -> None:
    study = make_study()
    trials = synth_table(study, quadratic(study), noise=0.01)
    trials = trials[trials["kind"] == "trial"]
    design, data = build_design(trials, coding, 2)
    fit = fit_ols(data, "accuracy", design, "accuracy", "absolute", coding)
    cols = {}
    for col, short, _ in VARIABLES:
        raw = trials[col].to_numpy(dtype="float64")
        coded = {"lr": np.log10, "bs": np.log2, "ep": lambda v: v}[short](raw) if coding == "log" else raw
        cols[short] = coded - coded.mean()
    x, z, e = cols["lr"], cols["bs"], cols["ep"]
    columns = {
        "Intercept": np.ones_like(x),
        "lr": x,
        "bs": z,
        "ep": e,
        "I(lr ** 2)": x * x,
        "lr:bs": x * z,
        "lr:ep": x * e,
        "I(bs ** 2)": z * z,
        "bs:ep": z * e,
        "I(ep ** 2)": e * e,
    }
    names = [t.term for t in fit.terms]
    matrix = np.column_stack([columns[n] for n in names])
    expected, *_ = np.linalg.lstsq(matrix, trials["accuracy"].to_numpy(), rcond=None)
    got = np.array([t.coef for t in fit.terms])
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())


def test_p_values_of_null_terms_are_not_systematically_small() -> None:
    study = make_study()
    rng = np.random.default_rng(5)
    small = dict.fromkeys(NULL_TERMS, 0)
    power = 0
    runs = 50
    for _ in range(runs):
        trials = synth_table(study, quadratic(study), noise=0.02, rng=rng)
        design, data = build_design(trials[trials["kind"] == "trial"], "log", 2)
        fit = fit_ols(data, "accuracy", design, "accuracy", "absolute", "log")
        for term in NULL_TERMS:
            small[term] += fit.term(term).p < 0.05  # type: ignore[union-attr]
        power += fit.term("bs").p < 0.05  # type: ignore[union-attr]
    assert all(n / runs < 0.2 for n in small.values()), small
    assert power / runs > 0.9  # the test would notice p-values stuck near 1


def test_relative_fit_with_a_shared_baseline_has_identical_slopes() -> None:
    study = make_study()
    table = synth_table(study, quadratic(study), noise=0.01, seed_sd=0.02, baseline=0.6)
    result = analyze(study, table)
    for metric in FIT_METRICS:
        absolute, relative = result.fit(metric, "absolute"), result.fit(metric, "relative")
        assert relative.ok and relative.formula.startswith(f"{metric}_rel ~")
        for a, r in zip(absolute.terms, relative.terms, strict=True):
            assert a.term == r.term
            if a.term == "Intercept":
                assert r.coef == pytest.approx(a.coef - result.baseline[metric], abs=1e-12)  # type: ignore[index]
            else:
                assert r.coef == pytest.approx(a.coef, abs=1e-12) and r.p == pytest.approx(a.p, rel=1e-9)
        assert any("only moves the intercept" in n for n in relative.notes)


def test_paired_fit_differs_and_removes_the_seed_effect() -> None:
    study = make_study(seeds=[0, 1, 2, 3, 4, 5])
    table = synth_table(study, quadratic(study), noise=0.004, seed_sd=0.05, rng=np.random.default_rng(2))
    result = analyze(study, table)
    absolute, paired = result.fit("accuracy", "absolute"), result.fit("accuracy", "paired")
    assert paired.ok and paired.n == absolute.n - len(study.grid.init_seed)  # reference trials left out
    slopes_abs = np.array([t.coef for t in absolute.terms[1:]])
    slopes_pair = np.array([t.coef for t in paired.terms[1:]])
    assert not np.allclose(slopes_abs, slopes_pair, rtol=0, atol=1e-9)
    # the seeds' shared offsets inflate the absolute fit's error; pairing removes them
    assert paired.term("lr").se < absolute.term("lr").se / 2  # type: ignore[union-attr]
    assert paired.term("lr").ci_low <= TRUTH["lr"] <= paired.term("lr").ci_high  # type: ignore[union-attr]


def test_default_reference_is_the_lower_median_grid_value() -> None:
    study = make_study()
    assert default_reference(study) == {"learning_rate": 2e-5, "batch_size": 16.0, "epochs": 2.0}
    custom = make_study(reference={"batch_size": 32})
    assert default_reference(custom) == {"learning_rate": 2e-5, "batch_size": 32.0, "epochs": 2.0}


def test_a_reference_outside_the_grid_skips_the_paired_fits_with_a_message() -> None:
    study = make_study(reference={"learning_rate": 3e-5})
    result = analyze(study, synth_table(study, quadratic(study)))
    paired = result.fit("f1", "paired")
    assert not paired.ok and "reference" in (paired.message or "")
    assert any("3e-05 is not a grid value" in n for n in result.notes)
    assert result.fit("f1", "absolute").ok


def test_a_single_value_axis_is_dropped_with_a_note() -> None:
    study = make_study(ep=[2])
    result = analyze(study, synth_table(study, quadratic(study)))
    fit = result.fit("accuracy", "absolute")
    assert fit.ok and "ep" not in fit.formula and "lr:bs" in fit.formula
    assert any("epochs has a single value (2)" in n for n in result.notes)


def test_squares_of_two_valued_axes_are_left_out() -> None:
    study = make_study(bs=[16, 32])
    result = analyze(study, synth_table(study, quadratic(study)))
    fit = result.fit("accuracy", "absolute")
    assert "I(bs ** 2)" not in fit.formula and "I(lr ** 2)" in fit.formula and "bs:ep" in fit.formula
    assert any("batch size has 2 distinct values" in n for n in result.notes)


def test_too_few_trials_is_a_message_not_a_crash() -> None:
    study = make_study(lr=[2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0])  # the smoke study's shape
    result = analyze(study, synth_table(study, quadratic(study)))
    assert result.fit("accuracy", "absolute").ok  # 8 trials, 7 parameters
    paired = result.fit("accuracy", "paired")  # 7 trials, 7 parameters
    assert not paired.ok and paired.message is not None and paired.message.startswith("too few trials: 7")
    cubic = analyze(
        make_study(lr=[2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0], degree=3),
        synth_table(study, quadratic(study)),
    )
    assert not any(f.ok for f in cubic.fits)
    assert all(f.to_dict()["r2"] is None for f in cubic.fits)


def test_missing_configurations_make_a_rank_deficient_design_a_message() -> None:
    study = make_study(lr=[2e-5, 5e-5], bs=[8, 16], ep=[1], seeds=[0, 1, 2])
    table = synth_table(study, quadratic(study))
    gone = (table["learning_rate"] == 5e-5) & (table["batch_size"] == 16)
    table.loc[gone, "status"] = "failed"
    fit = analyze(study, table).fit("accuracy", "absolute")
    assert not fit.ok and "rank-deficient" in (fit.message or "")


def test_findings_and_paper_comparison_follow_the_fits() -> None:
    study = make_study()
    result = analyze(study, synth_table(study, quadratic(study), noise=0.003))
    texts = [f["text"] for f in result.findings]
    assert any(t.startswith("batch size: higher → lower accuracy, p = ") for t in texts)
    assert any(t.startswith("learning rate: higher → lower eval loss") for t in texts)
    assert any(t.startswith("learning rate (curvature): accuracy is ∩-shaped") for t in texts)
    assert not any(f["term"] in NULL_TERMS and f["p"] < 1e-6 for f in result.findings)
    rows = {(r["effect"], r["metric"]): r for r in result.paper}
    assert rows[("learning rate", "eval_loss")]["agrees"] is True  # significant, higher lr → lower loss
    assert rows[("batch size", "accuracy")]["agrees"] is True
    assert rows[("batch size", "eval_loss")]["agrees"] is False  # the paper found no effect; we built one
    assert rows[("epochs × batch size", "f1")]["direction"] == 1


def test_every_fit_reports_the_issue_fields() -> None:
    study = make_study()
    result = analyze(study, synth_table(study, quadratic(study)))
    assert len(result.fits) == 9
    for fit in result.fits:
        d = fit.to_dict()
        for key in ("formula", "coding", "n", "r2", "adj_r2", "f_pvalue", "aic", "bic", "terms", "anova"):
            assert key in d
        assert all(math.isfinite(d[k]) for k in ("r2", "adj_r2", "f_pvalue", "aic", "bic"))
        for term in d["terms"]:
            assert set(term) == {"term", "coef", "se", "t", "p", "ci_low", "ci_high", "significant"}
        assert {a["term"] for a in d["anova"]} == {t["term"] for t in d["terms"][1:]} | {"Residual"}
