"""The cluster's answers: the state of every task of a study's arrays, from sacct and squeue, and which trials
are still pending or running in an earlier array."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from ftvar.store.launches import read_launches
from ftvar.store.paths import StudyPaths

ACTIVE_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
)


def expand_job_ids(job_id: str) -> list[str]:
    """sacct's "123_[2-4,7%2]" → ["123_2", "123_3", "123_4", "123_7"]; plain ids are returned as they are."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def sacct_states(array_ids: Sequence[str]) -> dict[str, str]:
    """Task id ("123_4", or "123" for a single job) → SLURM state. Empty when sacct is unavailable."""
    if not array_ids:
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(array_ids)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.partition("|")
        for task in expand_job_ids(job_id.strip()):
            states[task] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def squeue_states(array_ids: Sequence[str]) -> dict[str, str]:
    """Task id → state for jobs the controller still holds (`squeue -r`: one line per array task)."""
    if not array_ids:
        return {}
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(array_ids)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    pairs = (line.partition("|") for line in proc.stdout.splitlines())
    return {job.strip(): state.strip() for job, _, state in pairs if state.strip()}


def slurm_states(array_ids: Sequence[str]) -> dict[str, str]:
    """sacct's view, with squeue's for tasks sacct does not know yet or still thinks active.

    A final sacct state (COMPLETED, CANCELLED, FAILED, …) wins over squeue's COMPLETING."""
    states = sacct_states(array_ids)
    for task, state in squeue_states(array_ids).items():
        if states.get(task, "PENDING") in ACTIVE_STATES:
            states[task] = state
    return states


def task_ids(paths: StudyPaths) -> dict[str, str]:
    """Trial id → the SLURM task id of its latest launch ("123_4"; "123" for a one-task array). With
    `trials_per_task` K, trial i of an array ran in task i // K."""
    out = {}
    for entry in read_launches(paths):
        trials, array = entry.get("trials"), entry.get("array_id")
        if entry.get("executor") != "slurm" or not isinstance(trials, list) or not str(array).isdigit():
            continue  # another executor's entry, or a damaged line
        per = entry.get("trials_per_task")
        per = per if isinstance(per, int) and per >= 1 else 1
        n_tasks = -(-len(trials) // per)
        for i, tid in enumerate(trials):
            out[str(tid)] = f"{array}_{i // per}" if n_tasks > 1 else str(array)
    return out


def active_trials(paths: StudyPaths) -> dict[str, str]:
    """Trial id → task id, for trials still pending or running in an earlier array."""
    tasks = task_ids(paths)
    states = slurm_states(sorted({t.split("_")[0] for t in tasks.values()}))
    return {tid: task for tid, task in tasks.items() if states.get(task, "") in ACTIVE_STATES}
