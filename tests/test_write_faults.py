"""Writes the storage refuses (issue 21): a full disk, a read-only records folder, a name too long.

Every write fails as one line naming the path and the cause and leaves no partial or empty file; on the
launch side nothing is written or started; in a pack a refused record fails that trial only (its attempt
says why, never `ok`), and the pack starts nothing more once the study folder takes no records. ENOSPC and
EROFS are real: a 3 MB tmpfs and a read-only bind mount, which need root (CI runs as root: there they must
run, elsewhere they skip with the reason).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ftvar.errors import FtvarError
from ftvar.store import launches
from ftvar.store.attempts import ATTEMPTS_FILE, AttemptLog
from ftvar.store.files import WriteFailed, write_atomic
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import expand
from tests.helpers import fake_cache, ftvar, one_error_line

TINY = [
    "model.tiny.dim=32",
    "model.tiny.layers=1",
    "grid.batch_size=[64]",
    "grid.epochs=[1]",
    "grid.learning_rate=[1e-3]",
    "grid.seed=[0,1,2]",
    "analysis.baseline=none",
]


def tiny(out: Path) -> tuple[Study, StudyPaths]:
    """Three trials of two steps each on a tokenized cache written without a tokenizer."""
    study = load_study("smoke", TINY)
    paths = StudyPaths.of(out, study.name)
    fake_cache(study, paths, n_train=128, n_eval=32)
    return study, paths


def root_only(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs root, and CI runs as root")
        pytest.skip(f"{what} needs root (mount)")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs, unmounted afterwards."""
    root_only("a small tmpfs for ENOSPC")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill `folder`'s file system to the last block; returns the filler (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"x" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` as a read-only bind mount of itself (chmod does nothing to root)."""
    root_only("a read-only bind mount for EROFS")
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def leftovers(folder: Path) -> list[Path]:
    """Temp files of failed writes, and empty files, under `folder`."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(".part") or (p.stat().st_size == 0 and p.name != "running.lock"))
    ]


def attempts(paths: StudyPaths, tid: str) -> list[dict[str, Any]]:
    path = paths.ckpt / tid / ATTEMPTS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def test_a_refused_write_names_the_path_and_the_cause(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300 + ".json")
    with pytest.raises(WriteFailed) as caught:
        write_atomic(long, "{}")
    assert str(caught.value) == f"cannot write {long}: the file name is too long"
    assert isinstance(caught.value, OSError) and isinstance(caught.value, FtvarError)
    assert caught.value.errno == errno.ENAMETOOLONG and list(tmp_path.iterdir()) == []
    full = WriteFailed(tmp_path / "r.json", OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == f"cannot write {tmp_path / 'r.json'}: no space left on its file system" and full.full


def test_a_record_the_storage_refuses_fails_that_trial_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One record refused (a name too long: the store itself is fine): that trial's attempt is failed with
    the path and the cause, never ok; the pack goes on with its queue."""
    from ftvar.train import pack, runner

    study, paths = tiny(tmp_path)
    trials = expand(study)
    real = runner.write_record
    refused = trials[0].trial_id

    def write(path: Path, record: dict[str, Any]) -> dict[str, Any]:
        if path.stem == refused:
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
        return real(path, record)

    monkeypatch.setattr(runner, "write_record", write)
    statuses = pack.run_pack(None, study, trials, paths, lanes=1)
    assert statuses == {t.trial_id: "failed" if t.trial_id == refused else "ok" for t in trials}
    (attempt,) = attempts(paths, refused)
    assert attempt["state"] == "failed"
    assert attempt["reason"] == (
        f"ok after training, but cannot write {paths.record(refused)}: the file name is too long"
    )
    assert not paths.record(refused).exists() and leftovers(paths.root) == []


def test_a_checkpoint_the_storage_refuses_does_not_end_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftvar.train import checkpoint

    def refuse(path: Path, content: object) -> None:
        raise WriteFailed(path, OSError(errno.ENOSPC, "No space left on device"))

    resumable = checkpoint.Resumable(tmp_path / "t", every_s=1e-9)
    resumable.attempts = AttemptLog.begin(tmp_path / "t", tmp_path / "t.json")
    resumable.set_snapshot(lambda: {"step": 3})
    monkeypatch.setattr(checkpoint, "write_atomic", refuse)
    assert resumable.at_step_boundary() is False  # reported, and training goes on
    assert resumable.save("SIGTERM") is False
    (attempt,) = json.loads((tmp_path / "t" / ATTEMPTS_FILE).read_text())
    assert attempt["state"] == "interrupted"
    state = tmp_path / "t" / "state.pt"
    assert (
        attempt["reason"] == f"SIGTERM: no checkpoint: cannot write {state}: no space left on its file system"
    )


