"""The predicted best configuration of a metric inside the design box, with bootstrap intervals, and where a
quadratic's vertex lies.

The seed-blocked polynomial is evaluated on a dense grid over the box the design spans (every numeric axis
from its smallest to its largest value, in its coding; every level of every factor) and the best point is
taken, for the fit and for each seed resample (ftvar.stats.resample): the intervals say where the best
configuration could be, given the seed-to-seed noise. A best point on the edge of the box is flagged: the
optimum may lie outside what the study ran.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftvar.stats.absorb import absorb, cross
from ftvar.stats.regression import absorbed_fit
from ftvar.stats.resample import responses
from ftvar.stats.terms import ModelData, Predictor, term_matrix

MAX_POINTS = 3_000
CHUNK = 250  # resamples evaluated at once (memory: points × CHUNK floats)
LEVEL = 0.95


@dataclass
class AxisOptimum:
    axis: str
    label: str
    kind: str  # numeric | categorical
    value: Any  # the best value (numeric: in the axis' own units)
    ci_low: float | None = None  # numeric: bootstrap percentile interval
    ci_high: float | None = None
    at_edge: bool = False  # numeric: the best value is the smallest or largest the design ran
    level_shares: dict[str, float] = field(
        default_factory=dict
    )  # categorical: resamples where each level wins


@dataclass
class Best:
    metric: str
    maximise: bool
    degree: int
    predicted: float
    ci_low: float | None
    ci_high: float | None
    axes: list[AxisOptimum]
    bootstrap: int
    notes: list[str] = field(default_factory=list)


def _grid(preds: list[Predictor]) -> pd.DataFrame:
    """Points over the design box, in the axes' own units (the design's values always among them)."""
    numeric = [p for p in preds if p.kind == "numeric"]
    combos = int(np.prod([len(p.values) for p in preds if p.kind == "categorical"])) if preds else 1
    per_axis = int(np.clip((MAX_POINTS / max(combos, 1)) ** (1 / max(len(numeric), 1)), 2, 61))
    axes: list[list[Any]] = []
    for p in preds:
        if p.kind == "categorical":
            axes.append(list(p.values))
            continue
        values = np.asarray(p.values, dtype="float64")
        if np.all(values == np.round(values)) and values.max() - values.min() < 4 * per_axis:
            axes.append(np.arange(values.min(), values.max() + 1).tolist())  # integer settings: integers
            continue
        coded = p.code(values)
        dense = np.linspace(coded.min(), coded.max(), per_axis)
        axes.append(sorted({*p.uncode(dense).tolist(), *map(float, p.values)}))
    rows = itertools.islice(itertools.product(*axes), 5 * MAX_POINTS)
    return pd.DataFrame(list(rows), columns=[p.axis.name for p in preds])


def _matrix(md: ModelData, points: pd.DataFrame) -> np.ndarray:
    by_name = {p.name: p for p in md.predictors}
    cols = [np.ones((len(points), 1))]
    for term in md.terms:
        cols.append(term_matrix(term, by_name, points)[0])
    return np.column_stack(cols)


def best(
    md: ModelData, y: np.ndarray, metric: str, maximise: bool, degree: int, b: int, seed: int = 0
) -> Best:
    """The best point of the fitted surface and its bootstrap intervals (`b` resamples of the seeds)."""
    fit_ = absorbed_fit(md, y)
    xbar = md.X[:, 1:].mean(axis=0)
    points = _grid(md.predictors)
    f = _matrix(md, points)[:, 1:]
    pred = f @ fit_.beta + (float(y.mean()) - float(xbar @ fit_.beta))  # at the mean of the seeds' effects
    pick = np.argmax if maximise else np.argmin
    i = int(pick(pred))
    out = Best(metric, maximise, degree, float(pred[i]), None, None, [], 0)
    blocks = md.seed_blocks()
    picked, values = [], []
    for ystar in responses(md, y, b, seed):
        ya, _ = absorb(ystar, blocks)
        bstar = fit_.xtx_inv @ cross(fit_.xa, ya)
        const = ystar.mean(axis=0) - xbar @ bstar
        for s in range(0, ystar.shape[1], CHUNK):
            pstar = f @ bstar[:, s : s + CHUNK] + const[s : s + CHUNK]
            top = pick(pstar, axis=0)
            picked.append(top)
            values.append(pstar[top, np.arange(pstar.shape[1])])
    picks = np.concatenate(picked) if picked else None
    if picks is not None:
        lo, hi = np.quantile(np.concatenate(values), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        out.ci_low, out.ci_high, out.bootstrap = float(lo), float(hi), len(picks)
    for pr in md.predictors:
        col = points[pr.axis.name]
        value = col.iloc[i]
        if pr.kind == "categorical":
            shares: dict[str, float] = {}
            if picks is not None:
                won = col.to_numpy()[picks]
                shares = {str(v): float(np.mean(won == v)) for v in pr.values}
            out.axes.append(AxisOptimum(pr.axis.name, pr.label, "categorical", value, level_shares=shares))
            continue
        edge = bool(np.isclose(value, min(pr.values)) or np.isclose(value, max(pr.values)))
        ax = AxisOptimum(pr.axis.name, pr.label, "numeric", float(value), at_edge=edge)
        if picks is not None:
            lo, hi = np.quantile(col.to_numpy(dtype="float64")[picks], [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
            ax.ci_low, ax.ci_high = float(lo), float(hi)
        out.axes.append(ax)
    edges = [a.label for a in out.axes if a.at_edge]
    if edges:
        out.notes.append(
            f"the best point lies on the edge of the design for {', '.join(edges)}: the optimum may be "
            "outside "
            "the values the study ran"
        )
    return out


def vertex(md: ModelData, coefs: dict[str, float], predictor: Predictor) -> tuple[float, bool] | None:
    """The vertex of the fitted quadratic along one numeric axis, at the centre of the others: (value in the
    axis' units, whether it lies inside the design's range). None without a square term."""
    sq = coefs.get(f"I({predictor.name} ** 2)")
    lin = coefs.get(predictor.name)
    if sq is None or lin is None or sq == 0:
        return None
    coded = -lin / (2 * sq)
    value = float(predictor.uncode(np.array([coded]))[0])
    inside = min(predictor.values) <= value <= max(predictor.values)
    return value, bool(inside)
