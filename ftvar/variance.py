"""Variance decomposition of a metric: how much each hyperparameter term moves it, how much is seed luck, and
bootstrap intervals that resample the seeds.

The model is `metric = μ(configuration) + a(init seed) + b(order seed) + ε`. The components are estimated by
the method of moments from sums of squares (ANOVA; Henderson's method III for the seeds, exact for
unbalanced data), each corrected for the noise its sum of squares carries, so that a term with no effect has
an expected variance of 0 (an ω²-type estimate, truncated at 0):

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

from ftvar.resample import distinct_resamples, responses
from ftvar.terms import ModelData

LEVEL = 0.95


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


def _matrix(md: ModelData) -> np.ndarray:
    """[intercept + terms | configuration one-hot | one-hot of each seed factor]."""
    cfg = np.zeros((md.n, md.n_configs))
    cfg[np.arange(md.n), md.config] = 1.0
    seeds = []
    for s in md.seeds:
        z = np.zeros((md.n, len(s.levels)))
        z[np.arange(md.n), s.codes] = 1.0
        seeds.append(z)
    return np.column_stack([md.X, cfg, *seeds])


def _ss_fit(gram: np.ndarray, xty: np.ndarray, idx: list[int]) -> tuple[np.ndarray, int]:
    """y'Py per column of y for the projection on columns `idx`, and the rank of those columns."""
    if not idx:
        return np.zeros(xty.shape[1]), 0
    g = gram[np.ix_(idx, idx)]
    d = np.sqrt(np.diag(g))
    d[d == 0] = 1.0
    w, v = np.linalg.eigh(g / np.outer(d, d))
    keep = w > max(w.max(), 1e-300) * 1e-10
    z = v[:, keep].T @ (xty[idx] / d[:, None])
    return np.sum(z**2 / w[keep][:, None], axis=0), int(keep.sum())


def _components(
    md: ModelData, x: np.ndarray, y: np.ndarray, n_seed_levels: list[int]
) -> tuple[np.ndarray, list[tuple[str, str, str]], bool]:
    """Variance of every component (rows) for every metric (columns) from one data set."""
    n = len(y)
    p = md.X.shape[1]
    cfg = list(range(p, p + md.n_configs))
    seed_idx: list[list[int]] = []
    start = p + md.n_configs
    for k in n_seed_levels:
        seed_idx.append(list(range(start, start + k)))
        start += k
    all_seeds = [c for s in seed_idx for c in s]
    targets = np.column_stack([y, x[:, all_seeds]]) if all_seeds else y
    gram = x.T @ x
    xty = x.T @ targets
    m = y.shape[1]
    yy = np.sum(y**2, axis=0)

    def ss(idx: list[int]) -> tuple[np.ndarray, np.ndarray, int]:
        full, r = _ss_fit(gram, xty, idx)
        return full[:m], full[m:], r

    ss_full, _, r_full = ss([*range(p), *all_seeds])
    ss_sat, _, r_sat = ss([*cfg, *all_seeds])
    df_pe = n - r_sat
    pure = df_pe > 0
    res_poly = yy - ss_full
    ms_e = (yy - ss_sat) / df_pe if pure else res_poly / max(1, n - r_full)
    rows: list[np.ndarray] = []
    names: list[tuple[str, str, str]] = []
    base, _, r_base = ss([0, *all_seeds])
    hp = np.clip((ss_full - base - (r_full - r_base) * ms_e) / n, 0, None)
    rows.append(hp)
    names.append(("hyperparameters", "hyperparameters (all terms)", "hyperparameters"))
    for term in md.terms:
        others = [t for t in md.terms if t is not term and not t.contains(term)]
        rest = [0, *(c for t in others for c in md.term_columns[t.name]), *all_seeds]
        with_term = [*rest, *md.term_columns[term.name]]
        a, _, ra = ss(with_term)
        b, _, rb = ss(rest)
        rows.append(np.clip((a - b - (ra - rb) * ms_e) / n, 0, None))
        names.append((term.name, term.label, "term"))
    if pure:
        lof = np.clip(((yy - ss_full) - (yy - ss_sat) - (r_sat - r_full) * ms_e) / n, 0, None)
        rows.append(lof)
        names.append(("lack of fit", "lack of fit (configurations beyond the polynomial)", "lack_of_fit"))
    for f, s in enumerate(md.seeds):
        other = [c for g, idx in enumerate(seed_idx) if g != f for c in idx]
        a, za, ra = ss([*cfg, *all_seeds])
        b, zb, rb = ss([*cfg, *other])
        # Henderson III: E[SS] = df σ² + σ²_s ‖(P_a − P_b) Z_s‖²; Z_s's columns are targets m.. of x'
        cols = [all_seeds.index(c) for c in seed_idx[f]]
        coef = float(np.sum(za[cols]) - np.sum(zb[cols]))
        value = np.clip((a - b - (ra - rb) * ms_e) / coef, 0, None) if coef > 1e-12 else np.zeros(m)
        rows.append(value)
        names.append((s.name, s.label, "seed"))
    rows.append(np.clip(ms_e, 0, None))
    names.append(("residual", "residual (seed × configuration noise)" if pure else "residual", "residual"))
    return np.vstack(rows), names, pure


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
    resamples of the seeds (ftvar.resample) for percentile intervals of the shares."""
    y = np.asarray(y, dtype="float64").reshape(md.n, -1)
    levels = [len(s.levels) for s in md.seeds]
    x = _matrix(md)
    values, names, pure = _components(md, x, y, levels)
    shares = _shares(values, names)
    notes: list[str] = []
    if not md.seeds:
        notes.append("a single seed: seed luck cannot be told from the residual or the lack of fit")
    elif not pure:
        notes.append("no configuration has two trials: the residual holds the lack of fit too")
    distinct = distinct_resamples(md) if md.seeds else 0
    out = []
    alpha = (1 - LEVEL) / 2
    for j, metric in enumerate(metrics):
        ystar = responses(md, y[:, j], bootstrap, seed + j)
        stack = None
        if ystar is not None:
            vb, _, _ = _components(md, x, ystar, levels)
            stack = _shares(vb, names)  # (components, b)
        comps = []
        for i, (name, label, kind) in enumerate(names):
            lo, hi = _interval(stack[i] if stack is not None else None, alpha)
            comps.append(Component(name, label, kind, float(values[i, j]), float(shares[i, j]), lo, hi))
        luck_rows = [i for i, (_, _, k) in enumerate(names) if k in ("seed", "residual")]
        lo, hi = _interval(stack[luck_rows].sum(axis=0) if stack is not None else None, alpha)
        luck = Component(
            "luck",
            "luck (seeds and residual)",
            "luck",
            float(values[luck_rows, j].sum()),
            float(shares[luck_rows, j].sum()),
            lo,
            hi,
        )
        b = 0 if ystar is None else ystar.shape[1]
        out.append(Decomposition(metric, md.n, comps, luck, b, distinct, list(notes)))
    if md.seeds and distinct < 100 and bootstrap > 0:
        for d in out:
            d.notes.append(
                f"with {' × '.join(map(str, levels))} seed level(s) the seed effects can be drawn in only "
                f"{distinct} distinct ways: the intervals are rough (more seeds make them trustworthy)"
            )
    return out


def _interval(values: np.ndarray | None, alpha: float) -> tuple[float | None, float | None]:
    if values is None:
        return None, None
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None, None
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)
