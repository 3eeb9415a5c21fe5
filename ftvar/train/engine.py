"""Engines: the seam between a trial and its training loop.

An engine takes the tokenized data, a model and the trial's params and returns metrics. `PlainEngine` is a
plain PyTorch loop (AdamW, a warmup schedule, dynamic padding, optional autocast) that reads top to bottom.
Faster engines (CUDA graphs, several trials per GPU) plug in beside it under another name.
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

import torch
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score

from ftvar.config import TrainConfig
from ftvar.train.checkpoint import Snapshot, StepGuard, set_rng_state
from ftvar.trial import Trial

log = logging.getLogger("ftvar.train")


@dataclass
class FitJob:
    model: torch.nn.Module
    train: Dataset
    eval: Dataset
    trial: Trial
    settings: TrainConfig
    device: torch.device
    pad_id: int
    num_labels: int
    # preemption: called once with a function that snapshots the live state (at a step boundary)
    on_checkpointable: Callable[[Snapshot], None] | None = None
    guard: StepGuard | None = None
    resume_state: dict[str, Any] | None = None  # a loaded checkpoint to continue from
    at_step_boundary: Callable[[], object] = lambda: None  # after every optimizer step (periodic checkpoints)


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
    extra: dict[str, Any] = field(default_factory=dict)


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


def collate(rows: dict[str, list[Any]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad each batch to its own longest sequence."""
    seqs = [torch.tensor(ids, dtype=torch.long) for ids in rows["input_ids"]]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    labels = torch.tensor(rows["label"], dtype=torch.long)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def batches(
    ds: Dataset, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[dict[str, list[Any]]]:
    """Rows of `ds` in `order` (a tensor of indices, possibly a resumed epoch's tail) or in file order."""
    n = len(order) if order is not None else len(ds)
    for start in range(0, n, batch_size):
        idx = (
            order[start : start + batch_size].tolist()
            if order is not None
            else list(range(start, min(n, start + batch_size)))
        )
        yield ds[idx]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of one epoch: a pure function of (seed, epoch), so a resumed run sees the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    ds: Dataset,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    num_labels: int,
    dtype: torch.dtype | None,
) -> dict[str, float | None]:
    """Accuracy, F1 (binary for two classes, macro otherwise) and mean cross-entropy on `ds`."""
    model.eval()
    preds, labels, loss_sum = [], [], 0.0
    for rows in batches(ds, batch_size):
        batch = collate(rows, pad_id, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    y_pred, y_true = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    average = "binary" if num_labels == 2 else "macro"
    eval_loss = loss_sum / max(1, len(y_true))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(
            f1_score(y_true, y_pred, average=average, labels=list(range(num_labels)), zero_division=0)
        ),
        "eval_loss": eval_loss if math.isfinite(eval_loss) else None,
    }


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm weights (the usual BERT recipe)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


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
        from transformers import get_scheduler

        trial, s, model = job.trial, job.settings, job.model
        assert trial.learning_rate is not None and trial.batch_size is not None
        model.to(job.device)
        total = math.ceil(len(job.train) / trial.batch_size) * trial.epochs
        optimizer = make_optimizer(model, trial.learning_rate, s.weight_decay)
        warmup = math.ceil(s.warmup_ratio * total)
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
        result.diverged = self._train(job, optimizer, scheduler, state, total)
        result.steps, result.train_time = state.step, time.perf_counter() - t0
        result.samples, result.tokens = state.samples, state.tokens
        if result.diverged:  # a model with NaN weights has no meaningful metrics
            result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
            return result
        t1 = time.perf_counter()
        dtype = autocast_dtype(s.precision, job.device)
        metrics = evaluate(model, job.eval, s.eval_batch_size, job.pad_id, job.device, job.num_labels, dtype)
        result.eval_time = time.perf_counter() - t1
        losses = state.epoch_losses
        result.metrics = {**metrics, "train_loss": sum(losses) / len(losses) if losses else None}
        if result.metrics["eval_loss"] is None:
            result.diverged = "non-finite evaluation loss"
        return result

    def _train(
        self, job: FitJob, optimizer: torch.optim.Optimizer, scheduler: Any, state: LoopState, total: int
    ) -> str | None:
        """The loop. Each step runs under the job's StepGuard. Returns why training diverged, if it did."""
        trial, s, model, device = job.trial, job.settings, job.model, job.device
        assert trial.batch_size is not None
        dtype = autocast_dtype(s.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        steps_per_epoch = math.ceil(len(job.train) / trial.batch_size)
        guard = job.guard.step if job.guard is not None else contextlib.nullcontext
        model.train()
        while state.step < total:
            epoch, offset = divmod(state.step, steps_per_epoch)
            if offset == 0:
                state.epoch_losses = []
            order = epoch_order(len(job.train), trial.seed, epoch)[offset * trial.batch_size :]
            for rows in batches(job.train, trial.batch_size, order):
                batch = collate(rows, job.pad_id, device)
                with guard():
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
                    state.epoch_losses.append(loss.item())
                    state.samples += len(rows["label"])
                    state.tokens += int(batch["attention_mask"].sum().item())
                job.at_step_boundary()
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


ENGINES: dict[str, Callable[[], Engine]] = {"plain": PlainEngine}
