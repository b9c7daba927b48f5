"""A run launched from the UI with a config a step would refuse is refused at launch, not at its first step.

Starts a real ``dagster-webserver`` on a new data home (``use_home`` writes its ``dagster.yaml`` with the
home's run coordinator, :mod:`dagster_project.coordinator`) and launches ``rebuild_dataset_job`` through the
webserver's GraphQL API, as the launchpad does. No daemon runs, so an accepted run stays queued: nothing of
any run executes in this test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dagster as dg
import pytest

from dagster_project.build import use_home
from dagster_project.coordinator import DAGSTER_YAML, OLD_DAGSTER_YAMLS
from formats.home import DataHome
from tests.e2e.test_serve import LOCAL, _free_port, _graphql

LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


def _launch(port: int, run_config: dict) -> dict:
    params = {"selector": {"repositoryLocationName": "dagster_project.definitions", "repositoryName": "__repository__",
                           "jobName": "rebuild_dataset_job"}, "runConfigData": run_config}
    body = json.dumps({"query": LAUNCH, "variables": {"params": params}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with LOCAL.open(request, timeout=60) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:       # the webserver answers a PythonError with status 500
        body = exc.read()
    return json.loads(body)["data"]["launchRun"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch-home")
    home = DataHome(root)
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    use_home(home)
    env = dict(os.environ)
    for name, value in saved.items():          # this process keeps its own instance
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    port = _free_port()
    log = root.parent / "launch-webserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-m", "dagster_project.definitions",
                                    "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                if _graphql(port, "{ version }").get("data"):
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"webserver did not come up; log:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield port, home
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _runs(home: DataHome) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        return list(instance.get_runs())


def test_use_home_writes_the_checked_coordinator_and_updates_only_its_own_old_file(tmp_path):
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    try:
        fresh = DataHome(tmp_path / "fresh")
        use_home(fresh)
        assert (fresh.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
        old = DataHome(tmp_path / "old")
        old.dagster_home.mkdir(parents=True)
        (old.dagster_home / "dagster.yaml").write_text(OLD_DAGSTER_YAMLS[0])
        use_home(old)
        assert (old.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
        before_monitoring = DataHome(tmp_path / "before-monitoring")       # the coordinator, no run monitoring
        before_monitoring.dagster_home.mkdir(parents=True)
        (before_monitoring.dagster_home / "dagster.yaml").write_text(OLD_DAGSTER_YAMLS[1])
        use_home(before_monitoring)
        assert (before_monitoring.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
        edited = DataHome(tmp_path / "edited")
        edited.dagster_home.mkdir(parents=True)
        mine = "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 1\n"
        (edited.dagster_home / "dagster.yaml").write_text(mine)
        use_home(edited)
        assert (edited.dagster_home / "dagster.yaml").read_text() == mine
        linked = DataHome(tmp_path / "linked")
        linked.dagster_home.mkdir(parents=True)
        target = tmp_path / "elsewhere.yaml"
        target.write_text(OLD_DAGSTER_YAMLS[0])
        (linked.dagster_home / "dagster.yaml").symlink_to(target)
        use_home(linked)
        assert (linked.dagster_home / "dagster.yaml").is_symlink() and target.read_text() == OLD_DAGSTER_YAMLS[0]
        with dg.DagsterInstance.from_config(str(fresh.dagster_home)) as instance:
            assert type(instance.run_coordinator).__name__ == "CheckedRunCoordinator"
            assert type(instance.run_launcher).__name__ == "MonitoredRunLauncher" and instance.run_monitoring_enabled
            assert instance.run_monitoring_max_resume_run_attempts == 0   # the default launcher cannot resume a run
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_a_bad_value_is_refused_at_launch_and_no_run_is_queued(webserver):
    port, home = webserver
    result = _launch(port, {"ops": {"published_dataset": {"config": {"keep_versions": 0}}}})
    assert result["__typename"] == "PythonError", result
    assert "refused at launch" in result["message"] and "keep_versions" in result["message"], result
    runs = _runs(home)
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.FAILURE
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        events = [record.event_log_entry.dagster_event for record in
                  instance.get_records_for_run(runs[0].run_id).records if record.event_log_entry.is_dagster_event]
    kinds = {event.event_type_value for event in events}
    assert "STEP_START" not in kinds and "PIPELINE_ENQUEUED" not in kinds and "RUN_ENQUEUED" not in kinds, kinds
    assert not home.warehouse.exists() or not any(home.warehouse.iterdir())


def test_a_cross_field_rule_and_a_bad_home_are_refused_too(webserver):
    port, home = webserver
    before = len(_runs(home))
    rule = _launch(port, {"ops": {"split_pairs": {"config": {"min_unique_rows": 400, "unique_prompts": 10}}}})
    assert rule["__typename"] == "PythonError" and "unique_prompts" in rule["message"], rule
    outside = home.root.parent / "not-a-home"
    outside.mkdir()
    (outside / "notes.txt").write_text("someone's files")
    root = _launch(port, {"resources": {"data_home": {"config": {"root": str(outside)}}}})
    assert root["__typename"] == "PythonError" and "refused at launch" in root["message"], root
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]
    assert len(_runs(home)) == before + 2


def test_a_good_config_is_queued(webserver):
    port, home = webserver
    result = _launch(port, {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}})
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] == "QUEUED"
