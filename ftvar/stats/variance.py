"""Variance decomposition of a metric: how much each hyperparameter term moves it, how much is seed luck, and
95% intervals of every share.

The model is `metric = μ(configuration) + a(init seed) + b(order seed) + ε`. The components are estimated by
the method of moments from sums of squares (ANOVA; Henderson's method III for the seeds: each seed factor's
sum of squares after the configurations and the other seed factor, with its exact expectation also when
crossed seeds are unbalanced), each corrected for the noise its sum of squares carries, so that a term with
no effect has an expected variance of 0 (an ω²-type estimate, truncated at 0):

- a hyperparameter term: its type-II sum of squares (after every term that does not contain it) in
  `metric ~ terms + seed blocks`, less df × the pure-error mean square, per trial;
- lack of fit: what the configurations' means vary beyond the polynomial (0 when the polynomial is right);
- a seed axis: the variance of its random intercepts;
- residual: the pure error, `metric ~ C(configuration) + seed blocks`: seed × configuration noise, the
  luck of one particular trial.

Shares divide each by their sum (with "hyperparameters" counted once, all terms together). The terms of a
non-orthogonal design overlap, so the per-term shares need not add up to the hyperparameters' share exactly.

Where the configurations' noise differs (Bartlett's test), each configuration's own noise is subtracted from
the sums of squares as much as each carries of it (the projections' diagonals), instead of the pooled noise.

The intervals come from generalized pivotal quantities (`generalized`): every expected sum of squares is
drawn from its observed value and a χ² pivot, and each draw's shares computed. A bootstrap of the seeds
(ftvar.stats.resample) put its draws around the one estimate of a seed variance that rests on 2 degrees of
freedom with 3 seeds and covered 0.82; these cover 0.93–0.97 at 3, 5 and 10 seeds, crossed seeds and unequal
noise included (bench/bench_analysis.py, docs/report-format.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ftvar.stats.absorb import Factor, absorb, cross, rank_of_blocks
from ftvar.stats.regression import balanced
from ftvar.stats.resample import distinct_resamples, heteroscedastic, responses
from ftvar.stats.terms import ModelData

LEVEL = 0.95
FEW_SEEDS = 5  # below this many seed levels the report says the seed shares' intervals are wide
HENDERSON_CHUNK = 256  # seed levels whose indicator columns are absorbed at once (memory: n × chunk)


@dataclass
class Component:
    name: str  # a term ("lr", "C(scheduler)"), "hyperparameters", "lack of fit", a seed factor, "residual"
    label: str  # in words
    kind: str  # term | hyperparameters | lack_of_fit | seed | residual
    variance: float
    share: float
    ci_low: float | None = None  # bootstrap percentile interval of the share
    ci_high: float | None = None


@dataclass
class Decomposition:
    metric: str
    n: int
    components: list[Component]
    luck: Component  # seeds and residual together
    bootstrap: int  # resamples used (0: no intervals)
    distinct: int  # distinct resamples possible
    notes: list[str] = field(default_factory=list)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


def _ss_fit(gram: np.ndarray, xty: np.ndarray, idx: list[int]) -> tuple[np.ndarray, int]:
    """y'Py per column of y for the projection on the columns `idx` (of a matrix with this Gram matrix and
    X'y), and the rank of those columns."""
    if not idx:
        return np.zeros(xty.shape[1]), 0
    g = gram[np.ix_(idx, idx)]
    d = np.sqrt(np.diag(g))
    d[d == 0] = 1.0
    w, v = np.linalg.eigh(g / np.outer(d, d))
    keep = w > max(float(w.max()), 1e-300) * 1e-10
    z = v[:, keep].T @ (xty[idx] / d[:, None])
    return np.sum(z**2 / w[keep][:, None], axis=0), int(keep.sum())


