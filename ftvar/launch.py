"""Launching a study: which trials still need to run, and the executors that run them.

`local` runs trials in subprocesses through submitit's LocalExecutor (one process per GPU, or several CPU
processes sharing the cores), `debug` runs them in this process. Both skip trials that already have an `ok`
record. The training code is imported lazily, inside the job: this module itself needs no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ftvar.config import ClusterConfig, Study
from ftvar.errors import FtvarError
from ftvar.record import read_status, study_hashes, utc_now
from ftvar.trial import StudyPaths, Trial, expand

EXECUTORS = ("auto", "local", "debug", "slurm")


def trial_statuses(
    study: Study, paths: StudyPaths, trials: Sequence[Trial] | None = None
) -> dict[str, str | None]:
    """Trial id → status of its record (None: no record yet)."""
    return {t.trial_id: read_status(paths.record(t.trial_id)) for t in (trials or expand(study))}


def plan_json(study: Study, paths: StudyPaths) -> dict[str, Any]:
    """`ftvar plan --json`: every trial with its params and the status of its record (null: none yet)."""
    statuses = trial_statuses(study, paths)
    rows = [{"trial_id": t.trial_id, **t.params(), "status": statuses[t.trial_id]} for t in expand(study)]
    return {"study": study.name, "hash": study.hash, "out": str(paths.root), "trials": rows}


def plan_table(study: Study, paths: StudyPaths) -> Table:
    """`ftvar plan`: the trials, their params and which have records; the caption names model and data."""
    trials = expand(study)
    statuses = trial_statuses(study, paths, trials)
    source = study.data.source if study.data.source != "hub" else f"hub {study.data.hub}"
    model = "tiny random-init DistilBERT" if study.model.tiny else study.model.name_or_path
    table = Table(
        title=f"study {study.name} (hash {study.hash}) · {len(trials)} trials · {paths.root}",
        caption=f"model: {model} · data: {source} · from {study.source}",
    )
    for col in ("trial", "learning rate", "batch size", "epochs", "seed", "record"):
        table.add_column(col, justify="left" if col in ("trial", "record") else "right")
    for t in trials:
        table.add_row(
            t.trial_id,
            _fmt(t.learning_rate, "g"),
            _fmt(t.batch_size),
            str(t.epochs),
            str(t.seed),
            statuses[t.trial_id] or "[dim]none[/dim]",
        )
    return table


def check_no_mixing(study: Study, paths: StudyPaths) -> None:
    """Refuse to add records of this study next to records of a different study hash."""
    foreign = {h: n for h, n in study_hashes(paths.records).items() if h != study.hash}
    if foreign:
        h, n = next(iter(foreign.items()))
        raise FtvarError(
            f"{paths.records} holds {n} record(s) of another version of study {study.name!r} "
            f"(hash {h}; this one is {study.hash}): its model, data or training settings changed. "
            "Use another name or --out, or move the old records away"
        )


def pending(study: Study, paths: StudyPaths) -> tuple[list[Trial], list[Trial]]:
    """(trials to run, trials skipped because they already have an ok record)."""
    todo: list[Trial] = []
    done: list[Trial] = []
    for trial in expand(study):
        (done if read_status(paths.record(trial.trial_id)) == "ok" else todo).append(trial)
    return todo, done


def resolve_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise FtvarError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


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


def split_work(trials: Sequence[Trial], n: int) -> list[list[Trial]]:
    """Longest-processing-time-first: trials sorted by cost, each to the least loaded of n groups."""
    groups: list[list[Trial]] = [[] for _ in range(max(1, min(n, len(trials))))]
    loads = [0.0] * len(groups)
    for trial in sorted(trials, key=trial_cost, reverse=True):
        i = loads.index(min(loads))
        groups[i].append(trial)
        loads[i] += trial_cost(trial)
    return groups


def job_main(study: Study, trials: list[Trial], paths: StudyPaths) -> dict[str, str]:
    """What runs inside a job: each trial in turn; one trial's crash does not stop the others."""
    from ftvar.train import run_trial  # lazily: torch is only imported inside the job
    from ftvar.train.runner import log_to_stderr

    log_to_stderr()
    statuses = {}
    for trial in trials:
        record = run_trial(study, trial, paths)
        statuses[trial.trial_id] = str(record["status"])
    return statuses


