"""Run one trial: load the study's cache, build the model, fit with the engine, write its per-example
predictions (a sidecar) and then the JSON record."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftvar.data.cache import Prepared, load_prepared
from ftvar.errors import FtvarError
from ftvar.store.attempts import AttemptLog, RunningLock
from ftvar.store.environment import environment
from ftvar.store.files import tell, write_failed
from ftvar.store.paths import StudyPaths
from ftvar.store.predictions import sidecar, write_predictions
from ftvar.store.record import finite_or_none, utc_now, write_record
from ftvar.store.schema import SCHEMA_VERSION
from ftvar.study.config import Study
from ftvar.study.trial import Settings, Trial, settings
from ftvar.train import checkpoint, registry
from ftvar.train.checkpoint import Resumable
from ftvar.train.engine import MATMUL, FitJob, FitResult, autocast_dtype, evaluate, for_model, precision_used

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


def process_started() -> float:
    """When this process started (epoch seconds), from /proc; else when ftvar was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT


IMPORTED_AT = time.time()
BUILD_LOCK = threading.Lock()
STARTED = threading.Event()  # set once this process has started training its first trial


def set_threads() -> None:
    """CPU threads: FTVAR_THREADS, else SLURM's cpus-per-task, else torch's default."""
    value = os.environ.get("FTVAR_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if value and value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))


def seed_everything(seed: int, cuda: bool = True) -> None:
    """Seed Python, numpy and torch. `cuda=False` leaves the GPU's generator alone: lanes of a pack share it
    (and one of them may be capturing a CUDA graph, which no other seeding may disturb)."""
    random.seed(seed)
    np.random.seed(seed)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def model_modules(s: Settings) -> list[str]:
    """The transformers modules a trial's model needs (what `build_model` imports)."""
    if s.model.tiny is not None:
        return ["transformers.models.distilbert.modeling_distilbert"]
    modules = ["transformers.models.auto.modeling_auto"]
    try:
        config = json.loads((Path(s.model.name_or_path) / "config.json").read_text())
        kind = str(config["model_type"]).replace("-", "_")
        modules.append(f"transformers.models.{kind}.modeling_{kind}")
    except (OSError, ValueError, KeyError):
        pass  # a Hub id: the auto classes find the module when the model is built
    return modules


def preload(modules: list[str]) -> threading.Thread:
    """Import the model's modules in a background thread (transformers takes seconds to import), while the
    task sets up the device and reads its data."""

    def load() -> None:
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="ftvar-preload", daemon=True)
    thread.start()
    return thread


def build_model(
    study: Study, s: Settings, prepared: Prepared, init_seed: int, seed_cuda: bool = True
) -> tuple[torch.nn.Module, str]:
    """A tiny random-init DistilBERT, or a pretrained checkpoint with a head for the study's labels; and
    whether that head was "trained" (loaded from the checkpoint) or is "new" (initialised from the seed)."""
    import transformers
    from transformers.utils import import_utils

    transformers.logging.set_verbosity_error()
    require_torch_support(transformers.__version__, import_utils.is_torch_available())
    num_labels = len(prepared.label_names)
    id2label = dict(enumerate(prepared.label_names))
    # the head (and a tiny model) is initialised from the init seed, and so is dropout's generator
    seed_everything(init_seed, cuda=seed_cuda)
    m = s.model
    if m.tiny is not None:
        from transformers.models.distilbert import DistilBertConfig, DistilBertForSequenceClassification

        config = DistilBertConfig(  # type: ignore[call-arg]
            vocab_size=prepared.vocab_size,
            dim=m.tiny.dim,
            n_layers=m.tiny.layers,
            n_heads=m.tiny.heads,
            hidden_dim=4 * m.tiny.dim,
            max_position_embeddings=max(512, s.data.max_length),
            pad_token_id=prepared.pad_token_id,
            num_labels=num_labels,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        )
        return DistilBertForSequenceClassification(config), "new"
    from transformers import AutoModelForSequenceClassification

    from ftvar.data.load import not_loadable

    # fp32 master weights whatever the checkpoint's dtype (autocast runs the bf16 maths): transformers 5
    # would otherwise train a bf16 checkpoint in pure bf16
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            m.name_or_path,
            num_labels=num_labels,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            dtype=torch.float32,
        )
    except OSError as exc:
        raise not_loadable(study, f"model {m.name_or_path}", exc) from None
    return model, "new" if fresh_weights(info) else "trained"


