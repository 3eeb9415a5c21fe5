"""The engine seam: what a training loop is given and returns, and the pieces every loop shares.

An engine takes the tokenized data, a model and the trial's params (`FitJob`) and returns metrics
(`FitResult`). The loops share the batches, the epoch order, the schedule's formulas, the optimizer's
parameter groups, evaluation and scoring, defined here once. The loops themselves: `ftvar.train.plain` (the
reference), `ftvar.train.fast` (static shapes, CUDA graphs), `ftvar.train.trainer` (the Hugging Face
Trainer); `ftvar.train.registry` picks one by name.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ftvar.data.cache import Split
from ftvar.study.config import TrainConfig
from ftvar.study.trial import Trial
from ftvar.train.checkpoint import Gate, Snapshot

log = logging.getLogger("ftvar.train")


@dataclass
class FitJob:
    model: torch.nn.Module
    train: Split
    eval: Split
    trial: Trial
    settings: TrainConfig
    device: torch.device
    pad_id: int
    num_labels: int
    # preemption: called once with a function that snapshots the live state (at a step boundary)
    on_checkpointable: Callable[[Snapshot], None] | None = None
    guard: Gate | None = None  # every optimizer step runs inside it (checkpoints wait for a boundary)
    resume_state: dict[str, Any] | None = None  # a loaded checkpoint to continue from
    after_step: Callable[[], None] | None = None  # called at each optimizer-step boundary (periodic saves)
    test: Split | None = None  # the held-out test split (when the study has one), evaluated after eval


@dataclass
class FitResult:
    metrics: dict[str, float | None]
    steps: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    samples: int = 0
    tokens: int = 0
    diverged: str | None = None  # why, when the loss stopped being finite
    resumed_from_step: int | None = None
    first_step_at: float | None = None  # time.time() when the first optimizer step had run (start-up)
    eval_counts: dict[str, Any] = field(default_factory=dict)  # label and prediction counts (EvalResult)
    engine: dict[str, Any] = field(default_factory=dict)  # the record's `engine` block (name, graphs, …)
    curve: list[dict[str, Any]] | None = None  # the learning curve's points (None: train.eval_every = 0)
    curve_time: float = 0.0  # seconds spent evaluating during training (in eval_time, not in train_time)
    evaluated: dict[str, EvalResult] = field(default_factory=dict)  # "eval" and "test": per-row predictions


class Engine(Protocol):
    name: str

    def fit(self, job: FitJob) -> FitResult: ...


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` (None: no autocast). auto: bf16 on a GPU that has it, else
    fp32; fp32 and tf32 have no autocast (tf32 only changes how a GPU multiplies fp32 matrices)."""
    if precision in ("fp32", "tf32"):
        return None
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_used(precision: str, device: torch.device) -> dict[str, str]:
    """What the record says of the arithmetic: `precision` (the autocast dtype, or fp32) and `matmul` (how
    fp32 matrices are multiplied: "tf32" on a GPU for train.precision = "tf32", else "ieee")."""
    dtype = autocast_dtype(precision, device)
    autocast = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype else "fp32"
    tf32 = precision == "tf32" and device.type == "cuda"
    return {"precision": autocast, "matmul": "tf32" if tf32 else "ieee"}


