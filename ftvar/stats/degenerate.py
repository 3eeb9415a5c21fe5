"""Degenerate trials: runs that never left the majority class (every prediction one class, or accuracy equal
to the eval split's majority share), flagged from the records, and their share per configuration; and
near-degenerate ones, which predict one class for at least `analysis.near_degenerate` (default 95%) of the
eval rows without being degenerate.

Dodge et al. (2020) report this failure mode for BERT on small data sets; a fit that mixes such runs with ones
that learned describes neither, so the report shows the fits with and without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class DegenerateSummary:
    n_trials: int
    n_degenerate: int
    from_accuracy: int  # trials flagged from accuracy == majority share (records without the eval field)
    per_configuration: list[dict[str, object]] = field(default_factory=list)  # configurations with any
    n_near: int = 0  # near-degenerate: one class for ≥ `threshold` of the rows, not degenerate
    threshold: float = 0.95
    near_uninformative: bool = False  # the eval split's majority share itself reaches the threshold

    @property
    def rate(self) -> float:
        return self.n_degenerate / self.n_trials if self.n_trials else 0.0


def flags(trials: pd.DataFrame) -> tuple[pd.Series, int]:
    """A boolean per row: the record's `degenerate` field where present, else accuracy equal to the majority
    share (within half an eval example); unknown counts as not degenerate. Also how many rows were flagged
    from    the accuracy alone."""
    index = trials.index
    field_ = trials["degenerate"] if "degenerate" in trials.columns else pd.Series(pd.NA, index=index)
    field_ = field_.astype("boolean")
    acc = pd.to_numeric(trials.get("accuracy", pd.Series(np.nan, index=index)), errors="coerce")
    share = pd.to_numeric(trials.get("majority_share", pd.Series(np.nan, index=index)), errors="coerce")
    n_eval = pd.to_numeric(trials.get("n_eval", pd.Series(np.nan, index=index)), errors="coerce")
    tol = (0.5 / n_eval.where(n_eval > 0)).fillna(1e-9)
    at_majority = ((acc - share).abs() < tol).fillna(False).astype(bool)
    missing = field_.isna()
    out = field_.fillna(False).astype(bool) | (missing & at_majority)
    return out, int((missing & at_majority).sum())


def near_flags(trials: pd.DataFrame, threshold: float) -> pd.Series:
    """A boolean per row: not degenerate, but one class predicted for at least `threshold` of the eval rows
    (the collector's `top_class_share`, from the record's predicted-class counts); unknown counts as not."""
    share = pd.to_numeric(
        trials.get("top_class_share", pd.Series(np.nan, index=trials.index)), errors="coerce"
    )
    degenerate = (
        trials["degenerate_flag"].astype(bool)
        if "degenerate_flag" in trials
        else pd.Series(False, index=trials.index)
    )
    return ((share >= threshold).fillna(False) & ~degenerate).astype(bool)


def summarise(
    trials: pd.DataFrame,
    flagged: pd.Series,
    config_columns: list[str],
    from_accuracy: int,
    near: pd.Series | None = None,
    threshold: float = 0.95,
) -> DegenerateSummary:
    near = near if near is not None else pd.Series(False, index=trials.index)
    out = DegenerateSummary(len(trials), int(flagged.sum()), from_accuracy, n_near=int(near.sum()))
    out.threshold = threshold
    majority = pd.to_numeric(trials.get("majority_share", pd.Series(dtype="float64")), errors="coerce")
    out.near_uninformative = bool(len(majority.dropna()) and float(majority.max()) >= threshold)
    if (out.n_degenerate or out.n_near) and config_columns:
        frame = trials[config_columns].copy()
        frame["_deg"] = flagged.to_numpy()
        frame["_near"] = near.to_numpy()
        grouped = frame.groupby(config_columns, dropna=False, sort=True).agg(
            sum=("_deg", "sum"), size=("_deg", "size"), near=("_near", "sum")
        )
        for key, row in grouped.iterrows():
            if row["sum"] or row["near"]:
                values = key if isinstance(key, tuple) else (key,)
                out.per_configuration.append(
                    {
                        **dict(zip(config_columns, values, strict=True)),
                        "degenerate": int(row["sum"]),
                        "near_degenerate": int(row["near"]),
                        "trials": int(row["size"]),
                        "share": float(row["sum"] / row["size"]),
                    }
                )
        out.per_configuration.sort(key=lambda r: -float(r["share"]))  # type: ignore[arg-type]
    return out
