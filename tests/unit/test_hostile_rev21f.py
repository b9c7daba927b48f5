"""Hostile review (rev21f) of commit c7a6f43: ``rebuild_when_inputs_change`` as a plain sensor
(``rebuild_sensor`` and ``_runs_global_stages`` in ``dagster_project/automation.py``), deciding from the plan's
data versions, as a deployment running ``pickapic serve`` for a year would meet it.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Nothing is materialized: stage runs
are replaced by recorded materializations carrying the versions the plan expects (``_pretend_built``) and by
recorded runs (``create_run_for_job`` / ``create_run_for_test``) in a real temp ``DagsterInstance``; the sensor is
ticked with ``evaluate_tick``, and where the daemon decides (run-key de-duplication) Dagster's own
``dagster._daemon.sensor.fetch_existing_runs`` is asked, as in ``test_hostile_rev21b.py``.

What held up:
- waiting: a STARTED/QUEUED/NOT_STARTED rebuild (the job, or an asset run of a global asset) or any daily run
  holds the sensor back; a day that lands during a rebuild gets exactly one rebuild after it; a rebuild that read
  the change gets none; a ``train_model_job`` run (no partition tag, no global asset) does not hold it back;
- pending days: an incomplete raw day is ignored (as the nightly does), a stale complete day makes it wait;
- errors: a bad settings file fails the tick with the SettingsError line naming key and file, exactly as
  ``raw_partition_sensor`` does; a home without raw days skips with a reason (raw sensor: the same);
- ``PICKAPIC_AUTOMATION=off``: the rebuild sensor starts STOPPED with the other sensors and schedules;
- work per tick: ``plan_build`` with ``RecordedVersions`` is a constant number of event-log queries (one
  ``get_latest_tags_by_partition`` per daily asset and the raw observations, one latest materialization per
  global stage) plus one unfinished-runs query, and the raw files' stats through the digest cache, the same as
  the raw sensor pays every tick (read, not timed): the two sensors together plan twice a minute;
- the nightly's ``nightly-rebuild-<version>`` and the sensor's request: each sees the other's QUEUED run (the
  nightly through ``None in busy``, the sensor through ``_runs_global_stages``), so only a request in the same
  second could double (not confirmable without the daemon; not filed).
"""
from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.sensor import fetch_existing_runs

from dagster_project import automation
from dagster_project.definitions import defs
from tests.unit.test_automation import DAYS, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import _features_changed, _rebuild_started, _sensor_requests


class _Sensor:           # what fetch_existing_runs reads of the remote sensor for runs without an origin
    name = automation.rebuild_sensor.name


def _daemon_tick(home, instance) -> tuple[list[str], list[str]]:
    """One tick as the daemon runs it: the run keys requested, and those it drops as already used by a run of
    this sensor; a run is recorded for each key it keeps, and the rebuild's versions as if it ran."""
    context = dg.build_sensor_context(instance=instance,
                                      resources={"data_home": automation.PickapicHome(root=str(home.root))},
                                      repository_def=defs.get_repository_def())
    requests = list(automation.rebuild_sensor.evaluate_tick(context).run_requests or [])
    dropped = sorted(fetch_existing_runs(instance, _Sensor, requests))
    for request in requests:
        if request.run_key not in dropped:
            create_run_for_test(instance, job_name="rebuild_dataset_job", status=dg.DagsterRunStatus.SUCCESS,
                                tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: _Sensor.name})
            _pretend_built(home, instance, _plan(home, instance))
    return [request.run_key for request in requests], dropped


# --- 1. the same publish version reached a second time is never rebuilt by the sensor -------------------------
#
# automation.py rebuild_sensor (last lines): run_key=f"rebuild-{plan.expected[('publish', None)]}". The expected
# publish version is a function of the inputs, settings and code only, so it repeats whenever a home comes back to
# a state the sensor rebuilt before, and Dagster's sensor daemon drops a request whose run key any earlier run of
# the sensor carried (dagster/_daemon/sensor.py fetch_existing_runs: every run with the key and the sensor's name,
# whatever its age or status). This is the rev21b defect of the raw sensor (fixed there with the fingerprint's
# storage id in the key), now in the rebuild sensor. README "Jobs, schedules and sensors": "a settings or code
# change is rebuilt within a tick when nothing else runs"; it waits for the nightly (up to a day) instead.
# Inputs and outcomes (run):
# - settings: the sensor builds the home (rebuild-2194...), `publish.max_samples_per_shard = 50` is written
#   (rebuild-f44d..., runs), the line is removed again: the plan says stale, the sensor asks rebuild-2194..., the
#   daemon drops it; `latest` stays at the 50-per-shard publish;
# - a day delivered A, B, A (a correction rolled back): the raw sensor re-ingests A (its key carries the storage id),
#   the rebuild sensor asks the key of the first rebuild, dropped: the dataset keeps B's rows;
# - `latest` removed (staleness.py _why: "output files missing", recorded == expected): the key is the last
#   rebuild's, dropped.

def _settings_reverted(home, instance):
    (home.root / "pickapic.toml").write_text("[publish]\nmax_samples_per_shard = 50\n")
    assert _daemon_tick(home, instance)[1] == []
    (home.root / "pickapic.toml").unlink()


