"""Progress is never lost (issue 8, items 1, 2, 3, 13), without a cluster: periodic checkpoints survive a
SIGKILL, a failed trial keeps its checkpoint and the next (local) launch resumes it bit for bit, every attempt
is kept in the final record, and checkpoints load with weights_only=True."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ftvar.data.prepare import prepare
from ftvar.store import record
from ftvar.store.attempts import AttemptLog, checkpoint_info
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from ftvar.train import checkpoint
from tests import helpers

OVERRIDES = [
    "data.synthetic.train=400",
    "data.synthetic.eval=100",
    "model.tiny.dim=32",
    "grid.batch_size=[16]",
    "grid.epochs=[3]",
    "grid.learning_rate=[3e-3]",
    "analysis.baseline=none",
]
SETS = [arg for item in OVERRIDES for arg in ("--set", item)]
# every run uses as many threads as the local executor gives a single job, so that they are bit-comparable
THREADS = {"FTVAR_THREADS": str(os.cpu_count() or 1), "COLUMNS": "250"}


def ftvar(*args: str) -> subprocess.CompletedProcess[str]:
    return helpers.ftvar(*args, env=THREADS)


# runs the trial as a local job would (run_trial, no signal handling); `fault` decides what happens at the
# first step boundary at or after step {after} that follows a periodic checkpoint
CHILD = """
import os, signal, sys
from ftvar.study.config import load_study
from ftvar.train.runner import run_trial
from ftvar.train.checkpoint import Resumable
from ftvar.store.paths import StudyPaths
from ftvar.study.trial import expand

class UncompletedJobError(Exception):  # submitit's, when a task timed out more often than it may be requeued
    pass

original = Resumable.at_step_boundary

def at_step_boundary(self):
    saved = original(self)
    if saved and self.saved_step >= {after}:
        {fault}
    return saved

Resumable.at_step_boundary = at_step_boundary
study = load_study("smoke", {overrides!r})
run_trial(study, expand(study)[0], StudyPaths.of({out!r}, study.name))
"""
FAULTS = {
    "sigkill": "os.kill(os.getpid(), signal.SIGKILL)",
    "crash": "raise RuntimeError('CUDA error: an illegal memory access was encountered (simulated)')",
    "time_limit": "raise UncompletedJobError('Job not requeued because: timed-out too many times.')",
    "ctrl_c": "raise KeyboardInterrupt",
}


def run_child(out: Path, fault: str, after: int = 30, **env: str) -> subprocess.CompletedProcess[str]:
    overrides = [*OVERRIDES, "train.checkpoint_minutes=0.0002"]  # about every 12 ms of training
    script = textwrap.dedent(CHILD).format(
        after=after, fault=FAULTS[fault], overrides=overrides, out=str(out)
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **THREADS, **env},
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The trial's record when nothing goes wrong (the reference for bit-exact resumes)."""
    out = tmp_path_factory.mktemp("reference")
    launch = ftvar("launch", "smoke", *SETS, "--executor", "debug", "--out", str(out))
    assert launch.returncode == 0, launch.stderr[-3000:]
    study = load_study("smoke", OVERRIDES)
    return record.read_record(StudyPaths.of(out, study.name).record(expand(study)[0].trial_id))


def setup(tmp_path: Path) -> tuple[StudyPaths, str]:
    study = load_study("smoke", OVERRIDES)
    paths = StudyPaths.of(tmp_path, study.name)
    prepare(study, paths)
    return paths, expand(study)[0].trial_id


