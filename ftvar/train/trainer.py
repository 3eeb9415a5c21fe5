"""The Hugging Face Trainer as an engine: the common baseline to compare the others with, and a fallback.

It trains with the trial's settings — AdamW without decay on biases and LayerNorm weights (the Trainer's
own grouping), the same schedule, warmup, clipping and precision — on the same tokenized rows with dynamic
padding, seeded by the trial's seeds (`seed`: init seed; `data_seed`: order seed), and is evaluated by the
same code as the other engines. It neither checkpoints on a signal nor resumes: a preempted trial restarts.
The learning curve: at its steps the Trainer is asked to log (the mean training loss since its last log)
and the model is evaluated by ftvar's own code. The remedies (layer-wise learning rates, Adam without bias
correction) are ftvar's optimizer and schedule handed to the Trainer (`optimizers=`); layers are
re-initialised when the model is built. Needs the `accelerate` package (`pip install 'ftvar[trainer]'`).
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np
import torch

from ftvar.data.cache import Split
from ftvar.errors import FtvarError
from ftvar.train.curve import curve_steps, point
from ftvar.train.engine import (
    MATMUL,
    FitJob,
    FitResult,
    autocast_dtype,
    evaluate,
    optimizer_of,
    steps_per_epoch,
    warmup_steps,
)
from ftvar.train.noise import DrawCheck, ensure


class Rows(torch.utils.data.Dataset[dict[str, Any]]):
    """A tokenized split as the Trainer's dataset: one row's ids (unpadded) and label."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = int(self.split.lengths[i])
        row = {"input_ids": self.split.ids[i, :n], "labels": int(self.split.labels[i])}
        if self.split.types is not None:  # a sentence pair, for a model that takes token types
            row["token_type_ids"] = self.split.types[i, :n]
        return row


