"""Hostile review (rev21b) of the nightly automation and the build driver: ``dagster_project/automation.py``
(the raw-day sensor, the nightly schedule, the rebuild automation sensor), ``staleness.py``, ``build.py`` /
``buildstamp.py`` and the settings file they read, as a team running it nightly for a year would meet them.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. Nothing is materialized: stage runs
are replaced by recorded materializations carrying the data versions the plan expects (the helpers of
``tests/unit/test_automation.py``), the sensor and schedule are evaluated with Dagster's own
``build_sensor_context`` / ``build_schedule_context`` and the automation sensor with
``dg.evaluate_automation_conditions``, each against a real ``DagsterInstance`` in a temp folder; where the
daemon decides (run-key de-duplication) Dagster's own ``dagster._daemon.sensor.fetch_existing_runs`` is asked.

What held up:

- a day folder created empty first, or with 1-3 of its 4 files: the sensor and the nightly leave it alone, and
  it does not hold back the nightly's settings rebuild (named in the skip reason);
- a re-delivery with identical bytes and a new mtime: nothing reruns; with other bytes (new file or new
  mtime): the day, then the rebuild, and a new run key;
- a late day (delivered after later days were built): the sensor requests it and its first materialization
  fires the rebuild automation, also with 120 partitions (Dagster's UI limit of 100 does not stop the sensor);
- a removed raw day: nothing plans it again, what was built from it stays;
- the nightly's run keys: Dagster de-duplicates a schedule's run keys per tick, so a day (or rebuild) whose run
  failed last night is requested again tonight with the same key and runs;
- an invalid settings file (not UTF-8, bad TOML, out-of-range value, unknown section): one SettingsError line
  naming the key and the file;
- the sensor keeps no cursor; per tick it stats the raw files and reads the latest tags of the daily assets
  (a constant number of queries, rows growing with the days); the raw digests are cached, the secret's slow
  derivation is cached per process.
"""
from __future__ import annotations

import gzip
import logging
import time

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.sensor import fetch_existing_runs

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.staleness import DATA_VERSION_TAG
from formats.home import DataHome
from formats.settings import SettingsError
from tests.inplace import rewrite_in_place
from tests.unit.test_automation import (  # noqa: F401 - fixtures
    DAYS,
    _land_day,
    _plan,
    _pretend_built,
    _schedule_context,
    _sensor_context,
    home,
    instance,
)

GLOBAL_ASSETS = ("duplicate_clusters", "decisions", "pairs", "split_pairs", "published_dataset")


# --- 1. a daily run that ends while a rebuild runs is never rebuilt by the automation ---------------------
#
# rebuild_when_inputs_change (automation.py:351, condition staleness.py:49 REBUILD_CONDITION) is
# any_deps_match(data_version_changed | will_be_requested).since_last_handled() & ~any_deps_in_progress &
# ~in_progress. since_last_handled() resets on newly_updated: when the rebuild R1 that a first day started
# materializes the global assets, every trigger seen while R1 ran is cleared (Dagster's SinceCondition: step 2,
# "remove all newly-true reset partitions"). Evaluated tick by tick: day 1 changes -> 5 requested (R1);
# R1 starts (a real run with its planned materializations, STARTED); day 2's features get a new data version
# while R1 runs -> 0 (in progress, correct); R1 materializes the five globals and succeeds -> 0, and 0 on every
# later tick. Day 2 is never curated/published by the automation; README ("Running it every night": "within a
# minute of the last file landing the day is ingested, then curated, split and published as a new version")
# holds only if no rebuild is running, and the nightly catches it up to a day later. The control (day 2 changes
# after R1 ended) requests 5. Every catch-up (app_export's up to 31 days a night, a backfill, two exports an hour
# apart with a long curation) hits this.

def _rebuild_started(instance, job=None, assets=GLOBAL_ASSETS, tags=None, at: float | None = None) -> dg.DagsterRun:
    """A run of ``assets`` (default: the globals) as ``job`` (default: the rebuild job) as Dagster records one
    starting: STARTED, with its RUN_START event (the run's start time: ``at``, default now)."""
    job = job or defs.resolve_job_def("rebuild_dataset_job")
    run = instance.create_run_for_job(job, asset_selection=frozenset(dg.AssetKey(a) for a in assets),
                                      status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.handle_new_event(EventLogEntry(
        error_info=None, level=logging.INFO, user_message="", run_id=run.run_id,
        timestamp=time.time() if at is None else at,
        dagster_event=DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=job.name)))
    return run