class MatmulPrecision:
    """The process's fp32 matmul precision on CUDA (TF32 or IEEE), held by the trials that train or evaluate.

    torch keeps it in process-wide flags, so a trial sets it for as long as it runs and gives it back: a lane
    that needs the other precision waits until the lanes that hold this one are done, and nothing a trial set
    leaks into the next one. On a CPU there is nothing to set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tf32: bool | None = None
        self._holders = 0

    @contextmanager
    def hold(self, precision: str, device: torch.device) -> Iterator[None]:
        if device.type != "cuda":
            yield
            return
        tf32 = precision_used(precision, device)["matmul"] == "tf32"
        with self._cond:
            while self._holders and self._tf32 != tf32:
                self._cond.wait()
            self._tf32, self._holders = tf32, self._holders + 1
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                if not self._holders:  # back to torch's defaults
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.allow_tf32 = True
                    self._tf32 = None
                self._cond.notify_all()


MATMUL = MatmulPrecision()


def takes_token_types(model: torch.nn.Module) -> bool:
    """Whether a model uses token type ids (BERT and MiniLM do; DistilBERT and RoBERTa do not): asked of the
    model — its forward takes them and its config has a type for each text of a pair — not guessed by name."""
    try:
        takes = "token_type_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    types = getattr(getattr(model, "config", None), "type_vocab_size", None)
    return takes and (types is None or int(types) >= 2)


def for_model(split: Split, model: torch.nn.Module) -> Split:
    """The split as the model takes it: without a sentence pair's token type ids when the model has none."""
    if split.types is None or takes_token_types(model):
        return split
    return dataclasses.replace(split, types=None)


def collate(split: Split, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Dynamic padding: the rows `idx` of a split, padded to their own longest sequence (with the token type
    ids of a sentence pair, when the split has them)."""
    lengths = split.lengths[idx]
    width = int(lengths.max())
    input_ids = torch.from_numpy(np.ascontiguousarray(split.ids[idx, :width])).long()
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    labels = torch.from_numpy(split.labels[idx])
    out = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    if split.types is not None:
        types = torch.from_numpy(np.ascontiguousarray(split.types[idx, :width])).long()
        out["token_type_ids"] = types.to(device)
    return out


def batches(n: int, batch_size: int, order: torch.Tensor | None = None) -> Iterator[np.ndarray]:
    """Row indices of each batch: in `order` (a tensor of indices, possibly a resumed epoch's tail) or in
    file order."""
    idx = order.numpy() if order is not None else np.arange(n)
    for start in range(0, len(idx), batch_size):
        yield idx[start : start + batch_size]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of `rows` (its last batch may be smaller): every engine's schedule."""
    return math.ceil(rows / batch_size)


def warmup_steps(ratio: float, total: int) -> int:
    """The warmup of a schedule of `total` steps (train.warmup_ratio, rounded up as transformers does)."""
    return math.ceil(ratio * total)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of one epoch: a pure function of (order seed, epoch), so a resumed run sees the
    same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    label_counts: list[int]
    pred_counts: list[int]
    labels: np.ndarray | None = None  # per row, in the split's order: the gold label,
    predicted: np.ndarray | None = None  # the predicted label,
    probabilities: np.ndarray | None = None  # and the probability of each class (rows × classes, float32)

    def counts(self) -> dict[str, Any]:
        """The record's `eval` block: counts, the majority share, and whether the model is degenerate
        (predicts one class only, or is exactly as accurate as always answering the majority class)."""
        n = max(1, sum(self.label_counts))
        majority = max(self.label_counts) / n
        accuracy = self.metrics.get("accuracy")
        one_class = sum(1 for c in self.pred_counts if c) <= 1
        at_majority = accuracy is not None and abs(accuracy - majority) < 0.5 / n
        return {
            "label_counts": self.label_counts,
            "pred_counts": self.pred_counts,
            "majority_share": majority,
            "degenerate": bool(one_class or at_majority),
        }


def scores(y_true: np.ndarray, y_pred: np.ndarray, loss_sum: float, num_labels: int) -> EvalResult:
    """Accuracy, F1 (binary for two classes, macro otherwise), the Matthews correlation coefficient (MCC;
    multi-class: Gorodkin's R_K, as scikit-learn computes it; 0 for a model that predicts one class), mean
    cross-entropy and the class counts."""
    # here: a trial needs them only once it has trained
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    average = "binary" if num_labels == 2 else "macro"
    eval_loss = loss_sum / max(1, len(y_true))
    metrics: dict[str, float | None] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(
            f1_score(y_true, y_pred, average=average, labels=list(range(num_labels)), zero_division=0)
        ),
        "eval_loss": eval_loss if math.isfinite(eval_loss) else None,
        "mcc": float(matthews_corrcoef(y_true, y_pred)) if len(y_true) else None,
    }
    labels = np.bincount(y_true, minlength=num_labels).tolist()
    preds = np.bincount(y_pred, minlength=num_labels).tolist()
    return EvalResult(metrics, [int(c) for c in labels], [int(c) for c in preds])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    num_labels: int,
    dtype: torch.dtype | None,
) -> EvalResult:
    """The model's metrics on `split`, batch by batch in file order."""
    model.eval()
    preds, probs, loss_sum = [], [], 0.0
    for idx in batches(len(split), batch_size):
        batch = collate(split, idx, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        probs.append(torch.softmax(logits, -1).cpu())
    y_pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, num_labels), dtype=np.float32)
    return with_rows(scores(split.labels, y_pred, loss_sum, num_labels), split.labels, y_pred, p)


