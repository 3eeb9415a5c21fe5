"""`ftvar report`: collect, analyse, write report.json, report.md, a self-contained report.html and PNG plots.

The report leads with what matters (the share of variance each hyperparameter term and each seed axis
explains, the configuration to run with its selection-corrected value, its score on the held-out test split,
the expected best score against the number of trials, degenerate and failed runs), then the findings, the
per-example tables, the fits and the paper comparison. The metric it leads with is the analysis' lead metric
(`ftvar.stats.analysis.lead_metric`). The shape of report.json is documented in docs/report-format.md
(`"format": "ftvar-report/3"`). Per-example predictions are read here (ftvar.store.predictions) and handed
to the analysis.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ftvar import __version__
from ftvar.errors import FtvarError
from ftvar.report.curves import curve_blocks, curve_plots, curves_data, learning_curves_of, n_classes
from ftvar.report.plots import Plot, plot_all
from ftvar.report.terminal import Compact
from ftvar.stats.analysis import METRIC_LABELS, Analysis, Examples, Fit, analyze, jsonable
from ftvar.stats.failures import FailureModel
from ftvar.stats.optimum import Best
from ftvar.stats.paper import MODEL as PAPER_MODEL_WORDS
from ftvar.stats.per_example import Flip, HeldOut, PerExample
from ftvar.stats.variance import Decomposition
from ftvar.store.collect import CollectResult, collect
from ftvar.store.files import write_atomic
from ftvar.store.paths import StudyPaths
from ftvar.store.predictions import load_predictions, load_texts
from ftvar.store.record import utc_now
from ftvar.study.axes import show_value
from ftvar.study.config import Study

REPORT_FORMAT = "ftvar-report/3"
BEST_N = 10  # configurations shown in the "best configurations" table
MAX_SIDECARS = 5_000  # ok trials whose per-example prediction files the report reads
BUDGETS = (1, 5, 10, 20, 50)  # expected-max budgets named in the text
TOP_TERMS = 3  # terms named in the variance sentence
Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows), rendered as Markdown, HTML and rich
Block = str | Table | Plot
Sections = list[tuple[str, list[Block]]]
LEAD_PLOTS = ("variance", "expected_max")


@dataclass
class ReportResult:
    folder: Path
    json: Path
    markdown: Path
    html: Path
    plots: list[Path]
    collected: CollectResult
    analysis: Analysis
    data: dict[str, Any]  # what report.json holds


def fmt(value: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits; "—" for a missing one."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return show_value(value)


def pct(value: float | None) -> str:
    if value is None or value != value:
        return "—"
    return f"{100 * value:.0f}%" if value >= 0.01 or value == 0 else f"{100 * value:.1f}%"


def _ci(lo: float | None, hi: float | None, show: Any = fmt) -> str:
    return "" if lo is None or hi is None else f" [{show(lo)}, {show(hi)}]"


# --------------------------------------------------------------------------------------------- report.json


def report_data(
    analysis: Analysis, collected: CollectResult, plots: list[Plot], study: Study
) -> dict[str, Any]:
    """Everything report.json holds (see docs/report-format.md)."""
    data = {
        "format": REPORT_FORMAT,
        "generated_at": utc_now(),
        "ftvar_version": __version__,
        "study": {"name": study.name, "hash": study.hash, "design": study.design.kind},
        "collect": {
            "files": collected.n_files,
            "valid": collected.n_valid,
            "trials": collected.n_trials,
            "superseded": collected.n_superseded,
            "statuses": collected.counts,
            "skipped": [{"path": p, "reason": r} for p, r in collected.skipped],
            "expected": collected.n_expected,
            "missing": len(collected.missing),
            "results_parquet": str(collected.parquet),
            "results_csv": str(collected.csv),
        },
        "analysis": {
            "degree": analysis.degree,
            "alpha": 0.05,
            "bootstrap": study.analysis.bootstrap,
            "seed_model": analysis.seed_model,
            "seed_model_why": analysis.seed_model_why,
            "axes": analysis.predictors,
            "terms": analysis.terms,
            "baselines": asdict(analysis.baselines),
            "relative": analysis.relative_note,
            "metric": analysis.metric,
            "metrics": list(analysis.metrics),
            "f1_average": analysis.f1_average,
        },
        "notes": analysis.notes,
        "ran": [asdict(c) for c in analysis.ran],
        "replicates": asdict(analysis.replicates),
        "variance": [asdict(d) for d in analysis.variance],
        "best": [asdict(b) for b in analysis.best],
        "held_out": asdict(analysis.held_out) if analysis.held_out is not None else None,
        "expected_max": {
            "by": analysis.expected_max_by,
            "metric": analysis.lead,
            "kind": "random search"
            if analysis.expected_max_random
            else "random subsets of this design's trials",
            "curves": [asdict(c) for c in analysis.expected_max],
        },
        "failures": asdict(analysis.failures) if analysis.failures is not None else None,
        "per_example": _per_example_data(analysis.per_example),
        "degenerate": {**asdict(analysis.degenerate), "rate": analysis.degenerate.rate},
        "selection": [asdict(s) for s in analysis.selection],
        "fits": [f.to_dict() for f in analysis.fits],
        "findings": analysis.findings,
        "findings_family": {
            "tests": analysis.family,
            "what": "Holm over the hyperparameter terms of every metric's absolute fit of all trials",
        },
        "paper_comparison": {**asdict(analysis.paper), "model": PAPER_MODEL_WORDS},
        "configurations": analysis.configurations.astype(object).to_dict(orient="records"),
        "plots": [asdict(p) for p in plots],
    }
    cleaned: dict[str, Any] = jsonable(data)
    return cleaned


def _per_example_data(p: PerExample | None) -> dict[str, Any] | None:
    if p is None:
        return None
    data = asdict(p)
    data.pop("held_out", None)  # report.json's own "held_out"
    return data


# ------------------------------------------------------------------------------------------------ the content


def variance_sentence(d: Decomposition, short: bool = False) -> str:
    """What moves the metric, and how much of it is luck, in one sentence (`short`: the two totals only)."""
    hp = d.component("hyperparameters")
    if short:
        rest = "luck" if any(c.kind == "seed" for c in d.components) else "residual (one seed)"
        return (
            f"**{METRIC_LABELS[d.metric]}**: hyperparameters {pct(hp.share if hp else None)}"
            f"{_ci(hp.ci_low, hp.ci_high, pct) if hp else ''}, {rest} {pct(d.luck.share)}"
            f"{_ci(d.luck.ci_low, d.luck.ci_high, pct)} (tables below)."
        )
    terms = sorted((c for c in d.components if c.kind == "term"), key=lambda c: -c.share)[:TOP_TERMS]
    seeds = [c for c in d.components if c.kind == "seed"]
    residual = d.component("residual")
    lof = d.component("lack of fit")
    parts = [
        f"**{METRIC_LABELS[d.metric]}**: hyperparameters explain {pct(hp.share if hp else None)}"
        f"{_ci(hp.ci_low, hp.ci_high, pct) if hp else ''} of the variance across trials, luck "
        f"{pct(d.luck.share)}{_ci(d.luck.ci_low, d.luck.ci_high, pct)}"
    ]
    luck = [f"{c.label} {pct(c.share)}" for c in seeds]
    if residual:
        luck.append(f"{residual.label} {pct(residual.share)}")
    text = parts[0] + (f" ({'; '.join(luck)})" if luck else "")
    if not seeds:  # one seed: what is left is not luck alone
        text = (
            f"**{METRIC_LABELS[d.metric]}**: hyperparameters explain {pct(hp.share if hp else None)}"
            f"{_ci(hp.ci_low, hp.ci_high, pct) if hp else ''} of the variance across trials; the rest, "
            f"{pct(d.luck.share)}, is the residual of one run per configuration — seed noise and what the "
            "polynomial misses together, which a single seed cannot tell apart"
        )
    named = [f"{c.label} {pct(c.share)}{_ci(c.ci_low, c.ci_high, pct)}" for c in terms if c.share > 0]
    if named:
        text += f". Largest terms: {', '.join(named)}"
    if lof and lof.share >= 0.01:
        text += f". Lack of fit {pct(lof.share)}: the configurations differ in ways the polynomial misses"
    return text + "."


def setting(value: Any, integer: bool = False) -> str:
    """A recommended setting as a user would type it."""
    if isinstance(value, float) and (integer or value.is_integer()) and abs(value) < 1e15:
        return str(int(value))
    return fmt(value, 3)


def best_sentence(b: Best, grid: bool = True) -> str:
    """The setting to run, its value with the selection-corrected interval, and where the fit peaks."""
    way = "highest" if b.maximise else "lowest"
    run = ", ".join(
        f"{a.label} = {setting(a.recommended) if a.kind == 'numeric' else fmt(a.recommended)}" for a in b.axes
    )
    why = (
        f"the design's configuration the degree-{b.degree} fit predicts {way}, of {b.candidates}"
        if grid
        else f"the degree-{b.degree} fit's {way} settable point"
    )
    text = f"**{METRIC_LABELS[b.metric]}**: run {run} ({why})."
    source = (
        f"its {b.n_trials} trials average {fmt(b.predicted)}"
        if b.value_from == "trials"
        else f"the fit predicts {fmt(b.predicted)} there"
    )
    if b.ci_low is not None and b.corrected is not None:
        text += (
            f" Its value: {source}; corrected for having been chosen as the best of {b.candidates}, "
            f"{fmt(b.corrected)} [{fmt(b.ci_low)}, {fmt(b.ci_high)}] (95%, for its mean over seeds)."
        )
    else:
        text += f" Its value: {source} (no interval: one seed)."
    if b.value_from == "trials" and b.fit_value is not None:
        text += f" The fit predicts {fmt(b.fit_value)} for it."
    peak = []
    for a in b.axes:
        if a.kind == "categorical":
            share = a.level_shares.get(str(a.value))
            wins = f" (best in {pct(share)} of resamples)" if share is not None and share == share else ""
            peak.append(f"{a.label} = {fmt(a.value)}{wins}")
        else:
            edge = " (edge)" if a.at_edge else ""
            peak.append(f"{a.label} ≈ {fmt(a.value)}{_ci(a.ci_low, a.ci_high)}{edge}")
    intervals = f"; 95% intervals from {b.bootstrap} seed resamples" if b.bootstrap else ""
    return text + f" The fitted surface peaks at {', '.join(peak)}{intervals}."


def held_out_sentence(h: HeldOut) -> str:
    interval = f" [{fmt(h.ci_low)}, {fmt(h.ci_high)}]" if h.ci_low is not None else ""
    against = f", against {fmt(h.eval_value)} on the eval split" if h.eval_value is not None else ""
    return (
        f"**Held-out test split** ({h.n_rows} rows; never used for selection, the fits or expected max, and "
        f"read once, for this configuration only): {METRIC_LABELS.get(h.metric, h.metric)} {fmt(h.value)}"
        f"{interval} (mean of its {h.n_trials} trial(s); 95% interval from {h.interval}){against}."
    )


def expected_max_sentence(analysis: Analysis) -> str | None:
    curve = next((c for c in analysis.expected_max if c.group == "all trials"), None)
    if curve is None:
        return None
    metric = METRIC_LABELS.get(analysis.lead, analysis.lead)
    shown = [n for n in BUDGETS if n <= curve.n_trials]
    parts = []
    for n in shown:
        band = (
            f" [{fmt(curve.band_low[n - 1])}, {fmt(curve.band_high[n - 1])}]"
            if curve.band_low is not None and curve.band_high is not None and n <= len(curve.band_low)
            else ""
        )
        parts.append(f"{n}: {fmt(curve.mean[n - 1])} ± {fmt(curve.sd[n - 1], 2)}{band}")
    kind = (
        f"a random search of n trials (this random design's {curve.n_trials} draws from its priors)"
        if analysis.expected_max_random
        else f"n trials drawn at random from this design's {curve.n_trials} trials (random subsets of this "
        "design's trials, not a random search)"
    )
    failed = (
        f" {curve.n_failed} failed or diverged trial(s) count as draws, at the worst {metric} any trial "
        f"reached ({fmt(curve.worst)})."
        if curve.n_failed
        else ""
    )
    band = (
        "; [95% band over seed resamples, up to a quarter of the trials]"
        if curve.band_low is not None
        else ""
    )
    return f"Expected best {metric} of {kind} (mean ± sd{band}): {'; '.join(parts)}.{failed}"


def failure_sentence(f: FailureModel | None) -> str | None:
    if f is None or not f.n_trials or not f.n_failed:
        return None
    head = (
        f"Failed runs: {f.n_failed} of {f.n_trials} ({pct(f.n_failed / f.n_trials)}) failed to learn "
        f"({f.n_degenerate} degenerate, {f.n_diverged} diverged)"
    )
    if f.status != "ok":
        return f"{head}; no failure model: {f.message}."
    moved = [t for t in f.terms if t.significant]
    if not moved:
        return (
            f"{head}. No hyperparameter term changes the failure rate significantly (penalised likelihood-"
            "ratio tests, Holm)."
        )
    words = []
    for t in sorted(moved, key=lambda t: t.p_holm):
        effect = next((e for e in f.effects if e.label in t.label), None)
        span = ""
        if effect is not None and len(effect.values) >= 2:
            span = (
                f": predicted {pct(effect.rates[0])} at {fmt(effect.values[0])} → {pct(effect.rates[-1])} at "
                f"{fmt(effect.values[-1])}"
            )
        words.append(f"{t.label} (Holm p = {fmt(t.p_holm, 2)}{span})")
    return f"{head}. The failure rate depends on {'; '.join(words)}."


def degenerate_blocks(analysis: Analysis) -> list[Block]:
    d = analysis.degenerate
    near = ""
    if d.n_near:
        near = (
            f" {d.n_near} near-degenerate trial(s) predict one class for ≥ {pct(d.threshold)} of the eval "
            "rows (analysis.near_degenerate)"
            + (
                ", a flag that says little here: the eval split's majority class alone reaches that share"
                if d.near_uninformative
                else ""
            )
            + "."
        )
    if not d.n_degenerate:
        return [f"Degenerate trials: none of {d.n_trials} (every trial left the majority class).{near}"]
    out: list[Block] = [
        f"Degenerate trials: **{d.n_degenerate} of {d.n_trials} ({pct(d.rate)})** never left the majority "
        "class (one predicted class, or accuracy equal to the majority share); the fits are shown with and "
        "without them."
        + (
            f" {d.from_accuracy} flagged from accuracy alone (records without the eval field)."
            if d.from_accuracy
            else ""
        )
        + near
    ]
    if not d.per_configuration:  # no configuration table (e.g. no axis varies among the trials)
        return out
    keys = [
        k for k in d.per_configuration[0] if k not in ("degenerate", "near_degenerate", "trials", "share")
    ]
    labels = {a.name: a.label for a in analysis.axes}
    rows = [
        [
            *(fmt(r[k]) for k in keys),
            f"{r['degenerate']}/{r['trials']}",
            pct(float(str(r["share"]))),
            str(r.get("near_degenerate", 0)),
        ]
        for r in d.per_configuration[:BEST_N]
    ]
    out.append(
        (
            "Degenerate trials per configuration (most first)",
            [*(labels.get(k, k) for k in keys), "degenerate", "share", "near-degenerate"],
            rows,
        )
    )
    return out


def _config_table(analysis: Analysis, n: int = BEST_N) -> Table:
    axes = [a for a in analysis.axes if not a.is_seed and a.name in analysis.configurations.columns]
    labels = [metric_label(analysis, m) for m in analysis.metrics]
    header = [*(a.label for a in axes), "ok/trials", "degenerate", *labels]
    rows = []
    one_seed = bool((analysis.configurations["n_ok"] <= 1).all())
    for r in analysis.configurations.head(n).to_dict(orient="records"):
        cells = []
        for m in analysis.metrics:
            mean, sd = r.get(f"{m}_mean"), r.get(f"{m}_sd")
            if one_seed:
                cells.append(fmt(mean))
            elif r["n_ok"] == 1:
                cells.append(f"{fmt(mean)} (1 seed)")
            elif sd is None or sd != sd:
                cells.append(fmt(mean))
            else:
                cells.append(f"{fmt(mean)} ± {fmt(sd, 2)}")
        rows.append(
            [
                *(fmt(r[a.name]) for a in axes),
                f"{r['n_ok']}/{r['n_trials']}",
                str(r.get("n_degenerate", 0)),
                *cells,
            ]
        )
    spread = "one trial per configuration: no spread to show" if one_seed else "mean ± sd over seeds"
    by = METRIC_LABELS[analysis.metric]
    return (f"Best configurations observed (top {n} by mean {by}; {spread})", header, rows)


def metric_label(analysis: Analysis, metric: str) -> str:
    """A metric's name in a table header: F1 says how it averages over more than two classes."""
    if metric == "f1" and analysis.f1_average == "macro":
        return "F1 (macro)"
    return METRIC_LABELS[metric]


