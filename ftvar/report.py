"""`ftvar report`: collect, fit, and write report.json, report.md, a self-contained report.html and PNG plots.

The shape of report.json is documented in docs/report-format.md (`"format": "ftvar-report/1"`).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from ftvar import __version__
from ftvar.analysis import METRIC_LABELS, Analysis, Fit, analyze, jsonable
from ftvar.atomic import write_atomic
from ftvar.collect import CollectResult, collect
from ftvar.config import Study
from ftvar.errors import FtvarError
from ftvar.plots import Plot, plot_all
from ftvar.record import utc_now
from ftvar.trial import StudyPaths

REPORT_FORMAT = "ftvar-report/1"
BEST_N = 10  # configurations shown in the "best configurations" tables
Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows), rendered as Markdown, HTML and rich


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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def report_data(
    analysis: Analysis, collected: CollectResult, plots: list[Plot], study: Study
) -> dict[str, Any]:
    """Everything report.json holds (see docs/report-format.md)."""
    data = {
        "format": REPORT_FORMAT,
        "generated_at": utc_now(),
        "ftvar_version": __version__,
        "study": {"name": study.name, "hash": study.hash},
        "collect": {
            "files": collected.n_files,
            "valid": collected.n_valid,
            "trials": collected.n_trials,
            "superseded": collected.n_superseded,
            "statuses": collected.counts,
            "skipped": [{"path": p, "reason": r} for p, r in collected.skipped],
            "results_parquet": str(collected.parquet),
            "results_csv": str(collected.csv),
        },
        "analysis": {
            "coding": analysis.coding,
            "degree": analysis.degree,
            "alpha": 0.05,
            "variables": analysis.design.variables,
            "terms": analysis.design.terms,
            "baseline": analysis.baseline,
            "reference": analysis.reference,
        },
        "notes": analysis.notes,
        "fits": [f.to_dict() for f in analysis.fits],
        "findings": analysis.findings,
        "paper_comparison": analysis.paper,
        "configurations": analysis.configurations.astype(object).to_dict(orient="records"),
        "plots": [asdict(p) for p in plots],
    }
    cleaned: dict[str, Any] = jsonable(data)
    return cleaned


def _config_table(analysis: Analysis, n: int = BEST_N) -> Table:
    header = ["learning rate", "batch size", "epochs", "ok/trials", "accuracy", "F1", "eval loss"]
    rows = [
        [
            _fmt(r["learning_rate"]),
            _fmt(r["batch_size"]),
            _fmt(r["epochs"]),
            f"{r['n_ok']}/{r['n_trials']}",
            *(f"{_fmt(r[m + '_mean'])} ± {_fmt(r[m + '_sd'], 2)}" for m in ("accuracy", "f1", "eval_loss")),
        ]
        for r in analysis.configurations.head(n).to_dict(orient="records")
    ]
    return (f"Best configurations (top {n} by mean accuracy; mean ± sd over seeds)", header, rows)


def _fits_table(analysis: Analysis) -> Table:
    header = ["metric", "fit", "n", "R²", "adj. R²", "F p", "significant terms (p < 0.05)"]
    rows = []
    for f in analysis.fits:
        if not f.ok:
            rows.append([METRIC_LABELS[f.metric], f.kind, str(f.n), "—", "—", "—", f.message or ""])
            continue
        sig = ", ".join(
            f"{t.term} ({t.coef:+.3g}, p={t.p:.2g})"
            for t in f.terms
            if t.term != "Intercept" and t.significant
        )
        rows.append(
            [
                METRIC_LABELS[f.metric],
                f.kind,
                str(f.n),
                _fmt(f.r2, 3),
                _fmt(f.adj_r2, 3),
                _fmt(f.f_pvalue, 2),
                sig or "none",
            ]
        )
    return ("Fits: key terms", header, rows)


def _paper_table(analysis: Analysis) -> Table:
    header = ["effect", "metric", "fit", "paper p", "this study: coef", "p", "agrees?", "note"]
    direction = {-1: " (higher → lower)", 1: " (higher → higher)", None: ""}
    rows = [
        [
            r["effect"],
            METRIC_LABELS[r["metric"]],
            r["fit"],
            f"{r['paper_p']:g}{direction[r['paper_direction']]}",
            _fmt(r["coef"], 3),
            _fmt(r["p"], 3),
            "n/a" if r["agrees"] is None else _fmt(r["agrees"]),
            r["note"] or "",
        ]
        for r in analysis.paper
    ]
    return (
        "Paper comparison (agrees = same significance at 0.05 and, where the paper gives one, same "
        "direction)",
        header,
        rows,
    )


def _terms_table(fit: Fit) -> Table:
    header = ["term", "coef", "se", "t", "p", "95% CI", ""]
    rows = [
        [
            t.term,
            _fmt(t.coef),
            _fmt(t.se, 3),
            _fmt(t.t, 3),
            _fmt(t.p, 3),
            f"[{_fmt(t.ci_low)}, {_fmt(t.ci_high)}]",
            "*" if t.significant else "",
        ]
        for t in fit.terms
    ]
    return ("Terms", header, rows)


def _anova_table(fit: Fit) -> Table:
    rows = [
        [a["term"], _fmt(a["sum_sq"]), _fmt(a["df"]), _fmt(a["F"], 3), _fmt(a["p"], 3)] for a in fit.anova
    ]
    return ("Type-II ANOVA", ["term", "sum sq", "df", "F", "p"], rows)


def _fit_summary(fit: Fit) -> str:
    if not fit.ok:
        return f"Not fitted: {fit.message}"
    return (
        f"`{fit.formula}` — coding {fit.coding}, n = {fit.n}, R² = {_fmt(fit.r2, 3)}, adj. R² = "
        f"{_fmt(fit.adj_r2, 3)}, F-test p = {_fmt(fit.f_pvalue, 3)}, AIC = {_fmt(fit.aic, 5)}, "
        f"BIC = {_fmt(fit.bic, 5)}"
    )


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


Sections = list[tuple[str, list[str | Table]]]


def _sections(analysis: Analysis, collected: CollectResult, study: Study) -> Sections:
    """The report's content once, as (heading, [paragraph or table]), rendered to Markdown and HTML."""
    skipped = [f"skipped {Path(p).name}: {r}" for p, r in collected.skipped]
    overview: list[str | Table] = [
        f"Study **{study.name}** (hash {study.hash}). {collected.summary()}.",
        *skipped,
        *analysis.notes,
    ]
    findings: list[str | Table] = [f["text"] for f in analysis.findings]
    findings = findings or ["No term of the absolute or paired fits is significant at 0.05."]
    out: list[tuple[str, list[str | Table]]] = [
        ("Overview", overview),
        ("Best configurations", [_config_table(analysis)]),
        ("Findings", findings),
        ("Paper comparison", [_paper_table(analysis)]),
        ("Fits", [_fits_table(analysis)]),
    ]
    for fit in analysis.fits:
        body: list[str | Table] = [_fit_summary(fit), *fit.notes]
        if fit.ok:
            body += [_terms_table(fit)] + ([_anova_table(fit)] if fit.anova else [])
        out.append((f"{METRIC_LABELS[fit.metric]} — {fit.kind} fit", body))
    return out


