"""fix27u: a `pickapic build` run is stored with its job's origin in the home's code location, so the UI can re-execute
it (dagster_project/instance.py, ``_with_build_origin``, ``give_build_runs_an_origin``); a run launched through a
workspace loses a build tag its parent's tags gave it. The real re-execution through the UI's GraphQL, launched by the
daemon: tests/e2e/test_fix27u.py.

Before: ``execute_in_process`` stores a run without ``remote_job_origin``, and the UI's *Re-execute*
(``launchRunReexecution``) answered ``dagster_shared.check.functions.CheckError: Expected non-None value: None``
(``launch_reexecution_from_parent_run``: ``check.not_none(parent_run.remote_job_origin)``; review rev21h's notes).
"""
from __future__ import annotations

import logging
import os
import time

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.tags import CODE_LOCATION_TAG, GRPC_INFO_TAG, REPOSITORY_LABEL_TAG

from dagster_project import automation
from dagster_project.build import _fail_dead_build_runs, build_lock, give_old_build_runs_an_origin, use_home
from dagster_project.coordinator import RunConfigRefused
from dagster_project.instance import give_build_runs_an_origin, home_job_origin
from dagster_project.serve import MODULE
from formats.home import DataHome

BUILD = {automation.BUILD_TAG: automation.BUILD_TAG_VALUE, "pickapic/why": "ingest: never built"}
LABEL = f"__repository__@{MODULE}"


@dg.op
def noop() -> None:
    pass


@dg.job(executor_def=dg.in_process_executor)
def tiny_job() -> None:
    noop()


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


def _labelled(instance) -> set[str]:
    """The runs the UI lists under the home's repository (its run filter reads this tag row)."""
    return {run.run_id for run in instance.get_runs(filters=dg.RunsFilter(tags={REPOSITORY_LABEL_TAG: LABEL}))}


def _start(instance, run) -> None:
    instance.handle_new_event(EventLogEntry(
        error_info=None, level=logging.INFO, user_message="", run_id=run.run_id, timestamp=time.time(),
        dagster_event=DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name)))


def test_the_home_origin_names_the_location_the_ui_loads():
    origin = home_job_origin("daily_partition_job")
    assert origin.location_name == MODULE == "dagster_project.definitions"   # serve.commands' and pickapic ui's -m
    assert origin.repository_origin.repository_name == "__repository__"
    assert origin.job_name == "daily_partition_job"


def test_a_build_run_executed_in_process_is_stored_with_the_home_origin(instance):
    # what build._execute does: execute_in_process on the home's instance, tagged as a build's run
    result = tiny_job.execute_in_process(instance=instance, tags=BUILD)
    assert result.success
    stored = instance.get_run_by_id(result.run_id)
    assert stored.remote_job_origin == home_job_origin("tiny_job")
    assert stored.tags[automation.BUILD_TAG] == automation.BUILD_TAG_VALUE     # still a build's run
    assert stored.tags["pickapic/why"] == BUILD["pickapic/why"] and stored.tags[CODE_LOCATION_TAG] == MODULE
    assert result.run_id in _labelled(instance)
    assert stored.job_code_origin is None and stored.status == dg.DagsterRunStatus.SUCCESS


