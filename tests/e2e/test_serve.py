"""`pickapic serve`: the UI and the daemon come up with the automation on, and a landed day is published by itself.

Runs a real `pickapic serve` (dagster-webserver + dagster-daemon) on a free local port over a copy of the
nightly test home (on tmpfs when the machine has one: ``scratch``), asks the webserver's GraphQL API for
the schedule and sensor states, lands the fourth simulated day in the raw zone and waits until the daemon
alone has ingested it and published a new version. SIGTERM then stops both processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.e2e.conftest import copy_home
from tests.e2e.test_nightly_build import DAYS, night_base  # noqa: F401  (night_base is a fixture)

REPO = Path(__file__).resolve().parents[2]
STATES = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  schedules { name scheduleState { status } } sensors { name sensorState { status } } } } } }"""
ON = {"nightly_schedule", "weekly_training_schedule", "raw_partition_sensor", "rebuild_when_inputs_change",
      "published_dataset_freshness"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The tests' requests to a webserver on this machine: never through a proxy the environment names (urllib sends
# even a request for 127.0.0.1 to $http_proxy unless $no_proxy lists it, and a CI machine may set one).
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with LOCAL.open(request, timeout=10) as response:
        return json.loads(response.read())


def _wait(what: str, check, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout:.0f}s; serve log:\n{log.read_text(errors='replace')[-4000:]}")


def test_serve_runs_the_nightly_path_by_itself(night_base, scratch, tmp_path):  # noqa: F811
    base, spare = night_base
    home = copy_home(base, scratch / "home")
    first_version = os.readlink(home.datasets / "latest")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_AUTOMATION")}
    env["PICKAPIC_SENSOR_INTERVAL_S"] = "2"  # the sensors tick every 2 s, not every minute: the same path, sooner
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--home", str(home.root),
                                  "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        def states():
            try:
                nodes = _graphql(port, STATES)["data"]["repositoriesOrError"]["nodes"]
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError, TimeoutError):
                return None
            found = {s["name"]: s["scheduleState"]["status"] for n in nodes for s in n["schedules"]}
            found.update({s["name"]: s["sensorState"]["status"] for n in nodes for s in n["sensors"]})
            return found

        found = _wait("the webserver", states, 300, log)
        assert {name: found.get(name) for name in ON} == dict.fromkeys(ON, "RUNNING")

        shutil.copytree(spare, home.raw_day(DAYS[3]))  # the export lands

        def published():
            latest = home.datasets / "latest"
            return latest.is_symlink() and os.readlink(latest) != first_version

        _wait("the new day's version", published, 900, log)

        def daemon_runs_succeeded():
            """The daemon's own runs: the new day's and a global rebuild, both successful (the rebuild's
            run finishes a moment after its step switched `latest`)."""
            with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
                runs = [r for r in instance.get_runs() if r.tags.get("pickapic/launched_by") != "pickapic build"]
            done = [r.tags.get("dagster/partition") for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            return DAYS[3] in done and None in done

        _wait("the daemon's day run and rebuild run succeeded", daemon_runs_succeeded, 120, log)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 0, log.read_text(errors="replace")[-3000:]
