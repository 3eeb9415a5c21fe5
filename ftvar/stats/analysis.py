"""A collected study → everything the report shows: seed-blocked fits (absolute, relative to the baseline of
the same init seed; with and without degenerate trials), the variance decomposition, the degree by
cross-validation, the best configuration, the expected-max curves, degenerate trials and the failure model,
the per-example tables and the held-out test split, findings (one Holm family over all metrics) and the paper
comparison.

Works from the results table alone (ftvar.store.collect): one column per axis of the study, the seeds, the
metrics, `degenerate` and `majority_share`. Each part is computed by its own module; a part that cannot be
computed on some table becomes a note, never a crash.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ftvar.errors import FtvarError
from ftvar.stats.conditions import Condition, Replicates, collapse, differing, spread
from ftvar.stats.degenerate import DegenerateSummary, flags, near_flags, summarise
from ftvar.stats.expected_max import Curve, curves
from ftvar.stats.failures import FailureModel, model_failures
from ftvar.stats.findings import findings
from ftvar.stats.optimum import Best, Noise, Space, best
from ftvar.stats.paper import PAPER_TERMS, PaperComparison, comparable, compare
from ftvar.stats.per_example import HeldOut, PerExample, held_out
from ftvar.stats.per_example import analyse as analyse_examples
from ftvar.stats.regression import adjust, resolve_seed_model
from ftvar.stats.regression import fit as fit_metric
from ftvar.stats.results import (
    ALPHA,
    FIT_METRICS,
    HIGHER_IS_BETTER,
    METRIC_LABELS,
    METRICS,
    Fit,
    fitted_metrics,
    jsonable,
)
from ftvar.stats.selection import Selection, select
from ftvar.stats.terms import ModelData, build
from ftvar.stats.variance import Decomposition, decompose, noise_estimates
from ftvar.store.collect import CollectResult, SkippedRecordsError, collect, forks_safely
from ftvar.store.predictions import TrialPredictions
from ftvar.study.axes import Axis
from ftvar.study.config import SWEEPABLE, Study
from ftvar.study.design import Range

__all__ = [
    "ALPHA",
    "FIT_METRICS",
    "METRIC_LABELS",
    "Analysis",
    "CollectResult",
    "Fit",
    "SkippedRecordsError",
    "analyze",
    "collect",
    "jsonable",
]

T = TypeVar("T")
BOOTSTRAP_CELLS = 10_000_000  # trials × resamples the bootstrap may cost per metric (a few seconds)
BOOTSTRAP_MIN = 100
BASELINE_MATCH_SKIP = ("learning_rate", "batch_size", "epochs", "order_seed")
PARALLEL_MIN_TRIALS = 20_000  # below, forking workers costs more than the metrics' analyses in parallel save
EXPECTED_MAX_BOOTSTRAP = 200  # seed resamples behind the expected-max band


@dataclass
class Baselines:
    n: int  # ok baseline records
    shared: bool  # one baseline value for every fitted trial: relative = absolute scaled by a constant
    description: str


@dataclass
class Analysis:
    study: str
    degree: int
    seed_model: str  # blocks | mixed | none, for the fits of all trials
    seed_model_why: str
    predictors: list[dict[str, Any]]
    terms: list[str]
    baselines: Baselines
    fits: list[Fit]
    variance: list[Decomposition]
    selection: list[Selection]
    best: list[Best]
    expected_max: list[Curve]
    expected_max_by: str | None
    degenerate: DegenerateSummary
    findings: list[dict[str, Any]]
    paper: PaperComparison
    configurations: pd.DataFrame
    trials: pd.DataFrame  # the ok trials of the current design, with a `degenerate_flag` column
    axes: tuple[Axis, ...]
    notes: list[str] = field(default_factory=list)
    relative_note: str | None = None
    models: dict[str, ModelData] = field(default_factory=dict)
    ran: list[Condition] = field(default_factory=list)  # how the trials ran, where they differ
    replicates: Replicates = field(default_factory=Replicates)
    metric: str = "accuracy"  # the study's primary metric: what the report leads with
    metrics: tuple[str, ...] = FIT_METRICS  # the metrics fitted, the primary first
    f1_average: str | None = None  # binary (two classes) | macro (more) | None (not known)
    family: int = 0  # tests in the findings family (Holm over all of them: TermTest.p_family)
    failures: FailureModel | None = None
    per_example: PerExample | None = None
    held_out: HeldOut | None = None  # the chosen configuration on the test split
    paper_fits: list[Fit] = field(default_factory=list)
    expected_max_random: bool = False  # the design is random search: the estimator's assumption holds
    constant: dict[str, float] = field(default_factory=dict)  # metric → the value every ok trial has

    @property
    def lead(self) -> str:
        """The metric the report leads with (the primary metric)."""
        return self.metric

    def fit(self, metric: str, kind: str = "absolute", subset: str = "all") -> Fit | None:
        return next((f for f in self.fits if (f.metric, f.kind, f.subset) == (metric, kind, subset)), None)


def _guard(notes: list[str], what: str, default: T, compute: Callable[[], T]) -> T:
    """Run one part of the analysis; a numerical failure on odd data becomes a note, not a crash."""
    try:
        return compute()
    except FtvarError:
        raise
    except Exception as exc:  # the report must survive any table the collector produces
        notes.append(f"{what} could not be computed on these trials ({type(exc).__name__}: {exc})")
        return default


def hyperparameter_axes(study: Study) -> list[Axis]:
    return [a for a in study.axes if not a.is_seed]


def _usable(table: pd.DataFrame, study: Study, notes: list[str]) -> pd.DataFrame:
    """The ok trials of the current design whose axis values are all known."""
    mask = (table["kind"] == "trial") & (table["status"] == "ok") & table["in_grid"].astype(bool)
    trials = table.loc[mask].copy()
    n_out = int(
        ((table["kind"] == "trial") & (table["status"] == "ok") & ~table["in_grid"].astype(bool)).sum()
    )
    if n_out:
        notes.append(f"{n_out} ok record(s) of this study are outside the current design and left out")
    for a in study.axes:  # numbers as numbers; a value that is not one counts as missing
        if a.name in trials.columns and a.kind != "categorical" and not a.is_seed:
            values = pd.to_numeric(trials[a.name], errors="coerce").astype("float64")
            trials[a.name] = values.where(np.isfinite(values))
    cols = [a.name for a in study.axes if a.name in trials.columns and not trials[a.name].isna().all()]
    missing = trials[cols].isna().any(axis=1) if cols else pd.Series(False, index=trials.index)
    if missing.any():
        notes.append(f"{int(missing.sum())} ok trial(s) without a valid value for every axis are left out")
        trials = trials.loc[~missing]
    return trials.reset_index(drop=True)


def _baseline_of(table: pd.DataFrame, trials: pd.DataFrame, study: Study) -> tuple[pd.DataFrame, Baselines]:
    """Per trial, the metrics of its baseline: same init seed (when baselines have one) and the same values of
    the axes baselines carry (model, max length)."""
    rows = table[(table["kind"] == "baseline") & (table["status"] == "ok") & table["in_grid"].astype(bool)]
    out = pd.DataFrame(np.nan, index=trials.index, columns=list(METRICS))
    if rows.empty:
        return out, Baselines(
            0, False, "no ok baseline record (analysis.baseline = pretrained evaluates one)"
        )
    keys = [
        a.name
        for a in study.axes
        if a.name in rows.columns and a.name not in BASELINE_MATCH_SKIP and rows[a.name].notna().any()
    ]
    # a baseline matches the trials that share its values of the keys it has (a null key matches all)
    as_text = {k: trials[k].astype(str).to_numpy() for k in keys}
    for has, group in rows.groupby([rows[k].notna() for k in keys] if keys else [[True] * len(rows)]):
        used = [
            k for k, present in zip(keys, has if isinstance(has, tuple) else (has,), strict=False) if present
        ]
        values = {tuple(str(r[k]) for k in used): [r[m] for m in METRICS] for _, r in group.iterrows()}
        found = [values.get(key) for key in zip(*(as_text[k] for k in used), strict=True)] if used else []
        if not used:
            found = [next(iter(values.values()))] * len(trials)
        for j, m in enumerate(METRICS):
            col = np.array([np.nan if f is None else f[j] for f in found], dtype="float64")
            out[m] = out[m].fillna(pd.Series(col, index=trials.index))
    seeded = "init_seed" in keys
    what = (
        f"{len(rows)} baseline(s), one per init seed (the classifier head is new: its accuracy depends on "
        "the seed)"
        if seeded
        else "one baseline (the model's classification head was trained)"
        if len(rows) == 1
        else f"{len(rows)} baselines (one per {', '.join(k for k in keys)})"
    )
    values = out.dropna(how="all")
    shared = len(values) > 0 and all(values[m].nunique(dropna=True) <= 1 for m in METRICS)
    return out, Baselines(len(rows), shared, what)


def configurations(
    trials_all: pd.DataFrame, ok: pd.DataFrame, axes: list[Axis], metric: str = "accuracy"
) -> pd.DataFrame:
    """Per configuration (the hyperparameter axes): trials, ok trials, degenerate ones, mean and sd of each
    metric over seeds; best mean of `metric` (the primary) first."""
    keys = [a.name for a in axes if a.name in trials_all.columns]
    if not keys:
        trials_all = trials_all.assign(_all="all")
        ok = ok.assign(_all="all")
        keys = ["_all"]
    stats = ok.groupby(keys, dropna=False)[[*METRICS, "train_loss"]].agg(["mean", "std"])
    stats.columns = [f"{m}_{s.replace('std', 'sd')}" for m, s in stats.columns]
    counts = trials_all.assign(ok=trials_all["status"].eq("ok")).groupby(keys, dropna=False)["ok"]
    out = counts.agg(n_ok="sum", n_trials="size").join(stats, how="left")
    deg = ok.groupby(keys, dropna=False)["degenerate_flag"].sum().rename("n_degenerate")
    out = out.join(deg, how="left").reset_index()
    out["n_degenerate"] = out["n_degenerate"].fillna(0).astype(int)
    out["n_failed"] = out["n_trials"] - out["n_ok"]
    ascending = not HIGHER_IS_BETTER[metric]
    return out.sort_values(f"{metric}_mean", ascending=ascending, na_position="last").reset_index(drop=True)


def _expected_max_axis(axes: list[Axis], trials: pd.DataFrame, wanted: str | None) -> Axis | None:
    """analysis.expected_max_by when it varies; else batch size when it varies, else the first categorical
    axis that varies, else none."""
    varying = [a for a in axes if a.name in trials.columns and trials[a.name].nunique() >= 2]
    for name in (wanted, "batch_size"):
        chosen = next((a for a in varying if a.name == name), None)
        if chosen is not None:
            return chosen
    return next((a for a in varying if a.kind == "categorical"), None)


def _select(study: Study, rows: pd.DataFrame, metric: str) -> Selection:
    a = study.analysis

    def model(d: int) -> ModelData:
        return build(rows, study.axes, d, a.factor_interactions)

    def response(md: ModelData) -> np.ndarray:
        out: np.ndarray = md.rows[metric].to_numpy(dtype="float64")
        return out

    return select(metric, model, response, a.degree)


@dataclass
class _MetricJob:
    """What every metric's part of the analysis reads (inherited by forked workers, never pickled)."""

    study: Study
    trials: pd.DataFrame
    baseline: pd.DataFrame
    baselines: Baselines
    resamples: int
    metrics: tuple[str, ...] = FIT_METRICS  # the primary first


