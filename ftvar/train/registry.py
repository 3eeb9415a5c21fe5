"""The engine registry: a training loop by name, and what `auto` means on this device.

`plain` (ftvar.train.plain) is the readable reference loop; `fast` (ftvar.train.fast) keeps the data on the
device, pads to a few static lengths and replays each step as a CUDA graph; `trainer` (ftvar.train.trainer) is
the Hugging Face Trainer, for comparison and as a fallback. Engines are imported only when chosen.
"""

from __future__ import annotations

import importlib

import torch

from ftvar.train.engine import Engine

ENGINES = {
    "plain": ("ftvar.train.plain", "PlainEngine"),
    "fast": ("ftvar.train.fast", "FastEngine"),
    "trainer": ("ftvar.train.trainer", "TrainerEngine"),
}


def resolve(name: str, device: torch.device) -> str:
    """`auto` → the fast engine on a CUDA device, the plain loop elsewhere."""
    if name == "auto":
        return "fast" if device.type == "cuda" else "plain"
    return name


def make(name: str, device: torch.device) -> Engine:
    module, cls = ENGINES[resolve(name, device)]
    engine: Engine = getattr(importlib.import_module(module), cls)()
    return engine
