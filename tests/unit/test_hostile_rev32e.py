"""Hostile review rev32e: driving a data home from the Dagster UI and its automation, as a hostile or careless
operator would (``pickapic serve`` / ``ui``: ``dagster_project/serve.py``, ``launcher.py``, ``coordinator.py``,
``location.py``; the launchpad's run config: ``runconfig.py``, ``resources.py``; the nightly schedule and the
sensors: ``automation.py``, ``ticklogs.py``; partition backfills and the run queue; README "Jobs, schedules and
sensors" and "Running it every night").

DOCSTRING-PLACEHOLDER

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour.
"""
from __future__ import annotations

import dagster as dg
import pytest

from dagster_project import automation
from dagster_project.build import build_lock
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from tests.unit.test_automation import DAYS, _plan, _pretend_built, home, instance  # noqa: F401 - fixtures


def _resources(home: DataHome) -> dict:
    return {"data_home": PickapicHome(root=str(home.root))}


def _sensor_tick(sensor, home: DataHome, instance: dg.DagsterInstance):
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                                        resources=_resources(home),
                                                        repository_def=defs.get_repository_def()))


def _nightly_tick(home: DataHome, instance: dg.DagsterInstance):
    return automation.nightly_schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, resources=_resources(home), repository_def=defs.get_repository_def()))


@pytest.mark.xfail(strict=True, reason="the nightly schedule and the rebuild sensor request a rebuild while a "
                   "`pickapic build` holds the home's build lock (between its runs, or while it plans), so the "
                   "daemon runs curation, splits and publish beside the build's own rebuild of the same state")
def test_no_rebuild_is_requested_while_a_build_holds_the_build_lock(home, instance) -> None:  # noqa: F811
    """README "Jobs, schedules and sensors": a build started by hand "can still meet a rebuild the sensor requested
    between its runs: the build lock makes one wait". No daemon run takes the build lock (only ``build.build_lock``
    does), and the automation asks the lock only to tell a dead build's runs (``automation.build_running`` in
    ``unfinished_runs``): while a build plans, or between its daily runs and its rebuild, no run of it is queued or
    started, so both the rebuild sensor and the nightly see "nothing runs" and request the rebuild the build is about
    to run. The daemon then runs a second curation + splits + publish over the same inputs, beside the build's."""
    _pretend_built(home, instance, _plan(home, instance))
    (home.root / "pickapic.toml").write_text("[publish]\nmax_samples_per_shard = 50\n")   # the build's reason to run
    with build_lock(home):                      # `pickapic build` planning, or between its daily runs and its rebuild
        assert automation.build_running(home)
        sensor = _sensor_tick(automation.rebuild_sensor, home, instance)
        nightly = _nightly_tick(home, instance)
    assert not sensor.run_requests, [r.run_key for r in sensor.run_requests]
    assert not nightly.run_requests, [r.run_key for r in nightly.run_requests]


@pytest.mark.xfail(strict=True, reason="the raw-day sensor and the nightly request the daily runs of the days a "
                   "running `pickapic build` has planned and is about to run: each day ingested and fingerprinted "
                   "twice, at the same time, by the build and by the daemon")
def test_no_daily_run_is_requested_while_a_build_holds_the_build_lock(home, instance) -> None:  # noqa: F811
    """A build holding the lock has planned every stale day; its runs are stored one at a time, so the days after the
    one it runs are not "queued or running" yet (``unfinished_partitions``) and the raw-day sensor and the nightly
    request them: the daemon starts the same ingest + fingerprint (Beam, NudeNet) of those days beside the build."""
    with build_lock(home):
        assert automation.build_running(home)
        sensor = _sensor_tick(automation.raw_partition_sensor, home, instance)
        nightly = _nightly_tick(home, instance)
    assert not sensor.run_requests, [r.partition_key for r in sensor.run_requests]
    assert not nightly.run_requests, [r.partition_key for r in nightly.run_requests]


FUTURE_DAY = "9999-12-31"


@pytest.mark.xfail(strict=True, reason="a run launched from the UI for a day that has not begun (UTC) ingests its "
                   "raw folder into the warehouse, which every reader then reads: `pickapic build`, the nightly and "
                   "the sensors skip such a folder as an export error")
