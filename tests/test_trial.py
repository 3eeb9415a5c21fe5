"""Trials: ids that never change, the two seeds, baselines per init seed, per-trial settings and data keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftvar.errors import FtvarError
from ftvar.run.local import split_work
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import BASELINE_ID, data_key, expand, find_trial, settings, trial_id


def test_grid_expands_to_the_product_plus_a_baseline_per_init_seed() -> None:
    paper = load_study("paper")
    trials = expand(paper)
    # without the model in the (test's empty) HF cache its head cannot be known to be trained: one baseline
    # per init seed, which is never wrong
    assert len(trials) == 4 * 4 * 3 * 3 + 3
    assert [t.init_seed for t in trials[:3]] == [0, 1, 2] and all(t.is_baseline for t in trials[:3])
    assert len({t.trial_id for t in trials}) == len(trials)
    assert {t.params()["seed"] for t in trials[3:]} == {0, 1, 2}
    assert all(t.init_seed == t.order_seed for t in trials[3:])
    none = load_study("paper", ["analysis.baseline=none"])
    assert len(expand(none)) == 144 and all(not t.is_baseline for t in expand(none))


def test_a_trained_head_has_one_baseline(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["DistilBertForSequenceClassification"]}))
    trials = expand(load_study("paper", [f"model.name_or_path={model}"]))
    assert len(trials) == 145 and trials[0].trial_id == BASELINE_ID and trials[0].init_seed is None
    (model / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))  # a new head
    assert sum(t.is_baseline for t in expand(load_study("paper", [f"model.name_or_path={model}"]))) == 3


def test_trial_ids_are_stable_short_hashes() -> None:
    # fixed values: ids must not change between releases, or re-launches would redo finished trials
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1) == "4d2d8741d6"
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1, order_seed=1) == "4d2d8741d6"  # equal seeds: as before
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1, order_seed=2) != "4d2d8741d6"
    assert trial_id("0123456789ab", 2e-5, 16, 3, 2) != trial_id("0123456789ab", 2e-5, 16, 3, 1)
    assert trial_id("ba9876543210", 2e-5, 16, 3, 1) != trial_id("0123456789ab", 2e-5, 16, 3, 1)
    # other axes, keys out of order (ids as the code before the shared encoder gave them)
    extra = (
        ("train.warmup_ratio", 0.1),
        ("model.name_or_path", "distilbert-base-uncased"),
        ("data.max_length", 64),
    )
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1, extra=extra) == "737608aaee"
    other = (("train.scheduler", "cosine"), ("data.train_limit", 400))
    assert trial_id("0123456789ab", 2e-5, 16, 3, 1, 2, extra=other) == "8026a005b0"
    # the built-in studies' hashes and ids, as records on disk have them (changed once, by issue 20: every
    # trial draws its own dropout masks since, so records made before are another version of the study;
    # before: paper e0d9f3a55164, smoke dd28cf53e5d7)
    paper, smoke = load_study("paper"), load_study("smoke")
    assert (paper.hash, smoke.hash) == ("91eff069beb0", "9f232045881f")
    first = next(t for t in expand(paper) if not t.is_baseline)
    assert (first.trial_id, first.learning_rate, first.batch_size, first.epochs, first.seed) == (
        "ccb1fef86c",
        1e-5,
        8,
        1,
        0,
    )
    assert [t.trial_id for t in expand(smoke)][:3] == ["baseline", "a9e612dc82", "721ce313c2"]


def test_init_and_order_seeds_cross() -> None:
    smoke = load_study("smoke", ["grid.init_seed=[0,1]", "grid.order_seed=[0,1,2]"])
    trials = [t for t in expand(smoke) if not t.is_baseline]
    assert len(trials) == 8 * 6
    pairs = {(t.init_seed, t.order_seed) for t in trials}
    assert pairs == {(i, o) for i in (0, 1) for o in (0, 1, 2)}
    same = next(t for t in trials if t.init_seed == t.order_seed == 0)
    plain = expand(load_study("smoke"))[1:]
    assert same.trial_id in {t.trial_id for t in plain}  # seed 0 is init 0 + order 0: the same trial
    differ = next(t for t in trials if t.init_seed != t.order_seed)
    assert differ.params()["seed"] is None and differ.params()["order_seed"] == differ.order_seed
    assert sum(t.is_baseline for t in expand(smoke)) == 2  # a tiny model's head is new: one per init seed
    # an override of one seed axis replaces the file's `seed` (which then serves as the other axis)
    only_init = load_study("smoke", ["grid.init_seed=[3,4]"])
    assert (only_init.grid.init_seed, only_init.grid.order_seed, only_init.grid.paired) == (
        (3, 4),
        (0,),
        False,
    )


def test_growing_the_grid_or_an_axis_keeps_existing_ids() -> None:
    small = {t.trial_id for t in expand(load_study("smoke"))}
    large = {t.trial_id for t in expand(load_study("smoke", ["grid.seed=[0,1]"]))}
    assert small - {"baseline"} < large
    one = {t.trial_id for t in expand(load_study("smoke", ["grid.train.warmup_ratio=[0.1]"]))}
    two = {t.trial_id for t in expand(load_study("smoke", ["grid.train.warmup_ratio=[0.1, 0.2]"]))}
    assert one < two


def test_extra_axes_reach_the_trial_settings() -> None:
    study = load_study(
        "smoke", ["grid.train.warmup_ratio=[0.0, 0.1]", "grid.train.scheduler=['linear','cosine']"]
    )
    trials = [t for t in expand(study) if not t.is_baseline]
    assert len(trials) == 8 * 4
    t = next(t for t in trials if dict(t.extra) == {"train.warmup_ratio": 0.1, "train.scheduler": "cosine"})
    s = settings(study, t)
    assert (s.train.warmup_ratio, s.train.scheduler) == (0.1, "cosine")
    assert t.params()["train.scheduler"] == "cosine" and "warmup_ratio=0.1" in t.label()
    # the axes leave the study hash: the records of one value survive adding another
    assert (
        study.hash
        == load_study("smoke", ["grid.train.warmup_ratio=[0.3]", "grid.train.scheduler='linear'"]).hash
    )


def test_one_cache_per_distinct_tokenization() -> None:
    study = load_study("smoke", ["grid.data.max_length=[32, 48]", "grid.train.warmup_ratio=[0.0, 0.1]"])
    keys = {data_key(study, settings(study, t)) for t in expand(study)}
    assert len(keys) == 2  # max_length splits the cache; warmup does not
    baselines = [t for t in expand(study) if t.is_baseline]
    assert sorted(dict(b.extra)["data.max_length"] for b in baselines) == [32, 48]  # a baseline per length


def test_find_trial_lists_valid_ids() -> None:
    s = load_study("smoke")
    assert find_trial(s, "baseline").is_baseline
    with pytest.raises(FtvarError, match="has no trial 'zzz'; its trials: baseline, "):
        find_trial(s, "zzz")


def test_study_paths(tmp_path: Path) -> None:
    p = StudyPaths.of(tmp_path, "s")
    assert p.record("abc") == tmp_path / "s" / "records" / "abc.json"
    assert p.cache_for("k") == tmp_path / "s" / "cache" / "k"


def test_split_work_balances_and_keeps_every_trial() -> None:
    trials = expand(load_study("paper"))
    groups = split_work(trials, 4)
    assert len(groups) == 4
    assert sorted(t.trial_id for g in groups for t in g) == sorted(t.trial_id for t in trials)
    sizes = [sum(t.epochs for t in g) for g in groups]
    assert max(sizes) - min(sizes) <= 3
    assert len(split_work(trials[:2], 8)) == 2
