"""fix33e: the fixes of review rev33e (``tests/unit/test_hostile_rev33e.py``) beyond the review's own tests.

- a pool forked under a lock dies with the process that forked it (``formats.processes.start_worker``, the publish's
  shard writers; ``worker_pool``, the ingest's workers), so a SIGKILLed holder leaves its lock free; the pool's own
  initializer still runs (``gc.freeze``); an ingest worker killed outright is ``WorkerProcessDied``, nothing written;
- one day's ingest leaves a day that has not begun alone (``day_begun``): a pending rewrite record of such a day stays
  until the day begins, and is redone then; a later day waiting for the landing day's image is rewritten once begun;
- ``build_lock`` takes a lock held for an instant (the daemon's probe) after trying again for ``PROBE_GRACE_S``, and
  refuses a lock held for good once that grace is over; other locks keep refusing at once.
"""
from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from test_ingest_fixtures import DayBuilder

from dagster_project import build
from formats.home import DataHome
from formats.locks import hold_lock
from formats.processes import WorkerProcessDied, start_worker
from pipelines.ingest import day as day_module
from pipelines.ingest import rewrites
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.waiting import read_waiting
from tests.conftest import default_signals

REPO = Path(__file__).resolve().parents[2]
PARENT = os.getpid()

# --- pools forked under a lock ------------------------------------------------------------------------------------

# a process holding a lock (exclusive flock) forks a pool started by start_worker, whose worker sleeps; the process
# SIGKILLs itself once the worker runs (the worker's pid in argv[2])
HOLDER = r"""
import fcntl, gc, multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from formats.processes import start_worker
def work(pid_file):
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(60)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                           initargs=(os.getpid(), gc.freeze))
pool.submit(work, sys.argv[2])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_worker_started_by_start_worker_dies_with_its_killed_parent_and_frees_its_lock(tmp_path) -> None:
    lock, pid_file = tmp_path / "held.lock", tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(pid_file)], cwd=REPO, env=env,
                            start_new_session=True, preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
        worker = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the pool's worker outlived its killed parent"
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # free: nobody holds the lock file open locked
        finally:
            os.close(fd)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _environ(name: str) -> str | None:
    return os.environ.get(name)


def test_start_worker_runs_the_pools_own_initializer() -> None:
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context, initializer=start_worker,
                             initargs=(os.getpid(), os.environ.__setitem__, "FIX33E_INIT", "ran")) as pool:
        assert pool.submit(_environ, "FIX33E_INIT").result(timeout=60) == "ran"
    with ProcessPoolExecutor(1, mp_context=context, initializer=start_worker,
                             initargs=(os.getpid(), gc.freeze)) as pool:
        assert pool.submit(gc.get_freeze_count).result(timeout=60) > 0
    with ProcessPoolExecutor(1, mp_context=context, initializer=start_worker, initargs=(os.getpid(),)) as pool:
        assert pool.submit(_environ, "FIX33E_INIT").result(timeout=60) is None   # nothing else run


def _killed_in_worker(*args, **kwargs):
    if os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)      # the out-of-memory killer ends one ingest worker
    raise AssertionError("only the pool's workers compute here")


def test_an_ingest_worker_killed_outright_stops_the_ingest_with_nothing_written(tmp_path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    day = "2023-03-01"
    DayBuilder(day, seed=1, id_base=1).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    monkeypatch.setattr(day_module, "_ingest_tables", _killed_in_worker)
    with pytest.raises(WorkerProcessDied, match="SIGKILL"):
        day_module.ingest_day(home, day, IngestConfig(workers=2, parallel_min_bytes=1))
    assert not any(home.partition_file(name, day).exists() for name in ("images", "rankings", "quarantine"))


def test_a_parallel_ingest_writes_what_one_process_writes(tmp_path) -> None:
    day = "2023-03-01"
    written = []
    for workers in (1, 2):
        home = DataHome(tmp_path / f"home{workers}")
        DayBuilder(day, seed=3, id_base=1).populate(users=3, images=6, rankings=4, downloads=2).write(home)
        day_module.ingest_day(home, day, IngestConfig(workers=workers, parallel_min_bytes=1))
        written.append({name: home.partition_file(name, day).read_bytes() for name in ("images", "rankings",
                                                                                       "quarantine")})
    assert written[0] == written[1]


# --- a day that has not begun, looked at by another day's ingest --------------------------------------------------

FUTURE = "9999-12-30"


def _begun_by(today: str):
    real = day_module.check_day_begun
    return lambda day, today_=None: real(day, today)


def test_day_begun_reads_the_ingests_clock(monkeypatch) -> None:
    assert day_module.day_begun("2000-01-01") and not day_module.day_begun(FUTURE)
    monkeypatch.setattr(day_module, "check_day_begun", _begun_by("9999-12-31"))
    assert day_module.day_begun(FUTURE)


def test_a_pending_rewrite_of_a_day_not_begun_waits_for_the_day_and_is_redone_then(tmp_path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    landing = "2023-03-01"
    DayBuilder(landing, seed=1, id_base=1).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    DayBuilder(FUTURE, seed=2, id_base=20_000).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    rewrites.begin(home, FUTURE, "left by an ingest before fix33e")
    day_module.ingest_day(home, landing)              # the pending record of the day not begun is left alone
    assert FUTURE in rewrites.pending(home)
    assert not home.partition_file("images", FUTURE).exists()
    monkeypatch.setattr(day_module, "check_day_begun", _begun_by("9999-12-31"))
    report = day_module.ingest_day(home, landing)     # the day has begun: the next ingest redoes it
    assert FUTURE in report.refreshed
    assert FUTURE not in rewrites.pending(home)
    assert home.partition_file("images", FUTURE).is_file()


def test_a_day_not_begun_waiting_for_an_image_is_rewritten_once_it_begins(tmp_path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    landing = "2023-03-01"
    first = DayBuilder(landing, seed=1, id_base=1).populate(users=2, images=4, rankings=2, downloads=1)
    odd = DayBuilder(FUTURE, seed=2, id_base=20_000).populate(users=2, images=4, rankings=2, downloads=1)
    odd.add("rankings", odd.ranking(image_0_uid=first.image_uids[0], image_1_uid=odd.image_uids[0],
                                    best_image_uid="none"))
    odd.write(home)
    with monkeypatch.context() as patch:
        patch.setattr(day_module, "check_day_begun", _begun_by("9999-12-31"))
        day_module.ingest_day(home, FUTURE)
    quarantine = home.partition_file("quarantine", FUTURE)
    assert first.image_uids[0] in read_waiting(quarantine)
    before = quarantine.read_bytes()
    first.write(home)
    report = day_module.ingest_day(home, landing)
    assert report.refreshed == {} and quarantine.read_bytes() == before   # not begun: left alone
    monkeypatch.setattr(day_module, "check_day_begun", _begun_by("9999-12-31"))
    report = day_module.ingest_day(home, landing)
    assert FUTURE in report.refreshed
    assert first.image_uids[0] not in read_waiting(quarantine)            # resolved by the landing day's image
    assert not rewrites.pending(home)


# --- the build lock held for an instant -------------------------------------------------------------------------


def _other_holder(path: Path, mode: int, seconds: float | None) -> int:
    """Another open file description holding ``path`` locked (``mode``), released after ``seconds`` (None: never,
    the caller closes it)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    if seconds is not None:
        threading.Timer(seconds, os.close, (fd,)).start()
    return fd


