"""The collector: a study's JSON records → one validated table, `results.parquet` and `results.csv`.

Reads `<out>/<study>/records/*.json` only (never pickles; no torch, transformers or datasets), validates
every file against the record schema, skips and lists what is corrupt, half-written, foreign or of another
study, and keeps one row per trial id: the newest `ok` record, else the newest record of any status so that
failures stay visible. Large folders are read by a pool of processes (reading and validating is CPU-bound).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from ftvar.errors import FtvarError, RecordError
from ftvar.store.files import write_atomic
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_record
from ftvar.study.config import Study
from ftvar.study.trial import Trial, expand

BEFORE_AXES = ("trial_id", "kind", "status")
TEST_METRICS = ("accuracy", "f1", "mcc", "eval_loss")  # the held-out split's metrics: columns test_<metric>
# the axis columns (one per axis of the study, named like it, then init_seed and order_seed) come here
AFTER_AXES = (
    "accuracy",
    "f1",
    "mcc",  # NaN for records written before ftvar recorded it
    "eval_loss",
    "train_loss",
    "degenerate",
    "majority_share",
    "n_train",
    "n_eval",
    "n_labels",  # classes: F1 is binary for 2, macro for more
    "steps",
    "time_load",
    "time_train",
    "time_eval",
    "time_total",
    "train_samples_per_s",
    "train_tokens_per_s",
    "requeues",
    "host",
    "device",
    "engine",
    "precision",
    "matmul",
    "packing",
    "randomness",
    "error",
    "started_at",
    "finished_at",
    "top_class_share",
    "n_test",
    *(f"test_{m}" for m in TEST_METRICS),
)
_DTYPES = {
    "batch_size": "Int64",
    "epochs": "int64",
    "init_seed": "Int64",
    "order_seed": "Int64",
    "n_train": "int64",
    "n_eval": "int64",
    "n_labels": "Int64",
    "steps": "Int64",
    "requeues": "int64",
    "replicate": "int64",
    "degenerate": "boolean",
    "n_test": "Int64",
}
FLOAT_COLUMNS = (
    "learning_rate",
    "accuracy",
    "f1",
    "mcc",
    "eval_loss",
    "train_loss",
    "majority_share",
    "top_class_share",
    *(f"test_{m}" for m in TEST_METRICS),
)


def axis_columns(study: Study) -> tuple[str, ...]:
    """The study's axes as table columns: the hyperparameter axes in order, then the two seeds."""
    return tuple(a.name for a in study.axes)


def columns(study: Study) -> tuple[str, ...]:
    """Every column of the results table, in order."""
    return (*BEFORE_AXES, *axis_columns(study), "replicate", *AFTER_AXES, "in_grid", "file")


PARALLEL_MIN_FILES = 2000  # below this a process pool costs more than it saves
INT64 = (-(2**63), 2**63 - 1)
INT_COLUMNS = {c for c, dtype in _DTYPES.items() if dtype.lower() == "int64"} | {"seed"}
MAX_LOSS = 1e9  # no real mean cross-entropy comes near it; beyond, squares overflow the regressions

Row = tuple[Any, ...]
Skipped = tuple[str, str]  # (path, reason)


class SkippedRecordsError(FtvarError):
    """`collect --strict` found files it had to skip. The CLI should exit with `exit_code` (1)."""

    exit_code = 1

    def __init__(self, skipped: list[Skipped]) -> None:
        self.skipped = skipped
        shown = "; ".join(f"{Path(p).name}: {why}" for p, why in skipped[:5])
        more = f"; … and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        super().__init__(
            f"{len(skipped)} record file(s) were skipped ({shown}{more}); fix or remove them, "
            "or run without --strict to skip them"
        )


