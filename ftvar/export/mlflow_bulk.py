"""New MLflow runs inserted into a SQL tracking store in bulk, the rows MLflow's own store writes for them.

Hand-written because MLflow has no call that creates many runs: through its client a finished run costs
`create_run`, `log_batch` and `set_terminated`, about 36 SQL statements and 18 ms of CPU, so 10,000 trials
took three minutes. Here a thousand runs are one transaction of five multi-row INSERTs into MLflow's tables
(runs, tags, params, metrics, latest_metrics), built from the installed MLflow's table definitions
(`mlflow.store.tracking.dbmodels.models`), holding what `SqlAlchemyStore` writes for those three calls: the
run named by its `mlflow.runName` tag, user `unknown`, source `UNKNOWN`, artifacts at
`<experiment's location>/<run id>/artifacts`; keys and values checked (long values cut) by MLflow's own
validation; metric points deduplicated, NaN stored as 0 with `is_nan`, ±inf as ±max float; each key's
latest point the greatest (step, timestamp, value). One transaction per chunk: no run is half-written.

`writer` returns None, and the export goes through the client as for a tracking server, unless the store is
SQL and those five tables have exactly the columns this module was checked against (MLflow 3.17, 3.18): a
schema MLflow changes later is never written to blind. tests/test_export.py exports one study both ways and
compares everything the client reads back.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

CHUNK = 1000  # runs per transaction
UNKNOWN_USER = "unknown"  # what MlflowClient.create_run stores without an `mlflow.user` tag
RUN_NAME = "mlflow.runName"
MAX_FLOAT = 1.7976931348623157e308
KNOWN_COLUMNS = {
    "runs": {
        "run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
        "start_time", "end_time", "deleted_time", "source_version", "lifecycle_stage", "artifact_uri",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}  # fmt: skip


@dataclass
class NewRun:
    """A finished run to create: its name, times (ms), status, tags, params and metric points (key, step,
    value), every point logged at `end`, as the client path logs them."""

    name: str
    start: int
    end: int
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    points: list[tuple[str, int, float]]


class BulkRuns:
    """Buffers new runs and writes them CHUNK at a time; `flush` writes the rest, `close` lets go of the
    database (what is still buffered then is dropped: no run is half-written)."""

    def __init__(self, engine: Any, tables: dict[str, Any], experiment_id: str, location: str) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.uri import append_to_uri_path
        from mlflow.utils.validation import _validate_batch_log_data

        self._engine, self._tables = engine, tables
        self._experiment_id, self._location = int(experiment_id), location
        self._entities = (Metric, Param, RunTag)
        self._validate, self._append = _validate_batch_log_data, append_to_uri_path
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in KNOWN_COLUMNS}
        self._pending = 0

    def add(self, run: NewRun) -> None:
        """Check the run as MLflow's log_batch would (MlflowException when it refuses) and buffer its rows."""
        metric, param, tag = self._entities
        tags = {**run.tags, RUN_NAME: run.tags.get(RUN_NAME, run.name)}
        _, params, tag_list = self._validate(
            [metric(k, v, run.end, step) for k, step, v in run.points],
            [param(k, v) for k, v in run.params.items()],
            [tag(k, v) for k, v in tags.items()],
        )
        run_id = uuid.uuid4().hex
        self._rows["runs"].append(
            {
                "run_uuid": run_id,
                "name": run.name,
                "source_type": "UNKNOWN",
                "source_name": "",
                "entry_point_name": "",
                "user_id": tags.get("mlflow.user", UNKNOWN_USER),
                "status": run.status,
                "start_time": run.start,
                "end_time": run.end,
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": self._append(self._location, run_id, "artifacts"),
                "experiment_id": self._experiment_id,
            }
        )
        self._rows["tags"] += [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in tag_list]
        self._rows["params"] += [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params]
        metrics = _metric_rows(run_id, run.points, run.end)
        self._rows["metrics"] += metrics
        self._rows["latest_metrics"] += _latest(metrics)
        self._pending += 1
        if self._pending >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write the buffered runs in one transaction."""
        if not self._pending:
            return
        with self._engine.begin() as conn:
            for name, rows in self._rows.items():
                if rows:
                    conn.execute(self._tables[name].insert(), rows)
        self._rows = {name: [] for name in KNOWN_COLUMNS}
        self._pending = 0

    def close(self) -> None:
        self._engine.dispose()


def _metric_rows(run_id: str, points: list[tuple[str, int, float]], timestamp: int) -> list[dict[str, Any]]:
    """The metrics table's rows: sanitised as SqlAlchemyStore does, each identity once, in logging order."""
    rows: dict[tuple[str, int, float, bool], dict[str, Any]] = {}
    for key, step, value in points:
        is_nan = math.isnan(value)
        stored = 0.0 if is_nan else (math.copysign(MAX_FLOAT, value) if math.isinf(value) else value)
        row = {"run_uuid": run_id, "key": key, "value": stored, "timestamp": timestamp, "step": step}
        rows.setdefault((key, step, stored, is_nan), {**row, "is_nan": is_nan})
    return list(rows.values())


def _latest(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each key's latest point: the first with the greatest (step, timestamp, value), as log_batch keeps."""
    latest: dict[str, dict[str, Any]] = {}
    for row in metrics:
        seen = latest.get(row["key"])
        order = (row["step"], row["timestamp"], row["value"])
        if seen is None or order > (seen["step"], seen["timestamp"], seen["value"]):
            latest[row["key"]] = row
    return [dict(row) for row in latest.values()]


def writer(uri: str, experiment_id: str, artifact_location: str) -> BulkRuns | None:
    """A bulk writer for the SQL store at `uri`, or None when the client must write (module docstring)."""
    try:
        import sqlalchemy
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    except ImportError:
        return None
    tables = {m.__table__.name: m.__table__ for m in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)}
    if {name: {c.name for c in t.columns} for name, t in tables.items()} != KNOWN_COLUMNS:
        return None
    try:
        engine = sqlalchemy.create_engine(uri)
    except Exception:  # a URI SQLAlchemy cannot open: the client has answered it, so let the client write
        return None
    try:
        return BulkRuns(engine, tables, experiment_id, artifact_location)
    except ImportError:  # an MLflow without the validation or URI helpers this was checked with
        engine.dispose()
        return None
