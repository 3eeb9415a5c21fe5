"""The report's learning curves and early stopping: plots, sentences and tables of ftvar.stats.curves.

Two plots: each configuration's curves (training loss and the primary metric against epochs; the runs that
did not fail as thin lines with their median and range, failed runs dashed in red, the loss of a classifier
that knows nothing, ln(classes), as a reference) and Dodge et al. 2020's early stopping (the expected best
final metric against the compute spent, for evaluating at a fraction t and continuing the best k, beside
training every run to the end).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from ftvar.report.plots import Plot, _save
from ftvar.stats.analysis import Analysis
from ftvar.stats.curves import LearningCurves, learning_curves
from ftvar.stats.early_stopping import Pool, Schedule, at_compute
from ftvar.stats.results import METRIC_LABELS
from ftvar.study.config import Study

MAX_PANELS = 12  # configurations drawn; beyond, the best ones by median final metric
Block = Any  # str | Table | Plot, as ftvar.report.build renders them


def _t(t: float) -> str:
    """A fraction of training for people: 1/3, 1/2, 0.25."""
    for d in range(2, 9):
        if abs(t * d - round(t * d)) < 1e-4:
            return f"{round(t * d)}/{d}"
    return f"{t:.2g}"


def curves_plot(curves: LearningCurves, classes: int | None, path: Path) -> list[str]:
    """Each configuration's curves in a column: training loss (top) and the primary metric (bottom) against
    epochs. Returns the labels of the configurations drawn."""
    configs = sorted(
        curves.configs,
        key=lambda c: -(c.band.median[curves.metric][-1] or -math.inf) if c.band else math.inf,
    )[:MAX_PANELS]
    configs.sort(key=lambda c: curves.configs.index(c))
    cols = len(configs)
    fig, axes = plt.subplots(2, cols, figsize=(max(4.0, 2.6 * cols), 5.2), squeeze=False, sharey="row")
    label = METRIC_LABELS[curves.metric]
    for j, c in enumerate(configs):
        for i, key in enumerate(("train_loss", curves.metric)):
            ax = axes[i][j]
            for run in c.runs:
                xs = [e for e, v in zip(run.epoch, run.values[key], strict=True) if v is not None]
                ys = [v for v in run.values[key] if v is not None]
                if run.failed:
                    ax.plot(xs, ys, color="tab:red", linestyle="--", marker="x", markersize=3, linewidth=1)
                else:
                    ax.plot(xs, ys, color="tab:blue", linewidth=0.7, alpha=0.45)
            if c.band is not None:
                med = [math.nan if v is None else v for v in c.band.median[key]]
                lo = [math.nan if v is None else v for v in c.band.low[key]]
                hi = [math.nan if v is None else v for v in c.band.high[key]]
                ax.fill_between(c.band.epoch, lo, hi, color="tab:blue", alpha=0.15, linewidth=0)
                ax.plot(c.band.epoch, med, color="tab:blue", linewidth=2)
            if key == "train_loss" and classes and classes >= 2:
                ax.axhline(math.log(classes), color="grey", linewidth=0.8, linestyle=":")
            if i == 0:
                ax.set_title(f"{c.label}\n{c.n_failed}/{c.n_trials} failed", fontsize=8)
            if i == 1:
                ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("training loss" if i == 0 else label)
            ax.tick_params(labelsize=7)
    title = (
        "learning curves: runs that did not fail (thin blue; median and range), failed runs (dashed red)"
        + (f"; dotted: ln {classes}, the loss of a classifier that knows nothing" if classes else "")
    )
    fig.suptitle(textwrap.fill(title, width=int(15 * max(4.0, 2.6 * cols))), fontsize=8)
    _save(fig, path)
    return [c.label for c in configs]


def early_stopping_plot(pool: Pool, metric: str, path: Path) -> None:
    """Expected best final metric against compute (full trainings) for the pool's schedules."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    ax.plot(pool.full.compute, pool.full.expected, color="black", linewidth=2.2, label="every run to the end")
    styles = {1: "-", 2: "--", 3: ":"}
    colours = plt.get_cmap("viridis")
    fractions = sorted({s.t for s in pool.schedules})
    for s in pool.schedules:
        colour = colours(fractions.index(s.t) / max(1, len(fractions) - 1) * 0.85)
        ax.plot(
            s.compute,
            s.expected,
            color=colour,
            linestyle=styles.get(s.keep, "-."),
            linewidth=1.3,
            label=f"evaluate at t = {_t(s.t)}, continue the best {s.keep}",
        )
    ax.set_xlabel("compute spent (full training runs)")
    ax.set_ylabel(f"expected best final {METRIC_LABELS[metric]}")
    ax.set_title(f"early stopping (Dodge et al. 2020): {pool.name}, N = {pool.n_trials} trials", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def curve_plots(curves: LearningCurves, classes: int | None, folder: Path) -> list[Plot]:
    """Write the plots; returns them in report order."""
    plots: list[Plot] = []
    if curves.configs:
        drawn = curves_plot(curves, classes, folder / "learning_curves.png")
        more = (
            "" if len(drawn) == len(curves.configs) else f" ({len(drawn)} of {len(curves.configs)}: the best)"
        )
        plots.append(Plot("learning_curves.png", f"learning curves per configuration{more}", "curves"))
    pool = _lead_pool(curves)
    if pool is not None and pool.schedules:
        early_stopping_plot(pool, curves.metric, folder / "early_stopping.png")
        plots.append(
            Plot(
                "early_stopping.png",
                f"early stopping: expected best vs compute ({pool.name})",
                "early_stopping",
            )
        )
    return plots


def _lead_pool(curves: LearningCurves) -> Pool | None:
    """The pool the report leads with: the whole study, else the only configuration."""
    return curves.pools[0] if curves.pools else None


def _best_saving(pool: Pool, resolution: float) -> tuple[Schedule, int, float, float, float] | None:
    """Where early stopping helps most on the pool: the (schedule, budget n) whose expected best beats full
    training's at the same compute by the largest margin, and by more than the metric's `resolution` (one
    eval example) and twice its Monte Carlo error; (schedule, n, compute, early, full)."""
    best: tuple[Schedule, int, float, float, float] | None = None
    for s in pool.schedules:
        for n, compute, value, se in zip(s.n, s.compute, s.expected, s.se, strict=True):
            full = at_compute(pool.full, compute)
            if full is None:
                continue
            gain = value - full
            if gain > max(2 * se, resolution) and (best is None or gain > best[3] - best[4]):
                best = (s, n, compute, value, full)
    return best


def curve_blocks(curves: LearningCurves, plots: list[Plot]) -> list[Block]:
    """The report section's sentences, tables and plots."""
    metric = METRIC_LABELS[curves.metric]
    out: list[Block] = []
    if not curves.configs:
        return [*curves.notes] or ["No trial has a learning curve (train.eval_every = 0)."]
    rate = curves.failed_rate
    out.append(
        f"**Failed runs: {curves.n_failed} of {curves.n_trials} ({100 * rate:.0f}%)** — a run fails when it "
        "diverges or ends no better than the majority class (accuracy at most the majority share"
        + (", or MCC at most 0" if curves.metric == "mcc" else "")
        + "): Mosbach et al. 2021's failed runs, which take in ftvar's degenerate trials (one class "
        "predicted). A failed run's training loss often stays near its start, ln(classes)."
    )
    rows = [
        [
            c.label,
            str(c.n_trials),
            f"{c.n_failed} ({100 * c.failed_rate:.0f}%)",
            _fmt(c.band.median[curves.metric][-1] if c.band else None),
            _fmt(c.band.median["train_loss"][-1] if c.band else None),
        ]
        for c in curves.configs
    ]
    header = ["configuration", "trials", "failed", f"median final {metric} (not failed)", "median last loss"]
    out.append(("Failed runs per configuration", header, rows))
    out += [p for p in plots if p.kind == "curves"]
    out += _early_stopping_blocks(curves, plots)
    out += curves.notes
    return out


def _early_stopping_blocks(curves: LearningCurves, plots: list[Plot]) -> list[Block]:
    pool = _lead_pool(curves)
    metric = METRIC_LABELS[curves.metric]
    if pool is None or not pool.schedules:
        return []
    out: list[Block] = []
    resolution = curves.resolution
    found = _best_saving(pool, resolution)
    if found is not None:
        s, n, compute, value, full = found
        out.append(
            f"**Early stopping ({pool.name}, N = {pool.n_trials}):** starting {n} runs, evaluating them at "
            f"t = {_t(s.t)} of training and continuing the best {s.keep} costs {compute:.3g} full runs and "
            f"gives an expected best final {metric} of {value:.3f}, against {full:.3f} for the same compute "
            "spent on runs trained to the end."
        )
    else:
        out.append(
            f"**Early stopping ({pool.name}, N = {pool.n_trials}):** on these trials no rule (evaluate at t, "
            "continue the best k) beats training every run to the end at the same compute by more than "
            f"{resolution:.2g} (one eval example{'' if curves.metric == 'accuracy' else ', as accuracy'}): "
            "the table gives each rule's expected best and its compute."
        )
    out.append(
        "How it is estimated: from the study's own trials, as a resample. For a budget of n started runs, n "
        f"of the pool's N trials are drawn without replacement, ranked by {metric} at their last curve point "
        "at or before the fraction t of training (ties broken at random), and the best final value among the "
        "k best-ranked is the outcome; each point is the mean over 20,000 draws (Monte Carlo standard "
        f"error at most {_mc_error(curves):.2g} here); compute counts training only, n·t + k·(1 − t) full "
        "runs; every run trained to the end is expected max, computed exactly. It assumes that "
        "the trials are exchangeable draws of the runs one would start (the seeds of one configuration; for "
        "the whole study, a configuration drawn uniformly from the design) and that a run stopped at t and "
        "continued would end where the trial ended (true here: evaluating changes nothing in training). It "
        "says nothing beyond n = N, near n = N it only repeats the pool's best, and with few trials per pool "
        "it is as uncertain as expected max itself."
    )
    keeps = sorted({s.keep for p in curves.pools for s in p.schedules})
    rows = []
    for p in curves.pools:  # each pool at its whole budget (n = N): what each rule costs and gives
        for t in p.fractions:
            cells = []
            for k in keeps:
                rule = next(
                    (r for r in p.schedules if r.t == t and r.keep == k and r.n[-1] == p.n_trials), None
                )
                if rule is None:
                    cells.append("—")
                    continue
                same = at_compute(p.full, rule.compute[-1])
                cells.append(f"{rule.expected[-1]:.3f} ({rule.compute[-1]:.3g}; {_fmt(same)})")
            rows.append(
                [p.name, str(p.n_trials), _t(t), *cells, f"{p.full.expected[-1]:.3f} ({p.n_trials} runs)"]
            )
    header = [
        "pool",
        "runs started (N)",
        "t",
        *(f"keep {k}" for k in keeps),
        "all N to the end",
    ]
    title = (
        f"Early stopping with every run of the pool started: expected best final {metric} (compute in full "
        "runs; every run trained to the end at that compute)"
    )
    out.append((title, header, rows))
    out += [p for p in plots if p.kind == "early_stopping"]
    return out


def learning_curves_of(study: Study, table: pd.DataFrame, analysis: Analysis) -> LearningCurves | None:
    """The study's learning curves, or None when no trial has one (an analysis that fails on odd records
    becomes a note of the report, never a crash)."""
    try:
        curves = learning_curves(table, study.axes, analysis.metric)
    except Exception as exc:  # the report must survive any records the collector accepted
        analysis.notes.append(f"the learning curves could not be read ({type(exc).__name__}: {exc})")
        return None
    return curves if curves.configs else None


def n_classes(table: pd.DataFrame) -> int | None:
    """The number of classes of the study's task (for the loss of a classifier that knows nothing)."""
    if "n_labels" not in table.columns:
        return None
    values = pd.to_numeric(table["n_labels"], errors="coerce").dropna()
    return int(values.max()) if not values.empty else None


def _mc_error(curves: LearningCurves) -> float:
    """The largest Monte Carlo standard error of the early-stopping estimates."""
    return max((se for p in curves.pools for s in p.schedules for se in s.se), default=0.0)


def _fmt(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def curves_data(curves: LearningCurves) -> dict[str, Any]:
    """What report.json holds of the curves: per configuration its counts and band (not every run's points),
    and every early-stopping pool."""
    return {
        "metric": curves.metric,
        "trials_with_curves": curves.n_with,
        "trials_without_curves": curves.n_without,
        "failed": curves.n_failed,
        "trials": curves.n_trials,
        "failed_rate": curves.failed_rate if curves.n_trials else None,
        "configurations": [
            {
                "label": c.label,
                "values": c.values,
                "trials": c.n_trials,
                "failed": c.n_failed,
                "failed_trials": [r.trial_id for r in c.runs if r.failed],
                "band": asdict(c.band) if c.band else None,
            }
            for c in curves.configs
        ],
        "early_stopping": [asdict(p) for p in curves.pools],
        "notes": curves.notes,
    }
