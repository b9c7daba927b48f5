"""A run whose worker died with the machine is marked failed by Dagster's run monitoring (dagster_project/launcher.py).

Real components: the home's ``dagster.yaml`` as ``use_home`` writes it, a real code server (``dagster api grpc``) that
launches a real run worker through :class:`MonitoredRunLauncher`, the run monitoring daemon's own iteration
(``execute_run_monitoring_iteration``), and ``kill -9`` of the server's whole process group standing in for the
machine going down.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import grpc
import pytest
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import GrpcServerTarget
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
from dagster._grpc.client import DagsterGrpcClient

from dagster_project import automation
from dagster_project.build import use_home
from dagster_project.launcher import MonitoredRunLauncher, _server_gone
from formats.home import DataHome
from formats.locks import hold_lock
from tests.e2e.monitor_defs import waiting_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path):
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    home = DataHome(tmp_path / "home")
    use_home(home)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _monitor(instance: dg.DagsterInstance, context) -> None:
    """One pass of the run monitoring daemon over every run in progress."""
    for error in execute_run_monitoring_iteration(context, logging.getLogger("test-monitoring")):
        assert error is None, error


def _wait(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def start_code_server(tmp_path: Path, prefix: str = "mon-"):
    """A real code server (``dagster api grpc``) of tests/e2e/monitor_defs.py in its own process group, on a socket
    under a short new folder (a Unix socket's path is limited); returns (server, socket, folder, started file,
    release file): the job's op writes its pid to the first and waits for the second."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    socket = scratch / "grpc.sock"
    started, release = tmp_path / "started", tmp_path / "release"
    env = {**os.environ, "PICKAPIC_TEST_STARTED": str(started), "PICKAPIC_TEST_RELEASE": str(release),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "dagster", "api", "grpc", "-m", "tests.e2e.monitor_defs",
                               "--socket", str(socket), "--location-name", "monitor"],
                              cwd=ROOT, env=env, start_new_session=True)
    return server, socket, scratch, started, release


def test_a_run_whose_code_server_died_with_the_machine_is_marked_failed(home, tmp_path):
    server, socket, scratch, started, release = start_code_server(tmp_path)
    try:
        client = DagsterGrpcClient(socket=str(socket))
        _wait(lambda: socket.exists() and _pings(client), "the code server")
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance, \
                WorkspaceProcessContext(instance, GrpcServerTarget(host="localhost", port=None, socket=str(socket),
                                                                   location_name="monitor")) as context:
            assert isinstance(instance.run_launcher, MonitoredRunLauncher) and instance.run_monitoring_enabled
            workspace = context.create_request_context()
            remote = workspace.get_code_location("monitor").get_repository("__repository__").get_full_job("waiting_job")
            run = instance.create_run_for_job(waiting_job, remote_job_origin=remote.get_remote_origin(),
                                              job_code_origin=remote.get_python_origin())
            instance.launch_run(run.run_id, workspace)
            _wait(started.exists, "the run's op to start")
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            assert GRPC_INFO_TAG in instance.get_run_by_id(run.run_id).tags

            # a run that names this server but is not among its runs was launched by another one, since gone
            stray = _started_run(instance, {GRPC_INFO_TAG: instance.get_run_by_id(run.run_id).tags[GRPC_INFO_TAG]})
            _monitor(instance, context)               # alive: its server lists it, nothing changes
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            assert instance.get_run_by_id(stray.run_id).status == dg.DagsterRunStatus.FAILURE
            stray_failure = instance.all_logs(stray.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert stray_failure and "does not run this run" in stray_failure[-1].message

            os.killpg(server.pid, signal.SIGKILL)     # the machine goes down: server and run worker, no goodbye
            server.wait()
            worker = int(started.read_text())
            _wait(lambda: not _alive(worker), "the run worker to be gone")
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED   # what Dagster left

            _monitor(instance, context)
            after = instance.get_run_by_id(run.run_id)
            assert after.status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert failure and "is gone" in failure[-1].message and str(socket) in failure[-1].message
            # the rebuild sensor and the nightly no longer wait on it
            assert run.run_id not in {r.run_id for r in automation.unfinished_runs(instance, home)}
    finally:
        release.touch()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def _pings(client: DagsterGrpcClient) -> bool:
    try:
        client.ping("x")
    except Exception:   # noqa: BLE001 - not up yet
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    """A run as Dagster records one starting: STARTED, with its RUN_START event."""
    run = instance.create_run_for_job(waiting_job, status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.handle_new_event(EventLogEntry(
        error_info=None, level=logging.INFO, user_message="", run_id=run.run_id, timestamp=time.time(),
        dagster_event=DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name)))
    return run


def test_a_build_run_counts_as_alive_while_a_build_holds_the_lock(home):
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        launcher = instance.run_launcher
        run = _started_run(instance, {automation.BUILD_TAG: automation.BUILD_TAG_VALUE})

        def busy(holder: str) -> None:
            raise AssertionError(f"the build lock is held by {holder}")

        with hold_lock(home.lock_file, "a build", busy):
            assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        health = launcher.check_run_worker_health(run)         # nobody holds the lock: the build is gone
        assert health.status == WorkerStatus.FAILED and "pickapic build" in health.msg


def test_a_run_without_a_server_address_or_build_tag_is_left_alone(home):
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = _started_run(instance, {})
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        broken = _started_run(instance, {GRPC_INFO_TAG: "{not json"})
        assert instance.run_launcher.check_run_worker_health(broken).status == WorkerStatus.RUNNING


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_only_a_refused_connection_counts_as_a_dead_server():
    def unreachable(code: grpc.StatusCode) -> DagsterUserCodeUnreachableError:
        try:
            raise DagsterUserCodeUnreachableError("x") from _RpcError(code)
        except DagsterUserCodeUnreachableError as exc:
            return exc

    assert _server_gone(unreachable(grpc.StatusCode.UNAVAILABLE))
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL):
        assert not _server_gone(unreachable(code)), code        # slow or failing, not proof that it died
    assert not _server_gone(DagsterUserCodeUnreachableError("no cause"))


def test_a_canceling_run_whose_worker_is_gone_is_marked_canceled_and_no_longer_waited_on(home, tmp_path):
    import json

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        gone = {"host": "localhost", "socket": str(tmp_path / "no-server.sock")}      # nothing listens there
        run = _started_run(instance, {GRPC_INFO_TAG: json.dumps(gone)})
        instance.report_run_canceling(run)          # terminated in the UI; then the machine went down
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
        assert run.run_id not in {r.run_id for r in automation.unfinished_runs(instance, home)}
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
        canceled = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
        assert canceled and "is gone" in canceled[-1].message