def _leverage(xa: np.ndarray, gram: np.ndarray, idx: list[int]) -> np.ndarray:
    """The diagonal of the projection on the columns `idx` of `xa` (its Gram matrix `gram`)."""
    if not idx:
        return np.zeros(xa.shape[0])
    g = gram[np.ix_(idx, idx)]
    d = np.sqrt(np.diag(g))
    d[d == 0] = 1.0
    inv = np.linalg.pinv(g / np.outer(d, d)) / np.outer(d, d)
    x = xa[:, idx]
    return np.asarray(np.einsum("ij,jk,ik->i", x, inv, x))


class _Design:
    """What every resample shares: the absorbed hyperparameter columns and the blocks."""

    def __init__(self, md: ModelData) -> None:
        self.md = md
        self.seeds = md.seed_blocks()
        self.config = md.config_block()
        xa, _ = absorb(md.X[:, 1:], self.seeds)
        self.xa = xa
        self.gram = cross(xa, xa)
        self.r_seeds = rank_of_blocks(self.seeds)
        self.r_sat = rank_of_blocks([self.config, *self.seeds])
        self.balanced = balanced(md)
        self.henderson = [self._henderson(f) for f in self.seeds]
        # type II: each term after every term that does not contain it (column indices without the intercept)
        self.type2: list[tuple[list[int], list[int]]] = []
        for term in md.terms:
            others = [t for t in md.terms if t is not term and not t.contains(term)]
            rest = [c - 1 for t in others for c in md.term_columns[t.name]]
            self.type2.append((rest, [*rest, *(c - 1 for c in md.term_columns[term.name])]))
        self._diagonals: np.ndarray | None = None

    def diagonals(self) -> np.ndarray:
        """Per component (in `_sums`' order, with pure error) and trial, the diagonal of the projection whose
        sum of squares the component's estimate rests on: how much of each trial's noise that sum of squares
        carries (exact for the hyperparameter terms; for lack of fit, seeds and residual the orthogonal-block
        formulas, exact for balanced designs; scaled to the exact degrees of freedom where used)."""
        if self._diagonals is not None:
            return self._diagonals
        md, n = self.md, self.md.n
        h_hp = _leverage(self.xa, self.gram, list(range(self.xa.shape[1])))
        rows = [h_hp]
        for rest, with_term in self.type2:
            rows.append(_leverage(self.xa, self.gram, with_term) - _leverage(self.xa, self.gram, rest))
        inv_c = 1.0 / self.config.counts[md.config]
        inv_seeds = [1.0 / f.counts[f.codes] for f in self.seeds]
        rows.append(np.clip(inv_c - 1.0 / n - h_hp, 0, None))
        rows += [inv - 1.0 / n for inv in inv_seeds]
        rows.append(1.0 - (inv_c + sum(inv_seeds, np.zeros(n)) - len(self.seeds) / n))
        self._diagonals = np.vstack(rows)
        return self._diagonals

    def _henderson(self, f: Factor) -> float:
        """The coefficient of τ_f² in the expected sum of squares of seed factor f after the configurations
        and the other seed factors (Henderson's method III): tr((P_full − P_without f) Z_f Z_f') =
        ‖(I − P_[config, other seeds]) Z_f‖²_F. With one seed factor, or crossed seeds where every
        configuration has every seed pair, it is Σ_l n_l − Σ_c n_lc² / n_c in closed form; otherwise (crossed
        seeds with missing trials) the other seed factor is absorbed from Z_f's columns exactly."""
        others = [g for g in self.seeds if g is not f]
        if others and not self.balanced:
            total = 0.0
            for start in range(0, f.n_levels, HENDERSON_CHUNK):
                levels = np.arange(start, min(start + HENDERSON_CHUNK, f.n_levels))
                z = (f.codes[:, None] == levels[None, :]).astype("float64")
                resid, _ = absorb(z, [self.config, *others])
                total += float(np.sum(resid**2))
            return total
        cells = np.zeros((f.n_levels, self.config.n_levels))
        np.add.at(cells, (f.codes, self.config.codes), 1.0)
        per_config = np.where(self.config.counts > 0, self.config.counts, 1)
        return float(np.sum(f.counts - (cells**2 / per_config[None, :]).sum(axis=1)))


