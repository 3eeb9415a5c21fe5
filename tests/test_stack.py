"""Stacked packs: trials trained as one batched model give each member what it gets alone (dropout included:
each member draws its own masks), keep their own records and checkpoints, and fall back to running alone when
a stack cannot run."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers.models.distilbert import DistilBertConfig, DistilBertForSequenceClassification

from ftvar.data.cache import Split, load_prepared
from ftvar.data.prepare import prepare
from ftvar.errors import StudyError
from ftvar.store import record
from ftvar.store.paths import StudyPaths
from ftvar.study.config import TrainConfig, load_study
from ftvar.study.stackable import plan_stacks, stack_key, stacking_order
from ftvar.study.trial import Trial, expand
from ftvar.train import pack as pack_mod
from ftvar.train import stack as stack_mod
from ftvar.train.checkpoint import Resumable, rng_state
from ftvar.train.engine import FitJob, FitResult, make_optimizer
from ftvar.train.fast import FastEngine
from ftvar.train.stack import Layout, StackEngine
from tests.helpers import ftvar, one_error_line

SMALL = [
    "data.synthetic.train=240",
    "data.synthetic.eval=60",
    "model.tiny.dim=32",
    "model.tiny.layers=1",
    "grid.batch_size=[16, 32]",
    "grid.epochs=[1]",
    "grid.learning_rate=[3e-3, 1e-3]",
    "grid.seed=[0, 1]",
]


def split(rows: int, seed: int) -> Split:
    """Token ids of varied lengths (3 to 20 of 24) with a label the first token decides."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 21, rows).astype(np.int32)
    ids = np.zeros((rows, 24), dtype=np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 60, n)
    labels = (ids[:, 0] % 2).astype(np.int64)
    return Split(ids=ids, lengths=lengths, labels=labels)


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=32,
        dropout=0.1, attention_dropout=0.1, seq_classif_dropout=0.2,
    )  # fmt: skip
    net = DistilBertForSequenceClassification(config)
    net.set_attn_implementation("eager")
    return net


MEMBERS = [  # learning rate, weight decay, init seed, order seed, warmup ratio, schedule
    (3e-3, 0.01, 0, 0, 0.06, "linear"),
    (1e-3, 0.0, 1, 2, 0.2, "cosine"),
    (5e-3, 0.1, 2, 1, 0.0, "constant"),
]


def jobs(
    train: Split, evaluation: Split, batch_size: int = 16, epochs: int = 2, **extra: Any
) -> list[FitJob]:
    out = []
    for i, (lr, wd, init, order, warmup, schedule) in enumerate(MEMBERS):
        trial = Trial(f"t{i}", lr, batch_size, epochs, init, order)
        settings = TrainConfig(
            weight_decay=wd, warmup_ratio=warmup, scheduler=schedule, device="cpu", **extra
        )
        out.append(FitJob(model(init), train, evaluation, trial, settings, torch.device("cpu"), 0, 2))
    return out


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-4) -> bool:
    """Equal weights up to float noise: batched and single matmuls sum in other orders, and AdamW turns a
    near-zero gradient's noise into steps of up to the learning rate (seen: 3e-5 after 26 steps at 5e-3; a
    wrong learning rate, clipping or row order moves weights by 1e-3 and more)."""
    return a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=atol, rtol=1e-4) for n in a)


def test_a_members_parameters_are_in_make_optimizers_order() -> None:
    """Parameter i of a fast-engine checkpoint's AdamW state is entry i of the layout's two blocks: the
    decayed parameters, then biases and LayerNorm weights, each in the model's order."""
    net = model(0)
    layout = Layout.of(net)
    params = dict(net.named_parameters())
    groups = make_optimizer(net, 1e-3, 0.01).param_groups
    assert [params[n] for n in layout.names[0] + layout.names[1]] == [p for g in groups for p in g["params"]]
    assert layout.names[1] and all(n.endswith("bias") or "norm" in n.lower() for n in layout.names[1])
    assert layout.aliases == {}  # a classifier ties no weights
    tied = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight
    assert Layout.of(tied).aliases == {"1.weight": "0.weight"}
    flat = layout.flat(net, 0)
    assert sum(layout.sizes(0)) == flat.numel()
    assert all(torch.equal(v, params[n]) for n, v in layout.split(flat, 0).items())


