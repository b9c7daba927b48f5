"""Hostile review rev27c of fix27u (commit dc77d58, merged as 3d2d39b): a `pickapic build` run can be re-executed
from the UI.

Reviewed: ``dagster_project/instance.py`` (``CheckedSqliteRunStorage``: ``_storable`` -> ``_with_build_origin``,
which gives a build's run the home's job origin and code-location tag and drops the build tag from a run launched
with an origin; ``give_build_runs_an_origin``, which rewrites old finished build runs' ``run_body`` and inserts
their tag rows by raw SQL), ``dagster_project/build.py`` (``give_old_build_runs_an_origin``, run by every
``pickapic build``, ``serve`` and ``ui``), ``cli.py``, ``serve.py``, ``launcher.py``.

Run against a real Dagster instance on a temporary home (the home's ``dagster.yaml``, ``PickapicInstance``,
``CheckedSqliteRunStorage``, SQLite in WAL mode). Checked and found sound (no test here): UI re-execution through
a real workspace (``launchPipelineReexecution`` on a ``WorkspaceProcessContext`` of ``dagster_project.definitions``)
ALL_STEPS and FROM_FAILURE of a build run with an asset selection (queued, selection kept, build tag dropped), a
migrated run of a job no longer in the location (a clean ``PipelineNotFoundError``), run deletion (tag rows go),
the cost of the migration (20,000 old runs: about 5 s once, then about 60 ms per start), in-process re-execution
(``execute_job`` with ``ReexecutionOptions`` copies no tag).

The migration reads the runs to change outside any transaction (pysqlite begins one only at the first UPDATE) and
guards each UPDATE only by the run's status, so whatever another process writes between the read and the write is
not seen: two processes migrating at once (a build and ``pickapic serve`` / ``ui`` started together, the first
start after an upgrade) both change every run, and a tag added meanwhile is lost from the run's body. One run body
this Dagster cannot read stops every build, serve and ui with a traceback.

All three fixed the same day: the migration takes the write lock (``BEGIN IMMEDIATE``) before it reads, and skips a
run body it cannot read.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading

import dagster as dg
import pytest
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.tags import CODE_LOCATION_TAG, REPOSITORY_LABEL_TAG

import dagster_project.instance as instance_module
from dagster_project import automation
from dagster_project.build import RUN_CONFIG_DATABASE, give_old_build_runs_an_origin, use_home
from dagster_project.instance import give_build_runs_an_origin, home_job_origin
from dagster_project.serve import MODULE
from formats.home import DataHome

BUILD = {automation.BUILD_TAG: automation.BUILD_TAG_VALUE, "pickapic/why": "ingest: never built"}
LABEL = f"__repository__@{MODULE}"


@pytest.fixture
def home(tmp_path):
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    home = DataHome(tmp_path / "home")
    use_home(home)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def instance(home):
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        yield instance


def _old_build_runs(instance, count: int) -> list[str]:
    """Finished build runs as a version before fix27u stored them: no origin, no code-location tag."""
    ids = []
    for i in range(count):
        run = dg.DagsterRun(job_name="daily_partition_job", status=dg.DagsterRunStatus.SUCCESS,
                            tags={**BUILD, "dagster/partition": f"2023-02-1{i}"})
        SqliteRunStorage.add_run(instance.run_storage, run)
        ids.append(run.run_id)
    return ids


def _meanwhile(monkeypatch, action) -> list[threading.Thread]:
    """Run ``action(run)`` in another thread (as another process would) once, while the migration is between its
    read of the runs and its write of the first one; wait up to 5 s for it (a migration that holds the database
    for its read-modify-write keeps it waiting: it then finishes after the migration)."""
    real = instance_module._with_build_origin
    started: list[threading.Thread] = []

    def hooked(run):
        if not started:
            thread = threading.Thread(target=action, args=(run,))
            started.append(thread)
            thread.start()
            thread.join(timeout=5)
        return real(run)

    monkeypatch.setattr(instance_module, "_with_build_origin", hooked)
    return started


def test_two_migrations_at_once_list_every_old_build_run_twice(home, instance, monkeypatch):
    ids = _old_build_runs(instance, 3)
    threads = _meanwhile(monkeypatch, lambda run: give_old_build_runs_an_origin(home))   # serve / ui meanwhile
    give_build_runs_an_origin(instance)                                                  # the build's own
    for thread in threads:
        thread.join()
    monkeypatch.undo()

    with sqlite3.connect(home.dagster_home / RUN_CONFIG_DATABASE) as db:
        doubled = db.execute("SELECT run_id, key, COUNT(*) FROM run_tags GROUP BY run_id, key "
                             "HAVING COUNT(*) > 1").fetchall()
    assert doubled == []
    in_location = [run.run_id for run in instance.get_runs(filters=dg.RunsFilter(tags={REPOSITORY_LABEL_TAG: LABEL}))]
    assert sorted(in_location) == sorted(ids)
    assert instance.get_runs_count(filters=dg.RunsFilter(tags={CODE_LOCATION_TAG: MODULE})) == len(ids)


def test_one_unreadable_old_run_stops_build_serve_and_ui(home, instance):
    unreadable, readable = _old_build_runs(instance, 2)
    database = home.dagster_home / RUN_CONFIG_DATABASE
    with sqlite3.connect(database) as db:
        body = json.loads(db.execute("SELECT run_body FROM runs WHERE run_id = ?", (unreadable,)).fetchone()[0])
        body["__class__"] = "DagsterRunOfANewerDagster"
        db.execute("UPDATE runs SET run_body = ? WHERE run_id = ?", (json.dumps(body), unreadable))
    with sqlite3.connect(database) as db:
        before = db.execute("SELECT run_body FROM runs WHERE run_id = ?", (unreadable,)).fetchone()[0]

    give_old_build_runs_an_origin(home)              # what serve and ui run before the UI starts
    give_old_build_runs_an_origin(home, instance)    # what a build runs on its instance

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT run_body FROM runs WHERE run_id = ?", (unreadable,)).fetchone()[0] == before
    assert instance.get_run_by_id(readable).remote_job_origin == home_job_origin("daily_partition_job")


def test_a_tag_added_while_the_migration_runs_is_lost_from_the_run(home, instance, monkeypatch):
    (run_id,) = _old_build_runs(instance, 1)

    def add_tag(run):
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as other:      # the UI's webserver meanwhile
            other.add_run_tags(run.run_id, {"reviewed": "yes, by alice"})

    threads = _meanwhile(monkeypatch, add_tag)
    give_build_runs_an_origin(instance)
    for thread in threads:
        thread.join()
    monkeypatch.undo()

    with sqlite3.connect(home.dagster_home / RUN_CONFIG_DATABASE) as db:     # the tag row is there either way
        assert ("reviewed", "yes, by alice") in db.execute("SELECT key, value FROM run_tags WHERE run_id = ?",
                                                           (run_id,)).fetchall()
    assert instance.get_run_by_id(run_id).tags.get("reviewed") == "yes, by alice"     # what the run page shows
