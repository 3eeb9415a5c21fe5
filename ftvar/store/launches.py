"""The launches ledger (`launches.jsonl`: every array or local run a launch started, with the study hash) and
the launch lock.

`ftvar launch` holds an exclusive lock (`flock` on `.launch.lock` in the study folder) from planning to the
last submission, so two launches never submit the same trial.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftvar.errors import FtvarError
from ftvar.store.files import flock_waiting, write_failed, write_holder
from ftvar.store.paths import StudyPaths
from ftvar.store.record import utc_now

LOCK_FILE = ".launch.lock"
LOCK_WAIT_S = 120.0  # a launch waits this long for another one of the same study (a slow sbatch), then stops


def append_launch(paths: StudyPaths, study_hash: str, entry: dict[str, Any]) -> None:
    """Add one launch (executor, job or array ids, trial ids) to `launches.jsonl`, with the study hash, as
    one write of one whole line. A write the file system refuses raises WriteFailed and leaves the file as
    it was: a part of a line is cut off again, a ledger this call created is removed."""
    line = (json.dumps({"at": utc_now(), "hash": study_hash, **entry}) + "\n").encode()
    path = paths.launches
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_failed(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):  # a short write: the disk filled up under it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                if size == 0:
                    path.unlink()
            raise write_failed(path, exc) from None
    finally:
        os.close(fd)


def read_launches(paths: StudyPaths) -> list[dict[str, Any]]:
    """Every launch of the study, oldest first; unreadable lines are skipped."""
    if not paths.launches.is_file():
        return []
    out = []
    try:
        text = paths.launches.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


@contextmanager
def launch_lock(
    paths: StudyPaths, wait_s: float | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the study's launch lock: wait up to `wait_s` (LOCK_WAIT_S) for another launch of the same study,
    then stop with an error that names it. The lock goes with the process that holds it (flock), so a
    killed launch never leaves a stale lock. Folders this creates are removed again if the launch fails
    before writing anything else."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    created = [d for d in (paths.root.parent, paths.root) if not d.exists()]
    lock = paths.root / LOCK_FILE
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise write_failed(lock, exc) from None
    try:
        start = time.monotonic()

        def busy() -> None:  # say once whom it waits for
            nonlocal on_wait
            holder = _lock_holder(lock)
            starting = holder == "a launch that is starting"  # it holds the lock, not yet its name
            if on_wait is not None and (not starting or time.monotonic() > start + 2):
                on_wait(holder)
                on_wait = None

        if not flock_waiting(fd, wait_s, 0.2, busy):
            raise FtvarError(
                f"another `ftvar launch` of this study is running ({_lock_holder(lock)}; lock {lock}); "
                f"waited {wait_s:.0f} s. Run this launch again once it has finished"
            )
        write_holder(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}")
        try:
            yield
        except BaseException:
            if paths.root in created and [p.name for p in paths.root.iterdir()] == [LOCK_FILE]:
                lock.unlink(missing_ok=True)  # nothing else was written: leave no trace
                for folder in reversed(created):
                    folder.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "a launch that is starting"
    except OSError:
        return "unknown"
