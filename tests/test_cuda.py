"""The fast engine's CUDA path: graph capture, bf16, the eager fallback. Runs wherever CUDA is present (CI
has no GPU: these skip there; the device run in docs/benchmarks.md ran them on an H100/H200)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ftvar.data.cache import load_prepared
from ftvar.store import record
from ftvar.store.paths import StudyPaths
from ftvar.store.predictions import read_predictions
from ftvar.study.config import Study, load_study
from ftvar.study.trial import Trial, expand, settings
from ftvar.train import fast, noise
from ftvar.train.engine import FitJob, make_optimizer
from ftvar.train.runner import build_model, run_trial
from tests.helpers import fake_cache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OVERRIDES = [
    "data.synthetic.train=512",
    "data.synthetic.eval=128",
    "model.tiny.dim=64",
    "model.tiny.layers=2",
    "grid.batch_size=[16]",
    "grid.epochs=[1]",
    "grid.learning_rate=[1e-3]",
    "grid.seed=[0]",
    "train.device=cuda",
    "analysis.baseline=none",
]


def tiny(tmp_path: Path, *extra: str) -> tuple[Study, StudyPaths, Trial]:
    study = load_study("smoke", [*OVERRIDES, *extra])
    paths = StudyPaths.of(tmp_path, study.name)
    fake_cache(study, paths)  # random tokens: what is tested here is the device path, not learning
    return study, paths, expand(study)[0]


def losses(
    study: Study, paths: StudyPaths, trial: Trial, graphs: bool, steps: int, **remedies: Any
) -> list[float]:
    """Per-step losses of the fast engine's stepper, without dropout, from the same initial weights (with
    `remedies`: make_optimizer's layer_decay, bias_correction)."""
    s = settings(study, trial)
    prepared = load_prepared(study, paths, trial)
    model, _ = build_model(study, s, prepared, 0)
    for module in model.modules():  # no dropout: the same batches must give the same losses
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.to("cuda").train()
    job = FitJob(model, prepared.train, prepared.eval, trial, s.train, torch.device("cuda"), 0, 2)
    data = fast.DeviceSplit.of(prepared.train, job.device)
    lr = torch.tensor(1e-3, device="cuda")
    optimizer = make_optimizer(model, 1e-3, 0.01, lr_tensor=lr, **remedies)
    stepper = fast.Stepper(job, data, optimizer, lr)
    stepper.use_graphs = graphs
    order = torch.arange(len(data), device="cuda")
    out = []
    for i in range(steps):
        before = float(stepper.loss_sum)
        stepper.step(order[i * 16 : (i + 1) * 16], 32)
        out.append(float(stepper.loss_sum) - before)
    return out


def test_graph_steps_give_the_eager_losses(tmp_path: Path) -> None:
    study, paths, trial = tiny(tmp_path)
    eager = losses(study, paths, trial, graphs=False, steps=12)
    graphed = losses(study, paths, trial, graphs=True, steps=12)
    assert graphed[0] == pytest.approx(eager[0], rel=1e-6)  # identical before any update
    # after WARMUP_STEPS eager steps, the graph replays the same step: bf16 tolerance
    assert graphed == pytest.approx(eager, rel=2e-2, abs=2e-3)


@pytest.mark.parametrize(
    "remedies",
    [{"layer_decay": 0.8}, {"bias_correction": False}, {"layer_decay": 0.8, "bias_correction": False}],
)
def test_graph_steps_with_the_remedies_give_the_eager_losses(
    tmp_path: Path, remedies: dict[str, Any]
) -> None:
    """Issue 23: layer-wise learning rates (a device tensor per group, fused capturable AdamW) and Adam
    without bias correction (ftvar.train.optim) inside a captured step give the eager steps' losses."""
    study, paths, trial = tiny(tmp_path)
    eager = losses(study, paths, trial, graphs=False, steps=12, **remedies)
    graphed = losses(study, paths, trial, graphs=True, steps=12, **remedies)
    assert graphed[0] == pytest.approx(eager[0], rel=1e-6)
    assert graphed == pytest.approx(eager, rel=2e-2, abs=2e-3)