@pytest.mark.parametrize("extra", [{}, {"bias_correction": False, "eval_every": 10}])
def test_a_stack_trains_each_member_as_it_trains_alone(extra: dict[str, Any]) -> None:
    """A member's weights, losses and metrics are those of the fast engine's run of the same trial alone: its
    own rows in its own order, its own learning rate, schedule and weight decay, its own dropout masks; and
    so are its learning curve and, without Adam's bias correction (issue 23), its optimizer's steps."""
    train, evaluation = split(200, 0), split(60, 1)
    stacked = jobs(train, evaluation, **extra)
    results = StackEngine().fit(stacked)
    for job, result in zip(stacked, results, strict=True):
        alone = jobs(train, evaluation, **extra)[int(job.trial.trial_id[1])]
        expected = FastEngine().fit(alone)
        assert result.steps == expected.steps == 26
        got, want = weights(job.model), weights(alone.model)
        if extra:  # the attention's key bias: no gradient in exact arithmetic (the softmax ignores it), so
            # Adam turns float noise into steps, three times larger without bias correction (seen: 3e-3)
            got, want = ({n: v for n, v in w.items() if not n.endswith("k_lin.bias")} for w in (got, want))
        assert close(got, want)
        assert result.metrics["accuracy"] == expected.metrics["accuracy"]
        assert result.metrics["train_loss"] == pytest.approx(expected.metrics["train_loss"], rel=1e-4)
        assert result.samples == expected.samples and result.tokens == expected.tokens
        assert result.engine["stacked_with"] == 3 and result.engine["eager_steps"] == 26
        assert result.curve is not None and expected.curve is not None
        assert [p["step"] for p in result.curve] == [p["step"] for p in expected.curve]
        assert [p["accuracy"] for p in result.curve] == [p["accuracy"] for p in expected.curve]
    assert [p["step"] for p in results[0].curve or []] == ([10, 20, 26] if extra else [13, 26])
    assert len({round(r.metrics["train_loss"] or 0, 6) for r in results}) == 3  # the members differ


def snapshots_at(step: int, stacked: list[FitJob]) -> list[dict[str, Any]]:
    """Train a stack up to `step`, then take each member's checkpoint as a signal would, and stop."""
    taken: list[Any] = [None] * len(stacked)
    for i, job in enumerate(stacked):
        job.on_checkpointable = lambda snap, i=i: taken.__setitem__(i, snap)
    done = 0

    def after() -> None:
        nonlocal done
        done += 1
        if done == step:
            raise KeyboardInterrupt  # what a stop looks like to the loop

    with pytest.raises(KeyboardInterrupt):
        StackEngine().fit(stacked, after)
    return [{**snap(), "rng": rng_state()} for snap in taken]


def test_a_members_checkpoint_resumes_it_alone_and_a_stack_resumes_from_its_members() -> None:
    train, evaluation = split(200, 0), split(60, 1)
    through = jobs(train, evaluation)
    StackEngine().fit(through)
    saved = snapshots_at(9, jobs(train, evaluation))
    assert [s["step"] for s in saved] == [9, 9, 9]
    # member 1 resumes alone, in the fast engine: its checkpoint is in that engine's format
    alone = jobs(train, evaluation)[1]
    alone.resume_state = copy.deepcopy(saved[1])
    result = FastEngine().fit(alone)
    assert result.resumed_from_step == 9 and result.steps == 26
    assert close(weights(alone.model), weights(through[1].model))
    # and the three resume together, as a stack
    again = jobs(train, evaluation)
    for job, state in zip(again, saved, strict=True):
        job.resume_state = state
    results = StackEngine().fit(again)
    assert [r.resumed_from_step for r in results] == [9, 9, 9]
    for job, ref in zip(again, through, strict=True):
        assert close(weights(job.model), weights(ref.model))


def test_a_diverging_member_is_recorded_diverged_and_the_others_train_on() -> None:
    train, evaluation = split(200, 0), split(60, 1)
    stacked = jobs(train, evaluation)
    stacked[1].trial = dataclasses.replace(stacked[1].trial, learning_rate=float("inf"))
    results = StackEngine().fit(stacked)
    assert results[1].diverged is not None and "non-finite training loss" in results[1].diverged
    assert results[1].steps < results[0].steps == results[2].steps == 26  # it stopped counting there
    assert results[1].metrics["accuracy"] is None
    for i in (0, 2):
        assert results[i].diverged is None and results[i].metrics["accuracy"] is not None


