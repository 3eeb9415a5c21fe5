"""Which trials can train as one stack (ftvar.train.stack): their key, the stacks of a pack, a launch's order.

Torch-free: a launch on a login node orders the trials so that each task's can stack.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable

from ftvar.study.config import Study
from ftvar.study.trial import Trial, data_key, settings

# settings in which a stack's members may differ (besides the learning rate and seeds); all else is equal
# (re-initialised layers: each member's model is built, re-initialised, before it is stacked)
PER_MEMBER = (
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "checkpoint_minutes",
    "eval_batch_size",
    "reinit_layers",
)


def not_stackable(study: Study, trial: Trial) -> str | None:
    """Why a trial trains alone and never in a stack (None: it can stack)."""
    if trial.is_baseline:
        return "a baseline is evaluated, not trained"
    s = settings(study, trial)
    if s.train.engine not in ("auto", "fast"):
        return f"train.engine = {s.train.engine!r}: stacks are the fast engine's"
    if s.train.precision == "fp16":
        return "fp16 needs a gradient scaler per trial, which a stack does not hold"
    if s.train.layer_decay != 1.0:
        return (
            "train.layer_decay gives each layer its own learning rate, and a stack holds each member's "
            "weights in two flat blocks of one learning rate each"
        )
    return None


def stack_key(study: Study, trial: Trial) -> str | None:
    """Trials with equal keys can train in one stack; None: this trial trains alone (`not_stackable` says
    why: a baseline, another engine than the fast one, fp16, layer-wise learning rates)."""
    if not_stackable(study, trial) is not None:
        return None
    s = settings(study, trial)
    train = {k: v for k, v in dataclasses.asdict(s.train).items() if k not in PER_MEMBER}
    shared = [data_key(study, s), dataclasses.asdict(s.model), train, trial.batch_size, trial.epochs]
    return json.dumps(shared, sort_keys=True, default=str)


def plan_stacks(
    study: Study,
    trials: Iterable[Trial],
    size: int,
    resume_step: Callable[[Trial], int | None] | None = None,
) -> list[list[Trial]]:
    """The trials in stacks of at most `size` members with equal keys (in their given order), and every trial
    that cannot be stacked alone. With `resume_step` (a trial's checkpoint step), only trials that resume
    from the same step (or start) share a stack."""
    groups: dict[str, list[Trial]] = {}
    items: list[list[Trial]] = []
    for trial in trials:
        key = stack_key(study, trial)
        if key is None or size < 2:
            items.append([trial])
            continue
        if resume_step is not None:
            key += f"@{resume_step(trial) or 0}"
        group = groups.get(key)
        if group is None or len(group) >= size:
            group = groups[key] = []
            items.append(group)
        group.append(trial)
    return items


def stacking_order(study: Study, trials: list[Trial]) -> list[Trial]:
    """The trials with stackable ones next to each other (stable otherwise): what a launch hands to tasks of
    K trials each, so that each task's trials can form one stack."""
    keys = [stack_key(study, t) or f"alone:{i}" for i, t in enumerate(trials)]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    ranked = sorted(range(len(trials)), key=lambda i: (first[keys[i]], i))
    return [trials[i] for i in ranked]