def test_a_trial_with_remedies_and_a_curve_runs_in_cuda_graphs(tmp_path: Path) -> None:
    """Issue 23 end to end on the GPU: every remedy at once, a learning curve every half epoch; the steps
    stay captured (the loss is read at the curve's points only) and the curve ends at the final metrics."""
    extra = ("train.reinit_layers=1", "train.layer_decay=0.8", "train.bias_correction=false")
    study, paths, trial = tiny(tmp_path, "train.engine=fast", "train.eval_every=0.5", *extra)
    rec = run_trial(study, trial, paths)
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["cuda_graphs"] is True and rec["engine"]["fallback"] is None
    assert [p["step"] for p in rec["curve"]] == [16, 32]
    assert rec["curve"][-1]["accuracy"] == rec["metrics"]["accuracy"]


def test_a_trial_runs_in_cuda_graphs_with_bf16(tmp_path: Path) -> None:
    study, paths, trial = tiny(tmp_path, "train.engine=fast")
    rec = run_trial(study, trial, paths)
    assert rec["status"] == "ok", rec["error"]
    engine = rec["engine"]
    assert engine["name"] == "fast" and engine["cuda_graphs"] is True and engine["fallback"] is None
    assert engine["graph_steps"] > engine["eager_steps"] and engine["peak_gpu_memory_mb"] > 0
    assert rec["metrics"]["accuracy"] is not None
    # the device-side evaluation's per-row outputs come back in row order (rows are sorted by length there)
    rows = read_predictions(paths.prediction(trial.trial_id)).splits["eval"]
    assert np.mean(rows.predicted == rows.labels) == pytest.approx(rec["metrics"]["accuracy"])
    assert np.allclose(rows.probabilities.sum(axis=1), 1.0, atol=2e-4)
    clear = np.abs(rows.probabilities[:, 1] - rows.probabilities[:, 0]) > 2e-4  # not tied after rounding
    assert np.array_equal(rows.probabilities.argmax(axis=1)[clear], rows.predicted[clear])


def test_a_failed_capture_falls_back_to_eager_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, length: int) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing (simulated)")

    monkeypatch.setattr(fast.Stepper, "_capture", broken)
    study, paths, trial = tiny(tmp_path, "train.engine=fast")
    rec = run_trial(study, trial, paths)
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["cuda_graphs"] is False
    assert "capture failed" in rec["engine"]["fallback"] and "simulated" in rec["engine"]["fallback"]
    assert record.read_record(paths.record(trial.trial_id))["engine"]["graph_steps"] == 0


def test_fp16_runs_eagerly_and_says_why(tmp_path: Path) -> None:
    study, paths, trial = tiny(tmp_path, "train.engine=fast", "train.precision=fp16")
    rec = run_trial(study, trial, paths)
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["cuda_graphs"] is False and "fp16" in rec["engine"]["fallback"]


def test_auto_is_the_fast_engine_on_cuda(tmp_path: Path) -> None:
    study, paths, trial = tiny(tmp_path)
    assert dataclasses.replace(study.train).engine == "auto"
    assert run_trial(study, trial, paths)["engine"]["name"] == "fast"


def test_packed_lanes_capture_and_train_at_once(tmp_path: Path) -> None:
    """Four trials in four lanes on one GPU: each lane captures its graphs alone (the others wait at a step
    boundary), then they replay side by side on their own streams; every trial writes an ok record."""
    from ftvar.train import pack

    study = load_study("smoke", [*OVERRIDES, "grid.seed=[0,1,2,3]", "train.engine=fast"])
    paths = StudyPaths.of(tmp_path, study.name)
    fake_cache(study, paths)
    trials = expand(study)
    old = pack.WARM_STEPS
    pack.WARM_STEPS = 1  # start the next lane at once, so that lanes capture while others train
    try:
        statuses = pack.run_pack(None, study, trials, paths, lanes=4)
    finally:
        pack.WARM_STEPS = old
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    recs = [record.read_record(paths.record(t.trial_id)) for t in trials]
    assert all(r["engine"]["cuda_graphs"] and r["engine"]["fallback"] is None for r in recs)
    assert max(r["ran"]["lanes"] for r in recs) > 1


