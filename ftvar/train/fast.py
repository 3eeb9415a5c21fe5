"""The fast engine: the train split on the device, a few static batch shapes, each step one CUDA graph.

The plain loop (ftvar.train.engine) pads every batch to its own length, gathers and collates on the host and
reads the loss back after every step, so the GPU waits on Python. Here:
- the tokenized split lives on the device as one padded id tensor plus lengths and labels;
- each batch (the same rows, in the same order, as the plain loop's) is padded to the next multiple of 8
  tokens, so that there are only a handful of step shapes;
- one training step — gather, forward, loss, backward, clipping, AdamW — is captured per shape as a CUDA graph
  after a few eager warm-up steps, and replayed with one launch; the learning rate is a device tensor, the
  loss is summed on the device and read once every CHECK_EVERY steps (the divergence check) and per epoch;
- where capture fails (a model that syncs inside its forward, fp16's gradient scaler), the trial runs
  eagerly, and the record says why.
On a CPU it runs the same loop eagerly, with the plain loop's optimizer: both give the same numbers there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ftvar.data.cache import Split
from ftvar.study.config import TrainConfig
from ftvar.train.checkpoint import set_rng_state
from ftvar.train.curve import curve_steps
from ftvar.train.engine import (
    MATMUL,
    FitJob,
    FitResult,
    LoopState,
    add_curve_point,
    autocast_dtype,
    epoch_order,
    evaluated_into,
    finish_curve,
    optimizer_of,
    restore_optimizer,
    restore_scaler,
    scores,
    set_learning_rate,
    steps_per_epoch,
    warmup_steps,
    with_rows,
)
from ftvar.train.noise import DrawCheck, ensure

log = logging.getLogger("ftvar.train")

BUCKET_STEP = 8  # batches are padded to a multiple of 8 tokens (at least 16): few shapes, little padding
WARMUP_STEPS = 3  # eager steps of a shape before it is captured (cuBLAS, autograd and AdamW state set up)
CHECK_EVERY = 50  # steps between divergence checks: one host sync each


@dataclasses.dataclass
class DeviceSplit:
    """A split on the device: padded ids [rows, longest], lengths and labels; lengths also on the host; a
    sentence pair's token type ids (int8) when the model takes them."""

    ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    host_lengths: np.ndarray
    types: torch.Tensor | None = None

    @classmethod
    def of(cls, split: Split, device: torch.device) -> DeviceSplit:
        return cls(
            ids=torch.from_numpy(split.ids).to(device=device, dtype=torch.long),
            lengths=torch.from_numpy(split.lengths).to(device),
            labels=torch.from_numpy(split.labels).to(device),
            host_lengths=split.lengths,
            types=None if split.types is None else torch.from_numpy(split.types).to(device),
        )

    def tokens(self, idx: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
        """The token ids (and token type ids) of the rows `idx` (a device tensor of any shape), padded to
        `length`: the model's inputs but the attention mask."""
        shape = (*idx.shape, length)
        flat = idx.reshape(-1)
        out = {"input_ids": self.ids[:, :length].index_select(0, flat).view(shape)}
        if self.types is not None:
            out["token_type_ids"] = self.types[:, :length].index_select(0, flat).view(shape).long()
        return out

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def buckets(longest: int) -> list[int]:
    """The static lengths batches are padded to: multiples of BUCKET_STEP from 16 to the split's longest row
    (then powers of two past 128, where long sequences would otherwise need many graphs)."""
    sizes = [b for b in range(16, min(longest, 128), BUCKET_STEP)]
    b = 128
    while b < longest:
        sizes.append(b)
        b *= 2
    return [s for s in sizes if s < longest] + [longest]


def bucket_of(lengths: np.ndarray, sizes: list[int]) -> int:
    """The smallest static length that holds every row of a batch."""
    need = int(lengths.max())
    return next(b for b in sizes if b >= need)


def lr_multipliers(s: TrainConfig, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier of step k of `total` under the settings' transformers schedule and warmup
    (what its LambdaLR applies)."""
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    warmup = warmup_steps(s.warmup_ratio, total)
    schedule = get_scheduler(s.scheduler, dummy, num_warmup_steps=warmup, num_training_steps=total)
    multiplier: Callable[[int], float] = schedule.lr_lambdas[0]
    return multiplier


@dataclasses.dataclass
class CurveHook:
    """The learning curve's evaluations inside the loop: the steps before the last at which to evaluate
    (ftvar.train.curve), and a function that evaluates the members still training (a flag per member) and
    gives each one's metrics (None: not evaluated); `seconds` adds up the time it took."""

    steps: set[int]
    evaluate: Callable[[list[bool]], list[dict[str, Any] | None]]
    seconds: float = 0.0


@dataclasses.dataclass
class Stats:
    """What the record's `engine` block reports."""

    graph_steps: int = 0
    eager_steps: int = 0
    shapes: list[int] = dataclasses.field(default_factory=list)
    fallback: str | None = None
    capture_seconds: float = 0.0

    def engine(self, name: str, **extra: Any) -> dict[str, Any]:
        """The record's `engine` block of an engine that stepped with these statistics."""
        return {
            "name": name,
            **extra,
            "cuda_graphs": bool(self.graph_steps),
            "fallback": self.fallback,
            "graph_shapes": self.shapes,
            "graph_steps": self.graph_steps,
            "eager_steps": self.eager_steps,
            "capture_seconds": round(self.capture_seconds, 3),
        }


class Stepper:
    """Runs training steps of one trial: eagerly, or by replaying the CUDA graph of the batch's shape."""

    def __init__(
        self, job: FitJob, data: DeviceSplit, optimizer: torch.optim.Optimizer, lr: torch.Tensor
    ) -> None:
        self.job, self.data, self.optimizer, self.lr = job, data, optimizer, lr
        self.model = job.model
        self.params = [p for p in job.model.parameters() if p.requires_grad]
        self.dtype = autocast_dtype(job.settings.precision, job.device)
        self.cuda = job.device.type == "cuda"
        self.loss_sum = torch.zeros((), device=job.device, dtype=torch.float32)
        self.arange = torch.arange(int(data.ids.shape[1]), device=job.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.warm: dict[int, int] = {}
        self.stats = Stats()
        self.use_graphs = self.cuda
        if self.cuda and self.dtype == torch.float16:
            self.use_graphs = False
            self.stats.fallback = "fp16 needs a gradient scaler, which a graph cannot hold: eager steps"
        self.scaler = torch.amp.GradScaler(job.device.type, enabled=self.dtype == torch.float16)
        assert job.trial.batch_size is not None
        self.idx = torch.zeros(job.trial.batch_size, dtype=torch.long, device=job.device)
        self.side = torch.cuda.Stream() if self.cuda else None  # eager warm-up before a capture
        self.capture_stream = (
            torch.cuda.Stream() if self.cuda else None
        )  # this trial's own (lanes capture at once)
        self.first_step_at: float | None = None
        self.pool: Any = None  # the memory pool the trial's graphs share
        self.check = DrawCheck()  # the first (eager) step: does the model draw randomness it does not own?

    def _compute(self, idx: torch.Tensor, length: int) -> None:
        """One step on the rows `idx`, padded to `length`: what a graph captures."""
        mask = (self.arange[:length][None, :] < self.data.lengths.index_select(0, idx)[:, None]).long()
        labels = self.data.labels.index_select(0, idx)
        with self.autocast():
            logits = self.model(**self.data.tokens(idx, length), attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), labels)
        self.scaler.scale(loss).backward()
        if self.job.settings.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.job.settings.max_grad_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum.add_(loss.detach())

    def autocast(self) -> torch.autocast:
        """The step's autocast (no weight cache: a graph must not keep casts across replays)."""
        return torch.autocast(
            self.job.device.type,
            dtype=self.dtype or torch.float32,
            enabled=self.dtype is not None,
            cache_enabled=False,
        )

    def partial_loss(self, member: int) -> float:
        """A member's loss sum over its epoch's steps so far (a checkpoint holds it: a resumed run's epoch
        mean is then the uninterrupted run's, to the bit). One host read: checkpoints only."""
        return float(self.loss_sum.reshape(-1)[member])

    def mark_first_step(self) -> None:
        """Start-up: when the task's first step has really run (on a GPU, once its kernels have finished)."""
        if self.first_step_at is None:
            if self.cuda:
                torch.cuda.current_stream(self.job.device).synchronize()
            self.first_step_at = time.time()

    def _eager(self, idx: torch.Tensor, length: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.check.first():
            self._compute(idx, length)
        self.stats.eager_steps += 1

    def step(self, idx: torch.Tensor, length: int) -> None:
        """A training step on the rows `idx` (a device tensor), padded to the static `length`."""
        full = self.use_graphs and idx.shape == self.idx.shape
        if not full:  # a CPU, fp16, or the epoch's last, smaller batch
            self._eager(idx, length)
            return
        graph = self.graphs.get(length)
        if graph is not None:
            self.idx.copy_(idx)
            graph.replay()
            self.stats.graph_steps += 1
            return
        assert self.side is not None
        warmup = WARMUP_STEPS if not self.graphs else 1  # later shapes: the libraries and AdamW are set up
        if self.warm.get(length, 0) < warmup:  # warm up on a side stream, as capture requires
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._eager(idx, length)
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm[length] = self.warm.get(length, 0) + 1
            return
        self.idx.copy_(idx)
        gate = self.job.guard  # a pack's lanes wait while this one captures
        try:
            with gate.exclusive() if gate is not None else contextlib.nullcontext():
                graph = self._capture(length)
        except Exception as exc:  # any capture failure means: run this trial eagerly
            self.use_graphs = False
            self.stats.fallback = f"CUDA graph capture failed ({exc.__class__.__name__}: {exc}); eager steps"
            log.warning("%s: %s", self.job.trial.trial_id, self.stats.fallback)
            torch.cuda.current_stream().synchronize()
            self._eager(idx, length)
            return
        self.graphs[length] = graph
        self.stats.shapes.append(length)
        graph.replay()  # capture records the step; replaying runs it
        self.stats.graph_steps += 1

    def _capture(self, length: int) -> torch.cuda.CUDAGraph:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates its own gradients
        graph = torch.cuda.CUDAGraph()
        # One memory pool for all of a trial's graphs: they replay one at a time on one stream, and nothing
        # a step allocates outlives it (its gradients and loss are used up inside the same graph), so the
        # shapes can share memory. thread_local: a pack's other lanes may allocate and evaluate meanwhile.
        with torch.cuda.graph(
            graph, pool=self.pool, stream=self.capture_stream, capture_error_mode="thread_local"
        ):
            self._compute(self.idx, length)
        if self.pool is None:
            self.pool = graph.pool()
        self.stats.capture_seconds += time.perf_counter() - t0
        return graph


class FastEngine:
    """One trial on one device: static shapes and CUDA graphs on a GPU, the same loop eagerly on a CPU."""

    name = "fast"

    def fit(self, job: FitJob) -> FitResult:
        with MATMUL.hold(job.settings.precision, job.device):
            return self._fit(job)

    def _fit(self, job: FitJob) -> FitResult:
        trial, s, model = job.trial, job.settings, job.model
        if trial.learning_rate is None or trial.batch_size is None or trial.order_seed is None:
            raise ValueError("the fast engine trains a trial, not a baseline")
        cuda = job.device.type == "cuda"
        noise = ensure(model, trial.init_seed)
        model.to(job.device)
        data = DeviceSplit.of(job.train, job.device)
        total = steps_per_epoch(len(data), trial.batch_size) * trial.epochs
        multiplier = lr_multipliers(s, total)
        lr = torch.tensor(trial.learning_rate, device=job.device) if cuda else None
        optimizer = optimizer_of(model, trial, s, lr_tensor=lr)
        state, result = LoopState(), FitResult(metrics={})
        stepper = Stepper(job, data, optimizer, lr if lr is not None else torch.zeros(()))
        if job.resume_state is not None:
            model.load_state_dict(job.resume_state["model"])
            restore_optimizer(optimizer, job.resume_state["optimizer"], lr)
            restore_scaler(stepper.scaler, job.resume_state)
            state = LoopState(**job.resume_state["loop"])
            result.resumed_from_step = state.step
            set_rng_state(job.resume_state["rng"])
        if job.on_checkpointable is not None:
            job.on_checkpointable(
                lambda: {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": stepper.scaler.state_dict(),
                    "step": state.step,
                    "loop": {**dataclasses.asdict(state), "epoch_loss_sum": stepper.partial_loss(0)},
                }
            )
        peak = trial.learning_rate

        def set_step(step: int) -> None:
            """The step's learning rate and dropout counter (device tensors a graph reads, on a GPU)."""
            set_learning_rate(optimizer, peak * multiplier(step))  # device tensors: filled in place
            noise.at(step)

        per_epoch = steps_per_epoch(len(data), trial.batch_size)
        eval_data = DeviceSplit.of(job.eval, job.device)

        def evaluate_now(alive: list[bool]) -> list[dict[str, Any] | None]:
            evaluated = evaluate_fast(
                model, job.eval, s.eval_batch_size, job.device, job.num_labels, stepper.dtype, eval_data
            )
            model.train()
            return [evaluated.metrics]

        curve = CurveHook(set(curve_steps(s.eval_every, per_epoch, total)) - {total}, evaluate_now)
        t0 = time.perf_counter()
        hooks = [job.after_step] if job.after_step is not None else []
        result.diverged = run_epochs([job], stepper, data, [state], set_step, hooks, trial.trial_id, curve)[0]
        if cuda:  # this lane's stream only: a device-wide wait would also wait for (or break) other lanes
            torch.cuda.current_stream(job.device).synchronize()
        result.steps, result.train_time = state.step, time.perf_counter() - t0
        result.samples, result.tokens = state.samples, state.tokens
        result.first_step_at, result.curve_time = stepper.first_step_at, curve.seconds
        result.engine = stepper.stats.engine(self.name, randomness=stepper.check.verdict())
        if result.diverged:
            result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
            return finish_curve(result, state, per_epoch, bool(s.eval_every))
        t1 = time.perf_counter()
        evaluated = evaluate_fast(
            model, job.eval, s.eval_batch_size, job.device, job.num_labels, stepper.dtype, eval_data
        )
        test = None
        if job.test is not None:
            test = evaluate_fast(
                model, job.test, s.eval_batch_size, job.device, job.num_labels, stepper.dtype
            )
        evaluated_into(result, evaluated, state.epoch_losses, time.perf_counter() - t1, test)
        return finish_curve(result, state, per_epoch, bool(s.eval_every))


def run_epochs(
    jobs: list[FitJob],
    stepper: Stepper,
    data: DeviceSplit,
    states: list[LoopState],
    set_step: Callable[[int], None],
    hooks: list[Callable[[], None]],
    label: str,
    curve: CurveHook | None = None,
) -> list[str | None]:
    """The training loop of one trial (one job: a batch is a vector of row indices) or of a stack's members
    (several jobs: a [K, batch] matrix, each member's rows in its own order), from the states' step to the
    end; why each member diverged, or None. Batches are padded to a static bucket length on a GPU (one graph
    per length), to the batch's own longest row on a CPU (as the plain loop: the same float sums). The loss
    sums stay on the device, read every CHECK_EVERY steps and at each epoch's end (before a checkpoint at
    that step); a checkpoint holds the current epoch's sum so far. A diverged member stops counting steps,
    the others train on. At the `curve`'s steps the sums are read too and the members still training are
    evaluated (inside a step of the guard, before a checkpoint at that step), each one's point added to its
    state."""
    first, k = jobs[0], len(jobs)
    bs, epochs = first.trial.batch_size, first.trial.epochs
    if bs is None:
        raise ValueError("a baseline has no training loop")
    sizes = buckets(int(data.ids.shape[1]))
    per_epoch = steps_per_epoch(len(data), bs)
    total = per_epoch * epochs
    guard = first.guard.step if first.guard is not None else contextlib.nullcontext
    diverged: list[str | None] = [None] * k
    first.model.train()
    step = states[0].step
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if offset == 0:
            for state in states:
                state.epoch_losses, state.epoch_loss_sum = [], 0.0
        orders = [epoch_order(len(data), int(j.trial.order_seed or 0), epoch)[offset * bs :] for j in jobs]
        host = orders[0].numpy() if k == 1 else np.stack([o.numpy() for o in orders])
        on_device = torch.from_numpy(host).to(first.device)
        # the epoch's loss sum so far: zero, or what a resumed run's checkpoint held at its step
        partial = torch.tensor([st.epoch_loss_sum for st in states], dtype=torch.float32)
        stepper.loss_sum.copy_(partial.reshape(stepper.loss_sum.shape))
        done = checked = offset
        for start in range(0, host.shape[-1], bs):
            rows = host[..., start : start + bs]
            lengths = data.host_lengths[rows]
            length = bucket_of(lengths, sizes) if stepper.cuda else int(lengths.max())
            per_member = lengths.reshape(k, -1)
            with guard():
                set_step(step)
                stepper.step(on_device[..., start : start + bs], length)
                step += 1
                for j, state in enumerate(states):
                    if diverged[j] is None:  # a diverged member's record counts the steps it trained
                        state.step = step
                        state.samples += per_member.shape[1]
                        state.tokens += int(per_member[j].sum())
                done += 1
            if curve is not None and step in curve.steps:  # a learning-curve point (the last: after the loop)
                _curve_point(curve, stepper, states, diverged, guard, step, per_epoch)
            if done == per_epoch:  # the epoch's mean losses, before a checkpoint at this boundary saves
                sums = stepper.loss_sum.reshape(-1).tolist()
                for j, (state, total_loss) in enumerate(zip(states, sums, strict=True)):
                    mean = total_loss / done
                    if diverged[j] is None and not math.isfinite(mean):
                        diverged[j] = (
                            f"non-finite training loss in epoch {epoch + 1} (by step {step} of {total})"
                        )
                    if diverged[j] is None:
                        state.epoch_losses = [mean] * done
                        # the curve's window: the rest of this epoch's losses, the next epoch's sum from 0
                        state.curve_loss += total_loss - state.curve_mark
                        state.curve_mark = 0.0
            stepper.mark_first_step()
            for hook in hooks:
                hook()
            if done < per_epoch and done - checked >= CHECK_EVERY:  # one host read every CHECK_EVERY steps
                checked = done
                for j, value in enumerate(stepper.loss_sum.reshape(-1).tolist()):
                    if diverged[j] is None and not math.isfinite(value):
                        since = step - CHECK_EVERY
                        diverged[j] = f"non-finite training loss between steps {since} and {step}"
            if all(diverged):
                return diverged
        log.info(
            "%s epoch %d/%d done: step %d/%d, train loss %s",
            label,
            epoch + 1,
            epochs,
            step,
            total,
            " ".join(f"{sum(st.epoch_losses) / max(1, len(st.epoch_losses)):.4f}" for st in states),
        )
    return diverged


def _curve_point(
    curve: CurveHook,
    stepper: Stepper,
    states: list[LoopState],
    diverged: list[str | None],
    guard: Callable[[], Any],
    step: int,
    per_epoch: int,
) -> None:
    """The members' learning-curve points at `step`: the loss sums read (one host read, as at an epoch's
    end), a member whose loss is no longer finite marked diverged, the others evaluated."""
    t0 = time.perf_counter()
    sums = stepper.loss_sum.reshape(-1).tolist()
    for j, value in enumerate(sums):
        if diverged[j] is None and not math.isfinite(value):
            diverged[j] = f"non-finite training loss by step {step}"
    alive = [d is None for d in diverged]
    if any(alive):
        with guard():
            metrics = curve.evaluate(alive)
        for j, (state, value) in enumerate(zip(states, sums, strict=True)):
            if alive[j]:
                state.curve_loss += value - state.curve_mark  # the window: since the last point
                state.curve_mark = value
                add_curve_point(state, per_epoch, metrics[j])
    curve.seconds += time.perf_counter() - t0


@torch.no_grad()
def evaluate_fast(
    model: torch.nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    num_labels: int,
    dtype: torch.dtype | None,
    data: DeviceSplit | None = None,
) -> Any:
    """Metrics and per-row outputs on `split` with rows sorted by length (little padding), results gathered on
    the device and read once; `data`: the split already on the device."""
    model.eval()
    order = np.argsort(split.lengths, kind="stable")
    data = data if data is not None else DeviceSplit.of(split, device)
    preds = torch.empty(len(split), dtype=torch.long, device=device)
    probs = torch.empty((len(split), num_labels), dtype=torch.float32, device=device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(split.lengths[rows].max())
        idx = torch.from_numpy(rows).to(device)
        mask = (
            torch.arange(width, device=device)[None, :] < data.lengths.index_select(0, idx)[:, None]
        ).long()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(**data.tokens(idx, width), attention_mask=mask).logits.float()
        loss_sum += F.cross_entropy(logits, data.labels.index_select(0, idx), reduction="sum")
        preds[idx] = logits.argmax(-1)
        probs[idx] = torch.softmax(logits, -1)
    y_pred = preds.cpu().numpy()
    evaluated = scores(split.labels, y_pred, float(loss_sum), num_labels)
    return with_rows(evaluated, split.labels, y_pred, probs.cpu().numpy())
