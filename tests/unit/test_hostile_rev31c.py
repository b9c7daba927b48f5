"""Hostile review rev31c: the process lifecycle added by fix30c: ``pipelines/features/beamworker.py`` (Beam's SDK
worker subprocesses, ``_StoppableWorker`` / ``StoppableSubprocessSdkWorkerHandler``), ``formats/processes.py``
(``die_with_parent``, ``worker_pool``), ``pipelines/cachesweep.py`` (cache temporary files swept under the
cache-writers lock) and ``dagster_project/cli.py`` (``TERMINABLE``, SIGTERM / SIGHUP handling, exit codes).

Reviewed by running the real CLI (``python -m dagster_project.cli build`` / ``simulate`` / ``serve``: Dagster, Beam's
DirectRunner in ``multi_processing`` mode, DuckDB) on small simulated homes (``test_hostile_rev30c``'s home, features
on Beam's worker processes) in their own sessions, signalled from outside at fixed delays and at the moment chosen
processes of the group appeared; single processes of the group (a Beam SDK worker, a spawn worker of the
simulator) SIGKILLed alone as the OOM killer does; and a cache writer SIGKILLed just before its rename.

Checked and found sound (no test here):
- SIGTERM to the build's pid 3 s after its Beam workers appeared: 143 "terminated" in 3.8 s, nothing of the group
  left; SIGTERM to the whole group (a service manager's control-group stop) 4, 9 and 15 s into a build and 2 s
  after the workers appeared: 143 in 1.4-5 s, nothing left, no traceback; Ctrl-C twice (0.3 s apart) to the
  group 3 s after the workers appeared: 130 "interrupted" in 4 s, nothing left;
- ``pickapic simulate`` given SIGTERM twice (20 ms / 10 ms apart) while rendering: 143, no process left (a second
  SIGTERM 200 ms later, after the command had returned, ends it by the signal, -15: the documented default);
- ``pickapic serve`` given SIGTERM: exit 0 in 22 s, webserver, daemon and both code servers gone;
- the cache sweep: every writer of the seven names it sweeps writes under ``writing_cache`` (the raw image-uid
  index under the same lock directly), and a writer's shared ``flock`` from another open keeps the sweep off.

Measured: the small home's build reaches its Beam workers 20-39 s in (2 shared CPUs); a build whose worker was
SIGKILLed as it appeared still ran 90 s later, one killed 4 s after it appeared (connected, mid-bundle) 60 s later,
each with "Exception in thread run_worker ... RuntimeError: Worker subprocess exited with return code -9".

Noticed, not filed: Beam's control / data / state / logging gRPC servers of a ``multi_processing`` run listen on
``[::]:0`` (every interface, no authentication) while it runs, as upstream Beam's do (``_StoppableWorker.run`` copies
the logging server's ``[::]:0``); ``worker_pool``'s ``die_with_parent`` initializer would end every worker of a
``forkserver`` context's pool at once (their parent is the fork server, not the pid it is given), latent while
its one caller passes ``spawn``; ``serve`` signalled while its code servers load prints Dagster's
``DagsterExecutionInterruptedError`` tracebacks; ``/dev/shm`` semaphores could not be counted (other sessions
share this machine's /dev/shm).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour.
1. A Beam SDK worker process that dies (OOM killer, a native crash) before it connects or mid-run hangs
   ``pickapic build`` for good, holding the build lock (every later build and nightly refused): ``_StoppableWorker``
   raises its RuntimeError in the ``run_worker`` thread only, and the build waits on the dead worker's control
   stream; the thread's traceback is printed. A worker that fails before it starts hangs it the same way.
2. A SIGKILL during the ingest's write of ``cache/waiting_image_uids.json`` (``WaitingIndex.save``, written when an
   earlier day lands after later ones) leaves ``.waiting_image_uids.json.<hex>.tmp`` for good: neither the ingest's
   sweep nor ``sweep_cache_temps`` names it (README section 9 says every killed writer's file is removed by its
   stage's next run).
3. A killed image-rendering worker of ``pickapic simulate`` (so ``demo``) ends the command (exit 1, nothing left)
   with ``BrokenProcessPool``'s full traceback, the project's sign of a bug, instead of one
   ``pickapic simulate: error: ...`` line saying a worker process ended abruptly.
All three were fixed the same day (fix31c, ``tests/unit/test_fix31c.py``) and their markers removed: a dead or
unstartable worker now fails the day's features step with ``beamworker.WorkerDied`` naming its exit status (the
build exits 1 within seconds; the first test now takes about half its 79 s); the waiting cache (and the app
export's caches, and the raw-zone sensor's) write under the cache-writers lock and ``sweep_cache_temps`` sweeps
them; a pool worker that ends abruptly is ``formats.processes.WorkerProcessDied``, one line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import default_signals
from tests.fast_tmp import fast_folder
from tests.unit.test_hostile_rev30c import REPO, WORKER, WORKERS, _env, _group_members, _home, _kill_group

STARTED_IN = 300    # the small home's build reaches its Beam workers in ~20-35 s here
FAILS_IN = 45       # a build whose worker died fails within seconds; past this it is hung


def _kill_a_beam_worker(home, log: Path, delay: float) -> tuple[int | None, str, list[bytes]]:
    """Run `pickapic build` on ``home`` in its own session; ``delay`` s after its first Beam SDK worker process
    appears, SIGKILL that worker alone (as the OOM killer does). Returns (the build's exit code, or None when it had
    not ended FAILS_IN s later; its output; the command lines of its group still alive then)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home.root)],
                                cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs here
    try:
        deadline = time.monotonic() + STARTED_IN
        workers: list[int] = []
        while proc.poll() is None and not workers:
            assert time.monotonic() < deadline, f"no Beam worker in {STARTED_IN}s:\n{log.read_text()[-3000:]}"
            workers = [pid for pid, command in _group_members(proc.pid) if WORKER in command]
            time.sleep(0.02)
        assert proc.poll() is None, f"the build ended before its Beam workers started:\n{log.read_text()[-3000:]}"
        time.sleep(delay)
        os.kill(workers[0], signal.SIGKILL)
        try:
            code: int | None = proc.wait(timeout=FAILS_IN)
        except subprocess.TimeoutExpired:
            code = None
        left = [command for _, command in _group_members(proc.pid)]
    finally:
        _kill_group(proc.pid)   # a hung build holds the home's build lock
        proc.wait()
    return code, log.read_text(errors="replace"), left


