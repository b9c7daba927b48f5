"""Regression tests of fix31c (review rev31c, tests/unit/test_hostile_rev31c.py): a Beam SDK worker that dies
(before it connects, mid-bundle, an exit of its own) or cannot start fails the run within seconds with
``beamworker.WorkerDied`` naming its exit status, quietly, leaving no thread or process behind
(``pipelines.features.beamworker``); a pool worker that ends abruptly is ``formats.processes.WorkerProcessDied``,
one line; every cache writer (the waiting image uids', the app export's, the raw-zone sensor's) writes under the
cache-writers lock and ``pipelines.cachesweep.sweep_cache_temps`` sweeps its killed writes."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, sweep_exclusively
from formats.processes import WorkerProcessDied, worker_pool

# (the pipelines' modules, Beam's import among them, are imported in the tests: the pool's spawned workers import
# this module to find their task)

REPO = Path(__file__).resolve().parents[2]
HEX = "0123456789ab"
DAY = "2023-02-13"

# Beam's DirectRunner (multi_processing, the stage's QuietFnApiRunner) run in a fresh process, each case a pipeline
# whose SDK worker dies (or cannot start) a different way, then a healthy one; prints one JSON line of results
BEAM_CASES = r"""
import json, os, signal, subprocess, sys, threading, time
from pipelines.features import beamworker
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from formats.commands import error_message

