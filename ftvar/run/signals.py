"""Stopping a command cleanly: SIGTERM and SIGHUP (`kill`, a closed terminal) unwind like Ctrl-C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, as SIGINT does, so that
    the command's cleanup runs (a no-op outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
