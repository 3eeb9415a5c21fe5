"""The best configuration of a metric: where the fitted surface peaks, the setting to run (values a user can
type), and that setting's value with an interval corrected for having been chosen as the best.

- **Where the fit peaks.** The seed-blocked polynomial is evaluated on a dense grid of settable values over
  the box the design spans (every numeric axis from its smallest to its largest value, in its coding;
  integers for integer settings, powers of two for `round = "pow2"`, the range's step; every level of every
  factor). Its best point and, from seed resamples (ftvar.stats.resample), percentile intervals of each axis'
  best value say where the optimum could be. A best point on the edge of the box is flagged.
- **The setting to run** (`recommended`). On a grid, the design's own configuration the fit predicts best (the
  optimum between two levels is not a setting the study ran); on a sampled design (sobol, lhs, ccd, random),
  the dense grid's best point, floats to three significant digits.
- **Its value.** On a grid with repeated seeds, the mean of the recommended configuration's own trials, which
  does not depend on the polynomial being right (a degree-1 fit with lack of fit can miss a configuration by
  several points); otherwise the fit's prediction there. Choosing the best of many noisy candidates biases its
  estimate up (under a flat truth the best of 48 configurations lies about two standard errors above the
  common value), so the interval and the corrected estimate come from inference on winners
  (ftvar.stats.winners: the hybrid interval of Andrews, Kitagawa & McCloskey 2024), which conditions on the
  selection. It covers the true mean of the chosen setting over seeds (seed variances from the
  decomposition) at its level whether or not any hyperparameter matters (bench/bench_analysis.py measures
  it). With a single seed there is no interval: that seed's effect on every trial cannot be estimated.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftvar.stats.absorb import absorb, cross
from ftvar.stats.regression import absorbed_fit
from ftvar.stats.resample import responses
from ftvar.stats.terms import ModelData, Predictor, term_matrix
from ftvar.stats.winners import infer_winner
from ftvar.study.design import Range

MAX_POINTS = 3_000
CHUNK = 250  # resamples evaluated at once (memory: points × CHUNK floats)
LEVEL = 0.95
DIGITS = 3  # significant digits of a recommended float setting
LACK_OF_FIT_ALPHA = 0.05  # below: choose among a grid's configurations by their means, not by the fit


@dataclass(frozen=True)
class Space:
    """What a user can set on each axis: `ranges` (axes given as a range in the study, with their rounding),
    `integer` (integer settings), and whether the design is a full grid (then only its configurations)."""

    ranges: dict[str, Range] = field(default_factory=dict)
    integer: frozenset[str] = frozenset()
    grid: bool = True


@dataclass
class AxisOptimum:
    axis: str
    label: str
    kind: str  # numeric | categorical
    value: Any  # where the fitted surface peaks (numeric: in the axis' own units, a settable value)
    ci_low: float | None = None  # numeric: bootstrap percentile interval of the peak's position
    ci_high: float | None = None
    at_edge: bool = False  # numeric: the best value is the smallest or largest the design ran
    level_shares: dict[str, float] = field(
        default_factory=dict
    )  # categorical: resamples where each level wins
    recommended: Any = None  # the setting to run (a design level on a grid)


@dataclass
class Best:
    metric: str
    maximise: bool
    degree: int
    predicted: float  # the recommended setting's value estimate (before the selection correction)
    ci_low: float | None  # selection-corrected interval of its true mean (hybrid, ≥ 95%)
    ci_high: float | None
    axes: list[AxisOptimum]
    bootstrap: int  # seed resamples behind the position intervals
    notes: list[str] = field(default_factory=list)
    corrected: float | None = None  # the selection-corrected (median-unbiased) value estimate
    value_from: str = "fit"  # "trials": the recommended configuration's own trials; "fit": the polynomial
    n_trials: int = 0  # trials of the recommended configuration (value_from = trials)
    fit_value: float | None = None  # the fit's prediction at the recommended setting
    candidates: int = 0  # settings the recommendation was chosen among
    recommended: dict[str, Any] = field(default_factory=dict)  # axis → the setting to run
    selected_by: str = "fit"  # "fit": the polynomial's prediction; "means": the configurations' own means


def _round_sig(values: np.ndarray) -> np.ndarray:
    """Floats to DIGITS significant digits: a value a user can type (1.25e-04, not 1.2493e-04)."""
    out = np.asarray(values, dtype="float64").copy()
    nz = np.isfinite(out) & (out != 0)
    exp = np.floor(np.log10(np.abs(out[nz])))
    scale = 10.0 ** (DIGITS - 1 - exp)
    out[nz] = np.round(out[nz] * scale) / scale
    return out


def settable(values: np.ndarray, name: str, space: Space) -> np.ndarray:
    """Raw values of an axis → the nearest values a user can set: integers for integer settings, powers of
    two or multiples of the step as the axis' range rounds, else three significant digits."""
    x = np.asarray(values, dtype="float64")
    r = space.ranges.get(name)
    if r is not None and r.round == "pow2":
        x = 2.0 ** np.floor(np.log2(np.clip(x, 1e-300, None)) + 0.5)
    elif r is not None and isinstance(r.round, int | float) and not isinstance(r.round, bool):
        x = np.floor(x / float(r.round) + 0.5) * float(r.round)
        x = np.array([float(f"{v:.12g}") for v in x])
    if name in space.integer or (r is not None and r.round == "int"):
        return np.floor(x + 0.5)
    if r is not None and r.round is not None:
        return x
    return _round_sig(x)