def require_torch_support(transformers_version: str, uses_torch: bool) -> None:
    """Raise if transformers has disabled PyTorch: transformers 5 needs torch >= 2.6 and, with an older one,
    only logs a warning and later fails as if torch were not installed at all."""
    if not uses_torch:
        raise FtvarError(
            f"transformers {transformers_version} does not work with this torch {torch.__version__} (it "
            "disabled PyTorch: transformers 5 needs torch >= 2.6): install torch>=2.6 in the trials' "
            "environment (or image)"
        )


def fresh_weights(info: Any) -> list[str]:
    """The weights `from_pretrained` initialised instead of loading (missing or of another shape). Its loading
    info is a dict in transformers ≥ 5.24, an object with the same fields in earlier 5.x releases."""
    keys: list[str] = []
    for name in ("missing_keys", "mismatched_keys"):
        value = info.get(name) if isinstance(info, dict) else getattr(info, name, None)
        keys += [str(k) for k in value or []]
    return keys


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
    import transformers

    metrics = result.metrics if result else {}
    throughput: dict[str, float | None] = {"train_samples_per_s": None, "train_tokens_per_s": None}
    if result and result.train_time > 0 and result.samples:
        throughput = {
            "train_samples_per_s": result.samples / result.train_time,
            "train_tokens_per_s": result.tokens / result.train_time,
        }
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "study": {"name": study.name, "hash": study.hash, "source": study.source, "config": study.to_dict()},
        "trial_id": trial.trial_id,
        "kind": "baseline" if trial.is_baseline else "trial",
        "params": trial.params(),
        "status": status,
        "error": error,
        "metrics": {
            k: finite_or_none(metrics.get(k)) for k in ("accuracy", "f1", "eval_loss", "train_loss", "mcc")
        },
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
    if result and result.eval_counts:
        record["eval"] = result.eval_counts
    test = result.evaluated.get("test") if result else None
    if test is not None:  # the held-out split's metrics: the report reads them for the chosen configuration
        record["test"] = {
            "n": sum(test.label_counts),
            "metrics": {k: finite_or_none(v) for k, v in test.metrics.items()},
            "label_counts": test.label_counts,
            "pred_counts": test.pred_counts,
        }
    if result and result.engine:
        record["engine"] = result.engine
    if result and result.curve is not None:
        record["curve"] = result.curve
    if result and trial.is_baseline and "head" in result.engine:
        record["head"] = record["engine"].pop("head")
    return record