def _materialize(instance, run: dg.DagsterRun, versions: dict, partition: str | None = None) -> None:
    """``run`` materializes each asset of ``versions`` with its data version."""
    for asset, version in versions.items():
        instance.report_dagster_event(DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=run.job_name,
            event_specific_data=StepMaterializationData(dg.AssetMaterialization(
                asset_key=asset, partition=partition, tags={DATA_VERSION_TAG: version}))), run_id=run.run_id)


def _succeed(instance, run: dg.DagsterRun) -> None:
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                                               job_name=run.job_name), run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS


def _rebuild_ended(instance, run: dg.DagsterRun, versions: dict) -> None:
    """The rebuild materializes the globals with the versions its steps took when they started, then succeeds."""
    _materialize(instance, run, {asset: versions[asset] for asset in GLOBAL_ASSETS})
    _succeed(instance, run)


def _global_versions(home, instance) -> dict:
    """The versions a rebuild starting now records (the plan's expected ones), by asset."""
    expected = _plan(home, instance).expected
    by_stage = {"duplicate_clusters": "dedup", "decisions": "decisions", "pairs": "pairs", "split_pairs": "splits",
                "published_dataset": "publish"}
    return {asset: expected[(stage, None)] for asset, stage in by_stage.items()}


def _sensor_requests(home, instance, state: dict) -> list[dg.RunRequest]:
    """One tick of ``rebuild_when_inputs_change`` as the daemon sees it: the requests whose run key it has not
    seen before in ``state`` (the daemon drops a key the sensor used before)."""
    context = dg.build_sensor_context(instance=instance,
                                      resources={"data_home": automation.PickapicHome(root=str(home.root))},
                                      repository_def=defs.get_repository_def())
    result = automation.rebuild_sensor.evaluate_tick(context)
    seen = state.setdefault("keys", set())
    new = [request for request in result.run_requests or [] if request.run_key not in seen]
    seen.update(request.run_key for request in new)
    state["skip"] = result.skip_message
    return new


def _ticker(home, instance, state: dict | None = None):
    """Ticks of ``rebuild_when_inputs_change``: each returns how many assets it newly requested."""
    state = {} if state is None else state
    return lambda: sum(len(request.asset_selection) for request in _sensor_requests(home, instance, state))


def _raw_sensor_skips(home: DataHome, instance, payloads: tuple[bytes, ...]) -> list[list[str]]:
    """Day 1 delivered with each of ``payloads`` in turn, the raw sensor ticked and its run recorded as the daemon
    records it, then built: per delivery, the run keys the daemon would drop as already run by this sensor."""
    day = DAYS[0]

    class Sensor:            # what fetch_existing_runs reads of the remote sensor for runs without an origin
        name = automation.raw_partition_sensor.name

    skipped = []
    for payload in payloads:
        _land_day(home, day, payload=payload)
        result = automation.raw_partition_sensor.evaluate_tick(_sensor_context(home, instance))
        requests = [r for r in result.run_requests if r.partition_key == day]
        assert len(requests) == 1                             # the plan sees the change every time
        skipped.append(sorted(fetch_existing_runs(instance, Sensor, requests)))
        for request in requests:                              # what the daemon records for the run it starts
            create_run_for_test(instance, job_name="daily_partition_job", status=dg.DagsterRunStatus.SUCCESS,
                                tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: Sensor.name,
                                      "dagster/partition": day})
        _pretend_built(home, instance, _plan(home, instance))
    return skipped


def _features_changed(home, instance, day: str, payload: bytes) -> None:
    """``day`` delivered again with other bytes and its daily run ending: its ingest and fingerprints are
    recorded with the versions the plan now expects (the other days' again, unchanged)."""
    _land_day(home, day, payload=payload)
    _pretend_built(home, instance, _plan(home, instance), stages=("ingest", "features"))


