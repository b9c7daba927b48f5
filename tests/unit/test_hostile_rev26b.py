"""Hostile review rev26b: the data home run as a real deployment for a year, every night (`pickapic build`, and
`pickapic serve`'s daemon with its sensors and schedules), hunting for what grows without bound or whose nightly
cost grows with the length of the history.

Measured by running, not filed (bounded, or documented and accepted in the README):
- 40 nights of a simulated home (40 users, 60 rankings a day, one `pickapic build` a night, folder sizes and file
  counts after every night): every folder under the home grows by the same amount each night. `HOME/dagster/history`
  grows 2.5 MB a night after 10, 20 and 40 nights alike (README: 2.35 MB, "not by the history"); the per-night
  size of each asset's materialization event is flat; the JPEG digest cache (`cache/train_jpg_sha256`, at most 16
  parts), the contract caches and `pickapic.history` stay the size of what is published; `cache/tmp` and the
  features staging are emptied after each run; nothing is left in /tmp.
- `strace -f -e trace=openat` of night 11 and night 41 of the same home: the new day's JPEGs only are hashed
  (295 vs 315 opens under `blobs/train`); the global stages (curation, splits, publish) re-read every day's
  partition and every sidecar each night (documented: "the global stages are recomputed over the whole history").
- Peak RSS of the nightly build: 589 MB after 10 days, 578 MB after 40; `plan_build` (what every sensor tick runs)
  takes 0.07 s at 42 days.

What is filed here is found by running `pickapic serve` (webserver and daemon) over the 42-day home, then
reproduced in process through Dagster's own sensor daemon loop (`dagster._daemon.sensor.execute_sensor_iteration`,
the loop the daemon runs, over the home's instance and the project's definitions, with the clock advanced by
Dagster's `freeze_time`): every sensor tick that writes to ``context.log`` leaves a log file in
``HOME/dagster/storage/__repository__/<sensor>/<tick id>.err``; Dagster purges the ticks that requested nothing
after 7 days, but never their log files.

The retention defect (the last test) was fixed the same day (fix26d2: readers hold a shared flock on the version
they read, retention keeps a held version; tests/unit/test_fix26d2.py); the three sensor ones by fix26d1 (dagster_project/ticklogs.py: a sensor logs once per
change in one bounded line, the nightly schedule prunes tick logs older than Dagster keeps skipped ticks;
tests/unit/test_fix26d1.py).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from dagster_project import automation
from dagster_project.build import use_home
from formats.home import DataHome

REPO = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 1, 5, 3, 0, tzinfo=dt.timezone.utc)
TICKS_A_DAY = 4       # the clock moves 6 hours between two passes of the daemon's sensor loop


@pytest.fixture
def home(fast_tmp: Path, monkeypatch) -> DataHome:
    """A new data home whose Dagster instance this process uses (as `pickapic serve` points its daemon at it)."""
    monkeypatch.setenv("DAGSTER_HOME", "")         # both restored after the test: use_home sets them
    monkeypatch.setenv("PICKAPIC_HOME", "")
    home = DataHome(fast_tmp / "home")
    home.raw_logs.mkdir(parents=True)
    use_home(home)
    return home


@contextlib.contextmanager
def daemon(home: DataHome, running: set[str]) -> Iterator[tuple[dg.DagsterInstance, object]]:
    """The home's instance and a daemon workspace over the project's definitions (in process), with exactly the
    sensors named in ``running`` started (as the Automation tab would leave them) and every other one stopped."""
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="dagster_project.definitions",
                                                              working_directory=str(REPO)))
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance, \
            create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
        entry = next(iter(context.create_request_context().get_code_location_entries().values()))
        repository = entry.code_location.get_repository("__repository__")
        for sensor in repository.get_sensors():
            state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
            if sensor.name in running:
                instance.start_sensor(sensor)
            elif state is None or state.is_running or sensor.default_status == dg.DefaultSensorStatus.RUNNING:
                instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        yield instance, context


def tick(context, when: dt.datetime) -> None:
    """One pass of the sensor daemon's loop at ``when`` (each running sensor whose interval has passed ticks)."""
    with freeze_time(when):
        list(execute_sensor_iteration(context, logging.getLogger("rev26b"), None, None))


def instance_files(home: DataHome, instance: dg.DagsterInstance) -> list[Path]:
    """Every file the instance holds outside what its runs recorded (a run's event database, its compute logs):
    what the README's "Disk over a year" counts as growing by what each night's runs record is left out."""
    run_ids = {run.run_id for run in instance.get_runs()}
    out = []
    for path in home.dagster_home.rglob("*"):
        rel = path.relative_to(home.dagster_home).parts
        if not path.is_file() or (rel[0] == "storage" and rel[1] in run_ids):
            continue
        if rel[:2] == ("history", "runs") and path.name.split(".")[0] in run_ids:
            continue
        out.append(path)
    return out


