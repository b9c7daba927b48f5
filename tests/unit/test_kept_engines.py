"""The data home's Dagster storages connect through kept SQLAlchemy engines (``dagster_project.instance._Engines``):
one engine per SQLite database and process, the most recent ``MAX`` kept, every connection still a new SQLite
connection (``NullPool``). Dagster made a new engine, and set up its dialect and compiled statements again, for each
of a build's ~1,000 events."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from dagster_project.build import use_home
from dagster_project.instance import (
    ENGINES,
    CheckedSqliteRunStorage,
    KeptEngineSqliteEventLogStorage,
    KeptEngineSqliteScheduleStorage,
    _Engines,
)
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


def test_every_connection_is_a_new_sqlite_connection(tmp_path: Path) -> None:
    engine = _Engines().get(_url(tmp_path / "a.db"), 30)
    assert isinstance(engine.pool, NullPool)
    with engine.connect() as one:
        first = one.connection.dbapi_connection
    with engine.connect() as two:
        assert two.connection.dbapi_connection is not first
    with pytest.raises(sqlite3.ProgrammingError):     # closed when released: nothing kept open
        first.execute("SELECT 1")


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
        assert isinstance(instance.schedule_storage, KeptEngineSqliteScheduleStorage)
        assert instance.all_instigator_state() == []                # the schedule storage reads through its engine
        runs = [dg.materialize([one], instance=instance).run_id for _ in range(3)]
        assert all(instance.get_run_by_id(run).status == dg.DagsterRunStatus.SUCCESS for run in runs)
        assert len(instance.fetch_materializations(dg.AssetKey("one"), limit=10).records) == 3
        for run in runs:
            assert any(e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS
                       for e in instance.all_logs(run))
        kept = {url for pid, url in ENGINES._kept if pid == os.getpid()}
        assert any(url.endswith("runs.db") for url in kept)
        assert any(url.endswith(f"{runs[-1]}.db") for url in kept)
        assert any(url.endswith("schedules.db") for url in kept)

