"""The local executor: trials in subprocesses on this machine (submitit's LocalExecutor), or in this process.

One process per visible GPU, or up to 4 CPU processes that share the cores. Trials are spread over the
processes longest-first, so that torch is imported once per process, not once per trial. Progress comes from
the records folder, as it would on a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ftvar.run.jobs import job_main
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.stackable import plan_stacks
from ftvar.study.trial import Trial


def visible_gpus() -> list[int]:
    """GPU indices this machine offers, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:  # the ids the local jobs may use: these, not 0..n-1 of all the machine's GPUs
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return [int(x) for x in ids] if all(x.isdigit() for x in ids) else list(range(len(ids)))
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def trial_cost(trial: Trial) -> float:
    """Relative cost for load balancing: steps × a per-step overhead that shrinks with the batch."""
    if trial.is_baseline or trial.batch_size is None:
        return 0.1
    return trial.epochs * (1.0 + 8.0 / trial.batch_size)


def split_work(trials: Sequence[Trial], n: int, units: list[list[Trial]] | None = None) -> list[list[Trial]]:
    """Longest-processing-time-first: trials (or `units` of trials kept together: stacks, which cost what
    their longest member costs) sorted by cost, each to the least loaded of n groups."""
    items = units if units is not None else [[t] for t in trials]
    groups: list[list[Trial]] = [[] for _ in range(max(1, min(n, len(items))))]
    loads = [0.0] * len(groups)
    for item in sorted(items, key=lambda u: max(trial_cost(t) for t in u), reverse=True):
        i = loads.index(min(loads))
        groups[i].extend(item)
        loads[i] += max(trial_cost(t) for t in item)
    return groups


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_in_process(
    study: Study,
    paths: StudyPaths,
    todo: list[Trial],
    console: Console,
    lanes: int | None = None,
    stack: bool = False,
) -> list[str]:
    """The `debug` executor: every trial in turn, in this process; with `lanes` > 1, one pack of them all in
    this process (`lanes` at a time, or in stacks of up to `lanes` with `stack`), as a task would run it."""
    from ftvar.train.runner import run_trial, set_threads

    if lanes is not None and lanes > 1:
        how = f"stacks of up to {lanes}" if stack else f"{lanes} at a time"
        console.print(f"[dim]{len(todo)} trial(s) in one pack in this process, {how}[/dim]")
        job_main(study, todo, paths, lanes, stack)
        return []
    set_threads()
    with progress_bar(console) as progress:
        task = progress.add_task("trials", total=len(todo))
        for trial in todo:
            progress.update(task, description=trial.label())
            run_trial(study, trial, paths)
            progress.advance(task)
    return []


def run_local(
    study: Study,
    paths: StudyPaths,
    todo: list[Trial],
    max_parallel: int | None,
    console: Console,
    lanes: int | None = None,
    stack: bool = False,
) -> tuple[list[str], list[str]]:
    """Run the trials in parallel subprocesses with submitit's LocalExecutor, each process a pack of trials
    run `lanes` at a time (or trained in stacks of up to `lanes`, kept whole across processes, with `stack`);
    poll the records for progress."""
    import submitit

    gpus = visible_gpus()
    n_jobs = max_parallel or (len(gpus) if gpus else max(1, min(4, (os.cpu_count() or 1))))
    groups = split_work(todo, n_jobs, plan_stacks(study, todo, lanes or 1) if stack else None)
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    executor = submitit.LocalExecutor(folder=str(paths.submitit / "%j"))
    jobs = []
    for i, group in enumerate(groups):
        params: dict[str, Any] = {"timeout_min": 7 * 24 * 60, "setup": [f"export FTVAR_THREADS={threads}"]}
        if gpus:
            params.update(gpus_per_node=1, visible_gpus=[gpus[i % len(gpus)]])
        executor.update_parameters(**params)
        jobs.append(executor.submit(job_main, study, group, paths, lanes, stack))
    packed = f", {'stacks of up to' if stack else ''} {lanes} at a time" if lanes and lanes > 1 else ""
    console.print(
        f"[dim]{len(todo)} trial(s) in {len(jobs)} local process(es){packed}, "
        f"{'1 GPU each' if gpus else f'{threads} CPU thread(s) each'}; logs: {paths.submitit}[/dim]"
    )
    try:
        _watch(jobs, todo, paths, console)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
    errors = []
    for job, group in zip(jobs, groups, strict=True):
        exc = job.exception()
        if exc is not None:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            errors.append(f"job {job.job_id} ({len(group)} trial(s)) died: {first}; log: {job.paths.stderr}")
    return [str(j.job_id) for j in jobs], errors


def _watch(jobs: list[Any], todo: list[Trial], paths: StudyPaths, console: Console) -> None:
    """Progress from the records folder: a trial is done when its record appears or is rewritten."""
    before = {t.trial_id: _mtime(paths.record(t.trial_id)) for t in todo}
    with progress_bar(console) as progress:
        task = progress.add_task("trials", total=len(todo))
        while True:
            finished = all(job.done() for job in jobs)
            now = {tid: _mtime(paths.record(tid)) for tid in before}
            progress.update(
                task, completed=sum(1 for tid, m in now.items() if m is not None and m != before[tid])
            )
            if finished:
                break
            time.sleep(0.5)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None
