"""`ftvar status`: where every trial stands, from its record and, for SLURM arrays, from sacct.

A failed trial's reason comes from its record (a time limit says how often it was requeued and from which
step it resumes), from its last attempt (a run that ended without a record: interrupted, a record the
storage refused) or from SLURM (a task that ended without a record); a trial with a checkpoint says from
which step the next launch resumes it, or that its checkpoint cannot be read. A trial a live process holds
(`running.lock`) is running, whatever ran it. Thousands of failures are summarised: counts by reason, the
first few in full (`--all` for every one). `--watch` follows the study until nothing is pending or running:
a live bar on a terminal (the cursor is always restored, even when interrupted), one plain line per change
otherwise (a log file, a CI job, a pipe).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ftvar.run.sacct import ACTIVE_STATES, slurm_states, task_ids
from ftvar.run.signals import terminated_as_interrupt
from ftvar.store.attempts import (
    ATTEMPTS_FILE,
    checkpoint_info,
    checkpoint_problem,
    holder_job,
    running_holder,
)
from ftvar.store.files import load_json, read_json
from ftvar.store.launches import read_launches
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_status, utc_now
from ftvar.study.config import Study
from ftvar.study.trial import Trial, expand

STATES = ("pending", "running", "ok", "failed", "diverged", "not launched")
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT")
SHOWN_FAILURES = 10  # failed trials shown in full (with their logs) unless --all


@dataclass(frozen=True)
class TrialState:
    trial: Trial
    state: str  # one of STATES
    task: str | None  # SLURM task id of its latest launch
    reason: str | None  # why it failed
    resumable_from: int | None = None  # the step of its checkpoint, when it has one


def classify(
    record_status: str | None,
    task: str | None,
    slurm_state: str | None,
    attempted: bool = False,
    last_attempt: dict[str, Any] | None = None,
    holder: str | None = None,
) -> tuple[str, str | None]:
    """One trial's state from its record, the SLURM state of its latest task, whether it ever started (an
    attempt log: a local run killed before it wrote a record), its last attempt, and who runs it right now
    (the holder of its running lock, if any)."""
    if record_status == "ok":
        return "ok", None
    ending = holder is not None and task is not None and holder_job(holder) == task
    if holder is not None and not (ending and slurm_state not in (None, *ACTIVE_STATES)):
        return "running", holder
    if slurm_state in ACTIVE_STATES:
        return ("running" if slurm_state in RUNNING_STATES else "pending"), None
    ended = _attempt_reason(last_attempt) or (
        "its process is still ending (saving its checkpoint)" if ending else None
    )
    if record_status in ("failed", "diverged"):
        return record_status, "see its record's error"
    if task is None:
        if ended:
            return "failed", ended
        if attempted:
            return "failed", "its last run ended without a record (killed, or its launch was interrupted)"
        return "not launched", None
    because = f": {ended}" if ended else ""
    if slurm_state is None:
        return "failed", f"task {task} is unknown to sacct and left no record{because}"
    return "failed", f"task {task} ended {slurm_state} without a record{because}"


def _attempt_reason(attempt: dict[str, Any] | None) -> str | None:
    """How an attempt that wrote no record ended ("interrupted: SIGTERM …: checkpoint at step 40"), or None
    when it said nothing (still marked running: it died without a word)."""
    if not isinstance(attempt, dict) or attempt.get("state") in (None, "running", "ok", "diverged"):
        return None
    reason = attempt.get("reason")
    return f"{attempt['state']}: {reason}" if isinstance(reason, str) and reason else str(attempt["state"])


def last_attempt(folder: Path) -> dict[str, Any] | None:
    attempts = load_json(folder / ATTEMPTS_FILE)
    return (
        attempts[-1] if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict) else None
    )


def trial_states(study: Study, paths: StudyPaths) -> list[TrialState]:
    tasks = task_ids(paths)
    slurm = slurm_states(sorted({t.split("_")[0] for t in tasks.values()}))
    out = []
    for trial in expand(study):
        task = tasks.get(trial.trial_id)
        folder = paths.ckpt / trial.trial_id
        status = read_status(paths.record(trial.trial_id))
        known = status == "ok" or not folder.is_dir()  # no attempt, lock or checkpoint to read
        state, reason = classify(
            status,
            task,
            slurm.get(task) if task else None,
            attempted=not known and (folder / ATTEMPTS_FILE).is_file(),
            last_attempt=None if known else last_attempt(folder),
            holder=None if known else running_holder(folder),
        )
        ckpt = checkpoint_info(folder) if state not in ("ok", "running") and not known else None
        problem = checkpoint_problem(folder) if state in ("failed", "diverged") and not known else None
        if problem is not None:
            reason = f"{reason or ''}; {problem}: the next launch starts it over".lstrip("; ")
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


def failures_table(
    paths: StudyPaths, states: list[TrialState], lines: int, limit: int | None = None
) -> Table | None:
    """The failed trials in full (params, reason, log tail): every one, or the first `limit`."""
    failed = [s for s in states if s.state in ("failed", "diverged")]
    if not failed:
        return None
    shown = failed if limit is None else failed[:limit]
    title = "failed trials" if len(shown) == len(failed) else f"the first {len(shown)} failed trials"
    table = Table(title=title, show_lines=True)
    for col in ("trial", "params", "state", "why", "log (last lines)"):
        table.add_column(col, overflow="fold")
    for s in shown:
        table.add_row(
            s.trial.trial_id, s.trial.label(), s.state, why(paths, s), log_tail(paths, s.task, lines)
        )
    return table


def reasons_table(paths: StudyPaths, states: list[TrialState]) -> Table:
    """Failed trials counted by reason (numbers in a reason, such as task ids and steps, do not make another
    reason), most frequent first, each with one trial as an example."""
    groups: dict[str, list[tuple[TrialState, str]]] = {}
    for s in states:
        if s.state in ("failed", "diverged"):
            text = why(paths, s)
            groups.setdefault(f"{s.state}: {re.sub(r'[0-9]+', 'N', text)}", []).append((s, text))
    total = sum(len(m) for m in groups.values())
    table = Table(title=f"{total} failed trials by reason")
    table.add_column("trials", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("why (of the trial named)", overflow="fold")
    table.add_column("e.g. trial", no_wrap=True)
    for members in sorted(groups.values(), key=len, reverse=True):
        first, text = members[0]
        table.add_row(str(len(members)), first.state, text, first.trial.trial_id)
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


def render(
    study: Study, paths: StudyPaths, states: list[TrialState], lines: int, show_all: bool = False
) -> Group:
    """The arrays table, then the failures: every one in full when there are few or with `show_all`; else
    the counts by reason and the first SHOWN_FAILURES in full."""
    parts: list[Any] = [arrays_table(study, paths, states)]
    n_failed = sum(1 for s in states if s.state in ("failed", "diverged"))
    if n_failed > SHOWN_FAILURES and not show_all:
        parts.append(reasons_table(paths, states))
        parts.append(failures_table(paths, states, lines, SHOWN_FAILURES))
        parts.append(
            f"{n_failed - SHOWN_FAILURES} more failed trial(s): `ftvar status {study.name} --all` shows "
            "every one in full"
        )
    else:
        failures = failures_table(paths, states, lines)
        if failures is not None:
            parts.append(failures)
    return Group(*parts)


def counts_line(study: Study, states: list[TrialState]) -> str:
    counts = Counter(s.state for s in states)
    shown = ", ".join(f"{counts[name]} {name}" for name in STATES if counts[name])
    return f"{study.name}: {len(states)} trial(s): {shown or 'none'}"


def watch(study: Study, paths: StudyPaths, console: Console, interval: float) -> list[TrialState]:
    """Follow the study until no trial is pending or running. On a terminal a live progress bar (the
    cursor is restored however it ends); otherwise one plain, timestamped line each time the counts change."""
    with terminated_as_interrupt():
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
