"""The paper's regressions on a collected study: absolute, relative-to-baseline and paired-relative OLS fits.

Predictors are coded (`log`: log10 learning rate, log2 batch size, raw epochs; `raw`: as given), centred on
the mean of the ok trials (so that linear terms are slopes at the centre of the grid, even with squares and
interactions), and expanded into the full polynomial of the configured degree. Fits use statsmodels formulas
and type-II ANOVA. The result types live in ftvar.fits, the findings and the paper comparison in
ftvar.findings; they and `collect` (ftvar.collect) are re-exported here.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from ftvar.collect import CollectResult, SkippedRecordsError, collect
from ftvar.config import Study
from ftvar.findings import findings, paper_comparison
from ftvar.fits import (
    ALPHA,
    FIT_KINDS,
    FIT_METRICS,
    LABELS,
    METRIC_LABELS,
    VARIABLES,
    Analysis,
    Design,
    Fit,
    Term,
    jsonable,
)

__all__ = [
    "ALPHA",
    "FIT_KINDS",
    "FIT_METRICS",
    "LABELS",
    "METRIC_LABELS",
    "VARIABLES",
    "Analysis",
    "CollectResult",
    "Design",
    "Fit",
    "SkippedRecordsError",
    "Term",
    "analyze",
    "collect",
    "findings",
    "jsonable",
    "paper_comparison",
]

CODING = {
    "log": {"lr": "log10", "bs": "log2", "ep": "identity"},
    "raw": {"lr": "identity", "bs": "identity", "ep": "identity"},
}
_TRANSFORM: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log10": np.log10,
    "log2": np.log2,
    "identity": lambda x: x,
}
# the paper's headline results: (effect, term, metric, fit, paper p, paper direction: sign of the slope or 0)


def default_reference(study: Study) -> dict[str, float]:
    """The paired fit's reference: analysis.reference where given, else each axis' median grid value.

    For an even number of grid values the lower median (a real grid value) is used: [8, 16, 32, 64] → 16.
    """
    ref: dict[str, float] = {}
    for col, _, _ in VARIABLES:
        values = sorted(getattr(study.grid, col))
        ref[col] = float(values[(len(values) - 1) // 2])
    ref.update({k: float(v) for k, v in (study.analysis.reference or {}).items()})
    return ref


def _term_name(monomial: tuple[str, ...]) -> str:
    powers = Counter(monomial)
    return ":".join(v if k == 1 else f"I({v} ** {k})" for v, k in powers.items())


def build_design(trials: pd.DataFrame, coding: str, degree: int) -> tuple[Design, pd.DataFrame]:
    """Code and centre the hyperparameters of the ok trials; list identifiable polynomial terms."""
    data = trials.copy()
    variables: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for col, short, label in VARIABLES:
        values = sorted(float(v) for v in data[col].unique())
        if len(values) < 2:
            shown = f"{values[0]:g}" if values else "none"
            notes.append(f"{label} has a single value ({shown}) in the ok trials: dropped from the formulas")
            continue
        transform = CODING[coding][short]
        coded = np.asarray(_TRANSFORM[transform](data[col].astype("float64").to_numpy()), dtype="float64")
        centre = float(coded.mean())
        data[short] = coded - centre
        variables[short] = {"column": col, "transform": transform, "centre": centre, "values": values}
    terms: list[str] = []
    for k in range(1, degree + 1):
        for mono in itertools.combinations_with_replacement(list(variables), k):
            too_few = [v for v, p in Counter(mono).items() if p >= len(variables[v]["values"])]
            if not too_few:
                terms.append(_term_name(mono))
    for v, info in variables.items():
        if degree >= 2 and len(info["values"]) < 3:
            notes.append(
                f"{LABELS[v]} has {len(info['values'])} distinct values: its square is not "
                "identifiable and is left out"
            )
    return Design(variables, terms, notes), data


def _rank(exog: np.ndarray) -> int:
    """Numerical rank, from the Gram matrix of the columns scaled to unit norm (raw coding mixes scales
    from 1e-10 to 1e2); columns whose condition number exceeds 1e5 count as collinear."""
    norms = np.linalg.norm(exog, axis=0)
    if not norms.all():
        return int(np.count_nonzero(norms))
    scaled = exog / norms
    eig = np.linalg.eigvalsh(scaled.T @ scaled)
    return int(np.count_nonzero(eig > eig.max() * 1e-10))


def fit_ols(data: pd.DataFrame, response: str, design: Design, metric: str, kind: str, coding: str) -> Fit:
    """OLS of `response` on the design's terms; a skipped Fit (not an exception) when it cannot be fitted."""
    formula = f"{response} ~ " + (" + ".join(design.terms) or "1")
    k = 1 + len(design.terms)
    fit = Fit(metric, kind, response, formula, coding, n=len(data), n_params=k)
    if len(data) <= k:
        fit.status = "skipped"
        fit.message = (
            f"too few trials: {len(data)} ok trial(s) for {k} parameters; need at least {k + 1} "
            "(add seeds or grid values, or lower analysis.degree)"
        )
        return fit
    model = smf.ols(formula, data[[response, *design.variables]])
    if _rank(model.exog) < k:
        fit.status = "skipped"
        fit.message = (
            "the design is rank-deficient: some hyperparameter combinations have no ok trial "
            "(see ftvar status), so not every term can be estimated"
        )
        return fit
    _fill(fit, model.fit(), data[response].to_numpy(), bool(design.terms))
    return fit