def test_a_full_disk_refuses_the_launch_and_its_writes_leave_nothing(small_fs: Path) -> None:
    """On a full file system: `ftvar launch` stops with one line before writing anything; the ledger, an
    atomic write and submitit's pickles fail as one line and leave no part, no empty file; an attempt log
    still takes its last word (in place)."""
    from ftvar.run.local import SessionExecutor, submission_files

    study = load_study("smoke", TINY)
    paths = StudyPaths.of(small_fs / "study-out", study.name)
    paths.launches.parent.mkdir(parents=True)
    paths.launches.write_text('{"executor": "local"}\n')
    log = AttemptLog.begin(paths.ckpt / "t", paths.record("t"))
    fill(small_fs)

    out = ftvar("launch", "smoke", *(a for s in TINY for a in ("--set", s)), "--out", str(small_fs / "new"))
    line = one_error_line(out)
    assert f"--out {small_fs / 'new'}: its file system has 0 bytes free and this launch writes about" in line
    assert not (small_fs / "new").exists()

    with pytest.raises(WriteFailed, match=f"cannot write {paths.launches}: no space left on its file system"):
        launches.append_launch(paths, study.hash, {"executor": "local", "trials": ["x" * 5000]})
    assert paths.launches.read_text() == '{"executor": "local"}\n'  # no part of a line
    other = StudyPaths(small_fs / "other")
    other.root.mkdir()
    with pytest.raises(WriteFailed):
        launches.append_launch(other, study.hash, {"executor": "local", "trials": ["x" * 5000]})
    assert not other.launches.exists()  # no empty ledger
    with pytest.raises(WriteFailed, match="no space left"):
        write_atomic(paths.record("t"), "x" * 10_000)
    import torch  # a writer that reports a refused write as its own error (RuntimeError: … unexpected pos)

    with pytest.raises(WriteFailed, match=r"state\.pt: no space left on its file system"):
        write_atomic(paths.ckpt / "t" / "state.pt", lambda fh: torch.save({"w": torch.zeros(100_000)}, fh))
    refused = r"cannot write local job 1 into .*: no space left on its file system"
    with pytest.raises(FtvarError, match=refused), submission_files(paths, "local job 1"):
        SessionExecutor(folder=str(paths.submitit / "%j")).submit(print, "x" * 100_000)
    assert not list(paths.submitit.glob("*.pkl"))

    log.update("failed", "the reason must survive a full disk")
    assert json.loads((paths.ckpt / "t" / ATTEMPTS_FILE).read_text())[0]["reason"] == (
        "the reason must survive a full disk"
    )
    assert leftovers(small_fs) == []


def test_a_full_disk_during_training_fails_one_trial_and_leaves_the_queue(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the first trial trains: its record is refused, its attempt says so (not ok, not
    lost), the pack starts nothing more and ends cleanly (its queue is the next launch's); once space is
    freed, the next run trains all three and the first one's attempts read failed, ok."""
    from ftvar.train import pack, runner

    study, paths = tiny(small_fs)
    trials = expand(study)
    real = runner.write_record
    filler: list[Path] = []

    def fill_then_write(path: Path, record: dict[str, Any]) -> dict[str, Any]:
        if not filler:
            filler.append(fill(small_fs))
        return real(path, record)

    monkeypatch.setattr(runner, "write_record", fill_then_write)
    statuses = pack.run_pack(None, study, trials, paths, lanes=1)
    first, *rest = (t.trial_id for t in trials)
    assert statuses[first] == "failed"
    full = f"cannot write in {paths.records}: no space left on its file system"
    assert [statuses[t] for t in rest] == [f"not run: {full}"] * 2
    (attempt,) = attempts(paths, first)
    assert attempt["state"] == "failed" and attempt["reason"] == (
        f"ok after training, but cannot write {paths.record(first)}: no space left on its file system"
    )
    assert all(attempts(paths, t) == [] for t in rest)
    assert not list(paths.records.glob("*.json")) and leftovers(paths.root) == []

    filler[0].unlink()
    monkeypatch.setattr(runner, "write_record", real)
    assert pack.run_pack(None, study, trials, paths, lanes=1) == dict.fromkeys(
        (t.trial_id for t in trials), "ok"
    )
    rec = json.loads(paths.record(first).read_text())
    assert [a["state"] for a in rec["attempts"]] == ["failed", "ok"]


def test_a_read_only_records_folder_is_refused_at_launch_and_stops_a_pack_cleanly(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """A read-only records folder (a bind mount; as root, chmod 555 changes nothing): the launch's checks
    refuse it with one line; a pack already running fails the trial it trained (its attempt says read-only,
    no attempt says ok) and starts no other."""
    from ftvar.train import pack

    study, paths = tiny(tmp_path)
    paths.records.mkdir(parents=True)
    trials = expand(study)
    with read_only(paths.records):
        out = ftvar(
            "launch",
            "smoke",
            *(a for s in TINY for a in ("--set", s)),
            "--executor",
            "debug",
            "--out",
            str(tmp_path),
        )
        assert one_error_line(out) == (
            f"ftvar: error: --out {tmp_path}: cannot write in {paths.records}: the file system is read-only"
        )
        assert not paths.launches.exists() and not paths.submitit.exists()
        statuses = pack.run_pack(None, study, trials, paths, lanes=1)
    first, *rest = (t.trial_id for t in trials)
    assert statuses[first] == "failed"
    assert [statuses[t] for t in rest] == [
        f"not run: cannot write in {paths.records}: the file system is read-only"
    ] * 2
    (attempt,) = attempts(paths, first)
    assert attempt["state"] == "failed"
    assert attempt["reason"].endswith(f"cannot write {paths.record(first)}: the file system is read-only")
    assert all(attempts(paths, t) == [] for t in rest)


def test_a_study_name_too_long_for_a_folder_is_one_line_and_nothing_written(tmp_path: Path) -> None:
    out = ftvar("launch", "smoke", "--set", "name=" + "a" * 300, "--out", str(tmp_path / "out"))
    assert "is 300 characters long: at most 100" in one_error_line(out)
    assert not (tmp_path / "out").exists()