def metric_lines(analysis: Analysis) -> list[Block]:
    """Which metric the report leads with, and what F1 is."""
    label = METRIC_LABELS[analysis.metric]
    if analysis.metric == "mcc":
        label += " (the Matthews correlation coefficient; 0 for a model that predicts one class)"
    out: list[Block] = [
        f"Primary metric: {label}. What matters, the best configuration, the expected best score and the "
        "findings lead with it (`analysis.metric`: accuracy, f1 or mcc)."
    ]
    if analysis.f1_average == "macro":
        out.append("F1 is macro-averaged: the unweighted mean of each class's F1 (more than two classes).")
    elif analysis.f1_average == "binary":
        out.append("F1 is binary: the F1 of the second label (in sorted order of the label values).")
    return out


def _selection_table(analysis: Analysis) -> Table:
    header = [
        "metric",
        "degree",
        "parameters",
        "R² (in-sample)",
        "CV R² (leave one configuration out)",
        "chosen",
    ]
    rows = []
    for s in analysis.selection:
        for d in s.scores:
            cv = fmt(d.cv_r2) if d.cv_r2 is not None else f"n/a ({d.note})" if d.note else "n/a"
            rows.append(
                [
                    METRIC_LABELS[s.metric],
                    str(d.degree),
                    str(d.n_params),
                    fmt(d.r2),
                    cv,
                    "✓" if d.degree == s.chosen else "",
                ]
            )
    return (
        "Polynomial degree by cross-validation (folds hold out every seed of one configuration)",
        header,
        rows,
    )


