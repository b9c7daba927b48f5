"""The data home's Dagster storages connect through kept SQLAlchemy engines (``dagster_project.instance._Engines``):
one engine per SQLite database and process, the most recent ``MAX`` kept. Dagster made a new engine, and set up its
dialect and compiled statements again, for each of a build's ~1,000 events. Since the thirty-fourth session each
engine also keeps one SQLite connection open between uses, with ``synchronous = NORMAL`` on a WAL database: opening
and closing the only connection of a WAL database created, fsynced and deleted its ``-wal`` / ``-shm`` files each
time, six times an event, and each commit waited for an fsync. The webserver's watch of a run's events follows the
``-wal`` file."""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import text

from dagster_project.build import use_home
from dagster_project.instance import ENGINES, CheckedSqliteRunStorage, KeptEngineSqliteEventLogStorage, _Engines
from formats.home import DataHome


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_one_engine_per_database_the_most_recent_kept(tmp_path: Path) -> None:
    engines = _Engines()
    first = engines.get(_url(tmp_path / "a.db"), 30)
    assert engines.get(_url(tmp_path / "a.db"), 30) is first
    for i in range(_Engines.MAX + 3):
        engines.get(_url(tmp_path / f"{i}.db"), 30)
    assert len(engines._kept) == _Engines.MAX
    assert engines.get(_url(tmp_path / "a.db"), 30) is not first      # forgotten, then made again


def test_one_connection_is_kept_and_every_commit_is_seen_by_other_connections(tmp_path: Path) -> None:
    engines = _Engines()
    engine = engines.get(_url(tmp_path / "a.db"), 30)
    with engine.connect() as one:
        one.execute(text("PRAGMA journal_mode=WAL"))
        one.execute(text("CREATE TABLE t (x INTEGER)"))
        one.commit()
        first = one.connection.dbapi_connection
    for i in range(3):
        with engine.connect() as conn, conn.begin():
            assert conn.connection.dbapi_connection is first          # the same SQLite connection, kept
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1   # NORMAL, once the database is WAL
            conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
        with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as other:   # another reader (the webserver)
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == i + 1
    assert (tmp_path / "a.db-wal").exists()
    engines.close_all()
    with pytest.raises(sqlite3.ProgrammingError):     # closed: nothing kept open
        first.execute("SELECT 1")
    # the last connection's close checkpoints: the .db file alone holds everything, no -wal / -shm left
    assert not (tmp_path / "a.db-wal").exists() and not (tmp_path / "a.db-shm").exists()
    alone = tmp_path / "copy.db"
    alone.write_bytes((tmp_path / "a.db").read_bytes())
    with contextlib.closing(sqlite3.connect(alone)) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    with engine.connect() as again:                   # the engine stays usable
        assert again.execute(text("SELECT count(*) FROM t")).scalar() == 3


def test_a_database_not_in_wal_mode_keeps_its_synchronous_setting(tmp_path: Path) -> None:
    engine = _Engines().get(_url(tmp_path / "a.db"), 30)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2            # FULL, SQLite's default


def test_a_second_thread_gets_a_connection_of_its_own(tmp_path: Path) -> None:
    import threading

    engine = _Engines().get(_url(tmp_path / "a.db"), 30)
    seen = []
    with engine.connect() as held:
        held.execute(text("SELECT 1"))

        def other() -> None:
            with engine.connect() as conn:
                seen.append((conn.execute(text("SELECT 2")).scalar(), conn.connection.dbapi_connection))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(30)
        assert seen and seen[0][0] == 2 and seen[0][1] is not held.connection.dbapi_connection


def test_an_engine_pushed_out_is_closed(tmp_path: Path) -> None:
    engines = _Engines()
    first = engines.get(_url(tmp_path / "a.db"), 30)
    with first.connect() as conn:
        kept = conn.connection.dbapi_connection
    for i in range(_Engines.MAX):
        engines.get(_url(tmp_path / f"{i}.db"), 30)
    with pytest.raises(sqlite3.ProgrammingError):
        kept.execute("SELECT 1")


