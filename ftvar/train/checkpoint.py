"""Preemption: save a trial's training state on a signal, resume from it when the task runs again.

A checkpoint is taken only at an optimizer-step boundary. `StepGuard` defers the signals that trigger one
(SLURM's SIGTERM before a requeue or cancel, submitit's SIGUSR2 before a time limit) while a step is in
flight, and delivers them once the step is complete, so a checkpoint never holds half-updated weights.
Checkpoints live in `<out>/<study>/ckpt/<trial_id>/state.pt` and are deleted once the record is written.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

GUARDED = (signal.SIGTERM, signal.SIGUSR2)
Snapshot = Callable[[], dict[str, Any]]


class StepGuard:
    """Hold back guarded signals while a training step runs; replay them to the original handler after."""

    def __init__(self) -> None:
        self.in_step = False
        self.pending: list[int] = []
        self.handlers: dict[int, Any] = {}

    def install(self) -> None:
        for sig in GUARDED:
            self.handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers.clear()

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.in_step:
            self.pending.append(signum)
            return
        self._dispatch(signum, frame)

    def _dispatch(self, signum: int, frame: types.FrameType | None) -> None:
        handler = self.handlers.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @contextmanager
    def step(self) -> Iterator[None]:
        self.in_step = True
        try:
            yield
        finally:
            self.in_step = False
            while self.pending:
                self._dispatch(self.pending.pop(0), None)


@dataclass
class Resumable:
    """One trial's preemption state: where its checkpoint goes, the guard, and the live-state snapshot."""

    folder: Path
    guard: StepGuard = field(default_factory=StepGuard)
    snapshot: Snapshot | None = None

    def save(self) -> bool:
        return save(self.folder, self.snapshot)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, snapshot: Snapshot | None) -> bool:
    """Write the live training state atomically. Returns False when training has not started yet."""
    if snapshot is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    state = {**snapshot(), "rng": rng_state()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state.", suffix=".part")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, folder / "state.pt")
    finally:
        Path(tmp).unlink(missing_ok=True)
    print(f"ftvar: checkpoint at step {state['step']} saved to {folder}", file=sys.stderr, flush=True)
    return True


def load(folder: Path) -> dict[str, Any] | None:
    path = folder / "state.pt"
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
