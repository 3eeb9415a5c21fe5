"""PNG plots of a study's analysis (matplotlib, Agg backend: no display needed), over the study's axes."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ftvar.stats.analysis import METRIC_LABELS, Analysis
from ftvar.stats.results import Fit
from ftvar.stats.variance import Decomposition
from ftvar.store.files import write_atomic
from ftvar.study.axes import Axis, show_value

MAX_POINTS = 5000  # scatter plots show a seeded random sample of at most this many points
MAX_TICKS = 8  # an axis of the parallel plot with more values names its first and last only
MAX_HEATMAPS = 3
SHARE_MIN = 0.005  # terms with a smaller share are pooled in the variance chart
LEARNING_CURVE_AXIS = "data.train_limit"


@dataclass(frozen=True)
class Plot:
    file: str  # name inside the report folder
    title: str
    kind: str  # variance | expected_max | parallel | learning_curve | hyperparameter | heatmap | fit


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=90, format="png"))
    plt.close(fig)


def varying(analysis: Analysis, trials: pd.DataFrame) -> list[Axis]:
    """The hyperparameter axes with at least two values among the trials."""
    return [
        a
        for a in analysis.axes
        if not a.is_seed and a.name in trials.columns and trials[a.name].nunique(dropna=True) >= 2
    ]


def _seed_key(trials: pd.DataFrame) -> pd.Series:
    parts = [trials[c].astype(str) for c in ("init_seed", "order_seed") if c in trials.columns]
    if not parts:
        return pd.Series("0", index=trials.index)
    key = parts[0]
    for p in parts[1:]:
        key = key + "/" + p
    return key


def _set_axis(ax: Any, axis: Axis, x: np.ndarray) -> None:
    if axis.coding in ("log10", "log2") and len(x) and np.all(x > 0):
        ax.set_xscale("log", base=2 if axis.coding == "log2" else 10)
    ax.set_xticks(x, [show_value(float(v)) for v in x])
    ax.xaxis.set_minor_locator(NullLocator())


def variance_plot(decompositions: list[Decomposition], path: Path) -> None:
    """Share of variance per component, one panel per metric, with the bootstrap intervals."""
    fig, axes = plt.subplots(1, len(decompositions), figsize=(5.2 * len(decompositions), 3.8), squeeze=False)
    for ax, d in zip(axes[0], decompositions, strict=True):
        comps = [c for c in d.components if c.kind != "hyperparameters"]
        shown = [c for c in comps if c.kind != "term" or c.share >= SHARE_MIN]
        labels = [c.label for c in shown]
        shares = np.array([c.share for c in shown], dtype="float64")
        lo = np.array([c.ci_low if c.ci_low is not None else c.share for c in shown], dtype="float64")
        hi = np.array([c.ci_high if c.ci_high is not None else c.share for c in shown], dtype="float64")
        colors = ["#3b75af" if c.kind in ("term", "lack_of_fit") else "#e0863b" for c in shown]
        y = np.arange(len(shown))[::-1]
        err = np.vstack([np.clip(shares - lo, 0, None), np.clip(hi - shares, 0, None)])
        ax.barh(y, np.nan_to_num(shares), xerr=np.nan_to_num(err), color=colors, capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of variance")
        ax.set_title(f"{METRIC_LABELS[d.metric]}: luck {d.luck.share:.0%}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("what moves the metric (blue: hyperparameters) and how much is luck (orange: seeds, noise)")
    _save(fig, path)


def expected_max_plot(analysis: Analysis, path: Path) -> None:
    """Expected best score against the budget: a band from seed resamples where there is one (else ± 1 sd),
    the x axis in plain numbers of trials."""
    metric = METRIC_LABELS.get(analysis.lead, analysis.lead)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for curve in analysis.expected_max:
        n, mean, sd = np.array(curve.n), np.array(curve.mean), np.array(curve.sd)
        style = {"linewidth": 2.5, "color": "black"} if curve.group == "all trials" else {"linewidth": 1.2}
        (line,) = ax.plot(n, mean, label=f"{curve.group} (N = {curve.n_trials})", **style)
        if curve.band_low is not None and curve.band_high is not None:
            k = len(curve.band_low)
            ax.fill_between(n[:k], curve.band_low, curve.band_high, alpha=0.15, color=line.get_color())
        else:
            ax.fill_between(n, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    top = max((max(c.n) for c in analysis.expected_max), default=1)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if t <= top]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    what = (
        "random search: trials drawn from the design's priors"
        if analysis.expected_max_random
        else "random subsets of this design's trials"
    )
    ax.set_xlabel(f"number of trials ({what})")
    ax.set_ylabel(f"expected best {metric}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    banded = any(c.band_low is not None for c in analysis.expected_max)
    spread = "shaded: 95% band over seed resamples (up to N/4 trials)" if banded else "shaded: ± 1 sd"
    ax.set_title(f"expected best {metric} vs budget (Dodge et al. 2019)\n{spread}", fontsize=9)
    _save(fig, path)


def hyperparameter_plot(
    trials: pd.DataFrame, axes: list[Axis], metric: str, baseline: float | None, path: Path
) -> None:
    """The metric against each varying axis: per seed, the mean over the other axes; then mean ± sd over seeds
    (no bar with a single seed)."""
    fig, panels = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.4), sharey=True, squeeze=False)
    seeds = _seed_key(trials)
    for ax, axis in zip(panels[0], axes, strict=True):
        frame = pd.DataFrame({"x": trials[axis.name], "seed": seeds, "y": trials[metric]})
        per_seed = frame.groupby(["x", "seed"])["y"].mean().groupby(level=0).agg(["mean", "std"])
        if axis.kind == "categorical":  # in the study's order of levels
            order = [v for v in axis.values if v in per_seed.index]
            per_seed = per_seed.reindex(order + [v for v in per_seed.index if v not in order])
            pos = np.arange(len(per_seed))
            ax.set_xlim(-0.5, len(per_seed) - 0.5)
            ax.errorbar(
                pos, per_seed["mean"], yerr=per_seed["std"].fillna(0), marker="o", capsize=4, ls="none"
            )
            ax.set_xticks(pos, [show_value(v) for v in per_seed.index], rotation=20, fontsize=8)
        else:
            x = per_seed.index.to_numpy(dtype="float64")
            ax.errorbar(x, per_seed["mean"], yerr=per_seed["std"].fillna(0), marker="o", capsize=4)
            _set_axis(ax, axis, x)
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle="--", label="baseline (no fine-tuning)")
            ax.legend(fontsize=7)
        ax.set_xlabel(axis.label)
        ax.grid(alpha=0.3)
    panels[0][0].set_ylabel(METRIC_LABELS[metric])
    fig.suptitle(f"{METRIC_LABELS[metric]} by hyperparameter (mean ± sd over seeds)")
    _save(fig, path)


def heatmap_plot(trials: pd.DataFrame, pairs: list[tuple[Axis, Axis]], metric: str, path: Path) -> None:
    """Mean metric over pairs of axes (each with ≥ 2 values)."""
    fig, panels = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 3.8), squeeze=False)
    for ax, (rows, cols) in zip(panels[0], pairs, strict=True):
        grid = trials.pivot_table(index=rows.name, columns=cols.name, values=metric, aggfunc="mean")
        values = grid.to_numpy(dtype="float64")
        image = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(grid.shape[1]), [show_value(v) for v in grid.columns], fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [show_value(v) for v in grid.index], fontsize=8)
        ax.set_xlabel(cols.label)
        ax.set_ylabel(rows.label)
        if values.size <= 100:
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):  # dark text on the light (high) end of viridis, white on the dark end
                    color = "black" if image.norm(v) > 0.6 else "white"
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", color=color, fontsize=8)
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"mean {METRIC_LABELS[metric]}")
    _save(fig, path)


def _natural(text: str) -> tuple[int, float, str]:
    """Numbers in numeric order (seed 2 before seed 10), then the other values in text order."""
    try:
        number = float(text)
    except ValueError:
        return (1, 0.0, text)
    return (0, number, text) if math.isfinite(number) else (1, 0.0, text)


def parallel_plot(trials: pd.DataFrame, axes: list[Axis], metric: str, path: Path) -> None:
    """Every trial as a line across the axes (each scaled to [0, 1]), coloured by the metric."""
    frame = trials
    if len(frame) > MAX_POINTS:
        frame = frame.sample(MAX_POINTS, random_state=0)
    columns, ticks = [], []
    for axis in axes:
        col = frame[axis.name]
        if axis.kind == "categorical" or axis.is_seed:
            levels = sorted(col.astype(str).unique(), key=_natural)
            pos = col.astype(str).map({v: i for i, v in enumerate(levels)}).to_numpy(dtype="float64")
            scaled = pos / max(len(levels) - 1, 1)
            named = range(len(levels)) if len(levels) <= MAX_TICKS else (0, len(levels) - 1)
            ticks.append([(i / max(len(levels) - 1, 1), show_value(levels[i])) for i in named])
        else:
            x = col.to_numpy(dtype="float64")
            log = axis.coding in ("log10", "log2") and bool(np.all(x > 0))
            coded = np.log10(x) if log else x
            lo, hi = float(np.nanmin(coded)), float(np.nanmax(coded))
            span = hi - lo if hi > lo else 1.0
            scaled = (coded - lo) / span if hi > lo else np.full(len(x), 0.5)
            values = sorted(set(x.tolist()))
            shown = values if len(values) <= MAX_TICKS else [values[0], values[-1]]
            ticks.append([(((np.log10(v) if log else v) - lo) / span, show_value(v)) for v in shown])
        columns.append(scaled)
    y = frame[metric].to_numpy(dtype="float64")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(axes)), 4.2))
    cmap = plt.get_cmap("viridis")
    lo, hi = np.nanmin(y), np.nanmax(y)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1e-9)
    xs = np.arange(len(axes))
    data = np.column_stack(columns) if columns else np.zeros((len(frame), 0))
    order = np.argsort(y)  # the best last, on top
    lines = np.stack([np.broadcast_to(xs, data.shape), data], axis=-1)[order]  # trial × axis × (x, y)
    collection = LineCollection(list(lines), cmap=cmap, norm=norm, alpha=0.6, linewidths=1)
    collection.set_array(y[order])  # one artist for every line: 5,000 ax.plot calls took 15 s to draw
    ax.add_collection(collection)
    ax.autoscale_view()
    for j, tick in enumerate(ticks):
        for pos, text in tick:
            ax.text(j + 0.03, pos, text, fontsize=7, va="center")
        ax.axvline(j, color="grey", linewidth=0.8)
    ax.set_xticks(xs, [a.label for a in axes], fontsize=8)
    ax.set_yticks([])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=METRIC_LABELS[metric])
    ax.set_title(f"every trial, coloured by {METRIC_LABELS[metric]}")
    _save(fig, path)


def learning_curve_plot(trials: pd.DataFrame, axis: Axis, baseline: float | None, path: Path) -> None:
    """Accuracy against the number of training rows: mean ± sd over seeds of the per-seed means."""
    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = _seed_key(trials)
    for metric in ("accuracy", "f1"):
        frame = pd.DataFrame({"x": trials[axis.name], "seed": seeds, "y": trials[metric]})
        stats = frame.groupby(["x", "seed"])["y"].mean().groupby(level=0).agg(["mean", "std"])
        x = stats.index.to_numpy(dtype="float64")
        ax.errorbar(
            x, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=4, label=METRIC_LABELS[metric]
        )
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="baseline accuracy (no fine-tuning)")
    x = np.sort(trials[axis.name].dropna().unique().astype("float64"))
    if len(x) and np.all(x > 0):
        ax.set_xscale("log")
    ax.set_xticks(x, [show_value(float(v)) for v in x])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training rows")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("learning curve (mean ± sd over seeds)")
    _save(fig, path)


def fit_plot(fit: Fit, path: Path) -> None:
    """Predicted vs observed and residuals vs fitted of one fit."""
    assert fit.fitted is not None and fit.observed is not None  # only called for ok fits
    fitted, observed = fit.fitted, fit.observed
    if len(fitted) > MAX_POINTS:
        keep = np.random.default_rng(0).choice(len(fitted), MAX_POINTS, replace=False)
        fitted, observed = fitted[keep], observed[keep]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.scatter(fitted, observed, s=10, alpha=0.6)
    lo, hi = float(min(fitted.min(), observed.min())), float(max(fitted.max(), observed.max()))
    left.plot([lo, hi], [lo, hi], color="grey", linestyle="--")
    left.set_xlabel("predicted")
    left.set_ylabel("observed")
    right.scatter(fitted, observed - fitted, s=10, alpha=0.6)
    right.axhline(0, color="grey", linestyle="--")
    right.set_xlabel("fitted")
    right.set_ylabel("residual")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    r2 = f"{fit.r2:.3f}" if fit.r2 is not None else "n/a"
    fig.suptitle(f"{METRIC_LABELS[fit.metric]}, {fit.kind} fit, {fit.subset} trials (n = {fit.n}, R² = {r2})")
    _save(fig, path)


def _baseline_mean(analysis: Analysis, table: pd.DataFrame, metric: str) -> float | None:
    rows = table[(table["kind"] == "baseline") & (table["status"] == "ok")]
    values = pd.to_numeric(rows[metric], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def plot_all(analysis: Analysis, table: pd.DataFrame, folder: Path) -> list[Plot]:
    """Write every plot into `folder`; returns them in report order (the "what matters" plots first)."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = analysis.trials
    axes = varying(analysis, trials)
    plots: list[Plot] = []
    if analysis.variance:
        variance_plot(analysis.variance, folder / "variance_shares.png")
        plots.append(
            Plot("variance_shares.png", "share of variance: hyperparameter terms, seeds, noise", "variance")
        )
    if analysis.expected_max:
        expected_max_plot(analysis, folder / "expected_max.png")
        metric = METRIC_LABELS.get(analysis.lead, analysis.lead)
        plots.append(Plot("expected_max.png", f"expected best {metric} vs number of trials", "expected_max"))
    seeds = [
        a for a in analysis.axes if a.is_seed and a.name in trials.columns and trials[a.name].nunique() >= 2
    ]
    if axes and len(trials) >= 2:
        colour = analysis.metric if trials[analysis.metric].notna().any() else "accuracy"
        parallel_plot(trials, axes + seeds, colour, folder / "parallel_coordinates.png")
        title = f"every trial across the axes, coloured by {METRIC_LABELS[colour]}"
        plots.append(Plot("parallel_coordinates.png", title, "parallel"))
    curve_axis = next((a for a in axes if a.name == LEARNING_CURVE_AXIS), None)
    if curve_axis is not None:
        learning_curve_plot(
            trials, curve_axis, _baseline_mean(analysis, table, "accuracy"), folder / "learning_curve.png"
        )
        plots.append(
            Plot("learning_curve.png", "learning curve: accuracy vs training rows", "learning_curve")
        )
    pairs = list(itertools.combinations(axes, 2))[:MAX_HEATMAPS]
    for metric in analysis.metrics:
        if metric not in trials.columns or trials[metric].notna().sum() == 0:
            continue
        part = trials[trials[metric].notna()]
        if axes:
            name = f"{metric}_by_hyperparameter.png"
            hyperparameter_plot(part, axes, metric, _baseline_mean(analysis, table, metric), folder / name)
            plots.append(Plot(name, f"{METRIC_LABELS[metric]} by hyperparameter", "hyperparameter"))
        if pairs:
            name = f"{metric}_heatmaps.png"
            heatmap_plot(part, pairs, metric, folder / name)
            shown = ", ".join(f"{a.label} × {b.label}" for a, b in pairs)
            plots.append(Plot(name, f"mean {METRIC_LABELS[metric]}: {shown}", "heatmap"))
    for fit in analysis.fits:
        if fit.ok and fit.fitted is not None and len(fit.fitted):
            suffix = "" if fit.subset == "all" else "_nondegenerate"
            name = f"fit_{fit.metric}_{fit.kind}{suffix}.png"
            fit_plot(fit, folder / name)
            plots.append(
                Plot(
                    name,
                    f"{METRIC_LABELS[fit.metric]}, {fit.kind} fit ({fit.subset} trials): predicted vs "
                    "observed, residuals vs fitted",
                    "fit",
                )
            )
    return plots
