"""The collector: a study's JSON records → one validated table, `results.parquet` and `results.csv`.

Reads `<out>/<study>/records/*.json` only (never pickles; no torch, transformers or datasets), validates
every file against the record schema, skips and lists what is corrupt, half-written, foreign or of another
study, and keeps one row per trial id: the newest `ok` record, else the newest record of any status so that
failures stay visible. Large folders are read by a pool of processes (reading and validating is CPU-bound).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from ftvar.config import Study
from ftvar.errors import FtvarError, RecordError
from ftvar.record import read_record
from ftvar.trial import StudyPaths, expand

BEFORE_AXES = ("trial_id", "kind", "status")
# the axis columns (one per axis of the study, named like it, then init_seed and order_seed) come here
AFTER_AXES = (
    "accuracy",
    "f1",
    "eval_loss",
    "train_loss",
    "degenerate",
    "majority_share",
    "n_train",
    "n_eval",
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
    "error",
    "started_at",
    "finished_at",
)
_DTYPES = {
    "batch_size": "Int64",
    "epochs": "int64",
    "init_seed": "Int64",
    "order_seed": "Int64",
    "n_train": "int64",
    "n_eval": "int64",
    "steps": "Int64",
    "requeues": "int64",
    "degenerate": "boolean",
}
FLOAT_COLUMNS = ("learning_rate", "accuracy", "f1", "eval_loss", "train_loss", "majority_share")


def axis_columns(study: Study) -> tuple[str, ...]:
    """The study's axes as table columns: the hyperparameter axes in order, then the two seeds."""
    return tuple(a.name for a in study.axes)


def columns(study: Study) -> tuple[str, ...]:
    """Every column of the results table, in order."""
    return (*BEFORE_AXES, *axis_columns(study), *AFTER_AXES, "in_grid", "file")


PARALLEL_MIN_FILES = 2000  # below this a process pool costs more than it saves

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
    """What `collect` found and wrote. `table` has one row per trial id and the columns in COLUMNS."""

    table: pd.DataFrame
    skipped: list[Skipped]
    n_files: int  # *.json files seen
    n_valid: int  # files that passed every check
    n_superseded: int  # valid records dropped because a newer (or ok) record of the same trial exists
    parquet: Path
    csv: Path
    counts: dict[str, int] = field(default_factory=dict)  # trials per status

    @property
    def n_trials(self) -> int:
        return len(self.table)

    def summary(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "none"
        return (
            f"{self.n_files} record file(s): {self.n_trials} trial(s) ({statuses}), "
            f"{len(self.skipped)} skipped, {self.n_superseded} superseded"
        )


def _row(r: dict[str, Any], path: str, axes: tuple[str, ...]) -> Row:
    """One validated record as a table row, in `columns` order (without in_grid and file)."""
    p, m, t, tp, env = r["params"], r["metrics"], r["timings"], r["throughput"], r["environment"]
    ev, engine = r.get("eval") or {}, r.get("engine") or {}
    return (
        r["trial_id"],
        r["kind"],
        r["status"],
        *(p.get(name) for name in axes),
        m["accuracy"],
        m["f1"],
        m["eval_loss"],
        m["train_loss"],
        ev.get("degenerate"),
        ev.get("majority_share"),
        r["n_train"],
        r["n_eval"],
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
        r["error"],
        r["started_at"],
        r["finished_at"],
        path,
    )


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
            rows.append(_row(rec, p, axes))
    return rows, skipped


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    size = max(1, -(-len(items) // n))
    return (items[i : i + size] for i in range(0, len(items), size))


def read_records(
    paths: list[str], name: str, hash_: str, axes: tuple[str, ...], workers: int | None = None
) -> tuple[list[Row], list[Skipped]]:
    """Read many record files, in parallel when there are enough of them to pay for the pool."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
        return _read_chunk(paths, name, hash_, axes)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    rows: list[Row] = []
    skipped: list[Skipped] = []
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_read_chunk, chunk, name, hash_, axes) for chunk in _chunks(paths, workers * 4)
        ]
        for fut in futures:
            r, s = fut.result()
            rows.extend(r)
            skipped.extend(s)
    return rows, skipped


def _in_grid(df: pd.DataFrame, study: Study, axes: tuple[str, ...]) -> pd.Series:
    """Whether each row is a trial (or baseline) of the study as it stands: its id is one of the study's
    trial ids and its params are that trial's. A record with a foreign id that repeats a trial's params is
    not in the grid (it is not the trial `ftvar launch` ran)."""
    expected = {t.trial_id: t.params() for t in expand(study)}

    def matches(row: Any) -> bool:
        want = expected.get(row.trial_id)
        if want is None:
            return False
        got = dict(zip(axes, row[3 : 3 + len(axes)], strict=True))
        return all(_same(got.get(k), want[k]) for k in axes if k in want)

    return pd.Series([matches(row) for row in df.itertuples(index=False)], index=df.index, dtype=bool)


def _same(a: Any, b: Any) -> bool:
    """A table cell equals a param value (a missing cell equals None; numbers compare as floats)."""
    missing = a is None or (not isinstance(a, str) and bool(pd.isna(a)))
    if missing or b is None:
        return missing and b is None
    if isinstance(b, int | float) and not isinstance(a, str):
        return bool(float(a) == float(b))
    return bool(a == b)


def _to_table(rows: list[Row], study: Study) -> tuple[pd.DataFrame, int]:
    """Rows → one row per trial id (prefer ok, then the newest); returns (table, n superseded)."""
    axes = axis_columns(study)
    cols = columns(study)
    df = pd.DataFrame.from_records(rows, columns=[c for c in cols if c != "in_grid"])
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
    df.insert(len(df.columns) - 1, "in_grid", _in_grid(df, study, axes))
    df = df.sort_values(["kind", *axes, "trial_id"], kind="stable", na_position="first").reset_index(
        drop=True
    )
    return df, n_before - len(df)


def replace_atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tables(table: pd.DataFrame, parquet: Path, csv: Path) -> None:
    """Write the results table as Parquet and CSV, each atomically (temp file + rename)."""
    parquet.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(parquet, lambda p: table.to_parquet(p, index=False, engine="pyarrow"))
    replace_atomic(csv, lambda p: pa_csv.write_csv(pa.Table.from_pandas(table, preserve_index=False), p))


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
    table, superseded = _to_table(rows, study)
    result = CollectResult(
        table=table,
        skipped=skipped,
        n_files=len(files),
        n_valid=len(rows),
        n_superseded=superseded,
        parquet=paths.root / "results.parquet",
        csv=paths.root / "results.csv",
        counts={str(k): int(v) for k, v in table["status"].value_counts().items()},
    )
    write_tables(table, result.parquet, result.csv)
    return result
