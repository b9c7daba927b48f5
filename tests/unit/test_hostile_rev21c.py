"""Hostile review (rev21c) of the fixes of the twenty-first session (commits d83ae42, 3da42d5, 253d504): days and
time in the ingest (``shift_day``, ``PastTheCalendar``, ``IngestConfig.earliest``, ``LineParser.same``,
``_late_image_gone``), the settings file and moderation paths (``formats/settings.py`` load,
``DataHome.moderation_list``), ``stat_key`` with ctime, the sensor's ``-from-<current>`` run key, and the three
triggers of ``REBUILD_CONDITION``.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Nothing is materialized: Dagster
runs are replaced by recorded runs and materializations against a real temp ``DagsterInstance`` (the helpers of
``tests/unit/test_automation.py`` and ``test_hostile_rev21b.py``).

What held up:
- ``shift_day``: every other day arithmetic (``verified_days``, ``refresh_late_references``, ``late_window_end``,
  the app export's ``day_bounds`` behind ``check_lag``, the schedules' windows, which start from the tick) is held
  to the calendar or cannot reach its ends; the windows of 0001-01-0x and 9999-12-3x clip correctly (a verify
  window reaching before year 1 ends at 0001-01-01, not empty and not wrapped). The data contracts'
  ``CAST(dt AS TIMESTAMP) + INTERVAL 3 DAY`` is DuckDB arithmetic, which goes past year 9999 without overflow.
- ``PastTheCalendar``: it reaches only ``LineParser`` (slow path ``<`` / ``>=``, fast path
  ``TMIN <= FROMISO(v) < TMAX``, both answered through the reflected operators); it is never pickled (each worker
  process builds its parsers from the ``IngestConfig``), never printed (nothing is at or after it), and no Arrow /
  DuckDB code sees the window.
- ``IngestConfig.earliest``: ``Z`` / ``+02:00`` / ``-05:00`` give the UTC instant; an offset that moves the bound
  out of years 1..9999 is a ValueError naming the setting, never an OverflowError.
- ``LineParser.same``: compares every non-timestamp field exactly as before (``5`` / ``5.0`` still one value), a
  NULL against a timestamp is still a conflict, a key is compared with its first line only (equality on instants
  is transitive), and the workers route a key to one process, so no second comparison path exists.
- ``_late_image_gone``: its reach (the day, every earlier day, the ``late_image_days`` after it, from the same
  ``scan.days``) is exactly ``check_references``'s, so it re-ingests a day only when a build from scratch would
  quarantine a row; an image moved to another day of the window is not "gone" (the count in ``ingest_files`` is
  the same either way); work per ingested day is bounded by ``late_image_days`` days, each one ``ingest_files``
  read and, only with ``accepted_late_image`` rows, one read of two uid columns plus uid-index lookups that stop
  once every uid is found (the earlier-day case is documented in README *Late images*).
- ``formats/settings.py`` load: a dangling link, a folder, a link to a folder or a link loop is a SettingsError;
  every other reader of HOME/pickapic.toml goes through ``load`` (stages, schedules' crons at definitions load,
  the run-config check) or only stamps its text (``buildstamp``); ``runconfig._home_settings`` falling back to
  defaults is for field descriptions only.
- ``DataHome.moderation_list``: the decisions stage, the plan (``staleness.moderation_files``, content digests,
  never path strings) and the build stamp agree; the home root is always resolved absolute.
- ``stat_key`` with ctime: a ctime change alone (a chmod, the app export's hard link of an unchanged file into
  staging) costs one re-hash and never a run: versions are content digests; the uid index already keyed on ctime.
- The nightly's run keys (per-tick de-duplication) and a failed sensor run (asked once, nightly retries) behave as
  the README says; trigger (3) chains dedup -> decisions -> pairs -> splits -> publish in one request of 5.
"""
from __future__ import annotations

import gzip

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData

from dagster_project import buildstamp
from dagster_project.definitions import defs
from dagster_project.staleness import DATA_VERSION_TAG
from formats.home import DataHome
from pipelines.appdb.export import raw_day_counts
from tests.inplace import rewrite_in_place
from tests.unit.test_automation import DAYS, _land_day, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures
from tests.unit.test_hostile_rev21b import GLOBAL_ASSETS, _raw_sensor_skips, _sensor_requests

