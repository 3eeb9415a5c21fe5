"""The collector: validation, skipping foreign and broken files, one row per trial, atomic tables."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from records_factory import make_record, make_study, write

from ftvar.errors import FtvarError
from ftvar.stats.analysis import SkippedRecordsError, collect
from ftvar.store import collect as collect_module
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, TrainConfig
from ftvar.study.trial import expand


def write_grid(out: Path, study: Study, status: str = "ok") -> Path:
    records = StudyPaths.of(out, study.name).records
    for t in expand(study):
        write(
            records,
            make_record(
                study,
                learning_rate=t.learning_rate,
                batch_size=t.batch_size,
                epochs=t.epochs,
                seed=t.seed,
                status=status,
                metrics={"accuracy": 0.9, "f1": 0.85, "eval_loss": 0.3},
            ),
        )
    return records


def test_collect_writes_one_row_per_trial_as_parquet_and_csv(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 2e-5], bs=[8], ep=[1, 2], seeds=[0, 1])
    records = write_grid(tmp_path, study)
    result = collect(study, tmp_path)
    # 8 trials and one baseline per init seed (the model's head is not known to be trained)
    assert result.n_files == result.n_trials == 10 and result.skipped == [] and result.counts == {"ok": 10}
    assert set(result.table["trial_id"]) == {p.stem for p in records.glob("*.json")}
    assert result.table["in_grid"].all()
    assert result.parquet == tmp_path.resolve() / study.name / "results.parquet"
    back = pd.read_parquet(result.parquet)
    assert list(back.columns) == list(collect_module.columns(study))
    assert len(back) == 10 and back["accuracy"].tolist() == [0.9] * 10
    assert back["kind"].tolist() == ["baseline"] * 2 + ["trial"] * 8 and back["batch_size"].isna().tolist()[0]
    assert back["init_seed"].tolist() == [0, 1] + [0, 1] * 4 and back["order_seed"].isna().sum() == 2
    csv = pd.read_csv(result.csv)
    assert len(csv) == 10 and set(csv["status"]) == {"ok"}
    assert not list(result.parquet.parent.glob(".*.part"))  # temp files renamed away


def test_failed_records_stay_visible_with_empty_metrics(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0, 1], baseline="none")
    write_grid(tmp_path, study, status="failed")
    table = collect(study, tmp_path).table
    assert table["status"].tolist() == ["failed", "failed"]
    assert table["accuracy"].isna().all() and table["error"].str.contains("boom").all()


def test_broken_and_foreign_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5], bs=[8, 16], ep=[1], seeds=[0])
    records = write_grid(tmp_path, study)
    good = {p.stem for p in records.glob("*.json")}
    other_hash = dataclasses.replace(study, train=TrainConfig(weight_decay=0.5))
    assert other_hash.hash != study.hash
    foreign = write(records, make_record(other_hash, learning_rate=1e-5, batch_size=32, epochs=1, seed=0))
    write(records, make_record(make_study(name="other"), learning_rate=1e-5, batch_size=64, epochs=1, seed=0))
    (records / "0123456789.json").write_text('{"schema_version": 1, "trial_id": "0123456789", "stu')
    (records / "notes.json").write_text(json.dumps({"hello": "world"}))
    (records / ".0123456789.x1y2.part").write_text("{")
    bad = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=0)
    bad["metrics"]["accuracy"] = 1.5
    write(records, bad, name="aaaaaaaaaa.json")
    result = collect(study, tmp_path)
    reasons = {Path(p).name: why for p, why in result.skipped}
    assert set(result.table["trial_id"]) == good
    assert result.n_files == len(good) + 5  # the .part file is never looked at
    assert len(reasons) == 5 and not any(name.endswith(".part") for name in reasons)
    assert "study hash" in reasons[foreign.name] and "never mixed in" in reasons[foreign.name]
    assert any("study 'other'" in why for why in reasons.values())
    assert "not JSON" in reasons["0123456789.json"]
    assert "not an ftvar record" in reasons["notes.json"]
    assert "not a valid ftvar record" in reasons["aaaaaaaaaa.json"]

    with pytest.raises(SkippedRecordsError) as err:
        collect(study, tmp_path, strict=True)
    assert err.value.exit_code == 1 and len(err.value.skipped) == 5 and "5 record file(s)" in str(err.value)
    assert isinstance(err.value, FtvarError)


def test_strict_writes_nothing_when_it_fails(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0])
    records = write_grid(tmp_path, study)
    (records / "0123456789.json").write_text("{")
    with pytest.raises(SkippedRecordsError):
        collect(study, tmp_path, strict=True)
    assert not (records.parent / "results.parquet").exists()


def test_missing_records_folder_is_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(FtvarError, match="ftvar launch synth"):
        collect(make_study(), tmp_path)


def test_the_newest_ok_record_wins_and_failures_show_when_nothing_is_ok() -> None:
    study = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0, 1, 2])
    t0, t1, t2 = [t.trial_id for t in expand(study) if not t.is_baseline]

    def row(tid: str, status: str, finished: str, acc: float | None) -> tuple[object, ...]:
        rec = make_record(
            study,
            learning_rate=1e-5,
            batch_size=8,
            epochs=1,
            seed=0,
            status=status,
            tid=tid,
            finished_at=finished,
            metrics={"accuracy": acc} if acc is not None else None,
        )
        return collect_module._row(rec, f"{tid}.json", collect_module.axis_columns(study))

    rows = [
        row(t0, "ok", "2024-05-01T10:00:00+00:00", 0.7),
        row(t0, "failed", "2024-05-02T10:00:00+00:00", None),
        row(t1, "ok", "2024-05-01T10:00:00+00:00", 0.7),
        row(t1, "ok", "2024-05-01T12:00:00+02:00", 0.6),
        row(t1, "ok", "2024-05-01T11:00:00+00:00", 0.9),
        row(t2, "diverged", "2024-05-01T10:00:00+00:00", None),
        row(t2, "failed", "2024-05-03T10:00:00Z", None),
    ]
    table, superseded, _ = collect_module._to_table(rows, study)
    by_id = table.set_index("trial_id")
    assert superseded == 4
    assert by_id.loc[t0, "status"] == "ok" and by_id.loc[t0, "accuracy"] == 0.7  # ok beats a newer failure
    assert by_id.loc[t1, "accuracy"] == 0.9  # 11:00Z is newer than 12:00+02:00 (= 10:00Z)
    assert by_id.loc[t2, "status"] == "failed"


def test_records_outside_the_current_grid_are_kept_but_marked(tmp_path: Path) -> None:
    big = make_study(lr=[1e-5, 2e-5], bs=[8], ep=[1], seeds=[0])
    write_grid(tmp_path, big)
    small = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0])
    assert small.hash == big.hash  # the grid is not part of the hash
    table = collect(small, tmp_path).table
    assert len(table) == 3
    trials = table[table["kind"] == "trial"]
    assert trials.set_index("learning_rate")["in_grid"].to_dict() == {1e-5: True, 2e-5: False}
    assert table.loc[table["kind"] == "baseline", "in_grid"].all()


def test_parallel_reading_gives_the_same_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = make_study(lr=[1e-5, 2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0, 1, 2])
    records = write_grid(tmp_path, study)
    (records / "0123456789.json").write_text("{")
    serial = collect(study, tmp_path, workers=1)
    monkeypatch.setattr(collect_module, "PARALLEL_MIN_FILES", 1)
    parallel = collect(study, tmp_path, workers=2)
    pd.testing.assert_frame_equal(serial.table, parallel.table)
    assert serial.skipped == parallel.skipped and len(parallel.skipped) == 1


def test_the_reader_pool_forks_on_linux_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = make_study(lr=[1e-5, 2e-5], bs=[8], ep=[1], seeds=[0, 1])
    write_grid(tmp_path, study)
    serial = collect(study, tmp_path, workers=1)
    monkeypatch.setattr(collect_module, "PARALLEL_MIN_FILES", 1)
    asked: list[str | None] = []
    real = collect_module.multiprocessing.get_context

    def get_context(method: str | None = None) -> Any:
        asked.append(method)
        return real(method)

    monkeypatch.setattr(collect_module.multiprocessing, "get_context", get_context)
    monkeypatch.setattr(collect_module.sys, "platform", "darwin")  # macOS: spawned readers, the same table
    pd.testing.assert_frame_equal(serial.table, collect(study, tmp_path, workers=2).table)
    monkeypatch.setattr(collect_module.sys, "platform", "linux")
    pd.testing.assert_frame_equal(serial.table, collect(study, tmp_path, workers=2).table)
    assert asked == ["spawn", "fork"]


_PARENT = os.getpid()


def _dies_in_a_worker(*args: Any) -> Any:
    """A reader that the kernel's out-of-memory killer ends (module level: the pool pickles it by name)."""
    if os.getpid() != _PARENT:
        os._exit(137)
    raise AssertionError("called in the collecting process")


