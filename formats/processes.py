"""Child processes that end with the process that started them."""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

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


# the signals a command stops on: a forked worker starts with them blocked until it no longer holds its parent's
# handlers and wakeup fd (:class:`_QuietForkProcess`, :func:`start_worker`)
_STOPPING = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def start_worker(parent: int, then=None, *args) -> None:
    """A pool's initializer (``initializer=start_worker, initargs=(os.getpid(), then, *args)``): the worker dies with
    ``parent`` (:func:`die_with_parent`), then runs ``then(*args)`` (the pool's own initializer, e.g. ``gc.freeze``).
    Every pool forked under a lock needs it: a fork shares its parent's open lock files, so a worker outliving a
    killed parent holds the parent's locks for good (review rev33e: the build lock, the publish lock and the
    ingest's spill folder lock, held by the forked workers of a SIGKILLed build).

    SIGTERM and SIGHUP get their default action back: a forked worker inherits its parent's handlers (``pickapic``'s
    raises ``Terminated``, Dagster's an interrupt), so the pool's ``terminate`` only raised an exception in the task,
    which the executor's worker caught, and it went on to the next task queued for it (review rev33o's neighbour:
    a stopped publish began one more shard batch); those handlers are the command's, not its workers'. The
    parent's wakeup fd (``signal.set_wakeup_fd``: ``pickapic build``'s record of the signals it took,
    ``dagster_project.build.signals_seen``) is given up too: a signal the worker took (a SIGINT to it alone) was
    written into the parent's record as the parent's own. A worker forked by :func:`worker_pool` starts with
    SIGINT / SIGTERM / SIGHUP blocked (:class:`_QuietForkProcess`), and they are unblocked only here, after the
    reset: the pool's SIGTERM to a worker still starting ran the parent's handler in it, which wrote 15 into the
    build's wakeup pipe, and the build stopped as "terminated" (exit 143) instead of saying the worker's error
    (review rev33r)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):   # not the main thread: leave it
            signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    blocked = getattr(multiprocessing.current_process(), "_pickapic_blocked", None)
    if blocked:   # what the fork blocked (never one the parent's thread had blocked itself): a pending one acts now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    die_with_parent(parent)
    if then is not None:
        then(*args)


class _QuietForkProcess(getattr(multiprocessing.context, "ForkProcess", multiprocessing.Process)):
    """A forked process that starts with SIGINT / SIGTERM / SIGHUP blocked (those its forking thread did not block
    already, kept in ``_pickapic_blocked`` for :func:`start_worker` to unblock): until then the child holds its
    parent's handlers and wakeup fd, and a signal to it there acted as the parent's (review rev33r). The forking
    thread's own mask is put back as the fork returns; a signal to the parent meanwhile waits for it, or is taken
    by another of its threads."""

    def start(self) -> None:
        if not hasattr(signal, "pthread_sigmask"):
            super().start()
            return
        before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
        self._pickapic_blocked = set(_STOPPING - set(before))
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _QuietForkContext(getattr(multiprocessing.context, "ForkContext", multiprocessing.context.BaseContext)):
    Process = _QuietForkProcess


STOP_WAIT_S = 10.0   # how long a terminated worker may take to end before it is killed


class WorkerProcessDied(RuntimeError):
    """A worker process of a :func:`worker_pool` ended abruptly (the OOM killer, a signal, a native crash) while it
    had work: the pool is broken and the command stops (review rev31c)."""


def _ended_abruptly(processes: list) -> str:
    """How the pool's worker processes that ended on their own ended: ``pid 12 by signal SIGKILL``, ..."""
    ended = []
    for process in processes:
        code = getattr(process, "exitcode", None)
        if code is None or code == 0 or code == -signal.SIGTERM:   # running, done, or terminated by the pool
            continue
        if code < 0:
            try:
                how = f"by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"by signal {-code}"
        else:
            how = f"with status {code}"
        ended.append(f"pid {process.pid} {how}")
    return ", ".join(ended)


@contextlib.contextmanager
def worker_pool(workers: int, context, then=None, *args) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` processes (start method ``context``) for the block, whose workers
    die with this process (:func:`die_with_parent`), then run ``then(*args)`` (the pool's own initializer, e.g.
    ``gc.freeze``: :func:`start_worker`), and which, when the block raises (a Ctrl-C, a SIGTERM or SIGHUP
    the command turned into an exception, an error), is stopped at once: the work not begun cancelled, the workers
    terminated and joined (killed past :data:`STOP_WAIT_S`), instead of the executor's exit waiting for all the
    work queued. Review rev30c: a SIGTERM to ``pickapic demo`` / ``simulate`` left its spawn pool's workers (and
    their resource tracker) running for good. A worker that ended abruptly (the executor's ``BrokenProcessPool``,
    a traceback) is reported as :class:`WorkerProcessDied`, naming how it ended, once the others are stopped
    (review rev31c). A fork pool's workers start with SIGINT / SIGTERM / SIGHUP blocked until :func:`start_worker`
    has given up the handlers and wakeup fd they inherit (review rev33r: the SIGTERM that stops a worker still
    starting was read by ``pickapic build`` as its own). Ends normally as the executor's own exit does."""
    if context.get_start_method() == "fork":   # its workers start with the stopping signals blocked (rev33r)
        context = _QuietForkContext()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=start_worker,
                               initargs=(os.getpid(), then, *args))
    started = getattr(pool, "_processes", None)   # the executor's own dict (it adds its workers as it starts them)
    if started is None:
        started = {}
    try:
        yield pool
    except BaseException as exc:
        processes = list(started.values())
        # the executor's thread joins the workers too: two threads reaping one child race in waitpid, and the loser
        # reads no exit status (so the worker looks alive, its signal unknown) until that thread has ended
        manager = getattr(pool, "_executor_manager_thread", None)
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
        if manager is not None:
            with contextlib.suppress(RuntimeError):
                manager.join(STOP_WAIT_S)
        if isinstance(exc, BrokenProcessPool):
            how = _ended_abruptly(processes)
            raise WorkerProcessDied(f"a worker process ended abruptly ({how or 'killed'}) while it had work "
                                    "(the out-of-memory killer?); the command was stopped") from None
        raise
    pool.shutdown(wait=True)