def _significant(fit: Fit) -> str:
    sig = [
        f"{t.term} (Holm p={fmt(t.p_holm, 2)})"
        for t in sorted(fit.tests, key=lambda t: t.p_holm)
        if t.significant
    ]
    return ", ".join(sig) or "none"


def _fits_table(analysis: Analysis) -> Table:
    header = [
        "metric",
        "fit",
        "trials",
        "n",
        "seeds",
        "R²",
        "adj. R²",
        "F p (all terms)",
        "significant terms (Holm p < 0.05)",
    ]
    rows = []
    for f in analysis.fits:
        if not f.ok:
            rows.append(
                [METRIC_LABELS[f.metric], f.kind, f.subset, str(f.n), "—", "—", "—", "—", f.message or ""]
            )
            continue
        rows.append(
            [
                METRIC_LABELS[f.metric],
                f.kind + (" (%)" if f.kind == "relative" else ""),
                f.subset,
                str(f.n),
                f.seed_model,
                fmt(f.r2),
                fmt(f.adj_r2),
                fmt(f.f_pvalue, 2),
                _significant(f),
            ]
        )
    return ("Fits: key terms", header, rows)


def _paper_table(analysis: Analysis) -> Table:
    header = [
        "effect",
        "metric",
        "this study's term (coding)",
        "paper p",
        "coef [95% CI]",
        "p",
        "Holm p",
        "verdict",
        "why",
    ]
    direction = {-1: " (higher → lower)", 1: " (higher → higher)", None: ""}
    rows = [
        [
            r["effect"],
            METRIC_LABELS[r["metric"]],
            f"{r['term']} ({r['coding']}), {r['fit']} fit",
            f"{r['paper_p']:g}{direction[r['paper_direction']]}",
            f"{fmt(r['coef'])}{_ci(r['ci_low'], r['ci_high'])}",
            fmt(r["p"], 2),
            fmt(r["p_holm"], 2),
            r["verdict"] or "",
            r["note"] or "",
        ]
        for r in analysis.paper.rows
    ]
    return ("Paper comparison (arXiv 2501.00241)", header, rows)


