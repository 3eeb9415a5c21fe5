"""One atomic writer for every output (issue 8, item 6): whole files only, and the umask's modes, so that
collaborators on shared storage can read the report as they read the records."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from records_factory import make_study, synth_study

from ftvar.report.build import build_report
from ftvar.store import files, record
from ftvar.store.paths import StudyPaths


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o037)
    try:
        assert files.umask() == 0o037
        assert files.umask() == 0o037
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_files_get_the_mode_a_normal_file_would_get(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        files.write_atomic(tmp_path / "a.txt", "text")
        files.write_atomic(tmp_path / "b.bin", b"\x00\x01")
        files.write_atomic(tmp_path / "c.bin", lambda fh: fh.write(b"streamed"))
        (tmp_path / "plain.txt").write_text("reference")
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("a.txt", "b.bin", "c.bin"):
        assert mode(tmp_path / name) == expected, name
    assert (tmp_path / "c.bin").read_bytes() == b"streamed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin", "plain.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    files.write_atomic(target, "old\n")

    def broken(fh: object) -> None:
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError):
        files.write_atomic(target, broken)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_readers_never_see_a_partial_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payloads = [bytes([i]) * (300_000 + i) for i in range(30)]
    files.write_atomic(path, payloads[0])
    stop, bad = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            if data not in payloads:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    for p in payloads:
        files.write_atomic(path, p)
    stop.set()
    thread.join()
    assert not bad


def test_every_output_of_collect_and_report_is_readable_like_the_records(
    tmp_path: Path, umask_027: None
) -> None:
    """Records, results.csv/parquet, report.json/md/html and the PNG plots all get 0666 & ~umask (here 0640;
    before, the tables and the report were 0600 while records were 0644 whatever the umask)."""
    study = make_study(lr=[1e-5, 2e-5, 5e-5], bs=[8, 16, 32], ep=[1, 2], seeds=[0, 1])
    synth_study(tmp_path, study, lambda lr, bs, ep: 0.8 + 0.01 * lr, noise=0.01)
    paths = StudyPaths.of(tmp_path, study.name)
    rec = record.read_record(next(paths.records.glob("*.json")))
    record.write_record(paths.records / "baseline.json", {**rec, "trial_id": "baseline"} | _baseline(rec))
    result = build_report(study, tmp_path)
    outputs = [
        paths.records / "baseline.json",
        result.collected.csv,
        result.collected.parquet,
        result.json,
        result.markdown,
        result.html,
        *result.plots,
    ]
    assert len(result.plots) >= 3
    for path in outputs:
        assert mode(path) == 0o640, (path.name, oct(mode(path)))
    assert not [p for p in paths.root.rglob("*.part")]


def _baseline(rec: dict[str, object]) -> dict[str, object]:
    params = {
        "learning_rate": None,
        "batch_size": None,
        "epochs": 0,
        "seed": 0,
        "init_seed": 0,
        "order_seed": None,
    }
    return {"kind": "baseline", "params": params}
