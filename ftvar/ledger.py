"""A study's state on disk: record statuses, the launches ledger (`launches.jsonl`), the mixing check, the
launch lock and the output folder check.

A study folder holds one version of a study (one study hash): its records, the launches in
`launches.jsonl` (each with the hash it ran) and the data cache (`cache/meta.json` names its hash) must all
agree before anything is added. `ftvar launch` holds an exclusive lock (`flock` on `.launch.lock` in the
study folder) from planning to the last submission, so two launches never submit the same trial.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftvar.config import Study
from ftvar.errors import FtvarError
from ftvar.record import load_json, read_status, study_hashes, utc_now
from ftvar.trial import StudyPaths, Trial, expand

LOCK_FILE = ".launch.lock"
LOCK_WAIT_S = 120.0  # a launch waits this long for another one of the same study (a slow sbatch), then stops


def trial_statuses(
    study: Study, paths: StudyPaths, trials: Sequence[Trial] | None = None
) -> dict[str, str | None]:
    """Trial id → status of its record (None: no record yet)."""
    return {t.trial_id: read_status(paths.record(t.trial_id)) for t in (trials or expand(study))}


def pending(study: Study, paths: StudyPaths) -> tuple[list[Trial], list[Trial]]:
    """(trials to run, trials skipped because they already have an ok record)."""
    todo: list[Trial] = []
    done: list[Trial] = []
    for trial in expand(study):
        (done if read_status(paths.record(trial.trial_id)) == "ok" else todo).append(trial)
    return todo, done


def check_no_mixing(study: Study, paths: StudyPaths) -> None:
    """Refuse to add anything of this study to a folder that holds another version of it (another study
    hash): in its records, in the launches of `launches.jsonl` (an array that has written no record yet) or
    in its data cache (which a launch would rebuild under the running tasks)."""
    found: list[tuple[str, str]] = []  # (hash, what)
    for h, n in study_hashes(paths.records).items():
        if h != study.hash:
            found.append((h, f"{n} record(s) in {paths.records}"))
    arrays: dict[str, list[str]] = {}
    for entry in read_launches(paths):
        launched_hash = entry.get("hash")
        if isinstance(launched_hash, str) and launched_hash != study.hash:
            arrays.setdefault(launched_hash, []).append(str(entry.get("array_id") or entry.get("executor")))
    for h, launched in arrays.items():
        found.append((h, f"{len(launched)} launch(es) in {paths.launches} ({', '.join(launched[:3])})"))
    for folder in sorted(paths.cache.glob("*/")) if paths.cache.is_dir() else []:
        meta = read_json(folder / "meta.json")  # one cache per tokenization, each says which study built it
        built_by = meta.get("study_hash") if meta is not None else None
        if isinstance(built_by, str) and built_by != study.hash:
            found.append((built_by, f"the data cache {folder}"))
    if found:
        h = found[0][0]
        what = "; ".join(w for fh, w in found if fh == h)
        raise FtvarError(
            f"{paths.root} belongs to another version of study {study.name!r} (hash {h}; this one is "
            f"{study.hash}): {what}. Its model, data or training settings changed. Use another name or "
            f"--out, or move {paths.root} away"
        )


def append_launch(paths: StudyPaths, study_hash: str, entry: dict[str, Any]) -> None:
    """Add one launch (executor, job or array ids, trial ids) to `launches.jsonl`, with the study hash."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.launches.open("a") as fh:
        fh.write(json.dumps({"at": utc_now(), "hash": study_hash, **entry}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = paths.root / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(lock)
                if time.monotonic() >= deadline:
                    raise FtvarError(
                        f"another `ftvar launch` of this study is running ({holder}; lock {lock}); waited "
                        f"{wait_s:.0f} s. Run this launch again once it has finished"
                    ) from None
                starting = holder == "a launch that is starting"  # it holds the lock, not yet its name
                if on_wait is not None and (not starting or time.monotonic() > deadline - wait_s + 2):
                    on_wait(holder)
                    on_wait = None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}".encode(), 0)
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


def check_out(out: Path, study_root: Path | None = None) -> None:
    """`--out` must be a folder this process can write in, or a new folder inside one; so must the study's
    folder in it, when it exists."""
    out = Path(out).expanduser()
    if study_root is not None and study_root.is_dir():
        _probe(study_root, f"--out {out}")
        return
    if out.exists() and not out.is_dir():
        raise FtvarError(f"--out {out} is a file, not a folder")
    target = out if out.exists() else out.parent
    if not out.exists() and not target.is_dir():
        what = "is a file" if target.exists() else "does not exist"
        raise FtvarError(f"--out {out}: its parent folder {target} {what}; create the folder first")
    _probe(target, f"--out {out}")


def _probe(folder: Path, what: str) -> None:
    """Raise FtvarError unless a file can be created in `folder` (root ignores permission bits, so only
    trying tells; O_TMPFILE, where it exists, leaves nothing visible)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise FtvarError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None


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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    data = load_json(path)
    return data if isinstance(data, dict) else None
