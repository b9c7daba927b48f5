"""Regression tests of fix30c (review rev30c, tests/unit/test_hostile_rev30c.py): the caches' killed writers'
temporary files swept (``pipelines.cachesweep.sweep_cache_temps``) and written only under the cache-writers lock;
Beam's SDK workers stoppable (``pipelines.features.beamworker.StoppableSubprocessSdkWorkerHandler``); pools whose
workers end with the command (``formats.processes``); ``demo`` / ``simulate`` terminable."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from formats.home import DataHome
from formats.processes import worker_pool
from pipelines.cachesweep import sweep_cache_temps
from pipelines.provenance import writing_cache

REPO = Path(__file__).resolve().parents[2]
HEX = "0123456789ab"
DAY = "2023-02-13"


def _temp(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{HEX}.tmp"
    path.write_bytes(b"partial")
    return path


def _cache_temps(home: DataHome) -> list[Path]:
    return [_temp(home.cache, name) for name in ("raw_day_digests.json", "missing_blobs.json", "copied_rows.json",
                                                  "earlier_image_days.json")] + [
        _temp(home.cache / folder, f"dt={DAY}.parquet")
        for folder in ("raw_image_uids", "earlier_image_uids", "blob_identities")]


def test_cache_sweep_removes_every_cache_writers_temporary_file_and_only_those(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    temps = _cache_temps(home)
    stamp = _temp(home.cache, "build_stamp.json")
    keep = [_temp(home.cache, "settings.json"), _temp(home.cache / "blob_identities", "notes.txt"),
            _temp(home.cache / "raw_image_uids", f"dt={DAY}.json"), home.cache / "missing_blobs.json"]
    keep[-1].write_text("{}")
    assert sweep_cache_temps(home) == []
    assert not any(t.exists() for t in temps)
    assert stamp.exists()                                   # the build stamp's: only where the build names it
    assert sweep_cache_temps(home, also=[home.cache / "build_stamp.json"]) == []
    assert not stamp.exists() and all(k.exists() for k in keep)


def test_cache_sweep_leaves_a_live_writers_file(tmp_path: Path) -> None:
    """While any writer holds the cache-writers lock (shared: another open of it, as another process's) nothing is
    swept; once it is free, the killed writers' files go."""
    home = DataHome(tmp_path / "home")
    temps = _cache_temps(home)
    with writing_cache(home) as held:
        assert held
        assert sweep_cache_temps(home) == []
        assert all(t.exists() for t in temps)
    sweep_cache_temps(home)
    assert not any(t.exists() for t in temps)


def test_ingest_sweep_sweeps_the_new_caches_too(tmp_path: Path) -> None:
    from pipelines.ingest.day import sweep_ingest_temps

    home = DataHome(tmp_path / "home")
    temps = _cache_temps(home)
    assert sweep_ingest_temps(home) == []
    assert not any(t.exists() for t in temps)


def test_build_stamp_and_caches_write_under_the_cache_writers_lock(tmp_path: Path) -> None:
    """A writer whose lock file cannot be opened (a folder at ``.locks/cache-writers.lock``) writes nothing: proof
    it writes only under the lock; with the lock usable it writes as before."""
    from dagster_project.buildstamp import STAMP, write_stamp
    from formats.locks import CACHE_WRITERS_LOCK

    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.locks / CACHE_WRITERS_LOCK).mkdir(parents=True)
    write_stamp(home, "key")
    assert not (home.cache / STAMP).exists()
    (home.locks / CACHE_WRITERS_LOCK).rmdir()
    write_stamp(home, "key")
    assert (home.cache / STAMP).exists()


def _square(x: int) -> int:
    return x * x


def _sleep(x: float) -> float:
    time.sleep(x)
    return x


def test_worker_pool_works_and_is_stopped_at_once_when_its_block_raises() -> None:
    context = multiprocessing.get_context("spawn")
    with worker_pool(2, context) as pool:
        assert list(pool.map(_square, range(20), chunksize=4)) == [x * x for x in range(20)]
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with worker_pool(2, context) as pool:
            futures = [pool.submit(_sleep, 30) for _ in range(6)]
            while not any(f.running() for f in futures):
                time.sleep(0.05)
            processes = list(pool._processes.values())
            raise KeyboardInterrupt
    assert processes and not any(p.is_alive() for p in processes)
    assert time.monotonic() - started < 25    # not the 90 s of the queued work (a bound, not a timing)


def test_die_with_parent_ends_a_child_whose_parent_is_gone() -> None:
    """A worker that starts after its parent died ends at once (nothing would send it the death signal)."""
    code = subprocess.run([sys.executable, "-c", "from formats.processes import die_with_parent; "
                           "die_with_parent(1 if __import__('os').getppid() != 1 else 2); print('alive')"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=60)
    assert code.returncode == 1 and "alive" not in code.stdout
    code = subprocess.run([sys.executable, "-c", "import os; from formats.processes import die_with_parent; "
                           "die_with_parent(os.getppid()); print('alive')"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=60)
    assert code.returncode == 0 and code.stdout.strip() == "alive"


def test_beam_subprocess_workers_are_stoppable() -> None:
    from apache_beam.portability import python_urns
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    from pipelines.features import beamworker

    constructor, _ = worker_handlers.WorkerHandler._registered_environments[python_urns.SUBPROCESS_SDK]
    assert constructor is beamworker.StoppableSubprocessSdkWorkerHandler
    worker = beamworker._StoppableWorker(f"{sys.executable} -m {beamworker.QUIET_WORKER_MODULE}".encode(),
                                         "localhost:1", None, "worker_x")
    worker.stop()            # stopped before it started: its thread ends at once, starting nothing, no error
    worker.run()
    assert worker._process is None


def test_demo_and_simulate_are_terminable() -> None:
    from dagster_project.cli import TERMINABLE

    assert {"demo", "simulate", "build"} <= set(TERMINABLE)
