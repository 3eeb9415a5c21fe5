"""Failed runs modelled: how the probability that a run fails to learn depends on the hyperparameters.

Dodge et al. (2020) and Mosbach et al. (2021) show that on small data sets a large share of fine-tuning
runs fail (the model ends at the majority class, or the loss diverges) and that the learning rate and the
batch size move that share. The metric's fits describe the runs that learned (the non-degenerate fits); this
module fits the other half: a logistic regression of "the run failed" (degenerate or diverged) on the same
coded terms as the metric's fit, with the seeds as blocks (a seed whose runs fail everywhere moves its block,
not the slopes), and says which terms change the failure rate (penalised likelihood-ratio tests,
Holm-adjusted) and by how much (the predicted failure rate at each value of an axis, averaged over the
trials' other values and seeds).

Failures cluster: a learning rate at which every run fails separates the data, where plain maximum likelihood
has no finite estimate (statsmodels raises). Firth's penalised likelihood (Firth 1993; Heinze & Schemper
2002) always has one and removes the small-sample bias; no Python library implements it (statsmodels and
scikit-learn offer only ridge penalties, which shrink toward no effect), so the Newton iteration is written
here. A crash (status `failed`: an error, out of memory) is not a training outcome and is not modelled: it is
counted in a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from ftvar.stats.degenerate import flags
from ftvar.stats.regression import adjust
from ftvar.stats.terms import ModelData, build, term_matrix
from ftvar.study.axes import Axis

MAX_ITER = 100
TOL = 1e-8
MAX_SEED_LEVELS = 50  # seed blocks as dummy columns up to this many levels together
FEW = 10  # fewer failures (or successes) than this: the estimates are rough
AGGREGATE_MIN = 5_000  # from this many trials, identical design rows are fitted as one weighted row


@dataclass
class Penalised:
    beta: np.ndarray
    loglik: float  # penalised log-likelihood
    cov: np.ndarray
    converged: bool


def firth(
    x: np.ndarray, y: np.ndarray, fixed: list[int] | None = None, weights: np.ndarray | None = None
) -> Penalised:
    """Firth-penalised logistic regression of y (0/1) on x (intercept included): Newton steps on the modified
    score U*(β) = X'(y − π + h(½ − π)), h the hat values of W^½X, with step halving on the penalised
    log-likelihood ℓ(β) + ½ log|X'WX|. `fixed`: coefficients held at 0 while the penalty keeps the whole
    design (the restricted fit of a penalised likelihood-ratio test, as R's logistf does). `weights`: rows
    that stand for that many trials each (`y` their share of failures), the same fit as the trials one by
    one."""
    n_rows = np.ones(len(y)) if weights is None else np.asarray(weights, dtype="float64")
    p = x.shape[1]
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    xs = x / norms  # columns on one scale (raw codings mix 1e-5 and 1e2)
    beta = np.zeros(p)
    log_scale = 2.0 * float(np.sum(np.log(norms)))  # log|X'WX| = log|Xs'WXs| + 2 Σ log norms

    def state(b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        eta = xs @ b
        pi = special.expit(eta)
        w = n_rows * np.clip(pi * (1 - pi), 1e-12, None)
        info = (xs * w[:, None]).T @ xs
        sign, logdet = np.linalg.slogdet(info)
        loglik = float(np.sum(n_rows * (y * eta - np.logaddexp(0, eta))))
        pen = loglik + 0.5 * (logdet + log_scale if sign > 0 else -np.inf)
        return pen, pi, w, info

    pen, pi, w, info = state(beta)
    converged = False
    free = np.setdiff1d(np.arange(p), np.asarray(fixed or [], dtype=int))
    for _ in range(MAX_ITER):
        inv = np.linalg.pinv(info)
        h = np.einsum("ij,jk,ik->i", xs, inv, xs) * w
        score = xs.T @ (n_rows * (y - pi) + h * (0.5 - pi))
        step = np.zeros(p)
        step[free] = np.linalg.pinv(info[np.ix_(free, free)]) @ score[free]
        t = 1.0
        while True:
            cand = beta + t * step
            new_pen, new_pi, new_w, new_info = state(cand)
            if new_pen >= pen - 1e-12 or t < 1e-6:
                break
            t /= 2
        beta, pi, w, info = cand, new_pi, new_w, new_info
        done = abs(new_pen - pen) < TOL and float(np.max(np.abs(t * step))) < 1e-6
        pen = new_pen
        if done:
            converged = True
            break
    cov = np.linalg.pinv(info) / np.outer(norms, norms)
    return Penalised(beta / norms, pen, cov, converged)


@dataclass
class FailureTerm:
    term: str
    label: str
    df: int
    coef: float | None  # log-odds per coded unit (one-column terms)
    lr_stat: float  # penalised likelihood ratio
    p: float
    p_holm: float = float("nan")
    se: float | None = None  # the coefficient's standard error (Wald, from the penalised information)

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < 0.05)


@dataclass
class FailureEffect:
    axis: str
    label: str
    values: list[Any]
    rates: list[float]  # predicted failure rate at each value (others as in the trials)
    observed: list[float]  # observed failure share at each value
    trials: list[int]


@dataclass
class FailureModel:
    n_trials: int  # trials modelled (ok, degenerate or diverged)
    n_failed: int  # degenerate or diverged among them
    n_degenerate: int
    n_diverged: int
    n_crashed: int  # status failed: not modelled
    status: str  # ok | skipped
    message: str | None = None
    formula: str = ""
    seeds: str = ""  # how the seeds enter
    terms: list[FailureTerm] = field(default_factory=list)
    effects: list[FailureEffect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    converged: bool = True


def model_failures(trials_all: pd.DataFrame, axes: tuple[Axis, ...], degree: int) -> FailureModel:
    """The failure model over the study's trials of the current design (every status; crashes are counted,
    not modelled)."""
    crashed = int(trials_all["status"].eq("failed").sum())
    rows = trials_all.loc[trials_all["status"].isin(["ok", "diverged"])].reset_index(drop=True)
    for a in axes:  # numbers as numbers; a row without a valid value of an axis cannot be placed
        if a.name in rows.columns and a.kind != "categorical" and not a.is_seed:
            rows[a.name] = pd.to_numeric(rows[a.name], errors="coerce").astype("float64")
    named = [a.name for a in axes if a.name in rows.columns and not rows[a.name].isna().all()]
    unplaced = rows[named].isna().any(axis=1) if named else pd.Series(False, index=rows.index)
    rows = rows.loc[~unplaced].reset_index(drop=True)
    ok = rows["status"].eq("ok")
    degenerate = flags(rows.loc[ok])[0].reindex(rows.index).fillna(False).astype(bool)
    y_all = (rows["status"].eq("diverged") | degenerate).astype(int)
    out = FailureModel(
        len(rows),
        int(y_all.sum()),
        int(degenerate.sum()),
        int(rows["status"].eq("diverged").sum()),
        crashed,
        "skipped",
    )
    if unplaced.any():
        out.notes.append(f"{int(unplaced.sum())} trial(s) without a valid value for every axis are left out")
    if crashed:
        out.notes.append(
            f"{crashed} crashed trial(s) (status failed: an error, not a training outcome) are not modelled; "
            "`ftvar status` lists them"
        )
    if out.n_failed == 0:
        out.message = "no run failed to learn: nothing to model"
        return out
    if out.n_failed == len(rows):
        out.message = "every run failed to learn: nothing to compare"
        return out
    md = build(rows.reset_index(drop=True), axes, degree)
    if not md.terms:
        out.message = "no hyperparameter varies among these trials"
        return out
    y = y_all.to_numpy(dtype="float64")
    seed_x, seed_names = md.seed_dummies()
    if seed_x.shape[1] > MAX_SEED_LEVELS:
        out.notes.append(f"{seed_x.shape[1] + 1} seed levels: the seeds are left out of the failure model")
        seed_x = np.zeros((md.n, 0))
        out.seeds = "none (too many seed levels)"
    else:
        out.seeds = "blocks" if seed_names else "none (a single seed)"
    x = np.column_stack([md.X, seed_x])
    if x.shape[1] >= md.n:
        out.message = f"{md.n} trials for {x.shape[1]} parameters: too few to model"
        return out
    fit_x, fit_y, counts = x, y, None
    if md.n > AGGREGATE_MIN:  # trials with the same design row as one weighted row: the same fit, faster
        fit_x, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
        fit_y = np.bincount(inverse.ravel(), weights=y) / counts
    full = firth(fit_x, fit_y, weights=counts)
    out.converged = full.converged
    out.status = "ok"
    out.formula = md.formula("failed").replace("failed ~", "logit P(failed) ~")
    for term in md.terms:
        cols = md.term_columns[term.name]
        reduced = firth(fit_x, fit_y, fixed=cols, weights=counts)
        stat = max(0.0, 2 * (full.loglik - reduced.loglik))
        out.terms.append(
            FailureTerm(
                term.name,
                term.label,
                len(cols),
                float(full.beta[cols[0]]) if len(cols) == 1 else None,
                stat,
                float(stats.chi2.sf(stat, len(cols))),
                se=float(np.sqrt(max(full.cov[cols[0], cols[0]], 0.0))) if len(cols) == 1 else None,
            )
        )
    holm, _ = adjust([t.p for t in out.terms])
    for t, p in zip(out.terms, holm, strict=True):
        t.p_holm = p
    out.effects = _effects(md, x, full, y)
    fewest = min(out.n_failed, len(rows) - out.n_failed)
    if fewest < FEW:
        which = "failures" if out.n_failed < FEW else "successes"
        out.notes.append(f"only {fewest} {which}: the failure model's estimates are rough")
    if not full.converged:
        out.notes.append("the failure model did not converge in full; read its estimates with care")
    return out


def _effects(md: ModelData, x: np.ndarray, fit: Penalised, y: np.ndarray) -> list[FailureEffect]:
    """Per axis, the predicted failure rate at each of its values, every trial set to that value and the
    predictions averaged (the trials' other values and seeds as they are); and the observed share."""
    out = []
    by_name = {p.name: p for p in md.predictors}
    for pred in md.predictors:
        values = list(pred.values)
        rates, observed, counts = [], [], []
        for v in values:
            rows = md.rows.copy()
            rows[pred.axis.name] = v
            xv = x.copy()
            for term in md.terms:
                if pred.name in term.parts:
                    cols, _ = term_matrix(term, by_name, rows)
                    xv[:, md.term_columns[term.name]] = cols
            rates.append(float(special.expit(xv @ fit.beta).mean()))
            col = md.rows[pred.axis.name]
            at = (col == v).to_numpy() if pred.kind == "categorical" else np.isclose(col.to_numpy(float), v)
            counts.append(int(at.sum()))
            observed.append(float(y[at].mean()) if at.any() else float("nan"))
        out.append(FailureEffect(pred.axis.name, pred.label, values, rates, observed, counts))
    return out