def test_a_reader_process_that_dies_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = make_study(lr=[1e-5, 2e-5], bs=[8], ep=[1], seeds=[0, 1])
    write_grid(tmp_path, study)
    monkeypatch.setattr(collect_module, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(collect_module, "_read_chunk", _dies_in_a_worker)
    with pytest.raises(FtvarError, match="a record reader process died while reading 6 record files"):
        collect(study, tmp_path, workers=2)
    assert not (tmp_path / study.name / "results.parquet").exists()


def test_the_collector_does_not_import_torch() -> None:
    code = (
        "import sys, ftvar.stats.analysis, ftvar.store.collect, ftvar.report.build; "
        "bad = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_record_under_another_id_repeating_a_grid_trial_is_not_in_the_grid(tmp_path: Path) -> None:
    """Issue 8, item 5: in_grid needs one of the study's trial ids *and* that trial's params; a copy of a
    grid trial under another id is listed as not in the grid, so no trial counts twice."""
    study = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0, 1], baseline="none")
    records = write_grid(tmp_path, study)
    t0 = expand(study)[0]
    twin = make_record(
        study, learning_rate=t0.learning_rate, batch_size=8, epochs=1, seed=0, tid="abcdefabcd"
    )
    write(records, twin)
    wrong = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=1, tid=t0.trial_id)
    write(records, wrong, name="0000000000.json")  # file name ≠ trial id: skipped by the reader already
    result = collect(study, tmp_path)
    by_id = result.table.set_index("trial_id")["in_grid"].to_dict()
    assert by_id == {t0.trial_id: True, expand(study)[1].trial_id: True, "abcdefabcd": False}
    assert len(result.not_in_grid) == 1
    file, why = result.not_in_grid[0]
    assert file.endswith("abcdefabcd.json")
    assert "not one of the study's trials" in why and f"repeats the params of grid trial {t0.trial_id}" in why
    assert "1 not in the grid" in result.summary()


