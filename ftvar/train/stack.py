"""Stacked packs: compatible trials of a pack trained as one batched model, each kernel serving all of them.

A fast-engine step of one small trial (DistilBERT at batch 16, 13 tokens a row) is a few hundred kernels, each
of which leaves most of a GPU idle, and a pack's lanes on separate streams overlap them little
(docs/benchmarks.md). A stack keeps each member's weights as two flat leaf tensors (decayed, not decayed),
stacks them into [K, …] views for a step, runs the model over them with `torch.func.vmap` (each member its
own rows, weights and dropout masks) and updates them with torch's fused AdamW, a group per member and block
(its own learning rate and weight decay): a step of K trials is about as many kernels as a step of one, each
K times larger. On a GPU the step is captured as a CUDA graph per batch shape by the fast engine's `Stepper`;
on a CPU it runs eagerly.

Members share the model, the data, the batch size, the epochs, the precision and the clipping; they may differ
in learning rate, weight decay, schedule, warmup and both seeds (ftvar.study.stackable). Each member keeps its
own record, attempt log, divergence check and checkpoint (saved in the fast engine's format: a member resumes
alone or in another stack). Each member draws its own dropout masks (ftvar.train.noise: a hash of its seed,
the step and the position; vmap runs with randomness="error", so nothing else may draw), so a member trains
as it would alone, up to the last bits of float reductions that vmap batches differently; a resumed member
continues its masks where they were. Its throughput in the record is its own samples over the stack's time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ftvar.data.cache import Prepared
from ftvar.errors import FtvarError
from ftvar.store.files import WriteFailed
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.trial import Trial
from ftvar.train.checkpoint import Resumable
from ftvar.train.curve import curve_steps
from ftvar.train.engine import (
    MATMUL,
    FitJob,
    FitResult,
    LoopState,
    decays,
    evaluated_into,
    finish_curve,
    make_optimizer,
    steps_per_epoch,
)
from ftvar.train.fast import (
    CurveHook,
    DeviceSplit,
    Stepper,
    evaluate_fast,
    lr_multipliers,
    run_epochs,
)
from ftvar.train.noise import ensure, noise_of
from ftvar.train.runner import Packing, TrialRun, begin, crashed, finish, fit_job, fitted, trial_model

log = logging.getLogger("ftvar.train")


@dataclasses.dataclass
class Layout:
    """A member's parameters in two flat blocks: those weight decay applies to, then the others (biases,
    LayerNorm weights), each in the model's order. That is the order of `make_optimizer`'s two groups, so
    parameter i of a fast-engine checkpoint's optimizer state is entry i of the two blocks' names."""

    names: tuple[list[str], list[str]]
    shapes: tuple[list[torch.Size], list[torch.Size]]
    aliases: dict[str, str]  # a tied weight's other names → the name it is stored under

    @classmethod
    def of(cls, model: torch.nn.Module) -> Layout:
        named = list(model.named_parameters())
        if not all(p.requires_grad for _, p in named):
            raise ValueError("a stack trains every parameter; this model has frozen ones")
        blocks = ([n for n, p in named if decays(n, p)], [n for n, p in named if not decays(n, p)])
        shapes = dict((n, p.shape) for n, p in named)
        stored = {id(p): n for n, p in named}
        aliases = {
            n: stored[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if n not in shapes
        }
        return cls(blocks, ([shapes[n] for n in blocks[0]], [shapes[n] for n in blocks[1]]), aliases)

    def sizes(self, block: int) -> list[int]:
        return [s.numel() for s in self.shapes[block]]

    def flat(self, model: torch.nn.Module, block: int) -> torch.Tensor:
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names[block]])

    def split(self, flat: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
        """A block's flat tensor as named parameter views (the leading dimensions kept)."""
        lead = flat.shape[:-1]
        chunks = flat.split(self.sizes(block), dim=-1)
        return {
            n: c.view(*lead, *s)
            for n, c, s in zip(self.names[block], chunks, self.shapes[block], strict=True)
        }


