"""The learning curve: the steps at which a trial is evaluated during training, and the points it records.

`train.eval_every` is an integer number of steps, or a float: a fraction of an epoch (1.0, the default: once
an epoch; 0.25: four times an epoch); 0 records no curve. The last point is always the end of training, whose
evaluation is the record's final one (never evaluated twice). A point holds the step, the epoch (a fraction),
the mean training loss over the steps since the previous point, and the eval split's metrics (the record
schema's `curve`). Evaluating changes nothing in training: the model is put back in training mode, the
trial's dropout is a function of its seed and step (ftvar.train.noise), and nothing draws random numbers.

The training loss of a window is kept on the host in the trial's `LoopState` (`curve_loss`, and for the fast
loop `curve_mark`, the device's epoch loss sum at the window's start), so a checkpoint holds the curve so far
and where its current window began: a resumed trial's curve continues without a gap or a repeat.
"""

from __future__ import annotations

import math
from typing import Any

CURVE_METRICS = ("accuracy", "f1", "mcc", "eval_loss")


def curve_steps(eval_every: float, per_epoch: int, total: int) -> list[int]:
    """The steps at which a trial of `total` steps (`per_epoch` an epoch) is evaluated, the last one `total`;
    empty when `eval_every` is 0. An integer is a number of steps; a float a fraction of an epoch, whose
    multiples are rounded to the nearest step (so that 0.25 evaluates at each quarter and at each epoch's
    end)."""
    if not eval_every or total <= 0:
        return []
    steps: set[int] = set()
    if isinstance(eval_every, int):
        steps.update(range(eval_every, total, eval_every))
    elif eval_every * per_epoch < 1:  # more often than every step: every step
        steps.update(range(1, total))
    else:
        m = 1
        while (step := math.floor(m * eval_every * per_epoch + 0.5)) < total:  # halves round up
            steps.add(max(1, step))
            m += 1
    return sorted(steps | {total})


def point(step: int, per_epoch: int, train_loss: float | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """A curve point as the record holds it: non-finite values as null."""
    out: dict[str, Any] = {
        "step": int(step),
        "epoch": step / max(1, per_epoch),
        "train_loss": finite(train_loss),
    }
    out.update({k: finite(metrics.get(k)) for k in CURVE_METRICS})
    return out


def finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def window_mean(loss_sum: float, steps: int) -> float | None:
    """The mean training loss of a window of `steps` steps whose losses sum to `loss_sum`."""
    return loss_sum / steps if steps > 0 else None