def test_a_beam_worker_that_dies_fails_the_build_instead_of_hanging_it(tmp_path: Path) -> None:
    with fast_folder(tmp_path) as folder:
        home = _home(folder, WORKERS)
        code, output, left = _kill_a_beam_worker(home, folder / "build.log", delay=0)
        assert code is not None, f"the build still ran {FAILS_IN}s after its Beam worker died:\n{output[-3000:]}"
        assert code == 1, f"exit {code}:\n{output[-3000:]}"
        assert "pickapic build: error:" in output and "worker" in output.lower(), output[-3000:]
        assert "Traceback" not in output and "Exception in thread" not in output, output[-3000:]
        assert left == [], left
        assert not os.path.lexists(home.datasets / "latest")


# the ingest's write of cache/waiting_image_uids.json (pipelines.ingest.waiting.WaitingIndex.save, reached when an
# earlier day lands after later ones), SIGKILLed just before its rename, as a kill of the build at that moment does
KILLED_WAITING_SAVE = r"""
import os, signal, sys
from pathlib import Path
from formats.home import DataHome
from pipelines.ingest.waiting import WaitingIndex
index = WaitingIndex(DataHome(Path(sys.argv[1])))
index.known["2023-02-13"] = {"stat": "1:2:3:4", "count": 0}
index.changed = True
os.replace = os.rename = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
index.save()
"""


def test_killed_waiting_cache_writers_temporary_file_is_swept(tmp_path: Path) -> None:
    from formats.home import DataHome
    from pipelines.cachesweep import sweep_cache_temps
    from pipelines.ingest.day import sweep_ingest_temps
    from tests.unit.test_hostile_rev29b import _temps

    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    killed = subprocess.run([sys.executable, "-c", KILLED_WAITING_SAVE, str(home.root)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = _temps(home, "cache")
    assert [Path(t).name.startswith(".waiting_image_uids.json.") for t in left] == [True], left
    # what the next ingest (under the ingest lock) and the next build run first
    sweep_ingest_temps(home)
    sweep_cache_temps(home)
    assert _temps(home, "cache") == [], "the killed waiting-cache writer's temporary file was left for good"


def test_a_killed_simulate_worker_is_one_error_line(tmp_path: Path) -> None:
    with fast_folder(tmp_path) as folder:
        log = folder / "simulate.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "simulate", "--home",
                                     str(folder / "home"), "--days", "2", "--users", "30", "--rankings-per-day", "200",
                                     "--image-size", "128"],
                                    cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs here
        try:
            deadline = time.monotonic() + STARTED_IN
            workers: list[int] = []
            while proc.poll() is None and not workers:
                assert time.monotonic() < deadline, "the simulation started no image-rendering worker"
                workers = [pid for pid, command in _group_members(proc.pid) if b"spawn_main" in command]
                time.sleep(0.02)
            assert proc.poll() is None, f"the simulation ended before its workers started:\n{log.read_text()[-3000:]}"
            os.kill(workers[0], signal.SIGKILL)     # as the OOM killer does
            code = proc.wait(timeout=FAILS_IN)
            time.sleep(2)
            left = [command for _, command in _group_members(proc.pid)]
        finally:
            _kill_group(proc.pid)
            proc.wait()
        output = log.read_text(errors="replace")
        assert code == 1, f"exit {code}:\n{output[-3000:]}"
        assert left == [], left
        assert "Traceback" not in output, output[-3000:]
        assert output.rstrip().splitlines()[-1].startswith("pickapic simulate: error: "), output[-3000:]
