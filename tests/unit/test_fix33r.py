"""fix33r: the defects of review rev33r (``test_hostile_rev33r``), and their neighbours.

- a fork pool's workers (``formats.processes.worker_pool``) start with SIGINT / SIGTERM / SIGHUP blocked until
  ``start_worker`` has given up what they inherit of the parent's signal handling (SIGTERM / SIGHUP's handlers, the
  wakeup fd of ``pickapic build``'s ``signals_seen``): the pool's SIGTERM to a worker still starting ran the parent's
  handler in it, which wrote 15 into the build's wakeup pipe, and a worker's error stopped the build as
  "terminated" (exit 143); a signal a worker took alone was likewise the build's;
- ``dagster_project.build._root_cause`` passes over a pool worker's traceback text (the executor's
  ``_RemoteTraceback``, multiprocessing.Pool's ``RemoteTraceback``), gives each error's whole message on one line
  (caret lines dropped, a quoted traceback read as the error it ends in), and bounds it (``CAUSE_MAX_CHARS``).
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagster._utils.error import SerializableErrorInfo

from dagster_project.build import CAUSE_MAX_CHARS, _root_cause
from formats.processes import worker_pool

ROOT = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")
_STOPPING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


# --------------------------------------------------------------------------- a worker's signals are its own
# A build (``signals_seen`` under the command's raising SIGTERM handler) whose fork pool's first task fails while its
# second worker is still starting (slowed in the fork's own hook, before ``start_worker``): the pool's SIGTERM to it.
_SLOW_START = textwrap.dedent("""
    import errno, multiprocessing, os, signal, sys, time
    from dagster_project.build import signals_seen
    from formats.processes import worker_pool

    class Terminated(KeyboardInterrupt):
        pass

    def terminate(signum, frame):
        raise Terminated()

    def fail(i):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/h/raw/dt=2023-02-13/rankings.jsonl.gz")

    forks = []
    os.register_at_fork(before=lambda: forks.append(1),
                        after_in_child=lambda: time.sleep(1.5) if len(forks) == 2 else None)
    signal.signal(signal.SIGTERM, terminate)
    with signals_seen() as stopped:
        try:
            with worker_pool(2, multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(fail, i) for i in range(2)]
                processes = list(pool._processes.values())
                [f.result() for f in futures]
        except OSError as exc:
            print("error", exc)
        time.sleep(0.2)
        print("seen", stopped())
    print("exits", sorted(p.exitcode for p in processes))
""")


def test_a_pool_worker_stopped_while_it_starts_is_not_the_parents_sigterm() -> None:
    done = subprocess.run([sys.executable, "-c", _SLOW_START], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "error [Errno 5] Input/output error: '/h/raw/dt=2023-02-13/rankings.jsonl.gz'" in out, done.stdout
    assert "seen None" in out, done.stdout + done.stderr
    # both ended by the pool's SIGTERM, at its default action: no handler ran in them, no traceback printed
    assert f"exits [{-signal.SIGTERM}, {-signal.SIGTERM}]" in out, done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def _signals_of_a_worker() -> tuple:
    """In a pool worker: its wakeup fd, SIGTERM / SIGHUP handlers, blocked signals; then a SIGINT to itself alone,
    taken by a handler that does nothing."""
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP))
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    os.kill(os.getpid(), signal.SIGINT)
    return wakeup, handlers, blocked


@pytest.fixture
def wakeup_pipe():
    """A wakeup pipe of this (the main) thread's, as ``signals_seen`` sets it; the previous one put back after."""
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    os.set_blocking(writer, False)
    previous = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    try:
        yield reader
    finally:
        signal.set_wakeup_fd(previous)
        os.close(reader)
        os.close(writer)


def test_a_fork_pools_worker_gives_up_the_parents_signal_handling(wakeup_pipe: int) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with worker_pool(1, FORK) as pool:
        wakeup, handlers, blocked = pool.submit(_signals_of_a_worker).result()
    assert wakeup == -1 and handlers == (signal.SIG_DFL, signal.SIG_DFL)
    assert not (_STOPPING & set(blocked)), blocked          # unblocked once the inherited handling was given up
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before   # the forking thread's own mask is back
    try:                                                     # the worker's own SIGINT is not the parent's
        seen = list(os.read(wakeup_pipe, 64))
    except BlockingIOError:
        seen = []
    assert signal.SIGINT not in seen, seen