def render_markdown(sections: Sections, plots: list[Plot], title: str) -> str:
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n")
        parts += [
            _md_table(b)
            if isinstance(b, tuple)
            else f"- {b}\n"
            if heading in ("Findings", "Overview")
            else f"{b}\n"
            for b in body
        ]
    parts.append("## Plots\n")
    parts += [f"![{p.title}]({p.file})\n" for p in plots]
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}caption{text-align:left;font-weight:bold}"
    "td,th{border:1px solid #ccc;padding:3px 7px}th{background:#f3f3f3}img{max-width:100%}"
    "code{background:#f3f3f3;padding:1px 3px}"
)


def render_html(sections: Sections, plots: list[Plot], folder: Path, title: str) -> str:
    """A single HTML file: CSS inline, every PNG embedded as a base64 data URI."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for b in body:
            if isinstance(b, tuple):
                parts.append(_html_table(b))
            else:
                text = html.escape(b).replace("**", "")
                parts.append("<p>" + _code_spans(text) + "</p>")
    parts.append("<h2>Plots</h2>")
    for p in plots:
        data = base64.b64encode((folder / p.file).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _code_spans(text: str) -> str:
    pieces = text.split("`")
    return "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(pieces))


# ------------------------------------------------------------------------------------------------ terminal


def print_tables(analysis: Analysis, console: Console, n: int = 5) -> None:
    """Rich tables: best configurations, the fits' key terms, the paper comparison."""
    for title, header, rows in (_config_table(analysis, n), _fits_table(analysis), _paper_table(analysis)):
        table = RichTable(title=title, title_justify="left")
        for h in header:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for f in analysis.findings[:10]:
        console.print(f"• {f['text']}", highlight=False)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def build_report(
    study: Study, out: Path, console: Console | None = None, strict: bool = False
) -> ReportResult:
    """Collect, fit and write `<out>/<study>/report/`; print summary tables to `console` when given."""
    collected = collect(study, out, strict=strict)
    table = collected.table
    trials_ok = table[(table["kind"] == "trial") & (table["status"] == "ok") & table["in_grid"]]
    if trials_ok.empty:
        raise FtvarError(
            f"study {study.name}: no ok records yet ({collected.summary()}); "
            f"run `ftvar launch {study.name}` and check `ftvar status {study.name}`"
        )
    try:
        analysis = analyze(study, table)
    except (ValueError, ArithmeticError) as exc:  # numbers no fit can take: one line, never a traceback
        raise FtvarError(f"the fits failed on these records ({exc.__class__.__name__}: {exc})") from exc
    folder = StudyPaths.of(out, study.name).report
    plots = plot_all(analysis, table, folder)
    data = report_data(analysis, collected, plots, study)
    title = f"ftvar report: {study.name}"
    sections = _sections(analysis, collected, study)
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
        (result.markdown, render_markdown(sections, plots, title)),
        (result.html, render_html(sections, plots, folder, title)),
    ):
        _write_text(path, text)
    if console is not None:
        print_tables(analysis, console)
        console.print(f"report: {result.html}", highlight=False)
    return result
