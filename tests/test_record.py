from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from ftvar.errors import RecordError
from ftvar.store import files, record, schema
from ftvar.store.environment import environment
from tests import records_factory


def make_record(**changes: Any) -> dict[str, Any]:
    """A valid record (from the shared factory, with this machine's environment), then `changes` on top."""
    rec = records_factory.make_record(
        records_factory.make_study("s"), learning_rate=2e-5, batch_size=16, epochs=2, seed=0, tid="0123456789"
    )
    rec["environment"] = environment("cpu", "2.13.0", "5.0")
    rec.update(changes)
    return rec


def test_schema_is_valid_and_agrees_with_the_fast_validator() -> None:
    json_schema = schema.json_schema()
    jsonschema.Draft202012Validator.check_schema(json_schema)
    good = make_record()
    jsonschema.validate(good, json_schema)
    schema.validate(good)
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
            jsonschema.validate(bad, json_schema)
        with pytest.raises(RecordError):
            schema.validate(bad)


def test_the_validator_names_the_field_and_takes_what_python_would_write() -> None:
    """jsonschema-rs takes exact JSON types only: a record built in Python (torch's version string is a str
    subclass, sklearn's metrics numpy floats) is checked as it will be written."""

    class Version(str):
        pass

    rec = make_record()
    rec["environment"]["torch"] = Version("2.13.0")
    rec["metrics"]["accuracy"] = np.float64(0.8)
    schema.validate(rec)
    with pytest.raises(RecordError, match=r"metrics\.accuracy: 1\.5 is greater than the maximum of 1"):
        schema.validate(make_record(metrics={"accuracy": 1.5, "f1": 0.1, "eval_loss": 0.1, "train_loss": 0}))
    with pytest.raises(RecordError, match="not JSON"):
        schema.validate(make_record(label_names={"negative", "positive"}))


@pytest.mark.parametrize("depth", [300, 1000, 5000])
def test_a_deeply_nested_record_file_is_rejected_with_a_reason(tmp_path: Path, depth: int) -> None:
    """Found by a session: jsonschema-rs answers nesting deeper than its limit with a ValueError, which
    escaped read_record (the collector would have crashed). orjson refuses over 1,024 levels; Python's
    reader then reads them or stops at the interpreter's recursion limit (set higher by some packages)."""
    rec = make_record()
    text = json.dumps(rec).replace('"learning_rate": 2e-05', '"learning_rate": ' + "[" * depth + "]" * depth)
    path = tmp_path / "0123456789.json"
    path.write_text(text)
    with pytest.raises(
        RecordError,
        match=r"0123456789\.json: (not a valid ftvar record: nested deeper than any record is|"
        r"unreadable or not JSON \(RecursionError)",
    ):
        record.read_record(path)
    assert record.read_status(path) is None


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": 1, "b": [1.5, -2e-7, null, true], "c": "\\u00e9"}',
        b'{"a": 9223372036854775807, "b": -9223372036854775808, "c": 18446744073709551615}',
        b'{"a": 1180591620717411303424.0}',
        b'{"a": "\\ud800"}',  # a lone surrogate: Python's reader takes it, orjson does not
        b'{"a": 1, "a": 2}',
        '{"a": "é"}'.encode("utf-16"),  # Python's reader detects UTF-16
    ],
)
def test_the_fast_parser_reads_what_pythons_reader_reads(text: bytes) -> None:
    assert record._parse(text) == json.loads(text)
    got = record._parse(text)
    assert [type(v) for v in got.values()] == [type(v) for v in json.loads(text).values()]


def test_failed_and_baseline_records_are_valid() -> None:
    nulls = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
    schema.validate(make_record(status="diverged", error="non-finite loss", metrics=nulls))
    baseline = {"learning_rate": None, "batch_size": None, "epochs": 0, "seed": 0, "init_seed": 0}
    base = make_record(trial_id="baseline", kind="baseline", params={**baseline, "order_seed": None})
    schema.validate(base)
    per_seed = make_record(trial_id="baseline-0123456789", kind="baseline", params={**base["params"]})
    schema.validate(per_seed)
    old = make_record(
        schema_version=1, params={"learning_rate": 2e-5, "batch_size": 16, "epochs": 2, "seed": 4}
    )
    schema.validate(old)  # version-1 records stay readable, and read as version 2:
    assert schema.upgrade(old)["params"] | {"seed": 4} == {**old["params"], "init_seed": 4, "order_seed": 4}
    with pytest.raises(RecordError):  # a fine-tuning trial must have its params
        schema.validate(make_record(params={**baseline, "order_seed": None}))


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
        files.write_json(Path("/nonexistent-never-created/x.json"), {"x": float("nan")})


