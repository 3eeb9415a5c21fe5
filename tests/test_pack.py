"""Packed tasks: several trials in one process, lanes at a time, each to its own record."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ftvar.data.prepare import prepare
from ftvar.run.jobs import PackTask
from ftvar.store import record
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import Trial, expand
from ftvar.train import pack as pack_mod
from ftvar.train.runner import run_trial

SMALL = [
    "data.synthetic.train=240",
    "data.synthetic.eval=60",
    "model.tiny.dim=32",
    "model.tiny.layers=1",
    "grid.batch_size=[16, 32]",
    "grid.epochs=[1]",
    "grid.learning_rate=[3e-3]",
    "grid.seed=[0, 1]",
]


def study_and_paths(out: Path) -> tuple[Study, StudyPaths]:
    study = load_study("smoke", SMALL)
    paths = StudyPaths.of(out, study.name)
    prepare(study, paths)
    return study, paths


def metrics(paths: StudyPaths, trials: list[Trial]) -> dict[str, Any]:
    return {t.trial_id: record.read_record(paths.record(t.trial_id))["metrics"] for t in trials}


@pytest.mark.slow
def test_a_one_lane_pack_gives_the_numbers_of_trials_run_alone(tmp_path: Path) -> None:
    study, alone = study_and_paths(tmp_path / "alone")
    trials = expand(study)
    for t in trials:
        run_trial(study, t, alone)
    _, packed = study_and_paths(tmp_path / "packed")
    statuses = PackTask()(study, trials, packed, 1)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    assert metrics(packed, trials) == metrics(alone, trials)
    assert PackTask()(study, trials, packed, 1) == statuses  # all done: nothing runs again


@pytest.mark.slow
def test_lanes_run_trials_at_once_and_each_writes_its_record(tmp_path: Path) -> None:
    study, paths = study_and_paths(tmp_path)
    trials = expand(study)
    inside, peak = 0, 0
    lock = threading.Lock()
    real = pack_mod.run_trial

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        try:
            time.sleep(0.3)  # long enough for the second lane to start
            return real(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pack_mod, "WARM_STEPS", 1)
        mp.setattr(pack_mod, "run_trial", counting)
        statuses = pack_mod.run_pack(None, study, trials, paths, lanes=2)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    assert peak == 2
    for t in trials:
        rec = record.read_record(paths.record(t.trial_id))
        if not t.is_baseline:
            assert rec["ran"]["packing"] == "lanes" and rec["ran"]["lanes"] in (1, 2)


def test_a_lane_out_of_memory_hands_its_trial_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane that runs out of GPU memory while another lane runs stops; its trial runs in the other lane."""
    study = load_study("smoke", SMALL)
    paths = StudyPaths.of(tmp_path, study.name)
    trials = [t for t in expand(study) if not t.is_baseline][:3]
    ran: list[tuple[str, str]] = []
    failed_once: set[str] = set()
    release = threading.Event()

    def fake(study: Study, trial: Trial, paths: StudyPaths, **kwargs: Any) -> dict[str, Any]:
        lane = threading.current_thread().name
        if lane == "ftvar-lane-1" and trial.trial_id not in failed_once:
            failed_once.add(trial.trial_id)
            exc = torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            if kwargs["reraise"](exc):
                release.set()
                raise exc
        kwargs["after_step"]()
        release.wait(5)  # lane 0 stays busy until lane 1 has failed
        ran.append((lane, trial.trial_id))
        return {"status": "ok"}

    monkeypatch.setattr(pack_mod, "WARM_STEPS", 1)
    monkeypatch.setattr(pack_mod, "run_trial", fake)
    monkeypatch.setattr(pack_mod, "load_prepared", lambda *a, **k: None)
    statuses = pack_mod.run_pack(None, study, trials, paths, lanes=2)
    assert statuses == dict.fromkeys((t.trial_id for t in trials), "ok")
    assert sorted(tid for _, tid in ran) == sorted(t.trial_id for t in trials)  # every trial ran, once
    assert failed_once and all(lane == "ftvar-lane-0" for lane, tid in ran if tid in failed_once)


def test_the_gate_holds_lanes_at_step_boundaries() -> None:
    gate = pack_mod.Gate()
    events: list[str] = []
    in_step = threading.Event()

    def lane() -> None:
        with gate.step():
            in_step.set()
            time.sleep(0.2)
            events.append("step 1 done")
        with gate.step():
            events.append("step 2")

    thread = threading.Thread(target=lane)
    thread.start()
    in_step.wait(5)
    gate.pause()  # waits for step 1 to end, then keeps step 2 from starting
    events.append("paused")
    time.sleep(0.2)
    assert events == ["step 1 done", "paused"]
    gate.resume()
    thread.join(5)
    assert events == ["step 1 done", "paused", "step 2"]