@dataclass
class _MetricPart:
    """One metric's fits, decomposition, degree selection and best configuration, and its notes."""

    metric: str
    model: ModelData | None = None
    fits: list[Fit] = field(default_factory=list)
    variance: list[Decomposition] = field(default_factory=list)
    selection: Selection | None = None
    best: Best | None = None
    notes: list[str] = field(default_factory=list)
    relative_note: str | None = None
    seed_model: str = ""  # how its fits treat the seeds ("" when not fitted)
    seed_model_why: str = ""
    model_notes: list[str] = field(default_factory=list)  # about the model matrix (said once, by the first)
    paper_fits: list[Fit] = field(default_factory=list)  # the paper's terms, raw (ftvar.stats.paper)
    constant: float | None = None  # the value every ok trial has, when they all have the same


def _metric_part(job: _MetricJob, i: int) -> _MetricPart:
    """Everything the report shows for metric job.metrics[i], seeded by the metric (so the same in any process
    and in any order)."""
    study, trials, a = job.study, job.trials, job.study.analysis
    metric = job.metrics[i]
    seed = METRICS.index(metric)
    part = _MetricPart(metric)
    notes = part.notes
    finite = trials[metric].notna() & np.isfinite(pd.to_numeric(trials[metric], errors="coerce"))
    rows = trials.loc[finite].reset_index(drop=True)
    older = " (records written before ftvar recorded it)" if metric == "mcc" else ""
    if rows.empty:
        notes.append(f"no ok trial has a value for {METRIC_LABELS[metric]}{older}: not fitted")
        return part
    if len(rows) < len(trials):
        notes.append(
            f"{METRIC_LABELS[metric]} is missing for {len(trials) - len(rows)} of {len(trials)} ok trials"
            f"{older}: its fits use the {len(rows)} that have it"
        )
    md = part.model = build(rows, study.axes, a.degree, a.factor_interactions)
    part.model_notes = list(md.notes)
    part.seed_model, part.seed_model_why = resolve_seed_model(md, a.seed_model)
    y = rows[metric].to_numpy(dtype="float64")
    part.fits.append(fit_metric(md, y, metric, "absolute", "all", a.seed_model))
    base = job.baseline.loc[finite].reset_index(drop=True)[metric].to_numpy(dtype="float64")
    if job.baselines.n and job.baselines.shared:
        part.relative_note = (
            "relative (% change from the baseline) is the absolute fit scaled by one constant here, "
            "because every trial shares one baseline value: same directions, p-values and R², so it is "
            "not repeated"
        )
    elif job.baselines.n:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (y - base) / base * 100.0
        ok_rel = np.isfinite(rel)
        if not ok_rel.all():
            notes.append(
                f"relative {METRIC_LABELS[metric]}: {int((~ok_rel).sum())} trial(s) whose baseline is 0 or "
                "missing (e.g. the F1 of a head that predicts one class) have no relative value and are left "
                "out of the relative fit"
            )
        if ok_rel.any():
            md_rel = (
                md if ok_rel.all() else build(rows.loc[ok_rel], study.axes, a.degree, a.factor_interactions)
            )
            part.fits.append(fit_metric(md_rel, rel[ok_rel], metric, "relative", "all", a.seed_model))
    keep = ~rows["degenerate_flag"].to_numpy(dtype=bool)
    if not keep.all():
        if keep.sum() == 0:
            notes.append(f"every trial with {METRIC_LABELS[metric]} is degenerate: no fit without them")
        else:
            md_nd = build(rows.loc[keep], study.axes, a.degree, a.factor_interactions)
            part.fits.append(fit_metric(md_nd, y[keep], metric, "absolute", "non-degenerate", a.seed_model))
    if comparable(study)[0]:  # its own fits, only when the comparison is shown (they cost a fit each)
        part.paper_fits = _guard(
            notes, "the paper comparison's fits", [], partial(_paper_fits, job, rows, y, base, metric)
        )
    part.variance = _guard(
        notes,
        f"the variance decomposition of {METRIC_LABELS[metric]}",
        [],
        partial(decompose, md, y[:, None], [metric], job.resamples, seed),
    )
    sel = part.selection = _guard(
        notes,
        f"the degree selection for {METRIC_LABELS[metric]}",
        None,
        partial(_select, study, rows, metric),
    )
    degree = sel.chosen if sel is not None and sel.chosen is not None else a.degree
    md_best = md if degree == a.degree else build(rows, study.axes, degree, a.factor_interactions)
    if len(y) and float(np.ptp(y)) == 0.0:  # every trial alike (all degenerate, say): no best to name
        part.constant = float(y[0])
        notes.append(
            f"every trial has {METRIC_LABELS[metric]} {y[0]:.4g}: nothing separates the configurations, "
            "so no setting is recommended for it"
        )
    elif md_best.predictors and md_best.n > md_best.X.shape[1]:
        maximise = HIGHER_IS_BETTER[metric]
        noise = _guard(notes, "the noise estimates", None, partial(_noise, md_best, y))
        compute = partial(
            best, md_best, y, metric, maximise, degree, job.resamples, 100 + seed, search_space(study), noise
        )
        part.best = _guard(notes, f"the best configuration for {METRIC_LABELS[metric]}", None, compute)
    return part