def test_a_hard_kill_loses_at_most_the_time_since_the_last_periodic_checkpoint(
    tmp_path: Path, uninterrupted: dict[str, object]
) -> None:
    paths, tid = setup(tmp_path)
    killed = run_child(tmp_path, "sigkill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not paths.record(tid).exists()
    info = checkpoint_info(paths.ckpt / tid)
    assert info is not None and info["reason"] == "periodic" and 30 <= info["step"] < 75
    state = torch.load(paths.ckpt / tid / "state.pt", weights_only=True)  # item 13: tensors and plain values
    assert state["step"] == info["step"]
    attempts = json.loads((paths.ckpt / tid / "attempts.json").read_text())
    assert [a["state"] for a in attempts] == ["running"] and attempts[0]["step"] == info["step"]

    # the next launch (local executor) resumes from the periodic checkpoint, bit for bit
    relaunch = ftvar("launch", "smoke", *SETS, "--executor", "local", "--out", str(tmp_path))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    rec = record.read_record(paths.record(tid))
    assert rec["status"] == "ok" and rec["resume"]["resumed_from_step"] == info["step"]
    assert rec["metrics"] == uninterrupted["metrics"] and rec["steps"] == 75
    assert [a["state"] for a in rec["attempts"]] == ["lost", "ok"]
    lost = rec["attempts"][0]
    assert lost["step"] == info["step"] and "SIGKILL" in lost["reason"] and lost["finished_at"]
    assert not (paths.ckpt / tid).exists()  # an ok record removes the checkpoint


def test_a_failed_trial_keeps_its_checkpoint_and_the_next_launch_resumes_it(
    tmp_path: Path, uninterrupted: dict[str, object]
) -> None:
    paths, tid = setup(tmp_path)
    crashed = run_child(tmp_path, "crash", after=40)
    assert crashed.returncode == 0, crashed.stderr[-3000:]
    rec = record.read_record(paths.record(tid))
    assert rec["status"] == "failed" and "illegal memory access" in rec["error"]
    info = checkpoint_info(paths.ckpt / tid)
    assert info is not None and info["step"] >= 40  # a failed record never removes the checkpoint

    status = ftvar("status", "smoke", *SETS, "--out", str(tmp_path))
    assert f"resumable from step {info['step']}" in " ".join(status.stdout.split())

    relaunch = ftvar("launch", "smoke", *SETS, "--executor", "local", "--out", str(tmp_path))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    rec = record.read_record(paths.record(tid))
    assert rec["status"] == "ok" and rec["resume"]["resumed_from_step"] == info["step"]
    assert rec["metrics"] == uninterrupted["metrics"]
    assert [(a["state"], a["step"]) for a in rec["attempts"]] == [("failed", info["step"]), ("ok", 75)]
    assert "illegal memory access" in rec["attempts"][0]["reason"]


def test_a_time_limit_says_how_often_it_was_requeued_and_where_it_resumes(tmp_path: Path) -> None:
    """submitit gives up after max_num_timeout requeues by raising in the USR2 handler: the record says
    so, keeps the checkpoint, and `status` shows it (the SLURM test does the same on the dev cluster)."""
    paths, tid = setup(tmp_path)
    out = run_child(tmp_path, "time_limit", after=20, SLURM_RESTART_COUNT="3")
    assert out.returncode == 0, out.stderr[-3000:]
    rec = record.read_record(paths.record(tid))
    step = checkpoint.saved_step(paths.ckpt / tid)
    assert step is not None and step >= 20
    assert rec["status"] == "failed"
    assert rec["error"] == (
        f"time limit, requeued 3 times, resumable from step {step} "
        "(checkpoint kept; `ftvar launch` resumes it)"
    )
    status = ftvar("status", "smoke", *SETS, "--out", str(tmp_path))
    assert status.returncode == 1
    assert f"time limit, requeued 3 times, resumable from step {step}" in " ".join(status.stdout.split())


def test_ctrl_c_of_a_local_run_is_an_interrupted_attempt_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    paths, tid = setup(tmp_path)
    out = run_child(tmp_path, "ctrl_c", after=20)
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr
    assert not paths.record(tid).exists()
    info = checkpoint_info(paths.ckpt / tid)
    assert info is not None and info["step"] >= 20
    attempts = json.loads((paths.ckpt / tid / "attempts.json").read_text())
    assert [a["state"] for a in attempts] == ["interrupted"] and "Ctrl-C" in attempts[0]["reason"]


def test_a_diverged_record_removes_the_checkpoint(tmp_path: Path) -> None:
    study = load_study("smoke", [*OVERRIDES, "grid.learning_rate=[1e4]"])
    paths = StudyPaths.of(tmp_path, study.name)
    (trial,) = expand(study)
    folder = paths.ckpt / trial.trial_id
    folder.mkdir(parents=True)
    (folder / "attempts.json").write_text("[]")
    from ftvar.train.runner import run_trial

    rec = run_trial(study, trial, paths, prepare_if_missing=True)
    assert rec["status"] == "diverged" and not folder.exists()
    assert [a["state"] for a in rec["attempts"]] == ["diverged"]


def test_periodic_checkpoints_follow_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: now[0])
    step = [0]
    resumable = checkpoint.Resumable(tmp_path / "ckpt", every_s=300)
    resumable.attempts = AttemptLog.begin(tmp_path / "ckpt", tmp_path / "no-record.json")
    assert resumable.at_step_boundary() is False  # no training state yet
    resumable.set_snapshot(lambda: {"step": step[0], "weights": torch.arange(step[0] + 1.0)})
    saved_at = []
    for i in range(1, 13):  # one step a minute
        now[0] += 60
        step[0] = i
        if resumable.at_step_boundary():
            saved_at.append(i)
    assert saved_at == [5, 10]
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert state["step"] == 10 and state["weights"].tolist() == [float(x) for x in range(11)]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    attempts = json.loads((tmp_path / "ckpt" / "attempts.json").read_text())
    assert attempts[-1]["state"] == "running" and attempts[-1]["step"] == 10
    assert resumable.save("SIGTERM") is True  # a signal saves whatever the clock says
    attempts = json.loads((tmp_path / "ckpt" / "attempts.json").read_text())
    assert (
        attempts[-1]["state"] == "interrupted" and attempts[-1]["reason"] == "SIGTERM: checkpoint at step 12"
    )
    off = checkpoint.Resumable(tmp_path / "off", every_s=0)
    off.set_snapshot(lambda: {"step": 1})
    now[0] += 10_000
    assert off.at_step_boundary() is False  # checkpoint_minutes = 0: signals only


