"""Degenerate trials: runs that never left the majority class (every prediction one class, or accuracy equal
to the eval split's majority share), flagged from the records, and their share per configuration.

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


def summarise(
    trials: pd.DataFrame, flagged: pd.Series, config_columns: list[str], from_accuracy: int
) -> DegenerateSummary:
    out = DegenerateSummary(len(trials), int(flagged.sum()), from_accuracy)
    if out.n_degenerate and config_columns:
        frame = trials[config_columns].copy()
        frame["_deg"] = flagged.to_numpy()
        grouped = frame.groupby(config_columns, dropna=False, sort=True)["_deg"].agg(["sum", "size"])
        for key, row in grouped.iterrows():
            if row["sum"]:
                values = key if isinstance(key, tuple) else (key,)
                out.per_configuration.append(
                    {
                        **dict(zip(config_columns, values, strict=True)),
                        "degenerate": int(row["sum"]),
                        "trials": int(row["size"]),
                        "share": float(row["sum"] / row["size"]),
                    }
                )
        out.per_configuration.sort(key=lambda r: -float(r["share"]))  # type: ignore[arg-type]
    return out
