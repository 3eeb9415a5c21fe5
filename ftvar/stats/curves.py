"""Learning curves of a study: each trial's curve from its record, per configuration, failed runs apart.

A trial's record holds its curve (ftvar.train.curve): the mean training loss and the eval metrics at steps
during training. Here they are read for the trials of the current design (JSON only, the files the
collector chose), grouped by configuration (the hyperparameter axes), summarised over the seeds (median and
range per point) and marked failed or not. A failed run, as Mosbach et al. 2021 define it, ends no better than
the majority class: its accuracy is at most the eval split's majority share (within half an example), which
takes in ftvar's degenerate trials (one class predicted; ftvar.stats.degenerate); where MCC is the metric,
an MCC at most 0 (the majority class's); and trials that diverged fail too. The early-stopping analysis
(ftvar.stats.early_stopping) runs on the pools these curves make: each configuration's seeds, and the whole
study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ftvar.stats.degenerate import flags
from ftvar.stats.early_stopping import Pool, analyse_pool
from ftvar.study.axes import Axis, show_value

CURVE_KEYS = ("train_loss", "accuracy", "f1", "mcc", "eval_loss")
POOL_SEED = 2020  # the early-stopping draws' seed (Dodge et al. 2020): the report is reproducible


@dataclass
class Run:
    """One trial's curve: its steps, fraction of training, and values per key; whether it failed."""

    trial_id: str
    seeds: str  # "seed 3" or "init 1, order 2"
    status: str
    failed: bool
    steps: list[int]
    fraction: list[float]  # step / the trial's total steps
    epoch: list[float]
    values: dict[str, list[float | None]]
    final: float | None  # the primary metric at the end (the record's)


@dataclass
class Band:
    """A configuration's curve over the runs that did not fail: per point, median and range."""

    epoch: list[float]
    median: dict[str, list[float | None]]
    low: dict[str, list[float | None]]
    high: dict[str, list[float | None]]
    n_runs: int


@dataclass
class ConfigCurves:
    label: str
    values: dict[str, Any]  # axis name → value
    runs: list[Run]
    band: Band | None
    n_failed: int
    n_trials: int

    @property
    def failed_rate(self) -> float:
        return self.n_failed / self.n_trials if self.n_trials else math.nan


@dataclass
class LearningCurves:
    metric: str  # the study's primary metric
    configs: list[ConfigCurves]
    n_with: int  # trials with a curve
    n_without: int  # trials of the design whose record has none (eval_every = 0, or an older ftvar)
    n_failed: int
    n_trials: int
    resolution: float = 0.0  # one eval example as a share (1 / the largest eval split): the metric's step
    pools: list[Pool] = field(default_factory=list)  # early stopping: "all trials", then each configuration
    notes: list[str] = field(default_factory=list)

    @property
    def failed_rate(self) -> float:
        return self.n_failed / self.n_trials if self.n_trials else math.nan


def _seeds(row: dict[str, Any]) -> str:
    init, order = row.get("init_seed"), row.get("order_seed")
    if pd.isna(order) or init == order:
        return f"seed {show_value(init)}"
    return f"init {show_value(init)}, order {show_value(order)}"


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _read_curve(path: str) -> tuple[list[dict[str, Any]], int]:
    """A record's curve points and its steps (the collector has validated the file; orjson: a few µs each,
    so that the curves of a large study are read in seconds)."""
    try:
        record = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return [], 0
    if not isinstance(record, dict):
        return [], 0
    return list(record.get("curve") or []), int(record.get("steps") or 0)


def learning_curves(table: pd.DataFrame, axes: tuple[Axis, ...], metric: str) -> LearningCurves:
    """The curves of the design's trials (ok and diverged), per configuration, with the failed runs marked
    and the early-stopping pools analysed on `metric`."""
    hp = [a for a in axes if not a.is_seed and a.name in table.columns]
    rows = table[(table["kind"] == "trial") & table["in_grid"].astype(bool)]
    rows = rows[rows["status"].isin(["ok", "diverged"])]
    varying = [a for a in hp if rows[a.name].nunique(dropna=False) > 1]
    failing = failed_runs(rows, metric)
    groups: dict[tuple[Any, ...], list[Run]] = {}
    values_of: dict[tuple[Any, ...], dict[str, Any]] = {}
    n_without = 0
    records = rows.to_dict("records")  # plain dicts: a large study's rows in a fraction of iterrows' time
    for row, failed in zip(records, failing.to_numpy(dtype=bool).tolist(), strict=True):
        points, steps = _read_curve(str(row["file"]))
        if not points:
            n_without += 1
            continue
        total = steps if row["status"] == "ok" and steps else max(1, int(points[-1]["step"]))
        if row["status"] != "ok":  # a diverged trial: its planned length, from its points' epochs
            last = points[-1]
            per_epoch = last["step"] / last["epoch"] if last.get("epoch") else 0
            total = max(1, round(per_epoch * float(row.get("epochs") or 1))) if per_epoch else total
        run = Run(
            trial_id=str(row["trial_id"]),
            seeds=_seeds(row),
            status=str(row["status"]),
            failed=failed,
            steps=[int(p["step"]) for p in points],
            fraction=[int(p["step"]) / total for p in points],
            epoch=[float(p["epoch"]) for p in points],
            values={k: [_finite(p.get(k)) for p in points] for k in CURVE_KEYS},
            final=_finite(row.get(metric)) if row["status"] == "ok" else None,
        )
        key = tuple(row[a.name] for a in hp)
        groups.setdefault(key, []).append(run)
        values_of[key] = {a.name: row[a.name] for a in hp}
    configs = []
    for key, runs in groups.items():
        label = ", ".join(f"{a.short}={show_value(values_of[key][a.name])}" for a in varying) or "all trials"
        n_failed = sum(r.failed for r in runs)
        configs.append(ConfigCurves(label, values_of[key], runs, _band(runs), n_failed, len(runs)))
    configs.sort(key=lambda c: [_sortable(c.values[a.name]) for a in hp])
    out = LearningCurves(
        metric=metric,
        configs=configs,
        n_with=sum(len(c.runs) for c in configs),
        n_without=n_without,
        n_failed=sum(c.n_failed for c in configs),
        n_trials=sum(c.n_trials for c in configs),
        resolution=_resolution(rows),
    )
    if n_without:
        out.notes.append(
            f"{n_without} trial(s) have no learning curve (train.eval_every = 0, or records of an ftvar "
            "before curves): left out of the curves and the early-stopping analysis"
        )
    out.pools = _pools(configs, metric, out.notes)
    return out