def _fit(
    study: Study,
    trial: Trial,
    prepared: Prepared,
    device: torch.device,
    resumable: Resumable | None,
    after_step: Callable[[], None] | None = None,
    packed: bool = False,
) -> FitResult:
    s = settings(study, trial)
    model, head = trial_model(study, trial, prepared, seed_cuda=not packed)
    num_labels = len(prepared.label_names)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if trial.is_baseline:  # the un-fine-tuned model, evaluated once
        # in a pack, as one step: no other lane captures a CUDA graph meanwhile
        guard = resumable.guard.step() if resumable is not None else contextlib.nullcontext()
        t0 = time.perf_counter()
        dtype = autocast_dtype(s.train.precision, device)
        with guard, MATMUL.hold(s.train.precision, device):
            model.to(device)
            split = for_model(prepared.eval, model)
            evaluated = evaluate(model, split, s.train.eval_batch_size, device, num_labels, dtype)
            test = None
            if prepared.test is not None:
                held_out = for_model(prepared.test, model)
                test = evaluate(model, held_out, s.train.eval_batch_size, device, num_labels, dtype)
        result = FitResult(
            metrics={**evaluated.metrics, "train_loss": None},
            eval_time=time.perf_counter() - t0,
            eval_counts=evaluated.counts(),
            engine={"name": "eval", "cuda_graphs": None, "fallback": None, "head": head},
            evaluated={"eval": evaluated, **({"test": test} if test is not None else {})},
        )
    else:
        engine = registry.make(s.train.engine, device)
        if resumable is not None:
            after_step = _both(resumable.at_step_boundary, after_step)  # periodic checkpoints too
        result = engine.fit(fit_job(study, trial, prepared, device, model, resumable, after_step))
    if device.type == "cuda":
        result.engine["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def trial_model(
    study: Study, trial: Trial, prepared: Prepared, seed_cuda: bool = True
) -> tuple[torch.nn.Module, str]:
    """`build_model` for a trial, from its init seed, under the build lock (lanes and a stack's members share
    the global RNG: seeding and initialising happen as one), its top layers re-initialised where
    `train.reinit_layers` asks for it (not a baseline's: it evaluates the pretrained model). The engines give
    it the trial's own dropout (ftvar.train.noise)."""
    seed = trial.init_seed if trial.init_seed is not None else 0
    s = settings(study, trial)
    with BUILD_LOCK:
        model, head = build_model(study, s, prepared, seed, seed_cuda=seed_cuda)
        if s.train.reinit_layers and not trial.is_baseline:  # a remedy of fine-tuning: not the baseline's
            from ftvar.train.remedies import reinit_top_layers

            reinit_top_layers(model, s.train.reinit_layers, seed)
        return model, head


def fit_job(
    study: Study,
    trial: Trial,
    prepared: Prepared,
    device: torch.device,
    model: torch.nn.Module,
    resumable: Resumable | None,
    after_step: Callable[[], None] | None,
) -> FitJob:
    """What an engine trains: the trial's model, data and settings, checkpointed through `resumable` (its
    guard and snapshot, and the checkpoint to resume from)."""
    job = FitJob(
        model=model,
        train=for_model(prepared.train, model),  # a pair's token types only for a model that takes them
        eval=for_model(prepared.eval, model),
        trial=trial,
        settings=settings(study, trial).train,
        device=device,
        pad_id=prepared.pad_token_id,
        num_labels=len(prepared.label_names),
        after_step=after_step,
        test=for_model(prepared.test, model) if prepared.test is not None else None,
    )
    if resumable is not None:
        job.guard, job.on_checkpointable = resumable.guard, resumable.set_snapshot
        job.resume_state = checkpoint.load(resumable.folder)
        if job.resume_state is not None:
            step = job.resume_state["step"]
            log.info("%s: resuming from the checkpoint at step %d", trial.trial_id, step)
    return job


def _both(first: Callable[[], object], then: Callable[[], None] | None) -> Callable[[], None]:
    """A step-boundary hook that calls `first`, then `then` (when there is one)."""

    def hook() -> None:
        first()
        if then is not None:
            then()

    return hook


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


@dataclass(frozen=True)
class Packing:
    """How a trial shared its process: alone; as one of a pack's lanes (`lanes`: how many the pack had started
    by the time the trial ended); or as a member of a stack (`members`: the stack's trial ids)."""

    mode: str = "alone"
    lanes: int = 1
    members: tuple[str, ...] = ()


ALONE = Packing()


@dataclass
class TrialRun:
    """A trial between `begin` and `finish`: its data, device, checkpointing, attempt and timings."""

    trial: Trial
    prepared: Prepared
    device: torch.device
    resumable: Resumable
    started: str
    t0: float
    timings: dict[str, float]
    record_path: Path
    attempts: AttemptLog
    lock: RunningLock

    @property
    def folder(self) -> Path:
        return self.resumable.folder