@dataclass
class _Sums:
    """One response's sums of squares behind every component, in `names` order: each component's variance is
    (E[SS] − df·σ²) / divisor (the residual: σ² itself), E[SS] estimated by the observed SS. `central`:
    whether SS is a scaled central χ² (a random seed factor) or noncentral (a fixed hyperparameter part)."""

    ss: np.ndarray  # per component (the residual's entry: the residual SS)
    df: np.ndarray
    divisor: np.ndarray
    central: np.ndarray  # bool
    names: list[tuple[str, str, str]]
    pure: bool
    # where the configurations' noise differs: each configuration's residual SS, degrees of freedom and
    # trials, and per component the share of each configuration's noise its SS carries (components × configs)
    ss_c: np.ndarray | None = None
    df_c: np.ndarray | None = None
    n_c: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def heteroscedastic(self) -> bool:
        return self.weights is not None

    def variances(self, sigma2: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """Components (rows) from the noise (σ² per draw, or per configuration × draw where the
        configurations' noise differs) and each component's E[SS] (rows × draws)."""
        if self.weights is not None and self.n_c is not None:
            noise = self.weights @ sigma2  # components × draws
            mean_noise = (self.n_c @ sigma2) / self.n_c.sum()
        else:
            noise = self.df[:, None] * sigma2[None, :]
            mean_noise = sigma2
        out = np.clip((expected - noise) / self.divisor[:, None], 0, None)
        out[-1] = np.clip(mean_noise, 0, None)
        return np.asarray(out)

    def noise(self) -> np.ndarray:
        """The point estimate of the noise: σ² (one value), or each configuration's σ_c² (configs × 1)."""
        if self.ss_c is not None and self.df_c is not None:
            return np.asarray(self.ss_c / np.maximum(self.df_c, 1e-12))[:, None]
        return np.array([self.ss[-1] / self.df[-1]])


def _sums(d: _Design, y: np.ndarray) -> list[_Sums]:
    """The sums of squares of every component for every column of `y` (one data set per column)."""
    md = d.md
    n = md.n
    ya, _ = absorb(y, d.seeds)
    yy = np.sum(ya**2, axis=0)  # residual sum of squares of [intercept + seeds]
    xty = cross(d.xa, ya)
    all_cols = list(range(d.xa.shape[1]))
    ss_hp, r_hp = _ss_fit(d.gram, xty, all_cols)
    res_poly = yy - ss_hp
    sat, _ = absorb(y, [d.config, *d.seeds])
    res_sat = np.sum(sat**2, axis=0)
    df_pe = n - d.r_sat
    pure = df_pe > 0
    df_e = float(df_pe if pure else max(1, n - r_hp - d.r_seeds))
    ss_e = res_sat if pure else res_poly
    rows: list[tuple[np.ndarray, float, float, bool]] = [(ss_hp, r_hp, n, False)]
    names: list[tuple[str, str, str]] = [
        ("hyperparameters", "hyperparameters (all terms)", "hyperparameters")
    ]
    for term, (rest, with_term) in zip(md.terms, d.type2, strict=True):
        a, ra = _ss_fit(d.gram, xty, with_term)
        b, rb = _ss_fit(d.gram, xty, rest)
        rows.append((a - b, ra - rb, n, False))
        names.append((term.name, term.label, "term"))
    if pure:
        df_lof = d.r_sat - r_hp - d.r_seeds
        rows.append((res_poly - res_sat, df_lof, n, False))
        names.append(("lack of fit", "lack of fit (configurations beyond the polynomial)", "lack_of_fit"))
    for f, (seed, coef) in enumerate(zip(md.seeds, d.henderson, strict=True)):
        others = [b for g, b in enumerate(d.seeds) if g != f]
        without, _ = absorb(y, [d.config, *others])
        ss = np.sum(without**2, axis=0) - res_sat
        rows.append((ss, len(seed.levels) - 1, coef if coef > 1e-12 else np.inf, True))
        names.append((seed.name, seed.label, "seed"))
    rows.append((ss_e, df_e, 1.0, True))
    names.append(("residual", "residual (seed × configuration noise)" if pure else "residual", "residual"))
    out = []
    for j in range(y.shape[1]):
        sums = _Sums(
            np.array([float(np.atleast_1d(r[0])[j]) for r in rows]),
            np.array([float(r[1]) for r in rows]),
            np.array([float(r[2]) for r in rows]),
            np.array([r[3] for r in rows]),
            names,
            pure,
        )
        if pure and (HETEROSCEDASTIC == "always" or (HETEROSCEDASTIC and heteroscedastic(md, sat[:, j]))):
            _per_configuration(d, sums, sat[:, j])
        out.append(sums)
    return out


def _per_configuration(d: _Design, sums: _Sums, resid: np.ndarray) -> None:
    """Where the configurations' noise differs (Bartlett's test, ftvar.stats.resample.heteroscedastic): each
    configuration's own noise variance from its trials' residuals, and per component the share of each
    configuration's noise its sum of squares carries (the projection's diagonal summed over the
    configuration's trials, scaled to the component's degrees of freedom). A noisy configuration at the edge
    of the design, where the polynomial's leverage is high, then adds its own noise to the hyperparameter
    terms' sums of squares, not the average noise: otherwise a configuration full of degenerate runs passes
    for a hyperparameter effect."""
    md = d.md
    diag = d.diagonals()
    per_config = np.stack([np.bincount(md.config, weights=row, minlength=md.n_configs) for row in diag])
    totals = per_config.sum(axis=1)
    scale = np.where(totals > 0, sums.df / np.where(totals > 0, totals, 1.0), 0.0)
    sums.weights = per_config * scale[:, None]
    sums.df_c = sums.weights[-1]
    sums.ss_c = np.bincount(md.config, weights=resid**2, minlength=md.n_configs)
    sums.n_c = np.bincount(md.config, minlength=md.n_configs).astype("float64")


def _components(d: _Design, y: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str, str]], bool]:
    """Variance of every component (rows) for every column of `y` (one data set per column)."""
    sums = _sums(d, y)
    cols = []
    for s in sums:
        cols.append(s.variances(s.noise(), s.ss[:, None])[:, 0])
    return np.column_stack(cols), sums[0].names, sums[0].pure


