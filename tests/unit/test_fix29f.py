"""Fixes of review rev29f (tests/unit/test_hostile_rev29f.py).

1. A run on home A's Dagster instance works on A only: a ``resources.data_home.config.root`` resolving to another
   data home is refused at launch (``coordinator.check_launch`` with the instance, the run coordinator) and by the
   run's steps (``PickapicHome.home`` checks the instance it was set up with); a link or a relative path to A is A.
2. ``automation.home_crons`` reads ``[schedules]`` alone: a refused value of another section, or a file that does
   not parse, no longer stops the definitions loading; it is logged and said in the schedules' and sensors'
   descriptions, while runs still refuse the file.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import automation
from dagster_project.build import use_home
from dagster_project.coordinator import RunConfigRefused, check_launch
from dagster_project.definitions import defs
from dagster_project.instance import home_job_origin
from dagster_project.resources import PickapicHome, check_instance_home, instance_home
from formats.home import DataHome
from formats.settings import SettingsError
from tests.unit.test_automation import _land_day

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-02-13"


@pytest.fixture
def homes(fast_tmp: Path, monkeypatch) -> tuple[DataHome, DataHome]:
    """Homes A and B side by side; this process uses A's instance (as `pickapic serve --home A` does)."""
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.setenv("PICKAPIC_HOME", "")
    first, other = DataHome(fast_tmp / "a"), DataHome(fast_tmp / "b")
    for home in (first, other):
        _land_day(home, DAY)
    use_home(other)                  # B has an instance of its own too
    use_home(first)
    return first, other


def _root(value) -> dict:
    return {"resources": {"data_home": {"config": {"root": value}}}}


# ----------------------------------------------------------------------------- 1. a run on another home's instance

def test_the_instance_knows_its_home(homes) -> None:
    first, other = homes
    with dg.DagsterInstance.get() as instance:
        assert instance_home(instance) == first.root.resolve()
    with dg.DagsterInstance.from_config(str(other.dagster_home)) as instance:
        assert instance_home(instance) == other.root.resolve()
    with dg.DagsterInstance.ephemeral() as instance:        # an instance of no data home: nothing to compare
        assert instance_home(instance) is None
        check_instance_home(other, instance, "root")
    assert instance_home(None) is None


def test_the_launch_check_refuses_another_homes_root_on_this_homes_instance(homes, monkeypatch) -> None:
    first, other = homes
    monkeypatch.setenv("FIX29F_OTHER", str(other.root))
    with dg.DagsterInstance.get() as instance:
        for value in (str(other.root), {"env": "FIX29F_OTHER"}):
            with pytest.raises(RunConfigRefused) as refused:
                check_launch(_root(value), instance)
            message = str(refused.value)
            assert "\n" not in message
            assert f"{other.root} is not the data home of this Dagster instance ({first.root.resolve()})" in message
            assert message.startswith("run refused at launch, nothing was queued or written")
        check_launch(_root(str(other.root)))                     # without the instance: as before (a data home)


def test_a_link_or_a_relative_path_to_this_home_is_this_home(homes, monkeypatch) -> None:
    first, _ = homes
    link = first.root.parent / "a-link"
    link.symlink_to(first.root, target_is_directory=True)
    monkeypatch.chdir(first.root.parent)
    monkeypatch.setenv("FIX29F_SELF", str(link))
    with dg.DagsterInstance.get() as instance:
        for value in ("", str(first.root), str(link), "a", "./a-link", "b/../a", {"env": "FIX29F_SELF"}):
            check_launch(_root(value), instance)
        for value in ("", str(link), "./a-link", "b/../a"):
            assert PickapicHome(root=value).home(instance).root == first.root.resolve()


def test_the_run_coordinator_refuses_a_run_on_another_home(homes) -> None:
    first, other = homes
    with dg.DagsterInstance.get() as instance:
        run = instance.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", run_config=_root(str(other.root))))
        with pytest.raises(RunConfigRefused, match="is not the data home of this Dagster instance"):
            instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))
        same = instance.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", run_config=_root(str(first.root)),
                                              remote_job_origin=home_job_origin("rebuild_dataset_job")))
        queued = instance.run_coordinator.submit_run(dg.SubmitRunContext(same, workspace=None))
        assert queued.status == dg.DagsterRunStatus.QUEUED


