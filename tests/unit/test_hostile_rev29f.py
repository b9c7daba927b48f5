"""Hostile review rev29f: the Dagster side of a year-long deployment (``dagster_project/``: definitions, partitions,
automation's schedules and sensors, staleness, build, launcher, coordinator, the assets, ``pickapic build`` / ``ui`` /
``serve``), as users drive it from the Dagster UI and a nightly schedule rebuilds it.

Run against real Dagster (the home's own instance and ``dagster.yaml``, ``execute_in_process`` of the project's jobs,
``build_schedule_context`` / ``build_sensor_context`` ticks, ``coordinator.check_launch``).

Measured and found sound (no test here):
- a home of 100 and of 400 complete daily partitions, pretend-built as tests/unit/test_automation.py does: a plan
  takes 0.10 s / 0.32 s, a quiet nightly tick 0.15 s / 0.40 s, a quiet raw-sensor tick 0.11 s / 0.34 s, a quiet
  rebuild-sensor tick 0.11 s / 0.36 s; with every day stale (a setting of [ingest] changed) the nightly requests
  every day in 0.30 s / 1.2 s and the rebuild sensor waits (0.16 s / 0.54 s): linear in the days and small, no
  quiet tick writes a cache file (``RawDigests.save`` writes only what changed);
- hostile launchpad values: a data home inside another home, a folder of other files, a staging folder in the
  warehouse, out-of-range workers / threads / keep_versions, a device ``cuda:99`` are refused at launch; a
  ``train.output_dir`` in ``datasets/`` or a ``data_dir`` of ``/`` pass the launch check but the model step refuses
  them before it writes (``training.runs.check_run_output_dir``), as ``pickapic train`` does;
- a partition key of a day whose raw folder was pruned: its ingest fails ``RawDayGone`` before writing, and the plan
  keeps what was built from it; no code of the Dagster layer reads local time (every schedule is UTC).

Filed (each confirmed by running it; both fixed the same day by fix29f, tested further in ``tests/unit/test_fix29f.py``):
1. a run launched on a home's instance with ``resources.data_home.config.root`` naming ANOTHER data home is
   accepted, builds that other home, and records its materializations, with the versions the first home's records
   give, in the first home's instance: the first home's plan then calls its stale stage fresh although its own
   files were never rebuilt (a UI launch; the CLI cannot do this, each ``--home`` has its own instance);
2. one refused value in any section of ``HOME/pickapic.toml`` (``[publish] keep_versions = 0`` written by hand)
   stops the project's definitions from loading (``automation.CRONS = home_crons()`` reads and checks the whole
   file at import), so the code location of ``pickapic serve`` / ``ui`` fails: no sensor, schedule or freshness
   check ticks and the UI shows no asset or run page to re-execute, while the launchpad's settings reader was made
   to survive any error so that "the UI still loads; every run will report the bad file" (reviews rev22f, rev23c).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.build import use_home
from dagster_project.definitions import defs
from dagster_project.staleness import plan_build
from formats.home import DataHome
from formats.settings import load
from tests.unit.test_automation import _land_day, _pretend_built

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-02-13"


@pytest.fixture
def homes(fast_tmp: Path, monkeypatch) -> tuple[DataHome, DataHome]:
    """Two data homes side by side (a copy for staging, another deployment on the machine); this process uses the
    first one's instance, as `pickapic serve --home A` points its webserver, daemon and runs at it."""
    monkeypatch.setenv("DAGSTER_HOME", "")       # restored after the test: use_home sets both
    monkeypatch.setenv("PICKAPIC_HOME", "")
    first, other = DataHome(fast_tmp / "a"), DataHome(fast_tmp / "b")
    for home in (first, other):
        _land_day(home, DAY)
    use_home(first)
    return first, other


def _stale_ops(home: DataHome, instance: dg.DagsterInstance) -> list[str]:
    return [op for run in plan_build(home, load(home.root), instance).runs for op in run.ops]


def test_a_run_on_another_home_does_not_make_this_homes_stale_stage_look_fresh(homes) -> None:
    first, other = homes
    with dg.DagsterInstance.get() as instance:
        _pretend_built(first, instance, plan_build(first, load(first.root), instance))
        for home in (first, other):      # the same settings change in both homes
            (home.root / "pickapic.toml").write_text("[dedup]\nk = 5\n")
        assert "duplicate_clusters" in _stale_ops(first, instance)   # the state this test is about
        before = first.table_file("duplicate_clusters").read_bytes()
        config = {"resources": {"data_home": {"config": {"root": str(other.root)}}}}
        defs.resolve_job_def("rebuild_dataset_job").execute_in_process(
            instance=instance, run_config=config, asset_selection=[dg.AssetKey("duplicate_clusters")],
            raise_on_error=False)
        assert first.table_file("duplicate_clusters").read_bytes() == before   # this home's file was not rebuilt
        assert "duplicate_clusters" in _stale_ops(first, instance), (
            "the home's plan calls duplicate_clusters fresh: the other home's rebuild was recorded as this one's")


def test_a_refused_value_outside_schedules_does_not_stop_the_definitions_loading(fast_tmp: Path) -> None:
    home = fast_tmp / "home"
    home.mkdir()
    (home / "pickapic.toml").write_text("[publish]\nkeep_versions = 0\n")
    env = {**os.environ, "PICKAPIC_HOME": str(home), "DAGSTER_HOME": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", "import dagster_project.definitions"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
