"""`ftvar export`: a study's records as TensorBoard runs and MLflow runs, read back with the tools' own
readers (TensorBoard's HParams plugin as its UI asks it, MLflow's client)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from ftvar.errors import FtvarError
from ftvar.export.records import read_study_records
from ftvar.export.study import export_study
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from tests import records_factory as rf
from tests.helpers import REPO, ftvar, one_error_line

try:
    import mlflow  # noqa: F401
    import tensorboard  # noqa: F401
except ImportError:  # the test extra has both, so CI has them: there this is a failure, not a skip
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("needs the test extra's tensorboard and mlflow-skinny", allow_module_level=True)

STEPS = 40


def curve(final: float) -> list[dict[str, Any]]:
    """A learning curve of 4 points whose last one agrees with the final metrics."""
    points = []
    for i in range(1, 5):
        acc = round(0.5 + (final - 0.5) * i / 4, 4)
        points.append(
            {"step": 10 * i, "epoch": i / 2, "train_loss": 0.7 - 0.05 * i, "accuracy": acc, "f1": acc - 0.01}
            | {"mcc": None if i == 1 else round(2 * acc - 1, 4), "eval_loss": 1 - acc}
        )
    return points


def make_records(study: Study) -> list[dict[str, Any]]:
    """A small study's records: trials with curves and MCC, one failed trial, one trial with an axis the
    others lack (the union must be one table), the baseline (no learning rate, batch size or order seed)."""
    records = []
    for i, (lr, ep, seed) in enumerate(
        [(1e-5, 1, 0), (1e-5, 2, 1), (2e-5, 1, 0), (2e-5, 2, 1), (5e-5, 1, 0), (5e-5, 2, 1)]
    ):
        acc = 0.6 + 0.05 * i
        if i == 4:
            rec = rf.make_record(
                study, learning_rate=lr, batch_size=16, epochs=ep, seed=seed, status="failed"
            )
            rec["curve"] = curve(acc)[:2]
        else:
            m = {
                "accuracy": acc,
                "f1": acc - 0.01,
                "eval_loss": 1 - acc,
                "train_loss": 0.5,
                "mcc": 2 * acc - 1,
            }
            rec = rf.make_record(study, learning_rate=lr, batch_size=16, epochs=ep, seed=seed, metrics=m)
            rec["curve"] = curve(acc)
        rec["steps"] = STEPS
        rec["environment"] |= {
            "slurm_job_id": f"77_{i}",
            "slurm_array_job_id": "77",
            "slurm_array_task_id": str(i),
        }
        rec["engine"] = {"name": "fast"}
        if i == 5:
            rec["params"]["train.warmup_ratio"] = 0.1
        records.append(rec)
    base = rf.make_record(study, learning_rate=None, batch_size=None, epochs=0, seed=0)
    base |= {"steps": 0, "engine": {"name": "fast"}}
    return [*records, base]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Study, Path, list[dict[str, Any]]]:
    """A study folder with its records and a report folder (one file), built once for the module."""
    out = tmp_path_factory.mktemp("export")
    study = rf.make_study("exp", lr=[1e-5, 2e-5, 5e-5], bs=[16], ep=[1, 2], seeds=[0, 1])
    records = make_records(study)
    paths = StudyPaths.of(out, study.name)
    for rec in records:
        rf.write(paths.records, rec)
    paths.report.mkdir(parents=True)
    (paths.report / "report.md").write_text("# exp\n")
    return study, out, records


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables and nothing else, made once (MLflow's migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def copy_study(study_dir: tuple[Study, Path, list[dict[str, Any]]], tmp_path: Path, db: Path) -> Path:
    """A private copy of the study folder, for a test that changes it, with the empty MLflow database
    where the export's default looks for it."""
    study, out, _ = study_dir
    shutil.copytree(out / study.name, tmp_path / study.name)
    shutil.copy(db, tmp_path / study.name / "mlflow.db")
    return tmp_path


# ------------------------------------------------------------------------------------------ TensorBoard