def test_a_signal_the_forking_thread_blocked_stays_blocked_in_its_worker() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        with worker_pool(1, FORK) as pool:
            blocked = pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
        assert signal.SIGHUP in blocked and not ({signal.SIGINT, signal.SIGTERM} & set(blocked)), blocked
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _pid() -> int:
    return os.getpid()


def test_a_spawn_pool_is_left_as_it_was() -> None:
    from formats import processes

    created = []
    real = processes.ProcessPoolExecutor

    def recording(*args, **kwargs):
        created.append(kwargs["mp_context"])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processes, "ProcessPoolExecutor", recording)
        spawn = multiprocessing.get_context("spawn")
        with worker_pool(1, spawn) as pool:
            assert pool.submit(_pid).result() != os.getpid()
        with worker_pool(1, FORK) as pool:
            pool.submit(_pid).result()
    assert created[0] is spawn and created[1].get_start_method() == "fork" and created[1] is not FORK


# --------------------------------------------------------------------------- a step's root cause
def _info(cls: str, message: str, cause=None) -> SerializableErrorInfo:
    return SerializableErrorInfo(message, [], cls, cause=cause)


_WRAP = _info("DagsterExecutionStepExecutionError", 'dagster._core.errors.DagsterExecutionStepExecutionError: '
              'Error occurred while executing op "ingest_day":\n')
_REMOTE = ('concurrent.futures.process._RemoteTraceback: \n"""\nTraceback (most recent call last):\n'
           '  File "/w/day.py", line 7, in work\n    raise OSError(errno.EIO, os.strerror(errno.EIO))\n'
           "OSError: [Errno 5] Input/output error\n\nThe above exception was the direct cause of the following "
           'exception:\n\nTraceback (most recent call last):\n  File "/w/process.py", line 261, in _process_worker\n'
           "    r = call_item.fn(*call_item.args, **call_item.kwargs)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
           "OSError: [Errno 5] Input/output error: '/h/raw/a.jsonl.gz'\n\"\"\"\n")


def _chain(*errors: SerializableErrorInfo) -> SerializableErrorInfo:
    """``errors`` outermost first, each the cause of the one before."""
    cause = None
    for error in reversed(errors):
        cause = SerializableErrorInfo(error.message, [], error.cls_name, cause=cause)
    return cause


@pytest.mark.parametrize("cls", ["_RemoteTraceback", "RemoteTraceback"])
def test_a_workers_traceback_text_is_passed_over(cls: str) -> None:
    named = _info("OSError", "OSError: [Errno 5] Input/output error: '/h/raw/a.jsonl.gz'\n")
    assert _root_cause(_chain(_WRAP, named, _info(cls, _REMOTE))) == named.message.strip()
    # the worker raised the kernel's error naming no file: it is the root cause still, not the text's quotes
    bare = _info("OSError", "OSError: [Errno 5] Input/output error\n")
    assert _root_cause(_chain(_WRAP, bare, _info(cls, _REMOTE))) == "OSError: [Errno 5] Input/output error"
    # a step's own error naming the file, raised from the worker's bare one: that step's error, as for any other
    own = _info("ValueError", "ValueError: cannot read /h/raw/a.jsonl.gz\n")
    assert _root_cause(_chain(_WRAP, own, bare, _info(cls, _REMOTE))) == \
        "ValueError: cannot read /h/raw/a.jsonl.gz (OSError: [Errno 5] Input/output error)"
    # the text alone: the error it ends in
    assert _root_cause(_info(cls, _REMOTE)) == "OSError: [Errno 5] Input/output error: '/h/raw/a.jsonl.gz'"


def _fails_in_a_pool(name: str) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO), name)


