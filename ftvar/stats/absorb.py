"""Blocking factors absorbed without dummy columns: least-squares residuals after seed (and configuration)
blocks, by alternating projections.

Fitting `y ~ X + C(init_seed) + C(order_seed)` with dummy columns costs n × (levels) memory; absorbing the
blocks first (subtracting group means, factor after factor, until nothing changes: the method of alternating
projections behind fixed-effects regression) gives the same X coefficients and residuals with n × k memory
(Frisch–Waugh–Lovell). One factor needs one pass; crossed balanced factors two; unbalanced ones more, so
several factors are solved exactly instead when the smaller ones have few enough levels together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

TOL = 1e-11
MAX_ITER = 1000
MAX_SOLVED = 4000  # levels of the smaller factors for which the exact solve replaces alternating projections


@dataclass
class Factor:
    codes: np.ndarray  # level index per row
    n_levels: int

    def __post_init__(self) -> None:
        n = len(self.codes)
        self.onehot = sp.csr_matrix((np.ones(n), (np.arange(n), self.codes)), shape=(n, self.n_levels))
        self.counts = np.bincount(self.codes, minlength=self.n_levels).astype("float64")

    def means(self, r: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.asarray(self.onehot.T @ r) / np.where(self.counts > 0, self.counts, 1)[:, None]
        return out

    def per_row(self, m: np.ndarray) -> np.ndarray:
        """Level values (levels × k) as rows (n × k): `m[codes]`, by np.take, which is about 10× faster than
        fancy indexing for 100,000 × 40 (2 ms against 20 ms)."""
        return np.take(m, self.codes, axis=0)


def absorb(
    y: np.ndarray, factors: list[Factor], effects: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Residuals of `y` (n × k) on an intercept and the factors' blocks, and (when asked) each factor's level
    effects (levels × k; identified up to constants shared between factors)."""
    y = np.asarray(y, dtype="float64")
    matrix = y if y.ndim == 2 else y[:, None]
    r = matrix - matrix.mean(axis=0)
    if len(factors) > 1 and not effects:
        solved = _solve(r, factors)
        if solved is not None:
            return (solved if y.ndim == 2 else solved[:, 0]), []
    found = [np.zeros((f.n_levels, r.shape[1])) for f in factors]
    scale = max(float(np.abs(r).max()) if r.size else 0.0, 1e-300)
    for _ in range(MAX_ITER if len(factors) > 1 else 1):
        change = 0.0
        for f, acc in zip(factors, found, strict=True):
            m = f.means(r)
            r -= f.per_row(m)  # in place: r is this function's own array
            if effects:
                acc += m
            change = max(change, float(np.abs(m).max()) if m.size else 0.0)
        if change <= TOL * scale:
            break
    out = r if y.ndim == 2 else r[:, 0]
    return out, found


def _solve(r: np.ndarray, factors: list[Factor]) -> np.ndarray | None:
    """The residuals of several factors at once (`r`, centred, is overwritten), exactly: the factor with the
    most levels is absorbed by its means and the normal equations of the others' levels (a dense m × m
    system, m their levels together) solved by an eigendecomposition; no iterations and no tolerance. On the
    benchmark's design (47 configurations × 2,084 seeds, the last incomplete; 35 columns) 0.25 s against
    0.34 s for alternating projections (bench/bench_collect.py's data), which converge in few sweeps on such
    nearly balanced designs and slowly on weakly connected ones. None when m is too large for a dense
    system."""
    big = max(range(len(factors)), key=lambda i: factors[i].n_levels)
    first, others = factors[big], [f for i, f in enumerate(factors) if i != big]
    m = sum(f.n_levels for f in others)
    if m > MAX_SOLVED:
        return None
    z = sp.hstack([f.onehot for f in others], format="csr")
    zl = (z.T @ first.onehot).tocsr()  # m × levels of the first: counts of shared rows
    inverse = sp.diags(1.0 / np.where(first.counts > 0, first.counts, 1.0))
    system = (z.T @ z - zl @ inverse @ zl.T).toarray()
    resid = r  # absorb's own array, updated in place (100,000 × 40 temporaries cost more than the math)
    resid -= first.per_row(first.means(r))
    rhs = np.asarray(z.T @ resid)
    w, v = np.linalg.eigh(system)
    keep = w > max(float(w.max()), 1e-300) * 1e-10  # the null space: the intercept, unconnected levels
    beta = v[:, keep] @ ((v[:, keep].T @ rhs) / w[keep][:, None])
    fitted = np.asarray(z @ beta)
    resid -= fitted
    resid += first.per_row(first.means(fitted))
    return resid


def cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x'y for tall x and y (n × p, n × k), computed as (y'x)': numpy's matmul of a transposed tall matrix by
    a tall one can take 100× longer on some BLAS builds (measured: 3 s against 0.02 s for 96,000 × 9 and
    96,000 × 41)."""
    out: np.ndarray = (y.T @ x).T
    return out


def block_hat(factors: list[Factor], rows: np.ndarray, n: int) -> np.ndarray:
    """The block of the hat matrix of [intercept + factors] (n rows) for `rows`: exact for one factor and for
    balanced crossed factors (which are orthogonal after the intercept)."""
    out = np.full((len(rows), len(rows)), 1.0 / n)
    for f in factors:
        c = f.codes[rows]
        same = c[:, None] == c[None, :]
        out += same / f.counts[c][None, :] - 1.0 / n
    return out


def rank_of_blocks(factors: list[Factor]) -> int:
    """Columns the intercept and the factors span, for a connected design (every level linked to every other
    through shared rows): 1 + Σ (levels − 1)."""
    return 1 + sum(int((f.counts > 0).sum()) - 1 for f in factors)