def hparams_plugin(logdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """What TensorBoard's HParams dashboard is given: the experiment and its session groups (the table)."""
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams.hparams_plugin import HParamsPlugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    context = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=MultiplexerDataProvider(mux, str(logdir))
    )
    apps = HParamsPlugin(context).get_plugin_apps()
    client = Client(lambda environ, start: apps[environ["PATH_INFO"]](environ, start), Response)

    def post(route: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.post(route, data=json.dumps(body), content_type="application/json")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return dict(json.loads(answer.get_data(as_text=True)))

    experiment = post("/experiment", {"experimentName": ""})
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    groups = post(
        "/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": statuses,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        },
    )
    return experiment, groups


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one run, read by TensorBoard's event accumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [
            (e.step, float(e.tensor_proto.float_val[0])) for e in acc.Tensors(tag) if e.tensor_proto.float_val
        ]
    return {k: v for k, v in out.items() if v}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # TensorBoard keeps scalars as float32


def test_tensorboard_shows_every_trial_in_one_hparams_table(study_dir: Any, tmp_path: Path) -> None:
    study, out, records = study_dir
    logdir = tmp_path / "tb"
    result = export_study(study, out, logdir, mlflow=False)
    assert result.lines[0].startswith(f"tensorboard: {len(records)} run(s) in {logdir}")

    experiment, groups = hparams_plugin(logdir)
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    axes = {"learning_rate", "batch_size", "epochs", "seed", "init_seed", "order_seed", "train.warmup_ratio"}
    assert set(infos) == axes | {"status"}  # one config: the union of the trials' axes, seeds included
    assert (
        infos["learning_rate"]["domainDiscrete"] == [1e-5, 2e-5, 5e-5] and infos["learning_rate"]["differs"]
    )
    assert infos["status"]["domainDiscrete"] == ["failed", "ok"]
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == ["accuracy", "f1", "mcc", "eval_loss", "train_loss"]

    by_trial = {g["name"]: g for g in groups["sessionGroups"]}
    assert set(by_trial) == {r["trial_id"] for r in records} and groups["totalSize"] == len(records)
    for rec in records:
        group = by_trial[rec["trial_id"]]
        want = {k: v for k, v in rec["params"].items() if v is not None} | {"status": rec["status"]}
        assert group["hparams"] == pytest.approx(want) or group["hparams"] == want
        assert group["sessions"][0]["status"] == (
            "STATUS_SUCCESS" if rec["status"] == "ok" else "STATUS_FAILURE"
        )
        got = {v["name"]["tag"]: (v["value"], v["trainingStep"]) for v in group["metricValues"]}
        final = {k: v for k, v in rec["metrics"].items() if v is not None}
        assert set(got) == set(final)
        for name, value in final.items():
            assert close(got[name][0], value) and got[name][1] == rec["steps"], name

        series = scalars(logdir / rec["trial_id"])
        for name in ("accuracy", "f1", "mcc", "eval_loss", "train_loss"):
            points = [(p["step"], p[name]) for p in rec.get("curve", []) if p.get(name) is not None]
            got_points = series.get(f"curve/{name}", [])
            assert [s for s, _ in got_points] == [s for s, _ in points], name
            assert all(close(a, b) for (_, a), (_, b) in zip(got_points, points, strict=True)), name


def test_tensorboard_reexport_rewrites_the_same_files_and_keeps_other_studies_out(
    study_dir: Any, tmp_path: Path
) -> None:
    study, out, _ = study_dir
    logdir = tmp_path / "tb"
    export_study(study, out, logdir, mlflow=False)
    first = {p: p.read_bytes() for p in sorted(logdir.rglob("*")) if p.is_file()}
    export_study(study, out, logdir, mlflow=False)
    second = {p: p.read_bytes() for p in sorted(logdir.rglob("*")) if p.is_file()}
    assert second == first  # same files, same bytes: runs updated in place, none doubled
    assert all(len(list(run.glob("*tfevents*"))) == 1 for run in logdir.iterdir() if run.is_dir())

    other = rf.make_study("other", lr=[1e-5], bs=[16], ep=[1], seeds=[0])
    rf.write(
        StudyPaths.of(out, "other").records,
        rf.make_record(other, learning_rate=1e-5, batch_size=16, epochs=1, seed=0),
    )
    with pytest.raises(FtvarError, match="holds the TensorBoard export of study 'exp'"):
        export_study(other, out, logdir, mlflow=False)
    assert {p: p.read_bytes() for p in sorted(logdir.rglob("*")) if p.is_file()} == first


# ---------------------------------------------------------------------------------------------- MLflow