def _axis_values(p: Predictor, per_axis: int, space: Space) -> list[Any]:
    """The settable values of one axis over its range, the design's own values among them."""
    if p.kind == "categorical":
        return list(p.values)
    coded = p.code(np.asarray(p.values, dtype="float64"))
    dense = p.uncode(np.linspace(coded.min(), coded.max(), per_axis))
    values = settable(dense, p.axis.name, space)
    lo, hi = min(p.values), max(p.values)
    values = values[(values >= lo) & (values <= hi)]
    return sorted({*map(float, values), *map(float, p.values)})


def _grid(preds: list[Predictor], space: Space) -> pd.DataFrame:
    """Points over the design box, in the axes' own units, every one a settable value."""
    numeric = [p for p in preds if p.kind == "numeric"]
    combos = int(np.prod([len(p.values) for p in preds if p.kind == "categorical"])) if preds else 1
    per_axis = int(np.clip((MAX_POINTS / max(combos, 1)) ** (1 / max(len(numeric), 1)), 2, 61))
    axes = [_axis_values(p, per_axis, space) for p in preds]
    rows = itertools.islice(itertools.product(*axes), 5 * MAX_POINTS)
    return pd.DataFrame(list(rows), columns=[p.axis.name for p in preds])


def _matrix(md: ModelData, points: pd.DataFrame) -> np.ndarray:
    by_name = {p.name: p for p in md.predictors}
    cols = [np.ones((len(points), 1))]
    for term in md.terms:
        cols.append(term_matrix(term, by_name, points)[0])
    return np.column_stack(cols)


@dataclass(frozen=True)
class Noise:
    """The noise model behind the value's interval: the variance of one trial around its configuration's mean
    and its seeds' effects (`residual`, on `df` degrees of freedom; `pure`: from configurations run with
    several seeds), and each seed factor's variance (in the order of the model's seed factors)."""

    residual: float
    df: float
    pure: bool
    seeds: tuple[float, ...] = ()
    lack_of_fit_p: float | None = None  # F-test of the polynomial's lack of fit against the pure error
    # where the configurations' noise differs: each configuration's own noise variance and its df
    own: tuple[float, ...] = ()
    own_df: tuple[float, ...] = ()

    def of(self, config: int) -> tuple[float, float]:
        """The noise variance of one configuration's trials and its degrees of freedom."""
        if self.own and 0 <= config < len(self.own):
            return self.own[config], self.own_df[config]
        return self.residual, self.df