def _terms_table(fit: Fit) -> Table:
    header = ["column", "coef", "se", "t", "p", "95% CI"]
    rows = [
        [c.name, fmt(c.coef), fmt(c.se, 2), fmt(c.t), fmt(c.p, 2), f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]"]
        for c in fit.coefs
    ]
    return ("Coefficients (seed blocks not shown)", header, rows)


def _tests_table(fit: Fit) -> Table:
    header = ["term", "in words", "df", "t or F", "p", "Holm p", "BH q", ""]
    rows = [
        [
            t.term,
            t.label,
            str(t.df),
            fmt(t.stat),
            fmt(t.p, 2),
            fmt(t.p_holm, 2),
            fmt(t.p_bh, 2),
            "*" if t.significant else "",
        ]
        for t in fit.tests
    ]
    return ("Term tests (* = Holm p < 0.05 over this fit's terms)", header, rows)


def _variance_table(d: Decomposition) -> Table:
    header = ["component", "variance", "share", "95% interval of the share"]
    rows = [
        [
            c.label + (f" ({c.name})" if c.kind == "term" else ""),
            fmt(c.variance),
            pct(c.share),
            _ci(c.ci_low, c.ci_high, pct).strip() or "—",
        ]
        for c in [*d.components, d.luck]
    ]
    return (
        f"Variance decomposition: {METRIC_LABELS[d.metric]} (n = {d.n}; 95% intervals from {d.bootstrap} "
        "generalized pivotal draws)",
        header,
        rows,
    )


