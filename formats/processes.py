"""Child processes that end with the process that started them."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """In a child process (a pool's or Beam's worker, at its start): have the kernel send ``sig`` to this process
    when the thread of ``parent`` that started it ends, however the parent dies (SIGKILL, the OOM killer, a signal
    that ended it before it could stop its workers), and end now when ``parent`` is already gone. A worker that
    holds both ends of its own queue never sees its parent go otherwise, and lived on for good holding the
    command's stdout and semaphores (review rev30c). Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or
    where the call fails, nothing is changed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent died before the call: nothing would send the signal
        os._exit(1)


STOP_WAIT_S = 10.0   # how long a terminated worker may take to end before it is killed


@contextlib.contextmanager
def worker_pool(workers: int, context) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` processes (start method ``context``) for the block, whose workers
    die with this process (:func:`die_with_parent`) and which, when the block raises (a Ctrl-C, a SIGTERM or SIGHUP
    the command turned into an exception, an error), is stopped at once: the work not begun cancelled, the workers
    terminated and joined (killed past :data:`STOP_WAIT_S`), instead of the executor's exit waiting for all the
    work queued. Review rev30c: a SIGTERM to ``pickapic demo`` / ``simulate`` left its spawn pool's workers (and
    their resource tracker) running for good. Ends normally as the executor's own exit does."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.terminate()
        for process in processes:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                process.join(STOP_WAIT_S)
                if process.is_alive():
                    process.kill()
                    process.join(STOP_WAIT_S)
        raise
    pool.shutdown(wait=True)
