"""fix27u: the UI re-executes a run of `pickapic build`, and the daemon launches it like any UI launch of that job.

A copy of the shared home that `pickapic demo` built; a forced `pickapic build` of its first day is killed in the
feature step (``PICKAPIC_FAULT=features.after_beam``: a build killed at night, as by the OOM killer) and its run
marked failed as the next build marks it (``_fail_dead_build_runs``). Then a real `pickapic serve
--no-automation` (dagster-webserver and dagster-daemon) and the run page's *Re-execute from failure*, asked for as
the UI asks (``launchPipelineReexecution`` with ``reexecutionParams``) through the webserver's workspace. Until
this fix the answer was a ``PythonError``: ``dagster_shared.check.functions.CheckError: Expected non-None value:
None`` (``launch_reexecution_from_parent_run``: the parent's ``remote_job_origin``, which an in-process run
lacked). Unit tests of the origin and of how such runs are judged: tests/unit/test_fix27u_origin.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import GRPC_INFO_TAG

from dagster_project import automation
from dagster_project.build import _fail_dead_build_runs
from tests.e2e.conftest import copy_home
from tests.e2e.test_crash_recovery import build_command, finish, start_process, tail
from tests.e2e.test_serve import LOCAL, _free_port, _wait

REPO = Path(__file__).resolve().parents[2]
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
BUILD_RUNS = """{ runsOrError(filter: {tags: [{key: "pickapic/launched_by", value: "pickapic build"}]}) {
  ... on Runs { results { runId jobName status repositoryOrigin { repositoryLocationName repositoryName } } } } }"""
REEXECUTE = """mutation($reexecutionParams: ReexecutionParams) {
  launchPipelineReexecution(reexecutionParams: $reexecutionParams) { __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message } } }"""


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with LOCAL.open(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:       # the webserver answers a PythonError with status 500
        return json.loads(exc.read())


def test_the_ui_reexecutes_a_killed_build_run_from_failure_through_the_daemon(built_home, scratch, tmp_path):
    home = copy_home(built_home, scratch / "home")
    day = home.raw_days()[0]
    killed = finish(start_process(build_command(home, "--from", day, "--to", day), tmp_path / "build.log",
                                  fault="features.after_beam"), tmp_path / "build.log")
    assert killed == -signal.SIGKILL, tail(tmp_path / "build.log")
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        _fail_dead_build_runs(instance)             # what the next build does first
        parent = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": day}), limit=1)[0]
    assert parent.status == dg.DagsterRunStatus.FAILURE and parent.tags[automation.BUILD_TAG]

    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_AUTOMATION")}
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--home", str(home.root),
                                  "--port", str(port), "--no-automation"], cwd=REPO, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def locations():
            try:
                return [entry["name"] for entry in
                        _graphql(port, LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]]
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError, TimeoutError, ValueError):
                return None

        assert _wait("the webserver", locations, 300, log) == ["dagster_project.definitions"]
        runs = _graphql(port, BUILD_RUNS)["data"]["runsOrError"]["results"]
        assert parent.run_id in {run["runId"] for run in runs}
        assert all(run["repositoryOrigin"] == {"repositoryLocationName": "dagster_project.definitions",
                                               "repositoryName": "__repository__"} for run in runs), runs

        answer = _graphql(port, REEXECUTE, {"reexecutionParams": {"parentRunId": parent.run_id,
                                                                  "strategy": "FROM_FAILURE"}})
        answer = answer["data"]["launchPipelineReexecution"]
        assert answer["__typename"] == "LaunchRunSuccess", answer      # before: PythonError, Expected non-None value
        assert answer["run"]["status"] == "QUEUED"                     # the home's run coordinator queued it
        child_id = answer["run"]["runId"]

        def finished():
            with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
                run = instance.get_run_by_id(child_id)
            return run if run is not None and run.is_finished else None

        child = _wait("the re-executed run to finish", finished, 400, log)
        assert child.status == dg.DagsterRunStatus.SUCCESS, log.read_text(errors="replace")[-3000:]
        assert child.step_keys_to_execute == ["fingerprint_images"]    # from failure: the step the kill stopped
        assert child.tags["dagster/parent_run_id"] == parent.run_id
        assert child.tags["dagster/partition"] == day and child.tags["pickapic/why"] == parent.tags["pickapic/why"]
        assert automation.BUILD_TAG not in child.tags                   # the parent's tags, but not a build's run
        assert GRPC_INFO_TAG in child.tags                              # the daemon launched it through its server
        assert child.remote_job_origin.location_name == "dagster_project.definitions"
        assert home.partition_file("image_features", day).is_file()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 0, log.read_text(errors="replace")[-3000:]
