"""The paper's regressions on a collected study: absolute, relative-to-baseline and paired-relative OLS fits.

Predictors are coded (`log`: log10 learning rate, log2 batch size, raw epochs; `raw`: as given), centred on
the mean of the ok trials (so that linear terms are slopes at the centre of the grid, even with squares and
interactions), and expanded into the full polynomial of the configured degree. Fits use statsmodels formulas
and type-II ANOVA. `collect` lives in ftvar.collect and is re-exported here.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from ftvar.collect import CollectResult, SkippedRecordsError, collect
from ftvar.config import Study

__all__ = ["Analysis", "CollectResult", "Fit", "SkippedRecordsError", "Term", "analyze", "collect"]

ALPHA = 0.05
FIT_METRICS = ("accuracy", "f1", "eval_loss")
FIT_KINDS = ("absolute", "relative", "paired")
# (record column, formula name, label)
VARIABLES = (
    ("learning_rate", "lr", "learning rate"),
    ("batch_size", "bs", "batch size"),
    ("epochs", "ep", "epochs"),
)
LABELS = {short: label for _, short, label in VARIABLES}
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "eval_loss": "eval loss"}
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
PAPER = (
    ("learning rate", "lr", "eval_loss", "relative", 0.027, -1),
    ("batch size", "bs", "accuracy", "absolute", 0.028, 0),
    ("batch size", "bs", "f1", "absolute", 0.005, 0),
    ("batch size", "bs", "eval_loss", "absolute", 0.170, 0),
    ("epochs × batch size", "bs:ep", "f1", "absolute", 0.001, 0),
)


@dataclass
class Term:
    term: str
    coef: float
    se: float
    t: float
    p: float
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        return bool(self.p < ALPHA)


@dataclass
class Fit:
    """One OLS fit. `status` is "ok" or "skipped" (then `message` says why and the statistics are None)."""

    metric: str
    kind: str  # absolute | relative | paired
    response: str
    formula: str
    coding: str
    n: int
    n_params: int
    status: str = "ok"
    message: str | None = None
    notes: list[str] = field(default_factory=list)
    r2: float | None = None
    adj_r2: float | None = None
    f_pvalue: float | None = None
    aic: float | None = None
    bic: float | None = None
    df_resid: float | None = None
    terms: list[Term] = field(default_factory=list)
    anova: list[dict[str, Any]] = field(default_factory=list)
    fitted: np.ndarray | None = field(default=None, repr=False)
    observed: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def term(self, name: str) -> Term | None:
        want = name.replace(" ", "")
        return next((t for t in self.terms if t.term.replace(" ", "") == want), None)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("fitted", "observed", "terms")}
        out["terms"] = [{**asdict(t), "significant": t.significant} for t in self.terms]
        cleaned: dict[str, Any] = jsonable(out)
        return cleaned


@dataclass
class Design:
    """The predictors actually used: coded, centred columns and the formula's terms (without intercept)."""

    variables: dict[str, dict[str, Any]]  # short name → {column, transform, centre, values}
    terms: list[str]
    notes: list[str]


@dataclass
class Analysis:
    study: str
    coding: str
    degree: int
    design: Design
    baseline: dict[str, float] | None
    reference: dict[str, float] | None
    fits: list[Fit]
    findings: list[dict[str, Any]]
    paper: list[dict[str, Any]]
    configurations: pd.DataFrame
    notes: list[str]

    def fit(self, metric: str, kind: str) -> Fit:
        return next(f for f in self.fits if f.metric == metric and f.kind == kind)


def jsonable(value: Any) -> Any:
    """JSON-safe: numpy scalars → Python, NaN/inf → None, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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


def _finding(fit: Fit, t: Term) -> str:
    metric = METRIC_LABELS[fit.metric]
    parts = Counter(f.split("(")[-1].split(" ")[0] for f in t.term.split(":"))
    where = f"p = {t.p:.2g} ({fit.kind} fit)"
    if len(parts) == 1 and ":" not in t.term:
        (v,) = parts
        if "**" not in t.term:
            return f"{LABELS[v]}: higher → {'higher' if t.coef > 0 else 'lower'} {metric}, {where}"
        if "** 2" not in t.term:
            return f"{t.term}: coefficient {t.coef:+.3g} on {metric}, {where}"
        shape = "∩-shaped: highest" if t.coef < 0 else "∪-shaped: lowest"
        return f"{LABELS[v]} (curvature): {metric} is {shape} at intermediate {LABELS[v]}, {where}"
    names = " × ".join(LABELS[v] for v in parts)
    if len(parts) == 2 and "**" not in t.term:
        a, b = parts
        return (
            f"{names}: {'positive' if t.coef > 0 else 'negative'} interaction: the slope of {metric} in "
            f"{LABELS[a]} {'rises' if t.coef > 0 else 'falls'} as {LABELS[b]} grows, {where}"
        )
    return f"{t.term}: coefficient {t.coef:+.3g} on {metric}, {where}"


def findings(fits: list[Fit]) -> list[dict[str, Any]]:
    """One plain-language line per significant term of the absolute and paired fits (relative = absolute)."""
    out = []
    for fit in fits:
        if not fit.ok or fit.kind == "relative":
            continue
        for t in fit.terms:
            if t.term != "Intercept" and t.significant:
                out.append(
                    {
                        "metric": fit.metric,
                        "fit": fit.kind,
                        "term": t.term,
                        "coef": t.coef,
                        "p": t.p,
                        "text": _finding(fit, t),
                    }
                )
    order = {m: i for i, m in enumerate(FIT_METRICS)}
    return sorted(out, key=lambda f: (order[f["metric"]], f["fit"], f["p"]))


def paper_comparison(fits: list[Fit]) -> list[dict[str, Any]]:
    """The paper's headline results next to this study's: direction and significance at 0.05."""
    rows = []
    for effect, term, metric, kind, paper_p, paper_dir in PAPER:
        fit = next(f for f in fits if f.metric == metric and f.kind == kind)
        note = None
        if not fit.ok and kind == "relative":
            fit = next(f for f in fits if f.metric == metric and f.kind == "absolute")
            note = "relative fit unavailable; absolute fit used (a shared baseline leaves slopes unchanged)"
        t = fit.term(term) if fit.ok else None
        row: dict[str, Any] = {
            "effect": effect,
            "term": term,
            "metric": metric,
            "fit": fit.kind,
            "paper_p": paper_p,
            "paper_direction": paper_dir or None,
            "coef": None,
            "p": None,
            "direction": None,
            "agrees": None,
            "note": note,
        }
        if t is None:
            row["note"] = fit.message if not fit.ok else f"term {term} is not in this study's formula"
        else:
            ours_sig, paper_sig = t.significant, paper_p < ALPHA
            same_dir = paper_dir == 0 or np.sign(t.coef) == paper_dir
            row.update(
                coef=t.coef,
                p=t.p,
                direction=int(np.sign(t.coef)),
                agrees=bool(ours_sig == paper_sig and (not paper_sig or same_dir)),
            )
        rows.append(jsonable(row))
    return rows


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
    design, data = build_design(trials, a.coding, a.degree)
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
    fits = [f for m in FIT_METRICS for f in _fits_for(m, data, design, a.coding, baseline, ref)]
    return Analysis(
        study.name,
        a.coding,
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
