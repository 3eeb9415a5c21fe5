"""Polynomial degree by leave-one-configuration-out cross-validation: each fold holds out every trial (all
seeds) of one configuration, so a model is judged on configurations it has not seen, never on another seed of
a configuration it was fitted to.

The held-out residuals come from the exact group-deletion formula of least squares, e_(g) = (I − H_gg)⁻¹ e_g,
so the folds cost one fit. CV R² = 1 − Σ e_(g)² / Σ (y − ȳ)². A fold whose configuration is needed to identify
a term (an axial point of a central composite design for a square) cannot be predicted: that degree has no CV
R² (n/a), which is itself a warning that the design supports it only just.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ftvar.stats.absorb import Factor, block_hat, rank_of_blocks
from ftvar.stats.regression import absorbed_fit
from ftvar.stats.terms import ModelData

OVERFIT_MARGIN = 0.01  # CV R² lower than the best degree's by more than this: the full model overfits


@dataclass
class DegreeScore:
    degree: int
    n_params: int
    r2: float | None
    cv_r2: float | None
    note: str | None = None


@dataclass
class Selection:
    metric: str
    scores: list[DegreeScore]
    chosen: int | None  # the degree with the best CV R²
    full: int  # analysis.degree
    warning: str | None = None
    notes: list[str] = field(default_factory=list)


def _deleted(d: np.ndarray, xg: np.ndarray, a: np.ndarray, eg: np.ndarray) -> np.ndarray | None:
    """(D − xg A xg')⁻¹ eg, the held-out residuals of one group; None when the matrix is singular (the group
    is needed to identify a term). `d` is D's diagonal when D is diagonal (one seed axis, each seed once in
    the group: the usual case), and then the Woodbury identity keeps this a p × p problem; else D itself."""
    if d.ndim == 1:
        if (d <= 1e-12).any():
            return None
        p = xg.shape[1]
        if not p:
            out: np.ndarray = eg / d
            return out
        u = xg / d[:, None]  # D⁻¹ xg
        small = np.eye(p) - a @ (xg.T @ u)
        if np.linalg.cond(small) > 1e8:
            return None
        out = eg / d + u @ np.linalg.solve(small, a @ (u.T @ eg))
        return out
    m = d - xg @ a @ xg.T
    if np.linalg.cond(m) > 1e8:
        return None
    solved: np.ndarray = np.linalg.solve(m, eg)
    return solved


def _d(blocks: list[Factor], idx: np.ndarray, n: int) -> np.ndarray:
    """I − the blocks' hat matrix on a group's rows: its diagonal when that is all there is."""
    if len(blocks) == 1:
        codes = blocks[0].codes[idx]
        if len(np.unique(codes)) == len(codes):
            diagonal: np.ndarray = 1.0 - 1.0 / blocks[0].counts[codes]
            return diagonal
    full: np.ndarray = np.eye(len(idx)) - block_hat(blocks, idx, n)
    return full


def cv_scores(md: ModelData, y: np.ndarray) -> tuple[float | None, float | None, str | None]:
    """(in-sample R², leave-one-configuration-out CV R², why CV R² is missing) of the seed-blocked fit."""
    blocks = md.seed_blocks()
    k = md.X.shape[1] - 1 + rank_of_blocks(blocks)
    if md.n <= k:
        return None, None, f"too few trials ({md.n}) for {k} parameters"
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot <= 0:
        return None, None, "the metric does not vary"
    fit_ = absorbed_fit(md, y)
    e = fit_.resid
    r2 = 1 - float(e @ e) / ss_tot
    press = 0.0
    for g in range(md.n_configs):
        idx = np.flatnonzero(md.config == g)
        eg = _deleted(_d(blocks, idx, md.n), fit_.xa[idx], fit_.xtx_inv, e[idx])
        if eg is None:
            return r2, None, "leaving out some configuration makes a term unidentifiable"
        press += float(eg @ eg)
    return r2, 1 - press / ss_tot, None


def select(
    metric: str, build: Callable[[int], ModelData], y_of: Callable[[ModelData], np.ndarray], full: int
) -> Selection:
    """CV R² of every degree 1..full (`build(d)` gives the rows' model at degree d) and the best of them."""
    scores = []
    for d in range(1, full + 1):
        md = build(d)
        seed_cols = sum(len(s.levels) - 1 for s in md.seeds)
        r2, cv, why = cv_scores(md, y_of(md))
        scores.append(DegreeScore(d, md.X.shape[1] + seed_cols, r2, cv, why))
    valid = [s for s in scores if s.cv_r2 is not None]
    if not valid:
        return Selection(metric, scores, None, full, None, ["no degree could be cross-validated"])
    best = max(valid, key=lambda s: s.cv_r2 if s.cv_r2 is not None else -np.inf)
    out = Selection(metric, scores, best.degree, full)
    top = scores[-1]
    if top.cv_r2 is not None and best.cv_r2 is not None and top.degree != best.degree:
        if top.cv_r2 < best.cv_r2 - OVERFIT_MARGIN:
            out.warning = (
                f"{metric}: the degree-{top.degree} model overfits: its cross-validated R² ({top.cv_r2:.3f}) "
                f"is below degree {best.degree}'s ({best.cv_r2:.3f}) although its in-sample R² is "
                f"{top.r2 if top.r2 is not None else float('nan'):.3f}"
            )
    elif top.cv_r2 is not None and top.cv_r2 < 0:
        out.warning = (
            f"{metric}: the degree-{top.degree} model predicts held-out configurations worse than their mean "
            f"(CV R² {top.cv_r2:.3f})"
        )
    return out