def _fit_summary(fit: Fit) -> str:
    if not fit.ok:
        return f"Not fitted: {fit.message}"
    return (
        f"`{fit.formula}` — n = {fit.n}, seeds: {fit.seed_model}, R² = {fmt(fit.r2)}, "
        f"adj. R² = {fmt(fit.adj_r2)}, "
        f"F-test p (all hyperparameter terms) = {fmt(fit.f_pvalue, 2)}, residual sd = {fmt(fit.sigma)}"
        + (f", AIC = {fmt(fit.aic, 5)}, BIC = {fmt(fit.bic, 5)}" if fit.aic is not None else "")
    )


def ran_blocks(analysis: Analysis) -> list[Block]:
    """Where the trials ran differently (engine, precision, packing, device, random numbers), with counts, and
    what replicates say of the hardware's own noise."""
    out: list[Block] = []
    if analysis.ran:
        out.append(
            "**Warning: the trials did not all run alike**, and these conditions may move a metric besides "
            "the settings and seeds (the fits do not model them): "
            + "; ".join(c.sentence() for c in analysis.ran)
            + "."
        )
    r = analysis.replicates
    if r.cells:
        spreads = []
        for s in r.spreads:
            label = METRIC_LABELS.get(s.metric, s.metric)
            if s.identical:
                spreads.append(f"{label} identical in every cell")
            else:
                luck = next((d.luck for d in analysis.variance if d.metric == s.metric), None)
                beside = (
                    f" (the seeds and noise together: sd {fmt(luck.variance**0.5)})"
                    if luck and luck.variance > 0
                    else ""
                )
                spreads.append(
                    f"{label} sd {fmt(s.sd)} within a cell, largest difference "
                    f"{fmt(s.max_difference)}{beside}"
                )
        out.append(
            f"Replicates: {r.runs} runs of {r.cells} (configuration, seeds) cells run more than once with "
            f"the same settings and seeds: {'; '.join(spreads)}. "
            + (
                "Running a trial again gave the same numbers: the hardware and kernels added no noise."
                if r.spreads and all(s.identical for s in r.spreads)
                else "That spread is the hardware's and kernels' own noise, part of what the seeds' share "
                "holds."
            )
        )
    return out


def _axes_lines(analysis: Analysis) -> list[Block]:
    lines: list[Block] = []
    words = {
        "log10": "log10, centred",
        "log2": "log2, centred",
        "raw": "as given, centred",
        "categorical": "a factor (levels: {levels}; the first is the reference)",
    }
    for p in analysis.predictors:
        how = words.get(p["coding"], p["coding"]).format(levels=", ".join(fmt(v) for v in p["values"]))
        lines.append(f"{p['label']} (`{p['axis']}`): {len(p['values'])} values, coded {how}")
    return lines


