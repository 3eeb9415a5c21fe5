"""Per-example predictions: the sidecar file (ftvar.store.predictions) and what the report computes from it
(ftvar.stats.per_example): scores from confusion matrices, eval-sampling intervals, paired comparisons,
churn, the rows that flip, the held-out test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from ftvar.errors import RecordError
from ftvar.stats import per_example as pe
from ftvar.store.paths import StudyPaths
from ftvar.store.predictions import (
    SplitPredictions,
    TrialPredictions,
    load_predictions,
    read_predictions,
    sidecar,
    write_predictions,
)

HASH = "0123456789ab"


def _sidecar(tid: str = "0123456789", n: int = 5) -> dict[str, object]:
    labels = np.arange(n) % 2
    probs = np.column_stack([np.linspace(0.1, 0.9, n), 1 - np.linspace(0.1, 0.9, n)])
    return sidecar(
        tid,
        {"name": "s", "hash": HASH},
        "abcdef012345",
        ["neg", "pos"],
        {"eval": (labels, probs.argmax(1), probs)},
    )


def test_a_sidecar_round_trips_compactly_and_atomically(tmp_path: Path) -> None:
    path = tmp_path / "predictions" / "0123456789.json"
    data = _sidecar(n=872)
    write_predictions(path, data)
    got = read_predictions(path)
    assert got.trial_id == "0123456789" and got.study_hash == HASH and got.label_names == ["neg", "pos"]
    split = got.splits["eval"]
    assert len(split) == 872 and split.probabilities.shape == (872, 2)
    assert np.allclose(split.probabilities.sum(axis=1), 1.0, atol=2e-4)  # 4 decimals
    assert path.stat().st_size < 20_000  # SST-2's 872 validation rows in under 20 kB
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["splits"]["eval"]["predicted"].pop(), "5 labels, 4 predictions"),
        (lambda d: d["splits"]["eval"]["labels"].__setitem__(0, 2), "a label ≥ 2 classes"),
        (lambda d: d["splits"]["eval"]["probabilities"].__setitem__(0, [0.5]), "probabilities"),
        (lambda d: d["splits"]["eval"]["probabilities"][0].__setitem__(0, 1.5), "maximum"),
        (lambda d: d.pop("data_key"), "data_key"),
        (lambda d: d["splits"].__setitem__("train", d["splits"]["eval"]), "train"),
    ],
)
def test_a_bad_sidecar_is_refused_and_never_written(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(_sidecar()))
    change(data)
    path = tmp_path / "0123456789.json"
    with pytest.raises(RecordError, match=message):
        write_predictions(path, data)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_loading_skips_what_is_unreadable_or_of_another_study(tmp_path: Path) -> None:
    paths = StudyPaths.of(tmp_path, "s")
    write_predictions(paths.prediction("0123456789"), _sidecar("0123456789"))
    other = _sidecar("1123456789")
    other["study"] = {"name": "s", "hash": "ffffffffffff"}
    write_predictions(paths.prediction("1123456789"), other)
    paths.prediction("2123456789").write_text("{not json")
    found, skipped = load_predictions(paths, ["0123456789", "1123456789", "2123456789", "3123456789"], HASH)
    assert list(found) == ["0123456789"]
    assert sorted(Path(p).name for p, _ in skipped) == ["1123456789.json", "2123456789.json"]


def _rows(predicted: list[list[int]], labels: list[int]) -> pe.Rows:
    p = np.asarray(predicted)
    return pe.Rows(
        {},
        np.asarray(labels),
        p,
        np.full(p.shape, 0.6),
        [f"{i}/{i}" for i in range(len(p))],
        [str(i) for i in range(len(p))],
    )


def test_scores_from_confusion_matrices_are_sklearns() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predicted = np.where(rng.random((3, 200)) < 0.8, labels, 1 - labels)
    rows = _rows(predicted.tolist(), labels.tolist())
    for metric, fn in (("accuracy", accuracy_score), ("f1", f1_score)):
        want = np.mean([fn(labels, p) for p in predicted])
        assert pe.score(rows, metric, 2)[0] == pytest.approx(want)
    three = rng.integers(0, 3, 90)
    rows3 = _rows([three.tolist(), np.roll(three, 1).tolist()], three.tolist())
    want3 = np.mean([f1_score(three, p, average="macro") for p in rows3.predicted])
    assert pe.score(rows3, "f1", 3)[0] == pytest.approx(want3)


def test_churn_counts_pairs_and_rows_that_any_seed_disagrees_on() -> None:
    pair, unstable = pe.churn(np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]]))
    assert pair == pytest.approx(np.mean([1 / 4, 2 / 4, 1 / 4]))
    assert unstable == pytest.approx(2 / 4)
    assert pe.churn(np.array([[0, 1]])) == (None, None)


def _trials(values: dict[float, list[float]], n: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """A table and sidecars: per learning rate, one trial per accuracy given (seeds 0, 1, …)."""
    labels = np.arange(n) % 2
    rows, found = [], {}
    for lr, accs in values.items():
        for s, acc in enumerate(accs):
            tid = f"{len(rows):010d}"
            right = rng.random(n) < acc
            predicted = np.where(right, labels, 1 - labels)
            probs = np.column_stack([1 - predicted * 0.8 - 0.1, predicted * 0.8 + 0.1])
            found[tid] = TrialPredictions(
                tid, HASH, "k", ["neg", "pos"], {"eval": SplitPredictions(labels, predicted, probs)}
            )
            rows.append(
                {
                    "trial_id": tid,
                    "learning_rate": lr,
                    "init_seed": s,
                    "order_seed": s,
                    "degenerate_flag": False,
                    "accuracy": float(np.mean(right)),
                }
            )
    return pd.DataFrame(rows), found


def test_eval_sampling_intervals_and_paired_comparisons() -> None:
    rng = np.random.default_rng(3)
    table, found = _trials({1e-5: [0.9, 0.9, 0.9], 1e-4: [0.9, 0.9, 0.9], 1e-3: [0.7, 0.7, 0.7]}, 800, rng)
    got = pe.analyse(table, ["learning_rate"], found, {}, "accuracy", None, b=400, seed=0)
    assert got is not None and got.n_rows == 800 and got.n_trials == 9
    width = {c.key["learning_rate"]: c.ci_high - c.ci_low for c in got.configurations}  # type: ignore[operator]
    # three seeds' mean accuracy at 0.9 on 800 rows: about ±1.96 √(0.9·0.1/800) ≈ ±0.021, a little less
    # because the seeds share the rows' draw but not their errors
    assert 0.02 < width[1e-5] < 0.05 and 0.03 < width[1e-3] < 0.07
    by_other = {c.other["learning_rate"]: c for c in got.comparisons}
    assert by_other[1e-3].p < 0.01 and by_other[1e-3].difference == pytest.approx(0.2, abs=0.05)
    tied = by_other[1e-4] if 1e-4 in by_other else by_other[1e-5]
    assert tied.p > 0.05 and tied.paired_seeds == 3
    assert all(c.p_holm >= c.p for c in got.comparisons)
    assert got.notes == ["the eval rows' texts are not in the data cache: rows are shown by number"]


def test_flipping_rows_are_the_most_split_with_their_text() -> None:
    rows = _rows([[0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 1, 0]], [0, 1, 1, 0])
    flips = pe.flips(rows, ["neg", "pos"], ["a", "b", "c", "d"])
    assert [f.row for f in flips] == [0, 1] or [f.row for f in flips] == [1, 0]
    assert {f.text for f in flips} == {"a", "b"} and all(sum(f.counts.values()) == 3 for f in flips)


def test_the_held_out_split_is_read_for_the_chosen_configuration_only() -> None:
    rng = np.random.default_rng(5)
    table, found = _trials({1e-5: [0.8, 0.8], 1e-4: [0.6, 0.6]}, 400, rng)
    for tid, p in list(found.items()):  # the same predictions as a test split
        found[tid] = TrialPredictions(tid, HASH, "k", p.label_names, {**p.splits, "test": p.splits["eval"]})
    got = pe.held_out(table, ["learning_rate"], {"learning_rate": 1e-5}, found, "accuracy", 0.8, b=200)
    assert got is not None and got.n_trials == 2 and got.n_rows == 400
    assert got.value == pytest.approx(0.8, abs=0.05) and got.ci_low < got.value < got.ci_high  # type: ignore[operator]
    table["test_accuracy"], table["n_test"] = table["accuracy"], 400
    from_records = pe.held_out(table, ["learning_rate"], {"learning_rate": 1e-4}, {}, "accuracy", None)
    assert from_records is not None and "t interval" in from_records.interval


def test_the_crossed_rows_by_seeds_variance_is_unbiased_and_the_test_keeps_its_level() -> None:
    """d = row effect + seed effect + interaction: the crossed model's standard error matches the spread of
    the mean over simulated studies, and a comparison of two alike configurations rejects at most at its
    level (with 3 seeds the seed term has 2 degrees of freedom: the test is cautious)."""
    rng = np.random.default_rng(6)
    means, ses = [], []
    for _ in range(300):
        d = rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.5, (1, 200)) + rng.normal(0, 1.0, (3, 200))
        mean, se, df = pe.crossed_mean(d)
        means.append(mean)
        ses.append(se)
        assert 1.5 <= df <= 200
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(np.std(means), rel=0.2)
    rejects = 0
    for r in range(60):
        table, found = _trials({1e-5: [0.85] * 3, 1e-4: [0.85] * 3}, 300, np.random.default_rng(100 + r))
        got = pe.analyse(table, ["learning_rate"], found, {}, "accuracy", None, b=50, seed=r)
        rejects += got is not None and got.comparisons[0].p < 0.05
    assert rejects <= 6  # 60 × 0.05 = 3 expected at most
