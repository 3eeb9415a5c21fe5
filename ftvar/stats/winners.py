"""Inference on a winner: a confidence interval and a median-unbiased estimate for the value of the candidate
that was selected because it looked best, corrected for the selection (the winner's curse).

The best of K noisy estimates is biased up: under a flat truth the best of 48 configurations' means lies about
2 standard errors above the common value, and an interval built around it as if it had not been chosen covers
far below its level. Andrews, Kitagawa & McCloskey (2024, "Inference on winners", QJE 139(1)) give exact
intervals for jointly normal estimates: with X the statistics the selection maximised and Y the estimate of
the winner's value (X = Y, or another linear estimate such as the winner's own trials' mean), Y given the
selection and the part of X independent of Y is a normal truncated to an interval [L, U] that the data
determine; inverting that truncated normal gives the *conditional* interval, exact under any true means. It
can be very long when the winner was barely selected, so the *hybrid* interval intersects it with a
projection interval at level β (here Bonferroni over the K candidates, valid for any correlation) and runs
the conditional test at level (α − β)/(1 − β) inside it; its coverage is at least 1 − α, and measured close to
it (bench/bench_analysis.py). The median-unbiased estimate is the conditional median.

No Python library implements these (the authors publish R and Stata code), so they are written here: a few
truncated-normal quantiles and a bisection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

ALPHA = 0.05
BETA_SHARE = 0.1  # β = α / 10, the authors' default
BISECTIONS = 50  # the interval's ends to 2⁻⁵⁰ of the search range


@dataclass
class WinnerInference:
    estimate: float  # the winner's estimate Y, as it came out (biased up by the selection)
    median_unbiased: float  # the conditional median: the estimate corrected for the selection
    ci_low: float  # hybrid interval (coverage ≥ 1 − α)
    ci_high: float
    lower_truncation: float  # the truncation interval of Y given the selection (−inf / +inf: none)
    upper_truncation: float


def _truncation(
    x: np.ndarray, cov_xy: np.ndarray, var_y: float, y: float, winner: int
) -> tuple[float, float]:
    """[L, U]: the values of Y for which the winner would still have been selected, given Z = X − c Y."""
    c = cov_xy / var_y
    z = x - c * y
    d = c[winner] - c
    gap = z - z[winner]
    lower, upper = -np.inf, np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = gap / d
    tol = 1e-12 * max(1.0, float(np.max(np.abs(c))))
    pos, neg = d > tol, d < -tol
    pos[winner] = neg[winner] = False
    # an exact tie (a balanced design can make two candidates' predictions equal to the last bit) leaves the
    # choice between them to the order of the list, not to the data: their constraint says nothing about Y
    tied = np.abs(x - x[winner]) <= 1e-9 * (float(np.max(np.abs(x))) + np.sqrt(var_y))
    pos &= ~tied
    neg &= ~tied
    if pos.any():
        lower = float(np.max(bound[pos]))
    if neg.any():
        upper = float(np.min(bound[neg]))
    return min(lower, y), max(upper, y)  # numerically, y itself satisfies its selection


def _log_diff(log_big: float, log_small: float) -> float:
    """log(e^big − e^small) for big ≥ small (−inf when they are equal)."""
    if log_small == -np.inf:
        return log_big
    if log_small >= log_big:
        return -np.inf
    return float(log_big + np.log1p(-np.exp(log_small - log_big)))


def _cdf(y: float, mu: float, sd: float, lower: float, upper: float) -> float:
    """P(Y ≤ y) for Y ~ N(mu, sd²) truncated to [lower, upper], from log normal tails so that an interval
    far out in a tail keeps its precision (scipy's truncnorm does the same, 100× slower per call)."""
    a, b = (lower - mu) / sd, (upper - mu) / sd
    t = min(max((y - mu) / sd, a), b)
    if a > 0:  # upper tail: P = (Q(a) − Q(t)) / (Q(a) − Q(b)), Q(x) = Φ(−x)
        qa, qt, qb = (float(special.log_ndtr(-v)) if v < np.inf else -np.inf for v in (a, t, b))
        num, den = _log_diff(qa, qt), _log_diff(qa, qb)
    else:  # (Φ(t) − Φ(a)) / (Φ(b) − Φ(a))
        pa, pt, pb = (float(special.log_ndtr(v)) if v > -np.inf else -np.inf for v in (a, t, b))
        num, den = _log_diff(pt, pa), _log_diff(pb, pa)
    if den == -np.inf:
        return 0.5  # a degenerate interval: no information either way
    return float(np.clip(np.exp(num - den), 0.0, 1.0))


def _solve(
    target: float, y: float, sd: float, lower: float, upper: float, lo: float, hi: float, hybrid: float
) -> float:
    """The μ in [lo, hi] where P_μ(Y ≤ y | truncation) = target (decreasing in μ), by bisection; with a
    hybrid projection half-width, the truncation also keeps Y within μ ± hybrid."""

    def f(mu: float) -> float:
        a, b = lower, upper
        if hybrid < np.inf:
            a, b = max(a, mu - hybrid), min(b, mu + hybrid)
            if a > b:  # (cannot happen for μ inside the projection interval around y)
                return 0.5
        return _cdf(y, mu, sd, a, b) - target

    f_lo, f_hi = f(lo), f(hi)
    if f_lo <= 0:
        return lo
    if f_hi >= 0:
        return hi
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def infer_winner(
    x: np.ndarray,
    cov_xy: np.ndarray,
    y: float,
    var_y: float,
    winner: int,
    alpha: float = ALPHA,
    df: float = np.inf,
) -> WinnerInference:
    """Selection-corrected inference on the winner's value.

    `x`: the K statistics the selection maximised (the winner is `winner`, their argmax); `cov_xy`: the
    covariance of each with `y`, the winner's value estimate; `var_y`: its variance. With `df` < inf (the
    variances were estimated from df degrees of freedom) the standard deviation is scaled by the t over the
    normal quantile, a first-order allowance for the estimated variance."""
    k = len(x)
    sd = float(np.sqrt(var_y))
    if df < np.inf and df > 0:
        sd *= float(stats.t.ppf(1 - alpha / 2, df) / stats.norm.ppf(1 - alpha / 2))
    if not np.isfinite(sd) or sd <= 0:
        return WinnerInference(y, y, y, y, -np.inf, np.inf)
    scale = sd / np.sqrt(var_y)
    lower, upper = _truncation(np.asarray(x, float), np.asarray(cov_xy, float) * scale**2, sd**2, y, winner)
    beta = alpha * BETA_SHARE
    c_beta = float(stats.norm.ppf(1 - beta / (2 * max(k, 1))))  # Bonferroni projection over the candidates
    half = c_beta * sd
    level = (alpha - beta) / (1 - beta)
    lo_mu, hi_mu = y - half, y + half
    ci_low = _solve(1 - level / 2, y, sd, lower, upper, lo_mu, hi_mu, half)
    ci_high = _solve(level / 2, y, sd, lower, upper, lo_mu, hi_mu, half)
    wide = 20 * sd
    median = _solve(0.5, y, sd, lower, upper, y - wide, y + wide, np.inf)
    return WinnerInference(float(y), float(median), float(ci_low), float(ci_high), lower, upper)
