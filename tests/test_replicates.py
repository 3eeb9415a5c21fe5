"""Replicates (`grid.replicate`) and how trials ran (issue 20, items 4 and 5): a replicate is the same trial
run again; the report shows their spread beside the seeds' and counts each (configuration, seeds) cell once;
trials that ran under other conditions (engine, precision, packing, device, random numbers) are counted in a
warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ftvar.errors import StudyError
from ftvar.report.build import build_report
from ftvar.store.paths import StudyPaths
from ftvar.store.schema import validate
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests.records_factory import make_record, study_with, write

GRID = {"learning_rate": [1e-5, 3e-5], "batch_size": [16, 32], "epochs": [1], "seed": [0, 1, 2]}


def test_replicates_are_trials_of_their_own_and_replicate_0_keeps_its_id() -> None:
    plain = study_with(GRID)
    again = study_with({**GRID, "replicate": [0, 1, 2]})
    assert again.hash == plain.hash  # the grid is not in the study hash
    trials = [t for t in expand(again) if not t.is_baseline]
    assert len(trials) == 3 * len([t for t in expand(plain) if not t.is_baseline])
    assert {t.trial_id for t in trials if t.replicate == 0} == {
        t.trial_id for t in expand(plain) if not t.is_baseline
    }
    assert len({t.trial_id for t in trials}) == len(trials)
    assert all(("replicate" in t.params()) == (t.replicate > 0) for t in trials)
    assert {t.replicate for t in trials} == {0, 1, 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [("[-1]", "integers ≥ 0"), ("[0, 0]", "repeated values"), ('["a"]', "integers ≥ 0")],
)
def test_a_bad_replicate_list_is_an_error(value: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        load_study("smoke", [f"grid.replicate={value}"])


def _records(tmp_path: Path, study: Any, noise: float, ran: dict[str, Any] | None = None) -> None:
    """Records of every trial: accuracy from the learning rate and the seed, plus `noise` per replicate."""
    rng = np.random.default_rng(0)
    for t in expand(study):
        if t.is_baseline:
            continue
        assert t.learning_rate is not None and t.init_seed is not None
        accuracy = 0.7 + 0.05 * (t.learning_rate > 2e-5) + 0.01 * t.init_seed + noise * rng.normal()
        rec = make_record(
            study,
            learning_rate=t.learning_rate,
            batch_size=t.batch_size,
            epochs=t.epochs,
            seed=t.init_seed,
            tid=t.trial_id,
            metrics={"accuracy": accuracy},
        )
        rec["params"] = t.params()
        rec["ran"] = {
            "engine": "plain",
            "precision": "fp32",
            "matmul": "ieee",
            "packing": "alone",
            "device": "cpu",
            **(ran(t) if callable(ran) else {}),
        }
        validate(rec)
        write(StudyPaths.of(tmp_path, study.name).records, rec)


def test_identical_replicates_say_so_and_count_once(tmp_path: Path) -> None:
    study = study_with({**GRID, "replicate": [0, 1]}, baseline="none")
    _records(tmp_path, study, noise=0.0)
    report = build_report(study, tmp_path)
    text = report.markdown.read_text()
    assert "Replicates: 24 runs of 12 (configuration, seeds) cells" in text
    assert "accuracy identical in every cell" in text.lower()
    assert "the hardware and kernels added no noise" in text
    assert "did not all run alike" not in text
    data = report.data
    assert data["replicates"]["cells"] == 12
    fit = next(f for f in data["fits"] if f["metric"] == "accuracy" and f["subset"] == "all")
    assert fit["n"] == 12  # one observation per (configuration, seeds) cell, not per run


def test_replicates_that_differ_give_their_spread(tmp_path: Path) -> None:
    study = study_with({**GRID, "replicate": [0, 1, 2]}, baseline="none")
    _records(tmp_path, study, noise=0.004)
    text = build_report(study, tmp_path).markdown.read_text()
    assert "Replicates: 36 runs of 12" in text
    assert "within a cell, largest difference" in text
    assert "the hardware's and kernels' own noise" in text


def test_trials_that_ran_differently_are_counted_in_a_warning(tmp_path: Path) -> None:
    study = study_with(GRID, baseline="none")
    _records(tmp_path, study, noise=0.0, ran=lambda t: {"packing": "stack"} if t.init_seed == 0 else {})
    text = build_report(study, tmp_path).markdown.read_text()
    assert "the trials did not all run alike" in text
    assert "packing: 8 alone, 4 stack" in text