def test_a_multiprocessing_pool_workers_error_through_a_real_step(fast_tmp: Path) -> None:
    import dagster as dg

    from dagster_project.build import _run_failure

    name = str(fast_tmp / "raw" / "dt=2023-02-13" / "images.jsonl.gz")

    @dg.op
    def step():
        with FORK.Pool(1) as pool:
            pool.apply(_fails_in_a_pool, (name,))

    @dg.job
    def ingest():
        step()

    result = ingest.execute_in_process(raise_on_error=False)
    text = str(_run_failure(type("Run", (), {"job": "ingest", "partition": None})(), result))
    assert text.endswith(f"step: OSError: [Errno 5] Input/output error: '{name}'"), text


def test_a_multi_line_message_is_on_one_line_without_its_caret_lines() -> None:
    duckdb = _info("BinderException", '_duckdb.BinderException: Binder Error: Referenced column "best_image_uid" not '
                   'found in FROM clause!\nCandidate bindings: "ranking_id"\n\nLINE 1: SELECT best_image_uid FROM t\n'
                   "               ^^^^^^^^^^^^^^\n")
    assert _root_cause(_chain(_WRAP, duckdb)) == (
        '_duckdb.BinderException: Binder Error: Referenced column "best_image_uid" not found in FROM clause! | '
        'Candidate bindings: "ranking_id" | LINE 1: SELECT best_image_uid FROM t')
    # a line ending in ":" goes on with a space: the portable runner's "did not start:\n<log>"
    log = _info("RuntimeError", "RuntimeError: the worker pool did not start:\nport 5 in use\n")
    assert _root_cause(log) == "RuntimeError: the worker pool did not start: port 5 in use"
    # Python's SyntaxError quotes its source above its own line: that line, as before
    syntax = _info("SyntaxError", '  File "<string>", line 1\n    a b\n      ^\nSyntaxError: invalid syntax\n')
    assert _root_cause(_chain(_WRAP, syntax)) == "SyntaxError: invalid syntax"
    # an error of the step's own code in two lines, raised from the kernel's bare error: both lines, then its text
    two = _info("ValueError", "ValueError: cannot read /h/a\nthe disk failed\n")
    assert _root_cause(_chain(_WRAP, two, _info("OSError", "OSError: [Errno 5] Input/output error\n"))) == \
        "ValueError: cannot read /h/a | the disk failed (OSError: [Errno 5] Input/output error)"
    assert _root_cause(_info("ValueError", "\n\n")) == "ValueError"


def test_a_message_quoting_a_beam_workers_traceback_is_the_error_it_ends_in() -> None:
    # Beam's multi-processing runner raises a worker's failure again as a RuntimeError quoting its tracebacks
    quoted = ('RuntimeError: Traceback (most recent call last):\n  File "apache_beam/runners/common.py", line 1512, in '
              'process\n  File "/p/dofn.py", line 8, in process\n    raise ValueError(f"cannot read /h/a{x}")\n'
              "ValueError: cannot read /h/a1\n\nDuring handling of the above exception, another exception occurred:\n"
              '\nTraceback (most recent call last):\n  File "/v/sdk_worker.py", line 310, in _execute\n'
              "    response = task()\n               ^^^^^^\n  File \"/p/dofn.py\", line 8, in process\n"
              "    raise ValueError(f\"cannot read /h/a{x}\")\nValueError: cannot read /h/a1 [while running 'ReadIt']\n\n")
    assert _root_cause(_chain(_WRAP, _info("RuntimeError", quoted))) == \
        "ValueError: cannot read /h/a1 [while running 'ReadIt']"


@pytest.mark.parametrize("message", [
    "ValueError: " + "x" * 1_000_000 + "\n",                              # one huge line
    "ValueError: rows:\n" + "".join(f"row {i} is bad\n" for i in range(100_000)),   # a huge number of lines
])
def test_a_root_cause_is_bounded(message: str) -> None:
    cause = _root_cause(_chain(_WRAP, _info("ValueError", message)))
    assert len(cause) <= CAUSE_MAX_CHARS and cause.startswith("ValueError: ") and cause.endswith("..."), cause[-80:]
    # a bare kernel error appended to a long error of the step's own: bounded too
    long_own = _info("ValueError", "ValueError: cannot read " + "/d" * 400 + "\n")
    cause = _root_cause(_chain(_WRAP, long_own, _info("OSError", "OSError: [Errno 5] Input/output error\n")))
    assert len(cause) <= CAUSE_MAX_CHARS and cause.endswith("..."), cause
