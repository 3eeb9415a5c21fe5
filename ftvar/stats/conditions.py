"""How a study's trials ran, and what running them again changed: the conditions besides the settings and
seeds that a trial's numbers may depend on (engine, arithmetic, packing, device, whose random numbers),
counted where the trials differ in them; and the spread between replicates (`grid.replicate`: the same
settings and seeds run again), which measures the floor of noise the hardware and its kernels add.

Replicates are one observation for the fits: each (configuration, seeds) cell enters them once, as the mean of
its replicates, so that running a trial again never counts as new evidence about the hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# the results table's columns that say how a trial ran (ftvar.store.collect), with their words
CONDITIONS = {
    "engine": "engine",
    "precision": "precision",
    "matmul": "fp32 matmuls",
    "packing": "packing",
    "device": "device",
    "randomness": "random numbers",
}
UNKNOWN = "not recorded (an older record)"


@dataclass
class Condition:
    """One condition in which the study's trials differ: trials per value."""

    column: str
    label: str
    counts: dict[str, int]

    def sentence(self) -> str:
        parts = ", ".join(f"{n} {value}" for value, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        return f"{self.label}: {parts}"


@dataclass
class Spread:
    """One metric's spread between replicates: the pooled within-cell standard deviation, the largest
    difference within a cell, and whether every cell's replicates were identical."""

    metric: str
    sd: float
    max_difference: float
    identical: bool


@dataclass
class Replicates:
    """The replicates of a study: cells (configuration and seeds) run more than once, and their spread."""

    cells: int = 0  # cells with at least two replicates that finished ok
    runs: int = 0  # the ok trials in those cells
    spreads: list[Spread] = field(default_factory=list)

    def spread(self, metric: str) -> Spread | None:
        return next((s for s in self.spreads if s.metric == metric), None)


def differing(trials: pd.DataFrame) -> list[Condition]:
    """The conditions in which the study's trials differ (records without the field count as unknown)."""
    out = []
    for column, label in CONDITIONS.items():
        if column not in trials.columns or trials.empty:
            continue
        values = trials[column].astype(object).where(trials[column].notna(), UNKNOWN)
        counts = {str(k): int(v) for k, v in values.value_counts().items()}
        if len(counts) > 1:
            out.append(Condition(column, label, counts))
    return out


def spread(trials: pd.DataFrame, cell: list[str], metrics: tuple[str, ...]) -> Replicates:
    """The spread between replicates of the same cell (the columns `cell`: every axis and both seeds)."""
    if "replicate" not in trials.columns or trials["replicate"].nunique() < 2:
        return Replicates()
    groups = trials.groupby(cell, dropna=False, sort=False)
    sizes = groups["replicate"].transform("size")
    repeated = trials[sizes >= 2]
    if repeated.empty:
        return Replicates()
    grouped = repeated.groupby(cell, dropna=False, sort=False)
    out = Replicates(cells=int(grouped.ngroups), runs=len(repeated))
    for metric in metrics:
        if metric not in repeated.columns:
            continue
        values = repeated[metric].astype("float64")
        deviations = values - grouped[metric].transform("mean")
        dof = int((grouped[metric].count() - 1).clip(lower=0).sum())
        if dof == 0:
            continue
        ss = float(np.nansum(deviations.to_numpy() ** 2))
        ranges = grouped[metric].max() - grouped[metric].min()
        largest = float(ranges.max())
        out.spreads.append(Spread(metric, float(np.sqrt(ss / dof)), largest, bool(largest == 0.0)))
    return out


def collapse(trials: pd.DataFrame, cell: list[str], metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per cell: the mean of its replicates' metrics (the other columns from its first replicate)."""
    if "replicate" not in trials.columns or trials["replicate"].nunique() < 2 or not cell:
        return trials
    present = [m for m in metrics if m in trials.columns]
    out = trials.copy()
    out[present] = trials.groupby(cell, dropna=False, sort=False)[present].transform("mean")
    return out.drop_duplicates(subset=cell, keep="first").reset_index(drop=True)