def failed_runs(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mosbach et al. 2021's failed runs among `rows` (results-table rows): diverged, degenerate (ftvar's
    flag), accuracy at most the majority share (within half an eval example), or, where MCC is the metric,
    MCC at most 0."""
    degenerate, _ = flags(rows)
    index = rows.index
    accuracy = pd.to_numeric(rows.get("accuracy", pd.Series(np.nan, index=index)), errors="coerce")
    share = pd.to_numeric(rows.get("majority_share", pd.Series(np.nan, index=index)), errors="coerce")
    n_eval = pd.to_numeric(rows.get("n_eval", pd.Series(np.nan, index=index)), errors="coerce")
    tolerance = (0.5 / n_eval.where(n_eval > 0)).fillna(1e-9)
    majority = (accuracy <= share + tolerance).fillna(False).astype(bool)
    out = (rows["status"] == "diverged") | degenerate.astype(bool) | majority
    if metric == "mcc" and "mcc" in rows.columns:
        out |= (pd.to_numeric(rows["mcc"], errors="coerce") <= 0).fillna(False).astype(bool)
    return out.astype(bool)


def _resolution(rows: pd.DataFrame) -> float:
    """One eval example as a share of the eval split (the largest of the trials'): no difference in accuracy
    smaller than it is a difference in what a model predicted."""
    n_eval = pd.to_numeric(rows.get("n_eval", pd.Series(dtype=float)), errors="coerce")
    largest = n_eval[n_eval > 0].max() if len(n_eval) else math.nan
    return 1.0 / float(largest) if math.isfinite(largest) else 0.0


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) and not isinstance(value, bool) else (1, str(value))


def _band(runs: list[Run]) -> Band | None:
    """Median and range over the runs that did not fail, at the points they share (by step)."""
    good = [r for r in runs if not r.failed]
    if not good:
        return None
    steps = sorted(set.intersection(*(set(r.steps) for r in good)))
    if not steps:
        return None
    epoch = [good[0].epoch[good[0].steps.index(s)] for s in steps]
    median: dict[str, list[float | None]] = {}
    low: dict[str, list[float | None]] = {}
    high: dict[str, list[float | None]] = {}
    for key in CURVE_KEYS:
        median[key], low[key], high[key] = [], [], []
        for s in steps:
            vals = [r.values[key][r.steps.index(s)] for r in good]
            finite = [v for v in vals if v is not None]
            median[key].append(float(np.median(finite)) if finite else None)
            low[key].append(min(finite) if finite else None)
            high[key].append(max(finite) if finite else None)
    return Band(epoch, median, low, high, len(good))


def _pools(configs: list[ConfigCurves], metric: str, notes: list[str]) -> list[Pool]:
    """Early stopping on the whole study's trials (when it has several configurations), then on each
    configuration's seeds."""
    pools: list[Pool] = []
    every = [r for c in configs for r in c.runs if r.final is not None]
    candidates = [("all trials", every)] if len(configs) > 1 else []
    candidates += [(c.label, [r for r in c.runs if r.final is not None]) for c in configs]
    for i, (name, runs) in enumerate(candidates):
        curves = [list(zip(r.fraction, r.values[metric], strict=True)) for r in runs]
        final = np.array([r.final for r in runs], dtype=float)
        pool = analyse_pool(name, curves, final, seed=POOL_SEED + i)
        if pool is not None:
            pools.append(pool)
    if pools and not any(p.fractions for p in pools):
        notes.append(
            "no trial was evaluated before the end of training (train.eval_every = 1.0 with one epoch, or "
            "larger): early stopping needs points during training, e.g. train.eval_every = 0.25"
        )
    return pools