def test_a_ui_run_of_a_day_that_has_not_begun_writes_nothing(fast_tmp, monkeypatch) -> None:
    """README section 2: "A well-named day folder of a day that has not begun (UTC) is skipped with a warning"
    (``provenance.begun_days``: "a folder named after a later day is an export error, never ingested"); ``pickapic
    build --from 9999-12-31 --to 9999-12-31`` refuses (``build.select_days``), the nightly and the raw-day sensor only
    name it. In the UI the daily assets' partitions are a dynamic set the operator can add to (the launchpad's "Add
    partition"), and a run of ``daily_partition_job`` for that day, through the home's own instance, succeeds: the
    ingest step writes ``warehouse/<table>/dt=9999-12-31/`` for all six tables, and since
    ``DataHome.table_files`` takes every calendar-dated folder, curation, splits and the published version read
    that export error's rows."""
    from dagster_project.build import use_home
    from tests.unit.test_automation import _land_day

    for name in ("DAGSTER_HOME", "PICKAPIC_HOME"):
        monkeypatch.setenv(name, "")
    home = DataHome(fast_tmp / "home")
    _land_day(home, DAYS[0])
    _land_day(home, FUTURE_DAY)
    use_home(home)
    ingest = [dg.AssetKey(name) for name in ("users", "images", "rankings", "downloads", "quarantine", "ingest_files")]
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("raw_days", [FUTURE_DAY])     # the UI's "Add partition"
        result = defs.resolve_job_def("daily_partition_job").execute_in_process(
            instance=instance, partition_key=FUTURE_DAY, asset_selection=ingest, raise_on_error=False)
    written = sorted(str(path.relative_to(home.root)) for path in home.warehouse.rglob(f"dt={FUTURE_DAY}*"))
    assert written == [], written
    assert not result.success


def _held(path) -> bool:
    """Whether someone holds an flock on ``path`` (probed with a shared lock taken and dropped at once)."""
    import fcntl
    import os

    from formats.locks import try_lock

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return not try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


@pytest.mark.xfail(strict=True, reason="`pickapic ui` beside a `pickapic serve --no-automation` starts its "
                   "webserver without the serve's automation default: its UI shows every schedule and sensor "
                   "RUNNING while the home's daemon runs none of them")
def test_ui_beside_a_serve_without_automation_shows_what_the_daemon_runs(fast_tmp, monkeypatch) -> None:
    """``pickapic serve --no-automation`` gives its daemon and webserver ``PICKAPIC_AUTOMATION=off``: its own UI
    shows the schedules and sensors STOPPED, and its daemon ticks none. ``pickapic ui`` on the same home finds the
    daemon lock held and execs ``dagster-webserver`` alone with the environment of the shell it was typed in, where
    automation defaults to on: measured with both UIs' GraphQL (``repositoriesOrError``), the serve's listed all six
    STOPPED and the ui's all six RUNNING, so an operator looking at ``pickapic ui`` sees a nightly that never ticks.
    Here: a real ``pickapic serve --no-automation``, then ``cli._cmd_ui`` with ``os.execv`` caught, and the
    definitions loaded with the environment the webserver was given."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from argparse import Namespace
    from pathlib import Path

    from dagster_project import cli
    from dagster_project.serve import daemon_lock_file
    from tests.unit.test_automation import _land_day

    repo = Path(__file__).resolve().parents[2]
    home = DataHome(fast_tmp / "home")
    _land_day(home, DAYS[0])
    for name in ("PICKAPIC_AUTOMATION", "DAGSTER_HOME", "PICKAPIC_HOME"):
        monkeypatch.delenv(name, raising=False)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    serve = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--home", str(home.root),
                              "--port", "38731", "--no-automation"], cwd=repo, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exec_env: dict = {}
    try:
        deadline = time.monotonic() + 120
        while not _held(daemon_lock_file(home)):
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not take the daemon lock"
            time.sleep(0.2)

        def caught(path, argv):
            exec_env.update(os.environ)
            raise SystemExit(0)

        monkeypatch.setattr(os, "execv", caught)
        with pytest.raises(SystemExit):
            cli._cmd_ui(Namespace(home=str(home.root), port=38732, with_daemon=False))
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
    shown = subprocess.run([sys.executable, "-c", "from dagster_project import automation as a; "
                            "print(a.SENSOR_STATUS.value, a.SCHEDULE_STATUS.value)"],
                           cwd=repo, env={**exec_env, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr[-500:]
    assert shown.stdout.split() == ["STOPPED", "STOPPED"], shown.stdout