class Stack:
    """K models as leaf tensors (each member's two blocks), their buffers stacked, and the batched forward."""

    def __init__(self, models: list[torch.nn.Module], device: torch.device) -> None:
        self.base = models[0]  # the module whose forward runs (with the stack's tensors swapped in)
        self.layout = Layout.of(self.base)
        self.k = len(models)
        self.blocks = [b for b in (0, 1) if self.layout.names[b]]
        # leaves[k][b]: member k's block b, a leaf of its own (one AdamW group each: its learning rate)
        self.leaves = [
            [self.layout.flat(m, b).to(device).requires_grad_() for b in self.blocks] for m in models
        ]
        # buffers stacked per member: among them each member's dropout seed and step (ftvar.train.noise)
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name] for m in models]).to(device)
            for name, _ in self.base.named_buffers()
        }
        self.noise = noise_of(self.base)
        if self.noise is None:
            raise ValueError("a stack needs models with the trial's own dropout (ftvar.train.noise.install)")
        missing = [n for n in ("ftvar_noise.seed", "ftvar_noise.step") if n not in self.buffers]
        if missing:
            raise ValueError(f"the stacked buffers lack {missing}")

    def at(self, step: int) -> None:
        """Every member's dropout counter at `step` (a device write: a graph reads it)."""
        self.buffers["ftvar_noise.step"].fill_(step)

    def views(self) -> dict[str, torch.Tensor]:
        """Each parameter as a [K, …] view of the members' blocks stacked (one copy per block; its backward
        hands each member its slice)."""
        out: dict[str, torch.Tensor] = {}
        for i, b in enumerate(self.blocks):
            out.update(self.layout.split(torch.stack([member[i] for member in self.leaves]), b))
        return out

    def logits(
        self, ids: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [K, rows, labels] of each member on its own rows: ids [K, rows, L], lengths [K, rows] (and a
        sentence pair's token type ids [K, rows, L], for a model that takes them)."""
        from torch.func import functional_call, vmap

        width = ids.shape[-1]
        keep = torch.arange(width, device=ids.device)[None, None, :] < lengths[:, :, None]
        # a prepared additive mask [K, rows, 1, L, L]: transformers passes a 4-D mask through as it is (a 2-D
        # one it checks for padding with a host read, which vmap cannot batch)
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=ids.device)
        mask = mask.masked_fill(~keep, torch.finfo(torch.float32).min)[:, :, None, None, :]
        mask = mask.expand(*keep.shape[:2], 1, width, width)

        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types

        def member(
            params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], kwargs: dict[str, torch.Tensor]
        ) -> torch.Tensor:
            out = functional_call(self.base, (params, buffers), (), kwargs)
            logits: torch.Tensor = out.logits
            return logits

        # randomness="error": every random number is the members' own (their dropout hashes their seeds);
        # a model that draws from torch's generator fails the stack, and its trials run alone
        batched = vmap(member, randomness="error")
        assert self.noise is not None
        self.noise.batched = True  # the attention's explicit form, which batches over the members
        try:
            out: torch.Tensor = batched(self.views(), self.buffers, inputs)
        finally:
            self.noise.batched = False
        return out

    def member_params(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's parameters by name (CPU copies; a tied weight under each of its names)."""
        out: dict[str, torch.Tensor] = {}
        for i, b in enumerate(self.blocks):
            out.update(self.layout.split(self.leaves[k][i].detach().cpu().clone(), b))
        out.update({alias: out[name] for alias, name in self.layout.aliases.items()})
        return out

    def optimizer(self, jobs: list[FitJob], lrs: list[torch.Tensor] | None) -> torch.optim.Optimizer:
        """torch's AdamW with a group per member and block: the member's learning rate (`lrs[k]`, a device
        tensor a CUDA graph reads, or set per step on a CPU) and weight decay on the first block only. Fused,
        like the fast engine's: one kernel per group. Members without Adam's bias correction (they share the
        setting: ftvar.study.stackable) get ftvar.train.optim's Adam, with the same groups."""
        groups = []
        for k, job in enumerate(jobs):
            for i, b in enumerate(self.blocks):
                group: dict[str, Any] = {
                    "params": [self.leaves[k][i]],
                    "weight_decay": job.settings.weight_decay if b == 0 else 0.0,
                }
                group["lr"] = lrs[k] if lrs is not None else job.trial.learning_rate
                groups.append(group)
        if not jobs[0].settings.bias_correction:
            from ftvar.train.optim import AdamWithoutBiasCorrection

            return AdamWithoutBiasCorrection(groups, lr=lrs[0] if lrs is not None else 0.0)
        if lrs is not None:
            return torch.optim.AdamW(groups, lr=lrs[0], fused=True, capturable=True)
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, ValueError):  # a torch or a device without a fused AdamW
            return torch.optim.AdamW(groups)

    def member_optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[int, Any]:
        """Member k's AdamW state as a torch AdamW state dict's `state` in `make_optimizer`'s parameter
        order (what the fast engine saves); empty before the first step."""
        state: dict[int, Any] = {}
        index = 0
        for i, b in enumerate(self.blocks):
            entry = optimizer.state.get(self.leaves[k][i], {})
            names = self.layout.names[b]
            if "exp_avg" in entry:
                m, v = self.layout.split(entry["exp_avg"], b), self.layout.split(entry["exp_avg_sq"], b)
                step = entry["step"].detach().cpu().float()
                for j, name in enumerate(names):
                    state[index + j] = {
                        "step": step.clone(),
                        "exp_avg": m[name].detach().cpu().clone(),
                        "exp_avg_sq": v[name].detach().cpu().clone(),
                    }
            index += len(names)
        return state

    def load_member_optimizer_state(
        self, optimizer: torch.optim.Optimizer, k: int, saved: dict[str, Any]
    ) -> None:
        """Member k's AdamW state from a torch AdamW state dict (a fast-engine or a stack checkpoint's)."""
        entries = saved.get("state", {})
        index = 0
        for i, b in enumerate(self.blocks):
            leaf, names = self.leaves[k][i], self.layout.names[b]
            found = [entries.get(index + j) for j in range(len(names))]
            index += len(names)
            if all(entry is None for entry in found):
                continue  # saved before the first step: AdamW starts its state as usual
            moments = {key: torch.zeros_like(leaf) for key in ("exp_avg", "exp_avg_sq")}
            views = {key: self.layout.split(flat, b) for key, flat in moments.items()}
            step = 0.0
            for name, entry in zip(names, found, strict=True):
                if entry is not None:
                    step = float(entry["step"])
                    for key in moments:
                        views[key][name].copy_(entry[key].reshape(views[key][name].shape))
            group = next(g for g in optimizer.param_groups if g["params"][0] is leaf)
            device = leaf.device if group.get("fused") or group.get("capturable") else torch.device("cpu")
            optimizer.state[leaf] = {
                "step": torch.tensor(step, dtype=torch.float32, device=device),
                **moments,
            }


