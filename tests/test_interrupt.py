"""Interrupting a local launch (issue 21): every process it started stops, the trials in flight end as
interrupted at the step they reached, the ledger gets its line; and a trial a live process runs is never
started a second time (its `running.lock`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from ftvar.run.signals import terminated_as_interrupt
from ftvar.store.attempts import ATTEMPTS_FILE, TrialBusy, checkpoint_info
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests.helpers import fake_cache
from tests.test_write_faults import TINY

# two trials of some 1,500 steps of a tiny model, checkpointed every 0.6 s of training
LONG = """
name = "long"
[model]
tokenizer = "train"
tiny = { dim = 32, layers = 1, heads = 2 }
vocab_size = 500
[data]
synthetic = { train = 300, eval = 50 }
max_length = 32
[grid]
learning_rate = [1e-3]
batch_size = [8]
epochs = [40]
seed = [0, 1]
[train]
checkpoint_minutes = 0.01
[analysis]
baseline = "none"
"""


def pids_of(folder: Path) -> list[int]:
    """The processes whose command line names `folder` (the local jobs of a study)."""
    out = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def test_sigterm_and_sighup_unwind_like_ctrl_c() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt), terminated_as_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_interrupted_local_launch_stops_every_process_and_records_the_trials_in_flight(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """SIGTERM to `ftvar launch` (a Ctrl-C is the same path: SIGINT raises KeyboardInterrupt, and reaches the
    launch only, its workers being in sessions of their own): exit 130 with one line, no worker left, each
    trial in flight `interrupted` at its checkpoint's step, the ledger line written."""
    study_file = write_study(LONG)
    out = tmp_path / "out"
    study = load_study(str(study_file))
    paths = StudyPaths.of(out, study.name)
    tids = [t.trial_id for t in expand(study)]
    fake_cache(study, paths, n_train=300, n_eval=50)  # the launch finds its data ready
    command = ["launch", str(study_file), "--executor", "local", "--max-parallel", "2", "--out", str(out)]
    launch = subprocess.Popen(
        [sys.executable, "-m", "ftvar", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as a shell starts it: its own process group, which a Ctrl-C would signal
    )
    try:
        wait_for(lambda: all(checkpoint_info(paths.ckpt / t) for t in tids), 240, "both trials to checkpoint")
        workers = pids_of(paths.submitit)
        assert len(workers) == 6  # per job: sh -c (setup), submitit's controller, the task
        assert all(
            os.getsid(pid) != launch.pid for pid in workers
        )  # a Ctrl-C to the launch reaches no worker
        launch.send_signal(signal.SIGTERM)
        stdout, stderr = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines() == ["ftvar: interrupted"], stderr[-3000:]
    assert "stopping 2 local process(es)" in stdout and "interrupted: the trials in flight" in stdout
    assert pids_of(paths.submitit) == []  # no worker left
    for tid in tids:
        (attempt,) = json.loads((paths.ckpt / tid / ATTEMPTS_FILE).read_text())
        info = checkpoint_info(paths.ckpt / tid)
        assert info is not None and attempt["step"] == info["step"] > 0
        assert attempt["state"] == "interrupted" and attempt["reason"] == (
            f"SIGTERM (`ftvar launch` was interrupted or stopped): checkpoint at step {info['step']}"
        )
        assert not paths.record(tid).exists()
    (entry,) = [json.loads(line) for line in paths.launches.read_text().splitlines()]
    assert entry["interrupted"] is True and entry["trials"] == tids and len(entry["jobs"]) == 2


def test_a_trial_a_live_process_runs_is_never_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process runs a trial (it holds the trial's lock), a launch, a pack and run-trial leave
    it alone (a pack and run-trial once they have waited for the lock); once that process is gone (even by
    SIGKILL), the trial runs again."""
    from ftvar.run.launch import launch_study, running_elsewhere
    from ftvar.store import attempts
    from ftvar.train import pack
    from ftvar.train.runner import run_trial

    monkeypatch.setattr(attempts, "LOCK_WAIT_S", 0.5)  # 30 s: a cancelled task may still be saving

    study = load_study("smoke", TINY)
    paths = StudyPaths.of(tmp_path, study.name)
    fake_cache(study, paths, n_train=128, n_eval=32)
    trials = expand(study)
    busy = trials[0].trial_id
    hold = (
        "import sys, time; from pathlib import Path; from ftvar.store.attempts import RunningLock; "
        "RunningLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(paths.ckpt / busy)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        found = running_elsewhere(paths, trials)
        assert list(found) == [busy]
        assert re.fullmatch(rf"pid {holder.pid} on {re.escape(socket.gethostname())} since \S+", found[busy])
        console = Console(record=True, width=200)
        assert launch_study(study, tmp_path, "debug", None, {}, False, False, console) == 1
        assert f"1 trial(s) are running right now in another process (e.g. {busy}: pid {holder.pid}" in (
            console.export_text()
        )
        assert not (paths.ckpt / busy / ATTEMPTS_FILE).exists()  # not started: no attempt
        assert all(paths.record(t.trial_id).exists() for t in trials[1:])
        assert pack.run_pack(None, study, trials, paths, lanes=1) == {
            busy: "running elsewhere",
            **{t.trial_id: "ok" for t in trials[1:]},
        }
        with pytest.raises(TrialBusy, match=f"trial {busy} is running right now \\(pid {holder.pid} "):
            run_trial(study, trials[0], paths)
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    assert running_elsewhere(paths, trials) == {}
    assert run_trial(study, trials[0], paths)["status"] == "ok"
