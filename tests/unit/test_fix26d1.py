"""Fix of review rev26b's sensor defects (`tests/unit/test_hostile_rev26b.py`): a quiet sensor tick writes no log (the
freshness sensor logs a check's state when it changes or a run is requested; the raw-day sensor says what it skips in
the raw zone once, when that changes, in one line whose size does not grow with the number of days), and the nightly
schedule removes tick logs older than Dagster keeps skipped ticks (`dagster_project/ticklogs.py`).

The sensors run through Dagster's own sensor daemon loop (``execute_sensor_iteration``) over a home's instance and the
project's definitions, the clock moved by Dagster's ``freeze_time``, as the review ran them."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from dagster_project import automation, ticklogs
from dagster_project.build import use_home
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome

REPO = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 1, 5, 3, 0, tzinfo=dt.UTC)
RAW = automation.raw_partition_sensor.name
FRESHNESS = automation.freshness_sensor.name


@pytest.fixture
def home(fast_tmp: Path, monkeypatch) -> DataHome:
    monkeypatch.setenv("DAGSTER_HOME", "")         # both restored after the test: use_home sets them
    monkeypatch.setenv("PICKAPIC_HOME", "")
    home = DataHome(fast_tmp / "home")
    home.raw_logs.mkdir(parents=True)
    use_home(home)
    return home


@contextlib.contextmanager
def daemon(home: DataHome, running: set[str]) -> Iterator[tuple[dg.DagsterInstance, object]]:
    """The home's instance and a daemon workspace over the project's definitions, the sensors ``running`` started."""
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="dagster_project.definitions",
                                                              working_directory=str(REPO)))
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance, \
            create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
        entry = next(iter(context.create_request_context().get_code_location_entries().values()))
        for sensor in entry.code_location.get_repository("__repository__").get_sensors():
            if sensor.name in running:
                instance.start_sensor(sensor)
            else:
                instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        yield instance, context


def tick(context, when: dt.datetime) -> None:
    with freeze_time(when):
        list(execute_sensor_iteration(context, logging.getLogger("fix26d1"), None, None))


def tick_logs(home: DataHome, sensor: str) -> dict[str, list[dict]]:
    """Each tick log file of ``sensor`` (name -> its JSON records), in the order of the ticks."""
    folder = home.dagster_home / "storage" / "__repository__" / sensor
    if not folder.is_dir():
        return {}
    return {path.name: [json.loads(line) for line in path.read_text().splitlines() if line]
            for path in sorted(folder.iterdir(), key=lambda path: int(path.stem))}


def messages(logs: dict[str, list[dict]]) -> list[tuple[str, str]]:
    return [(record["levelname"], record["msg"]) for records in logs.values() for record in records]


def _day(home: DataHome, day: str, marker: bool = True) -> None:
    folder = home.raw_day(day)
    folder.mkdir(exist_ok=True)
    if marker:
        (folder / "_SUCCESS").write_bytes(b"")


def test_raw_sensor_says_what_it_skips_once_when_it_changes(home: DataHome) -> None:
    (home.raw_logs / "_SUCCESS").write_bytes(b"")            # an export's marker beside the day folders: information
    with daemon(home, {RAW}) as (_instance, context):
        for hours in range(0, 24, 6):
            tick(context, START + dt.timedelta(hours=hours))
        said = messages(tick_logs(home, RAW))
        assert said == [("INFO", (f"__repository__ - {RAW} - raw zone: 1 exporter marker file left alone: '_SUCCESS', an exporter's "
                                  "completion marker, in 1 folder(s) (raw/app_logs): left alone, not a table (each "
                                  "build warns of each and records them in raw_zone_problems)"))]

        (home.raw_logs / "notes.txt").write_text("x")            # a change: said again, a warning, both named
        for hours in range(24, 48, 6):
            tick(context, START + dt.timedelta(hours=hours))
        said = messages(tick_logs(home, RAW))
        assert len(said) == 2 and said[1][0] == "WARNING", said
        assert "1 entry not ingested, 1 exporter marker file left alone: raw/app_logs/notes.txt: unexpected_entry: 'notes.txt' is not a dt=YYYY-MM-DD" \
            in said[1][1] and "'_SUCCESS', an exporter's completion marker" in said[1][1]

        for n in range(30):          # day folders, each with the marker: a name already said, nothing to say
            _day(home, (dt.date(2025, 1, 1) + dt.timedelta(days=n)).isoformat())
            if n % 10 == 0:
                tick(context, START + dt.timedelta(hours=48 + n))
        for hours in range(84, 96, 6):
            tick(context, START + dt.timedelta(hours=hours))
        assert len(tick_logs(home, RAW)) == 2

        (home.raw_logs / "_SUCCESS").unlink()
        (home.raw_logs / "notes.txt").unlink()              # a change: markers alone, in the day folders
        for hours in range(96, 120, 6):
            tick(context, START + dt.timedelta(hours=hours))
        said = messages(tick_logs(home, RAW))
        assert len(said) == 3 and said[2][0] == "INFO", said
        assert said[2][1].endswith("raw zone: 30 exporter marker files left alone: '_SUCCESS', an exporter's completion marker, "
                                   "in 30 folder(s) (raw/app_logs/dt=2025-01-01, ...): left alone, not a table (each "
                                   "build warns of each and records them in raw_zone_problems)")

        (home.raw_logs / "dt=2025-01-02" / "stray.csv").write_text("x")     # a new name in a day folder
        for hours in range(120, 132, 6):
            tick(context, START + dt.timedelta(hours=hours))
        said = messages(tick_logs(home, RAW))
        assert len(said) == 4 and said[3][0] == "WARNING" and "1 entry not ingested, 30 exporter marker files left alone: 'stray.csv' in 1 day " \
            "folder(s) (raw/app_logs/dt=2025-01-02): not one of the four table files; not ingested; '_SUCCESS'" \
            in said[3][1], said

        (home.raw_logs / "dt=2025-01-02" / "stray.csv").unlink()
        for path in home.raw_logs.glob("dt=*/_SUCCESS"):
            path.unlink()
        for hours in range(132, 156, 6):
            tick(context, START + dt.timedelta(hours=hours))
        said = messages(tick_logs(home, RAW))
        again = "raw zone: every entry is a day again (the entries skipped before are gone)"
        assert len(said) == 5 and said[4] == ("INFO", f"__repository__ - {RAW} - {again}"), said
        assert len(tick_logs(home, RAW)) == 5                          # one file per tick that said something


def test_raw_zone_report_does_not_grow_with_the_days() -> None:
    from formats.rawzone import RawZoneProblem, RawZoneScan

    def scan(days: int, stray: str = "notes.txt") -> RawZoneScan:
        problems = []
        for n in range(days):
            entry = f"raw/app_logs/dt={dt.date(2025, 1, 1) + dt.timedelta(days=n)}"
            problems += [RawZoneProblem(f"{entry}/_SUCCESS", entry, "unexpected_file", "'_SUCCESS' is not one of", 0),
                         RawZoneProblem(f"{entry}/{stray}", entry, "unexpected_file", f"{stray!r} is not one of", 1)]
        problems += [RawZoneProblem(f"raw/app_logs/junk{k}", f"raw/app_logs/junk{k}", "unexpected_entry",
                                    f"'junk{k}' is not a dt=YYYY-MM-DD day folder; not ingested", 3) for k in range(5)]
        return RawZoneScan([], sorted(problems, key=lambda p: (p.path, p.reason)))

    small, large = ticklogs.raw_zone_report(scan(3), []), ticklogs.raw_zone_report(scan(400), ["2999-01-01"])
    assert small.entries == 8 and large.entries == 406
    assert len(large.line()) < 1000 and len(large.note()) < 1000
    assert abs(len(large.line()) - len(small.line())) < 30
    assert large.line().endswith("; and 5 more (each build warns of each and records them in raw_zone_problems)")
    # what the sensor keeps (its cursor): the kinds, not their counts; a new kind of stray name changes it
    assert ticklogs.raw_zone_report(scan(400), []).state == small.state != large.state
    assert ticklogs.raw_zone_report(scan(3, "{0}.txt"), []).state != small.state
    assert not small.markers_only and ticklogs.raw_zone_report(RawZoneScan([], []), []).state == ticklogs.NOTHING_SAID


def _published(instance: dg.DagsterInstance, when: dt.datetime) -> None:
    """A night's rebuild: `published_dataset` materialized and its freshness check evaluated (passed)."""
    with freeze_time(when):
        instance.report_runless_asset_event(dg.AssetMaterialization("published_dataset"))
        result = dg.materialize([dg.AssetSpec("published_dataset"), *automation.freshness_checks], instance=instance,
                                selection=dg.AssetSelection.checks(*automation.freshness_checks))
    assert [check.passed for check in result.get_asset_check_evaluations()] == [True]