def test_a_forked_child_sets_its_parents_engines_aside(tmp_path: Path) -> None:
    """The module's ``ENGINES`` in a forked child (a shard writer, an ingest worker): empty, the parent's engines
    neither used nor closed (SQLite: never close a connection a fork inherited), and the parent's still work."""
    parent = ENGINES.get(_url(tmp_path / "a.db"), 30)
    with parent.connect() as conn:
        conn.execute(text("SELECT 1"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = not ENGINES._kept and ENGINES._inherited and ENGINES.get(_url(tmp_path / "a.db"), 30) is not parent
            ENGINES.close_all()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    with parent.connect() as conn:
        assert conn.execute(text("SELECT 2")).scalar() == 2
    ENGINES.close_all()


def test_a_forked_child_gets_engines_of_its_own(tmp_path: Path) -> None:
    engines = _Engines()
    parent = engines.get(_url(tmp_path / "a.db"), 30)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: its own engine, which works
        try:
            child = engines.get(_url(tmp_path / "a.db"), 30)
            with child.connect() as conn:
                ok = conn.execute(text("SELECT 1")).scalar() == 1
            os.write(write, b"1" if ok and child is not parent else b"0")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)


def test_a_homes_instance_stores_and_reads_runs_and_events_through_kept_engines(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert isinstance(instance.run_storage, CheckedSqliteRunStorage)
        assert isinstance(instance.event_log_storage, KeptEngineSqliteEventLogStorage)
        runs = [dg.materialize([one], instance=instance).run_id for _ in range(3)]
        assert all(instance.get_run_by_id(run).status == dg.DagsterRunStatus.SUCCESS for run in runs)
        assert len(instance.fetch_materializations(dg.AssetKey("one"), limit=10).records) == 3
        for run in runs:
            assert any(e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS
                       for e in instance.all_logs(run))
        kept = {url for pid, url in ENGINES._kept if pid == os.getpid()}
        assert any(url.endswith("runs.db") for url in kept)
        assert any(url.endswith(f"{runs[-1]}.db") for url in kept)


def test_a_watch_of_a_runs_events_sees_each_new_event(fast_tmp: Path, env_kept) -> None:
    """The webserver follows a running run through Dagster's watch of the run's event database file (a watchdog on
    ``<run id>.db``): an event stored through a kept connection reaches the ``-wal`` file, and the ``.db`` file only
    at the next checkpoint, so the watch follows the ``-wal`` file too."""
    import threading

    home = DataHome(fast_tmp / "home")
    use_home(home)

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run_id = dg.materialize([one], instance=instance).run_id
        run = instance.get_run_by_id(run_id)
        seen = threading.Event()
        messages: list[str] = []

        def callback(entry, cursor) -> None:
            message = entry.dagster_event.message if entry.dagster_event else entry.user_message
            messages.append(message)
            if "watched note" in (message or ""):
                seen.set()

        storage = instance.event_log_storage
        cursor = str(storage.get_records_for_run(run_id).cursor)
        storage.watch(run_id, cursor, callback)
        try:
            instance.report_engine_event("watched note", run)
            assert seen.wait(20), f"the watch saw {messages}"
        finally:
            storage.end_watch(run_id, callback)


def test_settings_a_user_changes_on_a_kept_connection_are_put_back(tmp_path: Path) -> None:
    """``coordinator.scrub_refused_run`` sets ``busy_timeout`` (down to 1 ms in its checkpoint loop) and
    ``secure_delete`` for its own work: a kept connection gives the next user the engine's own values again."""
    engine = _Engines().get(_url(tmp_path / "a.db"), 30)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        secure = conn.execute(text("PRAGMA secure_delete")).scalar()
        conn.execute(text("PRAGMA busy_timeout = 1"))
        conn.execute(text(f"PRAGMA secure_delete = {1 - secure}"))
        first = conn.connection.dbapi_connection
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA secure_delete")).scalar() == secure
