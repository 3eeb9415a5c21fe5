from __future__ import annotations

import pytest

from ftvar.config import load_study
from ftvar.errors import FtvarError
from ftvar.executors.local import split_work
from ftvar.trial import BASELINE_ID, StudyPaths, expand, find_trial, trial_id


def test_grid_expands_to_the_product_plus_baseline() -> None:
    paper = load_study("paper")
    trials = expand(paper)
    assert len(trials) == 4 * 4 * 3 * 3 + 1
    assert trials[0].trial_id == BASELINE_ID and trials[0].learning_rate is None
    assert len({t.trial_id for t in trials}) == len(trials)
    assert {t.params()["seed"] for t in trials[1:]} == {0, 1, 2}
    none = load_study("paper", ["analysis.baseline=none"])
    assert len(expand(none)) == 144 and all(not t.is_baseline for t in expand(none))


def test_trial_ids_are_stable_short_hashes() -> None:
    # a fixed value: ids must not change between releases, or re-launches would redo finished trials
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1) == trial_id("0123456789ab", 2e-5, 16, 3, 1)
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1) == "4d2d8741d6"
    assert trial_id("0123456789ab", 2e-5, 16, 3, 2) != trial_id("0123456789ab", 2e-5, 16, 3, 1)
    assert trial_id("ba9876543210", 2e-5, 16, 3, 1) != trial_id("0123456789ab", 2e-5, 16, 3, 1)


def test_growing_the_grid_keeps_existing_ids() -> None:
    small = {t.trial_id for t in expand(load_study("smoke"))}
    large = {t.trial_id for t in expand(load_study("smoke", ["grid.seed=[0,1]"]))}
    assert small < large


def test_find_trial_lists_valid_ids() -> None:
    s = load_study("smoke")
    assert find_trial(s, "baseline").is_baseline
    with pytest.raises(FtvarError, match="has no trial 'zzz'; its trials: baseline, "):
        find_trial(s, "zzz")


def test_study_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = StudyPaths.of(tmp_path, "s")
    assert p.record("abc") == tmp_path / "s" / "records" / "abc.json"
    assert p.cache == tmp_path / "s" / "cache"


def test_split_work_balances_and_keeps_every_trial() -> None:
    trials = expand(load_study("paper"))
    groups = split_work(trials, 4)
    assert len(groups) == 4
    assert sorted(t.trial_id for g in groups for t in g) == sorted(t.trial_id for t in trials)
    sizes = [sum(t.epochs for t in g) for g in groups]
    assert max(sizes) - min(sizes) <= 3
    assert len(split_work(trials[:2], 8)) == 2