def test_a_day_ingested_during_a_rebuild_gets_its_own_rebuild(home, instance):
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    tick = _ticker(home, instance, state)
    assert tick() == 0
    _features_changed(home, instance, DAYS[0], b'{"user_id": 1}\n')
    assert tick() == len(GLOBAL_ASSETS)                       # R1 requested
    versions = _global_versions(home, instance)               # what R1's steps read: day 1 new, day 2 old
    run = _rebuild_started(instance)
    assert tick() == 0 and state["skip"] == "a rebuild is queued or running"
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')    # day 2's daily run ends while R1 runs
    assert tick() == 0                                         # waits for R1: right
    _rebuild_ended(instance, run, versions)
    assert [tick() for _ in range(3)] == [len(GLOBAL_ASSETS), 0, 0]   # one rebuild (R2) for day 2
    # R2 runs and ends with nothing new: no third rebuild
    versions = _global_versions(home, instance)
    run = _rebuild_started(instance)
    assert tick() == 0
    _rebuild_ended(instance, run, versions)
    assert [tick() for _ in range(3)] == [0, 0, 0] and state["skip"] == "curation, splits and publish are fresh"
    _features_changed(home, instance, DAYS[0], b'{"user_id": 3}\n')  # a later daily run still gets one
    assert tick() == len(GLOBAL_ASSETS)


def test_a_rebuild_that_read_a_change_made_during_it_gets_no_second_one(home, instance):
    """A daily run that ends after the rebuild started but before its steps read the inputs: the rebuild's
    versions include it, the plan says fresh, and nothing more is requested."""
    _pretend_built(home, instance, _plan(home, instance))
    state: dict = {}
    run = _rebuild_started(instance)
    _features_changed(home, instance, DAYS[1], b'{"user_id": 2}\n')
    _rebuild_ended(instance, run, _global_versions(home, instance))   # its steps started after the change
    assert _sensor_requests(home, instance, state) == []
    assert state["skip"] == "curation, splits and publish are fresh"


# --- 2. a day re-delivered with its earlier bytes is not re-ingested by the sensor ----------------------------
#
# raw_partition_sensor keys a day's run by the features version it will produce (automation.py:261
# daily_requests: run_key f"raw-{day}-{version}"), and Dagster's sensor daemon skips a request whose run key any
# earlier run of the sensor carried (dagster/_daemon/sensor.py fetch_existing_runs: every run with the key and
# the sensor's name, whatever its age or status). Delivered A, then a corrected B, then A again (the correction
# rolled back): the plan says the day is stale ("raw files changed"), the sensor asks for raw-D-<version of A>,
# the run key of the first delivery's run, and the daemon drops it ("already completed"). The warehouse keeps
# B's rows until the nightly. README: "run key = the day's expected data version, so a re-export with other
# bytes runs again". The same holds for a day whose sensor run failed: the sensor never asks for it again.

def test_a_day_redelivered_with_its_earlier_bytes_is_reingested_by_the_sensor(fast_tmp, instance):
    skipped = _raw_sensor_skips(DataHome(fast_tmp / "home"), instance,
                                (b'{"user_id": 1}\n', b'{"user_id": 2}\n', b'{"user_id": 1}\n'))   # A, B, A again
    assert skipped == [[], [], []], f"requests the daemon skips as already run: {skipped}"


# --- 3. a raw file rewritten in place with its size and mtime kept is never seen as changed -------------------
#
# The plan's content digest of a raw file (pipelines/provenance.py:60 RawDigests.file) is taken from
# cache/raw_day_digests.json whenever [size, mtime_ns, inode] match, and the build stamp (buildstamp.py:53,
# raw_stats) uses the same key. A corrected export copied over the old file with `cp -p` / `rsync -t --inplace`
# / `touch -r` (same inode, mtime put back) and the same size is "up to date" for `pickapic build`, the sensor
# and the nightly, forever (until the cache file is deleted: then the plan sees it at once). README, "What
# `pickapic build` runs": stale when "a raw file changed (other bytes ...)"; the README's own JPEG digest cache
# (section 6) names exactly this rewrite (`cp -p`, `touch -r`) and keys on ctime too, which utime cannot set.

