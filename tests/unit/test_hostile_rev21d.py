"""Hostile review (rev21d) of commit bca0c94: ``inputs_during_rebuild_sensor`` (a rebuild for a daily input that
landed while a rebuild ran), the raw sensor's run key ``<prefix>-<day>-<expected>-after-<storage id>``, and the
build stamp's ``_moderation_elsewhere`` reading the lists named by the home's file, ``--config`` and ``--set``.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Nothing is materialized: Dagster
runs are replaced by recorded runs and materializations against a real temp ``DagsterInstance`` (the helpers of
``tests/unit/test_automation.py`` and ``test_hostile_rev21b.py``).

What held up:
- runs of `pickapic build` (``execute_in_process``) have RUN_START / RUN_SUCCESS events, so ``get_run_stats``
  gives the start and end the sensor's window needs, and their materializations fall inside it (same clock:
  both are the event's ``time.time()``); the rebuild's own materializations are global assets, never counted
  as daily inputs.
- a daily run still running when the rebuild ended: the sensor skips without moving its cursor, and checks the
  rebuild once the day is done; a rebuild that read the change leaves nothing stale and nothing is requested;
  the cursor is the run id and moves on every decision, so each rebuild is judged once.
- work per tick is bounded: two ``get_runs`` with ``limit=1``, the unfinished runs, one rebuild's run stats,
  six ``fetch_materializations`` with ``limit=1``, and ``plan_build`` only when an input landed in the window:
  nothing grows with the history.
- bad settings: ``plan_build`` raises the SettingsError naming the key, and the tick fails without moving the
  cursor, as the raw sensor and the nightly do (the error shows on every tick until fixed).
- the run key ``-after-<storage id>``: the storage id of the day's last ``image_features`` materialization only
  grows, so after any successful run of the day every key is new (A, B, A, B deliveries run each time); the
  same key repeats only while no run of the day succeeded (asked once, the nightly retries: documented); the
  nightly's keys are de-duplicated per tick only, so a nightly and the sensor asking for the same day is kept
  apart by ``unfinished_partitions`` as before.
- ``_moderation_elsewhere``: the home's file, then ``--config``, then ``--set`` (last one wins) as ``load``
  applies them; whitespace around key and value stripped by the same ``parse_assignment``; a quoted value kept
  literally by both; ``--set curation.phrases_file=`` resets to the default list under ``raw/moderation``,
  which ``raw_stats`` already watches; a non-string value is refused by ``load`` before the stamp matters.
"""
from __future__ import annotations

import pytest
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME

from dagster_project import automation, buildstamp
from dagster_project.definitions import defs
from formats.settings import SettingsError, load
from tests.unit.test_automation import DAYS, _land_day, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import (
    _features_changed,
    _global_versions,
    _rebuild_ended,
    _rebuild_started,
    _sensor_requests,
)

# --- 1. the sensor never sees the rebuilds the automation (or the nightly) starts: they are not rebuild_dataset_job
#
# dagster_project/automation.py:376,380 inputs_during_rebuild_sensor looks for runs with
# job_name == "rebuild_dataset_job" only. rebuild_when_inputs_change is an AutomationConditionSensorDefinition: its
# run requests carry an asset selection and no job, and Dagster's daemon runs them as the implicit asset job
# (dagster/_core/execution/submit_asset_runs.py:73 get_job_execution_data_from_run_request: job_name =
# run_request.job_name or _get_implicit_job_name_for_assets, which picks a job whose name starts with
# "__ASSET_JOB"). The nightly's rebuild (a schedule with target=asset selection) runs as
# "__anonymous_asset_job_nightly_schedule". So in a deployment the rebuild R1 of rev21b's scenario (requested by
# the automation after a night's days) is invisible: day 2's daily run ends while R1 runs, R1 materializes the
# globals with the versions read before, the plan says stale ([(None, 'rebuild_dataset_job')]), and the sensor
# answers "no rebuild has run yet" (or judges an older rebuild_dataset_job run). Day 2 waits for the nightly:
# the rev21b defect is back for every rebuild not started by this sensor or `pickapic build`. rev21b's test made
# its R1 with defs.resolve_job_def("rebuild_dataset_job"), which the daemon never does for the automation.

