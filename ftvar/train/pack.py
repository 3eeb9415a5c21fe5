"""Packed tasks: several trials in one process on one device, run concurrently, imports and data paid once.

A SLURM array task (or a local process) gets a list of trials and a number of lanes K. Each lane is a thread
that takes the next trial from the task's queue and runs it to its record; the lanes share the imported
libraries, the tokenized data (read once per data key) and the device. On a GPU, kernels of different lanes
run concurrently (one process, one CUDA context), which is what fills a GPU that one small trial leaves idle.

Memory: on a GPU the lanes start one after another, each once the one before has trained a few steps, and
only while the free memory holds another lane as large as the largest so far (with a margin); the pack says
when it runs fewer lanes than asked. A lane that runs out of memory anyway hands its trial back to the queue
and stops, so packing never costs a trial.

Stacks (`stack=True`, `--pack stack`): one lane instead, and the task's trials that can train together (same
model, data, batch size and epochs: ftvar.study.stackable) train as one batched model (ftvar.train.stack), in
stacks of up to K; a stack that cannot run (out of memory, a model vmap cannot batch) hands its trials back,
in halves after running out of memory, else one by one.

Preemption: every optimizer step of every lane runs inside the task's `Gate`. On SIGTERM (a cancel, a
requeue, a preemption), or when submitit asks for a checkpoint before the time limit, the gate waits for the
steps in flight to end and holds the lanes there while each running trial's state is saved: a resumed trial
ends as if it had never stopped.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ftvar.data.cache import Prepared, cache_folder, load_prepared
from ftvar.store.attempts import TrialBusy
from ftvar.store.files import WriteFailed, tell
from ftvar.store.folder import store_problem
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_status
from ftvar.study.config import Study
from ftvar.study.stackable import plan_stacks
from ftvar.study.trial import Trial, settings
from ftvar.train.checkpoint import Gate, Resumable, saved_step
from ftvar.train.runner import (
    ALONE,
    Packing,
    log_to_stderr,
    model_modules,
    pick_device,
    preload,
    run_trial,
    set_offline,
)
from ftvar.train.stack import StackFailed, run_stack

log = logging.getLogger("ftvar.train")

WARM_STEPS = 50  # steps a lane trains before the next lane may start (its memory is known by then)
MEMORY_MARGIN = 1.5  # a new lane needs this many times the average lane's memory free


@dataclass
class Pack:
    """A running pack: its gate and the checkpoint state of the trials its lanes are running."""

    gate: Gate = field(default_factory=Gate)
    running: dict[str, Resumable] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: str | None = None  # why the pack starts no more trials (the study folder takes no records)

    def save_all(self, reason: str = "SIGUSR2 (time limit or preemption)") -> int:
        """Hold every lane at a step boundary and save each running trial's state. Returns how many saved."""
        self.gate.pause()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the lanes' streams have finished the steps they launched
        with self.lock:
            running = list(self.running.values())
        return sum(1 for r in running if r.save(reason))


@dataclass
class Lane:
    index: int
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)  # trained WARM_STEPS steps, or finished
    error: BaseException | None = None


def heaviness(trial: Trial) -> tuple[int, int]:
    """Largest batches first: the first lane's memory then bounds every later lane's."""
    return (-(trial.batch_size or 0), -trial.epochs)