def _failure_tables(f: FailureModel) -> list[Block]:
    out: list[Block] = []
    if f.status != "ok":
        return out
    out.append(
        (
            f"Failure model: `{f.formula}` (Firth-penalised logistic regression; seeds: {f.seeds})",
            ["term", "in words", "df", "log-odds per coded unit", "LR statistic", "p", "Holm p", ""],
            [
                [
                    t.term,
                    t.label,
                    str(t.df),
                    fmt(t.coef),
                    fmt(t.lr_stat),
                    fmt(t.p, 2),
                    fmt(t.p_holm, 2),
                    "*" if t.significant else "",
                ]
                for t in f.terms
            ],
        )
    )
    rows = []
    for e in f.effects:
        for v, rate, seen, n in zip(e.values, e.rates, e.observed, e.trials, strict=True):
            rows.append([e.label, fmt(v), pct(rate), f"{pct(seen)} of {n}" if n else "—"])
    out.append(
        (
            "Failure rate by hyperparameter (predicted: every trial set to the value, the rest as run; "
            "observed: the share among the trials at that value)",
            ["axis", "value", "predicted failure rate", "observed"],
            rows,
        )
    )
    return out


def _key_cells(key: dict[str, Any], axes: list[str]) -> list[str]:
    return [fmt(key.get(a)) for a in axes]


def _flip_table(title: str, flips: list[Flip]) -> Table:
    return (
        title,
        ["row", "text", "gold", "predicted (trials)", "mean P(gold)"],
        [
            [
                str(f.row),
                f.text if f.text is not None else "—",
                f.label,
                ", ".join(f"{k} {v}" for k, v in f.counts.items()),
                fmt(f.p_gold, 2),
            ]
            for f in flips
        ],
    )


def _per_example_blocks(analysis: Analysis) -> list[Block]:
    p = analysis.per_example
    if p is None:
        return ["No per-example predictions in this study's folder (trials run before they were kept)."]
    metric = METRIC_LABELS.get(p.metric, p.metric)
    axes = [a.name for a in analysis.axes if not a.is_seed and any(a.name in c.key for c in p.configurations)]
    labels = {a.name: a.label for a in analysis.axes}
    out: list[Block] = [
        f"From each trial's per-example predictions on the {p.n_rows} eval rows ({p.n_trials} trials). The "
        f"eval-sampling interval resamples the rows ({p.bootstrap} times) and keeps the seeds: how much "
        "another sample of sentences would move the score. Churn is the share of rows two seeds of a "
        "configuration predict differently (mean over pairs of seeds); unstable, the share not predicted "
        "alike by every seed.",
        *p.notes,
    ]
    rows = [
        [
            *_key_cells(c.key, axes),
            str(c.n_trials),
            f"{fmt(c.value)}{_ci(c.ci_low, c.ci_high)}",
            pct(c.churn),
            pct(c.unstable),
        ]
        for c in p.configurations[:BEST_N]
    ]
    out.append(
        (
            f"Configurations on the eval rows (top {BEST_N} by {metric}; 95% eval-sampling interval)",
            [*(labels.get(a, a) for a in axes), "trials", metric, "churn", "unstable"],
            rows,
        )
    )
    if p.comparisons:
        out.append(
            (
                f"The chosen configuration against the next ones ({metric}; rows and seeds both sampled: "
                "for accuracy a t-test under the crossed rows × seeds model, paired by row and by shared "
                "seed; Holm over these comparisons; ranked on the same rows, so read the p-values as "
                "descriptive)",
                ["configuration", f"difference in {metric}", "95% interval", "p", "Holm p", "paired seeds"],
                [
                    [
                        ", ".join(f"{labels.get(k, k)} {fmt(v)}" for k, v in c.other.items()) or "—",
                        fmt(c.difference, 2),
                        f"[{fmt(c.ci_low, 2)}, {fmt(c.ci_high, 2)}]",
                        fmt(c.p, 2),
                        fmt(c.p_holm, 2),
                        str(c.paired_seeds),
                    ]
                    for c in p.comparisons
                ],
            )
        )
    if p.flips_best:
        shown = ", ".join(f"{labels.get(k, k)} {fmt(v)}" for k, v in (p.best_key or {}).items())
        out.append(
            _flip_table(f"Rows the chosen configuration's seeds disagree on most ({shown})", p.flips_best)
        )
    if p.flips_all:
        out.append(
            _flip_table("Rows the trials that learned disagree on most (every configuration)", p.flips_all)
        )
    return out