def pad_collate(pad_id: int) -> Any:
    """Dynamic padding (what DataCollatorWithPadding does), from rows of ids (and token type ids, padded
    with 0)."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = r["input_ids"]
            mask[i, : len(r["input_ids"])] = 1
            if "token_type_ids" in r:
                types[i, : len(r["input_ids"])] = r["token_type_ids"]
        labels = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": labels,
        }
        if "token_type_ids" in rows[0]:
            out["token_type_ids"] = torch.from_numpy(types)
        return out

    return collate


class TrainerEngine:
    """One trial through `transformers.Trainer`."""

    name = "trainer"

    def fit(self, job: FitJob) -> FitResult:
        try:
            from transformers import Trainer, TrainerCallback, TrainingArguments
            from transformers.trainer_callback import PrinterCallback
        except ImportError as exc:  # the Trainer needs accelerate
            raise FtvarError(f"train.engine = 'trainer' needs `pip install accelerate` ({exc})") from None
        trial, s = job.trial, job.settings
        if trial.learning_rate is None or trial.batch_size is None:
            raise ValueError("the trainer engine trains a trial, not a baseline")
        dtype = autocast_dtype(s.precision, job.device)
        per_epoch = steps_per_epoch(len(job.train), trial.batch_size)
        total = per_epoch * trial.epochs
        points = set(curve_steps(s.eval_every, per_epoch, total))
        curve: list[dict[str, Any]] = []
        curve_time = [0.0]
        with tempfile.TemporaryDirectory(prefix="ftvar-trainer-") as tmp:
            args = TrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=trial.batch_size,
                learning_rate=trial.learning_rate,
                num_train_epochs=trial.epochs,
                weight_decay=s.weight_decay,
                warmup_steps=warmup_steps(s.warmup_ratio, total),
                lr_scheduler_type=s.scheduler,
                max_grad_norm=s.max_grad_norm,
                bf16=dtype == torch.bfloat16,
                fp16=dtype == torch.float16,
                seed=trial.init_seed if trial.init_seed is not None else 0,
                data_seed=trial.order_seed,
                save_strategy="no",
                eval_strategy="no",
                logging_strategy="no",
                report_to=[],
                disable_tqdm=True,
                dataloader_num_workers=0,
                use_cpu=job.device.type == "cpu",
            )
            after_step = job.after_step
            noise, check = ensure(job.model, trial.init_seed), DrawCheck()

            class AfterStep(TrainerCallback):  # type: ignore[misc]
                def on_step_begin(self, args: Any, state: Any, *rest: Any, **kwargs: Any) -> None:
                    noise.at(int(state.global_step))  # the step's dropout masks (ftvar.train.noise)
                    check.begin()

                def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                    check.end()
                    if int(state.global_step) in points:  # the Trainer logs its loss since the last point
                        control.should_log = True
                    if after_step is not None:
                        after_step()
                    return control

                def on_log(
                    self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
                ) -> None:
                    step = int(state.global_step)
                    if step not in points or "loss" not in (logs or {}):
                        return
                    metrics: dict[str, Any] = {}
                    if step < total:  # the last point is the final evaluation, after training
                        t0 = time.perf_counter()
                        metrics = evaluate(
                            job.model, job.eval, s.eval_batch_size, job.device, job.num_labels, dtype
                        ).metrics
                        job.model.train()
                        curve_time[0] += time.perf_counter() - t0
                    curve.append(point(step, per_epoch, float(logs["loss"]), metrics))

            remedies = s.layer_decay != 1.0 or not s.bias_correction
            trainer = Trainer(
                model=job.model,
                args=args,
                train_dataset=Rows(job.train),
                data_collator=pad_collate(job.pad_id),
                callbacks=[AfterStep()],
                optimizers=self._optimizer(job, total) if remedies else (None, None),
            )
            trainer.remove_callback(PrinterCallback)  # no metrics dict printed to stdout
            t0 = time.perf_counter()
            with MATMUL.hold(s.precision, job.device):
                output = trainer.train()
            if job.device.type == "cuda":
                torch.cuda.synchronize(job.device)
            train_time = time.perf_counter() - t0
        result = FitResult(
            metrics={},
            steps=int(output.global_step),
            train_time=max(0.0, train_time - curve_time[0]),
            curve_time=curve_time[0],
            samples=len(job.train) * trial.epochs,
            tokens=int(job.train.lengths.sum()) * trial.epochs,
            engine={"name": self.name, "cuda_graphs": False, "fallback": None, "randomness": check.verdict()},
        )
        train_loss = float(output.training_loss)
        if points:
            result.curve = curve
        if not math.isfinite(train_loss):
            result.diverged = "non-finite training loss (reported by the Trainer)"
            result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
            if curve and curve[-1]["step"] == total:
                curve.pop()  # the last window's loss, without the evaluation a diverged model does not get
            return result
        t1 = time.perf_counter()
        with MATMUL.hold(s.precision, job.device):
            evaluated = evaluate(job.model, job.eval, s.eval_batch_size, job.device, job.num_labels, dtype)
            test = None
            if job.test is not None:
                test = evaluate(job.model, job.test, s.eval_batch_size, job.device, job.num_labels, dtype)
        result.eval_time = time.perf_counter() - t1 + curve_time[0]
        result.metrics = {**evaluated.metrics, "train_loss": train_loss}
        result.eval_counts = evaluated.counts()
        result.evaluated = {"eval": evaluated, **({"test": test} if test is not None else {})}
        if curve and curve[-1]["step"] == total:  # the last point: the final evaluation
            curve[-1] = point(total, per_epoch, curve[-1]["train_loss"], evaluated.metrics)
        return result

    @staticmethod
    def _optimizer(job: FitJob, total: int) -> tuple[Any, Any]:
        """ftvar's optimizer (layer-wise learning rates, Adam without bias correction) and the trial's
        schedule, for the Trainer to step: the model on its device first, as the Trainer asks."""
        from transformers import get_scheduler

        job.model.to(job.device)
        optimizer = optimizer_of(job.model, job.trial, job.settings)
        warmup = warmup_steps(job.settings.warmup_ratio, total)
        schedule = get_scheduler(
            job.settings.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total
        )
        return optimizer, schedule