def test_a_stack_captures_its_step_and_trains_each_member(tmp_path: Path) -> None:
    """Four trials as one stack on the GPU: its step is captured (vmap over the stacked weights inside a
    CUDA graph), every member writes an ok record and the members differ (their own seeds)."""
    from ftvar.train import pack

    study = load_study("smoke", [*OVERRIDES, "grid.seed=[0,1,2,3]", "train.engine=fast"])
    paths = StudyPaths.of(tmp_path, study.name)
    fake_cache(study, paths)
    trials = expand(study)
    statuses = pack.run_pack(None, study, trials, paths, lanes=4, stack=True)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    recs = [record.read_record(paths.record(t.trial_id)) for t in trials]
    assert all(r["engine"]["stacked_with"] == 4 for r in recs)
    graphed = [r["engine"]["cuda_graphs"] and r["engine"]["fallback"] is None for r in recs]
    assert all(graphed), recs[0]["engine"]
    assert len({r["metrics"]["train_loss"] for r in recs}) == 4


def test_a_stacks_graph_steps_give_its_eager_losses(tmp_path: Path) -> None:
    """Without dropout, a stack's graph replays give the losses of its eager steps (bf16 tolerance)."""
    from ftvar.train.stack import Stack, StackStepper

    study, paths, trial = tiny(tmp_path)
    s = settings(study, trial)
    prepared = load_prepared(study, paths, trial)
    cuda = torch.device("cuda")

    def run(graphs: bool) -> list[list[float]]:
        models = [build_model(study, s, prepared, seed)[0] for seed in (0, 1)]
        for seed, m in enumerate(models):
            for module in m.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            noise.ensure(m, seed)  # what StackEngine does before it stacks
            m.train()
        stack = Stack(models, cuda)
        jobs = [FitJob(m, prepared.train, prepared.eval, trial, s.train, cuda, 0, 2) for m in models]
        lrs = [torch.tensor(1e-3, device=cuda), torch.tensor(3e-3, device=cuda)]
        data = fast.DeviceSplit.of(prepared.train, cuda)
        stepper = StackStepper(jobs[0], data, stack, stack.optimizer(jobs, lrs), lrs[0])
        stepper.use_graphs = graphs
        order = torch.arange(len(data), device=cuda)
        out = []
        for i in range(10):
            before = stepper.loss_sum.tolist()
            rows = torch.stack([order[i * 16 : (i + 1) * 16], order[(i + 10) * 16 : (i + 11) * 16]])
            stepper.step(rows, 32)
            out.append([a - b for a, b in zip(stepper.loss_sum.tolist(), before, strict=True)])
        assert not graphs or stepper.stats.graph_steps > 0, stepper.stats.fallback
        return out

    eager, graphed = run(False), run(True)
    assert graphed[0] == pytest.approx(eager[0], rel=1e-6)
    for g, e in zip(graphed, eager, strict=True):
        assert g == pytest.approx(e, rel=2e-2, abs=2e-3)


