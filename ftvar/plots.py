"""PNG plots of a study's analysis (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ftvar.analysis import FIT_METRICS, METRIC_LABELS, VARIABLES, Analysis, Fit
from ftvar.atomic import write_atomic

MAX_POINTS = 5000  # scatter plots show a seeded random sample of at most this many points
LOG_AXES = ("learning_rate", "batch_size")


@dataclass(frozen=True)
class Plot:
    file: str  # name inside the report folder
    title: str
    kind: str  # hyperparameter | heatmap | fit


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=90, format="png"))
    plt.close(fig)


def _ok_trials(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["kind"] == "trial") & (table["status"] == "ok") & table["in_grid"]]


def hyperparameter_plot(trials: pd.DataFrame, metric: str, baseline: float | None, path: Path) -> None:
    """The metric against each hyperparameter: per seed, the mean over the other hyperparameters; then the
    mean ± sd of those over seeds (no bar with a single seed)."""
    fig, axes = plt.subplots(1, len(VARIABLES), figsize=(4 * len(VARIABLES), 3.4), sharey=True)
    for ax, (col, _, label) in zip(axes, VARIABLES, strict=True):
        per_seed = trials.groupby([col, "seed"])[metric].mean().groupby(level=0).agg(["mean", "std"])
        x = per_seed.index.to_numpy(dtype="float64")
        ax.errorbar(x, per_seed["mean"], yerr=per_seed["std"].fillna(0), marker="o", capsize=4)
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle="--", label="baseline (no fine-tuning)")
            ax.legend(fontsize=7)
        if col in LOG_AXES and len(x) and x.min() > 0:
            ax.set_xscale("log", base=2 if col == "batch_size" else 10)
        ax.set_xticks(x, [f"{v:g}" for v in x])  # the grid's own values, not the axis' default ticks
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(METRIC_LABELS[metric])
    fig.suptitle(f"{METRIC_LABELS[metric]} by hyperparameter (mean ± sd over seeds)")
    _save(fig, path)


def heatmap_plot(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Mean metric over learning rate × batch size and epochs × batch size."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    pairs = (("learning_rate", "learning rate"), ("epochs", "epochs"))
    for ax, (rows, label) in zip(axes, pairs, strict=True):
        grid = trials.pivot_table(index=rows, columns="batch_size", values=metric, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype="float64"), aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        values = grid.to_numpy(dtype="float64")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):  # dark text on the light (high) end of viridis, white on the dark end
                color = "black" if image.norm(v) > 0.6 else "white"
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color=color, fontsize=8)
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"mean {METRIC_LABELS[metric]}")
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
    fig.suptitle(f"{METRIC_LABELS[fit.metric]}, {fit.kind} fit (n = {fit.n}, R² = {fit.r2:.3f})")
    _save(fig, path)


def plot_all(analysis: Analysis, table: pd.DataFrame, folder: Path) -> list[Plot]:
    """Write every plot into `folder`; returns them in report order."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = _ok_trials(table)
    plots: list[Plot] = []
    for metric in FIT_METRICS:
        base = analysis.baseline[metric] if analysis.baseline else None
        name = f"{metric}_by_hyperparameter.png"
        hyperparameter_plot(trials, metric, base, folder / name)
        plots.append(Plot(name, f"{METRIC_LABELS[metric]} by hyperparameter", "hyperparameter"))
        name = f"{metric}_heatmaps.png"
        heatmap_plot(trials, metric, folder / name)
        title = f"mean {METRIC_LABELS[metric]}: learning rate × batch size, epochs × batch size"
        plots.append(Plot(name, title, "heatmap"))
    for fit in analysis.fits:
        if fit.ok:
            name = f"fit_{fit.metric}_{fit.kind}.png"
            fit_plot(fit, folder / name)
            plots.append(
                Plot(
                    name,
                    f"{METRIC_LABELS[fit.metric]}, {fit.kind} fit: predicted vs observed, "
                    "residuals vs fitted",
                    "fit",
                )
            )
    return plots
