"""Files on shared storage: atomic writes (the one writer for records, results tables, reports, plots and
checkpoints) and tolerant JSON reads.

`write_atomic(path, content)` writes a temp file in the target's own folder (`.<name>.<random>.part`, which
`*.json`, `*.csv` and the like never match), flushes and fsyncs it, renames it over the target and fsyncs
the folder. A reader sees either the old file or the whole new one, never a part, and a crash leaves at most
a `.part` file behind. The file gets the mode any normally created file would get, 0666 minus the umask
(0644 under the usual umask 022), so collaborators on shared storage can read reports as they read records.
`write_json` writes a JSON object that way; `load_json` reads one, giving None for what cannot be read.
`flock_waiting` takes a process's lock on an open file within a wait, and `write_holder` says who holds it.

A write that fails (a full disk, a read-only file system, a permission, a name too long) raises `WriteFailed`:
an FtvarError (one `ftvar: error:` line) and an OSError (with its errno), whose message names the path and
the cause in words; nothing of the failed write is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ftvar.errors import FtvarError

Content = str | bytes | Callable[[Any], object]  # text (UTF-8), bytes, or a function that writes to a file
_UMASK_LOCK = threading.Lock()


CAUSES = {
    errno.ENOSPC: "no space left on its file system",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ENOENT: "its folder does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EIO: "an input/output error of the storage",
    errno.ESTALE: "a stale network file handle (the storage went away)",
}
FULL = (errno.ENOSPC, errno.EDQUOT)


def cause(exc: OSError) -> str:
    """An OSError's cause in words ("no space left on its file system", "the file system is read-only", …)."""
    if isinstance(exc, WriteFailed):
        return exc.cause
    if exc.errno in CAUSES:
        return CAUSES[exc.errno]
    return exc.strerror or str(exc) or exc.__class__.__name__


class WriteFailed(FtvarError, OSError):
    """A write that failed: `cannot write PATH: CAUSE`. Both an FtvarError (the CLI prints it as one line)
    and an OSError carrying the errno (`except OSError` still catches it)."""

    def __init__(self, path: Path | str, exc: OSError, what: str = "write") -> None:
        FtvarError.__init__(self)
        self.errno = exc.errno
        self.filename = str(path)
        self.cause = cause(exc)
        self.message = f"cannot {what} {path}: {self.cause}"

    def __str__(self) -> str:
        return self.message

    @property
    def full(self) -> bool:
        """The file system is full (no space, or the quota)."""
        return self.errno in FULL


def write_failed(path: Path | str, exc: OSError, what: str = "write") -> WriteFailed:
    """`exc` as a WriteFailed about `path` (itself, when it already is one)."""
    return exc if isinstance(exc, WriteFailed) else WriteFailed(path, exc, what)


def tell(text: str) -> None:
    """A message to stderr. In a task stderr is its log file in the study folder, on the storage whose full
    disk may be what the message is about: a message that cannot be written is dropped, never raised."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


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
    """Replace `path` with `content` atomically (see the module docstring); creates missing folders.
    Raises WriteFailed (the path and the cause) when the file system refuses; the temp file is removed."""
    try:
        _write_atomic(path, content)
    except OSError as exc:
        raise write_failed(path, exc) from None


def _write_atomic(path: Path, content: Content) -> None:
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
                writes = _Writes(fh)
                try:
                    content(writes)
                except Exception:
                    if writes.error is not None:  # the writer's own error for a refused write
                        raise writes.error from None
                    raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class _Writes:
    """The file a writer function gets (torch.save, savefig, pyarrow), keeping the first OSError of its
    writes: such writers report a refused write as an error of their own (torch: `RuntimeError: … unexpected
    pos …`), which would hide the cause (a full disk) and be taken for a crash."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite a small existing file through its own blocks (no temp file): what still works on a full
    disk, where `write_atomic` has no room for its temp file. Not atomic; only for files whose readers
    tolerate a damaged copy (the attempt log)."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, text.encode("utf-8"), 0)
            os.ftruncate(fd, len(text.encode("utf-8")))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_failed(path, exc) from None


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged user may still write on `folder`'s file system (its nearest existing folder),
    or None when that cannot be told."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def can_write(folder: Path, size: int = 0) -> str | None:
    """Why `folder` cannot take a file of `size` bytes now (in words, with the path), or None when it can:
    a temp file is created there (root ignores permission bits, so only trying tells; O_TMPFILE, where it
    exists, leaves nothing visible), `size` bytes are written into it and it is removed."""
    try:
        with tempfile.TemporaryFile(dir=folder) as fh:
            if size:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        return f"cannot write in {folder}: {cause(exc)}"
    return None


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


def flock_waiting(
    fd: int, wait_s: float, poll_s: float, while_busy: Callable[[], None] | None = None
) -> bool:
    """Lock the open file `fd` (flock, exclusive: it goes with the process, so a killed holder never leaves
    a stale lock), trying every `poll_s` for up to `wait_s`; False when another process still holds it then.
    `while_busy` is called before each wait."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if while_busy is not None:
                while_busy()
            time.sleep(poll_s)


def write_holder(fd: int, text: str) -> None:
    """Write who holds the lock on `fd` into its file, for messages only (a full disk may refuse: ignored)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
