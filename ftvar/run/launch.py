"""`ftvar launch`: decide what runs (skip done trials, refuse mixed studies), prepare the data, hand over.

Every option is checked before anything is written (values, `--out`, the container image, and for SLURM the
partition and `sbatch --test-only`); then the study's launch lock is held from planning to the last
submission. The executors (`ftvar.run.local`, `ftvar.run.slurm`) only run what they are given.
This module itself needs no torch: the data cache is built by `ftvar.train`, imported when a launch has work
to do.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path
from typing import Any

import cloudpickle
from rich.console import Console

from ftvar.errors import FtvarError
from ftvar.run import local, slurm
from ftvar.run.jobs import report_main
from ftvar.run.sacct import ACTIVE_STATES, slurm_states
from ftvar.run.signals import terminated_as_interrupt
from ftvar.run.trial_tables import summary_table
from ftvar.store.attempts import holder_job, running_holder
from ftvar.store.files import WriteFailed
from ftvar.store.folder import RECORD_BYTES, check_no_mixing, check_out, pending, trial_statuses
from ftvar.store.launches import append_launch, launch_lock
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.stackable import not_stackable, stacking_order
from ftvar.study.trial import Trial, expand

EXECUTORS = ("auto", "local", "debug", "slurm")


def resolve_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise FtvarError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def prepare_study(study: Study, paths: StudyPaths, console: Console) -> None:
    """Validate the model/data sources and tokenize once, before any trial runs."""
    from ftvar.data.cache import is_prepared

    if is_prepared(study, paths):
        console.print(f"[dim]data cache up to date: {paths.cache}[/dim]")
        return
    from ftvar.data.prepare import prepare

    with console.status(f"preparing {study.name}: loading and tokenizing the data once"):
        prepare(study, paths)
    console.print(f"[dim]data cache built: {paths.cache}[/dim]")


def launch_study(
    study: Study,
    out: Path,
    executor: str,
    max_parallel: int | None,
    cluster_cli: dict[str, Any],
    dry_run: bool,
    report_after: bool,
    console: Console,
) -> int:
    """`ftvar launch`: returns the exit code (0: all ok or submitted, 1: some trials not ok)."""
    kind = resolve_executor(executor)
    paths = StudyPaths.of(out, study.name)
    cluster = slurm.merge_options(study.cluster, cluster_cli)
    if max_parallel is not None and max_parallel < 1:
        raise FtvarError(f"--max-parallel must be ≥ 1, got {max_parallel}")
    # --trials-per-task and --pack also set how each local process runs its trials: not SLURM's only
    both = ("trials_per_task", "pack")
    given = [k for k, v in cluster_cli.items() if v not in (None, {}, []) and k not in both]
    if kind != "slurm" and not dry_run and given:
        raise FtvarError(
            f"{slurm.option_name(given[0])} is a SLURM option, but this launch runs --executor {kind}"
            + ("" if shutil.which("sbatch") else " (no sbatch on PATH)")
        )
    if cluster.pack == "stack" and (cluster.trials_per_task or 1) < 2:
        raise FtvarError(
            "--pack stack trains the trials of one task together: give --trials-per-task K (K ≥ 2, e.g. 12)"
        )
    check_no_mixing(study, paths)
    per_task = cluster.trials_per_task or 1
    if dry_run:
        n_tasks = -(-len(pending(study, paths)[0]) // per_task)
        print(slurm.dry_run(cluster, study, paths, n_tasks, slurm.max_array_size()))
        return 0
    todo = pending(study, paths)[0]
    check_out(out, paths.root, bytes_needed(study, paths, todo, per_task))
    if kind == "slurm":
        if not shutil.which("sbatch"):
            raise FtvarError("--executor slurm needs sbatch on PATH (a login node); or use --executor local")
        slurm.check_container(cluster)
        slurm.check_cluster(cluster, study, paths, -(-len(todo) // per_task))
    # an interrupt (Ctrl-C, SIGINT, SIGTERM, SIGHUP) unwinds: the local processes are stopped, their trials
    # end as interrupted, the ledger gets its line
    with (
        terminated_as_interrupt(),
        launch_lock(paths, on_wait=lambda who: console.print(f"waiting for another launch ({who})")),
    ):
        check_no_mixing(study, paths)  # again: another launch may have finished while this one waited
        return _launch_locked(study, out, paths, kind, max_parallel, cluster, report_after, console)


def bytes_needed(study: Study, paths: StudyPaths, todo: list[Trial], per_task: int) -> int:
    """What a launch of `todo` writes to `--out` besides checkpoints and the data cache: a record and an
    attempt log per trial (RECORD_BYTES) and submitit's pickle of each task (measured on the first one)."""
    if not todo:
        return 0
    pickle = len(cloudpickle.dumps((study, todo[:per_task], paths)))
    return len(todo) * RECORD_BYTES + -(-len(todo) // per_task) * (pickle + 4096)


def running_elsewhere(paths: StudyPaths, todo: list[Trial]) -> dict[str, str]:
    """Trial id → who runs it, for trials a live process is running right now (its `running.lock`): an
    earlier launch's process, another launch's, a task of an array. A task SLURM says has ended (cancelled,
    say) while its process still saves its checkpoint does not count: the trial is submitted again, and its
    new task waits for the lock."""
    busy = {}
    for trial in todo:
        who = running_holder(paths.ckpt / trial.trial_id)
        if who is not None:
            busy[trial.trial_id] = who
    jobs = {tid: job for tid, who in busy.items() if (job := holder_job(who)) is not None}
    if jobs:
        states = slurm_states(sorted({job.split("_")[0] for job in jobs.values()}))
        for tid, job in jobs.items():
            if states.get(job) not in (None, *ACTIVE_STATES):
                del busy[tid]
    return busy


def _launch_locked(
    study: Study,
    out: Path,
    paths: StudyPaths,
    kind: str,
    max_parallel: int | None,
    cluster: Any,
    report_after: bool,
    console: Console,
) -> int:
    todo, done = pending(study, paths)
    if cluster.pack == "stack" and (cluster.trials_per_task or 1) > 1:
        todo = stacking_order(study, todo)  # each task's trials (K consecutive ones) can then form a stack
    busy = running_elsewhere(paths, todo)
    if busy:
        first = next(iter(busy.items()))
        console.print(
            f"{len(busy)} trial(s) are running right now in another process (e.g. {first[0]}: {first[1]}): "
            "not started again"
        )
        todo = [t for t in todo if t.trial_id not in busy]
    if not todo:
        if busy:
            console.print(f"nothing else to run; follow them with `ftvar status {study.name}`")
            return 0
        console.print(f"all {len(done)} trials of {study.name} already have ok records: nothing to run")
        console.print(summary_table(study, paths, expand(study)))
        return 0
    local.remove_result_temps(paths, older_than_s=600)  # left by tasks that ended on a full disk
    prepare_study(study, paths, console)
    verb = "submitting" if kind == "slurm" else "running"
    console.print(f"{study.name}: {verb} {len(todo)} trial(s), skipping {len(done)} with ok records")
    if cluster.pack == "stack" and (cluster.trials_per_task or 1) > 1:
        alone = collections.Counter(not_stackable(study, t) for t in todo if not t.is_baseline)
        for why, n in sorted((w, n) for w, n in alone.items() if w is not None):
            console.print(f"{n} trial(s) train alone, not stacked: {why}")
    if kind == "slurm":
        slurm.run_slurm(study, paths, todo, cluster, report_after, console)
        console.print(f"records will appear in {paths.records}; follow them with `ftvar status`")
        return 0
    stack = cluster.pack == "stack"
    if kind == "debug":
        run = local.run_in_process(study, paths, todo, console, cluster.trials_per_task, stack)
    else:
        run = local.run_local(study, paths, todo, max_parallel, console, cluster.trials_per_task, stack)
    entry: dict[str, Any] = {"executor": kind, "jobs": run.job_ids, "trials": [t.trial_id for t in todo]}
    if run.interrupted:
        entry["interrupted"] = True
    try:
        append_launch(paths, study.hash, entry)
    except WriteFailed as exc:  # the trials have run: their records and attempts say how; this is one line
        run.errors.append(f"this launch is not in the ledger: {exc}")
    console.print(summary_table(study, paths, expand(study)))
    for line in run.errors:
        console.print(f"[red]{line}[/red]")
    if run.interrupted:
        console.print(
            "[yellow]interrupted: the trials in flight saved their checkpoints; `ftvar launch` again "
            f"resumes them (`ftvar status {study.name}` shows where each stands)[/yellow]"
        )
        raise KeyboardInterrupt
    bad = [tid for tid, st in trial_statuses(study, paths).items() if st != "ok"]
    console.print(f"records: {paths.records}")
    if report_after:
        try:
            report_main(study, out)
        except FtvarError as exc:  # e.g. no ok record at all: the launch's own outcome still stands
            console.print(f"[yellow]no report: {exc}[/yellow]")
    if bad or run.errors:
        console.print(f"[yellow]{len(bad)} trial(s) not ok; `ftvar launch` again retries them[/yellow]")
        return 1
    return 0