def test_freshness_sensor_logs_a_state_once_and_every_request(home: DataHome) -> None:
    keys = [spec.key for check in automation.freshness_checks for spec in check.check_specs]
    with daemon(home, {FRESHNESS}) as (instance, context):
        tick(context, START)                 # never evaluated: a run of the check requested, and said
        first = messages(tick_logs(home, FRESHNESS))
        assert len(first) == 1 and "has never been executed before. Adding to run request" in first[0][1], first
        [run] = instance.get_runs()
        assert run.tags.get("dagster/sensor_name") == FRESHNESS
        instance.delete_run(run.run_id)
        for day in range(3):                 # nightly rebuilds: the state (passed) said once, quiet ticks after
            _published(instance, START + dt.timedelta(days=day, hours=1))
            for hours in range(2, 24, 3):
                tick(context, START + dt.timedelta(days=day, hours=hours))
        said = messages(tick_logs(home, FRESHNESS))
        assert len(said) == 2 and "previously passed, but cannot be overdue again until" in said[1][1], said
        assert len(tick_logs(home, FRESHNESS)) == 2                    # one file per tick that said something
        tick(context, START + dt.timedelta(days=3, hours=12))          # no rebuild for 35 hours: overdue, requested
        overdue = messages(tick_logs(home, FRESHNESS))
        assert len(overdue) == 3 and "can be overdue again. Adding to run request" in overdue[2][1], overdue
        requested = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": FRESHNESS}))
        assert len(requested) == 1 and requested[0].asset_check_selection == {keys[0]}
    cursor = json.loads(next(state for state in instance_states(home) if state[0] == FRESHNESS)[1])
    assert cursor == {"left_off": None, "said": {"published_dataset:freshness_check": "requested"}}