def mlflow_runs(uri: str, name: str) -> tuple[Any, list[Any], dict[str, Any]]:
    """The experiment, its study run(s) and its trial runs by trial id, as MLflow's client returns them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ftvar.role") == "study"]
    trials = {r.data.tags["ftvar.trial_id"]: r for r in runs if "ftvar.trial_id" in r.data.tags}
    assert len(trials) + len(parents) == len(runs)
    return client, parents, trials


def history(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
        for k in run.data.metrics
    }


def test_mlflow_has_one_run_per_trial_with_params_metrics_tags_and_the_report(
    study_dir: Any, tmp_path: Path, empty_mlflow_db: Path
) -> None:
    study, _, records = study_dir
    out = copy_study(study_dir, tmp_path, empty_mlflow_db)
    result = export_study(study, out, None, mlflow=True)
    uri = f"sqlite:///{StudyPaths.of(out, study.name).root / 'mlflow.db'}"
    assert result.lines == [
        f"mlflow: experiment 'exp' (id 1) at {uri}: {len(records)} run(s) created, 0 updated, 0 replaced, "
        f"0 unchanged; report attached (1 files); view with `mlflow ui --backend-store-uri {uri}`"
    ]
    client, parents, trials = mlflow_runs(uri, "exp")
    assert len(parents) == 1 and set(trials) == {r["trial_id"] for r in records}
    (parent,) = parents
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")] == ["report/report.md"]
    assert parent.data.tags["ftvar.study_hash"] == study.hash and parent.info.status == "FINISHED"
    for rec in records:
        run = trials[rec["trial_id"]]
        assert (
            run.info.run_name == rec["trial_id"] and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        )
        assert run.data.params == {k: str(v) for k, v in rec["params"].items() if v is not None}
        assert run.info.status == ("FINISHED" if rec["status"] == "ok" else "FAILED")
        env = rec["environment"]
        tags = run.data.tags
        assert (tags["ftvar.status"], tags["ftvar.study_hash"], tags["ftvar.engine"]) == (
            rec["status"],
            study.hash,
            "fast",
        )
        if rec["kind"] == "trial":
            assert (tags["ftvar.host"], tags["ftvar.slurm_job_id"]) == (env["host"], env["slurm_job_id"])
        assert tags.get("ftvar.error") == rec["error"]
        want: dict[str, list[tuple[int, float]]] = {}
        for point in rec.get("curve", []):
            for k, v in point.items():
                if k not in ("step", "epoch") and v is not None:
                    want.setdefault(f"curve/{k}", []).append((point["step"], v))
        for k, v in rec["metrics"].items():
            if v is not None:
                want[k] = [(rec["steps"], v)]
        assert history(client, run) == want
    assert os.path.isdir(StudyPaths.of(out, study.name).root / "mlartifacts")  # not ./mlruns of the cwd


def test_mlflow_reexport_updates_runs_in_place_and_never_duplicates(
    study_dir: Any, tmp_path: Path, empty_mlflow_db: Path
) -> None:
    study, _, records = study_dir
    out = copy_study(study_dir, tmp_path, empty_mlflow_db)
    export_study(study, out, None, mlflow=True)
    uri = f"sqlite:///{StudyPaths.of(out, study.name).root / 'mlflow.db'}"
    client, _, before = mlflow_runs(uri, "exp")
    snapshot = {t: (r.info.run_id, r.data.params, r.data.tags, history(client, r)) for t, r in before.items()}

    again = export_study(study, out, None, mlflow=True)
    assert f"0 run(s) created, 0 updated, 0 replaced, {len(records)} unchanged" in again.lines[0]
    client, parents, after = mlflow_runs(uri, "exp")
    assert len(parents) == 1
    assert {
        t: (r.info.run_id, r.data.params, r.data.tags, history(client, r)) for t, r in after.items()
    } == snapshot

    # the failed trial is run again and succeeds: its curve goes on from where it stopped (updated in place);
    # another trial's record changes its curve (its old points would stay: the run is replaced)
    failed = next(r for r in records if r["status"] == "failed")
    fixed = rf.make_record(
        study,
        learning_rate=failed["params"]["learning_rate"],
        batch_size=16,
        epochs=failed["params"]["epochs"],
        seed=failed["params"]["seed"],
        metrics={"accuracy": 0.8, "f1": 0.79, "eval_loss": 0.2, "train_loss": 0.5},
        finished_at="2024-05-02T12:00:00.000+00:00",
    )
    fixed |= {"curve": [*failed["curve"], {"step": 30, "epoch": 1.5, "accuracy": 0.8}], "steps": STEPS}
    changed = dict(records[0]) | {
        "curve": [{**records[0]["curve"][0], "accuracy": 0.99}, *records[0]["curve"][1:]]
    }
    paths = StudyPaths.of(out, study.name)
    rf.write(paths.records, fixed)
    rf.write(paths.records, changed)
    third = export_study(study, out, None, mlflow=True)
    assert f"0 run(s) created, 1 updated, 1 replaced, {len(records) - 2} unchanged" in third.lines[0]
    client, _, now = mlflow_runs(uri, "exp")
    assert set(now) == set(before)  # one active run per trial, always
    run = now[failed["trial_id"]]
    assert run.info.run_id == before[failed["trial_id"]].info.run_id  # in place
    assert run.info.status == "FINISHED" and "ftvar.error" not in run.data.tags
    assert history(client, run)["accuracy"] == [(STEPS, 0.8)]
    assert history(client, run)["curve/accuracy"][-1] == (30, 0.8)
    assert now[records[0]["trial_id"]].info.run_id != before[records[0]["trial_id"]].info.run_id  # replaced
    assert history(client, now[records[0]["trial_id"]])["curve/accuracy"][0] == (10, 0.99)


def readback(uri: str) -> dict[str, Any]:
    """Everything MLflow's client reads back of a study's trial runs, by trial id, less what differs between
    two exports by nature (run ids, the parent's id, where the artifacts of a run id are)."""
    client, _, trials = mlflow_runs(uri, "exp")
    seen = {}
    for trial, run in trials.items():
        got = client.get_run(run.info.run_id)
        assert got.data.metrics == run.data.metrics and got.data.tags == run.data.tags  # get = search
        info = {k: v for k, v in dict(run.info).items() if k not in ("run_id", "run_uuid", "artifact_uri")}
        location = client.get_experiment(run.info.experiment_id).artifact_location
        assert run.info.artifact_uri == f"{location}/{run.info.run_id}/artifacts"
        tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}
        histories = {
            k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics
        }
        seen[trial] = (info, run.data.params, run.data.metrics, tags, histories)
    return seen