def _home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.root.mkdir(parents=True)
    with build.build_lock(home):     # makes the lock file
        pass
    return home


def test_a_build_starting_during_the_daemons_probe_takes_the_lock(tmp_path) -> None:
    home = _home(tmp_path)
    _other_holder(home.lock_file, fcntl.LOCK_SH, 0.1)     # the probe, held longer than ever
    with build.build_lock(home):
        assert home.lock_file.read_text().split()[0] == str(os.getpid())


def test_a_build_lock_held_for_good_is_refused_after_the_grace(tmp_path, monkeypatch) -> None:
    home = _home(tmp_path)
    monkeypatch.setattr(build, "PROBE_GRACE_S", 0.3)
    fd = _other_holder(home.lock_file, fcntl.LOCK_EX, None)
    try:
        started = time.monotonic()
        with pytest.raises(build.BuildError, match="another build is running"):
            with build.build_lock(home):
                pass
        assert time.monotonic() - started >= 0.3
    finally:
        os.close(fd)


def test_other_locks_still_refuse_at_once(tmp_path) -> None:
    path = tmp_path / "stage.lock"
    with hold_lock(path, "a stage", lambda _holder: None):
        pass
    fd = _other_holder(path, fcntl.LOCK_EX, None)

    def refuse(holder: str) -> None:
        raise RuntimeError(f"busy ({holder})")

    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="busy"):
            with hold_lock(path, "a stage", refuse):
                pass
        assert time.monotonic() - started < 0.2
    finally:
        os.close(fd)
