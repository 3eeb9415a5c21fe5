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
from scipy import stats

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


SEED_DRAWS = "normal"  # seed effects: "normal" (parametric) or "empirical" (the study's rescaled effects)
SHRINK = True  # configuration means shrunk to the estimated hyperparameter and lack-of-fit variances
NOISE = "auto"  # residuals: "pooled", "wild" (each trial's own, random sign), "auto" (wild when they differ)
HETEROSCEDASTIC_P = 0.05  # Bartlett p below which the configurations' noise is taken to differ


def heteroscedastic(md: ModelData, resid: np.ndarray) -> bool:
    """Whether the configurations' noise differs: Bartlett's test of the residuals' variances across the
    configurations with at least two trials, at p < HETEROSCEDASTIC_P. (Brown–Forsythe's median-centred test
    has no power with 3 seeds: the median of 3 residuals is one of them. Bartlett's reacts to non-normal noise
    too, and a configuration full of degenerate runs is one whose noise differs.)"""
    groups = [resid[md.config == c] for c in range(md.n_configs)]
    groups = [g for g in groups if len(g) >= 2]
    if len(groups) < 2:
        return False
    spread = np.array([float(np.var(g)) for g in groups])
    scale = float(np.max(spread)) if len(spread) else 0.0
    if scale <= 0:
        return False
    if np.any(spread <= 1e-12 * scale):  # some configurations without noise, others with: they differ
        return True
    p = stats.bartlett(*groups).pvalue
    return bool(np.isfinite(p) and p < HETEROSCEDASTIC_P)


def _shrunk(md: ModelData, base: np.ndarray, ms_e: float, r_blocks: int) -> np.ndarray:
    """Configuration means (per row) whose spread matches the method-of-moments estimates: the polynomial's
    part and the lack of fit each scaled by √(estimate / raw), the raw spread of means of noisy trials
    exceeding the true one by the noise they average (Carpenter, Goldstein & Rasbash 2003, for the
    two-level bootstrap). Without this the resamples' configurations vary more than the study's, and every
    interval of a hyperparameter share leans high."""
    n = md.n
    coef, *_ = np.linalg.lstsq(md.X, base, rcond=None)
    poly = md.X @ coef
    lof = base - poly
    centre = float(base.mean())
    dev = poly - centre
    r_hp = int(np.linalg.matrix_rank(md.X)) - 1
    raw_hp = float(dev @ dev) / n
    raw_lof = float(lof @ lof) / n
    df_lof = max(0, r_blocks - r_hp - 1)
    a = math.sqrt(max(0.0, raw_hp - r_hp * ms_e / n) / raw_hp) if raw_hp > 0 else 0.0
    b = math.sqrt(max(0.0, raw_lof - df_lof * ms_e / n) / raw_lof) if raw_lof > 0 else 0.0
    return np.asarray(centre + a * dev + b * lof)


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
    sds = []
    scaled = []
    for s, f, eff in zip(md.seeds, seeds, effects[1:], strict=True):
        e = eff[:, 0] - eff[:, 0].mean()
        base = base - e[f.codes]  # keep the configurations' means, drop the seeds' own effects
        k = len(s.levels)
        raw = float(e.var(ddof=1)) if k > 1 else 0.0
        target = max(0.0, raw - ms_e * float(np.mean(1.0 / np.maximum(f.counts, 1))))
        scale = math.sqrt(target / raw * k / (k - 1)) if raw > 0 and k > 1 else 0.0
        scaled.append(e * scale)
        sds.append(math.sqrt(target))
    if SHRINK:
        base = _shrunk(md, base, ms_e, md.n_configs + sum(f.n_levels - 1 for f in seeds))
    noise = (resid - resid.mean()) * math.sqrt(md.n / df)
    wild = NOISE == "wild" or (NOISE == "auto" and heteroscedastic(md, resid))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(b, CELLS // max(md.n, 1)))
    for start in range(0, b, chunk):
        m = min(chunk, b - start)
        out = np.repeat(base[:, None], m, axis=1)
        for f, e, sd in zip(seeds, scaled, sds, strict=True):
            if SEED_DRAWS == "normal":
                out += rng.normal(0.0, sd, size=(m, f.n_levels))[:, f.codes].T
            else:  # per resample, each level's new effect drawn from the study's effects
                draws = rng.integers(0, f.n_levels, size=(m, f.n_levels))
                out += e[draws][:, f.codes].T
        if wild:  # each trial keeps its own residual's size: the configurations' noise may differ
            out += noise[:, None] * rng.choice((-1.0, 1.0), size=(md.n, m))
        else:
            out += noise[rng.integers(0, md.n, size=(md.n, m))]
        yield out