class TrialTask(submitit.helpers.Checkpointable):
    """One SLURM array task: a resumable trial. submitit calls `checkpoint()` before a time limit."""

    def __init__(self) -> None:
        self.resumable: Any = None  # set by the running task: where and what to save

    def __call__(self, study: Study, trial: Trial, paths: StudyPaths) -> str:
        from ftvar.train.runner import run_task

        return run_task(self, study, trial, paths)

    def checkpoint(self, study: Study, trial: Trial, paths: StudyPaths) -> submitit.helpers.DelayedSubmission:
        if self.resumable is not None:
            self.resumable.save()
        return submitit.helpers.DelayedSubmission(TrialTask(), study, trial, paths)


def report_main(study: Study, out: Path) -> str:
    """The dependent job of `launch --report-after`: collect and report once the arrays have finished."""
    from ftvar.report import build_report

    result = build_report(study, out, console=Console())
    return str(result.html)


def run_slurm(
    study: Study,
    paths: StudyPaths,
    todo: list[Trial],
    cluster: ClusterConfig,
    report_after: bool,
    console: Console,
) -> list[str]:
    """Submit the trials that are not already pending or running as arrays; returns the array job ids."""
    from ftvar import slurm

    active = slurm.active_trials(paths)
    submit = [t for t in todo if t.trial_id not in active]
    if active:
        console.print(
            f"{len(todo) - len(submit)} trial(s) still pending or running in earlier arrays: not resubmitted"
        )
    if not submit:
        return []
    executor = slurm.make_executor(cluster, study, paths)
    arrays = slurm.submit_arrays(executor, study, paths, submit, slurm.max_array_size())
    for array_id, group in arrays:
        append_launch(
            paths, {"executor": "slurm", "array_id": array_id, "trials": [t.trial_id for t in group]}
        )
        console.print(f"submitted array job {array_id}: {len(group)} task(s)")
    if report_after:
        job_id = slurm.submit_report(cluster, study, paths, [a for a, _ in arrays])
        console.print(f"submitted report job {job_id} (runs after arrays {', '.join(a for a, _ in arrays)})")
    return [a for a, _ in arrays]


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
    from ftvar import slurm

    kind = resolve_executor(executor)
    paths = StudyPaths.of(out, study.name)
    cluster = slurm.merge_options(study.cluster, cluster_cli)
    check_no_mixing(study, paths)
    todo, done = pending(study, paths)
    if dry_run:
        print(slurm.dry_run_script(cluster, study, paths, len(todo)))
        return 0
    if kind == "slurm" and not shutil.which("sbatch"):
        raise FtvarError("--executor slurm needs sbatch on PATH (a login node); or use --executor local")
    if not todo:
        console.print(f"all {len(done)} trials of {study.name} already have ok records: nothing to run")
        console.print(summary_table(study, paths, expand(study)))
        return 0
    prepare_study(study, paths, console)
    verb = "submitting" if kind == "slurm" else "running"
    console.print(f"{study.name}: {verb} {len(todo)} trial(s), skipping {len(done)} with ok records")
    if kind == "slurm":
        run_slurm(study, paths, todo, cluster, report_after, console)
        console.print(f"records will appear in {paths.records}; follow them with `ftvar status`")
        return 0
    if kind == "debug":
        job_ids, errors = ["in-process"], run_in_process(study, paths, todo, console)
    else:
        job_ids, errors = run_local(study, paths, todo, max_parallel, console)
    append_launch(paths, {"executor": kind, "jobs": job_ids, "trials": [t.trial_id for t in todo]})
    console.print(summary_table(study, paths, expand(study)))
    for line in errors:
        console.print(f"[red]{line}[/red]")
    bad = [tid for tid, st in trial_statuses(study, paths).items() if st != "ok"]
    console.print(f"records: {paths.records}")
    if report_after:
        try:
            report_main(study, out)
        except FtvarError as exc:  # e.g. no ok record at all: the launch's own outcome still stands
            console.print(f"[yellow]no report: {exc}[/yellow]")
    if bad or errors:
        console.print(f"[yellow]{len(bad)} trial(s) not ok; `ftvar launch` again retries them[/yellow]")
        return 1
    return 0


