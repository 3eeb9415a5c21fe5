"""Run one trial: load the study's cache, build the model, fit with the engine, write the JSON record."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from ftvar.attempts import AttemptLog
from ftvar.config import Study
from ftvar.errors import FtvarError
from ftvar.record import SCHEMA_VERSION, environment, finite_or_none, read_status, utc_now, write_record
from ftvar.train import checkpoint
from ftvar.train.checkpoint import Resumable
from ftvar.train.data import Prepared, load_prepared, not_loadable, prepare
from ftvar.train.engine import ENGINES, FitJob, FitResult, autocast_dtype, evaluate
from ftvar.trial import StudyPaths, Trial

log = logging.getLogger("ftvar.train")


def set_offline() -> None:
    """Trials never download: everything they need was prefetched and tokenized before they started."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise FtvarError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def set_threads() -> None:
    """CPU threads: FTVAR_THREADS, else SLURM's cpus-per-task, else torch's default."""
    value = os.environ.get("FTVAR_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if value and value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(study: Study, prepared: Prepared, seed: int) -> torch.nn.Module:
    """A tiny random-init DistilBERT, or a pretrained checkpoint with a head for the study's labels."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    num_labels = len(prepared.label_names)
    id2label = dict(enumerate(prepared.label_names))
    seed_everything(seed)  # the head (and a tiny model) is initialised from the trial's seed
    m = study.model
    if m.tiny is not None:
        config = DistilBertConfig(  # type: ignore[call-arg]
            vocab_size=prepared.vocab_size,
            dim=m.tiny.dim,
            n_layers=m.tiny.layers,
            n_heads=m.tiny.heads,
            hidden_dim=4 * m.tiny.dim,
            max_position_embeddings=max(512, study.data.max_length),
            pad_token_id=prepared.pad_token_id,
            num_labels=num_labels,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        )
        tiny: torch.nn.Module = AutoModelForSequenceClassification.from_config(config)
        return tiny
    try:
        model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(
            m.name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True
        )
    except OSError as exc:
        raise not_loadable(study, f"model {m.name_or_path}", exc) from None
    return model


def _record(
    study: Study,
    trial: Trial,
    prepared: Prepared | None,
    result: FitResult | None,
    status: str,
    error: str | None,
    timings: dict[str, float],
    device: str,
    started: str,
) -> dict[str, Any]:
    metrics = result.metrics if result else {}
    throughput: dict[str, float | None] = {"train_samples_per_s": None, "train_tokens_per_s": None}
    if result and result.train_time > 0 and result.samples:
        throughput = {
            "train_samples_per_s": result.samples / result.train_time,
            "train_tokens_per_s": result.tokens / result.train_time,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "study": {"name": study.name, "hash": study.hash, "source": study.source, "config": study.to_dict()},
        "trial_id": trial.trial_id,
        "kind": "baseline" if trial.is_baseline else "trial",
        "params": trial.params(),
        "status": status,
        "error": error,
        "metrics": {k: finite_or_none(metrics.get(k)) for k in ("accuracy", "f1", "eval_loss", "train_loss")},
        "n_train": prepared.n_train if prepared else 0,
        "n_eval": prepared.n_eval if prepared else 0,
        "label_names": prepared.label_names if prepared else [],
        "steps": result.steps if result else 0,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "throughput": throughput,
        "resume": {
            "requeues": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "resumed_from_step": result.resumed_from_step if result else None,
        },
        "environment": environment(device, torch.__version__, transformers.__version__),
        "started_at": started,
        "finished_at": utc_now(),
    }


def _fit(
    study: Study,
    trial: Trial,
    prepared: Prepared,
    device: torch.device,
    resumable: Resumable | None,
) -> FitResult:
    model = build_model(study, prepared, trial.seed)
    pad_id = prepared.pad_token_id
    num_labels = len(prepared.label_names)
    if trial.is_baseline:  # the un-fine-tuned model, evaluated once
        model.to(device)
        t0 = time.perf_counter()
        dtype = autocast_dtype(study.train.precision, device)
        metrics = evaluate(
            model, prepared.eval, study.train.eval_batch_size, pad_id, device, num_labels, dtype
        )
        return FitResult(metrics={**metrics, "train_loss": None}, eval_time=time.perf_counter() - t0)
    engine = ENGINES[study.train.engine]()
    job = FitJob(
        model=model,
        train=prepared.train,
        eval=prepared.eval,
        trial=trial,
        settings=study.train,
        device=device,
        pad_id=pad_id,
        num_labels=num_labels,
    )
    if resumable is not None:
        job.guard, job.on_checkpointable = resumable.guard, resumable.set_snapshot
        job.at_step_boundary = resumable.at_step_boundary
        job.resume_state = checkpoint.load(resumable.folder)
        if job.resume_state is not None:
            log.info("%s: resuming from the checkpoint at step %d", trial.trial_id, job.resume_state["step"])
    return engine.fit(job)


def time_limit_message(exc: BaseException, folder: Path) -> str | None:
    """The reason of a trial stopped for good by its time limit (submitit's "timed-out too many times")."""
    if type(exc).__name__ != "UncompletedJobError" or "timed-out" not in str(exc):
        return None
    requeues = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    step = checkpoint.saved_step(folder)
    where = (
        f"resumable from step {step} (checkpoint kept; `ftvar launch` resumes it)"
        if step is not None
        else "no checkpoint yet (training had not started)"
    )
    return f"time limit, requeued {requeues} time{'s' if requeues != 1 else ''}, {where}"


def _outcome(status: str, error: str | None, record: dict[str, Any]) -> tuple[str, str | None]:
    """Never an ok record with non-finite or missing metrics: such a trial diverged."""
    if status != "ok":
        return status, error
    missing = [k for k in ("accuracy", "f1", "eval_loss") if record["metrics"][k] is None]
    if missing:
        return "diverged", f"non-finite {', '.join(missing)} after training"
    return status, error


def run_trial(
    study: Study,
    trial: Trial,
    paths: StudyPaths,
    *,
    prepare_if_missing: bool = False,
    resumable: Resumable | None = None,
) -> dict[str, Any]:
    """Run one trial and write its record. Input errors (FtvarError) propagate and write no record; any
    other failure during training is written as a `failed` record, and a non-finite loss as `diverged`.

    Training continues from the trial's checkpoint if there is one, saves one every
    `train.checkpoint_minutes`, and (with a `resumable` from a SLURM task) on preemption signals, which the
    guard defers to step boundaries. The checkpoint is deleted once an ok or diverged record is written; a
    failed trial keeps it, so the next launch resumes it. The record lists every attempt of the trial."""
    set_offline()
    set_threads()
    started, t0 = utc_now(), time.perf_counter()
    if prepare_if_missing:
        prepare(study, paths)
    prepared = load_prepared(study, paths)
    device = pick_device(study.train.device)
    folder = paths.ckpt / trial.trial_id
    if resumable is None:
        resumable = Resumable(folder)
    resumable.every_s = study.train.checkpoint_minutes * 60
    resumable.attempts = AttemptLog.begin(folder, paths.record(trial.trial_id))
    timings = {"load": time.perf_counter() - t0, "train": 0.0, "eval": 0.0, "total": 0.0}
    result: FitResult | None = None
    status, error = "ok", None
    try:
        result = _fit(study, trial, prepared, device, resumable)
        timings["train"], timings["eval"] = result.train_time, result.eval_time
        if result.diverged:
            status, error = "diverged", result.diverged
    except FtvarError as exc:
        resumable.attempts.update("failed", str(exc))
        raise
    except KeyboardInterrupt:  # Ctrl-C of a local or debug launch: no step-boundary checkpoint here
        resumable.attempts.update("interrupted", "interrupted (Ctrl-C); resumes from the last checkpoint")
        raise
    except Exception as exc:  # a crash inside training: keep the evidence in the record
        traceback.print_exc()  # the whole traceback goes to the task's log
        status = "failed"
        error = time_limit_message(exc, folder) or f"{exc.__class__.__name__}: {exc}"
    timings["total"] = time.perf_counter() - t0
    record = _record(study, trial, prepared, result, status, error, timings, device_name(device), started)
    status, error = _outcome(status, error, record)
    resumable.attempts.update(status, error, result.steps if result else resumable.saved_step)
    record.update(status=status, error=error, attempts=resumable.attempts.attempts)
    record = write_record(paths.record(trial.trial_id), record)
    if status in ("ok", "diverged"):  # a failed trial keeps its checkpoint: the next launch resumes it
        checkpoint.remove(folder)
    return record


def log_to_stderr() -> None:
    """Progress lines (one per epoch) in the task's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


def run_task(holder: Any, study: Study, trial: Trial, paths: StudyPaths) -> str:
    """One SLURM array task: run the trial resumably. `holder.resumable` lets submitit's `checkpoint()` save.

    SIGTERM (a requeue, a cancel, a preemption) saves a checkpoint at the next step boundary and exits; the
    requeued or re-launched task resumes from it. A task whose trial already has an ok record does nothing.
    """
    if read_status(paths.record(trial.trial_id)) == "ok":
        return "ok"
    log_to_stderr()
    resumable = Resumable(paths.ckpt / trial.trial_id)
    holder.resumable = resumable

    def on_term(signum: int, frame: Any) -> None:
        resumable.save("SIGTERM (scancel, requeue, preemption or the time limit)")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    resumable.guard.install()
    log.info("%s: %s (checkpoints in %s)", trial.trial_id, trial.label(), resumable.folder)
    try:
        return str(run_trial(study, trial, paths, resumable=resumable)["status"])
    finally:
        resumable.guard.uninstall()
        signal.signal(signal.SIGTERM, previous)