def _paper_fits(
    job: _MetricJob, rows: pd.DataFrame, y: np.ndarray, base: np.ndarray, metric: str
) -> list[Fit]:
    """The fits of the terms the paper names, in raw units and not centred (ftvar.stats.paper): absolute, and
    relative to the baseline when that is not the absolute fit scaled."""
    study = job.study
    md = build(rows, study.axes, 1, terms_only=PAPER_TERMS, raw=True)
    out = [fit_metric(md, y, metric, "absolute", "all", "blocks")]  # seeds as blocks: no mixed-model fits
    if job.baselines.n and not job.baselines.shared:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (y - base) / base * 100.0
        ok = np.isfinite(rel)
        if ok.any():
            md_rel = md if ok.all() else build(rows.loc[ok], study.axes, 1, terms_only=PAPER_TERMS, raw=True)
            out.append(fit_metric(md_rel, rel[ok], metric, "relative", "all", "blocks"))
    return out


def search_space(study: Study) -> Space:
    """What a user can set on each axis (ftvar.stats.optimum): ranges with their rounding, integer settings,
    and whether the design is a full grid."""
    return Space(
        ranges={name: spec for name, spec in study.grid.axes if isinstance(spec, Range)},
        integer=frozenset(name for name, _ in study.grid.axes if SWEEPABLE.get(name) is int),
        grid=study.design.kind == "grid",
    )


