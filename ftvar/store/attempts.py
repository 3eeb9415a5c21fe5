"""A trial's attempts: how each run of it ended, kept across retries until its final record.

Every run of a trial is an attempt. Its outcome — ok, failed, diverged, interrupted (a signal: SIGTERM or
SIGUSR2, with a checkpoint saved), lost (the task died without a word: SIGKILL, out of memory, node failure) —
goes into `<out>/<study>/ckpt/<trial_id>/attempts.json` as it happens, and every record carries the whole
list (`attempts`), so a retry never erases what happened before. The checkpoint's sidecar `state.json` (step,
time and size of the last save) lives beside it. Plain JSON, no torch: `ftvar status` reads both.

A running attempt holds `running.lock` in the same folder (`flock`, released by the kernel however its
process ends): a launch, a task or `run-trial` never starts a trial whose lock a live process holds, so a
trial never trains twice at once, and an attempt still marked running without a holder is known dead.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from ftvar.errors import FtvarError
from ftvar.store.files import (
    WriteFailed,
    flock_waiting,
    load_json,
    rewrite_in_place,
    write_atomic,
    write_failed,
    write_holder,
)
from ftvar.store.record import utc_now

ATTEMPTS_FILE = "attempts.json"
STATE_FILE = "state.json"  # the checkpoint's sidecar: {"step", "saved_at", "reason", "bytes"}
RUNNING_LOCK = "running.lock"
# a trial's lock is retried this long before the trial counts as running elsewhere: a launch may be testing it
# at that moment, or the process of a cancelled task still saving its checkpoint before it exits
LOCK_WAIT_S = 30.0
STATES = ("ok", "failed", "diverged", "interrupted", "lost", "running")
LOST = (
    "ended without a word: killed (SIGKILL, out of memory, node failure or a hard time-limit kill) "
    "before it could write a record, or its files could not be written (see its log)"
)


def checkpoint_info(folder: Path) -> dict[str, Any] | None:
    """The step and time of a trial's last checkpoint, or None when it has none it can resume from."""
    info = load_json(folder / STATE_FILE)
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        return None
    return info if checkpoint_problem(folder, info) is None else None


def checkpoint_problem(folder: Path, info: dict[str, Any] | None = None) -> str | None:
    """Why a trial's checkpoint cannot be resumed from (in words), or None when it can or there is none.
    Without torch: the size `state.json` recorded must match, and the file must be a whole zip archive
    (`torch.save`'s format: a truncated one has no central directory)."""
    info = info if info is not None else load_json(folder / STATE_FILE)
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        return None
    path = folder / "state.pt"
    try:
        size = path.stat().st_size
    except OSError:
        return None  # no checkpoint: nothing to resume, and nothing wrong
    expected = info.get("bytes")
    if isinstance(expected, int) and expected != size:
        return f"its checkpoint {path} is damaged ({size} of {expected} bytes)"
    try:
        with zipfile.ZipFile(path):
            pass
    except (OSError, zipfile.BadZipFile) as exc:
        return f"its checkpoint {path} cannot be read ({exc})"
    return None


def write_checkpoint_info(folder: Path, step: int, reason: str, size: int | None = None) -> None:
    info: dict[str, Any] = {"step": step, "saved_at": utc_now(), "reason": reason}
    if size is not None:
        info["bytes"] = size
    write_atomic(folder / STATE_FILE, json.dumps(info) + "\n")


class TrialBusy(FtvarError):
    """The trial is running in another live process right now."""

    def __init__(self, trial_id: str, holder: str) -> None:
        super().__init__(f"trial {trial_id} is running right now ({holder}): it is not started again")
        self.trial_id = trial_id
        self.holder = holder


