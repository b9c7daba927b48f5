"""Hostile review (rev21e) of commit 4c3c6ae: ``inputs_during_rebuild_sensor`` and ``_runs_global_stages``
(``dagster_project/automation.py``), with the rebuild automation ``rebuild_when_inputs_change`` it completes
(``staleness.REBUILD_CONDITION``), as a deployment running ``pickapic serve`` for a year would meet them.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Nothing is materialized: Dagster
runs are replaced by recorded runs (``create_run_for_job``, RUN_START / ASSET_MATERIALIZATION / RUN_SUCCESS
events) against a real temp ``DagsterInstance``; the automation is ticked with ``dg.evaluate_automation_conditions``
and the sensor with ``evaluate_tick`` (the helpers of ``test_hostile_rev21b.py`` / ``test_hostile_rev21d.py``).

What held up:
- ``_runs_global_stages``: the sensor's own request is a ``rebuild_dataset_job`` run (job name); the automation's
  runs are created by the daemon with their asset selection already set, NOT_STARTED/QUEUED included
  (dagster/_core/execution/submit_asset_runs.py:195-212 ``create_run(..., asset_selection=...)``), as are the
  nightly's anonymous asset-job runs; ``train_model_job`` runs are not counted (the model stage is left out).
  Only a job-entity run (submit_asset_runs.py:300-316, ``asset_selection=None``) has none, and no job here is one.
- a rebuild R2 the sensor requested and not yet started (NOT_STARTED, planned events recorded) holds the
  automation back (``in_progress``), its materializations reset what the automation remembered, and after R2
  neither the automation nor the sensor asks again (no third rebuild); the nightly's ``None in busy`` sees R2 too.
- the automation emits runs, not backfills, for these unpartitioned assets (``emit_backfills`` only applies when
  more than one partition of one asset is requested), so no requested-but-runless backfill hides from the sensor.
- queries per tick are constant (counted by reading the code) (one unfinished-runs query, the latest ``published_dataset`` event, its run and run
  stats, at most twelve ``fetch_materializations`` with ``limit=1``); ``plan_build`` runs only for a rebuild with
  an input in its window, and again each tick only while days are still to build (as the raw sensor plans anyway).
- bad settings / a missing home: reached only on that path; the tick fails without moving the cursor and shows
  the error until fixed (as the raw sensor and the nightly do). The cursor (a run id) is the daemon's stored
  sensor state and survives restarts (read, not run).
- `pickapic build` / `--force` (read, not run): its days run before its rebuild, so its own rebuild never sees
  them; a build's days landing inside a daemon rebuild that ends last are caught (that rebuild read old inputs:
  stale, one request); forced days with unchanged versions leave the plan fresh and nothing is requested.
- a publish-only UI run that overlaps the rebuild a day was ingested in: the day lands in its window too, and the
  sensor asks once (run: test 4's variant with the UI run started before the day landed XPASSed).
"""
from __future__ import annotations

import dagster as dg
import pytest

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.staleness import DATA_VERSION_TAG
from dagster_project.versions import FEATURE_DATASETS, INGEST_DATASETS
from tests.unit.test_automation import DAYS, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import (
    GLOBAL_ASSETS,
    _features_changed,
    _global_versions,
    _materialize,
    _rebuild_ended,
    _rebuild_started,
    _sensor_requests,
    _succeed,
    _ticker,
)

SELECTION = dg.AssetSelection.groups("curation", "splits", "publish")   # what rebuild_when_inputs_change targets


def _started(instance, assets=GLOBAL_ASSETS, job=None, tags=None) -> dg.DagsterRun:
    """An asset run as the automation's daemon starts one (``__ASSET_JOB``) unless ``job`` is given."""
    return _rebuild_started(instance, job or defs.resolve_implicit_global_asset_job_def(), assets, tags)