def _noise(md: ModelData, y: np.ndarray) -> Noise | None:
    """The variances behind the best value's interval; none with a single seed (see ftvar.stats.optimum)."""
    if not md.seeds:
        return None
    return Noise(*noise_estimates(md, y))


_FORKED_JOB: _MetricJob | None = None  # the job a forked worker inherits


def _forked_part(i: int) -> _MetricPart:
    assert _FORKED_JOB is not None  # set before the pool forks
    with threadpool_limits(1):  # one BLAS thread per worker: spinning BLAS threads of 3 workers fight
        return _metric_part(_FORKED_JOB, i)


def _run_metrics(job: _MetricJob, parallel: bool) -> list[_MetricPart]:
    """Each metric's part, in job.metrics order: one forked process per metric when `parallel` (the parts are
    independent and seeded by metric, so the results are those of the serial run; a worker inherits the
    trials instead of receiving them pickled), else one after the other."""
    global _FORKED_JOB
    indices = range(len(job.metrics))
    if not parallel or not forks_safely() or (os.cpu_count() or 1) < 2:
        return [_metric_part(job, i) for i in indices]
    _FORKED_JOB = job
    try:
        with ProcessPoolExecutor(len(job.metrics), mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_forked_part, indices))
    except BrokenProcessPool:  # a worker was killed (out of memory?): one metric at a time needs a third
        return [_metric_part(job, i) for i in indices]
    finally:
        _FORKED_JOB = None


