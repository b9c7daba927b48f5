"""A FIFO for tests of code that must never open one to read.

Opening a FIFO to read waits for a writer. Should the code under test regress and open it, the
helper opens the other end after ``after`` seconds (and again every 0.2 s, for every later reader),
so the test fails instead of hanging the suite.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def fifo_that_fails_not_hangs(path: Path, after: float = 30.0) -> Iterator[Path]:
    """Create a FIFO at ``path`` for the ``with`` block; any reader blocked on it is released after ``after`` s."""
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        wait = after
        while not done.wait(wait):
            wait = 0.2
            with contextlib.suppress(OSError):     # ENXIO: no reader right now
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
    try:
        yield path
    finally:
        done.set()