def test_the_bulk_mlflow_writer_writes_what_the_client_writes(
    study_dir: Any, tmp_path: Path, empty_mlflow_db: Path
) -> None:
    """New runs go into MLflow's SQL store in bulk (mlflow_bulk): the client reads back from them exactly
    what it reads from runs it made itself, and a re-export of either finds every run unchanged."""
    from ftvar.export import mlflow_bulk, to_mlflow

    study, out, records = study_dir
    uris = {}
    for bulk in (False, True):
        db = tmp_path / f"bulk-{bulk}.db"
        shutil.copy(empty_mlflow_db, db)
        uris[bulk] = f"sqlite:///{db}"
        tracking = to_mlflow.connect(uris[bulk])
        writer = mlflow_bulk.writer(uris[bulk], "0", "file:///nowhere")
        # a failure here means MLflow changed the tables ftvar writes in bulk: check mlflow_bulk against the
        # installed MLflow's SqlAlchemyStore, then update KNOWN_COLUMNS (the export is slow until then)
        assert writer is not None, "mlflow_bulk cannot write this MLflow's schema"
        writer.close()
        result = to_mlflow.export_mlflow(read_study_records(study, out), tracking, bulk=bulk)
        assert (result.created, result.updated, result.unchanged) == (len(records), 0, 0)
        again = to_mlflow.export_mlflow(read_study_records(study, out), tracking, bulk=not bulk)
        assert (again.created, again.updated, again.replaced, again.unchanged) == (0, 0, 0, len(records))
    assert readback(uris[True]) == readback(uris[False])