def sections(analysis: Analysis, collected: CollectResult, study: Study, plots: list[Plot]) -> Sections:
    """The report's content once, as (heading, blocks), rendered to Markdown and HTML."""
    lead_plots = [p for p in plots if p.kind in LEAD_PLOTS]
    grid = study.design.kind == "grid"
    ordered = sorted(analysis.variance, key=lambda d: d.metric != analysis.lead)
    what: list[Block] = [variance_sentence(d, short=i > 0) for i, d in enumerate(ordered)]
    what += [best_sentence(b, grid) for b in analysis.best if b.metric == analysis.lead]
    if analysis.lead in analysis.constant:
        only = fmt(analysis.constant[analysis.lead])
        what.append(
            f"**{METRIC_LABELS[analysis.lead]}**: every trial scored {only}: nothing separates the "
            "configurations, so there is no setting to recommend."
        )
    if analysis.held_out is not None:
        what.append(held_out_sentence(analysis.held_out))
    elif study.data.has_test:
        what.append("Held-out test split: no test score for the chosen configuration in these records.")
    em = expected_max_sentence(analysis)
    if em:
        what.append(em)
    what += degenerate_blocks(analysis)
    failed = failure_sentence(analysis.failures)
    if failed:
        what.append(failed)
    what += lead_plots
    if analysis.variance and analysis.variance[0].notes:
        what += analysis.variance[0].notes
    findings: list[Block] = [f["text"] for f in analysis.findings] or [
        "No hyperparameter term is significant after Holm's correction."
    ]
    findings.insert(
        0,
        "A finding is a term whose Holm-adjusted p is below 0.05, Holm's adjustment running over one "
        f"family: the {analysis.family} hyperparameter-term tests of every metric's fit of all trials "
        "together (family-wise error 0.05 across the metrics). The term tables below adjust per fit (Holm p) "
        "and give Benjamini–Hochberg q-values.",
    )
    skipped = [f"skipped {Path(p).name}: {r}" for p, r in collected.skipped]
    design: list[Block] = [
        f"Study **{study.name}** (hash {study.hash}, design {study.design.kind}). {collected.summary()}.",
        *skipped,
        f"Seeds: {analysis.seed_model_why or 'none'}.",
        f"Baseline: {analysis.baselines.description}.",
        *ran_blocks(analysis),
        *metric_lines(analysis),
        *_axes_lines(analysis),
        *analysis.notes,
    ]
    out: Sections = [
        ("What matters", what),
        ("Findings", findings),
        ("Study and design", design),
        (
            "Best configurations",
            [
                *(best_sentence(b, grid) for b in analysis.best if b.metric != analysis.lead),
                _config_table(analysis),
            ],
        ),
        ("Degree", [_selection_table(analysis), *(s.warning for s in analysis.selection if s.warning)]),
    ]
    if analysis.failures is not None and analysis.failures.n_failed:
        f = analysis.failures
        out.append(("Failed runs", [failure_sentence(f) or "", *_failure_tables(f), *f.notes]))
    elif analysis.failures is not None and analysis.failures.notes:
        out.append(("Failed runs", [failure_sentence(analysis.failures) or "", *analysis.failures.notes]))
    out.append(("Per-example predictions", _per_example_blocks(analysis)))
    paper: list[Block] = [analysis.paper.reason]
    if analysis.paper.shown:
        paper += [
            f"The {PAPER_MODEL_WORDS}. Its p-values come from one run per configuration; directions are "
            'compared only where the paper states one ("both significant" otherwise), magnitudes never. Two '
            "non-significant results never count as agreement. Holm's adjustment is over the four terms of "
            "each fit.",
            _paper_table(analysis),
        ]
    out.append(("Paper comparison", paper))
    fits: list[Block] = [_fits_table(analysis)]
    if analysis.relative_note:
        fits.append(analysis.relative_note)
    out.append(("Fits", fits))
    for d in analysis.variance:
        out.append((f"Variance decomposition — {METRIC_LABELS[d.metric]}", [_variance_table(d)]))
    for fit in analysis.fits:
        body: list[Block] = [_fit_summary(fit), *fit.notes]
        if fit.ok:
            body += [_tests_table(fit), _terms_table(fit)]
        out.append((f"{METRIC_LABELS[fit.metric]} — {fit.kind} fit, {fit.subset} trials", body))
    return out


# ------------------------------------------------------------------------------------------ markdown / html


def _md_table(table: Table) -> str:
    title, header, rows = table
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in esc] or ["| " + " | ".join("—" for _ in header) + " |"]
    return "\n".join(lines) + "\n"


def _html_table(table: Table) -> str:
    title, header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(title)}</caption><tr>{head}</tr>{body}</table>\n"


LIST_SECTIONS = ("Findings", "Study and design")


def render_markdown(content: Sections, plots: list[Plot], title: str) -> str:
    parts = [f"# {title}\n"]
    placed = {b.file for _, body in content for b in body if isinstance(b, Plot)}
    for heading, body in content:
        parts.append(f"## {heading}\n")
        for b in body:
            if isinstance(b, Plot):
                parts.append(f"![{b.title}]({b.file})\n")
            elif isinstance(b, tuple):
                parts.append(_md_table(b))
            else:
                parts.append(f"- {b}\n" if heading in LIST_SECTIONS else f"{b}\n")
    parts.append("## Plots\n")
    parts += [f"![{p.title}]({p.file})\n" for p in plots if p.file not in placed]
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:88%}caption{text-align:left;font-weight:bold}"
    "td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
    "code{background:#f3f3f3;padding:1px 3px}"
)


def _figure(folder: Path, p: Plot) -> str:
    data = base64.b64encode((folder / p.file).read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
    )