def test_which_trials_stack_together() -> None:
    study = load_study("smoke", [*SMALL, "grid.epochs=[1, 2]"])
    trials = expand(study)
    keys = {t.trial_id: stack_key(study, t) for t in trials}
    assert all(keys[t.trial_id] is None for t in trials if t.is_baseline)
    runs = [t for t in trials if not t.is_baseline]
    for a in runs:
        for b in runs:
            same = (a.batch_size, a.epochs) == (b.batch_size, b.epochs)
            assert (keys[a.trial_id] == keys[b.trial_id]) == same
    plan = plan_stacks(study, trials, 3)
    assert sorted(t.trial_id for item in plan for t in item) == sorted(t.trial_id for t in trials)
    assert all(len({stack_key(study, t) for t in item}) == 1 and len(item) <= 3 for item in plan)
    baselines = sum(1 for t in trials if t.is_baseline)
    assert sorted(len(item) for item in plan) == [1] * (baselines + 4) + [3] * 4  # 4 groups of 4 (lr × seed)
    steps = {t.trial_id: (5 if i % 2 else None) for i, t in enumerate(runs)}
    by_step = plan_stacks(study, runs, 8, lambda t: steps[t.trial_id])
    assert all(len({steps[t.trial_id] for t in item}) == 1 for item in by_step)  # one resume step a stack
    assert len(by_step) == 8  # each (batch size, epochs) group split in two by the step
    ordered = stacking_order(study, trials)
    keyed = [stack_key(study, t) or "alone" for t in ordered]
    changes = sum(1 for x, y in itertools.pairwise(keyed) if x != y)
    assert changes == 4  # the baselines, then each group in one run
    plain = load_study("smoke", [*SMALL, "train.engine=plain"])
    assert all(stack_key(plain, t) is None for t in expand(plain))  # an engine other than the fast one
    fp16 = load_study("smoke", [*SMALL, "train.precision=fp16"])
    assert all(stack_key(fp16, t) is None for t in expand(fp16))


def prepared_study(out: Path) -> tuple[Any, StudyPaths]:
    study = load_study("smoke", SMALL)
    paths = StudyPaths.of(out, study.name)
    prepare(study, paths)
    return study, paths