def test_a_build_run_is_still_judged_by_the_build_lock(home, instance):
    run = instance.create_run_for_job(tiny_job, status=dg.DagsterRunStatus.STARTED, tags=BUILD)
    _start(instance, run)
    run = instance.get_run_by_id(run.run_id)
    assert run.remote_job_origin is not None
    with build_lock(home):
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert [r.run_id for r in automation.unfinished_runs(instance, home)] == [run.run_id]
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and "pickapic build" in health.msg
    assert automation.unfinished_runs(instance, home) == []
    _fail_dead_build_runs(instance)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_run_launched_with_an_origin_loses_a_copied_build_tag(home, instance):
    """What the UI's re-execution of a build's run stores (Dagster copies the parent's tags): not a build's run. While
    a build runs it is counted as what it is, the next build does not fail it, and the run monitoring asks its code
    server (here: none listens, and it has no worker: failed as a dead server's run, never by the build lock)."""
    parent = instance.create_run_for_job(tiny_job, status=dg.DagsterRunStatus.FAILURE,
                                         tags={**BUILD, "dagster/partition": "2023-02-13"})
    child = instance.create_run_for_job(
        tiny_job, status=dg.DagsterRunStatus.STARTED, remote_job_origin=parent.remote_job_origin,
        tags={**parent.tags, "dagster/parent_run_id": parent.run_id, "dagster/root_run_id": parent.run_id,
              GRPC_INFO_TAG: '{"host": "localhost", "socket": "/tmp/fix27u-no-such-server/grpc.sock"}'})
    _start(instance, child)
    stored = instance.get_run_by_id(child.run_id)
    assert automation.BUILD_TAG not in stored.tags and automation.BUILD_TAG not in child.tags
    assert stored.tags["dagster/partition"] == "2023-02-13" and stored.tags["pickapic/why"] == BUILD["pickapic/why"]
    with build_lock(home):                                 # a build runs meanwhile
        assert child.run_id in {r.run_id for r in automation.unfinished_runs(instance, home)}
        _fail_dead_build_runs(instance)                    # what the build does when it starts
        assert instance.get_run_by_id(child.run_id).status == dg.DagsterRunStatus.STARTED
        health = instance.run_launcher.check_run_worker_health(stored)
    assert health.status == WorkerStatus.FAILED and "code server" in health.msg
    assert child.run_id in {r.run_id for r in automation.unfinished_runs(instance, home)}   # no build: still counted


def test_a_run_without_the_build_tag_is_stored_as_given(instance):
    run = instance.create_run_for_job(tiny_job, tags={"team": "data"})        # `dagster job execute` by hand
    stored = instance.get_run_by_id(run.run_id)
    assert stored.remote_job_origin is None and dict(stored.tags) == {"team": "data"}


def test_a_build_run_holding_a_credential_is_still_refused(instance):
    with pytest.raises(RunConfigRefused, match="nothing was stored"):
        instance.create_run_for_job(tiny_job, tags={**BUILD, "note": "https://bob:hunter2secret@db.example/x"})
    assert instance.get_runs() == []


def test_build_runs_stored_before_get_the_origin_once_and_unfinished_ones_wait(home, instance):
    old = {}
    for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTED):
        run = dg.DagsterRun(job_name="daily_partition_job", status=status,
                            tags={**BUILD, "dagster/partition": "2023-02-13"})
        SqliteRunStorage.add_run(instance.run_storage, run)        # as an earlier version stored it: no origin
        old[status] = run.run_id
    by_hand = dg.DagsterRun(job_name="daily_partition_job", status=dg.DagsterRunStatus.SUCCESS)
    SqliteRunStorage.add_run(instance.run_storage, by_hand)
    assert _labelled(instance) == set()

    assert give_build_runs_an_origin(instance) == 2
    finished = {old[dg.DagsterRunStatus.SUCCESS], old[dg.DagsterRunStatus.FAILURE]}
    assert _labelled(instance) == finished
    assert {run.run_id for run in instance.get_runs(filters=dg.RunsFilter(tags={CODE_LOCATION_TAG: MODULE}))} == finished
    for run_id in finished:
        run = instance.get_run_by_id(run_id)
        assert run.remote_job_origin == home_job_origin("daily_partition_job")
        assert run.tags[automation.BUILD_TAG] == automation.BUILD_TAG_VALUE
        assert run.tags["dagster/partition"] == "2023-02-13"
        assert run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)   # status kept
    assert instance.get_run_by_id(old[dg.DagsterRunStatus.STARTED]).remote_job_origin is None   # its build may run
    assert instance.get_run_by_id(by_hand.run_id).remote_job_origin is None
    assert give_build_runs_an_origin(instance) == 0                # nothing left: no tag row twice

    _fail_dead_build_runs(instance)                                 # the next build ends the dead one ...
    give_old_build_runs_an_origin(home)                             # ... and it (or serve, ui) gives it one
    assert _labelled(instance) == finished | {old[dg.DagsterRunStatus.STARTED]}
    assert give_build_runs_an_origin(instance) == 0