def _seed_mean_variance(md: ModelData, rows: np.ndarray, noise: Noise) -> list[tuple[float, float]]:
    """Per seed factor, the variance of the mean of `rows`' seed effects, τ_f² Σ_l (n_l / n)², and the degrees
    of freedom of τ_f²'s estimate (levels − 1)."""
    out = []
    for s, tau2 in zip(md.seeds, noise.seeds, strict=True):
        counts = np.bincount(s.codes[rows], minlength=len(s.levels)) / len(rows)
        out.append((tau2 * float(counts @ counts), float(len(s.levels) - 1)))
    return out


def satterthwaite(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """A sum of independent variance estimates (value, degrees of freedom): the sum and its
    Welch–Satterthwaite degrees of freedom, (Σ v)² / Σ (v² / df). A seed variance estimated from 3 seeds
    has 2 degrees of freedom, and the interval must be as wide as that makes it."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / df for v, df in parts if df > 0 and v > 0)
    return total, (total * total / denom if denom > 0 else np.inf)


def best(
    md: ModelData,
    y: np.ndarray,
    metric: str,
    maximise: bool,
    degree: int,
    b: int,
    seed: int = 0,
    space: Space | None = None,
    noise: Noise | None = None,
) -> Best:
    """Where the fitted surface peaks (and its bootstrap intervals, `b` seed resamples), the setting to run,
    and its value with a selection-corrected interval (`noise`: the variances it rests on; none, no
    interval)."""
    space = space or Space()
    fit_ = absorbed_fit(md, y)
    xbar = md.X[:, 1:].mean(axis=0)
    const = float(y.mean()) - float(xbar @ fit_.beta)  # the intercept at the mean of the seeds' effects
    points = _grid(md.predictors, space)
    f = _matrix(md, points)[:, 1:]
    pred = f @ fit_.beta + const
    pick = np.argmax if maximise else np.argmin
    i = int(pick(pred))
    out = Best(metric, maximise, degree, float(pred[i]), None, None, [], 0)
    blocks = md.seed_blocks()
    picked = []
    for ystar in responses(md, y, b, seed):
        ya, _ = absorb(ystar, blocks)
        bstar = fit_.xtx_inv @ cross(fit_.xa, ya)
        for s in range(0, ystar.shape[1], CHUNK):
            picked.append(pick(f @ bstar[:, s : s + CHUNK], axis=0))
    picks = np.concatenate(picked) if picked else None
    if picks is not None:
        out.bootstrap = len(picks)
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
            "outside the values the study ran"
        )
    _recommend(out, md, y, fit_, const, xbar, points, f, space, noise)
    return out


def _recommend(
    out: Best,
    md: ModelData,
    y: np.ndarray,
    fit_: Any,
    const: float,
    xbar: np.ndarray,
    points: pd.DataFrame,
    f: np.ndarray,
    space: Space,
    noise: Noise | None,
) -> None:
    """The setting to run, its value and the selection-corrected interval of that value."""
    names = [p.axis.name for p in md.predictors]
    sign = 1.0 if out.maximise else -1.0
    if space.grid:  # the design's own configurations that ran
        first = pd.Series(np.arange(md.n)).groupby(md.config).first().to_numpy()
        cands = md.rows.loc[first, names].reset_index(drop=True)
        fc = _matrix(md, cands)[:, 1:]
        configs = md.config[first]
    else:
        cands, fc, configs = points, f, None
    x = sign * (fc @ fit_.beta)
    lof = noise.lack_of_fit_p if noise is not None else None
    if (
        configs is not None
        and noise is not None
        and noise.pure
        and lof is not None
        and lof < LACK_OF_FIT_ALPHA
    ):
        # the polynomial misses the configurations (lack of fit): choose by their own means instead
        out.selected_by = "means"
        counts = np.bincount(md.config, minlength=md.n_configs)
        x = sign * np.bincount(md.config, weights=y, minlength=md.n_configs) / np.maximum(counts, 1)
        out.notes.append(
            f"the degree-{out.degree} polynomial misses the configurations (lack of fit, F-test p = "
            f"{lof:.2g}): the configuration to run is the one with the best mean over its seeds"
        )
    w = int(np.argmax(x))
    out.candidates = len(cands)
    out.recommended = {
        n: int(cands[n].iloc[w]) if n in space.integer else _plain(cands[n].iloc[w]) for n in names
    }
    for ax in out.axes:
        ax.recommended = out.recommended.get(ax.axis)
    out.fit_value = float(fc[w] @ fit_.beta + const)
    out.predicted = out.fit_value
    rows = np.flatnonzero(md.config == configs[w]) if configs is not None else None
    if rows is not None and noise is not None and noise.pure:
        out.value_from, out.n_trials = "trials", len(rows)
        out.predicted = float(y[rows].mean())
    if noise is None or not md.seeds or not math.isfinite(noise.residual):
        if not md.seeds:
            out.notes.append(
                "a single seed: its effect on every trial cannot be estimated, so the best value has no "
                "interval"
            )
        return
    per_row = np.array([noise.of(int(c))[0] for c in md.config]) if noise.own else None
    if per_row is not None:  # the configurations' noise differs: a sandwich of each trial's own
        meat = cross(fit_.xa * per_row[:, None], fit_.xa)
        cov_beta = fit_.xtx_inv @ meat @ fit_.xtx_inv
    else:
        cov_beta = noise.residual * fit_.xtx_inv
    if out.selected_by == "means" and rows is not None:
        cross_cov, parts = _means_cov(md, w, noise)
    elif out.value_from == "trials":
        assert rows is not None and configs is not None
        sigma2, df_w = noise.of(int(configs[w]))
        cross_cov = fc @ (sigma2 * fit_.xtx_inv @ fit_.xa[rows].mean(axis=0))
        parts = [(sigma2 / len(rows), df_w), *_seed_mean_variance(md, rows, noise)]
    else:
        d = fc[w] - xbar
        cross_cov = fc @ (cov_beta @ d)
        parts = [(float(d @ cov_beta @ d) + noise.residual / md.n, noise.df)]
        parts += _seed_mean_variance(md, np.arange(md.n), noise)
    var_y, df = satterthwaite(parts)
    got = infer_winner(x, cross_cov, sign * out.predicted, float(var_y), w, 1 - LEVEL, df)
    lo, hi = sorted((sign * got.ci_low, sign * got.ci_high))
    out.ci_low, out.ci_high, out.corrected = lo, hi, sign * got.median_unbiased


def _means_cov(md: ModelData, w: int, noise: Noise) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Covariance of every configuration's mean with configuration w's: its own noise (σ²/n_w) and the seed
    effects the two share; and the parts of w's variance with their degrees of freedom."""
    counts = np.bincount(md.config, minlength=md.n_configs).astype("float64")
    cov = np.zeros(md.n_configs)
    sigma2, df = noise.of(w)
    cov[w] = sigma2 / counts[w]
    parts = [(sigma2 / counts[w], df)]
    for s, tau2 in zip(md.seeds, noise.seeds, strict=True):
        shares = np.zeros((md.n_configs, len(s.levels)))
        np.add.at(shares, (md.config, s.codes), 1.0)
        shares /= np.maximum(counts[:, None], 1)
        cov += tau2 * (shares @ shares[w])
        parts.append((tau2 * float(shares[w] @ shares[w]), float(len(s.levels) - 1)))
    return cov, parts


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers; whole floats of integer settings stay floats (the caller formats)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


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