def with_rows(result: EvalResult, labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> EvalResult:
    """An evaluation's metrics with its per-row outputs (the trial's predictions sidecar)."""
    result.labels = np.asarray(labels, dtype=np.int64)
    result.predicted = np.asarray(predicted, dtype=np.int64)
    result.probabilities = np.asarray(probs, dtype=np.float32)
    return result


def evaluated_into(
    result: FitResult,
    evaluated: EvalResult,
    losses: list[float],
    seconds: float,
    test: EvalResult | None = None,
) -> FitResult:
    """A trained trial's result with its evaluation: the metrics, the last epoch's mean training loss and the
    class counts, the per-row outputs (and the test split's); a non-finite evaluation loss makes it
    diverged."""
    result.eval_time = seconds
    result.metrics = {**evaluated.metrics, "train_loss": sum(losses) / len(losses) if losses else None}
    result.eval_counts = evaluated.counts()
    result.evaluated = {"eval": evaluated, **({"test": test} if test is not None else {})}
    if result.metrics["eval_loss"] is None:
        result.diverged = "non-finite evaluation loss"
    return result


def add_curve_point(state: LoopState, per_epoch: int, metrics: dict[str, Any] | None) -> None:
    """The trial's curve point at its current step: the mean training loss since the last point and the
    evaluation's `metrics` (None for a trial that diverged: its loss only); the next window starts here."""
    from ftvar.train.curve import point, window_mean

    mean = window_mean(state.curve_loss, state.step - state.curve_step)
    state.curve.append(point(state.step, per_epoch, mean, metrics or {}))
    state.curve_loss, state.curve_step = 0.0, state.step


def finish_curve(result: FitResult, state: LoopState, per_epoch: int, on: bool) -> FitResult:
    """The end of a trained trial's curve: its last point is the final evaluation (a diverged trial keeps the
    points it had), and the seconds spent evaluating during training move from train_time to eval_time."""
    result.train_time = max(0.0, result.train_time - result.curve_time)
    result.eval_time += result.curve_time
    if not on:
        return result
    if result.diverged is None and (not state.curve or state.curve[-1]["step"] < state.step):
        add_curve_point(state, per_epoch, result.metrics)
    result.curve = list(state.curve)
    return result


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to a parameter: not to biases and LayerNorm weights (the BERT recipe)."""
    return param.ndim >= 2 and "norm" not in name.lower()


def param_groups(
    model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: weight decay on weights, not on biases and LayerNorm weights (the
    BERT recipe), each group's learning rate as a multiple of the trial's (`lr_scale`). Without layer decay,
    two groups (decayed, not decayed) in the model's order; with `train.layer_decay` d, a pair per depth from
    the top (ftvar.train.remedies.layer_depths), embeddings first, each at d ** depth: the head at the trial's
    learning rate, the top encoder layer at d times it, the embeddings lowest."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if layer_decay == 1.0:
        decay = [p for name, p in trained if decays(name, p)]
        no_decay = [p for name, p in trained if not decays(name, p)]
        return [
            {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
    from ftvar.train.remedies import layer_depths

    depth = layer_depths(model)
    groups: list[dict[str, Any]] = []
    for d in sorted({depth[id(p)] for _, p in trained}, reverse=True):
        for wants_decay in (True, False):
            params = [p for name, p in trained if depth[id(p)] == d and decays(name, p) == wants_decay]
            if params:
                groups.append(
                    {
                        "params": params,
                        "weight_decay": weight_decay if wants_decay else 0.0,
                        "lr_scale": layer_decay**d,
                        "depth": d,
                    }
                )
    return groups


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    lr_tensor: torch.Tensor | None = None,
    layer_decay: float = 1.0,
    bias_correction: bool = True,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (no weight decay on biases and LayerNorm weights; layer-wise learning rates
    with `layer_decay` < 1), or Adam without bias correction (ftvar.train.optim) for `bias_correction=False`.
    With `lr_tensor` (a device tensor the caller updates in place through `set_learning_rate`), the fused,
    capturable AdamW a CUDA graph can hold: every group reads that tensor, or, with layer decay, a device
    tensor of its own."""
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        if lr_tensor is None:
            group["lr"] = lr * group["lr_scale"]
        else:
            group["lr"] = lr_tensor if group["lr_scale"] == 1.0 else lr_tensor * group["lr_scale"]
    if not bias_correction:
        from ftvar.train.optim import AdamWithoutBiasCorrection

        return AdamWithoutBiasCorrection(groups, lr=lr_tensor if lr_tensor is not None else lr)
    if lr_tensor is not None:
        return torch.optim.AdamW(groups, lr=lr_tensor, fused=True, capturable=True)
    try:  # fused: one kernel for all the parameters (the Trainer's default too); 1.6× the steps on a CPU
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a torch or a device without a fused AdamW
        return torch.optim.AdamW(groups, lr=lr)


def optimizer_of(
    model: torch.nn.Module, trial: Trial, s: TrainConfig, lr_tensor: torch.Tensor | None = None
) -> Any:
    """`make_optimizer` with a trial's learning rate and its settings' remedies."""
    return make_optimizer(
        model,
        float(trial.learning_rate or 0.0),
        s.weight_decay,
        lr_tensor,
        layer_decay=s.layer_decay,
        bias_correction=s.bias_correction,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Every group's learning rate for this step: `value` × the group's `lr_scale`; a group whose learning
    rate is a device tensor (a CUDA graph reads it) is filled in place, once per tensor."""
    filled: set[int] = set()
    for group in optimizer.param_groups:
        lr = group["lr"]
        scaled = value * group.get("lr_scale", 1.0)
        if isinstance(lr, torch.Tensor):
            if id(lr) not in filled:
                lr.fill_(scaled)
                filled.add(id(lr))
        else:
            group["lr"] = scaled


def restore_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], lr_tensor: torch.Tensor | None = None
) -> None:
    """Load a checkpoint's optimizer state. `load_state_dict` also replaces each group's learning rate by the
    saved one: a group driven through a device tensor (a CUDA graph's: `lr_tensor`, or the group's own with
    layer decay) is linked to that tensor again, or a resumed trial would train at the learning rate of the
    step it was saved at."""
    live = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, lr in zip(optimizer.param_groups, live, strict=True):
        if isinstance(lr, torch.Tensor):
            group["lr"] = lr
        elif lr_tensor is not None:
            group["lr"] = lr_tensor


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """fp16's gradient scaler as the checkpoint left it (its scale and growth tracker); checkpoints written
    before the scaler was saved start it afresh."""
    if scaler.is_enabled() and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])


@dataclass
class LoopState:
    """What a checkpoint must hold beyond the model, optimizer and scheduler."""

    step: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # the fast loop's device sum of this epoch's losses so far (at a checkpoint)
    samples: int = 0
    tokens: int = 0
    # the learning curve (ftvar.train.curve): its points so far, the training loss summed since the last one
    # (the fast loop: up to `curve_mark`, the device's epoch loss sum at the window's start) and its step
    curve: list[dict[str, Any]] = field(default_factory=list)
    curve_loss: float = 0.0
    curve_mark: float = 0.0
    curve_step: int = 0
