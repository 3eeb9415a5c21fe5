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
    """E[max] and sd[max] of n draws with replacement from `values`, for each n in `budgets`. The powers
    (i/N)ⁿ are carried from one budget to the next by multiplication: no budgets × N matrix (160 MB, and
    0.13 s, for 200 budgets of 100,000 trials)."""
    v = np.sort(np.asarray(values, dtype="float64"))
    big_n = len(v)
    upper = np.arange(1, big_n + 1) / big_n  # P(one draw ≤ v_(i))
    lower = np.arange(0, big_n) / big_n  # P(one draw < v_(i)), ties counted apart
    wanted = np.asarray(budgets, dtype="int64")
    mean, second = np.zeros(len(wanted)), np.zeros(len(wanted))
    p_up, p_lo, power = np.ones(big_n), np.ones(big_n), 0
    for k in np.argsort(wanted, kind="stable"):
        n = int(wanted[k])
        if n - power > 64:  # a far budget: straight to its power
            p_up, p_lo, power = upper**n, lower**n, n
        while power < n:
            p_up *= upper
            p_lo *= lower
            power += 1
        weights = p_up - p_lo
        mean[k], second[k] = weights @ v, weights @ (v**2)
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