@dataclass
class CollectResult:
    """What `collect` found and wrote. `table` has one row per trial id, the columns `columns(study)`."""

    table: pd.DataFrame
    skipped: list[Skipped]
    n_files: int  # *.json files seen
    n_valid: int  # files that passed every check
    n_superseded: int  # valid records dropped because a newer (or ok) record of the same trial exists
    parquet: Path
    csv: Path
    counts: dict[str, int] = field(default_factory=dict)  # trials per status
    not_in_grid: list[Skipped] = field(default_factory=list)  # (file, why): kept, but in_grid is false
    missing: list[str] = field(default_factory=list)  # the study's trial ids without an ok record (yet)
    n_expected: int = 0  # the study's trials (baselines included)

    @property
    def n_trials(self) -> int:
        return len(self.table)

    def summary(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "none"
        outside = f", {len(self.not_in_grid)} not in the grid" if self.not_in_grid else ""
        missing = (
            f"; {len(self.missing)} of the study's {self.n_expected} trials have no ok record yet"
            if self.missing
            else ""
        )
        return (
            f"{self.n_files} record file(s): {self.n_trials} trial(s) ({statuses}{outside}), "
            f"{len(self.skipped)} skipped, {self.n_superseded} superseded{missing}"
        )


def _row(r: dict[str, Any], path: str, axes: tuple[str, ...]) -> Row:
    """One validated record as a table row, in `columns` order (without in_grid and file)."""
    p, m, t, tp, env = r["params"], r["metrics"], r["timings"], r["throughput"], r["environment"]
    ev, engine, ran = r.get("eval") or {}, r.get("engine") or {}, r.get("ran") or {}
    test = r.get("test") or {}
    test_metrics = test.get("metrics") or {}
    return (
        r["trial_id"],
        r["kind"],
        r["status"],
        *(p.get(name) for name in axes),
        p.get("replicate") or 0,
        m["accuracy"],
        m["f1"],
        m.get("mcc"),
        m["eval_loss"],
        m["train_loss"],
        ev.get("degenerate"),
        ev.get("majority_share"),
        r["n_train"],
        r["n_eval"],
        len(r["label_names"]) or None,
        r.get("steps"),
        t["load"],
        t["train"],
        t["eval"],
        t["total"],
        tp["train_samples_per_s"],
        tp["train_tokens_per_s"],
        (r.get("resume") or {}).get("requeues", 0),
        env["host"],
        env["device"],
        engine.get("name"),
        ran.get("precision"),
        ran.get("matmul"),
        ran.get("packing"),
        ran.get("randomness"),
        r["error"],
        r["started_at"],
        r["finished_at"],
        _top_share(ev.get("pred_counts")),
        test.get("n"),
        *(test_metrics.get(m) for m in TEST_METRICS),
        path,
    )


def _top_share(counts: Any) -> float | None:
    """The share of the eval rows predicted as the most predicted class (near-degenerate runs: ≥ 0.95)."""
    if not isinstance(counts, list) or not counts or sum(counts) <= 0:
        return None
    return float(max(counts) / sum(counts))


def _read_chunk(
    paths: list[str], name: str, hash_: str, axes: tuple[str, ...]
) -> tuple[list[Row], list[Skipped]]:
    """Read and check record files; a worker's unit of work (module level so it pickles)."""
    rows: list[Row] = []
    skipped: list[Skipped] = []
    for p in paths:
        try:
            rec = read_record(Path(p))
        except RecordError as exc:
            skipped.append((p, str(exc)))
            continue
        study = rec["study"]
        if study["name"] != name:
            skipped.append((p, f"record of study {study['name']!r}, not {name!r}"))
        elif study["hash"] != hash_:
            skipped.append(
                (
                    p,
                    f"record of study hash {study['hash']}, not {hash_}: model, data or "
                    "training settings differ; it is never mixed in",
                )
            )
        else:
            too_big = _out_of_range(rec)
            if too_big:
                skipped.append((p, f"{too_big} is out of range (a 64-bit integer); not a real trial"))
                continue
            loss = next(
                (k for k in ("eval_loss", "train_loss") if abs(rec["metrics"][k] or 0) > MAX_LOSS), None
            )
            if loss:
                skipped.append(
                    (p, f"metrics.{loss} = {rec['metrics'][loss]:g} is beyond any real loss (> {MAX_LOSS:g})")
                )
                continue
            rows.append(_row(rec, p, axes))
    return rows, skipped


def _out_of_range(rec: dict[str, Any]) -> str | None:
    """The first integer field that a 64-bit table column cannot hold (the schema bounds only the minimum;
    the parser reads an integer beyond 64 bits as a float, as JSON Schema's integers may be)."""
    fields = {f"params.{k}": v for k, v in rec["params"].items()}
    fields |= {k: rec.get(k) for k in ("n_train", "n_eval", "steps")}
    fields["resume.requeues"] = (rec.get("resume") or {}).get("requeues")
    for name, value in fields.items():
        integral = isinstance(value, int) or (name.split(".")[-1] in INT_COLUMNS and isinstance(value, float))
        if integral and not INT64[0] <= value <= INT64[1]:
            return f"{name} = {int(value)}"
    return None


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    size = max(1, -(-len(items) // n))
    return (items[i : i + size] for i in range(0, len(items), size))


def forks_safely() -> bool:
    """Whether worker processes may be forked (the record readers', the analysis'): on Linux; macOS' system
    libraries are not fork-safe once loaded."""
    return sys.platform.startswith("linux")


def read_records(
    paths: list[str], name: str, hash_: str, axes: tuple[str, ...], workers: int | None = None
) -> tuple[list[Row], list[Skipped]]:
    """Read many record files, in parallel when there are enough of them to pay for the pool."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
        return _read_chunk(paths, name, hash_, axes)
    ctx = multiprocessing.get_context("fork" if forks_safely() else "spawn")
    rows: list[Row] = []
    skipped: list[Skipped] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_read_chunk, chunk, name, hash_, axes) for chunk in _chunks(paths, workers * 4)
            ]
            for fut in futures:
                r, s = fut.result()
                rows.extend(r)
                skipped.extend(s)
    except BrokenProcessPool:  # killed, or crashed on a file: reading it here could crash this process too
        raise FtvarError(
            f"a record reader process died while reading {len(paths)} record files (killed, e.g. for memory, "
            "or crashed by a file); run it again, and if it dies again see `dmesg` for what killed it, or "
            "look for a damaged file among the newest records"
        ) from None
    return rows, skipped


def _key(value: Any) -> Any:
    """A param as a comparable key: numbers as floats, missing values (None, NaN, NA) as None."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    """Element-wise equality of two param columns, numbers as floats, missing equal to missing."""
    try:
        x, y = a.astype("float64"), b.astype("float64")
    except (TypeError, ValueError):
        x, y = a.astype(object), b.astype(object)
    same: pd.Series = (x == y) | (x.isna() & y.isna())
    return same.fillna(False).astype(bool)


def grid_membership(df: pd.DataFrame, study: Study) -> tuple[pd.Series, list[str | None]]:
    """Whether each row is a trial of the current grid, and why not: its trial id must be one of the study's
    trial ids (ftvar.study.trial.expand) and its params those of that trial. A record under another id that
    repeats a grid trial's params is not in the grid (no trial counts twice). The baseline is in the grid
    when the study runs one."""
    trials = expand(study)
    keys = list(trials[0].params()) if trials else []
    names = [k for k in keys if k in df.columns]
    fields = [f.name for f in dataclasses.fields(Trial) if f.name != "trial_id"]

    def params(t: Trial) -> list[Any]:  # Trial.params() (dataclasses.asdict) is slow for 100,000 trials
        return [getattr(t, k) for k in names] if keys == fields else [t.params()[k] for k in names]

    wanted = pd.DataFrame(
        [[t.trial_id, t.is_baseline, *params(t)] for t in trials], columns=["trial_id", "_baseline", *names]
    )
    m = df[["trial_id", "kind", *names]].merge(wanted, on="trial_id", how="left", suffixes=("", "_want"))
    known = m["_baseline"].notna().to_numpy()
    baseline = m["_baseline"].fillna(False).astype(bool).to_numpy()
    kind_ok = m["kind"].eq("baseline").to_numpy() == baseline
    params_ok = np.ones(len(m), dtype=bool)
    for name in names:
        params_ok &= _same(m[name], m[f"{name}_want"]).to_numpy()
    flags = known & kind_ok & (baseline | params_ok)
    reasons: list[str | None] = [None] * len(m)
    outside = np.flatnonzero(~flags)
    if len(outside):
        by_params = {tuple(map(_key, params(t))): t.trial_id for t in trials if not t.is_baseline}
        for i in outside:
            row = m.iloc[i]
            if not known[i]:
                twin = by_params.get(tuple(_key(row[k]) for k in names)) if row["kind"] == "trial" else None
                reasons[i] = "its trial id is not one of the study's trials" + (
                    f" (it repeats the params of grid trial {twin}, which alone counts)" if twin else ""
                )
            elif not kind_ok[i]:
                reasons[i] = f"kind {row['kind']!r} does not match trial {row['trial_id']}"
            else:
                reasons[i] = f"its params are not those of trial {row['trial_id']}"
    return pd.Series(flags, index=df.index, dtype=bool), reasons


def _to_table(rows: list[Row], study: Study) -> tuple[pd.DataFrame, int, list[Skipped]]:
    """Rows → one row per trial id (prefer ok, then the newest); returns the table, how many rows were
    superseded, and (file, why) for every row that is not in the grid."""
    axes = axis_columns(study)
    df = pd.DataFrame.from_records(rows, columns=[c for c in columns(study) if c != "in_grid"])
    for col, dtype in _DTYPES.items():
        if col in df.columns:
            df[col] = df[col].astype(dtype)
    for col in FLOAT_COLUMNS:
        df[col] = df[col].astype("float64")
    for a in study.axes:  # numeric axes as numbers (a column of Nones would be object)
        if a.kind != "categorical" and a.name not in _DTYPES and a.name not in FLOAT_COLUMNS:
            df[a.name] = pd.to_numeric(df[a.name], errors="coerce")
    n_before = len(df)
    if not df["trial_id"].is_unique:  # only when several files hold one trial id (never with <id>.json names)
        finished = pd.to_datetime(df["finished_at"], utc=True, format="ISO8601")
        order = pd.DataFrame({"ok": df["status"].eq("ok"), "finished": finished})
        df = df.iloc[order.sort_values(["ok", "finished"], kind="stable").index]
        df = df.drop_duplicates("trial_id", keep="last")
    in_grid, reasons = grid_membership(df, study)
    outside = [(f, why) for f, why in zip(df["file"], reasons, strict=True) if why is not None]
    df.insert(len(df.columns) - 1, "in_grid", in_grid)
    df = df.sort_values(["kind", *axes, "trial_id"], kind="stable", na_position="first").reset_index(
        drop=True
    )
    return df, n_before - len(df), sorted(outside)


def write_tables(table: pd.DataFrame, parquet: Path, csv: Path) -> None:
    """Write the results table as Parquet and CSV, each atomically (ftvar.store.files)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    write_atomic(parquet, lambda fh: table.to_parquet(fh, index=False, engine="pyarrow"))
    write_atomic(csv, lambda fh: pa_csv.write_csv(arrow, fh))


def collect(study: Study, out: Path, strict: bool = False, workers: int | None = None) -> CollectResult:
    """Read, check and tabulate a study's records; write `results.parquet` and `results.csv`.

    Raises FtvarError when the records folder does not exist, SkippedRecordsError (exit code 1) when
    `strict` and any file had to be skipped (nothing is written then).
    """
    paths = StudyPaths.of(out, study.name)
    if not paths.records.is_dir():
        raise FtvarError(
            f"no records folder {paths.records}: run `ftvar launch {study.name}` first "
            "(or pass the --out the study was launched with)"
        )
    files = sorted(str(p) for p in paths.records.glob("*.json"))
    rows, skipped = read_records(files, study.name, study.hash, axis_columns(study), workers)
    skipped.sort()
    if strict and skipped:
        raise SkippedRecordsError(skipped)
    table, superseded, outside = _to_table(rows, study)
    result = CollectResult(
        table=table,
        skipped=skipped,
        n_files=len(files),
        n_valid=len(rows),
        n_superseded=superseded,
        parquet=paths.root / "results.parquet",
        csv=paths.root / "results.csv",
        counts={str(k): int(v) for k, v in table["status"].value_counts().items()},
        not_in_grid=outside,
    )
    ok = set(table.loc[(table["status"] == "ok") & table["in_grid"], "trial_id"])
    expected = [t.trial_id for t in expand(study)]
    result.missing, result.n_expected = [tid for tid in expected if tid not in ok], len(expected)
    try:
        write_tables(table, result.parquet, result.csv)
    except OSError as exc:
        raise FtvarError(f"cannot write {result.parquet}: {exc.strerror or exc} (check --out)") from None
    return result