def append_launch(paths: StudyPaths, entry: dict[str, Any]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.launches.open("a") as fh:
        fh.write(json.dumps({"at": utc_now(), **entry}) + "\n")


def prepare_study(study: Study, paths: StudyPaths, console: Console) -> None:
    """Validate the model/data sources and tokenize once, before any trial runs."""
    from ftvar.train import prepare

    with console.status(f"preparing {study.name}: loading and tokenizing the data once"):
        built = prepare(study, paths)
    console.print(f"[dim]data cache {'built' if built else 'up to date'}: {paths.cache}[/dim]")


def run_in_process(study: Study, paths: StudyPaths, todo: list[Trial], console: Console) -> list[str]:
    from ftvar.train import run_trial

    with _progress(console) as progress:
        task = progress.add_task("trials", total=len(todo))
        for trial in todo:
            progress.update(task, description=trial.label())
            run_trial(study, trial, paths)
            progress.advance(task)
    return []


def _progress(console: Console) -> Progress:
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


def run_local(
    study: Study, paths: StudyPaths, todo: list[Trial], max_parallel: int | None, console: Console
) -> tuple[list[str], list[str]]:
    """Run the trials in parallel subprocesses with submitit's LocalExecutor; poll records for progress."""
    import submitit

    gpus = visible_gpus()
    n_jobs = max_parallel or (len(gpus) if gpus else max(1, min(4, (os.cpu_count() or 1))))
    groups = split_work(todo, n_jobs)
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    executor = submitit.LocalExecutor(folder=str(paths.submitit / "%j"))
    jobs = []
    for i, group in enumerate(groups):
        params: dict[str, Any] = {"timeout_min": 7 * 24 * 60, "setup": [f"export FTVAR_THREADS={threads}"]}
        if gpus:
            params.update(gpus_per_node=1, visible_gpus=[gpus[i % len(gpus)]])
        executor.update_parameters(**params)
        jobs.append(executor.submit(job_main, study, group, paths))
    console.print(
        f"[dim]{len(todo)} trial(s) in {len(jobs)} local process(es), "
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
    with _progress(console) as progress:
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


def summary_table(study: Study, paths: StudyPaths, trials: Sequence[Trial]) -> Table:
    table = Table(title=f"{study.name}: {len(trials)} trial(s)")
    for col in ("trial", "lr", "bs", "ep", "seed", "status", "acc", "f1", "loss", "sec"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right", no_wrap=True)
    for t in trials:
        rec = _read_json(paths.record(t.trial_id)) or {}
        m = rec.get("metrics", {})
        status = rec.get("status", "missing")
        style = {"ok": "green", "failed": "red", "diverged": "yellow"}.get(status, "dim")
        table.add_row(
            t.trial_id,
            _fmt(t.learning_rate, "g"),
            _fmt(t.batch_size),
            str(t.epochs),
            str(t.seed),
            f"[{style}]{status}[/{style}]",
            _fmt(m.get("accuracy"), ".3f"),
            _fmt(m.get("f1"), ".3f"),
            _fmt(m.get("eval_loss"), ".3f"),
            _fmt(rec.get("timings", {}).get("total"), ".1f"),
        )
    return table


def _fmt(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
