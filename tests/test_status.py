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


def answer(states: Path, text: str) -> None:
    """What the stand-in sacct answers from now on, replaced at once (a poll never reads a half-written file,
    which it would take for tasks sacct does not know)."""
    part = states.with_suffix(".part")
    part.write_text(text)
    part.replace(states)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout, read from the pipe a byte at a time: a buffered readline may take in
    the lines after it too, where neither select() nor communicate() (which reads the pipe) sees them."""
    assert proc.stdout is not None
    fd, line = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line within {timeout} s (so far {line!r})"
        byte = os.read(fd, 1)
        assert byte, f"stdout ended within a line (so far {line!r})"
        line += byte
    return line.decode()


def test_without_a_terminal_each_change_is_one_plain_line(
    fake_slurm: tuple[dict[str, str], Path, list[str]],
) -> None:
    env, states, args = fake_slurm
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftvar", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=env,
    )
    try:
        first = read_line(proc, 30)
        assert first.rstrip().endswith("smoke: 2 trial(s): 2 pending"), first
        time.sleep(2)  # four polls without a change: no new line
        answer(states, "777_0|RUNNING\n777_1|PENDING\n")
        second = read_line(proc, 10)
        assert second.rstrip().endswith("smoke: 2 trial(s): 1 pending, 1 running"), second
        answer(states, "777_0|COMPLETED\n777_1|FAILED\n")
        third = read_line(proc, 10)
        assert third.rstrip().endswith("smoke: 2 trial(s): 2 failed")
        out, err_bytes = proc.communicate(timeout=30)
        rest, err = out.decode(), err_bytes.decode()
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


def test_a_checkpoint_that_cannot_be_read_is_never_promised_as_a_resume(tmp_path: Path) -> None:
    """status reads no torch: a checkpoint is resumable when it is a whole zip archive (torch.save's format)
    of the size its sidecar recorded; a truncated one is said to be unreadable, with no step promised."""
    import zipfile

    from ftvar.run import status

    study = load_study("smoke", ["analysis.baseline=none", "grid.learning_rate=[3e-4]", "grid.epochs=[1]"])
    paths = StudyPaths.of(tmp_path, study.name)
    good, bad = (t.trial_id for t in expand(study))
    for tid in (good, bad):
        folder = paths.ckpt / tid
        folder.mkdir(parents=True)
        with zipfile.ZipFile(folder / "state.pt", "w") as archive:
            archive.writestr("archive/data.pkl", os.urandom(4096))
        size = (folder / "state.pt").stat().st_size
        (folder / "state.json").write_text(json.dumps({"step": 253, "saved_at": "x", "bytes": size}))
        attempt = {"state": "interrupted", "reason": "SIGTERM: checkpoint at step 253", "step": 253}
        (folder / "attempts.json").write_text(json.dumps([attempt]))
    with (paths.ckpt / bad / "state.pt").open("r+b") as fh:
        fh.truncate(size // 2)
    states = {s.trial.trial_id: s for s in status.trial_states(study, paths)}
    assert states[good].resumable_from == 253
    assert status.why(paths, states[good]) == (
        "interrupted: SIGTERM: checkpoint at step 253; resumable from step 253 (`ftvar launch` resumes it)"
    )
    assert states[bad].resumable_from is None
    assert status.why(paths, states[bad]) == (
        f"interrupted: SIGTERM: checkpoint at step 253; its checkpoint {paths.ckpt / bad / 'state.pt'} is "
        f"damaged ({size // 2} of {size} bytes): the next launch starts it over"
    )


def test_thousands_of_failures_are_counted_by_reason_and_the_first_few_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled array of 1,200 tasks: status prints the counts by reason and the first 10 failures in
    full (a few dozen lines, not one table row per trial); --all prints every one."""
    from rich.console import Console

    from ftvar.run import status

    study = load_study("smoke", ["analysis.baseline=none", f"grid.seed={list(range(150))}"])
    paths = StudyPaths.of(tmp_path, study.name)
    paths.root.mkdir(parents=True)
    trials = [t.trial_id for t in expand(study)]
    entry = {"executor": "slurm", "hash": study.hash, "array_id": "777", "trials": trials}
    paths.launches.write_text(json.dumps(entry) + "\n")
    monkeypatch.setattr(status, "slurm_states", lambda ids: {f"777_{i}": "CANCELLED" for i in range(1200)})
    states = status.trial_states(study, paths)
    assert len(states) == 1200
    console = Console(record=True, width=120)
    console.print(status.render(study, paths, states, lines=2))
    text = console.export_text()
    assert len(text.splitlines()) < 80
    assert "1200 failed trials by reason" in text and "the first 10 failed trials" in text
    assert "│   1200 │ failed │ task 777_0 ended CANCELLED without a record │" in text
    assert "1190 more failed trial(s): `ftvar status smoke --all` shows every one in full" in text
    console = Console(record=True, width=120)
    console.print(status.render(study, paths, states, lines=0, show_all=True))
    text = console.export_text()
    assert all(tid in text for tid in trials) and "by reason" not in text