def render_html(content: Sections, plots: list[Plot], folder: Path, title: str) -> str:
    """A single HTML file: CSS inline, every PNG embedded as a base64 data URI."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    placed = set()
    for heading, body in content:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for b in body:
            if isinstance(b, Plot):
                parts.append(_figure(folder, b))
                placed.add(b.file)
            elif isinstance(b, tuple):
                parts.append(_html_table(b))
            else:
                parts.append("<p>" + _inline(html.escape(b)) + "</p>")
    parts.append("<h2>Plots</h2>")
    parts += [_figure(folder, p) for p in plots if p.file not in placed]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _inline(text: str) -> str:
    """`code` and **bold** spans of the Markdown text, as HTML."""
    pieces = text.split("`")
    text = "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(pieces))
    pieces = text.split("**")
    return "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(pieces))


# ------------------------------------------------------------------------------------------------ terminal


def print_tables(analysis: Analysis, console: Console, n: int = 5) -> None:
    """What matters, then rich tables: best configurations, the fits' key terms, the paper comparison."""
    for d in analysis.variance:
        console.print("• " + variance_sentence(d).replace("**", ""), highlight=False)
    for b in [b for b in analysis.best if b.metric == analysis.lead][:1]:
        console.print("• " + best_sentence(b).replace("**", ""), highlight=False)
    if analysis.held_out is not None:
        console.print("• " + held_out_sentence(analysis.held_out).replace("**", ""), highlight=False)
    failed = failure_sentence(analysis.failures)
    if failed:
        console.print("• " + failed, highlight=False)
    tables = [_config_table(analysis, n), _fits_table(analysis)]
    if analysis.paper.shown:
        tables.append(_paper_table(analysis))
    else:
        console.print(f"Paper comparison {analysis.paper.reason}", highlight=False)
    for title, header, rows in tables:
        console.print(Compact(header, rows, title=title, markup=False, notes=True))
    for f in analysis.findings:
        console.print(f"• {f['text']}", highlight=False)


def read_examples(study: Study, out: Path, table: Any) -> Examples:
    """The ok trials' per-example predictions and the rows' texts (ftvar.store.predictions)."""
    paths = StudyPaths.of(out, study.name)
    ok = table.loc[(table["kind"] == "trial") & (table["status"] == "ok"), "trial_id"].astype(str).tolist()
    if len(ok) > MAX_SIDECARS:  # 18 kB each: reading 100,000 would take the report minutes
        return Examples(
            note=f"per-example tables left out: {len(ok)} ok trials, more than the {MAX_SIDECARS} whose "
            "prediction files the report reads"
        )
    found, skipped = load_predictions(paths, ok, study.hash)
    texts = load_texts(paths, next(iter(found.values())).data_key) if found else {}
    return Examples(found, texts, skipped)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def build_report(
    study: Study, out: Path, console: Console | None = None, strict: bool = False
) -> ReportResult:
    """Collect, analyse and write `<out>/<study>/report/`; print a summary to `console` when given."""
    collected = collect(study, out, strict=strict)
    table = collected.table
    examples = read_examples(study, out, table)
    try:
        analysis = analyze(study, table, examples=examples)
    except (ValueError, ArithmeticError) as exc:  # numbers no fit can take: one line, never a traceback
        raise FtvarError(f"the fits failed on these records ({exc.__class__.__name__}: {exc})") from exc
    if analysis.trials.empty:
        ok = table["status"] == "ok"
        baselines = int((ok & (table["kind"] == "baseline")).sum())
        what = (
            f"no fine-tuned trial has an ok record yet (the {baselines} ok record(s) are baselines, the "
            "model before fine-tuning, which no fit uses)"
            if baselines
            else "no ok records yet"
        )
        raise FtvarError(
            f"study {study.name}: {what} ({collected.summary()}); "
            f"run `ftvar launch {study.name}` and check `ftvar status {study.name}`"
        )
    folder = StudyPaths.of(out, study.name).report
    plots = plot_all(analysis, table, folder)
    curves = learning_curves_of(study, table, analysis)  # issue 23: learning curves, early stopping
    if curves is not None:
        plots += curve_plots(curves, n_classes(table), folder)
    data = report_data(analysis, collected, plots, study)
    title = f"ftvar report: {study.name}"
    content = sections(analysis, collected, study, plots)
    if curves is not None:
        data["learning_curves"] = jsonable(curves_data(curves))
        content.insert(1, ("Learning curves and early stopping", curve_blocks(curves, plots)))
    result = ReportResult(
        folder,
        folder / "report.json",
        folder / "report.md",
        folder / "report.html",
        [folder / p.file for p in plots],
        collected,
        analysis,
        data,
    )
    for path, text in (
        (result.json, json.dumps(data, indent=1, allow_nan=False) + "\n"),
        (result.markdown, render_markdown(content, plots, title)),
        (result.html, render_html(content, plots, folder, title)),
    ):
        _write_text(path, text)
    if console is not None:
        if collected.missing:
            console.print(
                f"{len(collected.missing)} of the study's {collected.n_expected} trials have no ok record "
                "yet: this report covers the others",
                highlight=False,
            )
        print_tables(analysis, console)
        console.print(f"report: {result.html}", highlight=False)
    return result
