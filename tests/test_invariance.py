"""A trial's result depends on its study, settings and seeds, never on how it was run (issue 20).

On a CPU, run in this process as a SLURM task runs its trials (`run_pack`): alone, in four lanes, as stacks of
four, and killed and resumed — in every mode the same trial gives the same metrics. Lanes and resumes are
bit-identical; a stack equals its members alone up to the last bits of the float reductions vmap batches
(`STACK_RTOL`). The number of CPU threads a trial gets is part of how it ran: reductions in the backward pass
split by thread, so these runs give every trial one thread, as the local executor does."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ftvar.data.prepare import prepare
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import expand
from ftvar.train.checkpoint import Resumable
from ftvar.train.pack import run_pack

OVERRIDES = [
    "data.synthetic.train=256",
    "data.synthetic.eval=96",
    "model.tiny.dim=32",
    "grid.batch_size=[16, 32]",
    "grid.epochs=[1]",
    "grid.learning_rate=[3e-3, 1e-2]",
    "grid.seed=[0, 1]",
    "analysis.baseline=none",
    "train.checkpoint_minutes=0",  # checkpoints only where a test asks for them
    "train.eval_every=4",  # a learning curve: points at steps 4, 8, … (and the end)
]
# a stack member's losses against its run alone: vmap's batched matmuls sum in another order (seen: 1e-7)
STACK_RTOL = 1e-5
METRICS = ("accuracy", "f1", "eval_loss", "train_loss")


class Killed(BaseException):
    """A hard kill, as seen from inside the process: nothing catches it and no record is written."""


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    threads = torch.get_num_threads()
    monkeypatch.setenv("FTVAR_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study's tokenized data, built once; each test copies it."""
    out = tmp_path_factory.mktemp("cache")
    study = load_study("smoke", OVERRIDES)
    prepare(study, StudyPaths.of(out, study.name))
    return out


def study_at(tmp_path: Path, cache: Path, extra: tuple[str, ...] = ()) -> tuple[Study, StudyPaths]:
    study = load_study("smoke", [*OVERRIDES, *extra])
    paths = StudyPaths.of(tmp_path, study.name)
    shutil.copytree(StudyPaths.of(cache, study.name).cache, paths.cache)
    if extra:  # another study version: its own cache
        shutil.rmtree(paths.cache)
        prepare(study, paths)
    return study, paths


def results(paths: StudyPaths) -> dict[str, dict[str, Any]]:
    """Trial id → its record (the records are then moved aside, so the next mode runs every trial again)."""
    found = {p.stem: json.loads(p.read_text()) for p in paths.records.glob("*.json")}
    shutil.rmtree(paths.records)
    return found


def metrics(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {tid: {m: rec["metrics"][m] for m in METRICS} for tid, rec in records.items()}


def assert_close(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]], rtol: float) -> None:
    assert got.keys() == want.keys()
    for tid in want:
        for m in METRICS:
            assert got[tid][m] == pytest.approx(want[tid][m], rel=rtol, abs=0), (tid, m)