# --- 1. a day delivered A, B, A, B: the fourth delivery's run key is the second's, and the daemon drops it ------
#
# dagster_project/automation.py:266-267 daily_requests: run_key = f"{prefix}-{day}-{expected}-from-{current}". The
# fix (3da42d5) makes A, B, A work, but the key is still a function of (what the day has, what it will get): a
# second rollback repeats a pair. Delivered A (key V_A-from-none), B (V_B-from-V_A), A again (V_A-from-V_B), B again
# (V_B-from-V_A: the key of the second delivery's run). Dagster's fetch_existing_runs finds that run and the daemon
# skips the request: run: skipped == [[], [], [], ['raw-2023-02-13-<V_B>-from-<V_A>']]. The warehouse keeps A's
# rows until the nightly. README ("Jobs, schedules and sensors"): "a re-export with other bytes runs again". A
# corrected export pushed twice around a rollback (B, revert to A, re-apply B) is exactly this.

def test_a_day_delivered_a_b_a_b_is_reingested_every_time(fast_tmp, instance):
    skipped = _raw_sensor_skips(DataHome(fast_tmp / "home"), instance,
                                (b'{"user_id": 1}\n', b'{"user_id": 2}\n', b'{"user_id": 1}\n', b'{"user_id": 2}\n'))
    assert skipped == [[], [], [], []], f"requests the daemon skips as already run: {skipped}"


# --- 2. `pickapic build` (daily run, then its own rebuild) is followed by a second, useless rebuild --------------
#
# dagster_project/staleness.py:58-65 REBUILD_CONDITION, trigger (2): any_deps_match(data_version_changed)
# .allow(daily groups).since(newly_requested()). It resets only when the AUTOMATION requests the asset. A rebuild
# that something else ran (`pickapic build`, which runs daily_partition_job then rebuild_dataset_job in the home's
# own instance, build.py:251-274 / _execute; a "Materialize all" from the UI; run_build) materializes the globals
# but never resets (2). Run with `pickapic serve` up: tick 0; build's daily run of day 1 (STARTED, image_features
# changes, SUCCESS); build's rebuild run (STARTED, the five globals materialized, SUCCESS); the next ticks request
# [5, 0, 0]: a full curation + splits + publish run over unchanged inputs after every `pickapic build` that
# ingested a day. At the parent commit (3da42d5, trigger (1) alone) the same ticks give [0, 0, 0]: a regression.
# README: "a rebuild's own materializations never start another".

def _tick(state: dict, instance) -> int:
    """One tick of ``rebuild_when_inputs_change`` (the home in ``state``): how many assets it newly requested."""
    return sum(len(request.asset_selection) for request in _sensor_requests(state["home"], instance, state))


def _run(instance, job_name: str, assets, version: str, partition: str | None, state: dict) -> int:
    """A run of ``job_name`` as `pickapic build` makes one: started, one automation tick while it runs, its
    materializations, success. Returns what that tick requested."""
    job = defs.resolve_job_def(job_name)
    run = instance.create_run_for_job(job, asset_selection=frozenset(dg.AssetKey(a) for a in assets),
                                      status=dg.DagsterRunStatus.STARTED,
                                      tags={"dagster/partition": partition} if partition else None)
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_START.value,
                                               job_name=job.name), run_id=run.run_id)
    during = _tick(state, instance)
    for asset in assets:
        instance.report_dagster_event(DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=job.name,
            event_specific_data=StepMaterializationData(dg.AssetMaterialization(
                asset_key=asset, partition=partition, tags={DATA_VERSION_TAG: version}))), run_id=run.run_id)
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                                               job_name=job.name), run_id=run.run_id)
    return during


