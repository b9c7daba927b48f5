"""Hostile review (rev21g) of commits 3cf91e7 and 15d4e0c: the rebuild sensor's run key
``rebuild-<publish version>-after-<storage id of the last publish>``, and the runs of a killed `pickapic build`
(``build_running``, ``unfinished_runs``, ``unfinished_partitions`` in ``dagster_project/automation.py``;
``_fail_dead_build_runs`` in ``dagster_project/build.py``), as a deployment running ``pickapic serve`` for a year,
with other accounts around, would meet them.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Builds are real processes holding the
real build lock (``build.build_lock``); runs are recorded in a real temp ``DagsterInstance``; the sensor is ticked
with ``evaluate_tick`` as in ``test_hostile_rev21f.py``.

What held up:
- the run key: it changes only when ``published_dataset`` gets a new materialization, so a quiet home asks the
  same key on every tick (the daemon drops the repeats: one run, not one per tick), a failed rebuild (no publish)
  is asked once, and a state reached twice (A, B, A) gets a new key;
- ``_fail_dead_build_runs`` runs under the build lock, after it is taken: a second build waiting with ``--wait``
  records its pid and fails runs only once the first build has exited (its runs are finished or dead by then);
  only ``build._execute`` sets the ``pickapic build`` tag in this code base (the demo goes through ``build``);
- a hostile lock file at ``HOME/.build.lock`` that is a symbolic link, a FIFO or over 64 bytes: the sensor reads it
  with ``read_small_file`` (no follow, ``O_NONBLOCK``, size-capped) and neither hangs nor follows it; a build is
  refused by such a file anyway, so "no build running" is right;
- a record caught empty between ``record_holder``'s ``ftruncate`` and ``pwrite`` reads as "not running" for an
  instant, when the runs it could hide are those of the dead build the new one is replacing;
- CANCELING now holds the sensor and the nightly back, and ``_fail_dead_build_runs`` fails a CANCELING run of a dead
  build; a daemon run left CANCELING by a dead worker holds them back until forced terminated in the UI, the same
  documented limit as a daemon run left STARTED (README "Jobs, schedules and sensors").
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import dagster as dg

from dagster_project import automation
from formats.home import DataHome
from tests.unit.test_automation import DAYS, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import _features_changed, _rebuild_started, _sensor_requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# a `pickapic build` holding the home's build lock exactly as build.build() takes it, until its stdin closes
HOLD_BUILD_LOCK = ("import sys\nfrom pathlib import Path\nfrom formats.home import DataHome\nfrom dagster_project.build import build_lock\n"
                   "with build_lock(DataHome(Path(sys.argv[1]))):\n    print('held', flush=True)\n    sys.stdin.read()\n")

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _build_holding_lock(home: DataHome) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_BUILD_LOCK, str(home.root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=_env(), cwd=REPO)
    assert proc.stdout.readline() == b"held\n"
    return proc


def _build_run_started(instance) -> dg.DagsterRun:
    """The rebuild run a `pickapic build` is running (execute_in_process: STARTED, tagged by build._execute)."""
    return _rebuild_started(instance, tags={automation.BUILD_TAG: automation.BUILD_TAG_VALUE})


def _stale_globals(home, instance) -> None:
    """Built, then day 2 delivered anew and ingested: the plan wants exactly a rebuild."""
    _pretend_built(home, instance, _plan(home, instance))
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')
    assert [r.job for r in _plan(home, instance).runs] == ["rebuild_dataset_job"]


# --- 1. a live build in another PID namespace is taken for dead: a second rebuild beside it ----------------------
#
# automation.py build_running(): liveness is `os.kill(<pid recorded in .build.lock>, 0)`, ProcessLookupError ->
# "not running". A pid is only meaningful in the PID namespace that wrote it: a `pickapic build` run on the host
# (or in another container, or on another host sharing the home over NFS, where the build lock's flock still
# works) while `pickapic serve` runs in a container records a pid the daemon cannot see. unfinished_runs() then
# leaves the live build's STARTED rebuild out (automation.py unfinished_runs, the `not build_running(home)`
# filter) and rebuild_sensor requests a second global run that writes curation/splits/publish beside it (the
# nightly likewise: unfinished_partitions drops its None). The flock the build holds says it is running; the
# project already trusts the flock over pids across namespaces for the export's staging folder (README "whatever
# PID namespace the export runs in").
# Input: a real process holding build.build_lock(home) (pid recorded), its rebuild run STARTED; build_running
# evaluated in a new PID namespace (`unshare --pid --fork`, as a containerized daemon). Outcome: False (in this
# namespace: True), so the sensor's unfinished runs are [] and it asks a rebuild.

def test_a_build_the_daemon_cannot_see_by_pid_still_counts_as_running(home, instance):
    # Fixed: build_running() asks the flock. Here the record names a pid that is gone in this namespace (what a
    # daemon in a container, or on another host, sees of a live build); the flock still says running.
    _stale_globals(home, instance)
    build = _build_holding_lock(home)
    try:
        _build_run_started(instance)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        fd = os.open(home.lock_file, os.O_WRONLY)
        try:
            os.pwrite(fd, f"{gone.pid}\n".encode().ljust(len(home.lock_file.read_bytes())), 0)
        finally:
            os.close(fd)
        assert automation.build_running(home), "a build holding the lock, taken for dead by its recorded pid"
        assert _sensor_requests(home, instance, {}) == []
    finally:
        build.stdin.close()
        build.wait(timeout=60)


# --- 2. a killed build whose pid names another live process holds everything back for good -------------------
#
# The other side of the same check: a `pickapic build` killed (container OOM-killed, SIGKILL, a reboot) leaves its
# pid in .build.lock, and the lock itself is free (the kernel drops a dead holder's flock), but build_running() asks
# only whether *some* process has that pid. A build run as a container's entrypoint is pid 1 there and records
# "1"; the daemon's pid 1 (init) always exists, so the killed build's STARTED run counts as running forever: the
# rev21f defect ("a dead STARTED run blocks rebuilds forever") is back for every containerized build, and after a
# reboot for any build whose pid was handed to another process (pids restart at boot). README "Jobs, schedules
# and sensors": "it is not counted while the home's build lock names no live process" / "(SIGKILL, the OOM killer, a
# reboot)".
# Input: a real build_lock taken by a process in a new PID namespace (records "1"), SIGKILLed; its rebuild run
# STARTED; day 2 ingested anew. Outcome: build_running True although nothing holds the lock; 3 ticks: [] with
# "a rebuild is queued or running"; the nightly's busy set holds None (no rebuild either).

def test_a_killed_build_whose_pid_is_reused_does_not_hold_back_rebuilds(home, instance):
    # Fixed: build_running() asks the flock. Here a build holding the lock is SIGKILLed and its record then names
    # pid 1 (a containerized build's pid, or any pid reused after a reboot): nobody holds the lock.
    _stale_globals(home, instance)
    build = _build_holding_lock(home)
    _build_run_started(instance)
    os.kill(build.pid, signal.SIGKILL)                            # OOM-killed
    build.wait(timeout=60)
    build.stdin.close()
    home.lock_file.write_bytes(b"1\n")                            # the pid it recorded, now another live process's
    state: dict = {}
    seen = {"build_running": automation.build_running(home),
            "requests": sum(len(_sensor_requests(home, instance, state)) for _ in range(3)), "skip": state["skip"],
            "nightly_busy": automation.unfinished_partitions(instance, home)}
    assert seen == {"build_running": False, "requests": 1, "skip": None, "nightly_busy": set()}


# --- 3. a pid too big for os.kill crashes the sensor and the nightly on every tick ------------------------------
#
# build_running() accepts any run of ASCII digits up to 64 bytes as a pid and passes int(pid) to os.kill, which
# raises OverflowError (not OSError) above 2**31 - 1; only ProcessLookupError and OSError are caught. A lock file
# holding "2147483648" (its writer: anyone who may write the home's lock file, 0666 & ~umask, group-writable under
# the shared home's umask 002; record_holder itself accepts such a record, digits of at most 32 bytes, and would
# only overwrite it at the next build) makes every tick of rebuild_when_inputs_change, raw_partition_sensor and the
# nightly raise while a `pickapic build` run is unfinished, instead of judging the build not running (the lock is
# free) or unknown.
# Input: .build.lock = b"2147483648\n", nobody holding it; a STARTED `pickapic build` rebuild run. Outcome:
# OverflowError: signed integer is greater than maximum, from automation.py build_running (os.kill) via
# unfinished_runs, in rebuild_sensor's first lines.

def test_a_huge_pid_in_the_lock_file_does_not_crash_the_sensor(home, instance):
    _stale_globals(home, instance)
    _build_run_started(instance)
    home.lock_file.write_bytes(b"2147483648\n")
    automation.build_running(home)
    automation.unfinished_partitions(instance, home)
    _sensor_requests(home, instance, {})


# --- 4. a build lock the daemon's account may not read counts as "no build", not as "unknown" --------------------
#
# build_running()'s docstring: "an unknown or unreadable record counts as alive". The code returns False for an
# unreadable one: read_small_file() answers None for a file it cannot open (EACCES) exactly as for a missing one,
# and `if record is None: return False` (automation.py build_running, first lines). The daemon runs as the home's
# account (`pickapic`, README's systemd unit); a `pickapic build` run by root or an operator's account whose umask
# is 077 (a hardened root) creates .build.lock 0600 (0666 & ~umask, formats/locks.py open_lock_file). While that
# build runs, the daemon cannot read the record, takes the build for gone, leaves its STARTED rebuild out and
# requests a second global rebuild beside it.
# Input: a real process holding build.build_lock(home) with umask 077 (lock file 0600, root's); build_running
# evaluated by a child that dropped to the `nobody` account (as tests/e2e/test_permissions.py does). Outcome: False.

def test_a_build_lock_the_daemon_cannot_read_counts_as_a_running_build(home, monkeypatch):
    # Fixed: an unreadable lock file counts as a running build (unknown). The suite runs as root, which reads
    # any file, so the open is refused as the kernel refuses another account's 0600 file (EACCES).
    home.lock_file.write_bytes(b"123\n")
    real_open = os.open

    def refused(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(home.lock_file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    assert automation.build_running(home) is True