def holder_text() -> str:
    """Who holds a lock: this process, its host and its job."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        job = f", SLURM job {env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    elif env.get("SLURM_JOB_ID"):
        job = f", SLURM job {env['SLURM_JOB_ID']}"
    elif env.get("SUBMITIT_LOCAL_JOB_ID"):
        job = f", local job {env['SUBMITIT_LOCAL_JOB_ID']}"
    else:
        job = ""
    return f"pid {os.getpid()} on {socket.gethostname()}{job} since {utc_now()}"


class RunningLock:
    """A trial's `running.lock`, held while one of its attempts runs (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def acquire(cls, folder: Path, wait_s: float | None = None) -> RunningLock:
        """Hold the trial's lock, or raise TrialBusy (naming the holder) when a live process holds it for
        `wait_s` (LOCK_WAIT_S)."""
        wait_s = LOCK_WAIT_S if wait_s is None else wait_s
        path = folder / RUNNING_LOCK
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise write_failed(path, exc) from None
        if not flock_waiting(fd, wait_s, 0.1):
            os.close(fd)
            raise TrialBusy(folder.name, _holder(path))
        write_holder(fd, holder_text())
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def running_holder(folder: Path) -> str | None:
    """Who runs the trial whose checkpoint folder this is right now ("pid 12 on node3, SLURM job 7_1 since
    …"), or None when no live process does."""
    path = folder / RUNNING_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder_job(holder: str) -> str | None:
    """The SLURM job (task) a lock holder's text names ("123_4", "123"), or None (a local process)."""
    match = re.search(r", SLURM job (\d+(?:_\d+)?) since ", holder)
    return match.group(1) if match else None


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "a process that is starting"
    except OSError:
        return "a live process"


def _time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return value


def clean(attempt: dict[str, Any]) -> dict[str, Any]:
    """One attempt with the record schema's types, whatever a damaged file held."""
    step = attempt.get("step")
    state = attempt.get("state")
    return {
        "state": state if state in STATES else "lost",
        "reason": attempt["reason"] if isinstance(attempt.get("reason"), str) else None,
        "host": attempt["host"] if isinstance(attempt.get("host"), str) else None,
        "started_at": _time(attempt.get("started_at")),
        "finished_at": _time(attempt.get("finished_at")),
        "step": step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None,
    }


def from_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts a record tells of: its own list, or (an older record) one attempt made from it."""
    listed = record.get("attempts")
    if isinstance(listed, list):
        return [dict(a) for a in listed if isinstance(a, dict)]
    env = record.get("environment")
    env = env if isinstance(env, dict) else {}
    return [
        {
            "state": record.get("status"),
            "reason": record.get("error"),
            "host": env.get("host"),
            "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at"),
            "step": record.get("steps"),
        }
    ]


class AttemptLog:
    """The attempts of one trial: the earlier ones and the one running now (the last)."""

    def __init__(self, folder: Path, history: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.history = history
        self.current: dict[str, Any] = {
            "state": "running",
            "reason": None,
            "host": socket.gethostname(),
            "started_at": utc_now(),
            "finished_at": None,
            "step": None,
        }

    @classmethod
    def begin(cls, folder: Path, record_path: Path) -> AttemptLog:
        """Start an attempt: the history from `attempts.json`, else from the trial's last record; an earlier
        attempt still marked running died without a word (lost)."""
        history = load_json(folder / ATTEMPTS_FILE)
        if not isinstance(history, list):
            record = load_json(record_path)
            history = from_record(record) if isinstance(record, dict) else []
        history = [clean(a) for a in history if isinstance(a, dict)]
        for attempt in history:
            if attempt.get("state") == "running":
                step = attempt.get("step")
                last = f"; its last checkpoint was at step {step}" if step else "; no checkpoint"
                attempt.update(state="lost", reason=LOST + last)
        log = cls(folder, history)
        log.write()
        return log

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return [*self.history, dict(self.current)]

    def update(
        self, state: str | None = None, reason: str | None = None, step: int | None = None, save: bool = True
    ) -> None:
        """Record progress (a checkpoint's step) or the end of the running attempt, and save the list (unless
        `save` is False: a record that carries the list is written first)."""
        if state is not None:
            self.current["state"] = state
            self.current["reason"] = reason
        if step is not None:
            self.current["step"] = step
        self.current["finished_at"] = utc_now()
        if save:
            self.write()

    def write(self) -> None:
        """Save the list atomically; on a full disk, where a temp file has no room, through the file's own
        blocks (its readers take a damaged copy for none), so that the attempt still says why it ended."""
        path = self.folder / ATTEMPTS_FILE
        text = json.dumps(self.attempts, indent=1) + "\n"
        try:
            write_atomic(path, text)
        except WriteFailed as exc:
            if not exc.full or not path.is_file():
                raise
            rewrite_in_place(path, text)
