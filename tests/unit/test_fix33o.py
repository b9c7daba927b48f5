"""fix33o: the publish's shard writers are a ``formats.processes.worker_pool`` (review rev33o).

- ``worker_pool(workers, context, then, *args)`` runs the pool's own initializer (``gc.freeze`` for the publish) after
  ``die_with_parent``, as ``start_worker`` does;
- a pool's workers take SIGTERM / SIGHUP's default action back: a forked worker inherited the command's raising
  handler (``pickapic``'s ``Terminated``), so the stop's ``terminate`` only raised in its task, which the executor's
  worker caught, and it began the next batch queued for it;
- a failed batch (a full disk) stops the other writers at once and is raised as itself, not as a dead worker;
- a writer killed outright leaves no writer behind.

The shard phase's bytes and batch order are those of one process: ``test_publish_batches``'
``test_the_pool_writes_the_same_version_as_one_process``.
"""
from __future__ import annotations

import errno
import gc
import multiprocessing
import os
import signal
import threading
import time

import pyarrow as pa
import pytest

from formats.processes import WorkerProcessDied, worker_pool
from pipelines.publish import shardphase, shards
from pipelines.publish.config import PublishConfig

PARENT = os.getpid()
_STATE: dict = {"marks": "", "kill": False, "fail": ""}   # set before the pool forks
BATCH_S = 2.0
_SET: list = []


class _Terminated(KeyboardInterrupt):
    """As ``dagster_project.cli``'s: SIGTERM raised in the main thread."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _writer(batch):
    """``shards.write_batch`` in a forked writer: marks the batch begun, then fails (a batch holding ``fail``), is
    SIGKILLed, or takes ``BATCH_S``."""
    with open(os.path.join(_STATE["marks"], f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    if any(task.name == _STATE["fail"] for task in batch):
        raise OSError(errno.ENOSPC, "No space left on device")
    if _STATE["kill"] and os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(BATCH_S)
    return [{"num_bytes": 1, "sidecar_bytes": 1} for _ in batch]


def _tasks(folder, count: int = 16) -> list[shards.ShardTask]:
    return [shards.ShardTask("train", f"s{i:03d}", str(folder), str(folder), pa.table({"x": [i]}), "plan", fsync=False)
            for i in range(count)]


def _setup(tmp_path, monkeypatch, kill: bool = False, fail: str = ""):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setitem(_STATE, "marks", str(marks))
    monkeypatch.setitem(_STATE, "kill", kill)
    monkeypatch.setitem(_STATE, "fail", fail)
    monkeypatch.setattr(shards, "write_batch", _writer)
    return marks, out


def _remember(*values) -> None:
    _SET[:] = values


def _worker_state() -> tuple:
    return tuple(_SET), gc.get_freeze_count() > 0, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)


def test_worker_pool_runs_the_pools_own_initializer_with_its_arguments() -> None:
    context = multiprocessing.get_context("fork")
    with worker_pool(1, context, _remember, "a", 2) as pool:
        assert pool.submit(_worker_state).result()[0] == ("a", 2)
    with worker_pool(1, context, gc.freeze) as pool:
        assert pool.submit(_worker_state).result()[1]
    with worker_pool(1, context) as pool:        # no initializer of its own: as before
        assert pool.submit(_worker_state).result()[0] == ()


def test_a_pools_workers_take_the_default_sigterm_and_sighup_back_from_the_commands_handlers() -> None:
    before = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with worker_pool(1, multiprocessing.get_context("fork"), gc.freeze) as pool:
            _, frozen, term, hup = pool.submit(_worker_state).result()
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated      # the command's own are left alone
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert frozen and term == signal.SIG_DFL and hup == signal.SIG_DFL


def test_a_publish_terminated_under_the_commands_sigterm_handler_begins_no_further_batch(tmp_path,
                                                                                       monkeypatch) -> None:
    """``pickapic``'s SIGTERM handler raises ``Terminated``; the forked writers inherited it, so the stop's
    ``terminate`` was caught in the task and the writer began the batch queued for it (3 of 8 begun, a whole batch
    more before the publish stopped)."""
    marks, out = _setup(tmp_path, monkeypatch)
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(_Terminated):
            shardphase.write_shards(_tasks(out), [], PublishConfig(workers=2), None)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, before)
    elapsed = time.monotonic() - started
    assert len(os.listdir(marks)) <= 2, "a writer began another batch after the publish was told to stop"
    assert elapsed < BATCH_S, f"the stopped publish took {elapsed:.1f} s to stop"
    assert not multiprocessing.active_children()


def test_a_failed_batch_stops_the_other_writers_at_once_and_is_raised_as_itself(tmp_path, monkeypatch) -> None:
    """A full disk in one writer: its own error (the publish cleans its staging for a failed run), not a dead worker,
    and the other writer's running batch is not waited for."""
    marks, out = _setup(tmp_path, monkeypatch, fail="s000")
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        shardphase.write_shards(_tasks(out), [], PublishConfig(workers=2), None)
    elapsed = time.monotonic() - started
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, WorkerProcessDied)
    assert elapsed < BATCH_S, f"the failed publish took {elapsed:.1f} s to stop"
    assert len(os.listdir(marks)) <= 3
    assert not multiprocessing.active_children()


def test_a_writer_killed_outright_names_its_pid_and_leaves_no_writer_behind(tmp_path, monkeypatch) -> None:
    _, out = _setup(tmp_path, monkeypatch, kill=True)
    with pytest.raises(WorkerProcessDied) as raised:
        shardphase.write_shards(_tasks(out, 4), [], PublishConfig(workers=2), None)
    assert "by signal SIGKILL" in str(raised.value) and "pid " in str(raised.value)
    assert not multiprocessing.active_children()

