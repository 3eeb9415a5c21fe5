"""Files on shared storage: atomic writes (the one writer for records, results tables, reports, plots and
checkpoints) and tolerant JSON reads.

`write_atomic(path, content)` writes a temp file in the target's own folder (`.<name>.<random>.part`, which
`*.json`, `*.csv` and the like never match), flushes and fsyncs it, renames it over the target and fsyncs
the folder. A reader sees either the old file or the whole new one, never a part, and a crash leaves at most
a `.part` file behind. The file gets the mode any normally created file would get, 0666 minus the umask
(0644 under the usual umask 022), so collaborators on shared storage can read reports as they read records.
`write_json` writes a JSON object that way; `load_json` reads one, giving None for what cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

Content = str | bytes | Callable[[BinaryIO], object]  # text (UTF-8), bytes, or a function that writes
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """This process's umask, without changing it (Linux: /proc/self/status; elsewhere set and restore)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    match = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    if match:
        return int(match.group(1), 8)
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        old = os.umask(0o022)
        os.umask(old)
    return old


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, content: Content) -> None:
    """Replace `path` with `content` atomically (see the module docstring); creates missing folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: give it the mode of a normally created file
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` so that no reader ever sees a partial file (ValueError on NaN or infinity)."""
    write_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def load_json(path: Path) -> Any:
    """A file's JSON value, or None when it is missing, unreadable or not JSON (deep nesting included: it
    exhausts the parser's recursion)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    data = load_json(path)
    return data if isinstance(data, dict) else None
