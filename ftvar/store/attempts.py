"""A trial's attempts: how each run of it ended, kept across retries until its final record.

Every run of a trial is an attempt. Its outcome — ok, failed, diverged, interrupted (a signal: SIGTERM or
SIGUSR2, with a checkpoint saved), lost (the task died without a word: SIGKILL, out of memory, node failure) —
goes into `<out>/<study>/ckpt/<trial_id>/attempts.json` as it happens, and every record carries the whole
list (`attempts`), so a retry never erases what happened before. The checkpoint's sidecar `state.json` (step
and time of the last save) lives beside it. Plain JSON, no torch: `ftvar status` reads both.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from ftvar.store.files import load_json, write_atomic
from ftvar.store.record import utc_now

ATTEMPTS_FILE = "attempts.json"
STATE_FILE = "state.json"  # the checkpoint's sidecar: {"step", "saved_at", "reason"}
STATES = ("ok", "failed", "diverged", "interrupted", "lost", "running")
LOST = (
    "ended without a word: killed (SIGKILL, out of memory, node failure or a hard time-limit kill) "
    "before it could write a record"
)


def checkpoint_info(folder: Path) -> dict[str, Any] | None:
    """The step and time of a trial's last checkpoint, or None when it has none."""
    info = load_json(folder / STATE_FILE)
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        return None
    return info if (folder / "state.pt").is_file() else None


def write_checkpoint_info(folder: Path, step: int, reason: str) -> None:
    write_atomic(
        folder / STATE_FILE, json.dumps({"step": step, "saved_at": utc_now(), "reason": reason}) + "\n"
    )


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

    def update(self, state: str | None = None, reason: str | None = None, step: int | None = None) -> None:
        """Record progress (a checkpoint's step) or the end of the running attempt, and save the list."""
        if state is not None:
            self.current["state"] = state
            self.current["reason"] = reason
        if step is not None:
            self.current["step"] = step
        self.current["finished_at"] = utc_now()
        self.write()

    def write(self) -> None:
        write_atomic(self.folder / ATTEMPTS_FILE, json.dumps(self.attempts, indent=1) + "\n")