def _fill(fit: Fit, res: Any, observed: np.ndarray, has_terms: bool) -> None:
    """Copy statistics, terms (95% CI) and the type-II ANOVA table of a statsmodels result into `fit`."""
    ci = res.conf_int(ALPHA)
    stats = zip(res.params, res.bse, res.tvalues, res.pvalues, ci[0], ci[1], strict=True)
    fit.terms = [Term(str(name), *map(float, row)) for name, row in zip(res.params.index, stats, strict=True)]
    fit.r2, fit.adj_r2 = float(res.rsquared), float(res.rsquared_adj)
    fit.aic, fit.bic, fit.df_resid = float(res.aic), float(res.bic), float(res.df_resid)
    fit.f_pvalue = float(res.f_pvalue) if has_terms else None
    fit.fitted, fit.observed = np.asarray(res.fittedvalues), observed
    if has_terms:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = anova_lm(res, typ=2)
        cols = {"sum_sq": "sum_sq", "df": "df", "F": "F", "p": "PR(>F)"}
        fit.anova = [
            {"term": str(i), **{k: float(r[c]) for k, c in cols.items()}} for i, r in table.iterrows()
        ]


def _paired(trials: pd.DataFrame, metric: str, ref: dict[str, float]) -> tuple[pd.DataFrame, list[str]]:
    """Trials minus the same seed's reference trial; reference rows (identically 0) are left out."""
    is_ref = np.ones(len(trials), dtype=bool)
    for col, _, _ in VARIABLES:
        is_ref &= np.isclose(trials[col].astype("float64").to_numpy(), ref[col], rtol=1e-9, atol=0)
    refs = trials.loc[is_ref].set_index("seed")[metric]
    data = trials.loc[~is_ref].copy()
    data[f"{metric}_paired"] = data[metric] - data["seed"].map(refs)
    missing = data[f"{metric}_paired"].isna()
    notes = [f"paired: {int(is_ref.sum())} reference trial(s) (difference identically 0) left out"]
    if missing.any():
        seeds = data.loc[missing, "seed"].nunique()
        notes.append(
            f"paired: {int(missing.sum())} trial(s) of {seeds} seed(s) without an ok reference trial left out"
        )
    return data.loc[~missing], notes


def _skipped(metric: str, kind: str, design: Design, coding: str, message: str) -> Fit:
    suffix = {"absolute": "", "relative": "_rel", "paired": "_paired"}[kind]
    n_params = 1 + len(design.terms)
    return Fit(metric, kind, metric + suffix, "", coding, 0, n_params, status="skipped", message=message)