def test_a_grid_id_with_other_params_is_not_in_the_grid() -> None:
    study = make_study(lr=[1e-5], bs=[8], ep=[1], seeds=[0, 1], baseline="none")
    t0, t1 = expand(study)
    forged = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=1, tid=t0.trial_id)
    real = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=1)
    axes = collect_module.axis_columns(study)
    rows = [collect_module._row(forged, "a.json", axes), collect_module._row(real, "b.json", axes)]
    table, _, outside = collect_module._to_table(rows, study)
    assert table.set_index("trial_id")["in_grid"].to_dict() == {t0.trial_id: False, t1.trial_id: True}
    assert outside == [("a.json", f"its params are not those of trial {t0.trial_id}")]


def test_non_finite_and_out_of_range_records_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """Issue 8, item 4: a NaN or infinite metric (Python's JSON reader accepts the tokens) is never ok; the
    collector skips such files and says why, as it does for integers no table column can hold."""
    study = make_study(lr=[1e-5], bs=[8, 16], ep=[1], seeds=[0], baseline="none")
    records = write_grid(tmp_path, study)
    t0, t1 = expand(study)
    nan = records / f"{t0.trial_id}.json"
    nan.write_text(nan.read_text().replace('"accuracy": 0.9', '"accuracy": NaN'))
    huge = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=2**70, tid="fedcbafedc")
    write(records, huge)
    result = collect(study, tmp_path)
    reasons = {Path(p).name: why for p, why in result.skipped}
    assert "non-finite number NaN" in reasons[nan.name]
    assert "params.seed = 1180591620717411303424 is out of range" in reasons["fedcbafedc.json"]
    assert result.table["trial_id"].tolist() == [t1.trial_id]
    with pytest.raises(SkippedRecordsError):
        collect(study, tmp_path, strict=True)