@dataclass
class Examples:
    """What the per-example part reads (ftvar.store.predictions): trial id → its sidecar, the texts of the
    eval and test rows, and the sidecars that were skipped (file, why)."""

    found: dict[str, TrialPredictions] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note: str | None = None  # why none were read


def lead_metric(study: Study) -> str:
    """The metric the report leads with: the study's primary metric (analysis.metric, or its default)."""
    return study.metric


def _family(fits: list[Fit]) -> int:
    """Holm over the findings family, the hyperparameter terms of every metric's fit of all trials together
    (absolute): each test's p_family. Returns the family's size."""
    family = [t for f in fits if f.ok and f.kind == "absolute" and f.subset == "all" for t in f.tests]
    adjusted, _ = adjust([t.p for t in family])
    for t, p in zip(family, adjusted, strict=True):
        t.p_family = p
    return len(family)


def _dropped(trials_all: pd.DataFrame, notes: list[str]) -> None:
    """Say how many trials of the design are not in the fits because they have no metric."""
    statuses = trials_all["status"].value_counts()
    parts = [f"{int(statuses[s])} {s}" for s in ("failed", "diverged") if statuses.get(s, 0)]
    if parts:
        notes.append(
            f"{' and '.join(parts)} trial(s) have no metric and are not in the fits; the failure model and "
            "expected max count them"
        )


