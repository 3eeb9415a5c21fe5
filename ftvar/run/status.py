"""`ftvar status`: where every trial stands, from its record and, for SLURM arrays, from sacct.

A failed trial's reason comes from its record (a time limit says how often it was requeued and from which
step it resumes) or from SLURM (a task that ended without a record); a trial with a checkpoint says from
which step the next launch resumes it. `--watch` follows the study until nothing is pending or running: a
live bar on a terminal (the cursor is always restored, even when interrupted), one plain line per change
otherwise (a log file, a CI job, a pipe).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ftvar.run.sacct import ACTIVE_STATES, slurm_states, task_ids
from ftvar.store.attempts import ATTEMPTS_FILE, checkpoint_info
from ftvar.store.files import read_json
from ftvar.store.launches import read_launches
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_status, utc_now
from ftvar.study.config import Study
from ftvar.study.trial import Trial, expand

STATES = ("pending", "running", "ok", "failed", "diverged", "not launched")
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT")


@dataclass(frozen=True)
class TrialState:
    trial: Trial
    state: str  # one of STATES
    task: str | None  # SLURM task id of its latest launch
    reason: str | None  # why it failed
    resumable_from: int | None = None  # the step of its checkpoint, when it has one


def classify(
    record_status: str | None, task: str | None, slurm_state: str | None, attempted: bool = False
) -> tuple[str, str | None]:
    """One trial's state from its record, the SLURM state of its latest task and whether it ever started
    (an attempt log: a local run killed before it wrote a record)."""
    if record_status == "ok":
        return "ok", None
    if slurm_state in ACTIVE_STATES:
        return ("running" if slurm_state in RUNNING_STATES else "pending"), None
    if record_status in ("failed", "diverged"):
        return record_status, "see its record's error"
    if task is None:
        if attempted:
            return "failed", "its last run ended without a record (killed, or its launch was interrupted)"
        return "not launched", None
    if slurm_state is None:
        return "failed", f"task {task} is unknown to sacct and left no record"
    return "failed", f"task {task} ended {slurm_state} without a record"


def trial_states(study: Study, paths: StudyPaths) -> list[TrialState]:
    tasks = task_ids(paths)
    slurm = slurm_states(sorted({t.split("_")[0] for t in tasks.values()}))
    out = []
    for trial in expand(study):
        task = tasks.get(trial.trial_id)
        folder = paths.ckpt / trial.trial_id
        state, reason = classify(
            read_status(paths.record(trial.trial_id)),
            task,
            slurm.get(task) if task else None,
            attempted=(folder / ATTEMPTS_FILE).is_file(),
        )
        ckpt = checkpoint_info(folder) if state != "ok" else None
        out.append(TrialState(trial, state, task, reason, int(ckpt["step"]) if ckpt else None))
    return out


def log_tail(paths: StudyPaths, task: str | None, lines: int) -> str:
    """The last lines of a task's stderr log (submitit writes `<task>/<task>_0_log.err`)."""
    if task is None:
        return ""
    path = paths.submitit / task / f"{task}_0_log.err"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def arrays_table(study: Study, paths: StudyPaths, states: list[TrialState]) -> Table:
    """One row per SLURM array (and one for trials run locally or not launched)."""
    launched = {
        str(e.get("array_id")): str(e.get("at", ""))
        for e in read_launches(paths)
        if e.get("executor") == "slurm"
    }
    groups: dict[str, Counter[str]] = {}
    for s in states:
        key = s.task.split("_")[0] if s.task else "–"
        groups.setdefault(key, Counter())[s.state] += 1
    table = Table(title=f"{study.name}: {len(states)} trial(s) · {paths.root}")
    table.add_column("array", no_wrap=True)
    table.add_column("submitted (UTC)")
    headers = {"pending": "pend", "running": "run", "diverged": "div", "not launched": "unsent"}
    for name in ("trials", *STATES):
        table.add_column(headers.get(name, name), justify="right", no_wrap=True)
    for key, counts in groups.items():
        at = str(launched.get(key, ""))[5:16].replace("T", " ")
        table.add_row(key, at, str(sum(counts.values())), *(str(counts.get(name, 0)) for name in STATES))
    return table


def failures_table(paths: StudyPaths, states: list[TrialState], lines: int) -> Table | None:
    failed = [s for s in states if s.state in ("failed", "diverged")]
    if not failed:
        return None
    table = Table(title="failed trials", show_lines=True)
    for col in ("trial", "params", "state", "why", "log (last lines)"):
        table.add_column(col, overflow="fold")
    for s in failed:
        table.add_row(
            s.trial.trial_id, s.trial.label(), s.state, why(paths, s), log_tail(paths, s.task, lines)
        )
    return table


def why(paths: StudyPaths, s: TrialState) -> str:
    """Why a trial is not ok, and where the next launch resumes it."""
    text = s.reason or ""
    if text == "see its record's error":
        text = _record_error(paths.record(s.trial.trial_id))
    if s.resumable_from is not None and "resumable from step" not in text:
        text += f"; resumable from step {s.resumable_from} (`ftvar launch` resumes it)"
    return text.lstrip("; ")


def _record_error(path: Path) -> str:
    return str((read_json(path) or {}).get("error") or "")


def render(study: Study, paths: StudyPaths, states: list[TrialState], lines: int) -> Group:
    parts: list[Table] = [arrays_table(study, paths, states)]
    failures = failures_table(paths, states, lines)
    if failures is not None:
        parts.append(failures)
    return Group(*parts)


def counts_line(study: Study, states: list[TrialState]) -> str:
    counts = Counter(s.state for s in states)
    shown = ", ".join(f"{counts[name]} {name}" for name in STATES if counts[name])
    return f"{study.name}: {len(states)} trial(s): {shown or 'none'}"


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, `kill`) unwind like Ctrl-C, so that cleanup runs."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def watch(study: Study, paths: StudyPaths, console: Console, interval: float) -> list[TrialState]:
    """Follow the study until no trial is pending or running. On a terminal a live progress bar (the
    cursor is restored however it ends); otherwise one plain, timestamped line each time the counts change."""
    with _terminated_as_interrupt():
        if not console.is_terminal:
            return _watch_plain(study, paths, console, interval)
        try:
            return _watch_live(study, paths, console, interval)
        finally:
            console.show_cursor(True)


def _watch_plain(study: Study, paths: StudyPaths, console: Console, interval: float) -> list[TrialState]:
    last = None
    while True:
        states = trial_states(study, paths)
        line = counts_line(study, states)
        if line != last:
            console.print(f"{utc_now()[:19].replace('T', ' ')} {line}", highlight=False, soft_wrap=True)
            console.file.flush()
            last = line
        counts = Counter(s.state for s in states)
        if not counts["running"] and not counts["pending"]:
            return states
        time.sleep(interval)


def _watch_live(study: Study, paths: StudyPaths, console: Console, interval: float) -> list[TrialState]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(study.name, total=None)
        while True:
            states = trial_states(study, paths)
            counts = Counter(s.state for s in states)
            finished = counts["ok"] + counts["failed"] + counts["diverged"]
            progress.update(
                bar,
                total=len(states),
                completed=finished,
                description=f"{study.name}: {counts['running']} running, {counts['pending']} pending",
            )
            if not counts["running"] and not counts["pending"]:
                return states
            time.sleep(interval)