def instance_states(home: DataHome) -> list[tuple[str, str | None]]:
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        return [(state.name, state.instigator_data.cursor if state.instigator_data else None)
                for state in instance.all_instigator_state()]


def test_freshness_sensor_reads_the_cursor_dagsters_sensor_left() -> None:
    keys = [spec.key for check in automation.freshness_checks for spec in check.check_specs]
    assert ticklogs._freshness_cursor("published_dataset:freshness_check", keys) == (keys[0], {})
    assert ticklogs._freshness_cursor(None, keys) == (None, {})
    assert ticklogs._freshness_cursor('{"left_off": "gone:check", "said": {"a": "passed"}}', keys) == \
        (None, {"a": "passed"})
    assert ticklogs._freshness_cursor("[1]", keys) == (None, {})


def _plant(folder: Path, name: str, age_days: float, now: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("{}\n")
    os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    return path


def test_nightly_schedule_prunes_tick_logs_older_than_skipped_ticks_are_kept(home: DataHome, fast_tmp: Path) -> None:
    import time

    now = time.time()
    logs = home.dagster_home / "storage" / "__repository__"
    old = [_plant(logs / RAW, "12.err", 8, now), _plant(logs / FRESHNESS, "3.err", 30, now),
           _plant(logs / "nightly_schedule", "20260101_020000.err", 9, now)]
    kept = [_plant(logs / RAW, "40.err", 6, now), _plant(logs / RAW, "notes.err", 30, now),   # not a tick's name
            _plant(logs / "someone_elses_sensor", "5.err", 30, now),                          # not ours
            _plant(fast_tmp / "elsewhere", "7.err", 30, now)]
    (logs / "rebuild_when_inputs_change").symlink_to(fast_tmp / "elsewhere")                    # never followed
    run_log = _plant(home.dagster_home / "storage" / "0f1e2d3c", "compute_logs.err", 30, now)   # a run's: not a tick's
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert ticklogs.tick_log_days(instance) == 7
        context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                            resources={"data_home": PickapicHome(root=str(home.root))})
        result = automation.nightly_schedule.evaluate_tick(context)
    assert "no raw day" in result.skip_message
    assert [path.exists() for path in old] == [False] * 3
    assert all(path.exists() for path in kept) and run_log.exists()


def test_prune_tick_logs_is_bounded_and_reads_dagsters_retention(home: DataHome) -> None:
    import time

    now = time.time()
    folder = home.dagster_home / "storage" / "__repository__" / RAW
    for n in range(30):
        _plant(folder, f"{n}.err", 10, now)
    retention = "retention:\n  sensor:\n    purge_after_days:\n      skipped: 20\n"
    (home.dagster_home / "dagster.yaml").write_text((home.dagster_home / "dagster.yaml").read_text() + retention)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert ticklogs.tick_log_days(instance) == 20
        assert ticklogs.prune_tick_logs(instance, "__repository__", [RAW], now=now) == 0     # 10 days < 20
        assert ticklogs.prune_tick_logs(instance, "__repository__", [RAW], now=now, days=7, seconds=-1) == 0  # no time
        assert ticklogs.prune_tick_logs(instance, "__repository__", [RAW], now=now, days=7, limit=12) == 12
        assert len(list(folder.iterdir())) == 18
        assert ticklogs.prune_tick_logs(instance, "__repository__", [RAW, "../x", "missing"], now=now, days=7) == 18
    assert not list(folder.iterdir())
