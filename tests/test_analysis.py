"""The fits over a study's axes: seed blocks, known effects with noise, factors, identifiability, relative
fits, degenerate trials, adjusted p-values, and tables the report must survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from records_factory import make_study, simulate, study_with, write_table
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ftvar.stats import regression
from ftvar.stats.analysis import FIT_METRICS, analyze, collect
from ftvar.stats.regression import adjust, fit, resolve_seed_model
from ftvar.stats.terms import build
from ftvar.study.config import Study
from ftvar.study.design import DesignConfig

# true coefficients in the centred log coding of a 4 × 4 × 3 grid (lr = log10 lr − mean, bs = log2 bs − mean)
TRUTH = {"Intercept": 0.85, "lr": 0.02, "bs": -0.012, "ep": 0.004, "I(lr ** 2)": -0.03, "bs:ep": 0.003}
TERMS = ["lr", "bs", "ep", "I(lr ** 2)", "lr:bs", "lr:ep", "I(bs ** 2)", "bs:ep", "I(ep ** 2)"]


def quadratic(study: Study) -> object:
    lr_c = float(np.mean(np.log10(study.grid.learning_rate)))
    bs_c = float(np.mean(np.log2(study.grid.batch_size)))
    ep_c = float(np.mean(study.grid.epochs))

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) - lr_c
        z = np.log2(rows["batch_size"].to_numpy(dtype=float)) - bs_c
        e = rows["epochs"].to_numpy(dtype=float) - ep_c
        t = TRUTH
        return np.asarray(
            t["Intercept"]
            + t["lr"] * x
            + t["bs"] * z
            + t["ep"] * e
            + t["I(lr ** 2)"] * x * x
            + t["bs:ep"] * z * e
        )

    return mean


def trials(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["kind"] == "trial"].reset_index(drop=True)


def test_collected_records_give_a_seed_blocked_fit_that_covers_the_truth(tmp_path: Path) -> None:
    study = make_study(bootstrap=20)
    table = simulate(study, quadratic(study), init_sd=0.02, noise=0.004, rng=np.random.default_rng(0))
    write_table(tmp_path, study, table)
    result = analyze(study, collect(study, tmp_path).table)
    f = result.fit("accuracy")
    assert f is not None and f.ok and f.n == 144 and f.seed_model == "blocks"
    assert "C(seed)" in f.formula and "seed" not in [t.term for t in f.tests]
    assert [t.term for t in f.tests] == TERMS
    for name, value in TRUTH.items():
        if name != "Intercept":  # the intercept is the first seed's level
            c = f.coef(name)
            assert c is not None and c.ci_low <= value <= c.ci_high, c
    assert result.fit("accuracy", "absolute", "non-degenerate") is None  # no degenerate trial
    assert "one per init seed" in result.baselines.description


def test_seed_blocks_give_nominal_coverage_and_smaller_errors_than_ignoring_seeds() -> None:
    """Seed effects 5× the noise: blocks remove them from the residual; coverage of the 95% CIs ≈ 0.95."""
    study = make_study(seeds=[0, 1, 2])
    rng = np.random.default_rng(3)
    covered = {name: 0 for name in TRUTH if name != "Intercept"}  # the intercept is the first seed's level
    se_ratio = []
    runs = 60
    for _ in range(runs):
        rows = trials(simulate(study, quadratic(study), init_sd=0.02, noise=0.004, rng=rng))
        md = build(rows, study.axes, 2)
        f = fit(md, rows["accuracy"].to_numpy(), "accuracy", "absolute", "all")
        for name in covered:
            c = f.coef(name)
            assert c is not None
            covered[name] += c.ci_low <= TRUTH[name] <= c.ci_high
        naive = sm.OLS(rows["accuracy"].to_numpy(), md.X).fit()  # the same terms, seeds ignored
        se_ratio.append(f.coef("lr").se / naive.bse[md.columns.index("lr")])  # type: ignore[union-attr]
    rates = {k: v / runs for k, v in covered.items()}
    assert all(0.85 <= r <= 1.0 for r in rates.values()), rates
    assert np.median(se_ratio) < 0.5  # blocks remove the seeds' shared offsets from the error


@pytest.mark.parametrize("coding", ["log", "raw"])
def test_coefficients_match_least_squares_with_seed_dummies(coding: str) -> None:
    """Against statsmodels' formula OLS with C(seed) dummies; raw coding mixes scales from 1e-10 (a squared
    learning rate) to 1e1 (batch size), which the fit must survive."""
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 32], ep=[1, 2, 3], seeds=[0, 1, 2], coding=coding)
    rows = trials(simulate(study, quadratic(study), init_sd=0.01, rng=np.random.default_rng(1)))
    md = build(rows, study.axes, 2)
    f = fit(md, rows["accuracy"].to_numpy(), "accuracy", "absolute", "all")
    transform = {"log": (np.log10, np.log2), "raw": (lambda v: v, lambda v: v)}[coding]
    coded = md.rows.assign(
        lr=transform[0](rows["learning_rate"].to_numpy(dtype=float)),
        bs=transform[1](rows["batch_size"].to_numpy(dtype=float)),
        ep=rows["epochs"].to_numpy(dtype=float),
    )
    coded[["lr", "bs", "ep"]] -= coded[["lr", "bs", "ep"]].mean()
    formula = smf.ols(md.formula("accuracy"), coded.assign(seed=coded["init_seed"].astype(int))).fit()
    seed_x, _ = md.seed_dummies()
    x = np.column_stack([md.X, seed_x])
    norms = np.linalg.norm(x, axis=0)  # exact least squares needs the columns scaled (raw coding)
    exact = np.linalg.lstsq(x / norms, rows["accuracy"].to_numpy(), rcond=None)[0] / norms
    for j, c in enumerate(f.coefs[1:], start=1):
        assert c.coef == pytest.approx(exact[j], rel=1e-9), c.name
        # statsmodels solves unscaled: equal within a ten-thousandth of a standard error
        assert c.coef == pytest.approx(formula.params[c.name], abs=1e-4 * c.se), c.name
        assert c.se == pytest.approx(formula.bse[c.name], rel=1e-5), c.name
        assert c.t == pytest.approx(formula.tvalues[c.name], abs=1e-4), c.name
    # the intercept: the mean at the design's centre over the study's seeds, not the first seed's level
    at_centre = rows["accuracy"].to_numpy() - md.X[:, 1:] @ np.array([c.coef for c in f.coefs[1:]])
    assert f.coefs[0].coef == pytest.approx(at_centre.mean())


@pytest.mark.parametrize("seed", range(5))
def test_adjusted_p_values_match_statsmodels_multipletests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 8), rng.uniform(0, 0.01, 4), [0.03, 0.03, 1.0]])
    holm, bh = adjust(p.tolist())
    np.testing.assert_allclose(holm, multipletests(p, method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(bh, multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    holm_nan, _ = adjust([0.01, float("nan"), 0.04])
    assert np.isnan(holm_nan[1]) and holm_nan[0] == pytest.approx(0.02) and holm_nan[2] == pytest.approx(0.04)


def test_findings_use_holm_and_stay_short() -> None:
    study = make_study(bootstrap=0)
    table = simulate(study, quadratic(study), noise=0.003, rng=np.random.default_rng(2))
    result = analyze(study, table)
    assert len(result.findings) <= 6
    f = result.fit("accuracy")
    assert f is not None
    shown = {x["term"] for x in result.findings if x["metric"] == "accuracy" and x["term"]}
    assert shown and all(f.term(t).p_holm < 0.05 for t in shown)  # type: ignore[union-attr]
    texts = [x["text"] for x in result.findings]
    assert any(t.startswith("batch size: higher → lower accuracy") and "Holm p" in t for t in texts)
    assert any("peaks at learning rate ≈" in t and "inside the range" in t for t in texts)


def test_curvature_with_a_vertex_outside_the_grid_claims_no_optimum() -> None:
    study = make_study(lr=[1e-5, 2e-5, 5e-5], bs=[16], ep=[1], seeds=[0, 1, 2], bootstrap=0)

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) + 4.0  # vertex at lr = 1e-4, outside
        return np.asarray(0.9 - 0.2 * x * x)

    result = analyze(study, simulate(study, mean, noise=0.002, rng=np.random.default_rng(0)))
    text = " ".join(x["text"] for x in result.findings)
    assert "lies outside the range the study ran" in text and "peaks" not in text
    best = next(b for b in result.best if b.metric == "accuracy")
    assert best.axes[0].at_edge and best.axes[0].value == pytest.approx(5e-5)
    assert any("edge of the design" in n for n in best.notes)


def test_a_categorical_axis_is_a_factor_named_in_words() -> None:
    study = study_with(
        {
            "learning_rate": [1e-5, 3e-5, 1e-4],
            "batch_size": [16],
            "epochs": [1],
            "train.scheduler": ["linear", "cosine", "constant"],
            "seed": [0, 1, 2],
        },
        bootstrap=50,
        factor_interactions=True,
    )

    def mean(rows: pd.DataFrame) -> np.ndarray:
        sched = rows["train.scheduler"].map({"linear": 0.0, "cosine": 0.03, "constant": -0.02}).to_numpy()
        return np.asarray(0.8 + sched + 0.01 * np.log10(rows["learning_rate"].to_numpy(dtype=float)))

    result = analyze(study, simulate(study, mean, noise=0.004, rng=np.random.default_rng(0)))
    f = result.fit("accuracy")
    assert f is not None and f.ok
    t = f.term("C(scheduler)")
    assert t is not None and t.df == 2 and t.significant and t.label == "scheduler"
    assert f.term("C(scheduler):lr") is not None  # factor × numeric on request
    cosine = f.coef("C(scheduler)[T.cosine]")
    assert cosine is not None and cosine.ci_low <= 0.03 <= cosine.ci_high
    finding = next(x["text"] for x in result.findings if x["term"] == "C(scheduler)")
    assert finding.startswith("scheduler matters for accuracy") and "best level cosine" in finding
    best = next(b for b in result.best if b.metric == "accuracy")
    sched = next(a for a in best.axes if a.axis == "train.scheduler")
    assert sched.value == "cosine" and sched.level_shares["cosine"] > 0.9


def test_terms_the_design_cannot_identify_are_left_out_with_a_reason() -> None:
    two = make_study(bs=[16, 32], bootstrap=0)
    result = analyze(two, simulate(two, quadratic(two), rng=np.random.default_rng(0)))
    assert "I(bs ** 2)" not in result.terms and "I(lr ** 2)" in result.terms and "bs:ep" in result.terms
    assert any("batch size has 2 distinct values: its square cannot be identified" in n for n in result.notes)
    ccd = study_with(
        {
            "learning_rate": {"min": 1e-5, "max": 1e-4, "scale": "log"},
            "batch_size": {"min": 8, "max": 64, "scale": "log", "round": "pow2"},
            "epochs": [2],
            "seed": [0, 1],
        },
        design=DesignConfig(kind="ccd", center=2),
        degree=3,
        bootstrap=0,
    )
    table = simulate(
        ccd,
        lambda r: 0.8 + 0.01 * np.log10(r["learning_rate"].to_numpy(dtype=float)),
        rng=np.random.default_rng(0),
    )
    result = analyze(ccd, table)
    assert "I(lr ** 3)" not in result.terms and "I(lr ** 2)" in result.terms
    assert any(
        "learning rate has 3 distinct values: its cube cannot be identified" in n for n in result.notes
    )
    assert result.fit("accuracy").ok  # type: ignore[union-attr]
    sparse = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16], ep=[1], seeds=[0, 1], bootstrap=0)
    table = simulate(sparse, quadratic(sparse), rng=np.random.default_rng(0))
    gone = table["batch_size"].eq(16) & ~table["learning_rate"].eq(3e-5)
    table.loc[gone, "status"] = "failed"  # 4 configurations left for 5 polynomial columns
    result = analyze(sparse, table)
    assert len(result.terms) == 3
    assert any("cannot be identified in this design" in n for n in result.notes), result.notes
    assert result.fit("accuracy").ok  # type: ignore[union-attr]


def test_a_single_value_axis_is_dropped_with_a_note() -> None:
    study = make_study(ep=[2], bootstrap=0)
    result = analyze(study, simulate(study, quadratic(study)))
    f = result.fit("accuracy")
    assert f is not None and f.ok and "ep" not in f.formula and "lr:bs" in f.formula
    assert any("epochs has a single value (2)" in n for n in result.notes)


def test_too_few_trials_is_a_message_not_a_crash() -> None:
    study = make_study(lr=[2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0], bootstrap=0)
    result = analyze(study, simulate(study, quadratic(study)))
    assert result.fit("accuracy").ok  # type: ignore[union-attr]  # 8 trials, 7 parameters
    one = make_study(lr=[2e-5, 5e-5], bs=[8, 16], ep=[1], seeds=[0], bootstrap=0)
    result = analyze(one, simulate(one, quadratic(one)))
    f = result.fit("accuracy")
    assert f is not None and not f.ok and (f.message or "").startswith("too few trials: 4")


def test_relative_fit_is_one_line_with_a_shared_baseline_and_a_real_fit_per_init_seed() -> None:
    study = make_study(seeds=[0, 1, 2], bootstrap=0)
    shared = analyze(
        study, simulate(study, quadratic(study), rng=np.random.default_rng(0))
    )  # no init-seed effect
    assert shared.fit("accuracy", "relative") is None
    assert shared.relative_note and "scaled by one constant" in shared.relative_note
    table = simulate(study, quadratic(study), init_sd=0.05, rng=np.random.default_rng(1))
    result = analyze(study, table)
    rel = result.fit("accuracy", "relative")
    assert rel is not None and rel.ok and rel.response == "accuracy_rel" and result.relative_note is None
    rows = trials(table)
    base = table[table["kind"] == "baseline"].set_index("init_seed")["accuracy"]
    expected = (rows["accuracy"] - rows["init_seed"].map(base)) / rows["init_seed"].map(base) * 100
    md = build(rows, study.axes, 2)
    again = fit(md, expected.to_numpy(dtype=float), "accuracy", "relative", "all")
    assert rel.coef("lr").coef == pytest.approx(again.coef("lr").coef)  # type: ignore[union-attr]
    absolute = result.fit("accuracy")
    assert absolute is not None and rel.coef("lr").coef != pytest.approx(absolute.coef("lr").coef)  # type: ignore[union-attr]


def test_degenerate_trials_are_flagged_and_fitted_with_and_without() -> None:
    study = make_study(seeds=[0, 1, 2], bootstrap=0)

    def failing(rows: pd.DataFrame) -> np.ndarray:  # large learning rates with small batches fail
        return np.where((rows["learning_rate"] >= 1e-4) & (rows["batch_size"] <= 16), 0.7, 0.0)

    table = simulate(study, quadratic(study), degenerate=failing, majority=0.51, rng=np.random.default_rng(4))
    n_deg = int(table["degenerate"].sum())
    # half the records predate the eval field: flagged from accuracy == majority share
    older = table.index[(table["kind"] == "trial")][::2]
    table.loc[older, "degenerate"] = pd.NA
    result = analyze(study, table)
    d = result.degenerate
    assert d.n_degenerate == n_deg and d.n_trials == 144 and 0 < d.from_accuracy < n_deg
    assert d.per_configuration and d.per_configuration[0]["learning_rate"] == 1e-4
    assert all(r["batch_size"] <= 16 for r in d.per_configuration)
    without = result.fit("accuracy", "absolute", "non-degenerate")
    assert without is not None and without.ok and without.n == 144 - n_deg
    assert without.coef("lr").ci_low <= TRUTH["lr"] <= without.coef("lr").ci_high  # type: ignore[union-attr]
    assert result.configurations["n_degenerate"].sum() == n_deg


def test_seed_model_auto_blocks_when_balanced_and_mixed_when_unbalanced_with_many_seeds() -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 32], ep=[1, 2], seeds=list(range(6)))
    rows = trials(simulate(study, quadratic(study), init_sd=0.02, rng=np.random.default_rng(0)))
    md = build(rows, study.axes, 2)
    assert resolve_seed_model(md, "auto")[0] == "blocks"
    blocks = fit(md, rows["accuracy"].to_numpy(), "accuracy", "absolute", "all", "blocks")
    mixed = fit(md, rows["accuracy"].to_numpy(), "accuracy", "absolute", "all", "mixed")
    assert mixed.seed_model == "mixed"
    for c in blocks.coefs[1:]:  # balanced: the same hyperparameter estimates
        assert mixed.coef(c.name).coef == pytest.approx(c.coef, abs=1e-6)  # type: ignore[union-attr]
    unbalanced = rows.drop(index=rows.index[rows["init_seed"].eq(0) & rows["learning_rate"].eq(1e-4)])
    md_u = build(unbalanced, study.axes, 2)
    model, why = resolve_seed_model(md_u, "auto")
    assert model == "mixed" and "unbalanced" in why
    few = build(unbalanced[unbalanced["init_seed"] < 3], study.axes, 2)
    assert resolve_seed_model(few, "auto")[0] == "blocks"
    f = fit(md_u, unbalanced["accuracy"].to_numpy(), "accuracy", "absolute", "all")
    assert f.ok and f.seed_model == "mixed" and f.coef("lr").ci_low <= TRUTH["lr"] <= f.coef("lr").ci_high  # type: ignore[union-attr]


@pytest.mark.parametrize(("init_sd", "seed"), [(0.02, 1), (0.005, 2), (0.0, 3), (0.0, 5)])
def test_the_mixed_fit_from_the_blocks_start_is_at_least_as_good_as_statsmodels_own_start(
    init_sd: float, seed: int
) -> None:
    """The MixedLM starts from the seed-blocked fit (8× faster on 98,000 trials). With seed noise it ends
    where statsmodels' own start does (the same fixed effects and standard errors); with none, the REML
    optimum is on the boundary, where statsmodels' own start stops early: ours reaches a likelihood at least
    as high."""
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 32], ep=[1, 2], seeds=list(range(8)))
    rows = trials(simulate(study, quadratic(study), init_sd=init_sd, rng=np.random.default_rng(seed)))
    rng = np.random.default_rng(seed)
    rows = rows.drop(index=rng.choice(rows.index, size=len(rows) // 5, replace=False))  # unbalanced
    md = build(rows, study.axes, 2)
    y, groups = rows["accuracy"].to_numpy(), md.seeds[0].codes
    ours = fit(md, y, "accuracy", "absolute", "all", "mixed")
    assert ours.seed_model == "mixed"
    model = sm.MixedLM(y, md.X, groups)
    own = model.fit(reml=True)
    started = model.fit(reml=True, start_params=regression._start(md, y, groups))
    assert [c.coef for c in ours.coefs] == pytest.approx(list(started.fe_params), rel=1e-9, abs=1e-12)
    assert started.llf >= own.llf - 1e-6
    assert ours.fitted == pytest.approx(np.asarray(started.fittedvalues), abs=1e-10)
    if init_sd > 0:
        se = np.sqrt(np.diag(own.cov_params()))[: md.X.shape[1]]
        for j, c in enumerate(ours.coefs):
            assert c.coef == pytest.approx(own.fe_params[j], rel=1e-4, abs=1e-6)
            assert c.se == pytest.approx(se[j], rel=1e-3, abs=1e-7)
        assert ours.sigma == pytest.approx(np.sqrt(own.scale), rel=1e-4)


def test_crossed_init_and_order_seeds_are_two_blocks() -> None:
    study = study_with(
        {
            "learning_rate": [1e-5, 3e-5, 1e-4],
            "batch_size": [16, 32],
            "epochs": [1],
            "init_seed": [0, 1, 2],
            "order_seed": [0, 1, 2],
        },
        bootstrap=0,
    )
    table = simulate(
        study, lambda r: np.full(len(r), 0.8), init_sd=0.03, order_sd=0.01, rng=np.random.default_rng(0)
    )
    result = analyze(study, table)
    f = result.fit("accuracy")
    assert f is not None and "C(init_seed) + C(order_seed)" in f.formula
    names = [c.name for c in result.variance[0].components]
    assert "init_seed" in names and "order_seed" in names


@pytest.mark.parametrize(
    "damage",
    [
        "nan_metrics",
        "all_degenerate",
        "one_trial",
        "constant",
        "missing_axis",
        "junk_axis_value",
        "failed_half",
        "no_seeds_column",
    ],
)
def test_odd_tables_give_an_analysis_not_a_crash(damage: str) -> None:
    study = make_study(lr=[1e-5, 1e-4], bs=[8, 16], ep=[1], seeds=[0, 1], bootstrap=20)
    table = simulate(study, quadratic(study), init_sd=0.01, rng=np.random.default_rng(0))
    is_trial = table["kind"] == "trial"
    if damage == "nan_metrics":
        table.loc[table.index[is_trial][:3], ["f1", "eval_loss"]] = np.nan
    elif damage == "all_degenerate":
        table.loc[is_trial, "degenerate"] = True
        table.loc[is_trial, "accuracy"] = 0.5
    elif damage == "one_trial":
        table = pd.concat([table[~is_trial], table[is_trial].head(1)])
    elif damage == "constant":
        table.loc[is_trial, ["accuracy", "f1", "eval_loss"]] = 0.5
    elif damage == "missing_axis":
        table.loc[table.index[is_trial][:2], "batch_size"] = pd.NA
    elif damage == "junk_axis_value":
        table["learning_rate"] = table["learning_rate"].astype(object)
        table.loc[table.index[is_trial][0], "learning_rate"] = "fast"
    elif damage == "failed_half":
        table.loc[table.index[is_trial][::2], "status"] = "failed"
    elif damage == "no_seeds_column":
        table = table.drop(columns=["init_seed", "order_seed"])
    result = analyze(study, table)
    assert len(result.fits) >= 1 or result.notes
    for f in result.fits:
        assert f.status in ("ok", "skipped")
        f.to_dict()
    for metric in FIT_METRICS:
        assert result.fit(metric) is None or isinstance(result.fit(metric).n, int)  # type: ignore[union-attr]


def test_a_sobol_design_is_analysed_like_a_grid() -> None:
    study = study_with(
        {
            "learning_rate": {"min": 1e-5, "max": 1e-3, "scale": "log"},
            "batch_size": [16, 32],
            "epochs": [1],
            "train.warmup_ratio": {"min": 0.0, "max": 0.2},
            "seed": [0, 1],
        },
        design=DesignConfig(kind="sobol", n=16, seed=0),
        bootstrap=50,
    )

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) + 4
        return np.asarray(0.85 - 0.03 * x * x + 0.05 * rows["train.warmup_ratio"].to_numpy(dtype=float))

    squares = []
    for seed in range(4):
        result = analyze(study, simulate(study, mean, noise=0.003, rng=np.random.default_rng(seed)))
        f = result.fit("accuracy")
        assert f is not None and f.ok and "I(lr ** 2)" in f.formula and "warmup_ratio" in f.formula
        squares.append(f.coef("I(lr ** 2)").coef)  # type: ignore[union-attr]
    assert np.mean(squares) == pytest.approx(-0.03, abs=0.003)  # 16 points, 2 seeds: unbiased on average
    best = next(b for b in result.best if b.metric == "accuracy")
    lr = best.axes[0]
    assert lr.ci_low is not None and lr.ci_low <= 1e-4 <= lr.ci_high  # type: ignore[operator]


def test_the_metrics_analysed_in_parallel_processes_give_the_serial_analysis() -> None:
    """Large studies analyse their metrics in forked workers (one per metric, seeded by metric): the same
    numbers, notes and order as one after the other, relative fits, degenerate trials and a failing part
    included."""
    study = make_study(seeds=[0, 1, 2, 3], bootstrap=200)
    table = simulate(study, quadratic(study), init_sd=0.03, degenerate=0.1, rng=np.random.default_rng(3))
    table.loc[table.index[:5], "eval_loss"] = np.nan  # one metric with fewer rows than the others
    serial = analyze(study, table, parallel=False)
    forked = analyze(study, table, parallel=True)

    def numbers(a: object) -> object:
        return (
            [(f.metric, f.kind, f.subset, [c.coef for c in f.coefs], [t.p for t in f.tests]) for f in a.fits],
            [(d.metric, [(c.name, c.share, c.ci_low, c.ci_high) for c in d.components]) for d in a.variance],
            [(s.metric, s.chosen) for s in a.selection],
            [(b.metric, repr(b)) for b in a.best],
            a.notes,
            a.relative_note,
            (a.seed_model, a.seed_model_why),
            sorted(a.models),
        )

    assert {f.kind for f in serial.fits} == {"absolute", "relative"}
    assert {f.subset for f in serial.fits} == {"all", "non-degenerate"}
    assert numbers(serial) == numbers(forked)


def test_a_killed_analysis_worker_leaves_the_serial_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked worker that dies (the kernel's out-of-memory killer) breaks the pool: the metrics are then
    analysed one at a time in the process itself, with the same numbers."""
    import os

    from ftvar.stats import analysis as analysis_mod

    study = make_study(seeds=[0, 1, 2], bootstrap=100)
    table = simulate(study, quadratic(study), rng=np.random.default_rng(5))
    serial = analyze(study, table, parallel=False)
    parent = os.getpid()
    real = analysis_mod._metric_part

    def dies_in_a_worker(job: object, i: int) -> object:
        if os.getpid() != parent:
            os._exit(137)
        return real(job, i)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis_mod, "_metric_part", dies_in_a_worker)
    rescued = analyze(study, table, parallel=True)
    assert [f.coefs for f in rescued.fits] == [f.coefs for f in serial.fits]
    assert [d.components for d in rescued.variance] == [d.components for d in serial.variance]