@pytest.mark.slow
def test_a_stacked_pack_writes_each_trials_record(tmp_path: Path) -> None:
    study, paths = prepared_study(tmp_path)
    trials = expand(study)
    statuses = pack_mod.run_pack(None, study, trials, paths, lanes=4, stack=True)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    for t in trials:
        rec = record.read_record(paths.record(t.trial_id))
        assert len(rec["attempts"]) == 1 and rec["attempts"][0]["state"] == "ok"
        if not t.is_baseline:
            assert rec["engine"]["stacked_with"] == 4 and rec["ran"]["packing"] == "stack"
            assert len(rec["ran"]["members"]) == 4 and t.trial_id in rec["ran"]["members"]
            assert rec["steps"] == -(-240 // t.batch_size)  # type: ignore[operator]
        assert not (paths.ckpt / t.trial_id).exists()


@pytest.mark.slow
def test_a_failed_stack_runs_its_trials_again_alone_or_in_halves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, paths = prepared_study(tmp_path)
    trials = [t for t in expand(study) if not t.is_baseline and t.batch_size == 16]
    real = StackEngine.fit
    sizes: list[int] = []

    def out_of_memory(self: StackEngine, jobs: list[FitJob], after: Any = None) -> list[FitResult]:
        sizes.append(len(jobs))
        if len(jobs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, jobs, after)

    monkeypatch.setattr(StackEngine, "fit", out_of_memory)
    statuses = pack_mod.run_pack(None, study, trials, paths, lanes=4, stack=True)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok") and sizes == [4, 2, 2]
    for t in trials:
        rec = record.read_record(paths.record(t.trial_id))
        assert rec["engine"]["stacked_with"] == 2
        assert [a["state"] for a in rec["attempts"]] == ["failed", "ok"]
        assert "stacked training failed (OutOfMemoryError" in rec["attempts"][0]["reason"]

    def broken(self: StackEngine, jobs: list[FitJob], after: Any = None) -> list[FitResult]:
        raise RuntimeError("vmap: a batching rule is missing (simulated)")

    monkeypatch.setattr(StackEngine, "fit", broken)
    others = [t for t in expand(study) if not t.is_baseline and t.batch_size == 32]
    statuses = pack_mod.run_pack(None, study, others, paths, lanes=4, stack=True)
    assert statuses == dict.fromkeys((t.trial_id for t in others), "ok")
    for t in others:
        rec = record.read_record(paths.record(t.trial_id))
        assert "stacked_with" not in rec["engine"]  # ran alone
        assert [a["state"] for a in rec["attempts"]] == ["failed", "ok"]


class UncompletedJobError(Exception):
    """Named as submitit's: what its time-limit handler raises once the requeues are used up."""


@pytest.mark.slow
def test_a_time_limit_ends_each_member_resumable_and_the_next_run_resumes_the_stack(
    tmp_path: Path,
) -> None:
    study, paths = prepared_study(tmp_path)
    trials = [t for t in expand(study) if not t.is_baseline and t.batch_size == 16][:2]
    resumables = [Resumable(paths.ckpt / t.trial_id) for t in trials]
    gate = resumables[0].guard
    for r in resumables[1:]:
        r.guard = gate
    prepared = load_prepared(study, paths, trials[0])
    done = 0

    def at_step() -> None:  # the time limit after 5 steps: save, as the pack's handler does, then stop
        nonlocal done
        done += 1
        if done == 5:
            assert all(r.save("SIGUSR2 (time limit or preemption)") for r in resumables)
            gate.stop(UncompletedJobError("Job has timed-out too many times"))

    records = stack_mod.run_stack(study, trials, paths, resumables, prepared, at_step)
    for t, rec in zip(trials, records, strict=True):
        assert rec["status"] == "failed" and rec["error"].startswith("time limit")
        assert "resumable from step 5" in rec["error"]
        assert (paths.ckpt / t.trial_id / "state.pt").is_file()
    fresh = [Resumable(paths.ckpt / t.trial_id) for t in trials]
    records = stack_mod.run_stack(study, trials, paths, fresh, prepared)
    for rec in records:
        assert rec["status"] == "ok" and rec["resume"]["resumed_from_step"] == 5 and rec["steps"] == 15
        first, last = rec["attempts"]  # as for a trial run alone: the time limit failed the first attempt
        assert (first["state"], last["state"]) == ("failed", "ok") and first["reason"].startswith(
            "time limit"
        )


def test_a_bad_pack_mode_is_one_line(tmp_path: Path) -> None:
    result = ftvar("launch", "smoke", "--executor", "local", "--pack", "heap", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--pack 'heap' is not valid; choose one of: lanes, stack" in one_error_line(result)
    assert not any(tmp_path.iterdir())
    alone = ftvar("launch", "smoke", "--executor", "local", "--pack", "stack", "--out", str(tmp_path))
    assert "give --trials-per-task K" in one_error_line(alone)
    assert not any(tmp_path.iterdir())
    with pytest.raises(StudyError, match=r"cluster\.pack = 'heap' is not valid"):  # the study's table too
        load_study("smoke", ["cluster.pack=heap"])


def test_a_stacks_members_save_their_periodic_checkpoints_together(tmp_path: Path) -> None:
    """On the first member's timer, every member saves at the same step: they then resume as one stack."""
    saved: list[tuple[str, int]] = []
    resumables = [Resumable(tmp_path / name) for name in ("a", "b", "c")]
    step = 0

    def snapshot_of(name: str) -> Callable[[], dict[str, Any]]:
        def snapshot() -> dict[str, Any]:
            saved.append((name, step))
            return {"step": step}

        return snapshot

    for r in resumables:
        r.every_s = 3600.0
        r.set_snapshot(snapshot_of(r.folder.name))
    hook = stack_mod._together(resumables, None)
    step = 1
    hook()
    assert saved == []  # not due
    resumables[0].last_save -= 7200  # the first member's timer is due; the others' are not
    step = 2
    hook()
    assert saved == [("a", 2), ("b", 2), ("c", 2)]
    assert [r.saved_step for r in resumables] == [2, 2, 2]


@pytest.mark.slow
def test_the_debug_executor_runs_a_pack_in_its_own_process(tmp_path: Path) -> None:
    """`--executor debug` keeps --trials-per-task and --pack: a stack can be debugged in one process."""
    args = [f"--set={s}" for s in SMALL]
    result = ftvar(
        "launch",
        "smoke",
        *args,
        "--executor",
        "debug",
        "--trials-per-task",
        "4",
        "--pack",
        "stack",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one pack in this process, stacks of up to 4" in result.stdout
    study = load_study("smoke", SMALL)
    for t in expand(study):
        rec = record.read_record(StudyPaths.of(tmp_path, study.name).record(t.trial_id))
        assert rec["status"] == "ok"
        if not t.is_baseline:
            assert rec["engine"]["stacked_with"] == 4 and rec["environment"]["slurm_job_id"] is None