def test_a_day_ingested_during_the_automations_rebuild_gets_its_own_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    job = defs.resolve_implicit_global_asset_job_def()           # what the daemon runs the automation's request as
    assert job.name == IMPLICIT_ASSET_JOB_NAME
    versions = _global_versions(home, instance)                   # what R1's steps read: day 2 old
    run = _rebuild_started(instance, job)
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')    # day 2's daily run ends while R1 runs
    _rebuild_ended(instance, run, versions)
    assert [planned.partition for planned in _plan(home, instance).runs] == [None]    # the globals are stale
    requests = _sensor_requests(home, instance, {})
    assert len(requests) == 1 and requests[0].run_key.startswith("rebuild-"), requests


# --- 2. an incomplete raw day holds the sensor back for good --------------------------------------------------
#
# dagster_project/automation.py:396 inputs_during_rebuild_sensor plans with plan_build(home, load(home.root),
# instance): no ignore_days, unlike the nightly (automation.py:288-289, "an incomplete raw day ... must not hold
# back ... the rebuild"). A day folder with 3 of its 4 files (a file still landing, or never coming: the raw
# sensor and the nightly never ingest it) is a planned daily run, so after a rebuild R1 during which day 2 was
# ingested, the sensor says "days are still to build: the nightly or the raw sensor goes first" and moves its
# cursor past R1 (automation.py:398-403). Neither goes first: neither ingests an incomplete day, nothing
# materializes, so rebuild_when_inputs_change never fires; day 2 waits for the nightly. The same skip follows a
# day whose daily run failed (stale in the plan; the raw sensor asks for it once only).
# Outcome: requests [] with skip "... days are still to build ...", cursor = R1's id.

def test_an_incomplete_raw_day_does_not_hold_back_the_rebuild_after_a_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    versions = _global_versions(home, instance)
    run = _rebuild_started(instance, defs.resolve_job_def("rebuild_dataset_job"))
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')    # day 2's daily run ends while R1 runs
    _land_day(home, "2023-02-15", tables=automation.RAW_TABLE_FILES[:3])   # a day still landing: 3 of 4 files
    _rebuild_ended(instance, run, versions)
    state: dict = {}
    requests = _sensor_requests(home, instance, state)
    assert len(requests) == 1 and requests[0].run_key.startswith("rebuild-"), (requests, state)


# --- 3. the build stamp sorts the --set assignments: a later --set no longer wins ----------------------------
#
# dagster_project/buildstamp.py:53 stamp_key hashes sorted(assignments), while formats/settings.py:428 load applies
# them in order (dict(...): the last one for a key wins), as bca0c94's _moderation_elsewhere does. Built with
# `--set splits.heldout_fraction=0.2 --set splits.heldout_fraction=0.1` (effective 0.1, e.g. a wrapper script's
# default then the user's), the same command with the user's value first (effective 0.2) has the same stamp:
# `pickapic build` (cli.py:139-141) answers "up to date: nothing changed" and the splits are never recomputed.
# Outcome: load(...) gives 0.1 and 0.2, stamp_key equal (True).

def test_the_build_stamp_follows_the_last_set_of_a_key(home):
    first = ["splits.heldout_fraction=0.2", "splits.heldout_fraction=0.1"]
    second = list(reversed(first))
    # since review rev22e a key given twice is refused by load (never last-wins); the stamp still tells them apart
    for assignments in (first, second):
        with pytest.raises(SettingsError, match="splits.heldout_fraction twice"):
            load(home.root, assignments=assignments)
    assert buildstamp.stamp_key(home, assignments=first) != buildstamp.stamp_key(home, assignments=second)
