"""A study as an MLflow experiment: one run per trial (params, metrics with their steps, tags), nested under
one run of the study version that holds the report's files, written from the records by one process.

- The experiment is named after the study; a SQLite store keeps its artifacts beside the database
  (`mlartifacts/`), not in the folder the command runs from.
- The study version's run (tag `ftvar.role = study`) holds the report's files (`report/`) as artifacts.
- A trial's run is named by its trial id and found again by the tag `ftvar.trial_id`; its params are the
  trial's axes and seeds (nulls left out), its metrics the final ones at the trial's last step and the
  learning curve as `curve/<metric>` over steps, its tags the study, study hash, status, kind, engine, host,
  device, SLURM ids, error, and `ftvar.record_sha256` (the record's digest); its status FINISHED for `ok`,
  FAILED otherwise; its times the record's.
- A re-export leaves a run whose digest is unchanged alone, updates a changed one in place (the metric
  points it lacks, its tags, status and end time) and only replaces it (a new run, the old one deleted)
  when its metric history holds points the record no longer has. So no trial ever has two active runs.

MLflow's SQLite store is written by one process here (never by the array's tasks: no "database is locked").
New runs go into a SQL store in bulk (`mlflow_bulk`): 10,000 in 13 s instead of 3 minutes through the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from ftvar.errors import FtvarError
from ftvar.export import mlflow_bulk
from ftvar.export.mlflow_bulk import BulkRuns, NewRun
from ftvar.export.records import (
    StudyRecords,
    curve_points,
    final_metrics,
    final_step,
    fingerprint,
    hparams,
    seconds,
)

ROLE, STUDY_ROLE = "ftvar.role", "study"
TRIAL = "ftvar.trial_id"
HASH = "ftvar.study_hash"
DIGEST = "ftvar.record_sha256"
PARENT = "mlflow.parentRunId"  # MLflow's tag for a nested run
CURVE_PREFIX = "curve/"
TERMINAL = ("FINISHED", "FAILED")
MAX_TAG = 1000  # characters of an error message kept in a tag
PAGE = 10_000  # runs per search_runs page
# MLflow's log_batch limits (per request)
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000


def default_uri(study_root: Path) -> str:
    """`sqlite:///<study folder>/mlflow.db`."""
    return f"sqlite:///{study_root.resolve() / 'mlflow.db'}"


@dataclass
class MlflowExport:
    """What `export_mlflow` did."""

    uri: str
    experiment: str
    experiment_id: str
    created: int = 0
    updated: int = 0
    replaced: int = 0
    unchanged: int = 0
    duplicates_deleted: int = 0
    report_files: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        report = f"report attached ({self.report_files} files)" if self.report_files else "no report attached"
        dupes = f", {self.duplicates_deleted} duplicate(s) deleted" if self.duplicates_deleted else ""
        return (
            f"mlflow: experiment {self.experiment!r} (id {self.experiment_id}) at {self.uri}: {self.created} "
            f"run(s) created, {self.updated} updated, {self.replaced} replaced, {self.unchanged} unchanged"
            f"{dupes}; {report}; view with `mlflow ui --backend-store-uri {self.uri}`"
        )


def _is_sql(uri: str) -> bool:
    return urlparse(uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")


def require(uri: str) -> SimpleNamespace:
    """MLflow's client and entities, or FtvarError naming the extra to install."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a login node: no usage reports unasked
    try:
        from mlflow.entities import Metric, Param, RunTag, ViewType
        from mlflow.tracking import MlflowClient

        if _is_sql(uri):  # MLflow's SQL stores (mlflow-skinny leaves these out)
            import alembic  # noqa: F401
            import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise FtvarError(f"the MLflow export needs MLflow ({exc}): pip install 'ftvar[mlflow]'") from None
    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables…"
        logging.getLogger(name).setLevel(logging.WARNING)
    return SimpleNamespace(
        MlflowClient=MlflowClient, Metric=Metric, Param=Param, RunTag=RunTag, ViewType=ViewType
    )


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """MLflow's HTTP client retries an unreachable server for minutes: while probing, once, briefly."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "15"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class Tracking:
    """A tracking store that answered: its URI, MLflow's client and entities."""

    uri: str
    client: Any
    ml: SimpleNamespace


def connect(uri: str, derived: bool = False) -> Tracking:
    """Open the tracking store and ask it one question, so that an unreachable server, a database that cannot
    be opened or an unknown scheme is one FtvarError before anything is written.

    `derived`: the store is a SQLite database that holds nothing but this export (the default one in the study
    folder), so it is written without fsync (see `_unsynced`)."""
    ml = require(uri)
    parsed = urlparse(uri)
    if derived and parsed.scheme == "sqlite":
        _unsynced(Path(parsed.path))
    try:
        with _no_retries():
            client = ml.MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises MlflowException, requests', SQLAlchemy's and OS errors alike
        raise FtvarError(
            f"cannot reach the MLflow tracking store {uri}: {exc.__class__.__name__}: {_one_line(exc)}"
        ) from None
    return Tracking(uri, client, ml)