def test_atomic_write_never_shows_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the file while a writer rewrites it with large payloads sees only whole JSON."""
    path = tmp_path / "r.json"
    payloads = [{"n": i, "blob": "x" * (200_000 + i * 1000)} for i in range(40)]
    files.write_json(path, payloads[0])
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
        files.write_json(path, p)
    stop.set()
    thread.join()
    assert not broken
    assert len(seen) > 0
    assert not list(tmp_path.glob("*.part"))  # no temp files left behind


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_writer_refuses_non_finite_metrics(tmp_path: Path, bad: float) -> None:
    """Issue 8, item 4: a record with a NaN or infinite metric is never ok, and never written."""
    path = tmp_path / "0123456789.json"
    rec = make_record()
    rec["metrics"]["eval_loss"] = bad
    with pytest.raises(RecordError, match=r"metrics\.eval_loss = .* is not a finite number"):
        record.write_record(path, rec)
    rec["timings"]["train"] = bad  # anywhere in the record, not only the metrics
    rec["metrics"]["eval_loss"] = 0.3
    with pytest.raises(RecordError, match=r"timings\.train"):
        record.write_record(path, rec)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_record_file_with_nan_is_rejected_and_does_not_count_as_ok(tmp_path: Path, token: str) -> None:
    path = tmp_path / "0123456789.json"
    path.write_text(json.dumps(make_record()).replace('"accuracy": 0.8', f'"accuracy": {token}'))
    assert token in path.read_text()
    with pytest.raises(RecordError, match=f"non-finite number {token}"):
        record.read_record(path)
    assert record.read_status(path) is None  # a launch reruns it instead of skipping it as ok


def test_read_status_ignores_records_that_break_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "0123456789.json"
    bad = make_record()
    bad["metrics"]["accuracy"] = "0.8"  # a string where a number belongs
    path.write_text(json.dumps(bad))
    assert record.read_status(path) is None
    record.write_record(path, make_record())
    assert record.read_status(path) == "ok"


def test_secrets_never_reach_a_record(tmp_path: Path) -> None:
    """Issue 8, item 14: every record embeds the study config; [cluster.env] values and anything that looks
    like a credential are redacted by the writer itself, whichever path wrote the record."""
    rec = make_record()
    rec["study"]["config"] = {
        "model": {"name_or_path": "https://alice:hunter2@mirror.example/models/x"},
        "data": {"hub": "glue/sst2", "comment": "hf_abcdefghijklmnopqrstuvwxyz123456"},
        "cluster": {"env": {"WANDB_MODE": "offline-but-private", "HF_TOKEN": "hf_zzzzzzzzzzzzzzzzzzzzzzzzz"}},
        "extra": {"db_password": "p4ss", "TOKENIZERS_PARALLELISM": "false", "n": 3},
    }
    path = tmp_path / "0123456789.json"
    written = record.write_record(path, rec)
    text = path.read_text()
    for secret in ("hunter2", "hf_abcdefghij", "offline-but-private", "hf_zzzz", "p4ss"):
        assert secret not in text
    config = record.read_record(path)["study"]["config"]
    assert config == written["study"]["config"]
    assert config["cluster"]["env"] == {"WANDB_MODE": "<redacted>", "HF_TOKEN": "<redacted>"}
    assert config["model"]["name_or_path"] == "https://<redacted>@mirror.example/models/x"
    assert config["extra"] == {"db_password": "<redacted>", "TOKENIZERS_PARALLELISM": "false", "n": 3}
    assert config["data"]["hub"] == "glue/sst2"
    assert rec["study"]["config"]["extra"]["db_password"] == "p4ss"  # the caller's dict is left alone


def test_attempts_are_an_optional_list_of_outcomes() -> None:
    attempt = {
        "state": "interrupted",
        "reason": "SIGTERM: checkpoint at step 40",
        "host": "node3",
        "started_at": "2024-05-01T11:00:00+00:00",
        "finished_at": "2024-05-01T11:10:00+00:00",
        "step": 40,
    }
    schema.validate(make_record(attempts=[attempt, {**attempt, "state": "ok", "reason": None}]))
    schema.validate(make_record())  # old records without attempts stay valid
    with pytest.raises(RecordError):
        schema.validate(make_record(attempts=[{**attempt, "state": "exploded"}]))
    with pytest.raises(RecordError):
        schema.validate(make_record(attempts=[{k: v for k, v in attempt.items() if k != "step"}]))


def test_a_learning_curve_is_an_optional_list_of_points() -> None:
    point = {"step": 10, "epoch": 0.5, "train_loss": 0.6, "accuracy": 0.7, "f1": 0.68, "mcc": 0.4}
    point["eval_loss"] = 0.55
    curve = [point, {**point, "step": 20, "accuracy": None, "mcc": None}, {"step": 30, "epoch": 1.5}]
    schema.validate(make_record(curve=curve))
    jsonschema.validate(make_record(curve=curve), schema.json_schema())
    schema.validate(make_record())  # records without a curve stay valid
    for bad in ({**point, "lr": 1e-5}, {**point, "mcc": -1.5}, {**point, "accuracy": 2.0}, {"epoch": 1.0}):
        with pytest.raises(RecordError):
            schema.validate(make_record(curve=[bad]))