def analyze(
    study: Study, table: pd.DataFrame, parallel: bool | None = None, examples: Examples | None = None
) -> Analysis:
    """Every part of the report on a collected table (ok trials of the current design). The metrics are
    analysed in parallel processes from PARALLEL_MIN_TRIALS trials on (`parallel` forces either way).
    `examples`: the trials' per-example predictions, for the per-example tables and the test split."""
    a = study.analysis
    notes: list[str] = []
    primary, metrics = study.metric, fitted_metrics(study.metric)
    missing = {m: np.nan for m in METRICS if m not in table.columns}
    if missing:  # a table of an older ftvar's collector
        table = table.assign(**missing)
    trials_all = table[(table["kind"] == "trial") & table["in_grid"].astype(bool)]
    _dropped(trials_all, notes)
    trials = _usable(table, study, notes)
    ran = differing(trials)
    cell = [a.name for a in study.axes if a.name in trials.columns]
    replicates = spread(trials, cell, METRICS)
    if replicates.cells:
        trials = collapse(trials, cell, (*METRICS, "train_loss", "majority_share"))
        notes.append(
            f"{replicates.runs} replicate runs of {replicates.cells} (configuration, seeds) cells enter the "
            "fits as one observation per cell, their mean (grid.replicate)"
        )
    flagged, from_acc = flags(trials)
    trials["degenerate_flag"] = flagged.to_numpy()
    near = near_flags(trials, a.near_degenerate)
    trials["near_degenerate_flag"] = near.to_numpy()
    hp_axes = hyperparameter_axes(study)
    config_cols = [x.name for x in hp_axes if x.name in trials.columns and trials[x.name].nunique() > 1]
    degenerate = summarise(trials, flagged, config_cols, from_acc, near, a.near_degenerate)
    baseline, baselines = _baseline_of(table, trials, study)

    resamples = a.bootstrap
    n_ok = max(1, len(trials))
    if resamples > BOOTSTRAP_MIN and n_ok * resamples > BOOTSTRAP_CELLS:
        resamples = max(BOOTSTRAP_MIN, BOOTSTRAP_CELLS // n_ok)
        notes.append(
            f"bootstrap: {resamples} resamples instead of analysis.bootstrap = {a.bootstrap}, to keep "
            f"{n_ok} trials fast (intervals from fewer resamples are a little rougher)"
        )
    job = _MetricJob(study, trials, baseline, baselines, resamples, metrics)
    parts = _run_metrics(job, len(trials) >= PARALLEL_MIN_TRIALS if parallel is None else parallel)
    fits = [f for part in parts for f in part.fits]
    family = _family(fits)
    models = {part.metric: part.model for part in parts if part.model is not None}
    variance = [d for part in parts for d in part.variance]
    selection = [part.selection for part in parts if part.selection is not None]
    bests = [part.best for part in parts if part.best is not None]
    constant = {part.metric: part.constant for part in parts if part.constant is not None}
    relative_note = next((part.relative_note for part in parts if part.relative_note), None)
    fitted = next((part for part in parts if part.seed_model), None)  # the first metric that was fitted
    seed_model, seed_model_why = (fitted.seed_model, fitted.seed_model_why) if fitted else ("none", "")
    notes += [note for part in parts for note in [*(part.model_notes if part is fitted else []), *part.notes]]
    by = _expected_max_axis(hp_axes, trials, a.expected_max_by)
    failed_draws = trials_all.loc[trials_all["status"].isin(["failed", "diverged"])]
    em: list[Curve] = _guard(
        notes,
        "the expected-max curves",
        [],
        partial(
            curves,
            trials,
            primary,
            by.name if by else None,
            by.label if by else None,
            failed=failed_draws,
            maximise=HIGHER_IS_BETTER.get(primary, True),
            bootstrap=min(resamples, EXPECTED_MAX_BOOTSTRAP),
        ),
    )
    paper_fits = [f for part in parts for f in part.paper_fits]
    paper = compare(study, paper_fits, baselines.shared)
    failures = _guard(
        notes, "the failure model", None, partial(model_failures, trials_all, study.axes, a.degree)
    )
    per_example, held = None, None
    chosen = next((b for b in bests if b.metric == primary), None)
    chosen_key = (
        {k: v for k, v in chosen.recommended.items() if k in config_cols} if chosen is not None else None
    )
    if examples is not None and examples.note:
        notes.append(examples.note)
    if examples is not None and examples.skipped:
        notes.append(
            f"{len(examples.skipped)} per-example prediction file(s) skipped: "
            + "; ".join(f"{Path(p).name}: {why}" for p, why in examples.skipped[:3])
        )
    if examples is not None and examples.found:
        per_example = _guard(
            notes,
            "the per-example tables",
            None,
            partial(
                analyse_examples,
                trials,
                config_cols,
                examples.found,
                examples.texts,
                primary,
                chosen_key,
                resamples,
            ),
        )
    if chosen is not None and chosen_key is not None and chosen.value_from == "trials":
        eval_value = chosen.predicted
        held = _guard(
            notes,
            "the test split's score",
            None,
            partial(
                held_out,
                trials,
                config_cols,
                chosen_key,
                examples.found if examples else {},
                primary,
                eval_value,
                resamples,
            ),
        )
    if per_example is not None:
        per_example.held_out = held
    first = models.get(primary) or next(iter(models.values()), None)
    return Analysis(
        study=study.name,
        degree=a.degree,
        seed_model=seed_model,
        seed_model_why=seed_model_why,
        predictors=[p.describe() for p in first.predictors] if first else [],
        terms=[t.name for t in first.terms] if first else [],
        baselines=baselines,
        fits=fits,
        variance=variance,
        selection=selection,
        best=bests,
        constant=constant,
        expected_max=em,
        expected_max_by=by.name if by else None,
        degenerate=degenerate,
        findings=_guard(notes, "the findings", [], partial(findings, fits, models, metrics)),
        paper=paper,
        configurations=configurations(trials_all, trials, hp_axes, primary),
        trials=trials,
        axes=study.axes,
        notes=notes,
        relative_note=relative_note,
        models=models,
        ran=ran,
        replicates=replicates,
        metric=primary,
        metrics=metrics,
        f1_average=f1_average(trials),
        family=family,
        failures=failures,
        per_example=per_example,
        held_out=held,
        paper_fits=paper_fits,
        expected_max_random=study.design.kind == "random",
    )


def f1_average(trials: pd.DataFrame) -> str | None:
    """How the trials' F1 averages over the classes (ftvar.train.engine.scores): binary F1 of the second
    label for two classes, the unweighted (macro) mean over the classes for more; None where not known."""
    if "n_labels" not in trials.columns:
        return None
    classes = pd.to_numeric(trials["n_labels"], errors="coerce").dropna()
    if classes.empty:
        return None
    return "binary" if int(classes.max()) <= 2 else "macro"