def begin(
    study: Study,
    trial: Trial,
    paths: StudyPaths,
    resumable: Resumable | None = None,
    prepared: Prepared | None = None,
    prepare_if_missing: bool = False,
) -> TrialRun:
    """Start a trial's attempt: its data (read unless given), device, checkpointing and attempt log, holding
    the trial's running lock (TrialBusy when a live process runs it; release it with `finish` or
    `run.lock.release()`)."""
    set_offline()
    started, t0 = utc_now(), time.perf_counter()
    if prepare_if_missing:
        from ftvar.data.prepare import prepare

        prepare(study, paths)
    prepared = prepared or load_prepared(study, paths, trial)
    trial_settings = settings(study, trial)
    device = pick_device(trial_settings.train.device)
    folder = paths.ckpt / trial.trial_id
    if resumable is None:
        resumable = Resumable(folder)
    resumable.every_s = trial_settings.train.checkpoint_minutes * 60
    record_path = paths.record(trial.trial_id)
    lock = RunningLock.acquire(folder)
    try:
        attempts = resumable.attempts = AttemptLog.begin(folder, record_path)
    except BaseException:
        lock.release()
        raise
    timings = {"load": time.perf_counter() - t0, "train": 0.0, "eval": 0.0, "total": 0.0}
    return TrialRun(trial, prepared, device, resumable, started, t0, timings, record_path, attempts, lock)


def fitted(run: TrialRun, result: FitResult) -> tuple[str, str | None]:
    """Take a fit's timings into the run; its status and error."""
    run.timings["train"], run.timings["eval"] = result.train_time, result.eval_time
    if result.first_step_at is not None and not STARTED.is_set():
        STARTED.set()  # the process' first trial: how long from the task's start to its first step
        run.timings["startup"] = max(0.0, result.first_step_at - process_started())
    if result.diverged:
        return "diverged", result.diverged
    return "ok", None


def crashed(run: TrialRun, exc: Exception) -> tuple[str, str]:
    """A crash inside training: the whole traceback to the task's log, the reason to the record."""
    tell(traceback.format_exc().rstrip())
    return "failed", time_limit_message(exc, run.folder) or f"{exc.__class__.__name__}: {exc}"


def how_it_ran(study: Study, run: TrialRun, result: FitResult | None, packing: Packing) -> dict[str, Any]:
    """The record's `ran` block: what a trial's numbers may depend on besides its settings and seeds — the
    engine, the arithmetic, how it shared its process, the device and its CPU threads, and whether every
    random draw was its own (ftvar.train.noise)."""
    s = settings(study, run.trial).train
    engine = (result.engine.get("name") if result else None) or (
        "eval" if run.trial.is_baseline else registry.resolve(s.engine, run.device)
    )
    return {
        "engine": engine,
        **precision_used(s.precision, run.device),
        "packing": packing.mode,
        "lanes": packing.lanes,
        "members": list(packing.members) or None,
        "device": run.device.type,
        "threads": torch.get_num_threads(),
        "randomness": (result.engine.get("randomness") if result else None) or "owned",
    }


def finish(
    study: Study,
    run: TrialRun,
    result: FitResult | None,
    status: str,
    error: str | None,
    packing: Packing = ALONE,
) -> dict[str, Any]:
    """Write the trial's record, then end its attempt as the record says (an attempt is `ok` only once its
    record is on disk); drop its checkpoint once it is ok or diverged; release the trial's lock. A record the
    storage refuses raises WriteFailed, the attempt ended `failed` with the path and the cause."""
    try:
        run.timings["total"] = time.perf_counter() - run.t0
        device = device_name(run.device)
        record = _record(
            study, run.trial, run.prepared, result, status, error, run.timings, device, run.started
        )
        record["ran"] = how_it_ran(study, run, result, packing)
        status, error = _outcome(status, error, record)
        step = result.steps if result else run.resumable.saved_step
        run.attempts.update(status, error, step, save=False)
        record.update(status=status, error=error, attempts=run.attempts.attempts)
        try:
            if status == "ok" and result is not None:  # first: a record's predictions are complete
                write_trial_predictions(study, run, result)
            record = write_record(run.record_path, record)
        except OSError as exc:
            failure = write_failed(run.record_path, exc)
            kept = "; its checkpoint is kept" if checkpoint.saved_step(run.folder) is not None else ""
            log.error("%s: %s", run.trial.trial_id, failure)
            _end_attempt(run, "failed", f"{status} after training, but {failure}{kept}", step)
            raise failure from None
        _end_attempt(run, status, error, step)
        if status in ("ok", "diverged"):  # a failed trial keeps its checkpoint: the next launch resumes it
            checkpoint.remove(run.folder)
        return record
    finally:
        run.lock.release()


