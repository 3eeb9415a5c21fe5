"""Variance decomposition of a metric: how much each hyperparameter term moves it, how much is seed luck, and
bootstrap intervals that resample the seeds.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ftvar.stats.absorb import Factor, absorb, cross, rank_of_blocks
from ftvar.stats.regression import balanced
from ftvar.stats.resample import distinct_resamples, responses
from ftvar.stats.terms import ModelData

LEVEL = 0.95
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


def _components(d: _Design, y: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str, str]], bool]:
    """Variance of every component (rows) for every column of `y` (one data set per column)."""
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
    ms_e = res_sat / df_pe if pure else res_poly / max(1, n - r_hp - d.r_seeds)
    rows: list[np.ndarray] = [np.clip((ss_hp - r_hp * ms_e) / n, 0, None)]
    names: list[tuple[str, str, str]] = [
        ("hyperparameters", "hyperparameters (all terms)", "hyperparameters")
    ]
    for term, (rest, with_term) in zip(md.terms, d.type2, strict=True):
        a, ra = _ss_fit(d.gram, xty, with_term)
        b, rb = _ss_fit(d.gram, xty, rest)
        rows.append(np.clip((a - b - (ra - rb) * ms_e) / n, 0, None))
        names.append((term.name, term.label, "term"))
    if pure:
        df_lof = d.r_sat - r_hp - d.r_seeds
        rows.append(np.clip((res_poly - res_sat - df_lof * ms_e) / n, 0, None))
        names.append(("lack of fit", "lack of fit (configurations beyond the polynomial)", "lack_of_fit"))
    for f, (seed, coef) in enumerate(zip(md.seeds, d.henderson, strict=True)):
        others = [b for g, b in enumerate(d.seeds) if g != f]
        without, _ = absorb(y, [d.config, *others])
        ss = np.sum(without**2, axis=0) - res_sat
        df = len(seed.levels) - 1
        rows.append(np.clip((ss - df * ms_e) / coef, 0, None) if coef > 1e-12 else np.zeros(y.shape[1]))
        names.append((seed.name, seed.label, "seed"))
    rows.append(np.clip(ms_e, 0, None))
    names.append(("residual", "residual (seed × configuration noise)" if pure else "residual", "residual"))
    return np.vstack(rows), names, pure


def noise_estimates(md: ModelData, y: np.ndarray) -> tuple[float, float, bool, tuple[float, ...]]:
    """The point estimates other parts rest on: the residual variance of one trial (the pure error when some
    configuration ran with several seeds, else the polynomial's residual), its degrees of freedom, whether it
    is the pure error, and each seed factor's variance (in `md.seeds` order)."""
    design = _Design(md)
    values, names, pure = _components(design, np.asarray(y, dtype="float64").reshape(md.n, 1))
    by_kind = [(k, float(v)) for (_, _, k), v in zip(names, values[:, 0], strict=True)]
    residual = next(v for k, v in by_kind if k == "residual")
    seeds = tuple(v for k, v in by_kind if k == "seed")
    df = md.n - design.r_sat if pure else md.n - md.X.shape[1] - design.r_seeds + 1
    return residual, float(max(df, 0)), pure, seeds


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
    """The decomposition of each metric (columns of `y`, one row per row of `md`), with `bootstrap` seeded
    resamples of the seeds (ftvar.stats.resample) for percentile intervals of the shares."""
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
    for j, metric in enumerate(metrics):
        chunks = [
            _shares(_components(design, ystar)[0], names)
            for ystar in responses(md, y[:, j], bootstrap, seed + j)
        ]
        stack = np.concatenate(chunks, axis=1) if chunks else None  # (components, b)
        comps = []
        for i, (name, label, kind) in enumerate(names):
            estimate = float(shares[i, j]) if kind == "seed" else None
            lo, hi = _interval(stack[i] if stack is not None else None, alpha, estimate)
            comps.append(Component(name, label, kind, float(values[i, j]), float(shares[i, j]), lo, hi))
        luck_rows = [i for i, (_, _, k) in enumerate(names) if k in ("seed", "residual")]
        luck_share = float(shares[luck_rows, j].sum())
        lo, hi = _interval(stack[luck_rows].sum(axis=0) if stack is not None else None, alpha, luck_share)
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
    if md.seeds and distinct < 100 and bootstrap > 0:
        for d in out:
            d.notes.append(
                f"with {' × '.join(map(str, levels))} seed level(s) the seed effects can be drawn in only "
                f"{distinct} distinct ways: the intervals are rough (more seeds make them trustworthy)"
            )
    return out


LOGIT_EPS = 1e-4


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