def test_findings_adjust_over_every_metrics_terms_together() -> None:
    """One family for the findings: Holm over the terms of all three metrics' fits of all trials, so a term
    is a finding only if it survives 3 × 9 = 27 tests, not 9 (the term tables keep Holm per fit)."""
    study = make_study(bootstrap=0)
    result = analyze(study, simulate(study, quadratic(study), noise=0.01, rng=np.random.default_rng(4)))
    family = [t for f in result.fits if f.kind == "absolute" and f.subset == "all" for t in f.tests]
    assert result.family == len(family) == 27
    p = np.array([t.p for t in family])
    holm_all = multipletests(p, method="holm")[1]
    assert np.allclose([t.p_family for t in family], holm_all)
    assert all(t.p_family >= t.p_holm - 1e-12 for t in family)  # type: ignore[operator]
    for x in result.findings:
        if x["term"]:
            assert x["p_holm"] < 0.05 and any(
                t.term == x["term"] and t.p_family == x["p_holm"] for t in family
            )


def test_the_mixed_model_tests_with_containment_degrees_of_freedom() -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 32], ep=[1, 2], seeds=list(range(6)))
    rows = trials(simulate(study, quadratic(study), init_sd=0.02, rng=np.random.default_rng(0)))
    rows = rows.drop(index=rows.index[rows["init_seed"].eq(0) & rows["learning_rate"].eq(1e-4)])
    md = build(rows, study.axes, 2)
    f = fit(md, rows["accuracy"].to_numpy(), "accuracy", "absolute", "all", "mixed")
    assert f.seed_model == "mixed" and any("containment degrees of freedom" in n for n in f.notes)
    df = md.n - md.X.shape[1] - 5  # n − p − (seed levels − 1)
    assert f.df_resid == df
    lr = f.coef("lr")
    assert lr is not None
    assert lr.p == pytest.approx(2 * stats.t.sf(abs(lr.t), df))  # a t-test, not a z-test
    assert lr.ci_high - lr.coef == pytest.approx(stats.t.ppf(0.975, df) * lr.se)


