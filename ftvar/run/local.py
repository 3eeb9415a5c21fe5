"""The local executor: trials in subprocesses on this machine (submitit's LocalExecutor), or in this process.

One process per visible GPU, or up to 4 CPU processes that share the cores. Trials are spread over the
processes longest-first, so that torch is imported once per process, not once per trial. Progress comes from
the records folder, as it would on a cluster.

An interrupt of the launch (Ctrl-C, SIGINT, SIGTERM or SIGHUP to its PID) stops every process it started:
each job's tree runs in a session of its own (so a Ctrl-C reaches the launch only, not submitit's controller,
which would SIGKILL its task a second later), and the launch sends each tree SIGTERM, on which the task saves
its running trials' checkpoints at a step boundary and ends their attempts as interrupted; a tree still
alive after STOP_GRACE_S (or at a second interrupt) is killed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import submitit
import submitit.local.local
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ftvar.errors import FtvarError
from ftvar.run.jobs import job_main
from ftvar.store.files import can_write, cause
from ftvar.store.folder import RECORD_BYTES
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.stackable import plan_stacks
from ftvar.study.trial import Trial

STOP_GRACE_S = 60.0  # how long the local processes get to save their trials once the launch is interrupted
TERM_EVERY_S = 5.0  # SIGTERM again meanwhile (a task still starting up may have missed the first one)


@dataclass
class LocalRun:
    """What a local or in-process run did: its job ids, one line per problem, and whether it was
    interrupted (its trials in flight then ended as interrupted, resumable)."""

    job_ids: list[str]
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False


class SessionExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, each job's process tree (the `sh -c` of its setup lines, submitit's
    controller, the task) started in a session and process group of its own, whose id is the job id.

    submitit starts the tree in the launch's process group, so a Ctrl-C reaches its controller too, which
    answers with SIGINT and, a second later, SIGKILL to the task (no time to save a checkpoint); and its
    `cancel()` signals the `sh` only, which leaves the tree running. submitit's start_controller takes no
    Popen options: it is given a Popen that starts a new session."""

    def _submit_command(self, command: str) -> Any:
        popen = functools.partial(subprocess.Popen, start_new_session=True)
        with mock.patch.object(submitit.local.local, "subprocess", types.SimpleNamespace(Popen=popen)):
            return super()._submit_command(command)


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group `pgid` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_jobs(jobs: Sequence[Any], console: Console, grace_s: float = STOP_GRACE_S) -> int:
    """Stop the jobs' process trees: SIGTERM to each group (its task saves its running trials and ends
    their attempts as interrupted), again every TERM_EVERY_S, and SIGKILL to what is left after `grace_s`
    or at another interrupt. Returns how many trees had to be killed."""
    groups = [int(job.job_id) for job in jobs]  # the job id is the pid of its session's leader
    live = [g for g in groups if group_alive(g)]
    if not live:
        return 0
    console.print(
        f"[yellow]stopping {len(live)} local process(es): their running trials save a checkpoint and end "
        f"as interrupted (up to {grace_s:.0f} s; interrupt again to kill them now)[/yellow]"
    )
    deadline = time.monotonic() + grace_s
    again = 0.0
    try:
        while live and time.monotonic() < deadline:
            if time.monotonic() >= again:
                for g in live:
                    _signal_group(g, signal.SIGTERM)
                again = time.monotonic() + TERM_EVERY_S
            time.sleep(0.2)
            for job in jobs:
                job.done()  # reaps the job's own process once it has ended
            live = [g for g in live if group_alive(g)]
    except KeyboardInterrupt:
        pass
    finally:
        for g in live:
            _signal_group(g, signal.SIGKILL)
    if live:
        console.print(f"[red]killed {len(live)} local process(es) that had not stopped[/red]")
    return len(live)


@contextlib.contextmanager
def submission_files(paths: StudyPaths, what: str) -> Iterator[None]:
    """submitit writes each job's pickle (`<uuid>.pkl`) and, for SLURM, its `.submission_file_*` in the
    submitit folder before it submits: a submission that fails (a full disk, a read-only folder, sbatch)
    leaves none of them behind, and a file system's refusal is one FtvarError line naming the cause."""
    folder = paths.submitit
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        yield
    except OSError as exc:
        _remove_new(folder, before)
        where = f" ({exc.filename})" if exc.filename else ""
        raise FtvarError(f"cannot write {what} into {folder}{where}: {cause(exc)}") from None
    except BaseException:
        _remove_new(folder, before)
        raise


def remove_result_temps(paths: StudyPaths, older_than_s: float = 0.0) -> int:
    """Remove the temp files of job results submitit could not finish writing (`*.save_tmp`: a full disk
    leaves them empty or cut short) that are older than `older_than_s`; returns how many."""
    removed = 0
    now = time.time()
    for path in paths.submitit.glob("*/*.save_tmp") if paths.submitit.is_dir() else []:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed += 1
    return removed


