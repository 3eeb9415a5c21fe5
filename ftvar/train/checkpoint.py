"""Preemption and hard kills: save a trial's training state, resume from it when the trial runs again.

A checkpoint is taken only at an optimizer-step boundary: on a signal (SLURM's SIGTERM before a requeue, a
cancel or a preemption; submitit's SIGUSR2 before a time limit) and every `train.checkpoint_minutes` of
training (so that SIGKILL, an out-of-memory kill or a lost node costs at most that much). Every step runs
inside a `Gate`; a checkpoint on a signal first waits at the gate for the steps in flight to end (the training
itself runs in worker threads, ftvar.train.pack, the signal is handled in the main thread), so a checkpoint
never holds half-updated weights. Checkpoints live in `<out>/<study>/ckpt/<trial_id>/state.pt` (written
atomically, with the sidecar `state.json`: step and time), hold only tensors and plain Python values (loaded
with `torch.load(weights_only=True)`: a file on shared storage cannot run code), and are deleted only once an
`ok` or `diverged` record is written: a failed trial keeps its checkpoint and the next launch resumes it.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftvar.store.attempts import AttemptLog, checkpoint_info, write_checkpoint_info
from ftvar.store.files import tell, write_atomic

Snapshot = Callable[[], dict[str, Any]]


class Gate:
    """Optimizer-step boundaries across lanes. Lanes run each step inside `step()`. `pause()` (a checkpoint)
    waits for the steps in flight to end and keeps new ones from starting until `resume()`; `stop()` ends
    them. `exclusive()`, entered from inside a step, runs it alone: a CUDA-graph capture must not see another
    lane's kernels, random numbers or device-wide synchronisation."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._held = False  # pause(): a checkpoint is being taken
        self._alone = False  # exclusive(): one lane captures
        self._stopped: BaseException | None = None  # stop(): every step from now on raises this

    @contextmanager
    def step(self) -> Iterator[None]:
        with self._cond:
            while (self._held or self._alone) and self._stopped is None:
                self._cond.wait()
            if self._stopped is not None:
                raise self._stopped
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._active -= 1  # while it waits, this lane counts as outside any step
            self._cond.notify_all()
            while self._alone or self._held:
                self._cond.wait()
            self._alone = True
            while self._active:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self._held = True
            while self._active:
                self._cond.wait()

    def resume(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def stopped(self) -> BaseException | None:
        """Why every step now ends (a time limit), or None while steps may run."""
        return self._stopped

    def stop(self, reason: BaseException) -> None:
        """End the training of every lane: each one's next step (or the one it waits to start) raises
        `reason`, which its trial records (a time limit: the checkpoint just saved stays for the next run)."""
        with self._cond:
            self._stopped = reason
            self._cond.notify_all()


@dataclass
class Resumable:
    """One trial's checkpointing: where its checkpoint goes, the guard, the live-state snapshot, how often to
    save while training (`every_s`; 0: only on signals) and the trial's attempt log."""

    folder: Path
    guard: Gate = field(default_factory=Gate)
    snapshot: Snapshot | None = None
    every_s: float = 0.0
    attempts: AttemptLog | None = None
    last_save: float = field(default_factory=time.monotonic)
    saved_step: int | None = None
    signalled: bool = False  # a signal saved the state and no step has run since
    failed_write: str | None = None  # why the last checkpoint could not be written

    def save(self, reason: str = "SIGUSR2 (time limit or preemption)") -> bool:
        """Checkpoint now because the task is being stopped (a signal handler calls this): the attempt ends
        as interrupted. Returns False when training has not started yet (nothing to save) or the checkpoint
        could not be written. A second signal before the next step (the SIGTERM of the requeue that a SIGUSR2
        asked for) keeps the first one's checkpoint and reason: the attempt says why it stopped, not how its
        requeue ended it."""
        if self.signalled:
            return self.saved_step is not None
        self.signalled = True
        self.failed_write = None
        saved = self._write(reason)
        if self.attempts is not None:
            if saved:
                where = f"checkpoint at step {self.saved_step}"
            elif self.failed_write is not None:
                where = f"no checkpoint: {self.failed_write}"
                where += f"; the last one is at step {self.saved_step}" if self.saved_step is not None else ""
            else:
                where = "no checkpoint (not training yet)"
            _log_attempt(self.attempts, "interrupted", f"{reason}: {where}", self.saved_step)
        return saved

    def at_step_boundary(self, force: bool = False) -> bool:
        """Called by an engine after every optimizer step: saves when `every_s` seconds of training have
        passed since the last save (or since training started), or when `force`d (a stack saves its members
        together, on its first member's timer). Returns whether it saved."""
        self.signalled = False
        if self.snapshot is None:
            return False
        due = bool(self.every_s) and time.monotonic() - self.last_save >= self.every_s
        if not (due or force):
            return False
        saved = self._write("periodic")
        if saved and self.attempts is not None:
            _log_attempt(self.attempts, step=self.saved_step)
        return saved

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Called by an engine once training state exists (at the start or on resume)."""
        self.snapshot = snapshot
        self.last_save = time.monotonic()

    def _write(self, reason: str) -> bool:
        """Save now; a checkpoint the storage refuses (a full disk) is reported and training goes on: the
        trial then resumes from its previous checkpoint, if any."""
        try:
            step = save(self.folder, self.snapshot, reason)
        except OSError as exc:
            self.failed_write = str(exc)
            self.last_save = time.monotonic()  # not again at every step: at the next period
            tell(f"ftvar: checkpoint not saved ({reason}): {exc}")
            return False
        if step is None:
            return False
        self.saved_step, self.last_save = step, time.monotonic()
        return True


def _log_attempt(
    attempts: AttemptLog, state: str | None = None, reason: str | None = None, step: int | None = None
) -> None:
    """Update the attempt log; a log the storage refuses is reported, never an end of training."""
    try:
        attempts.update(state, reason, step)
    except OSError as exc:
        tell(f"ftvar: attempt not recorded ({state or 'progress'}): {exc}")


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, snapshot: Snapshot | None, reason: str = "signal") -> int | None:
    """Write the live training state atomically; returns its step, or None when training has not started."""
    if snapshot is None:
        return None
    state = {**snapshot(), "rng": rng_state()}
    write_atomic(folder / "state.pt", lambda fh: torch.save(state, fh))
    step = int(state["step"])
    write_checkpoint_info(folder, step, reason, (folder / "state.pt").stat().st_size)
    tell(f"ftvar: checkpoint at step {step} saved to {folder} ({reason})")
    return step


def load(folder: Path) -> dict[str, Any] | None:
    """A trial's checkpoint, or None. Loaded with weights_only=True: tensors and plain values only. An
    unreadable checkpoint (corrupt, or written by an older ftvar) is reported and ignored."""
    path = folder / "state.pt"
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint that cannot be read must not stop the trial: start over
        why = (str(exc).splitlines() or [""])[0]
        tell(
            f"ftvar: ignoring checkpoint {path} ({exc.__class__.__name__}: {why}); training starts at step 0"
        )
        return None
    return state


def saved_step(folder: Path) -> int | None:
    info = checkpoint_info(folder)
    return int(info["step"]) if info else None


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