def test_a_raw_file_rewritten_in_place_with_its_mtime_put_back_is_stale(fast_tmp, instance):
    home = DataHome(fast_tmp / "home")
    day = DAYS[0]
    _land_day(home, day, payload=b'{"user_id": 1}\n')
    _pretend_built(home, instance, _plan(home, instance))
    path = home.raw_day(day) / "users.jsonl.gz"
    before, old = path.stat(), path.read_bytes()
    new = gzip.compress(b'{"user_id": 2}\n', mtime=0)
    assert len(new) == len(old) and new != old
    rewrite_in_place(path, new, before)          # cp -p over the file: same inode, other bytes, same size, its mtime
    plan = _plan(home, instance)
    assert [run.partition for run in plan.runs][:1] == [day], plan.describe()


# --- 4. a relative moderation path makes the plan depend on the process's working directory -----------------
#
# curation.banned_users_file / phrases_file accept any string (README settings table: "a string"); a relative
# one is read as Path(value) (staleness.py:61 moderation_files, pipelines/curation/decisions.py:344), i.e.
# against the current directory of whoever runs. Built with `pickapic build` from the home (the list found),
# the same home planned from another directory (the daemon of `pickapic serve` under systemd runs in /) is
# stale: "decisions: inputs changed", and the rebuild it requests reads the list from elsewhere (decisions
# fails "banned users list moderation/banned.txt does not exist", or reads another file). Nothing changed.

def test_a_relative_moderation_path_plans_the_same_from_any_working_directory(fast_tmp, home, instance, monkeypatch):
    (home.root / "moderation").mkdir()
    (home.root / "moderation" / "banned.txt").write_text("u1\n")
    (home.root / "pickapic.toml").write_text('[curation]\nbanned_users_file = "moderation/banned.txt"\n')
    monkeypatch.chdir(home.root)                     # `cd /srv/pickapic && pickapic build`
    _pretend_built(home, instance, _plan(home, instance))
    assert _plan(home, instance).up_to_date
    elsewhere = fast_tmp / "daemon-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                     # the daemon's working directory
    plan = _plan(home, instance)
    assert plan.up_to_date, plan.describe()


# --- 5. a settings file that is a dangling link (or not a file) is read as "no settings" -----------------------
#
# formats/settings.py:411 load(): `if path.is_file()` -- a HOME/pickapic.toml that exists but is a link whose
# target is gone (a config checkout moved, /etc not mounted) or a folder is silently the defaults. The next
# nightly (automation.py:281) plans with the defaults and requests the rebuild: decisions, pairs, splits and
# publish run with the default splits and the DEFAULT pseudonym secret, and publish a new `latest`. A missing
# file is a new home; a settings path that is there but unreadable should stop the tick naming the file, as a
# bad value does (`pickapic settings --write` already refuses such a path: settings.py:444).

def test_a_dangling_settings_link_stops_the_nightly_instead_of_rebuilding_with_defaults(fast_tmp, home, instance):
    target = fast_tmp / "etc" / "pickapic.toml"
    target.parent.mkdir()
    target.write_text('[curation]\npseudonym_secret = "this deployment\'s own long secret"\n'
                      '[splits]\nheldout_fraction = 0.2\n')
    (home.root / "pickapic.toml").symlink_to(target)
    _pretend_built(home, instance, _plan(home, instance))
    assert "up to date" in automation.nightly_schedule.evaluate_tick(_schedule_context(home, instance)).skip_message
    target.rename(target.with_name("moved.toml"))    # the link's target goes away between two nights
    try:
        result = automation.nightly_schedule.evaluate_tick(_schedule_context(home, instance))
    except (SettingsError, dg.DagsterError) as error:
        # Dagster wraps the schedule's own error (ScheduleExecutionError); the tick shows the cause's message
        assert "pickapic.toml" in f"{error} {error.__cause__}", (error, error.__cause__)
        return
    requested = [(r.partition_key, r.asset_selection) for r in result.run_requests]
    assert not requested, f"the nightly rebuilds with the default settings: {requested}"