def kill_at_3(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x

def run(fn, workers=2):
    options = PipelineOptions(["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
    started = time.monotonic()
    try:
        with beam.Pipeline(runner=beamworker.QuietFnApiRunner(), options=options) as p:
            out = (p | beam.Create(range(8)) | beam.Map(fn) | beam.Map(lambda x: (x % 2, x)) | beam.GroupByKey()
                   | beam.MapTuple(lambda k, v: (k, sorted(v))))
            assert_that(out, equal_to([(0, [0, 2, 4, 6]), (1, [1, 3, 5, 7])]))
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "line": error_message(exc),
                "seconds": time.monotonic() - started}
    return {"error": None, "seconds": time.monotonic() - started}

def popen_fails(*args, **kwargs):
    raise OSError(11, "Resource temporarily unavailable")

results = {"mid": run(kill_at_3)}
stock_command, stock_popen = beamworker.quiet_worker_command, subprocess.Popen
beamworker.quiet_worker_command = lambda command: "kill -9 $$"      # dies before it connects
results["before"] = run(lambda x: x)
beamworker.quiet_worker_command = lambda command: "exit 0"          # ends on its own, status 0
results["early"] = run(lambda x: x, workers=1)
beamworker.quiet_worker_command = stock_command
subprocess.Popen = popen_fails                                       # the fork fails
results["popen"] = run(lambda x: x, workers=1)
subprocess.Popen = stock_popen
results["healthy"] = run(lambda x: x, workers=1)
time.sleep(0.5)
results["threads"] = sorted(t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread())
children = []
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as handle:
        children += handle.read().split()
results["children"] = children
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def beam_cases() -> dict:
    done = subprocess.run([sys.executable, "-c", BEAM_CASES], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    results["stderr"] = done.stderr
    return results


def test_a_worker_killed_mid_bundle_fails_the_run_naming_its_signal(beam_cases: dict) -> None:
    mid = beam_cases["mid"]
    assert mid["error"] == "WorkerDied", mid
    assert "Beam SDK worker process" in mid["message"] and "signal SIGKILL" in mid["message"], mid
    assert mid["seconds"] < 60, mid     # a bound (it hung for good), not a timing
    assert mid["line"] == mid["message"], mid   # the project's own error: one line, no traceback


@pytest.mark.parametrize("case, says", [("before", "signal SIGKILL"), ("early", "status 0"),
                                        ("popen", "could not be started: BlockingIOError")])
def test_a_worker_that_dies_before_it_connects_or_cannot_start_fails_the_run(beam_cases: dict, case: str,
                                                                           says: str) -> None:
    result = beam_cases[case]
    assert result["error"] == "WorkerDied" and says in result["message"], result
    assert result["seconds"] < 60, result
    assert result["line"] == result["message"], result


def test_the_runs_leave_nothing_behind_and_a_healthy_run_still_works(beam_cases: dict) -> None:
    assert beam_cases["healthy"]["error"] is None, beam_cases["healthy"]
    assert beam_cases["threads"] == [] and beam_cases["children"] == [], beam_cases
    # the dead workers' threads and streams ended quietly: no thread's traceback, no logged stream error
    assert "Exception in thread" not in beam_cases["stderr"], beam_cases["stderr"][-3000:]
    assert "Traceback" not in beam_cases["stderr"], beam_cases["stderr"][-3000:]


def _kill_myself(x: int) -> int:
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x


def _fail_at_5(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


def test_a_pool_worker_that_dies_is_one_error_naming_how_and_the_others_end() -> None:
    from formats.commands import error_message

    context = multiprocessing.get_context("spawn")
    with pytest.raises(WorkerProcessDied) as died:
        with worker_pool(2, context) as pool:
            processes = pool._processes
            list(pool.map(_kill_myself, range(40), chunksize=2))
    assert "signal SIGKILL" in str(died.value) and "ended abruptly" in str(died.value)
    assert error_message(died.value) == str(died.value)    # one line, not BrokenProcessPool's traceback
    assert not any(p.is_alive() for p in processes.values())
    # a task's own error is the task's, as before
    with pytest.raises(ValueError, match="five"):
        with worker_pool(2, context) as pool:
            list(pool.map(_fail_at_5, range(10)))


def _temp(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{HEX}.tmp"
    path.write_bytes(b"partial")
    return path


def test_cache_sweep_covers_the_waiting_uids_the_app_exports_and_the_sensors_caches(tmp_path: Path) -> None:
    from pipelines.cachesweep import sweep_cache_temps
    from pipelines.ingest.day import sweep_ingest_temps
    from pipelines.provenance import writing_cache

    home = DataHome(tmp_path / "home")
    temps = [_temp(home.cache, name) for name in ("waiting_image_uids.json", "app_export_undated.json",
                                                  "raw_zone_said")]
    temps += [_temp(home.cache / folder, f"dt={DAY}.json") for folder in ("app_export_counts", "app_export_written")]
    temps.append(_temp(home.cache / "app_export_late", f"dt={DAY}"))
    # the exports' snapshot tickets and their clock (fix31e, fix31h; swept since their merge)
    temps += [_temp(home.cache / "app_export_snapshots", f"dt={DAY}.json"),
              _temp(home.cache / "app_export_snapshots", "clock.json")]
    keep = [_temp(home.cache / "app_export_late", "notes"), _temp(home.cache / "app_export_counts", f"dt={DAY}"),
            _temp(home.cache, "waiting_image_uids.json.old")]
    with writing_cache(home):        # a live writer: nothing swept
        assert sweep_cache_temps(home) == [] and all(t.exists() for t in temps)
    assert sweep_ingest_temps(home) == []
    assert not any(t.exists() for t in temps)
    assert all(k.exists() for k in keep)


def _writes_only_under_the_lock(home: DataHome, write, written: Path) -> None:
    """``write()`` waits while the cache-writers lock is held exclusively (a sweep), then writes ``written``."""
    thread = threading.Thread(target=write)

    def sweep() -> list[str]:
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not written.exists(), "it wrote while a sweep held the lock"
        return []

    home.locks.mkdir(parents=True, exist_ok=True)
    sweep_exclusively(home.locks / CACHE_WRITERS_LOCK, "the cache writers", sweep)
    thread.join(30)
    assert not thread.is_alive() and written.exists()


def test_the_waiting_index_and_the_app_exports_caches_write_under_the_cache_writers_lock(tmp_path: Path) -> None:
    from pipelines.appdb import export
    from pipelines.ingest.waiting import WaitingIndex

    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    index = WaitingIndex(home)
    index.known[DAY] = {"stat": "1:2:3:4", "count": 0}
    index.changed = True
    _writes_only_under_the_lock(home, index.save, home.cache / "waiting_image_uids.json")
    assert WaitingIndex(home).known == {DAY: {"stat": "1:2:3:4", "count": 0}}
    _writes_only_under_the_lock(home, lambda: export.mark_late(home, DAY, True),
                                home.cache / export.LATE_MARKERS / f"dt={DAY}")
    assert export.late_days(home) == [DAY]
    _writes_only_under_the_lock(home, lambda: export._save_undated(home, {"users": {7: None}}),
                                home.cache / export.UNDATED_STATE)
    counts = home.cache / export.COUNTS_CACHE / f"dt={DAY}.json"
    _writes_only_under_the_lock(home, lambda: export._write_counts_cache(home, counts, {}), counts)


def test_the_waiting_index_writes_nothing_where_the_lock_cannot_be_taken(tmp_path: Path) -> None:
    from pipelines.ingest.waiting import WaitingIndex

    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.locks / CACHE_WRITERS_LOCK).mkdir(parents=True)      # no sweep can run either: a cache written later
    index = WaitingIndex(home)
    index.known[DAY] = {"stat": "1:2:3:4", "count": 0}
    index.changed = True
    index.save()
    assert not (home.cache / "waiting_image_uids.json").exists() and not index.changed
    assert os.listdir(home.cache) == []