def _end_attempt(run: TrialRun, state: str, reason: str | None, step: int | None) -> None:
    """The attempt's end in its log; a log the storage refuses is reported (the record, when written,
    carries the attempts too)."""
    try:
        run.attempts.update(state, reason, step)
    except OSError as exc:
        log.error("%s: attempt not recorded (%s): %s", run.trial.trial_id, state, exc)


def write_trial_predictions(study: Study, run: TrialRun, result: FitResult) -> None:
    """The trial's per-example predictions (ftvar.store.predictions), when its evaluation kept them."""
    splits = {}
    for name, evaluated in result.evaluated.items():
        if evaluated.labels is None or evaluated.predicted is None or evaluated.probabilities is None:
            return
        if not np.isfinite(evaluated.probabilities).all():
            return  # a model whose outputs are not finite has no probabilities to keep
        splits[name] = (evaluated.labels, evaluated.predicted, evaluated.probabilities)
    if "eval" not in splits:
        return
    paths = StudyPaths(run.record_path.parents[1])  # <out>/<study>/records/<id>.json
    data = sidecar(
        run.trial.trial_id,
        {"name": study.name, "hash": study.hash},
        run.prepared.folder.name,
        run.prepared.label_names,
        splits,
    )
    write_predictions(paths.prediction(run.trial.trial_id), data)


def run_trial(
    study: Study,
    trial: Trial,
    paths: StudyPaths,
    *,
    prepare_if_missing: bool = False,
    resumable: Resumable | None = None,
    prepared: Prepared | None = None,
    after_step: Callable[[], None] | None = None,
    packing: Callable[[], Packing] | None = None,
    reraise: Callable[[BaseException], bool] | None = None,
) -> dict[str, Any]:
    """Run one trial and write its record. Input errors (FtvarError) propagate and write no record; any
    other failure during training is written as a `failed` record (unless `reraise` claims it), and a
    non-finite loss as `diverged`.

    Training continues from the trial's checkpoint if there is one and saves one every
    `train.checkpoint_minutes`; a pack's `resumable` also saves on preemption, at a step boundary (its guard).
    The checkpoint is deleted once an ok or diverged record is written; a failed trial keeps it, so the next
    launch resumes it. The record lists every attempt of the trial. A pack passes the data it has already
    read (`prepared`), a hook for every step boundary, and how the trial shares its process (`packing`,
    asked when the record is written)."""
    run = begin(study, trial, paths, resumable, prepared, prepare_if_missing)
    result: FitResult | None = None
    try:
        packed = packing is not None and packing().mode != "alone"
        result = _fit(study, trial, run.prepared, run.device, run.resumable, after_step, packed)
        status, error = fitted(run, result)
    except FtvarError as exc:
        _end_attempt(run, "failed", str(exc), None)
        run.lock.release()
        raise
    except KeyboardInterrupt:  # Ctrl-C of a debug launch: no step-boundary checkpoint here
        step = run.resumable.saved_step
        where = f"resumes from its checkpoint at step {step}" if step is not None else "no checkpoint yet"
        _end_attempt(run, "interrupted", f"interrupted (Ctrl-C); {where}", None)
        run.lock.release()
        raise
    except BaseException as exc:  # a crash inside training: keep the evidence in the record
        if not isinstance(exc, Exception) or (reraise is not None and reraise(exc)):
            run.lock.release()
            raise
        status, error = crashed(run, exc)
    return finish(study, run, result, status, error, packing() if packing is not None else ALONE)


def log_to_stderr() -> None:
    """Progress lines (one per epoch) in the task's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