def generalized(s: _Sums, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Generalized pivotal quantities of every component (rows × draws; Weerahandi 1993; Burdick, Borror &
    Montgomery 2005, ch. 5-6 for variance components): σ² = SS_e / U_e, a seed factor's E[SS] = df·SS/U
    (U ~ χ²_df, its scaled central χ²), a hyperparameter part's E[SS] = ν·SS/U_ν with ν from Patnaik's
    approximation of its noncentral χ² (λ estimated), each U drawn independently. A share's interval is the
    percentiles of the draws' shares: a seed variance from 3 seeds has 2 degrees of freedom, and the draws
    spread over the values those allow instead of around the one estimate (where a bootstrap of the seeds
    sits, and undercovers)."""
    if s.ss_c is not None and s.df_c is not None:
        # each configuration's noise as its trials estimate it, all scaled by one pivot of the pooled noise
        # with Satterthwaite's degrees of freedom for a sum of unequal variances (a configuration's own
        # pivot, from 2 degrees of freedom with 3 seeds, has no finite mean)
        keep = s.df_c > 0
        denom = float(np.sum(s.ss_c[keep] ** 2 / s.df_c[keep]))
        df_eff = min(float(s.df[-1]), float(s.ss_c[keep].sum() ** 2 / denom)) if denom > 0 else s.df[-1]
        sigma2 = s.noise() * (df_eff / rng.chisquare(df_eff, draws))[None, :]
    else:
        sigma2 = s.ss[-1] / rng.chisquare(s.df[-1], draws)
    expected = np.empty((len(s.ss), draws))
    noise = s.ss[-1] / s.df[-1]
    for i in range(len(s.ss) - 1):
        df, ss = s.df[i], max(float(s.ss[i]), 0.0)
        if df <= 0 or ss <= 0:
            expected[i] = 0.0
            continue
        if s.central[i]:
            expected[i] = df * ss / rng.chisquare(df, draws)
            continue
        lam = max(0.0, ss / noise - df) if noise > 0 else 0.0
        nu = (df + lam) ** 2 / (df + 2 * lam)
        expected[i] = nu * ss / rng.chisquare(nu, draws)
    expected[-1] = 0.0
    out = s.variances(sigma2, expected)
    terms = [i for i, (_, _, kind) in enumerate(s.names) if kind == "term"]
    if terms:  # drawn apart from the total, a term could exceed it: no term is more than all of them
        out[terms] = np.minimum(out[terms], out[0][None, :])
    return out


def noise_estimates(
    md: ModelData, y: np.ndarray
) -> tuple[float, float, bool, tuple[float, ...], float | None, tuple[float, ...], tuple[float, ...]]:
    """The point estimates other parts rest on: the residual variance of one trial (the pure error when some
    configuration ran with several seeds, else the polynomial's residual), its degrees of freedom, whether it
    is the pure error, each seed factor's variance (in `md.seeds` order), the F-test p of the polynomial's
    lack of fit against the pure error (None without pure error), and, where the configurations' noise
    differs, each configuration's own noise variance and its degrees of freedom (else empty)."""
    design = _Design(md)
    sums = _sums(design, np.asarray(y, dtype="float64").reshape(md.n, 1))[0]
    values = sums.variances(sums.noise(), sums.ss[:, None])[:, 0]
    kinds = [k for _, _, k in sums.names]
    residual = float(values[-1])
    seeds = tuple(float(v) for v, k in zip(values, kinds, strict=True) if k == "seed")
    df = float(max(sums.df[-1], 0))
    lof_p = None
    if "lack_of_fit" in kinds:
        i = kinds.index("lack_of_fit")
        df_lof = float(sums.df[i])
        if df_lof > 0 and df > 0 and sums.ss[-1] > 0:
            f = (max(float(sums.ss[i]), 0.0) / df_lof) / (float(sums.ss[-1]) / df)
            lof_p = float(stats.f.sf(f, df_lof, df))
    own: tuple[float, ...] = ()
    own_df: tuple[float, ...] = ()
    if sums.ss_c is not None and sums.df_c is not None:
        own = tuple(float(v) for v in sums.noise()[:, 0])
        own_df = tuple(float(v) for v in sums.df_c)
    return residual, df, sums.pure, seeds, lof_p, own, own_df


def _shares(values: np.ndarray, names: list[tuple[str, str, str]]) -> np.ndarray:
    """Each component over the total (hyperparameters counted once, not term by term)."""
    kinds = [k for _, _, k in names]
    total_rows = [i for i, k in enumerate(kinds) if k not in ("term",)]
    total = values[total_rows].sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, values / total, np.nan)


def decompose(
    md: ModelData, y: np.ndarray, metrics: list[str], bootstrap: int, seed: int = 0
) -> list[Decomposition]:
    """The decomposition of each metric (columns of `y`, one row per row of `md`), with 95% intervals of the
    shares from `bootstrap` seeded draws of generalized pivotal quantities (`METHOD = "bootstrap"`: seed
    resamples, ftvar.stats.resample, as before)."""
    y = np.asarray(y, dtype="float64").reshape(md.n, -1)
    levels = [len(s.levels) for s in md.seeds]
    design = _Design(md)
    values, names, pure = _components(design, y)
    shares = _shares(values, names)
    notes: list[str] = []
    df_resid = md.n - design.r_sat if pure else md.n - md.X.shape[1] - design.r_seeds + 1
    if df_resid < 10:
        notes.append(
            f"the noise is estimated from only {max(df_resid, 0)} degree(s) of freedom: every share is very "
            "uncertain, and single terms can exceed the hyperparameters' total"
        )
    if not md.seeds:
        notes.append("a single seed: seed luck cannot be told from the residual or the lack of fit")
    elif not pure:
        notes.append("no configuration has two trials: the residual holds the lack of fit too")
    distinct = distinct_resamples(md) if md.seeds else 0
    out = []
    alpha = (1 - LEVEL) / 2
    sums = _sums(design, y) if METHOD == "generalized" and bootstrap > 0 and md.seeds else []
    for j, metric in enumerate(metrics):
        if sums:
            draws = generalized(sums[j], bootstrap, np.random.default_rng(seed + j))
            stack: np.ndarray | None = _shares(draws, names)
        else:
            chunks = [
                _shares(_components(design, ystar)[0], names)
                for ystar in responses(md, y[:, j], bootstrap, seed + j)
            ]
            stack = np.concatenate(chunks, axis=1) if chunks else None  # (components, b)
        comps = []
        for i, (name, label, kind) in enumerate(names):
            estimate = float(shares[i, j]) if kind in BASIC_LOGIT and not sums else None
            lo, hi = _interval(stack[i] if stack is not None else None, alpha, estimate)
            comps.append(Component(name, label, kind, float(values[i, j]), float(shares[i, j]), lo, hi))
        luck_rows = [i for i, (_, _, k) in enumerate(names) if k in ("seed", "residual")]
        luck_share = float(shares[luck_rows, j].sum())
        luck_estimate = luck_share if "luck" in BASIC_LOGIT and not sums else None
        lo, hi = _interval(stack[luck_rows].sum(axis=0) if stack is not None else None, alpha, luck_estimate)
        luck = Component(
            "luck",
            "luck (seeds and residual)",
            "luck",
            float(values[luck_rows, j].sum()),
            luck_share,
            lo,
            hi,
        )
        b = 0 if stack is None else stack.shape[1]
        out.append(Decomposition(metric, md.n, comps, luck, b, distinct, list(notes)))
    if md.seeds and min(levels) < FEW_SEEDS and bootstrap > 0:
        for d in out:
            d.notes.append(
                f"with {' × '.join(map(str, levels))} seed level(s) a seed's variance rests on "
                f"{min(levels) - 1} degree(s) of freedom: the seed and luck shares' intervals are wide (they "
                "cover at their level, measured; more seeds narrow them)"
            )
    return out


LOGIT_EPS = 1e-4
# the bootstrap's intervals (METHOD = "bootstrap"): which components get the basic interval on the logit
# scale (the rest: percentile)
BASIC_LOGIT = ("seed", "luck")
METHOD = "generalized"  # the shares' intervals: generalized pivotal quantities, or "bootstrap" of the seeds
HETEROSCEDASTIC: bool | str = True  # each configuration's own noise where its noise differs ("always")


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.asarray(np.log(q / (1 - q)))


def _interval(
    values: np.ndarray | None, alpha: float, estimate: float | None = None
) -> tuple[float | None, float | None]:
    """A bootstrap interval of a share: percentile; or, given the estimate, the basic interval on the logit
    scale (2·logit(θ̂) − the resamples' quantiles). The seed shares (and luck, which they dominate when there
    are few seeds) rest on as many values as there are seeds: skewed, scale-like estimates whose percentile
    interval leans the wrong way; the basic interval reverses that skew (measured in bench/bench_analysis.py).
    A share estimated as 0 keeps the percentile interval (its logit is not informative)."""
    if values is None:
        return None, None
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None, None
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    if estimate is None or not LOGIT_EPS < estimate < 1 - LOGIT_EPS:
        return float(lo), float(hi)
    q_lo, q_hi = np.quantile(_logit(finite), [alpha, 1 - alpha])
    centre = 2 * float(_logit(estimate))
    return float(1 / (1 + np.exp(-(centre - q_hi)))), float(1 / (1 + np.exp(-(centre - q_lo))))
