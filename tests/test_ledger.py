"""A study folder's state (issue 8, items 7, 8, 9): one version of a study per folder (records, launches and
the data cache agree), one launch at a time (the launch lock), and an `--out` that can be written."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from ftvar.errors import FtvarError
from ftvar.run.launch import launch_study
from ftvar.store import folder, launches
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from tests.helpers import ftvar, one_error_line

# ------------------------------------------------------------------------------------------- mixing (8)


def test_a_launch_of_another_version_is_refused_while_only_launches_jsonl_knows_the_first(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """The first version's array has written no record yet: its entry in launches.jsonl (with its hash)
    is enough to refuse a changed version, before anything is written."""
    study_file = write_study()
    first = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path / "o", first.name)
    launches.append_launch(paths, first.hash, {"executor": "slurm", "array_id": "4242", "trials": ["x"]})
    assert json.loads(paths.launches.read_text())["hash"] == first.hash
    before = sorted(p.name for p in paths.root.iterdir())
    out = ftvar(
        "launch",
        str(study_file),
        "--set",
        "train.weight_decay=0.5",
        "--executor",
        "debug",
        "--out",
        str(tmp_path / "o"),
    )
    line = one_error_line(out)
    assert "another version of study 'tiny'" in line and "launches.jsonl (4242)" in line
    assert f"hash {first.hash}" in line
    assert sorted(p.name for p in paths.root.iterdir()) == before  # no cache built, nothing added


def test_a_data_cache_of_another_version_is_never_rebuilt_under_it(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    first = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path / "o", first.name)
    from ftvar.data.prepare import prepare

    prepare(first, paths)
    from ftvar.data.cache import cache_folder
    from ftvar.study.trial import expand

    baseline = expand(first)[0].trial_id  # a tiny model's head is new: one baseline per init seed
    folder, _ = cache_folder(first, paths, expand(first)[0])
    meta = (folder / "meta.json").read_bytes()
    for command in (["launch", "--executor", "debug"], ["run-trial", "--trial", baseline]):
        out = ftvar(
            command[0],
            str(study_file),
            *command[1:],
            "--set",
            "data.max_length=16",
            "--out",
            str(tmp_path / "o"),
        )
        line = one_error_line(out)
        assert "another version of study 'tiny'" in line and f"the data cache {folder}" in line
    assert (folder / "meta.json").read_bytes() == meta
    assert not paths.records.exists()
    # the same version is welcome
    same = ftvar("run-trial", str(study_file), "--trial", baseline, "--out", str(tmp_path / "o"))
    assert same.returncode == 0, same.stderr[-2000:]


def test_launch_entries_without_a_hash_are_tolerated(tmp_path: Path) -> None:
    """launches.jsonl written before the hash was recorded neither blocks nor breaks the check."""
    study = load_study("smoke")
    paths = StudyPaths.of(tmp_path, study.name)
    paths.root.mkdir(parents=True)
    paths.launches.write_text('{"executor": "slurm", "array_id": "1", "trials": []}\nnot json\n')
    folder.check_no_mixing(study, paths)


# ---------------------------------------------------------------------------------------------- lock (7)


def _hold_lock(root: str, ready: object, release: object) -> None:
    paths = StudyPaths(Path(root))
    with launches.launch_lock(paths):
        ready.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]


def test_a_second_launch_waits_for_the_lock_then_says_who_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load_study("smoke")
    paths = StudyPaths.of(tmp_path, study.name)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(paths.root), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        monkeypatch.setattr(launches, "LOCK_WAIT_S", 1.0)
        t0 = time.monotonic()
        with pytest.raises(
            FtvarError, match=rf"another `ftvar launch` of this study is running \(pid {holder.pid} on "
        ):
            launch_study(study, tmp_path, "debug", None, {}, False, False, Console(quiet=True))
        assert 0.9 < time.monotonic() - t0 < 10
        assert not paths.records.exists() and not paths.cache.exists()  # it planned nothing
    finally:
        release.set()
        holder.join(30)
    # once the holder is gone (even killed: flock goes with the process) the lock is free at once
    with launches.launch_lock(paths, wait_s=0):
        pass


def test_the_lock_leaves_no_trace_when_a_launch_fails_before_writing(tmp_path: Path) -> None:
    paths = StudyPaths.of(tmp_path / "new-out", "s")
    with pytest.raises(RuntimeError), launches.launch_lock(paths):
        raise RuntimeError("the cache could not be built")
    assert not (tmp_path / "new-out").exists()
    paths.root.mkdir(parents=True)
    (paths.root / "keep.txt").write_text("x")
    with pytest.raises(RuntimeError), launches.launch_lock(paths):
        raise RuntimeError("boom")
    assert (paths.root / "keep.txt").exists()


# --------------------------------------------------------------------------------------------- --out (9)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: (t / "file").write_text("x") and t / "file", "is a file, not a folder"),
        (lambda t: t / "missing" / "deeper", "its parent folder"),
        (lambda t: Path("/sys/ftvar-out"), "cannot write in /sys"),
        (lambda t: Path("/sys"), "cannot write in /sys"),
        (lambda t: Path("/proc/ftvar-out"), "cannot write in /proc"),
    ],
    ids=["file", "missing-parent", "unwritable-parent", "unwritable", "proc"],
)
@pytest.mark.parametrize("command", ["launch", "run-trial"])
def test_a_bad_out_is_one_line_and_nothing_written(
    tmp_path: Path, make: Callable[[Path], Path], message: str, command: str
) -> None:
    out = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--executor", "local"] if command == "launch" else ["--trial", "baseline"]  # smoke: one seed
    line = one_error_line(ftvar(command, "smoke", *extra, "--out", str(out)))
    assert f"--out {out}" in line and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_check_out_probes_instead_of_trusting_permission_bits(tmp_path: Path) -> None:
    folder.check_out(tmp_path)
    folder.check_out(tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == []  # the probe leaves nothing behind
    with pytest.raises(FtvarError, match="cannot write in /sys"):
        folder.check_out(Path("/sys"))  # root passes os.access(W_OK) here, yet cannot write
