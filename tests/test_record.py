from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ftvar import record
from ftvar.errors import RecordError
from tests import records_factory


def make_record(**changes: Any) -> dict[str, Any]:
    """A valid record (from the shared factory, with this machine's environment), then `changes` on top."""
    rec = records_factory.make_record(
        records_factory.make_study("s"), learning_rate=2e-5, batch_size=16, epochs=2, seed=0, tid="0123456789"
    )
    rec["environment"] = record.environment("cpu", "2.13.0", "5.0")
    rec.update(changes)
    return rec


def test_schema_is_valid_and_agrees_with_the_fast_validator() -> None:
    schema = record.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = make_record()
    jsonschema.validate(good, schema)
    record.validate(good)
    bad_cases = [
        make_record(status="done"),
        make_record(status="ok", error="boom"),
        make_record(status="failed", error=None),
        make_record(metrics={"accuracy": 1.5, "f1": 0.1, "eval_loss": 0.1, "train_loss": 0.1}),
        make_record(metrics={"accuracy": None, "f1": 0.1, "eval_loss": 0.1, "train_loss": 0.1}),
        make_record(trial_id="../etc"),
        make_record(schema_version=3),
        make_record(params={"learning_rate": 2e-5, "batch_size": 16, "epochs": 2, "seed": 0}),  # v2: no seeds
        make_record(schema_version=1, params={"learning_rate": 2e-5, "batch_size": 16, "epochs": 2}),
        {k: v for k, v in make_record().items() if k != "timings"},
    ]
    for bad in bad_cases:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(RecordError):
            record.validate(bad)


def test_failed_and_baseline_records_are_valid() -> None:
    nulls = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
    record.validate(make_record(status="diverged", error="non-finite loss", metrics=nulls))
    baseline = {"learning_rate": None, "batch_size": None, "epochs": 0, "seed": 0, "init_seed": 0}
    base = make_record(trial_id="baseline", kind="baseline", params={**baseline, "order_seed": None})
    record.validate(base)
    per_seed = make_record(trial_id="baseline-0123456789", kind="baseline", params={**base["params"]})
    record.validate(per_seed)
    old = make_record(
        schema_version=1, params={"learning_rate": 2e-5, "batch_size": 16, "epochs": 2, "seed": 4}
    )
    record.validate(old)  # version-1 records stay readable, and read as version 2:
    assert record.upgrade(old)["params"] | {"seed": 4} == {**old["params"], "init_seed": 4, "order_seed": 4}
    with pytest.raises(RecordError):  # a fine-tuning trial must have its params
        record.validate(make_record(params={**baseline, "order_seed": None}))


def test_round_trip(tmp_path: Path) -> None:
    rec = make_record()
    path = tmp_path / "records" / "0123456789.json"
    record.write_record(path, rec)
    assert record.read_record(path) == rec
    assert record.read_status(path) == "ok"
    assert record.study_hashes(path.parent) == {rec["study"]["hash"]: 1}


def test_invalid_records_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "0123456789.json"
    with pytest.raises(RecordError):
        record.write_record(path, make_record(status="weird"))
    assert list(tmp_path.iterdir()) == []


def test_read_record_reasons(tmp_path: Path) -> None:
    (tmp_path / "0123456789.json").write_text('{"schema_version": 1, "trial_id": "0123')
    with pytest.raises(RecordError, match="not JSON"):
        record.read_record(tmp_path / "0123456789.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(RecordError, match="not an ftvar record"):
        record.read_record(tmp_path / "other.json")
    (tmp_path / "abcdefabcd.json").write_text(json.dumps(make_record()))
    with pytest.raises(RecordError, match="does not match trial_id"):
        record.read_record(tmp_path / "abcdefabcd.json")


def test_non_finite_numbers_become_null() -> None:
    assert record.finite_or_none(float("nan")) is None
    assert record.finite_or_none(float("inf")) is None
    assert record.finite_or_none(0.5) == 0.5
    with pytest.raises(ValueError):
        record.write_atomic(Path("/nonexistent-never-created/x.json"), {"x": float("nan")})


def test_atomic_write_never_shows_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the file while a writer rewrites it with large payloads sees only whole JSON."""
    path = tmp_path / "r.json"
    payloads = [{"n": i, "blob": "x" * (200_000 + i * 1000)} for i in range(40)]
    record.write_atomic(path, payloads[0])
    stop = threading.Event()
    seen: list[int] = []
    broken: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(path.read_text())["n"])
            except json.JSONDecodeError as exc:
                broken.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    for p in payloads:
        record.write_atomic(path, p)
    stop.set()
    thread.join()
    assert not broken
    assert len(seen) > 0
    assert not list(tmp_path.glob("*.part"))  # no temp files left behind