def curves(records: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Trial id → its learning curve (issue 23)."""
    return {tid: rec["curve"] for tid, rec in records.items()}


def assert_curves_close(got: dict[str, Any], want: dict[str, Any], rtol: float) -> None:
    assert got.keys() == want.keys()
    for tid in want:
        assert [p["step"] for p in got[tid]] == [p["step"] for p in want[tid]], tid
        for a, b in zip(got[tid], want[tid], strict=True):
            for key in ("train_loss", "eval_loss", "accuracy", "f1"):
                assert a[key] == pytest.approx(b[key], rel=rtol, abs=0), (tid, a["step"], key)


@pytest.mark.parametrize("repeat", range(3))  # run three times in a row: a flaky pass is a failure
def test_every_trial_gives_the_same_numbers_alone_in_lanes_and_in_a_stack(
    tmp_path: Path, cache: Path, repeat: int
) -> None:
    study, paths = study_at(tmp_path, cache)
    trials = expand(study)
    assert len(trials) == 8

    run_pack(None, study, trials, paths, lanes=1)
    alone = results(paths)
    run_pack(None, study, trials, paths, lanes=4)
    lanes = results(paths)
    run_pack(None, study, trials, paths, lanes=4, stack=True)
    stacked = results(paths)

    assert all(r["status"] == "ok" for r in [*alone.values(), *lanes.values(), *stacked.values()])
    assert metrics(lanes) == metrics(alone)  # bit for bit
    assert_close(metrics(stacked), metrics(alone), STACK_RTOL)
    # the learning curves too: evaluating during training changes nothing, in any mode
    assert curves(lanes) == curves(alone)
    assert_curves_close(curves(stacked), curves(alone), STACK_RTOL)
    steps = {tid: [p["step"] for p in c] for tid, c in curves(alone).items()}
    assert sorted(map(tuple, steps.values())) == [(4, 8)] * 4 + [(4, 8, 12, 16)] * 4  # bs 32: 8 steps, 16: 16
    for rec in alone.values():  # the last point is the final evaluation, the others are not repeated
        assert {k: rec["curve"][-1][k] for k in ("accuracy", "f1", "mcc", "eval_loss")} == {
            k: rec["metrics"][k] for k in ("accuracy", "f1", "mcc", "eval_loss")
        }
    assert {tid: m["accuracy"] for tid, m in metrics(stacked).items()} == {
        tid: m["accuracy"] for tid, m in metrics(alone).items()
    }
    assert len({m["train_loss"] for m in metrics(alone).values()}) == 8  # the trials do differ
    # every record says how it ran
    assert {r["ran"]["packing"] for r in alone.values()} == {"alone"}
    assert {r["ran"]["packing"] for r in lanes.values()} == {"lanes"}
    assert max(r["ran"]["lanes"] for r in lanes.values()) >= 2  # lanes start one after another
    for rec in stacked.values():
        assert rec["ran"]["packing"] == "stack" and len(rec["ran"]["members"]) == 4
        assert rec["trial_id"] in rec["ran"]["members"]
    assert {r["ran"]["randomness"] for r in [*alone.values(), *lanes.values(), *stacked.values()]} == {
        "owned"
    }


def test_more_cpu_threads_change_only_the_last_bits(tmp_path: Path, cache: Path, monkeypatch: Any) -> None:
    """What the docs say of CPU threads: a trial run with two threads instead of one differs in the last bits
    of its losses (reductions in the backward pass split by thread), not in its predictions."""
    study, paths = study_at(tmp_path, cache)
    trials = expand(study)[:4]
    run_pack(None, study, trials, paths, lanes=1)
    one = results(paths)
    monkeypatch.setenv("FTVAR_THREADS", "2")
    run_pack(None, study, trials, paths, lanes=1)
    two = results(paths)
    assert {r["ran"]["threads"] for r in one.values()} == {1}
    assert {r["ran"]["threads"] for r in two.values()} == {2}
    assert_close(metrics(two), metrics(one), 1e-5)


def kill_after_checkpoint(monkeypatch: pytest.MonkeyPatch, at: int, lost: int = 3) -> None:
    """Save every running trial at step `at` (as a periodic checkpoint would), then kill the process `lost`
    steps later: what a SIGKILL after a periodic checkpoint leaves behind."""
    original = Resumable.at_step_boundary

    def at_step_boundary(self: Resumable, force: bool = False) -> bool:
        step = int(self.snapshot()["step"]) if self.snapshot is not None else 0
        saved = original(self, force=force or step == at)
        if step >= at + lost:
            raise Killed(f"killed at step {step}")
        return saved

    monkeypatch.setattr(Resumable, "at_step_boundary", at_step_boundary)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("plain", ()),
        ("fast", ("train.engine=fast",)),
        ("fp16", ("train.precision=fp16",)),
        ("lanes", ()),
        ("stack", ()),
    ],
)
def test_a_killed_trial_resumes_to_the_numbers_of_an_uninterrupted_run(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, mode: str, extra: tuple[str, ...]
) -> None:
    """Kill-and-resume in each mode a run can be in: the plain engine, the fast engine, fp16 (its gradient
    scaler's state is in the checkpoint), K lanes, a stack of K; the resumed trials end with the metrics
    of the same trials run straight through, and their learning curves continue without a gap or a repeat
    (the kill at step 9 lost the point at step 8, which the resumed run makes again, once)."""
    study, paths = study_at(tmp_path, cache, extra)
    trials = [t for t in expand(study) if t.batch_size == 16]  # 16 steps each, stackable together
    lanes = 1 if mode in ("plain", "fast", "fp16") else len(trials)
    stack = mode == "stack"
    run_pack(None, study, trials, paths, lanes=lanes, stack=stack)
    through = results(paths)

    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, at=6)
        with pytest.raises(Killed):
            run_pack(None, study, trials, paths, lanes=lanes, stack=stack)
    saved = [json.loads(f.read_text())["step"] for f in paths.ckpt.glob("*/state.json")]
    assert 6 in saved  # the kill left a checkpoint to resume from
    run_pack(None, study, trials, paths, lanes=lanes, stack=stack)
    resumed = results(paths)
    assert any(r["resume"]["resumed_from_step"] == 6 for r in resumed.values())
    if stack:
        assert_close(metrics(resumed), metrics(through), STACK_RTOL)
        assert_curves_close(curves(resumed), curves(through), STACK_RTOL)
    else:
        assert metrics(resumed) == metrics(through)
        assert curves(resumed) == curves(through)
    assert {tuple(p["step"] for p in c) for c in curves(resumed).values()} == {(4, 8, 12, 16)}
    if mode == "fp16":
        assert {r["ran"]["precision"] for r in resumed.values()} == {"fp16"}
