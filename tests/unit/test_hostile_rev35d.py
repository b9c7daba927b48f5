"""Hostile review rev35d: a second pass over the thirty-fifth session's anchor connections of the home's Dagster
storages (``dagster_project.instance._Engines``: an idle ``sqlite3`` connection per kept engine's WAL database,
``_open_anchor`` / ``close_anchors`` / ``forget_inherited``, closed at drop, ``atexit`` and before a fork;
``KeptEngineSqliteScheduleStorage``), against README "Jobs, schedules and sensors" ("Since the thirty-fifth session
each kept engine's database also has an anchor").

How: real SQLite (3.40.1) and a real Dagster instance on a home made by ``use_home`` (``PickapicInstance``), with
real subprocesses: another process storing runs while this one held anchors; a second account of the home's group (``setpriv --reuid 54321 --regid 0``) writing the home's
databases while the process that made the home still ran; Dagster's own live event watch
(``SqliteEventLogStorage.watch``: the watchdog the UI's run page subscription, ``instance.watch_event_logs``, uses)
while events were stored; plain ``_Engines`` with thousands of uses and hundreds of databases.

Held up (no test): a fork while another thread held a just-opened anchor not yet recorded (the window widened with
a sleep): the child's commits made before and after the parent closed its anchors were all in the database. A home moved away and restored from a copy (``mv`` + ``cp -a``) while an anchor was open: the
anchor's close does not checkpoint or delete the restored copy's -wal (SQLite's ``databaseIsUnmoved`` check: the copy
kept all 5 committed rows, read by another process before and after); file descriptors: 3,000 uses of one database
kept 4 more fds open (SQLite's pending fds are reused), 8 threads x 300 uses 11, 200 databases back to 30 and 8
anchors (``MAX``); with plain ``_Engines`` (no other open of the file) every read saw another process's commits; a refused run's scrub's
TRUNCATE checkpoint completes beside an anchor (fix25g/fix25j, own35 tests).

Measured: a process that made a new home (``use_home``: its instance anchors runs.db, then ``give_mode`` and
``_no_access_for_others`` open and close runs.db, dropping this process's POSIX locks on it) then read its runs after
another process had stored runs twice: ``database disk image is malformed`` (runs.db itself passed
``integrity_check`` afterwards); with ``_open_anchor`` returning ``None``, or with both fixers made no-ops, every read
was right. The member's write on a new group-shared home (umask 002) while the making process held its anchors:
``sqlite3.OperationalError: attempt to write a readonly database``; the same write after ``ENGINES.close_anchors()``
succeeded. The live watch got none of 5 events stored under an anchor within 5 s, and all 5 with ``_open_anchor``
returning ``None`` (Dagster's behaviour before the anchors).

Noticed, not filed: an anchor that could not be had once (``_open_anchor`` -> ``None``, e.g. a 1 s lock wait while
another process checkpoints) is never tried again for that engine: only the economy is lost. A forked child that
opens anchors of its own and leaves by ``os._exit`` (multiprocessing's fork workers) never closes them, so -wal/-shm
files stay after such a command (recovered by the next opener: no data lost). A home deleted while a process holds an
anchor keeps the deleted database's inode (its disk space) until that engine is dropped or the process exits.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. The same day the anchor connections were withdrawn altogether (the first two defects
are in what an anchor is: a lock any other close of the file drops, and commits kept out of the database file
Dagster's live watch observes); the schedule storage's kept engine stayed. The markers are removed: the tests
now guard that no connection is held between uses (README *Jobs, schedules and sensors*).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.events.log import EventLogEntry
from dagster._core.utils import make_new_run_id

from dagster_project.build import use_home
from formats.home import DataHome


def _entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(error_info=None, level="INFO", user_message=message, run_id=run_id, timestamp=time.time())


_ADD_RUNS = """
import sys
import dagster as dg
with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    for n in range(3):
        instance.add_run(dg.DagsterRun(job_name=f"job_{n}"))
"""


def test_a_process_holding_anchors_reads_the_runs_another_process_stored(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)                                           # a new home: made, anchored, given its modes
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        seen = []
        for _ in range(3):                                   # pickapic serve's webserver, a build elsewhere storing
            subprocess.run([sys.executable, "-c", _ADD_RUNS, str(home.dagster_home)], env=env, check=True,
                           capture_output=True, timeout=120)
            seen.append(len(instance.get_runs()))
        assert seen == [3, 6, 9]


def test_a_live_event_watch_sees_the_events_stored_while_the_writer_holds_an_anchor(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        storage = instance.event_log_storage
        run_id = make_new_run_id()
        for i in range(2):                                   # the run's event database exists, in WAL mode, anchored
            storage.store_event(_entry(run_id, f"before {i}"))
        seen: list[str] = []

        def callback(entry, _cursor):
            seen.append(entry.user_message)

        storage.watch(run_id, None, callback)
        try:
            time.sleep(0.3)
            for i in range(3):
                storage.store_event(_entry(run_id, f"after {i}"))
            deadline = time.monotonic() + 4
            while "after 2" not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            storage.end_watch(run_id, callback)
        assert {"after 0", "after 1", "after 2"} <= set(seen)   # as Dagster delivers them without an anchor


def test_a_new_group_shared_homes_write_ahead_logs_carry_their_databases_mode(fast_tmp: Path, env_kept) -> None:
    old = os.umask(0o002)
    try:
        home = DataHome(fast_tmp / "home")
        use_home(home)                                       # this process now holds the databases' anchors
    finally:
        os.umask(old)
    modes = {}
    for name in ("history/runs.db", "history/runs/index.db", "schedules/schedules.db"):
        db = home.dagster_home / name
        modes[name] = stat.S_IMODE(db.stat().st_mode)
        for end in ("-wal", "-shm"):
            side = db.with_name(db.name + end)
            if side.exists():
                modes[name + end] = stat.S_IMODE(side.stat().st_mode)
    assert modes["history/runs.db"] == 0o660 and modes["schedules/schedules.db"] == 0o664
    for name, mode in modes.items():
        if name.endswith(("-wal", "-shm")):
            base = name.rsplit("-", 1)[0]
            assert mode == modes[base], (name, oct(mode), oct(modes[base]))   # the group may write them too
