"""The engines side by side on a CPU: the fast loop gives the plain loop's numbers, the Trainer runs too."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from ftvar.data.prepare import prepare
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from ftvar.train.engine import restore_optimizer
from ftvar.train.runner import run_trial

OVERRIDES = [
    "data.synthetic.train=1000",
    "data.synthetic.eval=100",
    "model.tiny.dim=64",
    "model.tiny.layers=2",
    "grid.batch_size=[16]",
    "grid.epochs=[2]",
    "grid.learning_rate=[3e-3]",
    "grid.seed=[0]",
    "analysis.baseline=none",
    "train.eval_every=0.5",  # a learning curve: points at steps 32, 63, 95 and 126
]
# every remedy at once, on one epoch (63 steps: curve points at 32 and 63)
REMEDIES = (
    "train.reinit_layers=1",
    "train.layer_decay=0.8",
    "train.bias_correction=false",
    "grid.epochs=[1]",
)


def run(tmp_path: Path, engine: str, *extra: str) -> dict[str, Any]:
    study = load_study("smoke", [*OVERRIDES, f"train.engine={engine}", *extra])
    paths = StudyPaths.of(tmp_path / f"{engine}{len(extra)}", study.name)
    prepare(study, paths)
    return run_trial(study, expand(study)[0], paths)


def assert_same_run(fast: dict[str, Any], plain: dict[str, Any], steps: list[int]) -> None:
    """The same batches, dropout masks, optimizer and schedule: only summation order may differ."""
    for key in ("accuracy", "f1"):
        assert fast["metrics"][key] == plain["metrics"][key]
    for key in ("eval_loss", "train_loss"):
        assert fast["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-5)
    assert [p["step"] for p in fast["curve"]] == [p["step"] for p in plain["curve"]] == steps
    for a, b in zip(fast["curve"], plain["curve"], strict=True):
        assert (a["accuracy"], a["epoch"]) == (b["accuracy"], b["epoch"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_on_a_cpu_the_fast_loop_gives_the_plain_loops_numbers(tmp_path: Path) -> None:
    plain, fast = run(tmp_path, "plain"), run(tmp_path, "fast")
    assert plain["status"] == fast["status"] == "ok"
    assert (plain["engine"]["name"], fast["engine"]["name"]) == ("plain", "fast")
    assert fast["engine"]["cuda_graphs"] is False and fast["engine"]["eager_steps"] == fast["steps"] == 126
    assert_same_run(fast, plain, [32, 63, 95, 126])
    assert fast["throughput"]["train_tokens_per_s"] > 0 and fast["eval"] == plain["eval"]
    # the remedies (issue 23) too: a re-initialised top layer, layer-wise learning rates, Adam without bias
    # correction train the same in both loops, and differently from the trial without them
    plain_r, fast_r = run(tmp_path, "plain", *REMEDIES), run(tmp_path, "fast", *REMEDIES)
    assert plain_r["status"] == fast_r["status"] == "ok"
    assert_same_run(fast_r, plain_r, [32, 63])
    assert plain_r["curve"][0]["train_loss"] != plain["curve"][0]["train_loss"]
    assert run(tmp_path, "auto")["engine"]["name"] == "plain"  # auto: plain on a CPU


@pytest.mark.slow
def test_the_trainer_engine_trains_and_is_evaluated_like_the_others(tmp_path: Path) -> None:
    rec = run(tmp_path, "trainer")
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["name"] == "trainer" and rec["steps"] == 126
    assert rec["metrics"]["accuracy"] > 0.6 and rec["metrics"]["train_loss"] is not None
    assert sum(rec["eval"]["pred_counts"]) == 100
    # its learning curve: the Trainer's logged loss at ftvar's points, evaluated by ftvar's code
    assert [p["step"] for p in rec["curve"]] == [32, 63, 95, 126]
    assert all(p["train_loss"] is not None and p["accuracy"] is not None for p in rec["curve"])
    assert rec["curve"][-1]["accuracy"] == rec["metrics"]["accuracy"]
    # and the remedies: ftvar's optimizer and schedule handed to the Trainer
    remedied = run(tmp_path, "trainer", *REMEDIES)
    assert remedied["status"] == "ok" and remedied["metrics"]["train_loss"] != rec["metrics"]["train_loss"]


def test_fresh_weights_reads_both_forms_of_the_loading_info() -> None:
    """transformers ≥ 5.24 (and 4.x) return a dict; earlier 5.x releases an object with the same fields."""
    from types import SimpleNamespace

    from ftvar.train.runner import fresh_weights

    assert fresh_weights({"missing_keys": {"classifier.weight"}, "mismatched_keys": []}) == [
        "classifier.weight"
    ]
    assert fresh_weights(SimpleNamespace(missing_keys=set(), mismatched_keys=["pre_classifier.bias"])) == [
        "pre_classifier.bias"
    ]
    assert fresh_weights({}) == [] and fresh_weights(SimpleNamespace()) == []


def test_a_restored_optimizer_follows_its_learning_rate_tensor_again() -> None:
    """A CUDA-graph trial's AdamW reads its learning rate from a device tensor the loop changes in place;
    `load_state_dict` alone would leave a resumed trial at the saved step's learning rate for good."""
    param = torch.nn.Parameter(torch.ones(3))
    lr = torch.tensor(0.1)
    optimizer = torch.optim.AdamW([param], lr=lr, foreach=False)
    param.grad = torch.ones(3)
    optimizer.step()
    buffer = io.BytesIO()  # saved and loaded as a checkpoint is: the loaded groups hold other tensors
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    again = torch.optim.AdamW([param], lr=lr, foreach=False)
    restore_optimizer(again, saved, lr)
    assert all(group["lr"] is lr for group in again.param_groups)
    lr.fill_(0.0)  # the schedule's next value: the resumed optimizer must follow it
    before = param.detach().clone()
    param.grad = torch.ones(3)
    again.step()
    assert torch.equal(param.detach(), before)