def test_no_second_rebuild_after_a_build_that_ran_its_own(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    state = {"home": home}
    assert _tick(state, instance) == 0
    assert _run(instance, "daily_partition_job", ["image_features", "image_rejects"], "day1-new", DAYS[0], state) == 0
    assert _run(instance, "rebuild_dataset_job", GLOBAL_ASSETS, "built", None, state) == 0
    assert [_tick(state, instance) for _ in range(3)] == [0, 0, 0]


# --- 3. the app export's raw row counts still trust size/mtime/inode: a cp -p rewrite keeps the old counts ---------
#
# 3da42d5 moved the raw digests and the build stamp to ctime because `cp -p` / `rsync -t --inplace` / `touch -r`
# rewrite a raw file with its size and mtime kept. pipelines/appdb/export.py:947-966 raw_day_counts, the other cache
# of the raw files, keys on [size, mtime_ns, inode] only (export.py:960). Run: users.jsonl.gz with 2 rows (max id
# 20), counted; rewritten in place with 3 rows (max id 2), same 43 bytes, mtime put back: raw_day_counts says
# (2, 20); with its cache deleted (3, 2). Its readers decide from it: late_rows (export.py:1003-1049, via
# raw_before) whether a raw day lacks rows the database holds (mark_late -> re-export), and _stray_day
# (automation.py:186-194) whether the first raw day is a stray; a file restored from an older copy is judged by
# the counts of the file it replaced.

def test_raw_day_counts_see_a_file_rewritten_in_place_with_its_mtime_put_back(fast_tmp):
    home = DataHome(fast_tmp / "home")
    day = DAYS[0]
    _land_day(home, day)
    path = home.raw_file(day, "users")
    old = gzip.compress(b'{"user_id": 19}\n{"user_id": 20}\n', mtime=0)
    new = gzip.compress(b'{"user_id": 0}\n{"user_id": 1}\n{"user_id": 2}\n', mtime=0)
    assert len(old) == len(new)
    path.write_bytes(old)
    assert raw_day_counts(home, day)["users"] == (2, 20)
    rewrite_in_place(path, new)                  # cp -p over the file: same inode, other bytes, same size
    assert raw_day_counts(home, day)["users"] == (3, 2)


# --- 4. the build stamp never looks at a moderation list named by --set or --config ------------------------------
#
# dagster_project/buildstamp.py:58-65 _moderation_elsewhere stats the moderation lists named in HOME/pickapic.toml
# only (3da42d5 made their relative paths home-relative there); stamp_key (buildstamp.py:37-55) takes --set and
# --config as text. `pickapic build --set curation.banned_users_file=lists/banned.txt` (or the same in a --config
# file) after a fresh build, with the list edited: the plan says decisions are stale (staleness.py:93 digests the
# list), but the stamp key is unchanged, so the CLI (cli.py:139-145) prints "up to date: ... nothing ran" and the
# banned user stays in the published dataset. Run: stamp keys before/after the edit are equal for both routes;
# through HOME/pickapic.toml they differ.

@pytest.mark.parametrize("route", ["set", "config"])
def test_a_moderation_list_named_on_the_command_line_is_in_the_build_stamp(fast_tmp, home, instance, route):
    listed = home.root / "lists" / "banned.txt"
    listed.parent.mkdir(parents=True)
    listed.write_text("1\n")
    assignment = "curation.banned_users_file=lists/banned.txt"
    config_file = fast_tmp / "override.toml"
    config_file.write_text('[curation]\nbanned_users_file = "lists/banned.txt"\n')
    how = {"assignments": [assignment]} if route == "set" else {"config_file": config_file}
    settings_args = (assignment,)   # what the plan reads either way
    _pretend_built(home, instance, _plan(home, instance, *settings_args))
    assert _plan(home, instance, *settings_args).up_to_date
    key = buildstamp.stamp_key(home, **how)
    listed.write_text("1\n2\n")                   # a user banned
    assert not _plan(home, instance, *settings_args).up_to_date   # the plan sees it: decisions are stale
    assert buildstamp.stamp_key(home, **how) != key


# --- 5. a [curation] that is not a table crashes `pickapic build` with a traceback in the stamp -------------------
#
# dagster_project/buildstamp.py:61-65 (the line 3da42d5 changed) reads HOME/pickapic.toml itself, before load():
# `tomllib.loads(...).get("curation", {})` then `curation.get(name)`. With `curation = 1` (or a string, or an
# array) in the file: AttributeError "'int' object has no attribute 'get'", which cli.main (cli.py:295-305) does not
# count as a known error: `pickapic build --home H` prints a Python traceback. load() refuses the same file with one
# SettingsError line ("'curation' must be a [section] table"), which is what every other command shows.

@pytest.mark.parametrize("text", ['curation = 1\n', 'curation = "lists/banned.txt"\n', 'curation = [1, 2]\n'])
def test_a_curation_value_that_is_not_a_table_never_crashes_the_build_stamp(home, text):
    (home.root / "pickapic.toml").write_text(text)
    assert isinstance(buildstamp.stamp_key(home), str)    # the full plan then reports the SettingsError
