"""Hostile review rev26f of fix26d1 (commit 5021fbd, `dagster_project/ticklogs.py` wired into
`dagster_project/automation.py`): the raw-day sensor's once-per-change raw-zone line (`raw_zone_report`,
`say_raw_zone`, the digest kept in its cursor), the quiet freshness sensor (`quiet_freshness_sensor`, its JSON
cursor), and the nightly schedule's pruning of tick logs (`prune_tick_logs`, `tick_log_days`).

Run through Dagster's own sensor daemon loop (``execute_sensor_iteration``, the helpers of
`tests/unit/test_fix26d1.py`) over a real home's instance and the project's definitions, and the real instance's
`dagster.yaml` retention settings.

All four fixed the same day (dagster_project/ticklogs.py; README section 9).
"""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import SensorInstigatorData, TickStatus

from dagster_project import ticklogs
from dagster_project.build import use_home
from formats.home import DataHome
from formats.rawzone import RAW_FILE_NAMES, RawZoneProblem, RawZoneScan
from tests.unit.test_fix26d1 import FRESHNESS, RAW, START, daemon, messages, tick, tick_logs


@pytest.fixture
def home(fast_tmp: Path, monkeypatch) -> DataHome:
    monkeypatch.setenv("DAGSTER_HOME", "")         # both restored after the test: use_home sets them
    monkeypatch.setenv("PICKAPIC_HOME", "")
    home = DataHome(fast_tmp / "home")
    home.raw_logs.mkdir(parents=True)
    use_home(home)
    return home


def _remote_sensor(context, name: str):
    entry = next(iter(context.create_request_context().get_code_location_entries().values()))
    return next(s for s in entry.code_location.get_repository("__repository__").get_sensors() if s.name == name)


def _set_cursor(instance: dg.DagsterInstance, context, name: str, cursor: str | None):
    """What the UI's "set cursor" does (dagster_graphql.implementation.fetch_sensors.set_sensor_cursor)."""
    sensor = _remote_sensor(context, name)
    state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
    data = state.instigator_data
    instance.update_instigator_state(state.with_data(SensorInstigatorData(
        last_tick_timestamp=data.last_tick_timestamp, last_run_key=data.last_run_key,
        min_interval=sensor.min_interval_seconds, cursor=cursor, sensor_type=sensor.sensor_type)))
    return sensor


def test_a_keep_forever_retention_keeps_the_tick_logs(home: DataHome) -> None:
    now = time.time()
    folder = home.dagster_home / "storage" / "__repository__" / RAW
    folder.mkdir(parents=True)
    old = folder / "12.err"
    old.write_text("{}\n")
    os.utime(old, (now - 30 * 86400, now - 30 * 86400))
    yaml = home.dagster_home / "dagster.yaml"
    yaml.write_text(yaml.read_text() + "retention:\n  sensor:\n    purge_after_days:\n      skipped: -1\n")
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        removed = ticklogs.prune_tick_logs(instance, "__repository__", [RAW], now=now)
    assert removed == 0 and old.exists()


def test_a_failing_raw_sensor_does_not_repeat_the_raw_zone_line_every_tick(home: DataHome) -> None:
    (home.raw_logs / "notes.txt").write_text("x")            # a stray entry: said once
    day = home.raw_day("2025-01-01")
    day.mkdir()
    for name in RAW_FILE_NAMES:                              # a complete day: the sensor goes on to plan
        (day / name).write_bytes(b"")
    (home.root / "pickapic.toml").write_text("[[[ not toml\n")   # a typo in the settings: every tick fails
    with daemon(home, {RAW}) as (instance, context):
        for minutes in range(0, 4 * 30, 30):
            tick(context, START + dt.timedelta(minutes=minutes))
        sensor = _remote_sensor(context, RAW)
        ticks = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=10)
    assert [t.status for t in ticks] == [TickStatus.FAILURE] * 4           # the failure itself is recorded
    said = [text for _level, text in messages(tick_logs(home, RAW)) if "raw zone:" in text]
    assert len(said) == 1, said


def test_a_deeply_nested_freshness_cursor_does_not_fail_every_tick(home: DataHome) -> None:
    with daemon(home, {FRESHNESS}) as (instance, context):
        tick(context, START)                                  # its first tick: a run of the check requested
        sensor = _set_cursor(instance, context, FRESHNESS, "[" * 100_000)
        tick(context, START + dt.timedelta(minutes=30))
        [last] = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1)
        assert last.status in (TickStatus.SUCCESS, TickStatus.SKIPPED), last.error and last.error.message


def test_marker_in_day_folders_is_not_reported_as_days_not_ingested() -> None:
    days = ["2025-01-01", "2025-01-02"]
    scan = RawZoneScan(days, [RawZoneProblem(f"raw/app_logs/dt={day}/_SUCCESS", f"raw/app_logs/dt={day}",
                                             "unexpected_file", "'_SUCCESS' is not one of the four files", 0)
                              for day in days])
    report = ticklogs.raw_zone_report(scan, [])
    assert report.markers_only
    assert "2 entries not ingested" not in report.line(), report.line()
    assert "entries that are not days" not in report.note(), report.note()