def _fits_for(
    metric: str,
    data: pd.DataFrame,
    design: Design,
    coding: str,
    baseline: dict[str, float] | None,
    ref: dict[str, float] | None,
) -> list[Fit]:
    """The absolute, relative and paired fits of one metric."""
    out = [fit_ols(data, metric, design, metric, "absolute", coding)]
    if baseline is None:
        msg = "no ok baseline record (trial `baseline`; needs analysis.baseline = pretrained)"
        out.append(_skipped(metric, "relative", design, coding, msg))
    else:
        rel_data = data.assign(**{f"{metric}_rel": data[metric] - baseline[metric]})
        rel = fit_ols(rel_data, f"{metric}_rel", design, metric, "relative", coding)
        rel.notes.append(
            "one shared baseline: subtracting it only moves the intercept; slopes, p-values "
            "and R² equal the absolute fit's"
        )
        out.append(rel)
    if ref is None:
        out.append(
            _skipped(metric, "paired", design, coding, "the reference configuration is not in the grid")
        )
    else:
        pdata, notes = _paired(data, metric, ref)
        paired = fit_ols(pdata, f"{metric}_paired", design, metric, "paired", coding)
        paired.notes.extend(notes)
        out.append(paired)
    return out


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (lr, bs, epochs) over seeds: ok/failed counts and mean, sd of each metric."""
    trials = table[(table["kind"] == "trial") & table["in_grid"]]
    keys = ["learning_rate", "batch_size", "epochs"]
    ok = trials[trials["status"] == "ok"]
    stats = ok.groupby(keys)[[*FIT_METRICS, "train_loss"]].agg(["mean", "std"])
    stats.columns = [f"{m}_{s.replace('std', 'sd')}" for m, s in stats.columns]
    counts = trials.assign(ok=trials["status"].eq("ok")).groupby(keys)["ok"].agg(n_ok="sum", n_trials="size")
    out = counts.join(stats, how="left").reset_index()
    out["n_failed"] = out["n_trials"] - out["n_ok"]
    return out.sort_values("accuracy_mean", ascending=False, na_position="last").reset_index(drop=True)


def _baseline(table: pd.DataFrame) -> dict[str, float] | None:
    rows = table[(table["kind"] == "baseline") & (table["status"] == "ok") & table["in_grid"]]
    return None if rows.empty else {m: float(rows.iloc[0][m]) for m in FIT_METRICS}


def analyze(study: Study, table: pd.DataFrame) -> Analysis:
    """Every fit of the issue on a collected table (ok, in-grid trials only)."""
    keep = [*(col for col, _, _ in VARIABLES), "seed", *FIT_METRICS]
    trials = table.loc[(table["kind"] == "trial") & (table["status"] == "ok") & table["in_grid"], keep]
    a = study.analysis
    coding = a.coding if isinstance(a.coding, str) else "log"
    design, data = build_design(trials, coding, a.degree)
    notes = list(design.notes)
    n_out = int(((table["kind"] == "trial") & (table["status"] == "ok") & ~table["in_grid"]).sum())
    if n_out:
        notes.append(f"{n_out} ok record(s) of this study are outside the current grid and left out")
    ref: dict[str, float] | None = default_reference(study)
    for col, _, _ in VARIABLES:
        if ref is not None and not np.isclose(getattr(study.grid, col), ref[col], rtol=1e-9, atol=0).any():
            notes.append(f"analysis.reference {col} = {ref[col]:g} is not a grid value: paired fits skipped")
            ref = None
    baseline = _baseline(table)
    fits = [f for m in FIT_METRICS for f in _fits_for(m, data, design, coding, baseline, ref)]
    return Analysis(
        study.name,
        coding,
        a.degree,
        design,
        baseline,
        ref,
        fits,
        findings(fits),
        paper_comparison(fits),
        configurations(table),
        notes,
    )