_UNSYNCED: set[str] = set()  # SQLite files this process writes without fsync


def _unsynced(db: Path) -> None:
    """Have this process's connections to the SQLite file `db` skip fsync (`PRAGMA synchronous=OFF`).

    MLflow commits three times per run; with an fsync each, 2,000 runs took 250 s on a busy disk against 54 s
    of CPU. Without, a crash of the process still leaves the database whole (SQLite's journal is written all
    the same); a crash of the machine during the export may not, which is why only a database that holds
    nothing but what the records can make again gets this. SQLAlchemy's `connect` event is its documented
    place for per-connection pragmas; the file check keeps it off every other database."""
    import sqlalchemy

    if not _UNSYNCED:
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _skip_fsync)
    _UNSYNCED.add(str(db.resolve()))


def _skip_fsync(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        files = {row[2] for row in dbapi_connection.execute("PRAGMA database_list").fetchall()}
        if files & _UNSYNCED:
            dbapi_connection.execute("PRAGMA synchronous=OFF")


def export_mlflow(study: StudyRecords, tracking: Tracking, bulk: bool = True) -> MlflowExport:
    """Write the study's records as MLflow runs (see the module docstring). FtvarError when the store fails
    part-way: the runs written so far are whole, and running it again finishes without duplicating any.

    `bulk`: new runs go into a SQL store in bulk where `mlflow_bulk` can write its schema (the client
    otherwise; False: always the client)."""
    client = tracking.client
    writer: BulkRuns | None = None
    try:
        experiment_id = _experiment(tracking, study)
        result = MlflowExport(tracking.uri, study.study, experiment_id)
        trials, parents = _existing_runs(tracking, experiment_id, study.hash)
        parent = _parent_run(tracking, experiment_id, study, parents)
        if bulk and _is_sql(tracking.uri):
            location = client.get_experiment(experiment_id).artifact_location
            writer = mlflow_bulk.writer(tracking.uri, experiment_id, location)
        for rec in study.records:
            runs = trials.get(rec["trial_id"], [])
            for extra in runs[1:]:  # two exports at once may have made two: keep the oldest
                client.delete_run(extra.info.run_id)
                result.duplicates_deleted += 1
            _export_trial(tracking, experiment_id, parent, rec, runs[0] if runs else None, result, writer)
        if writer is not None:
            writer.flush()
        if study.report.is_dir():
            client.log_artifacts(parent, str(study.report), "report")
            result.report_files = sum(1 for p in study.report.rglob("*") if p.is_file())
        end = max(seconds(rec["finished_at"]) for rec in study.records)
        client.set_tag(parent, "ftvar.trials", str(len(study.records)))
        client.set_terminated(parent, "FINISHED", end_time=_ms(end))
    except FtvarError:
        raise
    except Exception as exc:  # the store's errors, whatever its kind (see connect)
        raise FtvarError(
            f"the MLflow export to {tracking.uri} stopped: {exc.__class__.__name__}: {_one_line(exc)}; the "
            "runs written are whole: run it again to finish (it updates them, never duplicates them)"
        ) from None
    finally:
        if writer is not None:
            writer.close()
    return result


def _ms(secs: float) -> int:
    return round(secs * 1000)


def _experiment(tracking: Tracking, study: StudyRecords) -> str:
    client = tracking.client
    found = client.get_experiment_by_name(study.study)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise FtvarError(
                f"the MLflow experiment {study.study!r} at {tracking.uri} is deleted: restore it "
                f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or remove it for good "
                "(`mlflow gc`), then export again"
            )
        return str(found.experiment_id)
    location = None
    parsed = urlparse(tracking.uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        # beside the database, not MLflow's default ./mlruns of whatever folder the command runs in
        location = (Path(parsed.path).resolve().parent / "mlartifacts").as_uri()
    tags = {
        "ftvar.study": study.study,
        "mlflow.note.content": f"ftvar study {study.study}, from {study.root}",
        "mlflow.experimentKind": "custom_model_development",  # MLflow 3's UI: runs, not GenAI traces
    }
    return str(client.create_experiment(study.study, artifact_location=location, tags=tags))


def _existing_runs(
    tracking: Tracking, experiment_id: str, study_hash: str
) -> tuple[dict[str, list[Any]], list[Any]]:
    """The experiment's active runs of this study version: trial id → runs (oldest first), and study runs."""
    trials: dict[str, list[Any]] = {}
    parents: list[Any] = []
    token = None
    while True:
        page = tracking.client.search_runs(
            [experiment_id],
            run_view_type=tracking.ml.ViewType.ACTIVE_ONLY,
            max_results=PAGE,
            order_by=["attribute.start_time ASC", "attribute.run_id ASC"],
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            if tags.get(HASH) != study_hash:
                continue
            if tags.get(ROLE) == STUDY_ROLE:
                parents.append(run)
            elif TRIAL in tags:
                trials.setdefault(tags[TRIAL], []).append(run)
        token = page.token
        if not token:
            return trials, parents


def _parent_run(tracking: Tracking, experiment_id: str, study: StudyRecords, parents: list[Any]) -> str:
    """The study version's run (created once), which holds the report and under which the trials nest."""
    for extra in parents[1:]:
        tracking.client.delete_run(extra.info.run_id)
    if parents:
        return str(parents[0].info.run_id)
    start = min(seconds(rec["started_at"]) for rec in study.records)
    tags = {ROLE: STUDY_ROLE, "ftvar.study": study.study, HASH: study.hash}
    run = tracking.client.create_run(
        experiment_id, start_time=_ms(start), tags=tags, run_name=f"{study.study} ({study.hash})"
    )
    return str(run.info.run_id)


def _tags(rec: dict[str, Any], parent: str) -> dict[str, str]:
    env, engine = rec["environment"], rec.get("engine") or {}
    error = rec["error"]
    tags = {
        TRIAL: rec["trial_id"],
        "ftvar.study": rec["study"]["name"],
        HASH: rec["study"]["hash"],
        "ftvar.status": rec["status"],
        "ftvar.kind": rec["kind"],
        "ftvar.engine": engine.get("name"),
        "ftvar.host": env.get("host"),
        "ftvar.device": env.get("device"),
        "ftvar.slurm_job_id": env.get("slurm_job_id"),
        "ftvar.slurm_array_job_id": env.get("slurm_array_job_id"),
        "ftvar.slurm_array_task_id": env.get("slurm_array_task_id"),
        "ftvar.error": error if error is None or len(error) <= MAX_TAG else error[: MAX_TAG - 3] + "...",
        DIGEST: fingerprint(rec),
        PARENT: parent,
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def _params(rec: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in hparams(rec).items()}


def _points(rec: dict[str, Any]) -> list[tuple[str, int, float]]:
    """(key, step, value) of every metric point: the curve's, then the final metrics at the last step."""
    points = [(CURVE_PREFIX + k, step, v) for step, values in curve_points(rec) for k, v in values.items()]
    step = final_step(rec)
    return points + [(k, step, v) for k, v in final_metrics(rec).items()]


def _export_trial(
    tracking: Tracking,
    experiment_id: str,
    parent: str,
    rec: dict[str, Any],
    run: Any,
    result: MlflowExport,
    writer: BulkRuns | None,
) -> None:
    client, ml = tracking.client, tracking.ml
    tags, params, points = _tags(rec, parent), _params(rec), _points(rec)
    status = "FINISHED" if rec["status"] == "ok" else "FAILED"
    end = _ms(seconds(rec["finished_at"]))
    if run is not None:
        if run.data.tags == {**run.data.tags, **tags} and run.info.status in TERMINAL:
            result.unchanged += 1
            return
        missing = _missing_points(client, run, params, points)
        if missing is not None:
            stale = [k for k in run.data.tags if k.startswith("ftvar.") and k not in tags]
            for key in stale:
                client.delete_tag(run.info.run_id, key)
            _log(
                ml,
                client,
                run.info.run_id,
                missing,
                {k: v for k, v in params.items() if k not in run.data.params},
                tags,
                end,
            )
            client.set_terminated(run.info.run_id, status, end_time=end)
            result.updated += 1
            return
        client.delete_run(run.info.run_id)
        result.replaced += 1
    else:
        result.created += 1
    start = _ms(seconds(rec["started_at"]))
    if writer is not None:
        writer.add(NewRun(rec["trial_id"], start, end, status, tags, params, points))
        return
    new = client.create_run(experiment_id, start_time=start, tags=tags, run_name=rec["trial_id"])
    _log(ml, client, new.info.run_id, points, params, {}, end)
    client.set_terminated(new.info.run_id, status, end_time=end)


def _missing_points(
    client: Any, run: Any, params: dict[str, str], points: list[tuple[str, int, float]]
) -> list[tuple[str, int, float]] | None:
    """The record's metric points the run lacks, or None when the run cannot be updated in place: a param
    with another value (MLflow never changes one) or a logged point the record does not have."""
    if any(run.data.params.get(k, v) != v for k, v in params.items()):
        return None
    logged = {
        (m.key, m.step, m.value)
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    }
    wanted = set(points)
    if not logged <= wanted:
        return None
    return [p for p in points if p not in logged]


def _log(
    ml: SimpleNamespace,
    client: Any,
    run_id: str,
    points: list[tuple[str, int, float]],
    params: dict[str, str],
    tags: dict[str, str],
    timestamp: int,
) -> None:
    """log_batch within MLflow's limits per request."""
    metrics = [ml.Metric(k, v, timestamp, step) for k, step, v in points]
    param_list = [ml.Param(k, v) for k, v in params.items()]
    tag_list = [ml.RunTag(k, v) for k, v in tags.items()]
    while metrics or param_list or tag_list:
        p, param_list = param_list[:MAX_PARAMS], param_list[MAX_PARAMS:]
        t, tag_list = tag_list[:MAX_TAGS], tag_list[MAX_TAGS:]
        room = MAX_ENTITIES - len(p) - len(t)
        m, metrics = metrics[: min(room, MAX_METRICS)], metrics[min(room, MAX_METRICS) :]
        client.log_batch(run_id, metrics=m, params=p, tags=t)
