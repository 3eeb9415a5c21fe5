"""The plain engine: the reference training loop, one trial on one device, that reads top to bottom.

AdamW without decay on biases and LayerNorm weights, a transformers warmup schedule, dynamic padding (each
batch padded to its own longest row), optional autocast with a gradient scaler for fp16, clipping, one host
sync per step (the loss, for the divergence check). The default on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import torch

from ftvar.train.checkpoint import set_rng_state
from ftvar.train.curve import curve_steps
from ftvar.train.engine import (
    MATMUL,
    FitJob,
    FitResult,
    LoopState,
    add_curve_point,
    autocast_dtype,
    batches,
    collate,
    epoch_order,
    evaluate,
    evaluated_into,
    finish_curve,
    log,
    optimizer_of,
    restore_scaler,
    steps_per_epoch,
    warmup_steps,
)
from ftvar.train.noise import DrawCheck, ensure, noise_of


class PlainEngine:
    """One trial, one device, a plain loop."""

    name = "plain"

    def fit(self, job: FitJob) -> FitResult:
        check = DrawCheck()
        with MATMUL.hold(job.settings.precision, job.device):
            result = self._fit(job, check)
        result.engine = {
            "name": self.name,
            "cuda_graphs": None,
            "fallback": None,
            "randomness": check.verdict(),
        }
        return result

    def _fit(self, job: FitJob, check: DrawCheck) -> FitResult:
        from transformers import get_scheduler

        trial, s, model = job.trial, job.settings, job.model
        assert trial.learning_rate is not None and trial.batch_size is not None
        ensure(model, trial.init_seed)
        model.to(job.device)
        total = steps_per_epoch(len(job.train), trial.batch_size) * trial.epochs
        optimizer = optimizer_of(model, trial, s)
        warmup = warmup_steps(s.warmup_ratio, total)
        scheduler = get_scheduler(s.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        dtype = autocast_dtype(s.precision, job.device)
        scaler = torch.amp.GradScaler(job.device.type, enabled=dtype == torch.float16)
        state, result = LoopState(), FitResult(metrics={})
        if job.resume_state is not None:  # continue a preempted run where its checkpoint left off
            model.load_state_dict(job.resume_state["model"])
            optimizer.load_state_dict(job.resume_state["optimizer"])
            scheduler.load_state_dict(job.resume_state["scheduler"])
            restore_scaler(scaler, job.resume_state)
            state = LoopState(**job.resume_state["loop"])
            result.resumed_from_step = state.step
            set_rng_state(job.resume_state["rng"])
        if job.on_checkpointable is not None:
            job.on_checkpointable(
                lambda: {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": state.step,
                    "loop": dataclasses.asdict(state),
                }
            )
        t0 = time.perf_counter()
        result.diverged = self._train(job, optimizer, scheduler, scaler, state, total, result, check)
        result.steps, result.train_time = state.step, time.perf_counter() - t0
        result.samples, result.tokens = state.samples, state.tokens
        per_epoch, curve = steps_per_epoch(len(job.train), trial.batch_size), bool(s.eval_every)
        if result.diverged:  # a model with NaN weights has no meaningful metrics
            result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
            return finish_curve(result, state, per_epoch, curve)
        t1 = time.perf_counter()
        evaluated = evaluate(model, job.eval, s.eval_batch_size, job.device, job.num_labels, dtype)
        test = None
        if job.test is not None:
            test = evaluate(model, job.test, s.eval_batch_size, job.device, job.num_labels, dtype)
        evaluated_into(result, evaluated, state.epoch_losses, time.perf_counter() - t1, test)
        return finish_curve(result, state, per_epoch, curve)

    def _train(
        self,
        job: FitJob,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        state: LoopState,
        total: int,
        result: FitResult,
        check: DrawCheck,
    ) -> str | None:
        """The loop. Each step runs inside the job's gate. Returns why training diverged, if it did."""
        trial, s, model, device = job.trial, job.settings, job.model, job.device
        assert trial.batch_size is not None
        dtype = autocast_dtype(s.precision, device)
        noise = noise_of(model)
        per_epoch = steps_per_epoch(len(job.train), trial.batch_size)
        guard = job.guard.step if job.guard is not None else contextlib.nullcontext
        after_step = job.after_step or (lambda: None)
        points = set(curve_steps(s.eval_every, per_epoch, total)) - {total}  # the last: the final evaluation
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
                    if noise is not None:
                        noise.at(state.step)  # this step's dropout masks
                    with check.first():
                        autocast = torch.autocast(
                            device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                        )
                        with autocast:
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
                    value = loss.item()
                    state.epoch_losses.append(value)
                    state.curve_loss += value
                    state.samples += len(idx)
                    state.tokens += int(job.train.lengths[idx].sum())
                if state.step in points:  # a point of the learning curve, before a checkpoint at this step
                    t0 = time.perf_counter()
                    with guard():
                        evaluated = evaluate(
                            model, job.eval, s.eval_batch_size, device, job.num_labels, dtype
                        )
                    model.train()
                    add_curve_point(state, per_epoch, evaluated.metrics)
                    result.curve_time += time.perf_counter() - t0
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