def refresh_published(instance: dg.DagsterInstance, when: dt.datetime) -> None:
    """What a night's rebuild records for `published_dataset`: a new materialization, and the freshness check
    evaluated on it (the rebuild job runs the check after the asset)."""
    with freeze_time(when):
        instance.report_runless_asset_event(dg.AssetMaterialization("published_dataset"))
        result = dg.materialize([dg.AssetSpec("published_dataset"), *automation.freshness_checks], instance=instance,
                                selection=dg.AssetSelection.checks(*automation.freshness_checks))
    assert [check.passed for check in result.get_asset_check_evaluations()] == [True]


def test_quiet_freshness_sensor_ticks_leave_no_file_for_good(home: DataHome) -> None:
    counts = {}
    with daemon(home, {automation.freshness_sensor.name}) as (instance, context):
        for day in range(20):
            night = START + dt.timedelta(days=day)
            refresh_published(instance, night)          # the night's rebuild: published, the check passed
            for n in range(TICKS_A_DAY):
                tick(context, night + dt.timedelta(minutes=30, hours=6 * n))
            counts[day + 1] = len(instance_files(home, instance))
        logs = sorted(p.name for p in (home.dagster_home / "storage").rglob("*.err")
                      if p.parent.name == automation.freshness_sensor.name)
    assert logs, "the sensor ticked and logged (the state this test is about)"
    # 20 quiet days hold at most a few more files than 10 (Dagster's own records of the sensor are bounded)
    assert counts[20] <= counts[10] + 4, counts


def _plant_export_marker(home: DataHome) -> None:
    # the marker Spark / Hadoop / many export jobs write beside their output: a raw-zone entry that is not a day
    (home.raw_logs / "_SUCCESS").write_bytes(b"")


def test_raw_sensor_ticks_over_a_stray_raw_zone_entry_leave_no_file_for_good(home: DataHome) -> None:
    _plant_export_marker(home)
    counts = {}
    with daemon(home, {automation.raw_partition_sensor.name}) as (instance, context):
        for day in range(20):
            for n in range(TICKS_A_DAY):
                tick(context, START + dt.timedelta(days=day, hours=6 * n))
            counts[day + 1] = len(instance_files(home, instance))
        logs = [p for p in (home.dagster_home / "storage").rglob("*.err")
                if p.parent.name == automation.raw_partition_sensor.name]
    assert logs and "_SUCCESS" in logs[0].read_text(), "the sensor ticked and named the entry"
    assert counts[20] <= counts[10] + 4, counts


def test_what_a_quiet_raw_sensor_tick_writes_does_not_grow_with_the_history(home: DataHome) -> None:
    def written(days: int) -> int:
        for n in range(days):      # day folders whose tables are not there yet, each with the export's marker
            folder = home.raw_day((dt.date(2025, 1, 1) + dt.timedelta(days=n)).isoformat())
            folder.mkdir(exist_ok=True)
            (folder / "_SUCCESS").write_bytes(b"")
        logs = home.dagster_home / "storage"
        before = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file()) if logs.exists() else 0
        tick(context, START + dt.timedelta(days=days))
        return sum(p.stat().st_size for p in logs.rglob("*") if p.is_file()) - before

    with daemon(home, {automation.raw_partition_sensor.name}) as (_instance, context):
        at_10, at_40 = written(10), written(40)
    assert at_10 > 0, "the tick logged (the state this test is about)"
    assert at_40 <= at_10 + 2048, (at_10, at_40)


def test_retention_keeps_the_version_a_training_of_latest_is_reading(tmp_path: Path) -> None:
    from formats import dataset
    from pipelines.publish.versions import apply_retention
    from training import runs
    from training.synthetic import tiny_config, write_synthetic_version

    sizes = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}
    home = DataHome(tmp_path / "home")
    trained = home.datasets / "2023-03-01-aaaaaaaaaa"
    write_synthetic_version(trained, sizes, image_px=32)         # latest -> it: what the weekly schedule trains
    assert dataset.record_switch(home.datasets, trained.name, fsync=False) is None
    nights: list[list[str]] = []

    def nightly_publish_during_training(line: str) -> None:
        """The night's publish lands while the training runs: its version is switched to, then retention runs
        (what publish_dataset does after every switch), with publish.keep_versions = 1."""
        if line.startswith("step 2") and not nights:
            new = home.datasets / "2023-03-02-bbbbbbbbbb"
            write_synthetic_version(new, sizes, image_px=32, seed=1, link_latest=False)
            assert dataset.record_switch(home.datasets, new.name, fsync=False) is None
            dataset.switch_latest(home.datasets, new.name, fsync=False)
            nights.append(apply_retention(home, 1))

    done = runs.train_latest(home, tiny_config("", "", max_steps=12), progress=nightly_publish_during_training)
    assert nights, "the nightly publish ran during the training (the state this test is about)"
    assert done.version_dir == trained and done.result is not None
