"""Hostile review (rev21h) of the rebuild path as a whole (c7a6f43, 3cf91e7, 15d4e0c, aaad9b2): ``rebuild_sensor``
(``rebuild_when_inputs_change``), ``build_running`` (a shared flock taken and dropped on ``HOME/.build.lock``),
``unfinished_runs`` / ``unfinished_partitions``, ``_fail_dead_build_runs``, ``daily_requests``' run keys and the
nightly schedule, as a deployment running ``pickapic serve`` for a year would meet them.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed.

What held up:
- the probe against a real build starting: `build_lock` with `--wait` never fails on a momentary shared holder
  (it blocks in `flock(LOCK_EX)`: 2000 of 2000 taken against a tight probing loop); without `--wait` a build is
  refused when it meets the probe (267 of 2000 against a tight loop, worst case), which the README documents ("told
  another build runs: run it again"); the probe only runs while a `pickapic build`-tagged run is unfinished, i.e.
  while a build runs (EX held: the probe cannot interfere) or after a killed one;
- the probe on a read-only file system (an `O_RDONLY` open and `flock` need no write) and on a lock file owned by
  another account (0644: read and probed; 0600: counted as a running build, documented);
- `pickapic ui` beside `pickapic serve`: the daemon lock (`HOME/.locks/daemon.lock`) lets one daemon per home;
- Dagster's UI re-execution copies parent tags (`useParentRunTags` defaults to true), but a build's runs come from
  `execute_in_process` and have no `remote_job_origin`, which `launch_reexecution_from_parent_run` requires: a
  build's run cannot be re-executed from the UI, so no daemon-launched run carries `pickapic/launched_by`
  (fix27u: a build's run is now stored with the home's origin and can be re-executed; the re-execution is stored
  without the build's tag, so no daemon-launched run carries it still);
- the nightly's run keys repeat only within a tick (the scheduler dedupes a run key per scheduled execution time),
  so a failed nightly daily run or rebuild is asked for again the next night;
- the work per tick on a long history: a quiet tick of `rebuild_when_inputs_change` makes 49 SQL statements at 20
  and at 40 days (constant), about 34 `os.stat` a day (linear), and re-hashes no raw file (`RawDigests` cache).
"""
from __future__ import annotations

import dagster as dg

from dagster_project import automation
from dagster_project.definitions import defs
from tests.unit.test_automation import _land_day, _plan, _pretend_built, _schedule_context, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import _sensor_requests

NEW_DAY = "2023-02-15"


def _daily_run_failed(instance, day: str) -> dg.DagsterRun:
    """A daemon-launched daily run of ``day`` that failed (it records nothing for the day)."""
    job = defs.resolve_job_def("daily_partition_job")
    run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE,
                                      tags={"dagster/partition": day, "dagster/sensor_name": "raw_partition_sensor"})
    return run


# --- 1. a day whose daily run fails on every try holds back every rebuild, settings changes included, for good ----
#
# rebuild_sensor: `pending = [partition runs in plan_build(...)]` -> SkipReason("N day(s) to build first (...): the
# raw-day sensor or the nightly runs them, and the rebuild follows"); nightly_schedule: `pending_daily = any(...)`
# -> the rebuild is never requested while the plan has a daily run. A day whose daily run fails (a bug tripped by
# its data, a step running out of memory on a big day, a model file the features step cannot load for it) records
# nothing, so the plan lists it on every tick and every night: the raw sensor asks once (its run key repeats), the
# nightly asks again each night and it fails again. Meanwhile a settings change (`pickapic settings --set
# curation.nsfw_threshold=0.7 --write`) or a code upgrade is never rebuilt by the daemon: the sensor's skip reason
# promises "the rebuild follows", the nightly's says its stale parts "wait for a running daily run" -- none runs.
# The README ("Jobs, schedules and sensors") promises "a settings or code change is rebuilt within a tick when
# nothing else runs", and no longer says a persistently failing day holds back rebuilds; the same code already
# plans an incomplete day "as if it were not there" so that it "must not hold back, night after night, the
# rebuild a setting or code change asks for" (automation.py nightly_schedule) -- a failing day is not treated so.
# Input: two days built; a new complete day 2023-02-15 whose daily runs FAILED twice (the raw sensor's and a
# nightly's); curation.nsfw_threshold changed in HOME/pickapic.toml; nothing queued or running. Outcome: 5 sensor
# ticks request nothing, skip "1 day(s) to build first (2023-02-15): ... the rebuild follows"; the nightly requests
# only dt=2023-02-15 (no rebuild), night after night.

def test_a_day_that_keeps_failing_does_not_hold_back_a_settings_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    _land_day(home, NEW_DAY, payload=b'{"user_id": 3}\n')
    for _ in range(2):                           # the raw sensor's run, then a nightly's: both failed
        _daily_run_failed(instance, NEW_DAY)
    (home.root / "pickapic.toml").write_text("[curation]\nnsfw_threshold = 0.7\n")
    assert {run.job for run in _plan(home, instance).runs} == {"daily_partition_job", "rebuild_dataset_job"}
    state: dict = {}
    sensor = sum(len(_sensor_requests(home, instance, state)) for _ in range(5))
    nightly = automation.nightly_schedule.evaluate_tick(_schedule_context(home, instance)).run_requests or []
    seen = {"sensor_rebuilds": sensor,
            "nightly_rebuild": any(request.partition_key is None for request in nightly)}
    assert seen == {"sensor_rebuilds": 1, "nightly_rebuild": True}, state.get("skip")
