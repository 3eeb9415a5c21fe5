"""Engines: the seam between a trial and its training loop, and the plain loop that is the reference.

An engine takes the tokenized data, a model and the trial's params and returns metrics. `PlainEngine` is a
plain PyTorch loop (AdamW, a warmup schedule, dynamic padding, optional autocast) that reads top to bottom.
The fast engine (ftvar.train.fast: static shapes, CUDA graphs) and the Hugging Face Trainer
(ftvar.train.hf) sit beside it; `ftvar.train.engines` picks one by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ftvar.config import TrainConfig
from ftvar.train.cache import Split
from ftvar.train.checkpoint import Gate, Snapshot, set_rng_state
from ftvar.trial import Trial

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


class Engine(Protocol):
    name: str

    def fit(self, job: FitJob) -> FitResult: ...


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on a GPU that has it, else fp32 (no autocast)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def collate(split: Split, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Dynamic padding: the rows `idx` of a split, padded to their own longest sequence."""
    lengths = split.lengths[idx]
    width = int(lengths.max())
    input_ids = torch.from_numpy(np.ascontiguousarray(split.ids[idx, :width])).long()
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    labels = torch.from_numpy(split.labels[idx])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


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
    """Accuracy, F1 (binary for two classes, macro otherwise), mean cross-entropy and the class counts."""
    from sklearn.metrics import accuracy_score, f1_score  # here: a trial needs them only once it has trained

    average = "binary" if num_labels == 2 else "macro"
    eval_loss = loss_sum / max(1, len(y_true))
    metrics: dict[str, float | None] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(
            f1_score(y_true, y_pred, average=average, labels=list(range(num_labels)), zero_division=0)
        ),
        "eval_loss": eval_loss if math.isfinite(eval_loss) else None,
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
    preds, loss_sum = [], 0.0
    for idx in batches(len(split), batch_size):
        batch = collate(split, idx, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
    y_pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return scores(split.labels, y_pred, loss_sum, num_labels)


def evaluated_into(
    result: FitResult, evaluated: EvalResult, losses: list[float], seconds: float
) -> FitResult:
    """A trained trial's result with its evaluation: the metrics, the last epoch's mean training loss and the
    class counts; a non-finite evaluation loss makes it diverged."""
    result.eval_time = seconds
    result.metrics = {**evaluated.metrics, "train_loss": sum(losses) / len(losses) if losses else None}
    result.eval_counts = evaluated.counts()
    if result.metrics["eval_loss"] is None:
        result.diverged = "non-finite evaluation loss"
    return result


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to a parameter: not to biases and LayerNorm weights (the BERT recipe)."""
    return param.ndim >= 2 and "norm" not in name.lower()


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, lr_tensor: torch.Tensor | None = None
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm weights (the usual BERT recipe). With `lr_tensor`
    (a device tensor the caller updates in place), the fused, capturable AdamW a CUDA graph can hold."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr_tensor is not None:
        return torch.optim.AdamW(groups, lr=lr_tensor, fused=True, capturable=True)
    try:  # fused: one kernel for all the parameters (the Trainer's default too); 1.6× the steps on a CPU
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a torch or a device without a fused AdamW
        return torch.optim.AdamW(groups, lr=lr)


def restore_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], lr_tensor: torch.Tensor | None = None
) -> None:
    """Load a checkpoint's optimizer state. `load_state_dict` also replaces each group's learning rate by the
    saved one: an optimizer driven through `lr_tensor` (a CUDA graph's) is linked to that tensor again, or a
    resumed trial would train at the learning rate of the step it was saved at."""
    optimizer.load_state_dict(saved)
    if lr_tensor is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr_tensor


@dataclass
class LoopState:
    """What a checkpoint must hold beyond the model, optimizer and scheduler."""

    step: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0


class PlainEngine:
    """One trial, one device, a plain loop."""

    name = "plain"

    def fit(self, job: FitJob) -> FitResult:
        result = self._fit(job)
        result.engine = {"name": self.name, "cuda_graphs": None, "fallback": None}
        return result

    def _fit(self, job: FitJob) -> FitResult:
        from transformers import get_scheduler

        trial, s, model = job.trial, job.settings, job.model
        assert trial.learning_rate is not None and trial.batch_size is not None
        model.to(job.device)
        total = steps_per_epoch(len(job.train), trial.batch_size) * trial.epochs
        optimizer = make_optimizer(model, trial.learning_rate, s.weight_decay)
        warmup = warmup_steps(s.warmup_ratio, total)
        scheduler = get_scheduler(s.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        state, result = LoopState(), FitResult(metrics={})
        if job.resume_state is not None:  # continue a preempted run where its checkpoint left off
            model.load_state_dict(job.resume_state["model"])
            optimizer.load_state_dict(job.resume_state["optimizer"])
            scheduler.load_state_dict(job.resume_state["scheduler"])
            state = LoopState(**job.resume_state["loop"])
            result.resumed_from_step = state.step
            set_rng_state(job.resume_state["rng"])
        if job.on_checkpointable is not None:
            job.on_checkpointable(
                lambda: {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": state.step,
                    "loop": dataclasses.asdict(state),
                }
            )
        t0 = time.perf_counter()
        result.diverged = self._train(job, optimizer, scheduler, state, total, result)
        result.steps, result.train_time = state.step, time.perf_counter() - t0
        result.samples, result.tokens = state.samples, state.tokens
        if result.diverged:  # a model with NaN weights has no meaningful metrics
            result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
            return result
        t1 = time.perf_counter()
        dtype = autocast_dtype(s.precision, job.device)
        evaluated = evaluate(model, job.eval, s.eval_batch_size, job.device, job.num_labels, dtype)
        return evaluated_into(result, evaluated, state.epoch_losses, time.perf_counter() - t1)

    def _train(
        self,
        job: FitJob,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: LoopState,
        total: int,
        result: FitResult,
    ) -> str | None:
        """The loop. Each step runs inside the job's gate. Returns why training diverged, if it did."""
        trial, s, model, device = job.trial, job.settings, job.model, job.device
        assert trial.batch_size is not None
        dtype = autocast_dtype(s.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        per_epoch = steps_per_epoch(len(job.train), trial.batch_size)
        guard = job.guard.step if job.guard is not None else contextlib.nullcontext
        after_step = job.after_step or (lambda: None)
        model.train()
        while state.step < total:
            epoch, offset = divmod(state.step, per_epoch)
            if offset == 0:
                state.epoch_losses = []
            assert trial.order_seed is not None
            order = epoch_order(len(job.train), trial.order_seed, epoch)[offset * trial.batch_size :]
            for idx in batches(len(job.train), trial.batch_size, order):
                with guard():  # the copy to the device too: a pack's capturing lane sees no other work
                    batch = collate(job.train, idx, device)
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        loss = model(**batch).loss
                    if not torch.isfinite(loss):
                        return f"non-finite training loss at step {state.step + 1} of {total}"
                    scaler.scale(loss).backward()
                    if s.max_grad_norm > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    if result.first_step_at is None:
                        result.first_step_at = time.time()
                    state.epoch_losses.append(loss.item())
                    state.samples += len(idx)
                    state.tokens += int(job.train.lengths[idx].sum())
                after_step()
            losses = state.epoch_losses
            log.info(
                "%s epoch %d/%d done: step %d/%d, train loss %.4f",
                trial.trial_id,
                epoch + 1,
                trial.epochs,
                state.step,
                total,
                sum(losses) / max(1, len(losses)),
            )
        return None
