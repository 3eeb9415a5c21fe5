"""Expected best validation score against the number of trials (Dodge et al. 2019, "Show your work").

If n trials are drawn at random (with replacement) from the N the study ran, the best of them is the i-th
smallest score v_(i) with probability (i/N)ⁿ − ((i−1)/N)ⁿ. Its expectation and standard deviation follow
exactly, for every n at once: what a researcher with a budget of n trials should expect, and how much it
varies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Curve:
    group: str  # "all trials" or "<axis label> = <value>"
    n_trials: int  # N
    n: list[int]  # budgets 1..N
    mean: list[float]
    sd: list[float]


def expected_max(values: np.ndarray, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[max] and sd[max] of n draws with replacement from `values`, for each n in `budgets`."""
    v = np.sort(np.asarray(values, dtype="float64"))
    big_n = len(v)
    i = np.arange(1, big_n + 1)
    n = np.asarray(budgets, dtype="float64")[:, None]
    weights = (i / big_n) ** n - ((i - 1) / big_n) ** n  # (budgets, N)
    mean = weights @ v
    second = weights @ (v**2)
    return mean, np.sqrt(np.clip(second - mean**2, 0, None))


def curves(
    trials: pd.DataFrame, metric: str, by: str | None, label: str | None, max_budget: int = 200
) -> list[Curve]:
    """The curve over all trials, then one per value of the axis `by` (when given)."""
    out = []
    groups: list[tuple[str, pd.DataFrame]] = [("all trials", trials)]
    if by is not None and by in trials.columns:
        for value, part in trials.groupby(by, sort=True):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            groups.append((f"{label or by} = {shown}", part))
    for name, part in groups:
        values = part[metric].dropna().to_numpy(dtype="float64")
        if not len(values):
            continue
        budgets = np.arange(1, min(len(values), max_budget) + 1)
        mean, sd = expected_max(values, budgets)
        out.append(Curve(name, len(values), budgets.tolist(), mean.tolist(), sd.tolist()))
    return out
