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
from collections.abc import Iterator

import numpy as np

from ftvar.stats.absorb import absorb, rank_of_blocks
from ftvar.stats.terms import ModelData


def distinct_resamples(md: ModelData) -> int:
    """How many different draws of seed effects there are (multisets of levels, per seed factor)."""
    out = 1
    for s in md.seeds:
        k = len(s.levels)
        out *= math.comb(2 * k - 1, k)
    return out


CELLS = 4_000_000  # floats per chunk of resamples (n × chunk)


def responses(md: ModelData, y: np.ndarray, b: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`b` bootstrap responses for the response `y`, seeded, in chunks (n × chunk, at most CELLS floats);
    nothing when the rows have no seed axis or no configuration ran with two seeds (nothing to resample)."""
    if not md.seeds or b <= 0:
        return
    y = np.asarray(y, dtype="float64")
    seeds = md.seed_blocks()
    factors = [md.config_block(), *seeds]
    resid, effects = absorb(y, factors, effects=True)
    df = md.n - rank_of_blocks(factors)
    if df <= 0:
        return
    ms_e = float(resid @ resid) / df
    base = y - resid  # configuration means plus seed effects
    scaled = []
    for s, f, eff in zip(md.seeds, seeds, effects[1:], strict=True):
        e = eff[:, 0] - eff[:, 0].mean()
        base = base - e[f.codes]  # keep the configurations' means, drop the seeds' own effects
        k = len(s.levels)
        raw = float(e.var(ddof=1)) if k > 1 else 0.0
        target = max(0.0, raw - ms_e * float(np.mean(1.0 / np.maximum(f.counts, 1))))
        scale = math.sqrt(target / raw * k / (k - 1)) if raw > 0 and k > 1 else 0.0
        scaled.append(e * scale)
    noise = (resid - resid.mean()) * math.sqrt(md.n / df)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(b, CELLS // max(md.n, 1)))
    for start in range(0, b, chunk):
        m = min(chunk, b - start)
        out = np.repeat(base[:, None], m, axis=1)
        for f, e in zip(seeds, scaled, strict=True):
            draws = rng.integers(0, f.n_levels, size=(m, f.n_levels))  # per resample, each level's new effect
            out += e[draws][:, f.codes].T
        out += noise[rng.integers(0, md.n, size=(md.n, m))]
        yield out