class StackStepper(Stepper):
    """The fast engine's Stepper (warm-up, one CUDA graph per shape, fallback to eager) for a stack's step."""

    def __init__(
        self, job: FitJob, data: DeviceSplit, stack: Stack, optimizer: torch.optim.Optimizer, lr: torch.Tensor
    ) -> None:
        super().__init__(job, data, optimizer, lr)
        self.stack = stack
        self.loss_sum = torch.zeros(stack.k, device=job.device, dtype=torch.float32)
        assert job.trial.batch_size is not None
        self.idx = torch.zeros(stack.k, job.trial.batch_size, dtype=torch.long, device=job.device)

    def _compute(self, idx: torch.Tensor, length: int) -> None:
        """One step of every member on its rows idx[k], padded to `length`."""
        k, rows = idx.shape
        flat = idx.reshape(-1)
        tokens = self.data.tokens(idx, length)
        lengths = self.data.lengths.index_select(0, flat).view(k, rows)
        labels = self.data.labels.index_select(0, flat)
        with self.autocast():
            logits = self.stack.logits(tokens["input_ids"], lengths, tokens.get("token_type_ids"))
        losses = F.cross_entropy(logits.float().reshape(k * rows, -1), labels, reduction="none")
        losses = losses.view(k, rows).mean(1)
        losses.sum().backward()  # member k's gradient is its own loss's: the members share nothing
        if self.job.settings.max_grad_norm > 0:  # clipped per member, as each would be alone
            for member in self.stack.leaves:
                torch.nn.utils.clip_grad_norm_(member, self.job.settings.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.loss_sum.add_(losses.detach())


class StackEngine:
    """Trains the trials of `jobs` (one stack) together; a result per member."""

    name = "fast"

    def fit(self, jobs: list[FitJob], after_step: Callable[[], None] | None = None) -> list[FitResult]:
        with MATMUL.hold(jobs[0].settings.precision, jobs[0].device):
            return self._fit(jobs, after_step)

    def _fit(self, jobs: list[FitJob], after_step: Callable[[], None] | None) -> list[FitResult]:
        first, k = jobs[0], len(jobs)
        device, bs = first.device, first.trial.batch_size
        if bs is None or any(j.trial.learning_rate is None or j.trial.order_seed is None for j in jobs):
            raise ValueError("a stack trains trials, not baselines")
        cuda = device.type == "cuda"
        states = [LoopState() for _ in jobs]
        results = [FitResult(metrics={}) for _ in jobs]
        for j, job in enumerate(jobs):  # resumed members: their weights before stacking
            if job.resume_state is not None:
                job.model.load_state_dict(job.resume_state["model"])
                states[j] = LoopState(**job.resume_state["loop"])
                results[j].resumed_from_step = states[j].step
        if len({st.step for st in states}) > 1:
            raise ValueError("the members of a stack resume from one step")
        for job in jobs:
            ensure(job.model, job.trial.init_seed)
        stack = Stack([job.model for job in jobs], device)
        data = DeviceSplit.of(first.train, device)
        total = steps_per_epoch(len(data), bs) * first.trial.epochs
        multipliers = [lr_multipliers(j.settings, total) for j in jobs]
        peaks = [float(j.trial.learning_rate or 0.0) for j in jobs]
        # on a GPU each member's learning rate is a device tensor its AdamW groups read inside the graph
        lrs = [torch.tensor(peak, device=device) for peak in peaks] if cuda else None
        optimizer = stack.optimizer(jobs, lrs)
        for j, job in enumerate(jobs):
            if job.resume_state is not None:
                stack.load_member_optimizer_state(optimizer, j, job.resume_state["optimizer"])
        per_member = len(stack.blocks)

        def set_step(step: int) -> None:
            """Each member's learning rate and every member's dropout counter for `step`."""
            values = [peak * m(step) for peak, m in zip(peaks, multipliers, strict=True)]
            if lrs is not None:
                for tensor, value in zip(lrs, values, strict=True):
                    tensor.fill_(value)
            else:
                for g, group in enumerate(optimizer.param_groups):
                    group["lr"] = values[g // per_member]
            stack.at(step)

        stepper = StackStepper(first, data, stack, optimizer, lrs[0] if lrs else torch.zeros(()))
        for j, job in enumerate(jobs):
            if job.on_checkpointable is not None:
                job.on_checkpointable(_snapshot(stack, optimizer, j, job, states[j], stepper))
        per_epoch = steps_per_epoch(len(data), bs)
        curve = CurveHook(
            set(curve_steps(first.settings.eval_every, per_epoch, total)) - {total},
            _member_evaluator(stack, jobs, device, stepper.dtype),
        )
        t0 = time.perf_counter()
        hooks = [job.after_step for job in jobs if job.after_step is not None]
        hooks += [after_step] if after_step is not None else []
        diverged = run_epochs(jobs, stepper, data, states, set_step, hooks, f"stack of {k},", curve)
        if cuda:
            torch.cuda.current_stream(device).synchronize()
        train_time = time.perf_counter() - t0
        engine = stepper.stats.engine(self.name, stacked_with=k, randomness="owned")
        for j, job in enumerate(jobs):
            result, state = results[j], states[j]
            result.steps, result.train_time = state.step, train_time
            result.samples, result.tokens = state.samples, state.tokens
            result.first_step_at, result.engine = stepper.first_step_at, dict(engine)
            result.curve_time = curve.seconds  # the stack's, as its train time is
            curve_on = bool(job.settings.eval_every)
            if diverged[j]:
                result.diverged = diverged[j]
                result.metrics = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
                finish_curve(result, state, per_epoch, curve_on)
                continue
            t1 = time.perf_counter()
            job.model.load_state_dict({**job.model.state_dict(), **stack.member_params(j)})
            job.model.to(device)
            evaluated = evaluate_fast(
                job.model, job.eval, job.settings.eval_batch_size, device, job.num_labels, stepper.dtype
            )
            test = None
            if job.test is not None:
                test = evaluate_fast(
                    job.model, job.test, job.settings.eval_batch_size, device, job.num_labels, stepper.dtype
                )
            job.model.to("cpu")
            evaluated_into(result, evaluated, state.epoch_losses, time.perf_counter() - t1, test)
            finish_curve(result, state, per_epoch, curve_on)
        return results


def _member_evaluator(
    stack: Stack, jobs: list[FitJob], device: torch.device, dtype: torch.dtype | None
) -> Callable[[list[bool]], list[dict[str, Any] | None]]:
    """The learning curve's evaluation of a stack's members: each member still training, one after the other,
    in one copy of the model on the device (made at the first point) that takes the member's weights from
    the stack's leaves (a copy on the device, nothing read back to the host)."""
    first = jobs[0]
    held: dict[str, Any] = {}

    def evaluate(alive: list[bool]) -> list[dict[str, Any] | None]:
        if "model" not in held:
            held["model"] = copy.deepcopy(first.model).to(device)
            held["params"] = dict(held["model"].named_parameters())
            held["data"] = DeviceSplit.of(first.eval, device)
        model, params = held["model"], held["params"]
        out: list[dict[str, Any] | None] = []
        for k, job in enumerate(jobs):
            if not alive[k]:
                out.append(None)
                continue
            with torch.no_grad():
                for i, b in enumerate(stack.blocks):
                    for name, value in stack.layout.split(stack.leaves[k][i].detach(), b).items():
                        params[name].copy_(value)
            evaluated = evaluate_fast(
                model, job.eval, job.settings.eval_batch_size, device, job.num_labels, dtype, held["data"]
            )
            out.append(evaluated.metrics)
        return out

    return evaluate


def _snapshot(
    stack: Stack, optimizer: torch.optim.Optimizer, k: int, job: FitJob, state: LoopState, stepper: Stepper
) -> Callable[[], dict[str, Any]]:
    """Member k's live state in the fast engine's checkpoint format (a torch AdamW state dict)."""

    def snapshot() -> dict[str, Any]:
        template = make_optimizer(
            job.model,
            job.trial.learning_rate or 0.0,
            job.settings.weight_decay,
            bias_correction=job.settings.bias_correction,
        )
        return {
            "model": {**job.model.state_dict(), **stack.member_params(k)},
            "optimizer": {
                "state": stack.member_optimizer_state(optimizer, k),
                "param_groups": template.state_dict()["param_groups"],
            },
            "step": state.step,
            "loop": {**dataclasses.asdict(state), "epoch_loss_sum": stepper.partial_loss(k)},
        }

    return snapshot


class StackFailed(Exception):
    """The stack could not train (not its trials): they run again in smaller stacks or alone."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{cause.__class__.__name__}: {cause}")
        self.out_of_memory = isinstance(cause, torch.cuda.OutOfMemoryError)


def run_stack(
    study: Study,
    trials: list[Trial],
    paths: StudyPaths,
    resumables: list[Resumable],
    prepared: Prepared,
    after_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `trials` as one stack and write each one's record. Raises StackFailed, with each trial's attempt
    ended, when the stack itself failed (a model that vmap cannot run, out of memory): the caller then runs
    the trials in smaller stacks or alone. A time limit ends each member as it ends a trial run alone."""
    members = Packing("stack", 1, tuple(t.trial_id for t in trials))
    runs: list[TrialRun] = []
    try:
        for t, r in zip(trials, resumables, strict=True):
            runs.append(begin(study, t, paths, r, prepared))
    except BaseException:  # a member another process runs (TrialBusy), or an attempt log not written
        for run in runs:
            _end_attempt(run, "failed", "not trained: another member of its stack could not start")
        raise
    device = runs[0].device
    try:
        jobs = []
        for run in runs:  # each member's periodic checkpoints come from the stack's hook (_together)
            model, _ = trial_model(study, run.trial, prepared, seed_cuda=False)
            jobs.append(fit_job(study, run.trial, prepared, device, model, run.resumable, None))
        steps = {j.resume_state["step"] if j.resume_state else 0 for j in jobs}
        if len(steps) > 1:
            raise ValueError(f"members saved at different steps ({sorted(steps)})")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = StackEngine().fit(jobs, _together([r.resumable for r in runs], after_step))
    except FtvarError as exc:
        for run in runs:
            _end_attempt(run, "failed", str(exc))
        raise
    except KeyboardInterrupt:
        for run in runs:
            _end_attempt(run, "interrupted", "interrupted (Ctrl-C); resumes from the last checkpoint")
        raise
    except Exception as exc:
        if runs[0].resumable.guard.stopped is None:  # the stack failed, not its trials: they run alone
            failure = StackFailed(exc)
            log.warning("a stack of %d trials failed (%s)", len(runs), failure, exc_info=True)
            for run in runs:
                _end_attempt(run, "failed", f"stacked training failed ({failure}); the trial runs again")
            raise failure from exc
        # the time limit: each member records it, its checkpoint kept
        return _finish_all(study, [(run, None, *crashed(run, exc)) for run in runs], members)
    except BaseException:  # the process is going away (SystemExit from a signal handler): free its trials
        for run in runs:
            run.lock.release()
        raise
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    ends: list[tuple[TrialRun, FitResult | None, str, str | None]] = []
    for run, result in zip(runs, results, strict=True):
        if peak is not None:
            result.engine["peak_gpu_memory_mb"] = peak  # the whole stack's
        ends.append((run, result, *fitted(run, result)))
    return _finish_all(study, ends, members)


def _finish_all(
    study: Study, ends: list[tuple[TrialRun, FitResult | None, str, str | None]], packing: Packing
) -> list[dict[str, Any]]:
    """Each member's record; one the storage refuses does not keep the others from theirs: the first such
    failure (WriteFailed) is raised once every member has ended."""
    records, failure = [], None
    for run, result, status, error in ends:
        try:
            records.append(finish(study, run, result, status, error, packing))
        except WriteFailed as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return records


def _together(resumables: list[Resumable], then: Callable[[], None] | None) -> Callable[[], None]:
    """The stack's step-boundary hook: periodic checkpoints of all members at once, on the first one's
    timer (so that they resume from one step, together), then `then`."""

    def hook() -> None:
        saved = resumables[0].at_step_boundary()
        for resumable in resumables[1:]:
            resumable.at_step_boundary(force=saved)
        if then is not None:
            then()

    return hook


def _end_attempt(run: TrialRun, state: str, reason: str) -> None:
    """End a member's attempt without a record, and release its lock."""
    try:
        run.attempts.update(state, reason)
    except OSError as exc:
        log.error("%s: attempt not recorded (%s): %s", run.trial.trial_id, state, exc)
    finally:
        run.lock.release()