def test_the_bulk_mlflow_writer_keeps_mlflows_rules_for_odd_values(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    """NaN, ±inf, repeated and tied points, a param over MLflow's length limit (cut, as log_batch cuts it)
    and a key MLflow refuses (refused, nothing written): the same through the client and in bulk."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ftvar.export import mlflow_bulk, to_mlflow

    nan, inf = float("nan"), float("inf")
    points = [("a", 1, nan), ("a", 1, nan), ("a", 2, inf), ("b", 3, -inf), ("b", 3, 0.5), ("c", 1, 0.5)]
    points += [("c", 1, 0.5), ("c", 2, 0.75), ("c", 2, 0.25), ("d", 5, 1.0), ("d", 4, nan)]
    points += [("e", 1, nan), ("e", 1, 0.0), ("f", 1, nan), ("f", 1, 0.05)]  # NaN ranks as 0; ties: the first
    run = mlflow_bulk.NewRun(
        "t1", 1000, 2000, "FAILED", {"ftvar.x": "y"}, {"p": "1", "long": "z" * 7000}, points
    )
    seen = []
    for bulk in (False, True):
        db = tmp_path / f"odd-{bulk}.db"
        shutil.copy(empty_mlflow_db, db)
        uri = f"sqlite:///{db}"
        tracking = to_mlflow.connect(uri)
        client: Any = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("exp")
        location = client.get_experiment(experiment).artifact_location
        if bulk:
            writer = mlflow_bulk.writer(uri, experiment, location)
            assert writer is not None
            writer.add(run)
            with pytest.raises(MlflowException):
                writer.add(mlflow_bulk.NewRun("t2", 0, 1, "FINISHED", {}, {"bad key!": "1"}, []))
            writer.flush()
            writer.close()
        else:
            made = client.create_run(experiment, start_time=run.start, tags=run.tags, run_name=run.name)
            to_mlflow._log(tracking.ml, client, made.info.run_id, run.points, run.params, {}, run.end)
            client.set_terminated(made.info.run_id, run.status, end_time=run.end)
        (got,) = client.search_runs([experiment])
        histories = {
            k: sorted(
                (m.step, m.timestamp, math.isnan(m.value), 0.0 if math.isnan(m.value) else m.value)
                for m in client.get_metric_history(got.info.run_id, k)
            )
            for k in got.data.metrics
        }
        metrics = {k: "nan" if math.isnan(v) else v for k, v in got.data.metrics.items()}
        info = {k: v for k, v in dict(got.info).items() if k not in ("run_id", "run_uuid", "artifact_uri")}
        seen.append((info, got.data.params, got.data.tags, metrics, histories))
    assert seen[0] == seen[1]
    assert seen[1][3] == {"a": 1.7976931348623157e308, "b": 0.5, "c": 0.75, "d": 1.0, "e": "nan", "f": 0.05}
    assert len(seen[1][1]["long"]) == 6000 and seen[1][2]["ftvar.x"] == "y"


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_anything_is_written(study_dir: Any, tmp_path: Path) -> None:
    study, out, _ = study_dir
    empty = rf.make_study("empty", lr=[1e-5], bs=[16], ep=[1], seeds=[0])
    StudyPaths.of(tmp_path, "empty").records.mkdir(parents=True)
    with pytest.raises(FtvarError, match="no records of study 'empty'"):
        export_study(empty, tmp_path, tmp_path / "tb", mlflow=True)
    with pytest.raises(FtvarError, match="no records folder"):
        export_study(empty, tmp_path / "nowhere", tmp_path / "tb", mlflow=False)
    with pytest.raises(FtvarError, match="nothing to export to"):
        export_study(study, out, None, mlflow=False)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FtvarError, match="is not a folder"):
        export_study(study, out, blocker / "tb", mlflow=True)  # checked before the MLflow database is made

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FtvarError, match=f"cannot reach the MLflow tracking store http://127.0.0.1:{port}"):
        export_study(study, out, tmp_path / "tb", mlflow=True, mlflow_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(FtvarError, match="cannot reach the MLflow tracking store sqlite:///"):
        export_study(study, out, None, mlflow=True, mlflow_uri=f"sqlite:///{blocker}/x/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"]
    assert not (StudyPaths.of(out, study.name).root / "mlflow.db").exists()
    assert read_study_records(study, out).skipped == []


def test_the_command_exports_or_names_the_extra_to_install(study_dir: Any, tmp_path: Path) -> None:
    study, out, records = study_dir
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'name = "exp"\n[grid]\nlearning_rate = [1e-5, 2e-5, 5e-5]\nbatch_size = [16]\nepochs = [1, 2]\n'
        "seed = [0, 1]\n"
    )
    args = ["export", str(toml), "--out", str(out), "--tensorboard", str(tmp_path / "tb")]

    stub = tmp_path / "stub" / "tensorboard"  # a TensorBoard that is not installed
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named tensorboard')\n")
    path = os.pathsep.join([str(stub.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    assert "pip install 'ftvar[tensorboard]'" in one_error_line(ftvar(*args, env={"PYTHONPATH": path}))
    assert not (tmp_path / "tb").exists()

    done = ftvar(*args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"tensorboard: {len(records)} run(s) in {tmp_path / 'tb'}")
    assert len(lines) == 1
    assert study.hash in (tmp_path / "tb" / "ftvar-export.json").read_text()