def test_the_sigterm_of_a_requeue_keeps_the_sigusr2_reason(tmp_path: Path) -> None:
    """A time limit's SIGUSR2 saves and asks for a requeue; SLURM's requeue then sends SIGTERM, sometimes
    before the process has exited (seen on the dev cluster). The attempt keeps SIGUSR2 as its reason and the
    checkpoint is not written twice; once a step has run, a signal saves again."""
    step = [7]
    resumable = checkpoint.Resumable(tmp_path / "ckpt")
    resumable.attempts = AttemptLog.begin(tmp_path / "ckpt", tmp_path / "no-record.json")
    resumable.set_snapshot(lambda: {"step": step[0]})
    assert resumable.save("SIGUSR2 (time limit or preemption)") is True
    written = (tmp_path / "ckpt" / "state.pt").stat().st_mtime_ns
    assert resumable.save("SIGTERM (scancel, requeue, preemption or the time limit)") is True
    assert (tmp_path / "ckpt" / "state.pt").stat().st_mtime_ns == written
    attempts = json.loads((tmp_path / "ckpt" / "attempts.json").read_text())
    assert attempts[-1]["reason"] == "SIGUSR2 (time limit or preemption): checkpoint at step 7"
    assert checkpoint_info(tmp_path / "ckpt")["reason"].startswith("SIGUSR2")  # type: ignore[index]
    step[0] = 8
    resumable.at_step_boundary()
    assert resumable.save("SIGTERM") is True
    attempts = json.loads((tmp_path / "ckpt" / "attempts.json").read_text())
    assert attempts[-1]["reason"] == "SIGTERM: checkpoint at step 8"


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.standard_normal()), torch.rand(1).item())
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    checkpoint.set_rng_state(loaded)
    assert (random.random(), float(np.random.standard_normal()), torch.rand(1).item()) == expected


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_an_unreadable_checkpoint_is_ignored_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"not a checkpoint")
    assert checkpoint.load(folder) is None
    assert "ignoring checkpoint" in capsys.readouterr().err
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("code ran",))

    (folder / "state.pt").write_bytes(pickle.dumps({"step": 1, "x": Evil()}))
    assert checkpoint.load(folder) is None  # weights_only=True: a file on shared storage cannot run code
    assert "code ran" not in capsys.readouterr().out