def test_dropout_drawn_inside_a_graph_is_the_eager_steps_dropout(tmp_path: Path) -> None:
    """Issue 20: the trial's own dropout inside a captured step. A graph reads the step counter from the
    device, so each replay draws that step's masks: graph replays give the eager steps' losses (bf16)."""
    study, paths, trial = tiny(tmp_path)
    s = settings(study, trial)
    prepared = load_prepared(study, paths, trial)
    cuda = torch.device("cuda")

    def run(graphs: bool) -> list[float]:
        model, _ = build_model(study, s, prepared, 0)
        counter = noise.ensure(model, 7)
        model.to(cuda).train()
        job = FitJob(model, prepared.train, prepared.eval, trial, s.train, cuda, 0, 2)
        data = fast.DeviceSplit.of(prepared.train, cuda)
        lr = torch.tensor(1e-3, device=cuda)
        stepper = fast.Stepper(job, data, make_optimizer(model, 1e-3, 0.01, lr_tensor=lr), lr)
        stepper.use_graphs = graphs
        order = torch.arange(len(data), device=cuda)
        out = []
        for i in range(12):
            before = float(stepper.loss_sum)
            counter.at(i)
            stepper.step(order[i * 16 : (i + 1) * 16], 32)
            out.append(float(stepper.loss_sum) - before)
        assert not graphs or stepper.stats.graph_steps > 0, stepper.stats.fallback
        return out

    eager, graphed = run(False), run(True)
    assert graphed[0] == pytest.approx(eager[0], rel=1e-6)
    assert graphed == pytest.approx(eager, rel=2e-2, abs=2e-3)
    assert len(set(eager)) == len(eager)  # the masks change from step to step


def test_on_cuda_a_trial_gives_the_same_numbers_alone_in_lanes_and_in_a_stack(tmp_path: Path) -> None:
    """Issue 20 on the GPU: the same trials alone, in four lanes (their own streams, CUDA graphs) and as a
    stack of four give the same metrics: lanes to the bit, a stack within vmap's float tolerance."""
    from ftvar.train import pack

    study = load_study(
        "smoke", [*OVERRIDES, "grid.seed=[0,1,2,3]", "train.engine=fast", "train.eval_every=0.5"]
    )
    paths = StudyPaths.of(tmp_path, study.name)
    fake_cache(study, paths)
    trials = expand(study)
    got = {}
    for mode, lanes, stacked in (("alone", 1, False), ("lanes", 4, False), ("stack", 4, True)):
        pack.run_pack(None, study, trials, paths, lanes=lanes, stack=stacked)
        got[mode] = {t.trial_id: record.read_record(paths.record(t.trial_id)) for t in trials}
        for f in paths.records.glob("*.json"):  # the next mode runs every trial again
            f.unlink()
    metric = ("accuracy", "f1", "eval_loss", "train_loss")
    for tid, rec in got["alone"].items():
        assert rec["ran"]["randomness"] == "owned" and rec["engine"]["cuda_graphs"]
        assert [got["lanes"][tid]["metrics"][m] for m in metric] == [rec["metrics"][m] for m in metric]
        for m in metric:
            assert got["stack"][tid]["metrics"][m] == pytest.approx(rec["metrics"][m], rel=1e-2, abs=1e-3)
        # issue 23: the learning curves too (points at steps 16 and 32)
        assert got["lanes"][tid]["curve"] == rec["curve"] and [p["step"] for p in rec["curve"]] == [16, 32]
        for a, b in zip(got["stack"][tid]["curve"], rec["curve"], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2, abs=1e-3)


def test_fp32_is_ieee_and_tf32_is_asked_for(tmp_path: Path) -> None:
    """Issue 20: precision = fp32 trains without TF32 and leaves the process' flags as it found them; tf32
    says so in the record."""
    study, paths, trial = tiny(tmp_path, "train.engine=fast", "train.precision=fp32")
    before = torch.backends.cuda.matmul.allow_tf32
    rec = run_trial(study, trial, paths)
    assert (rec["ran"]["precision"], rec["ran"]["matmul"]) == ("fp32", "ieee")
    assert torch.backends.cuda.matmul.allow_tf32 == before
    study, paths, trial = tiny(tmp_path / "tf32", "train.engine=fast", "train.precision=tf32")
    rec = run_trial(study, trial, paths)
    assert (rec["ran"]["precision"], rec["ran"]["matmul"]) == ("fp32", "tf32")
    assert torch.backends.cuda.matmul.allow_tf32 == before
