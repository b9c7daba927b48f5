"""The nightly schedule, the raw-partition sensor and the rebuild chaining produce the right requests."""
import datetime as dt
import gzip

import dagster as dg

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from pipelines.home import DataHome


def _land_day(home: DataHome, day: str, tables=automation.RAW_TABLE_FILES) -> None:
    folder = home.raw_day(day)
    folder.mkdir(parents=True, exist_ok=True)
    for name in tables:
        with gzip.open(folder / name, "wb") as handle:
            handle.write(b"")


def _sensor_context(root):
    return dg.build_sensor_context(resources={"data_home": PickapicHome(root=str(root))},
                                   repository_def=defs.get_repository_def())


def test_nightly_schedule_requests_yesterday_partition():
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2023, 3, 5, 2, 0, tzinfo=dt.timezone.utc),
        repository_def=defs.get_repository_def())
    request = automation.nightly_schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2023-03-04"
    assert request.run_key == "nightly-2023-03-04"
    assert automation.nightly_schedule.cron_schedule == "0 2 * * *"
    assert automation.nightly_schedule.execution_timezone == "UTC"


def test_nightly_schedule_targets_the_daily_partition_job():
    assert automation.nightly_schedule.job_name == "daily_partition_job"
    assert automation.train_schedule.job_name == "train_model_job"


def test_raw_partition_sensor_requests_complete_days_only(tmp_path):
    home = DataHome(tmp_path)
    _land_day(home, "2023-02-13")
    _land_day(home, "2023-02-14")
    _land_day(home, "2023-02-15", tables=automation.RAW_TABLE_FILES[:2])  # still landing
    context = _sensor_context(tmp_path)
    result = automation.raw_partition_sensor.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2023-02-13", "2023-02-14"]
    keys = [r.run_key for r in result.run_requests]
    assert len(set(keys)) == 2

    # the same files give the same run keys (Dagster skips them); a re-export changes the key
    again = automation.raw_partition_sensor.evaluate_tick(
        _sensor_context(tmp_path))
    assert [r.run_key for r in again.run_requests] == keys
    with gzip.open(home.raw_file("2023-02-14", "rankings"), "wb") as handle:
        handle.write(b'{"x": 1}\n')
    changed = automation.raw_partition_sensor.evaluate_tick(
        _sensor_context(tmp_path))
    assert changed.run_requests[0].run_key == keys[0]
    assert changed.run_requests[1].run_key != keys[1]


def test_raw_partition_sensor_skips_when_nothing_landed(tmp_path):
    context = _sensor_context(tmp_path)
    result = automation.raw_partition_sensor.evaluate_tick(context)
    assert not result.run_requests
    assert "no complete raw partition" in result.skip_message


def test_rebuild_sensor_is_chained_to_the_daily_job():
    sensor = defs.resolve_sensor_def("rebuild_after_daily_partition")
    assert sensor.job_name == "rebuild_dataset_job"