def test_a_run_executed_on_this_homes_instance_refuses_another_home_before_writing(homes) -> None:
    first, other = homes
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("rebuild_dataset_job").execute_in_process(
            instance=instance, run_config=_root(str(other.root)),
            asset_selection=[dg.AssetKey("duplicate_clusters")], raise_on_error=False)
        assert not result.success
        failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert failures and "is not the data home of this Dagster instance" in str(failures[0].step_failure_data.error)
        assert not instance.fetch_materializations(dg.AssetKey("duplicate_clusters"), limit=1).records
    assert not other.table_file("duplicate_clusters").exists()
    assert not first.table_file("duplicate_clusters").exists()


# ------------------------------------------------------------------- 2. a refused value outside [schedules]

def test_the_crons_come_from_schedules_alone_and_a_refused_value_elsewhere_is_a_warning(fast_tmp: Path) -> None:
    home = DataHome(fast_tmp / "home")
    home.root.mkdir()
    assert automation.home_crons_and_warning(home, environ={}) == (automation.home_crons(home, environ={}), None)
    (home.root / "pickapic.toml").write_text('[publish]\nkeep_versions = 0\n[schedules]\nnightly_cron = "5 3 * * *"\n')
    crons, warning = automation.home_crons_and_warning(home, environ={})
    assert crons.nightly_cron == "5 3 * * *"
    assert "publish.keep_versions = 0" in warning and "every run refuses it" in warning and "\n" not in warning
    with pytest.raises(RunConfigRefused, match="keep_versions"):        # runs still refuse the file
        check_launch(_root(str(home.root)))
    # a bad cron still stops the load, naming it (the README; tests/unit/test_automation.py)
    (home.root / "pickapic.toml").write_text('[publish]\nkeep_versions = 0\n[schedules]\nnightly_cron = "5 3 * *"\n')
    with pytest.raises(SettingsError, match="schedules.nightly_cron"):
        automation.home_crons(home, environ={})
    (home.root / "pickapic.toml").write_text("schedules = 3\n")
    with pytest.raises(SettingsError, match="must be a \\[section\\] table"):
        automation.home_crons(home, environ={})


@pytest.mark.parametrize("write", [
    lambda path: path.write_text('[schedules]\nnightly_cron = "5 3 * * *"\n[publish\n'),   # does not parse
    lambda path: path.write_bytes(b"[schedules]\nnightly_cron = '\xff'\n"),               # not UTF-8
    lambda path: path.symlink_to(path.parent / "gone.toml"),                               # a link to nothing
])
def test_a_file_that_cannot_be_read_gives_the_default_crons_with_a_warning(fast_tmp: Path, write) -> None:
    home = DataHome(fast_tmp / "home")
    home.root.mkdir()
    write(home.root / "pickapic.toml")
    crons, warning = automation.home_crons_and_warning(home, environ={})
    assert (crons.nightly_cron, crons.train_cron, crons.sensor_interval_s) == ("0 2 * * *", "0 4 * * 0", 60)
    assert "cannot be read" in warning and "default crons" in warning and "\n" not in warning
    # the environment still overrides, checked as before
    crons, _ = automation.home_crons_and_warning(home, environ={"PICKAPIC_NIGHTLY_CRON": "15 2 * * *"})
    assert crons.nightly_cron == "15 2 * * *"
    with pytest.raises(SettingsError, match=r"\$PICKAPIC_NIGHTLY_CRON"):
        automation.home_crons(home, environ={"PICKAPIC_NIGHTLY_CRON": "soon"})


def test_the_definitions_load_and_say_the_refused_file_in_the_ui_and_the_log(fast_tmp: Path) -> None:
    home = fast_tmp / "home"
    home.mkdir()
    (home / "pickapic.toml").write_text('[schedules]\ntrain_cron = "0 5 * * sun"\n[publish]\nkeep_versions = 0\n')
    code = ("from dagster_project.definitions import defs\n"
            "print(defs.resolve_schedule_def('weekly_training_schedule').cron_schedule)\n"
            "for name in ('nightly_schedule', 'weekly_training_schedule', 'app_export_schedule'):\n"
            "    print(defs.resolve_schedule_def(name).description)\n"
            "for name in ('raw_partition_sensor', 'rebuild_when_inputs_change'):\n"
            "    print(defs.resolve_sensor_def(name).description)\n")
    env = {**os.environ, "PICKAPIC_HOME": str(home), "DAGSTER_HOME": "", "PYTHONPATH": str(REPO)}
    for variable in automation.CRON_ENV.values():
        env.pop(variable, None)
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    cron, *descriptions = done.stdout.strip().splitlines()
    assert cron == "0 5 * * sun"
    assert len(descriptions) == 5
    assert all("WARNING" in line and "publish.keep_versions = 0" in line for line in descriptions), descriptions
    assert "publish.keep_versions = 0" in done.stderr                     # logged

