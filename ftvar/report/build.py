"""`ftvar report`: collect, analyse, write report.json, report.md, a self-contained report.html and PNG plots.

The report leads with what matters (the share of variance each hyperparameter term and each seed axis
explains, the predicted best configuration, the expected best score against the number of trials,
degenerate trials), then the findings, the fits and the paper comparison. The shape of report.json is
documented in docs/report-format.md (`"format": "ftvar-report/2"`).
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
from ftvar.report.plots import Plot, plot_all
from ftvar.report.terminal import Compact
from ftvar.stats.analysis import METRIC_LABELS, Analysis, Fit, analyze, jsonable
from ftvar.stats.optimum import Best
from ftvar.stats.variance import Decomposition
from ftvar.store.collect import CollectResult, collect
from ftvar.store.files import write_atomic
from ftvar.store.paths import StudyPaths
from ftvar.store.record import utc_now
from ftvar.study.axes import show_value
from ftvar.study.config import Study

REPORT_FORMAT = "ftvar-report/2"
BEST_N = 10  # configurations shown in the "best configurations" table
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
        "expected_max": {
            "by": analysis.expected_max_by,
            "curves": [asdict(c) for c in analysis.expected_max],
        },
        "degenerate": {**asdict(analysis.degenerate), "rate": analysis.degenerate.rate},
        "selection": [asdict(s) for s in analysis.selection],
        "fits": [f.to_dict() for f in analysis.fits],
        "findings": analysis.findings,
        "paper_comparison": asdict(analysis.paper),
        "configurations": analysis.configurations.astype(object).to_dict(orient="records"),
        "plots": [asdict(p) for p in plots],
    }
    cleaned: dict[str, Any] = jsonable(data)
    return cleaned


# ------------------------------------------------------------------------------------------------ the content


def variance_sentence(d: Decomposition, short: bool = False) -> str:
    """What moves the metric, and how much of it is luck, in one sentence (`short`: the two totals only)."""
    hp = d.component("hyperparameters")
    if short:
        return (
            f"**{METRIC_LABELS[d.metric]}**: hyperparameters {pct(hp.share if hp else None)}"
            f"{_ci(hp.ci_low, hp.ci_high, pct) if hp else ''}, luck {pct(d.luck.share)}"
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
    named = [f"{c.label} {pct(c.share)}{_ci(c.ci_low, c.ci_high, pct)}" for c in terms if c.share > 0]
    if named:
        text += f". Largest terms: {', '.join(named)}"
    if lof and lof.share >= 0.01:
        text += f". Lack of fit {pct(lof.share)}: the configurations differ in ways the polynomial misses"
    return text + "."


def best_sentence(b: Best) -> str:
    way = "highest" if b.maximise else "lowest"
    where = []
    for a in b.axes:
        if a.kind == "categorical":
            share = a.level_shares.get(str(a.value))
            wins = f" (best in {pct(share)} of resamples)" if share is not None else ""
            where.append(f"{a.label} = {fmt(a.value)}{wins}")
        else:
            edge = " (edge)" if a.at_edge else ""
            where.append(f"{a.label} ≈ {fmt(a.value)}{_ci(a.ci_low, a.ci_high)}{edge}")
    ci = _ci(b.ci_low, b.ci_high)
    return (
        f"**{METRIC_LABELS[b.metric]}** is predicted {way} at {', '.join(where)}: {fmt(b.predicted)}{ci} "
        f"(degree-{b.degree} fit; 95% intervals from {b.bootstrap} seed resamples)"
        if b.bootstrap
        else f"**{METRIC_LABELS[b.metric]}** is predicted {way} at {', '.join(where)}: {fmt(b.predicted)} "
        f"(degree-{b.degree} fit; one seed, so no interval)"
    )


def expected_max_sentence(analysis: Analysis) -> str | None:
    curve = next((c for c in analysis.expected_max if c.group == "all trials"), None)
    if curve is None:
        return None
    shown = [n for n in BUDGETS if n <= curve.n_trials]
    parts = [f"{n}: {fmt(curve.mean[n - 1])} ± {fmt(curve.sd[n - 1], 2)}" for n in shown]
    return (
        f"Expected best {METRIC_LABELS[analysis.metric]} when n trials are drawn at random from the "
        f"{curve.n_trials} ok trials "
        f"(mean ± sd): {'; '.join(parts)}."
    )


def degenerate_blocks(analysis: Analysis) -> list[Block]:
    d = analysis.degenerate
    if not d.n_degenerate:
        return [f"Degenerate trials: none of {d.n_trials} (every trial left the majority class)."]
    out: list[Block] = [
        f"Degenerate trials: **{d.n_degenerate} of {d.n_trials} ({pct(d.rate)})** never left the majority "
        "class (one predicted class, or accuracy equal to the majority share); the fits are shown with and "
        "without them."
        + (
            f" {d.from_accuracy} flagged from accuracy alone (records without the eval field)."
            if d.from_accuracy
            else ""
        )
    ]
    if not d.per_configuration:  # no configuration table (e.g. no axis varies among the trials)
        return out
    keys = [k for k in d.per_configuration[0] if k not in ("degenerate", "trials", "share")]
    labels = {a.name: a.label for a in analysis.axes}
    rows = [
        [*(fmt(r[k]) for k in keys), f"{r['degenerate']}/{r['trials']}", pct(float(str(r["share"])))]
        for r in d.per_configuration[:BEST_N]
    ]
    out.append(
        (
            "Degenerate trials per configuration (most first)",
            [*(labels.get(k, k) for k in keys), "degenerate", "share"],
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
        f"Variance decomposition: {METRIC_LABELS[d.metric]} (n = {d.n}, {d.bootstrap} bootstrap resamples)",
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


def sections(analysis: Analysis, collected: CollectResult, study: Study, plots: list[Plot]) -> Sections:
    """The report's content once, as (heading, blocks), rendered to Markdown and HTML."""
    lead_plots = [p for p in plots if p.kind in LEAD_PLOTS]
    what: list[Block] = [variance_sentence(d, short=i > 0) for i, d in enumerate(analysis.variance)]
    what += [best_sentence(b) for b in analysis.best if b.metric == analysis.metric]
    em = expected_max_sentence(analysis)
    if em:
        what.append(em)
    what += degenerate_blocks(analysis)
    what += lead_plots
    if analysis.variance and analysis.variance[0].notes:
        what += analysis.variance[0].notes
    findings: list[Block] = [f["text"] for f in analysis.findings] or [
        "No hyperparameter term is significant after Holm's correction."
    ]
    findings.insert(
        0,
        "Significance is judged on Holm-adjusted p-values over each fit's hyperparameter terms (family-wise "
        "error 0.05); Benjamini–Hochberg q-values are in the term tables.",
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
                *(best_sentence(b) for b in analysis.best if b.metric != analysis.metric),
                _config_table(analysis),
            ],
        ),
        ("Degree", [_selection_table(analysis), *(s.warning for s in analysis.selection if s.warning)]),
    ]
    paper: list[Block] = [analysis.paper.reason]
    if analysis.paper.shown:
        paper += [
            "The paper fits one run per configuration and reports raw-coded slopes of a model we do not know "
            "in full: directions and significance are compared, not magnitudes. Two non-significant results "
            "never count as agreement.",
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
    for b in [b for b in analysis.best if b.metric == analysis.metric][:1]:
        console.print("• " + best_sentence(b).replace("**", ""), highlight=False)
    tables = [_config_table(analysis, n), _fits_table(analysis)]
    if analysis.paper.shown:
        tables.append(_paper_table(analysis))
    else:
        console.print(f"Paper comparison {analysis.paper.reason}", highlight=False)
    for title, header, rows in tables:
        console.print(Compact(header, rows, title=title, markup=False, notes=True))
    for f in analysis.findings:
        console.print(f"• {f['text']}", highlight=False)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def build_report(
    study: Study, out: Path, console: Console | None = None, strict: bool = False
) -> ReportResult:
    """Collect, analyse and write `<out>/<study>/report/`; print a summary to `console` when given."""
    collected = collect(study, out, strict=strict)
    table = collected.table
    try:
        analysis = analyze(study, table)
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
    data = report_data(analysis, collected, plots, study)
    title = f"ftvar report: {study.name}"
    content = sections(analysis, collected, study, plots)
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