def _day_rolled_back(home, instance):
    _features_changed(home, instance, DAYS[0], b'{"user_id": 1}\n')       # B
    assert _daemon_tick(home, instance)[1] == []
    _features_changed(home, instance, DAYS[0], b"")                       # A again


def _published_removed(home, instance):
    (home.datasets / "latest").unlink()


@pytest.mark.parametrize("change", [_settings_reverted, _day_rolled_back, _published_removed],
                         ids=["setting-reverted", "day-a-b-a", "latest-removed"])
def test_a_publish_version_reached_again_is_rebuilt_by_the_sensor(home, instance, change):
    _pretend_built(home, instance, _plan(home, instance), stages=("ingest", "features"))
    keys, dropped = _daemon_tick(home, instance)            # the sensor builds the home's first dataset
    assert len(keys) == 1 and dropped == [] and _plan(home, instance).up_to_date
    change(home, instance)
    plan = _plan(home, instance)
    assert [run.job for run in plan.runs] == ["rebuild_dataset_job"], plan.describe()
    keys, dropped = _daemon_tick(home, instance)
    assert len(keys) == 1                                   # the sensor asks ...
    assert dropped == [], f"the daemon drops {dropped} as already run: nothing rebuilds until the nightly"


# --- 2. a run whose process died stays "running" and holds back every rebuild for good ---------------------------
#
# rebuild_sensor waits while any run is QUEUED / NOT_STARTED / STARTING / STARTED (automation.py _UNFINISHED, the
# first lines of rebuild_sensor), with no bound and no check that the run's process lives. Dagster moves a run out
# of STARTED only when its process reports it, or through run monitoring, which the home's dagster.yaml did not
# enable then (since the twenty-second session it does, with dagster_project/launcher.py's health check). A `pickapic build` SIGKILLed or
# OOM-killed during its rebuild (README section 9, "Crashes": killed builds are rerun and must recover), or a
# daemon-launched rebuild whose host rebooted, leaves its run STARTED forever; rerunning `pickapic build` by hand
# rebuilds the home, but from then on every tick says "a rebuild is queued or running": the sensor never rebuilds
# again (nor does the nightly: its unfinished_partitions() holds None, so `None in busy` skips its rebuild too).
# A killed daily run (a `dagster/partition` tag) does the same with "daily runs are queued or running".
# Input: a rebuild run of `pickapic build` STARTED three days ago, its process gone (the build lock free), the home
# rebuilt by a second build, then day 2 re-delivered and ingested. Outcome: plan stale (rebuild), sensor [] with
# "a rebuild is queued or running", on every tick.

def _killed_build_rebuild(instance) -> dg.DagsterRun:
    """A rebuild run of a `pickapic build` started three days ago (its process since SIGKILLed)."""
    return _rebuild_started(instance, tags={automation.BUILD_TAG: automation.BUILD_TAG_VALUE},
                            at=time.time() - 3 * 86400)


def test_a_run_whose_process_died_does_not_hold_back_rebuilds_forever(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    run = _killed_build_rebuild(instance)                   # SIGKILLed three days ago; nothing will end it
    _pretend_built(home, instance, _plan(home, instance))   # the operator reran `pickapic build`
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')
    assert [r.job for r in _plan(home, instance).runs] == ["rebuild_dataset_job"]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    state: dict = {}
    requested = [_sensor_requests(home, instance, state) for _ in range(3)]
    assert sum(len(r) for r in requested) == 1, state["skip"]


# --- 3. a rebuild being terminated (CANCELING) does not hold the sensor back ----------------------------------
#
# automation.py _UNFINISHED = QUEUED, NOT_STARTED, STARTING, STARTED: CANCELING is missing, though Dagster counts it
# as in progress (dagster/_core/storage/dagster_run.py IN_PROGRESS_RUN_STATUSES / ACTIVE_RUN_STATUSES / NOT_FINISHED_
# STATUSES all hold CANCELING): the run's process is still running its step until the interrupt reaches it (a long
# Beam / DuckDB call in dedup or the shard writer does not see it before it returns). Terminating a rebuild in the
# UI (the nightly's, or one launched there) while a day's change is unbuilt: the next tick requests a second global
# run that overlaps the one still writing. README: it requests the rebuild when "no run is queued or running (no
# rebuild: the job or any asset run building a global asset ...)". (The nightly's unfinished_partitions() uses the
# same list.) Input: built, day 2 ingested anew, a rebuild STARTED, then terminated (report_run_canceling).
# Outcome: STARTED -> [] "a rebuild is queued or running"; CANCELING -> one request (rebuild-<version>).

def test_a_rebuild_being_terminated_holds_the_sensor_back(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')
    run = _rebuild_started(instance)
    state: dict = {}
    assert _sensor_requests(home, instance, state) == [] and state["skip"] == "a rebuild is queued or running"
    instance.report_run_canceling(instance.get_run_by_id(run.run_id))
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
    assert _sensor_requests(home, instance, state) == [], "a second rebuild beside the one being terminated"
