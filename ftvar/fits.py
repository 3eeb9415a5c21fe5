"""The results of the regressions: fits, their terms, the design and the whole analysis (plain data)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ALPHA = 0.05
FIT_METRICS = ("accuracy", "f1", "eval_loss")
FIT_KINDS = ("absolute", "relative", "paired")
# (record column, formula name, label)
VARIABLES = (
    ("learning_rate", "lr", "learning rate"),
    ("batch_size", "bs", "batch size"),
    ("epochs", "ep", "epochs"),
)
LABELS = {short: label for _, short, label in VARIABLES}
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "eval_loss": "eval loss"}


@dataclass
class Term:
    term: str
    coef: float
    se: float
    t: float
    p: float
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        return bool(self.p < ALPHA)


@dataclass
class Fit:
    """One OLS fit. `status` is "ok" or "skipped" (then `message` says why and the statistics are None)."""

    metric: str
    kind: str  # absolute | relative | paired
    response: str
    formula: str
    coding: str
    n: int
    n_params: int
    status: str = "ok"
    message: str | None = None
    notes: list[str] = field(default_factory=list)
    r2: float | None = None
    adj_r2: float | None = None
    f_pvalue: float | None = None
    aic: float | None = None
    bic: float | None = None
    df_resid: float | None = None
    terms: list[Term] = field(default_factory=list)
    anova: list[dict[str, Any]] = field(default_factory=list)
    fitted: np.ndarray | None = field(default=None, repr=False)
    observed: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def term(self, name: str) -> Term | None:
        want = name.replace(" ", "")
        return next((t for t in self.terms if t.term.replace(" ", "") == want), None)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("fitted", "observed", "terms")}
        out["terms"] = [{**asdict(t), "significant": t.significant} for t in self.terms]
        cleaned: dict[str, Any] = jsonable(out)
        return cleaned


@dataclass
class Design:
    """The predictors actually used: coded, centred columns and the formula's terms (without intercept)."""

    variables: dict[str, dict[str, Any]]  # short name → {column, transform, centre, values}
    terms: list[str]
    notes: list[str]


@dataclass
class Analysis:
    study: str
    coding: str
    degree: int
    design: Design
    baseline: dict[str, float] | None
    reference: dict[str, float] | None
    fits: list[Fit]
    findings: list[dict[str, Any]]
    paper: list[dict[str, Any]]
    configurations: pd.DataFrame
    notes: list[str]

    def fit(self, metric: str, kind: str) -> Fit:
        return next(f for f in self.fits if f.metric == metric and f.kind == kind)


def jsonable(value: Any) -> Any:
    """JSON-safe: numpy scalars → Python, NaN/inf → None, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