def _remove_new(folder: Path, before: set[Path]) -> None:
    for path in (set(folder.iterdir()) if folder.is_dir() else set()) - before:
        if path.is_file() and (path.suffix == ".pkl" or path.name.startswith(".submission_file_")):
            path.unlink(missing_ok=True)


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
) -> LocalRun:
    """The `debug` executor: every trial in turn, in this process; with `lanes` > 1, one pack of them all in
    this process (`lanes` at a time, or in stacks of up to `lanes` with `stack`), as a task would run it.
    A trial whose record cannot be written fails alone; the run stops when the study folder takes no more
    records."""
    from ftvar.store.attempts import TrialBusy
    from ftvar.store.files import WriteFailed
    from ftvar.store.folder import store_problem
    from ftvar.train.runner import run_trial, set_threads

    run = LocalRun(["in-process"])
    try:
        if lanes is not None and lanes > 1:
            how = f"stacks of up to {lanes}" if stack else f"{lanes} at a time"
            console.print(f"[dim]{len(todo)} trial(s) in one pack in this process, {how}[/dim]")
            try:
                statuses = job_main(study, todo, paths, lanes, stack)
            except SystemExit:  # the pack's SIGTERM handler: in this process, an interrupt of the launch
                raise KeyboardInterrupt from None
            run.errors += _left_lines("this process", statuses)
            return run
        set_threads()
        with progress_bar(console) as progress:
            task = progress.add_task("trials", total=len(todo))
            for trial in todo:
                progress.update(task, description=trial.label())
                try:
                    run_trial(study, trial, paths)
                except TrialBusy as exc:
                    run.errors.append(str(exc))
                except WriteFailed as exc:
                    run.errors.append(f"{trial.trial_id}: {exc}")
                    problem = store_problem(paths)
                    if problem is not None:
                        left = len(todo) - todo.index(trial) - 1
                        run.errors.append(f"stopped: {problem}; {left} trial(s) left to the next launch")
                        break
                progress.advance(task)
    except KeyboardInterrupt:
        run.interrupted = True
    return run


def run_local(
    study: Study,
    paths: StudyPaths,
    todo: list[Trial],
    max_parallel: int | None,
    console: Console,
    lanes: int | None = None,
    stack: bool = False,
) -> LocalRun:
    """Run the trials in parallel subprocesses with submitit's LocalExecutor (each job's tree in a session of
    its own), each process a pack of trials run `lanes` at a time (or trained in stacks of up to `lanes`,
    kept whole across processes, with `stack`); poll the records for progress. An interrupt stops every
    process (`stop_jobs`) and returns with `interrupted` set."""
    gpus = visible_gpus()
    n_jobs = max_parallel or (len(gpus) if gpus else max(1, min(4, (os.cpu_count() or 1))))
    groups = split_work(todo, n_jobs, plan_stacks(study, todo, lanes or 1) if stack else None)
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    jobs: list[Any] = []
    run = LocalRun([])
    try:
        with submission_files(paths, "submitit's folder"):
            executor = SessionExecutor(folder=str(paths.submitit / "%j"))
        for i, group in enumerate(groups):
            params: dict[str, Any] = {
                "timeout_min": 7 * 24 * 60,
                "setup": [f"export FTVAR_THREADS={threads}"],
            }
            if gpus:
                params.update(gpus_per_node=1, visible_gpus=[gpus[i % len(gpus)]])
            executor.update_parameters(**params)
            with submission_files(paths, f"local job {i + 1} of {len(groups)}"):
                jobs.append(executor.submit(job_main, study, group, paths, lanes, stack))
            run.job_ids.append(str(jobs[-1].job_id))
        packed = f", {'stacks of up to' if stack else ''} {lanes} at a time" if lanes and lanes > 1 else ""
        console.print(
            f"[dim]{len(todo)} trial(s) in {len(jobs)} local process(es){packed}, "
            f"{'1 GPU each' if gpus else f'{threads} CPU thread(s) each'}; logs: {paths.submitit}[/dim]"
        )
        _watch(jobs, todo, paths, console)
    except KeyboardInterrupt:
        run.interrupted = True
        stop_jobs(jobs, console)
        remove_result_temps(paths)
        return run
    except BaseException:
        stop_jobs(jobs, console)  # e.g. a later job that could not be submitted: none runs on unwatched
        raise
    remove_result_temps(paths)  # every job has ended: a result temp file left is one that failed
    for job, group in zip(jobs, groups, strict=True):
        exc = job.exception()
        full = can_write(paths.submitit, RECORD_BYTES) if paths.submitit.is_dir() else None
        if exc is not None and type(exc).__name__ == "UncompletedJobError" and full is not None:
            run.errors.append(
                f"job {job.job_id} ({len(group)} trial(s)) could not write its result ({full}); its trials' "
                "attempts say how each ended (`ftvar status`)"
            )
            continue
        if exc is not None:
            run.errors.append(
                f"job {job.job_id} ({len(group)} trial(s)) died: {death_reason(exc, job.paths.stderr)}; "
                f"log: {job.paths.stderr}"
            )
            continue
        result = job.result()
        run.errors += _left_lines(f"job {job.job_id}", result if isinstance(result, dict) else {})
    return run


def _left_lines(who: str, statuses: dict[str, str]) -> list[str]:
    """What a pack's statuses say beyond ok, failed and diverged: trials it left (the study folder took no
    more records) or found running elsewhere."""
    lines = []
    left = [s for s in statuses.values() if s.startswith("not run: ")]
    if left:
        lines.append(
            f"{who} stopped: {left[0].removeprefix('not run: ')}; "
            f"{len(left)} trial(s) left to the next launch"
        )
    busy = sum(1 for s in statuses.values() if s == "running elsewhere")
    if busy:
        lines.append(f"{who}: {busy} trial(s) were running in another process: not started again")
    return lines


def death_reason(exc: BaseException, log: Path) -> str:
    """Why a local job died, in one line: the exception's last line, else the last error line of its log."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    error = re.compile(r"^(ftvar: |[A-Za-z_.]*(Error|Exception|Interrupt)\b)")
    found = [ln for ln in lines if error.match(ln)]
    if not found:
        try:
            log_lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
        except OSError:
            log_lines = []
        found = [ln for ln in log_lines if error.match(ln)]
    return (found or lines or [repr(exc)])[-1]


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
