"""Expected best validation score against the number of trials (Dodge et al. 2019, "Show your work").

If n trials are drawn at random (with replacement) from the N the study ran, the best of them is the i-th
smallest score v_(i) with probability (i/N)ⁿ − ((i−1)/N)ⁿ. Its expectation and standard deviation follow
exactly, for every n at once: what a researcher with a budget of n trials should expect, and how much it
varies.

The estimator assumes the N trials are independent draws from a search distribution: true of a random design
(`[design] kind = "random"`: random search from the axes' priors), not of a grid, a Sobol' set or a central
composite design, whose curve is that of random subsets of *this design's* trials (the report labels it so).
Every run a search pays for is a draw: degenerate runs at their score, and failed or diverged runs, which have
none, at the worst score any trial reached (said in the report). The band is a smoothed bootstrap over the
seeds (whole seeds drawn with replacement, every trial of a drawn seed kept; over the trials when there is one
seed; each drawn value jittered by a Gaussian kernel of Silverman's bandwidth and shrunk back to the values'
spread): how much the curve would move with other seeds. The plain bootstrap of a near-maximum is too narrow
(its band covered random search's closed form in 77% of studies at n = N/4); the smoothed one covers at its
level up to N/4 (bench/bench_analysis.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Curve:
    group: str  # "all trials" or "<axis label> = <value>"
    n_trials: int  # N, failed draws included
    n: list[int]  # budgets 1..N
    mean: list[float]
    sd: list[float]
    n_failed: int = 0  # failed or diverged trials among the N, scored at `worst`
    worst: float | None = None
    band_low: list[float] | None = None  # 95% seed-bootstrap band of the mean, for budgets up to N/4
    band_high: list[float] | None = None
    bootstrap: int = 0


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


BAND_CELLS = 200_000_000  # resamples × trials × budgets the band may cost per curve
BAND_MAX_TRIALS = 20_000  # above, no band (its resamples would cost seconds; the curve's sd is tiny there)
LEVEL = 0.95
BAND_SHARE = 0.25  # the band stops at budgets of a quarter of the trials: beyond, a bootstrap of a
# near-maximum is too narrow (bench/bench_analysis.py)


def _band(
    values: np.ndarray, groups: np.ndarray, budgets: np.ndarray, b: int, rng: np.random.Generator
) -> tuple[list[float], list[float], int] | None:
    """Percentile band of E[max] per budget over `b` resamples of the seed groups (of the trials, with one
    group)."""
    if b <= 0 or len(values) < 2 or len(values) > BAND_MAX_TRIALS:
        return None
    budgets = budgets[budgets <= max(1, int(BAND_SHARE * len(values)))]
    b = int(min(b, max(20, BAND_CELLS // max(1, len(values) * len(budgets)))))
    labels, codes = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(len(labels))]
    means = np.empty((b, len(budgets)))
    centre, spread = float(values.mean()), float(values.std())
    h = 1.06 * spread * len(values) ** -0.2  # Silverman's bandwidth
    shrink = 1.0 / np.sqrt(1.0 + (h / spread) ** 2) if spread > 0 else 1.0
    for r in range(b):
        if len(members) >= 2:
            drawn = rng.integers(0, len(members), size=len(members))
            idx = np.concatenate([members[g] for g in drawn])
        else:
            idx = rng.integers(0, len(values), size=len(values))
        # smoothed: a resample of the few best values alone has too little spread at the top (the plain
        # bootstrap's band covered the closed form in 77% of studies at n = N/4, this one in 95%)
        drawn_values = values[idx] + h * rng.standard_normal(len(idx))
        means[r] = expected_max(centre + (drawn_values - centre) * shrink, budgets)[0]
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    return lo.tolist(), hi.tolist(), b


def curves(
    trials: pd.DataFrame,
    metric: str,
    by: str | None,
    label: str | None,
    max_budget: int = 200,
    failed: pd.DataFrame | None = None,
    maximise: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
) -> list[Curve]:
    """The curve over all trials, then one per value of the axis `by` (when given). `failed`: the failed and
    diverged trials (scored at the worst value of `metric` among `trials`); `bootstrap`: seed resamples for
    the band. For a metric where lower is better (a loss) the curve is the expected lowest value."""
    sign = 1.0 if maximise else -1.0
    scored = trials.assign(_v=sign * pd.to_numeric(trials[metric], errors="coerce")).dropna(subset=["_v"])
    if scored.empty:
        return []
    worst = float(scored["_v"].min())
    if failed is not None and not failed.empty:
        scored = pd.concat([scored, failed.assign(_v=worst, _failed=True)], ignore_index=True)
    if "_failed" not in scored:
        scored["_failed"] = False
    scored["_failed"] = scored["_failed"].fillna(False).astype(bool)
    keys = pd.Series("0", index=scored.index)
    if bootstrap > 0 and len(scored) <= BAND_MAX_TRIALS:  # the seed groups the band resamples
        for c in ("init_seed", "order_seed"):
            if c in scored.columns:
                keys = keys + "/" + scored[c].astype(str)
    rng = np.random.default_rng(seed)
    out = []
    groups: list[tuple[str, pd.DataFrame]] = [("all trials", scored)]
    if by is not None and by in scored.columns:
        for value, part in scored.groupby(by, sort=True):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            groups.append((f"{label or by} = {shown}", part))
    for name, part in groups:
        values = part["_v"].to_numpy(dtype="float64")
        budgets = np.arange(1, min(len(values), max_budget) + 1)
        mean, sd = expected_max(values, budgets)
        curve = Curve(
            name,
            len(values),
            budgets.tolist(),
            (sign * mean).tolist(),
            sd.tolist(),
            int(part["_failed"].sum()),
            sign * worst if part["_failed"].any() else None,
        )
        band = _band(values, keys.loc[part.index].to_numpy(), budgets, bootstrap, rng)
        if band is not None:
            lo, hi, curve.bootstrap = band
            curve.band_low, curve.band_high = sorted_band(sign, lo, hi)
        out.append(curve)
    return out


def sorted_band(sign: float, lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """The band in the metric's own direction (for a loss the resamples' quantiles swap)."""
    a, b = [sign * v for v in lo], [sign * v for v in hi]
    return [min(x, y) for x, y in zip(a, b, strict=True)], [max(x, y) for x, y in zip(a, b, strict=True)]
