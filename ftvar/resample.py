"""Bootstrap responses for a study: new seeds drawn from the seeds it ran (a two-level bootstrap).

`metric = μ(configuration) + a(init seed) + b(order seed) + ε`: every resample keeps the configurations'
means μ, draws each seed axis' effects with replacement from the estimated effects of the seeds the study ran,
and each trial's noise with replacement from the trials' residuals. Seed effects and residuals are rescaled
first so that their spread matches the method-of-moments variances (raw block effects also carry trial noise;
an empirical distribution's variance is (L−1)/L of the sample's). Drawing seed *effects* instead of copying
whole seeds avoids the artefact of a seed drawn twice, whose identical noise would pass for agreement between
two seeds; the rows and the model matrix stay as they are, so every resample is one column of a matrix.
(Davison & Hinkley 1997, §3.8, for the random-effects bootstrap.)
"""

from __future__ import annotations

import math

import numpy as np

from ftvar.terms import ModelData


def distinct_resamples(md: ModelData) -> int:
    """How many different draws of seed effects there are (multisets of levels, per seed factor)."""
    out = 1
    for s in md.seeds:
        k = len(s.levels)
        out *= math.comb(2 * k - 1, k)
    return out


def _saturated(md: ModelData) -> np.ndarray:
    cfg = np.zeros((md.n, md.n_configs))
    cfg[np.arange(md.n), md.config] = 1.0
    seeds = [(s.codes == j).astype("float64")[:, None] for s in md.seeds for j in range(1, len(s.levels))]
    return np.column_stack([cfg, *seeds]) if seeds else cfg


def responses(md: ModelData, y: np.ndarray, b: int, seed: int = 0) -> np.ndarray | None:
    """`b` bootstrap responses (n × b) for the response `y`, seeded; None when the rows have no seed axis or
    no configuration was run with two seeds (nothing to resample from)."""
    if not md.seeds or b <= 0:
        return None
    y = np.asarray(y, dtype="float64")
    x = _saturated(md)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    resid = y - fitted
    rank = np.linalg.matrix_rank(x)
    df = md.n - rank
    if df <= 0:
        return None
    ms_e = float(resid @ resid) / df
    rng = np.random.default_rng(seed)
    out = np.repeat(fitted[:, None], b, axis=1)
    start = md.n_configs
    for s in md.seeds:
        k = len(s.levels)
        effects = np.concatenate([[0.0], coef[start : start + k - 1]])
        start += k - 1
        out -= effects[s.codes][:, None]  # the configuration means μ stay; the seeds' own effects go
        effects = effects - effects.mean()
        per_level = np.bincount(s.codes, minlength=k)
        raw = float(effects.var(ddof=1)) if k > 1 else 0.0
        target = max(0.0, raw - ms_e * float(np.mean(1.0 / np.maximum(per_level, 1))))
        scale = math.sqrt(target / raw * k / (k - 1)) if raw > 0 and k > 1 else 0.0
        draws = rng.integers(0, k, size=(b, k))  # per resample, the effect each level gets
        out += (effects * scale)[draws][:, s.codes].T
    noise = (resid - resid.mean()) * math.sqrt(md.n / df)
    out += noise[rng.integers(0, md.n, size=(md.n, b))]
    return out