def test_the_automation_requests_nothing_while_a_rebuild_runs(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    tick = _ticker(home, instance, state)
    assert tick() == 0
    versions = _global_versions(home, instance)
    run = _started(instance)
    _materialize(instance, run, {"duplicate_clusters": versions["duplicate_clusters"]})
    assert tick() == 0
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')   # day 2's daily run ends while R1 runs
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert automation._runs_global_stages(instance.get_run_by_id(run.run_id))
    assert tick() == 0                                                  # R1 still runs: wait for it


# --- 2. a daily run that ends just after a rebuild is forgotten by both --------------------------------------
#
# automation.py:407-411: the sensor looks only between the rebuild's RUN_START and RUN_SUCCESS, and leaves a change
# after the end to the automation ("the rebuild automation follows those"). The automation follows it only if it
# saw the rebuild's materializations on an earlier tick than the change: when R1's materializations and the daily
# run that ends after R1 are first seen by the same automation tick (R1 ran from duplicate_clusters' materialization
# to its end within one sensor interval, 60 s by default: a young deployment, a small home), since_last_handled()
# drops the trigger (the reset wins on the same tick), exactly as rev21b's change inside the rebuild. The sensor
# finds nothing in R1's window, moves its cursor past R1 and says "no daily input changed while rebuild ... ran".
# Control (a tick between R1's end and the day's end): the automation requests 5.
# Input: day 1 changes, automation requests R1 (5), R1 runs and ends, day 2's daily run ends; then 3 ticks, sensor.
# Outcome: plan [(None, rebuild_dataset_job)] (stale), ticks [0, 0, 0], sensor [] with cursor = R1: day 2 waits
# for the nightly.

def test_a_day_ingested_just_after_a_rebuild_gets_a_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    tick = _ticker(home, instance, state)
    assert tick() == 0
    _features_changed(home, instance, DAYS[0], b'{"user_id": 1}\n')
    assert tick() == len(GLOBAL_ASSETS)                                # R1 requested by the automation
    versions = _global_versions(home, instance)
    run = _started(instance)
    assert tick() == 0
    _rebuild_ended(instance, run, versions)
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')   # day 2's daily run ends just after R1
    assert [planned.partition for planned in _plan(home, instance).runs] == [None]    # the globals are stale
    requested = sum(tick() for _ in range(3)) + len(_sensor_requests(home, instance, state))
    assert requested > 0, state


# --- 3. a day re-run with its unchanged version after the rebuild cancels the rebuild its change needed -------
#
# automation.py:408-411: any materialization of a daily input after the rebuild's end makes the sensor defer
# ("daily inputs changed after rebuild ... too: the rebuild automation follows") and move its cursor past R1. The
# automation follows data_version_changed() only: a daily run after R1 that records the versions the day already
# had (an operator re-running a day from the UI / launchpad, same raw bytes) starts nothing. So day 2, ingested
# while R1 ran (the case the sensor exists for), is never rebuilt by either; the nightly does it, up to a day later.
# Input: R1 (__ASSET_JOB) runs, day 2's daily run ends inside it, R1 ends; a daily_partition_job run of day 1
# with day 1's unchanged versions. Outcome: plan stale ([None]), ticks [0, 0, 0], sensor [] (cursor = R1).

def test_a_day_rerun_without_change_after_the_rebuild_does_not_cancel_its_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    tick = _ticker(home, instance, state)
    assert tick() == 0
    versions = _global_versions(home, instance)
    run = _started(instance)
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')   # day 2's daily run ends while R1 runs
    assert tick() == 0
    _rebuild_ended(instance, run, versions)                            # no tick before the re-run below
    expected = _plan(home, instance).expected
    again = _started(instance, INGEST_DATASETS + FEATURE_DATASETS, job=defs.resolve_job_def("daily_partition_job"),
                     tags={"dagster/partition": DAYS[0]})             # day 1 re-run: same bytes, same versions
    _materialize(instance, again, {**{asset: expected[("ingest", DAYS[0])] for asset in INGEST_DATASETS},
                                   **{asset: expected[("features", DAYS[0])] for asset in FEATURE_DATASETS}},
                 partition=DAYS[0])
    _succeed(instance, again)
    assert [planned.partition for planned in _plan(home, instance).runs] == [None]    # still stale for day 2
    requested = sum(tick() for _ in range(3)) + len(_sensor_requests(home, instance, state))
    assert requested > 0, state


# --- 4. only the run of the latest published_dataset materialization is judged -------------------------------
#
# automation.py:392-401: the sensor checks the run of the LAST published_dataset materialization, and its cursor
# then moves past it. A rebuild R1 during which day 2 was ingested is never judged when another published_dataset
# materialization follows it before the sensor's check:
#  (a) a "Materialize selected" of published_dataset alone from the UI, started after R1 ended and ended before
#      the sensor's check: within one interval (60 s), or while the sensor waits "daily runs are running" without
#      judging R1 (automation.py:390-391), e.g. the 01:00 app export's partition runs re-exporting unchanged days
#      (no daily input follows them). The sensor judges the UI run, finds no daily input in its window, cursor ->
#      it; duplicate_clusters .. split_pairs stay stale for day 2. (A publish run overlapping R1 is fine: the
#      day lands inside its window too, and the sensor asks once.)
#  (b) a runless "Report materialization" of published_dataset (event.run_id == ""): run is None, the sensor
#      answers "no successful rebuild to check" on every tick until the next rebuild, without ever judging R1.
# The automation forgot day 2 with R1's materializations (rev21b). Outcome: plan stale ([None]), ticks [0, 0],
# sensor [] in both cases.

@pytest.mark.parametrize("after", ["publish_only_run", "runless_report"])
def test_a_later_publish_does_not_hide_the_rebuild_a_day_was_ingested_in(home, instance, after, monkeypatch):
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", "postgresql://app@db/app")   # the export job's resource reads it
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    tick = _ticker(home, instance, state)
    assert tick() == 0
    versions = _global_versions(home, instance)
    run = _started(instance)
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')   # day 2's daily run ends while R1 runs
    assert tick() == 0
    export = _started(instance, ["app_export"], job=defs.resolve_job_def("app_export_job"),
                      tags={"dagster/partition": DAYS[0]})             # the nightly export of an unchanged day
    _rebuild_ended(instance, run, versions)
    assert _sensor_requests(home, instance, state) == []          # waits for the export (a partition run)
    if after == "publish_only_run":                                    # the UI's publish, after R1
        ui = _started(instance, ["published_dataset"])
        _materialize(instance, ui, {"published_dataset": versions["published_dataset"]})
        _succeed(instance, ui)
    else:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="published_dataset", tags={DATA_VERSION_TAG: versions["published_dataset"]}))
    _succeed(instance, export)
    assert [planned.partition for planned in _plan(home, instance).runs] == [None]    # the globals are stale
    requested = sum(tick() for _ in range(2)) + len(_sensor_requests(home, instance, state))
    assert requested > 0, state
