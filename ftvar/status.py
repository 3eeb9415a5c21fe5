"""`ftvar status`: where every trial stands, from its record and, for SLURM arrays, from sacct."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ftvar.config import Study
from ftvar.executors.slurm import ACTIVE_STATES, slurm_states, task_ids
from ftvar.ledger import read_json, read_launches
from ftvar.record import read_status
from ftvar.trial import StudyPaths, Trial, expand

STATES = ("pending", "running", "ok", "failed", "diverged", "not launched")
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT")


@dataclass(frozen=True)
class TrialState:
    trial: Trial
    state: str  # one of STATES
    task: str | None  # SLURM task id of its latest launch
    reason: str | None  # why it failed


def classify(record_status: str | None, task: str | None, slurm_state: str | None) -> tuple[str, str | None]:
    """One trial's state from its record and the SLURM state of its latest task."""
    if record_status == "ok":
        return "ok", None
    if slurm_state in ACTIVE_STATES:
        return ("running" if slurm_state in RUNNING_STATES else "pending"), None
    if record_status in ("failed", "diverged"):
        return record_status, "see its record's error"
    if task is None:
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
        state, reason = classify(
            read_status(paths.record(trial.trial_id)), task, slurm.get(task) if task else None
        )
        out.append(TrialState(trial, state, task, reason))
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
    launched = {e["array_id"]: e.get("at", "") for e in read_launches(paths) if e.get("executor") == "slurm"}
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
        why = s.reason or ""
        if why == "see its record's error":
            why = _record_error(paths.record(s.trial.trial_id))
        table.add_row(s.trial.trial_id, s.trial.label(), s.state, why, log_tail(paths, s.task, lines))
    return table


def _record_error(path: Path) -> str:
    return str((read_json(path) or {}).get("error") or "")


def render(study: Study, paths: StudyPaths, states: list[TrialState], lines: int) -> Group:
    parts: list[Table] = [arrays_table(study, paths, states)]
    failures = failures_table(paths, states, lines)
    if failures is not None:
        parts.append(failures)
    return Group(*parts)


def watch(study: Study, paths: StudyPaths, console: Console, interval: float) -> list[TrialState]:
    """A live progress bar (finished / total) until no trial is pending or running."""
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