def test_dropped_trials_are_counted_and_near_degenerate_runs_flagged() -> None:
    study = make_study(lr=[1e-5, 1e-4], bs=[16, 32], ep=[1], seeds=[0, 1, 2], bootstrap=0)
    table = simulate(study, lambda r: np.full(len(r), 0.8), rng=np.random.default_rng(0))
    t = table.index[table["kind"] == "trial"]
    table.loc[t[0], ["status", "accuracy", "f1", "eval_loss"]] = ["failed", np.nan, np.nan, np.nan]
    table.loc[t[1], ["status", "accuracy", "f1", "eval_loss"]] = ["diverged", np.nan, np.nan, np.nan]
    table["top_class_share"] = 0.5
    table.loc[t[2], "top_class_share"] = 0.97  # predicts one class for 97% of the rows: near-degenerate
    table.loc[t[3], "top_class_share"] = 0.94
    base = table.index[table["kind"] == "baseline"]
    table.loc[base[0], "f1"] = 0.0  # a head that predicts one class: F1 0, no relative F1
    result = analyze(study, table)
    assert any("1 failed and 1 diverged trial(s) have no metric" in n for n in result.notes)
    assert any("relative F1: 3 trial(s) whose baseline is 0" in n for n in result.notes)
    assert result.degenerate.n_near == 1 and result.degenerate.threshold == 0.95
    strict = analyze(
        type(study)(
            name=study.name, grid=study.grid, analysis=type(study.analysis)(bootstrap=0, near_degenerate=0.9)
        ),
        table,
    )
    assert strict.degenerate.n_near == 2
