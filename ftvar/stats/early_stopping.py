"""Dodge et al. 2020's early stopping: start n runs, evaluate them at a fraction t of training, go on with k.

Dodge et al. ("Fine-tuning pretrained language models: weight initializations, data orders, and early
stopping", 2020) found that bad runs show early: starting many seeds, evaluating them early and training only
the most promising to the end gives the expected best score of many full runs for a fraction of the compute.
Here that is estimated from a study's own trials, which carry learning curves (ftvar.train.curve):

- a pool is a set of N trials (the seeds of one configuration, as in the paper; or the whole study, a
  configuration drawn uniformly from its design with its seeds);
- for a budget of n ≤ N runs, n trials are drawn from the pool without replacement, ranked by the metric
  at their last curve point at or before the fraction t of training (ties broken at random), the best k are
  "continued", and the best final metric among them is the outcome; the expected outcome is the mean over
  DRAWS random draws (its Monte Carlo standard error is reported and is far below the metric's resolution);
- the compute is n·t + k·(1 − t) full trainings (evaluations are not counted); t = 1 (or k = n) is plain
  expected max: the best of n runs trained to the end, computed exactly.

What it assumes, said in the report: the pool's trials are exchangeable draws of the runs one would start; a
run stopped at t and continued would end where this trial ended (true in ftvar: evaluating changes nothing);
nothing is known beyond n = N, and near n = N the estimate only repeats the pool's observed best. With a few
trials per pool it is as uncertain as any expected-max estimate of so few runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DRAWS = 20_000  # random draws per (n, t, k): a Monte Carlo standard error of about 0.1 % of the spread
MAX_CELLS = 20_000_000  # draws × pool size per budget; larger pools get fewer draws
KEEP = (1, 2, 3)  # runs continued after the early evaluation
BUDGETS = (
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    12,
    15,
    20,
    30,
    50,
    100,
)  # n shown for large pools; every n for small ones


@dataclass
class Schedule:
    """One early-stopping rule (evaluate at fraction `t`, continue the best `keep`; t = 1 and keep = 0: every
    run trained to the end) on one pool: for each budget n of started runs, the compute spent and the
    expected best final metric."""

    t: float
    keep: int
    n: list[int]
    compute: list[float]  # in full trainings: n·t + keep·(1 − t)
    expected: list[float]
    se: list[float]  # Monte Carlo standard error (0 where exact)


@dataclass
class Pool:
    """The early-stopping analysis of a pool of trials: the full-training curve (t = 1) and the schedules."""

    name: str  # "all trials" or a configuration's label
    n_trials: int
    fractions: list[float]  # the fractions t < 1 at which every trial of the pool has a curve point
    full: Schedule  # t = 1: the expected best of n runs trained to the end (exact)
    schedules: list[Schedule] = field(default_factory=list)


def fraction_values(curves: Sequence[Sequence[tuple[float, float | None]]], t: float) -> np.ndarray:
    """Each curve's metric at its last point at or before fraction `t` of training (NaN where it has none):
    curves are lists of (fraction of training, metric value)."""
    out = np.full(len(curves), np.nan)
    for i, points in enumerate(curves):
        before = [v for f, v in points if f <= t + 1e-9 and v is not None]
        if before:
            out[i] = before[-1]
    return out


def common_fractions(curves: Sequence[Sequence[tuple[float, float | None]]]) -> list[float]:
    """The fractions t < 1 at which every curve has a point (rounded to 1e-6)."""
    sets = [{round(f, 6) for f, v in points if v is not None and f < 1 - 1e-9} for points in curves]
    if not sets:
        return []
    return sorted(set.intersection(*sets))


def expected_max_exact(final: np.ndarray, n: int) -> float:
    """The expected best of n values drawn without replacement from `final` (exact): the i-th smallest of N
    is the best of the draw with probability C(i−1, n−1) / C(N, n)."""
    values = np.sort(final)
    total = len(values)
    weights = np.array([math.comb(i, n - 1) for i in range(total)], dtype=float) / math.comb(total, n)
    return float(weights @ values)


def expected_best_kept(
    early: np.ndarray, final: np.ndarray, n: int, keep: int, rng: np.random.Generator, draws: int = DRAWS
) -> tuple[float, float]:
    """The expected best final value among the `keep` best-at-`early` of n runs drawn without replacement,
    and its Monte Carlo standard error (ties in `early` broken at random; higher is better)."""
    total = len(final)
    draws = max(200, min(draws, MAX_CELLS // max(1, total)))
    chosen = np.argsort(rng.random((draws, total)), axis=1)[:, :n]  # n distinct trials per draw
    jitter = rng.random(chosen.shape)
    order = np.lexsort((jitter, -early[chosen]), axis=1)[:, : min(keep, n)]  # best early score first
    outcome = final[np.take_along_axis(chosen, order, axis=1)].max(axis=1)
    return float(outcome.mean()), float(outcome.std(ddof=1) / math.sqrt(draws))


def budgets(total: int) -> list[int]:
    """The budgets n shown for a pool of `total` trials: every n up to 12, then BUDGETS, then N."""
    if total <= 12:
        return list(range(1, total + 1))
    return sorted({n for n in BUDGETS if n <= total} | {total})


def analyse_pool(
    name: str,
    curves: Sequence[Sequence[tuple[float, float | None]]],
    final: np.ndarray,
    seed: int = 0,
    keep: Sequence[int] = KEEP,
) -> Pool | None:
    """The early-stopping analysis of a pool: its trials' curves (fraction of training, metric) and final
    metrics (higher is better: accuracy, F1, MCC). None for a pool of fewer than two trials with a final
    value."""
    ok = np.isfinite(final)
    curves = [c for c, good in zip(curves, ok, strict=True) if good]
    final = final[ok]
    total = len(final)
    if total < 2:
        return None
    ns = budgets(total)
    exact = [expected_max_exact(final, n) for n in ns]
    full = Schedule(1.0, 0, ns, [float(n) for n in ns], exact, [0.0] * len(ns))
    pool = Pool(name, total, common_fractions(curves), full)
    rng = np.random.default_rng(seed)
    for t in pool.fractions:
        early = fraction_values(curves, t)
        for k in keep:
            usable = [n for n in ns if n > k]
            if not usable:
                continue
            results = [expected_best_kept(early, final, n, k, rng) for n in usable]
            compute = [n * t + k * (1 - t) for n in usable]
            pool.schedules.append(
                Schedule(t, k, usable, compute, [r[0] for r in results], [r[1] for r in results])
            )
    return pool


def at_compute(schedule: Schedule, compute: float) -> float | None:
    """The schedule's expected best at `compute` full trainings, interpolated linearly between its budgets;
    None outside the computes it covers."""
    xs, ys = schedule.compute, schedule.expected
    if not xs or compute < xs[0] - 1e-9 or compute > xs[-1] + 1e-9:
        return None
    return float(np.interp(compute, xs, ys))
