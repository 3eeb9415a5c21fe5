"""Local sweeps end to end: the smoke study through submitit's LocalExecutor, re-launch, retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from ftvar.store import record
from ftvar.store.paths import StudyPaths
from ftvar.store.schema import json_schema
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests.helpers import ftvar


@pytest.mark.slow
def test_smoke_study_end_to_end_then_nothing_to_do(tmp_path: Path) -> None:
    out = ftvar("launch", "smoke", "--executor", "local", "--report-after", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study("smoke")
    paths = StudyPaths.of(tmp_path, "smoke")
    trials = expand(study)
    assert len(trials) == 9
    schema = json_schema()
    accuracies = []
    for trial in trials:
        rec = record.read_record(paths.record(trial.trial_id))
        jsonschema.validate(rec, schema)
        assert rec["status"] == "ok" and rec["study"]["hash"] == study.hash
        assert rec["params"] == trial.params()
        accuracies.append(rec["metrics"]["accuracy"])
    # learnable but not trivial: hyperparameters matter, and the best trials learn the task
    assert max(accuracies) > 0.7
    assert max(accuracies) - min(accuracies) > 0.15
    assert "smoke: 9 trial(s)" in out.stdout
    report = paths.report
    for name in (
        "report.json",
        "report.md",
        "report.html",
        "accuracy_by_hyperparameter.png",
        "accuracy_heatmaps.png",
        "fit_accuracy_absolute.png",
    ):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((report / "report.json").read_text())
    assert {f["metric"] for f in summary["fits"]} == {"accuracy", "f1", "eval_loss"}
    assert "data:image/png;base64," in (report / "report.html").read_text()
    mtimes = {p.name: p.stat().st_mtime_ns for p in paths.records.iterdir()}
    again = ftvar("launch", "smoke", "--executor", "local", "--out", str(tmp_path))
    assert again.returncode == 0
    assert "nothing to run" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in paths.records.iterdir()} == mtimes
    launches = [json.loads(line) for line in paths.launches.read_text().splitlines()]
    assert len(launches) == 1 and launches[0]["executor"] == "local" and len(launches[0]["trials"]) == 9


def test_failed_trials_are_retried_and_ok_ones_skipped(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    first = ftvar("launch", str(study_file), "--executor", "debug", "--out", str(tmp_path / "out"))
    assert first.returncode == 0, first.stderr[-2000:]
    study = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path / "out", study.name)
    victim = next(t for t in expand(study) if not t.is_baseline)
    rec = json.loads(paths.record(victim.trial_id).read_text())
    rec.update(status="failed", error="RuntimeError: simulated", metrics=dict.fromkeys(rec["metrics"]))
    record.write_record(paths.record(victim.trial_id), rec)
    second = ftvar(
        "launch",
        str(study_file),
        "--executor",
        "local",
        "--max-parallel",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "running 1 trial(s), skipping 3 with ok records" in " ".join(second.stdout.split())
    assert record.read_status(paths.record(victim.trial_id)) == "ok"


def test_a_launch_never_mixes_study_versions(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    study_file = write_study()
    assert (
        ftvar(
            "run-trial",
            str(study_file),
            "--trial",
            "baseline",
            "--set",
            "grid.seed=[0]",
            "--out",
            str(tmp_path / "o"),
        ).returncode
        == 0
    )
    changed = ftvar(
        "launch", str(study_file), "--set", "train.weight_decay=0.5", "--out", str(tmp_path / "o")
    )
    assert changed.returncode == 2
    assert "another version of study 'tiny'" in changed.stderr
    assert len(list((tmp_path / "o" / "tiny" / "records").iterdir())) == 1


def test_launch_exit_code_is_1_when_a_trial_diverges(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    out = ftvar(
        "launch",
        str(study_file),
        "--executor",
        "debug",
        "--set",
        "grid.learning_rate=[1e4]",
        "--set",
        "grid.seed=[0]",
        "--set",
        "analysis.baseline=none",
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 1
    assert "diverged" in out.stdout
