"""A study folder as a launch finds it: each trial's record status, the trials left to run, whether the folder
holds another version of the study, and whether `--out` can be written.

A study folder holds one version of a study (one study hash): its records, the launches in `launches.jsonl`
(each with the hash it ran) and the data cache (`cache/<key>/meta.json` names its hash) must all agree before
anything is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftvar.errors import FtvarError
from ftvar.store.files import can_write, free_bytes, read_json
from ftvar.store.launches import read_launches
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_status, study_hashes
from ftvar.study.config import Study
from ftvar.study.trial import Trial, expand


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
            f"{study.hash}): {what}. Its model, data or training settings changed, or an ftvar that trains "
            "differently made it (0.1 drew dropout from a shared generator). Use another name or "
            f"--out, or move {paths.root} away"
        )


RECORD_BYTES = 16 * 1024  # the room one more trial's files need: a record (3 to 5 KB), its attempt log


def check_out(out: Path, study_root: Path | None = None, need_bytes: int = 0) -> None:
    """`--out` must be a folder this process can write in, or a new folder inside one; so must the study's
    folder in it and every folder of it a launch writes in (records, checkpoints, submitit's files, the
    data cache), when they exist; and its file system must have `need_bytes` free."""
    out = Path(out).expanduser()
    if study_root is not None and study_root.is_dir():
        for folder in (study_root, *(study_root / name for name in ("records", "ckpt", "submitit", "cache"))):
            if folder.is_dir():
                _probe(folder, f"--out {out}")
    else:
        if out.exists() and not out.is_dir():
            raise FtvarError(f"--out {out} is a file, not a folder")
        target = out if out.exists() else out.parent
        if not out.exists() and not target.is_dir():
            what = "is a file" if target.exists() else "does not exist"
            raise FtvarError(f"--out {out}: its parent folder {target} {what}; create the folder first")
        _probe(target, f"--out {out}")
    free = free_bytes(study_root if study_root is not None else out)
    if need_bytes and free is not None and free < need_bytes:
        raise FtvarError(
            f"--out {out}: its file system has {_size(free)} free and this launch writes about "
            f"{_size(need_bytes)} (records, attempt logs, submitit's files, the data cache): free some space "
            "or use another --out"
        )


def _size(n: int) -> str:
    """Bytes in words: "812 bytes", "3.1 MB"."""
    if n < 1000:
        return f"{n} bytes"
    scale, unit = next((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")) if n >= s)
    return f"{n / scale:.1f} {unit}"


def _probe(folder: Path, what: str) -> None:
    """Raise FtvarError unless a file can be created in `folder`."""
    problem = can_write(folder)
    if problem is not None:
        raise FtvarError(f"{what}: {problem}")


def store_problem(paths: StudyPaths) -> str | None:
    """Why the study folder cannot take another trial's files now (in words, with the path): its records or
    checkpoints folder is read-only, gone, or has no room for a record. None when it can."""
    for folder in (paths.records, paths.ckpt):
        problem = can_write(folder if folder.is_dir() else paths.root, RECORD_BYTES)
        if problem is not None:
            return problem
    return None