def run_pack(
    holder: Any,
    study: Study,
    trials: list[Trial],
    paths: StudyPaths,
    lanes: int | None = None,
    stack: bool = False,
) -> dict[str, str]:
    """Run the trials that have no ok record yet, `lanes` at a time, each to its record; with `stack`, in one
    lane, compatible trials trained together in stacks of up to `lanes` (ftvar.train.stack). Returns trial
    id → status. `holder.pack` is set to the running Pack (submitit's checkpoint() saves through it).

    A trial another live process is running is skipped ("running elsewhere"). A write the storage refuses
    fails that trial only (its attempt says why); when the study folder cannot take another record at all
    (full, read-only, gone), the pack starts nothing more: the trials left are the next launch's
    ("not run: …"), the running ones end as they can."""
    statuses = {t.trial_id: "ok" for t in trials if read_status(paths.record(t.trial_id)) == "ok"}
    todo = sorted((t for t in trials if t.trial_id not in statuses), key=heaviness)
    if not todo:
        return statuses
    pack = Pack()
    if holder is not None:
        holder.pack = pack
    handlers = _stop_on_signals(pack)  # first: a stop while this task starts up must not be missed
    try:
        return _run(pack, study, todo, paths, lanes, stack, statuses)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _stop_on_signals(pack: Pack) -> dict[int, Any]:
    """In the main thread: SIGTERM (a cancel, a requeue, a preemption, a stopped local launch) and SIGINT
    save every running trial's state at a step boundary, end its attempt as interrupted at that step, and
    end the process (SystemExit 143; KeyboardInterrupt for SIGINT). A second signal while saving is
    ignored: it must not cut the checkpoints short. Returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    reasons: dict[int, str] = {
        signal.SIGTERM: "SIGTERM (scancel, requeue, preemption or the time limit)"
        if executor == "slurm"
        else "SIGTERM (`ftvar launch` was interrupted or stopped)",
        signal.SIGINT: "SIGINT (Ctrl-C)",
    }

    def on_signal(signum: int, frame: Any) -> None:
        for sig in reasons:
            signal.signal(sig, signal.SIG_IGN)
        saved = pack.save_all(reasons[signum])
        log.info("signal %d: saved %d checkpoint(s) at a step boundary; exiting", signum, saved)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, on_signal) for sig in reasons}


def _run(
    pack: Pack,
    study: Study,
    todo: list[Trial],
    paths: StudyPaths,
    lanes: int | None,
    stack: bool,
    statuses: dict[str, str],
) -> dict[str, str]:
    log_to_stderr()
    set_offline()
    preload(list(dict.fromkeys(m for t in todo for m in model_modules(settings(study, t)))))
    device = pick_device(settings(study, todo[0]).train.device)
    if device.type == "cuda":
        torch.cuda.init()  # the device's context, while the model's modules import
    want = min(max(1, lanes or 1), len(todo))
    queue: collections.deque[list[Trial]] = collections.deque([t] for t in todo)
    if stack:

        def step_of(trial: Trial) -> int | None:  # a stack's members resume from one step
            return saved_step(paths.ckpt / trial.trial_id)

        queue = collections.deque(plan_stacks(study, todo, want, step_of))
        want = 1  # the stack is the concurrency
    torch.set_num_threads(threads_per_lane(want))
    data: dict[str, Prepared] = {}
    data_lock = threading.Lock()

    def prepared_for(trial: Trial) -> Prepared:
        folder, _ = cache_folder(study, paths, trial)
        with data_lock:  # read once per data key, shared by every lane
            if str(folder) not in data:
                data[str(folder)] = load_prepared(study, paths, trial)
            return data[str(folder)]

    running_lanes: list[Lane] = []

    def next_item() -> tuple[list[Trial], list[Resumable]] | None:
        """The next trials to run, less those another process finished meanwhile (another launch's process
        may share them; one running them now holds their lock: `begin` waits for it, then gives up); None
        when nothing is left or the pack stopped."""
        with pack.lock:
            while queue and pack.stopped is None:
                item = []
                for t in queue.popleft():
                    if read_status(paths.record(t.trial_id)) == "ok":
                        statuses[t.trial_id] = "ok"
                    else:
                        item.append(t)
                if item:
                    resumables = [Resumable(paths.ckpt / t.trial_id, guard=pack.gate) for t in item]
                    for t, r in zip(item, resumables, strict=True):
                        pack.running[t.trial_id] = r
                    return item, resumables
            return None

    def write_failed(trials: list[Trial], exc: WriteFailed) -> None:
        """A write the storage refused: the trials without a record failed; the pack stops when the study
        folder cannot take another record."""
        for t in trials:
            statuses[t.trial_id] = read_status(paths.record(t.trial_id)) or "failed"
        problem = store_problem(paths)
        if problem is None:
            log.warning("%s; the other trials go on", exc)
            return
        with pack.lock:
            if pack.stopped is not None:
                return
            pack.stopped = problem
            left = [t for item in queue for t in item]
            queue.clear()
            for t in left:
                statuses[t.trial_id] = f"not run: {problem}"
        log.error("%s: %d trial(s) not started, left to the next launch", problem, len(left))

    def lane_main(lane: Lane) -> None:
        try:
            while True:
                got = next_item()
                if got is None:
                    return
                item, resumables = got
                steps = 0

                def after_step() -> None:
                    nonlocal steps
                    steps += 1
                    if steps >= WARM_STEPS:
                        lane.ready.set()

                if len(item) > 1:
                    run_stacked(item, resumables, after_step)
                    continue
                trial, resumable = item[0], resumables[0]
                log.info("lane %d: %s %s", lane.index, trial.trial_id, trial.label())
                # each lane launches on its own CUDA stream: lanes' kernels run side by side on the GPU
                stream = torch.cuda.stream(torch.cuda.Stream()) if device.type == "cuda" else nullcontext()
                try:
                    with stream:
                        record = run_trial(
                            study,
                            trial,
                            paths,
                            resumable=resumable,
                            prepared=prepared_for(trial),
                            after_step=after_step,
                            packing=lambda: Packing("lanes", len(running_lanes)) if want > 1 else ALONE,
                            reraise=lambda exc: _out_of_memory(exc) and _others_alive(running_lanes, lane),
                        )
                except TrialBusy as exc:
                    log.warning("%s", exc)
                    statuses[trial.trial_id] = "running elsewhere"
                    continue
                except WriteFailed as exc:
                    write_failed([trial], exc)
                    continue
                except torch.cuda.OutOfMemoryError:
                    log.warning(
                        "lane %d ran out of GPU memory: %s goes back to the queue, the lane stops",
                        lane.index,
                        trial.trial_id,
                    )
                    with pack.lock:
                        queue.append([trial])
                    return
                finally:
                    with pack.lock:
                        pack.running.pop(trial.trial_id, None)
                statuses[trial.trial_id] = str(record["status"])
                lane.ready.set()
        except BaseException as exc:  # raised again in the main thread
            lane.error = exc
        finally:
            lane.ready.set()

    def run_stacked(item: list[Trial], resumables: list[Resumable], after_step: Callable[[], None]) -> None:
        """One stack; if the stack itself fails, its trials go back to the queue: halves after running out
        of memory, else one at a time."""
        log.info("stack of %d: %s", len(item), " ".join(t.trial_id for t in item))
        try:
            records = run_stack(study, item, paths, resumables, prepared_for(item[0]), after_step)
        except StackFailed as exc:
            half = (len(item) + 1) // 2
            parts = [item[:half], item[half:]] if exc.out_of_memory else [[t] for t in item]
            log.warning("the %d trials run again as %s", len(item), " + ".join(str(len(p)) for p in parts))
            with pack.lock:
                queue.extendleft(reversed(parts))
            return
        except TrialBusy as exc:  # a member started elsewhere a moment ago: the others train without it
            log.warning("%s", exc)
            statuses[exc.trial_id] = "running elsewhere"
            with pack.lock:
                queue.appendleft([t for t in item if t.trial_id != exc.trial_id])
            return
        except WriteFailed as exc:
            write_failed(item, exc)
            return
        finally:
            with pack.lock:
                for t in item:
                    pack.running.pop(t.trial_id, None)
        for t, rec in zip(item, records, strict=True):
            statuses[t.trial_id] = str(rec["status"])

    def start_lane() -> None:
        lane = Lane(len(running_lanes))
        lane.thread = threading.Thread(
            target=lane_main, args=(lane,), name=f"ftvar-lane-{lane.index}", daemon=True
        )
        running_lanes.append(lane)
        lane.thread.start()

    stopped: list[BaseException] = []  # submitit gave up at the time limit ("timed-out too many times")
    usr2: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        submitit_usr2 = signal.getsignal(signal.SIGUSR2)

        def on_usr2(signum: int, frame: Any) -> None:
            """submitit's time-limit handler (it calls PackTask.checkpoint, then requeues and exits), but its
            refusal to requeue is handed to the loop below instead of raised: a handler's exception lands
            wherever the main thread is, and where that is logging's emit() (submitit logs every signal) it
            would be swallowed."""
            try:
                if callable(submitit_usr2):
                    submitit_usr2(signum, frame)
            except Exception as exc:
                stopped.append(exc)

        if callable(submitit_usr2):
            usr2[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, on_usr2)
    if want > 1:
        log.info("%d trial(s) in up to %d lanes on %s", len(todo), want, device)
    try:
        start_lane()
        capped = False
        while not stopped:
            alive = [lane for lane in running_lanes if lane.thread is not None and lane.thread.is_alive()]
            for lane in running_lanes:
                if lane.error is not None:
                    raise lane.error
            if not alive and not queue:
                break
            if not alive and queue:  # every lane stopped (out of memory) with work left: one more lane
                start_lane()
                continue
            last = running_lanes[-1]
            if len(alive) < want and queue and last.ready.is_set() and not capped:
                if _memory_allows(device, len(alive)):
                    start_lane()
                else:
                    capped = True
                    log.warning(
                        "running %d lane(s), not the %d asked for: free GPU memory holds no more",
                        len(alive),
                        want,
                    )
            # not Thread.join: a signal handler that raises inside join() leaves the Thread marked as stopped
            # while it still runs (CPython's bpo-45274 handling), and the lanes could not be waited for
            time.sleep(0.1)
        if stopped:
            # each running trial (its checkpoint just saved) records why it stopped and where it resumes;
            # the task then ends normally: its trials' records tell the rest
            log.info("%s", stopped[0])
            with pack.lock:
                queue.clear()
            pack.gate.stop(stopped[0])
            for lane in running_lanes:
                if lane.thread is not None:
                    lane.thread.join(timeout=120)
                if lane.error is not None and lane.error is not stopped[0]:
                    log.error("lane %d could not record the time limit: %r", lane.index, lane.error)
    finally:
        for sig, handler in usr2.items():
            signal.signal(sig, handler)
    if pack.stopped is not None:
        tell(f"ftvar: stopped: {pack.stopped}")
    return statuses


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _others_alive(lanes: list[Lane], me: Lane) -> bool:
    return any(lane is not me and lane.thread is not None and lane.thread.is_alive() for lane in lanes)


def _memory_allows(device: torch.device, running: int) -> bool:
    """Whether free GPU memory holds one more lane as large as the average lane so far, with a margin."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    per_lane = torch.cuda.memory_reserved(device) / max(1, running)  # (peaks are reset per trial)
    return bool(free > MEMORY_MARGIN * per_lane)


def threads_per_lane(lanes: int) -> int:
    """CPU threads for torch when `lanes` lanes share this process' cores."""
    value = os.environ.get("FTVAR_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    cores = int(value) if value and value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)
    return max(1, cores // max(1, lanes))
