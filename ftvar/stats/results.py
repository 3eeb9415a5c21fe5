"""The results of the regressions: one fit, its coefficients and its term tests (plain data, JSON-ready)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ALPHA = 0.05
FIT_METRICS = ("accuracy", "f1", "eval_loss")  # fitted in every study; MCC too where it is the primary metric
METRICS = (*FIT_METRICS, "mcc")  # every metric a fit may be of, in a fixed order (it seeds their bootstraps)
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "eval_loss": "eval loss", "mcc": "MCC"}
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "eval_loss": False, "mcc": True}
FIT_KINDS = ("absolute", "relative")  # relative: % change from the baseline of the same init seed (and model)
SUBSETS = ("all", "non-degenerate")


def fitted_metrics(primary: str) -> tuple[str, ...]:
    """The metrics a study's analysis fits, its primary metric (ftvar.study.config.Study.metric) first."""
    return (primary, *(m for m in FIT_METRICS if m != primary))


@dataclass
class Coef:
    """One column of the model matrix: a coefficient with its standard error, test and 95% CI."""

    name: str  # the column: "lr", "C(scheduler)[T.cosine]"
    term: str  # the term it belongs to: "lr", "C(scheduler)"
    coef: float
    se: float
    t: float  # t (OLS) or z (mixed model)
    p: float
    ci_low: float
    ci_high: float


@dataclass
class TermTest:
    """A term's test (Wald: t-test for one column, F-test for a factor's columns) with adjusted p-values.

    p_holm controls the family-wise error over the fit's hyperparameter terms, p_bh the false discovery rate;
    `significant` uses p_holm. p_family (fits of all trials, absolute) is Holm over the terms of every
    metric's fit together: the findings use it."""

    term: str
    label: str  # in words
    df: int
    stat: float  # t for one column (signed), else F
    p: float
    p_holm: float = float("nan")
    p_bh: float = float("nan")
    coef: float | None = None  # one-column terms
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_family: float | None = None  # Holm over the findings family: every metric's fit of all trials

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)


@dataclass
class Fit:
    """One regression of a metric. `status` is "ok" or "skipped" (then `message` says why)."""

    metric: str
    kind: str  # absolute | relative
    subset: str  # all | non-degenerate
    response: str
    formula: str
    seed_model: str  # blocks | mixed | none (a single seed)
    n: int
    n_params: int  # intercept and hyperparameter columns (seed blocks not counted)
    status: str = "ok"
    message: str | None = None
    notes: list[str] = field(default_factory=list)
    r2: float | None = None
    adj_r2: float | None = None
    f_pvalue: float | None = None  # all hyperparameter terms together
    aic: float | None = None
    bic: float | None = None
    df_resid: float | None = None
    sigma: float | None = None  # residual standard deviation
    coefs: list[Coef] = field(default_factory=list)
    tests: list[TermTest] = field(default_factory=list)
    fitted: np.ndarray | None = field(default=None, repr=False)
    observed: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def term(self, name: str) -> TermTest | None:
        want = name.replace(" ", "")
        return next((t for t in self.tests if t.term.replace(" ", "") == want), None)

    def coef(self, name: str) -> Coef | None:
        want = name.replace(" ", "")
        return next((c for c in self.coefs if c.name.replace(" ", "") == want), None)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("fitted", "observed", "tests")}
        out["tests"] = [{**asdict(t), "significant": t.significant} for t in self.tests]
        cleaned: dict[str, Any] = jsonable(out)
        return cleaned


def jsonable(value: Any) -> Any:
    """JSON-safe: numpy scalars → Python, NaN/inf → None, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
