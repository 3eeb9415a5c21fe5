"""`ftvar status --watch` (issue 8, item 10): without a terminal one plain line per change, as it happens;
on a terminal a live bar, and the cursor comes back however the watch ends. SLURM's answers come from
stand-ins for sacct and squeue that read a file the test rewrites."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand

HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"


@pytest.fixture
def fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path, list[str]]:
    """(environment with fake sacct/squeue first on PATH, the states file, the args for `ftvar status`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    states = tmp_path / "states"
    (bin_dir / "sacct").write_text(f'#!/bin/sh\ncat "{states}"\n')
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sacct", "squeue"):
        (bin_dir / name).chmod(0o755)
    study = load_study("smoke", ["analysis.baseline=none", "grid.learning_rate=[3e-4]", "grid.epochs=[1]"])
    paths = StudyPaths.of(tmp_path / "out", study.name)
    paths.root.mkdir(parents=True)
    trials = [t.trial_id for t in expand(study)]
    entry = {"executor": "slurm", "hash": study.hash, "array_id": "777", "trials": trials}
    paths.launches.write_text(json.dumps(entry) + "\n")
    states.write_text("777_0|PENDING\n777_1|PENDING\n")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "COLUMNS": "120",
        "TERM": "xterm-256color",
    }
    args = [
        "--set",
        "analysis.baseline=none",
        "--set",
        "grid.learning_rate=[3e-4]",
        "--set",
        "grid.epochs=[1]",
    ]
    return (
        env,
        states,
        ["status", "smoke", *args, "--out", str(tmp_path / "out"), "--watch", "--interval", "0.5"],
    )


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return proc.stdout.readline()


def test_without_a_terminal_each_change_is_one_plain_line(
    fake_slurm: tuple[dict[str, str], Path, list[str]],
) -> None:
    env, states, args = fake_slurm
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftvar", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = read_line(proc, 30)
        assert first.rstrip().endswith("smoke: 2 trial(s): 2 pending"), first
        time.sleep(2)  # four polls without a change: no new line
        states.write_text("777_0|RUNNING\n777_1|PENDING\n")
        second = read_line(proc, 10)
        assert second.rstrip().endswith("smoke: 2 trial(s): 1 pending, 1 running"), second
        states.write_text("777_0|COMPLETED\n777_1|FAILED\n")
        third = read_line(proc, 10)
        assert third.rstrip().endswith("smoke: 2 trial(s): 2 failed")
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "\x1b[" not in first + second + third + rest  # plain text: no cursor or colour codes
    assert "COMPLETED" in rest and "FAILED" in rest  # the tables follow, with SLURM's verdicts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_on_a_terminal_the_cursor_comes_back_when_interrupted(
    fake_slurm: tuple[dict[str, str], Path, list[str]], sig: signal.Signals
) -> None:
    env, _, args = fake_slurm
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftvar", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    output = b""

    def read_for(seconds: float) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                output += chunk

    try:
        deadline = time.monotonic() + 60
        while HIDE.encode() not in output and time.monotonic() < deadline:
            read_for(0.5)
        assert HIDE.encode() in output, output.decode(errors="replace")[-2000:]
        read_for(1.5)  # a few refreshes of the live bar
        proc.send_signal(sig)
        proc.wait(timeout=30)
        read_for(1)
    finally:
        proc.kill()
        os.close(leader)
    text = output.decode(errors="replace")
    assert SHOW in text[text.rindex(HIDE) :], text[-500:]
    assert proc.returncode == 130 and "ftvar: interrupted" in text
