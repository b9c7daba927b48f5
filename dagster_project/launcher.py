"""The run launcher of a data home's Dagster instance: Dagster's default one, which can also tell a dead run.

Dagster moves a run out of STARTED only when its process reports the end, or when its run monitoring finds the
run's worker gone; the default launcher cannot answer that question, so a run whose process died with the
machine (a reboot, a power cut, ``kill -9`` of the whole ``pickapic serve`` tree) stayed STARTED for good, and
every sensor and the nightly waited on it. :class:`MonitoredRunLauncher` launches exactly as the default
launcher does (through the code server of the daemon or webserver) and answers
:meth:`check_run_worker_health`, so the run monitoring that ``HOME/dagster/dagster.yaml`` turns on
(:data:`dagster_project.coordinator.DAGSTER_YAML`) marks such a run failed within a poll interval:

- a run that a code server launched (Dagster's ``dagster/grpc_info`` tag names it; a UI re-execution of a build's
  run too, which the run storage stores without the build's tag: dagster_project/instance.py): alive while that
  server lists it among its current runs. A
  server that lives already marks failed a run whose worker process died. When the server is gone (the
  connection refused, its socket missing: gRPC ``UNAVAILABLE``) or a server at that address does not list the
  run, the run is alive while its run worker process (the pid of its "Started process for run" event, a
  process started no later than that event) still runs: a server killed alone leaves its workers running.
  Any other answer (a timeout, an error) is not proof of anything: the run is left as it is;
- a run of ``pickapic build`` (tag ``pickapic/launched_by``, no server tag): alive while a build holds the
  home's build lock (:func:`dagster_project.automation.build_running`); the build runs it in its own process;
- any other run (``dagster job execute`` by hand on this instance): left as it is.

The monitoring daemon re-reads the run before acting, so a run that ended meanwhile is not touched.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

from formats.home import DataHome

RUNNING = CheckRunHealthResult(WorkerStatus.RUNNING)
QUERY_TIMEOUT_S = 10        # how long a code server may take to list its runs


class MonitoredRunLauncher(DefaultRunLauncher):
    """:class:`DefaultRunLauncher` that tells the run monitoring whether a run's worker still lives."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        from dagster_project.automation import BUILD_TAG, BUILD_TAG_VALUE, build_running

        if GRPC_INFO_TAG in run.tags:     # launched through a code server (a UI re-execution of a build run too,
            return self._served_run_health(run)       # review rev22b; stored without the build's tag since fix27u)
        if run.tags.get(BUILD_TAG) == BUILD_TAG_VALUE:
            home = self._data_home()
            if home is None or build_running(home):
                return RUNNING
            return CheckRunHealthResult(WorkerStatus.FAILED, "the `pickapic build` that ran this run is no longer "
                                        "running (nobody holds the home's build lock: killed, or the machine "
                                        "restarted); the next build recomputes what it left")
        return RUNNING

    def _served_run_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """A run a code server launched: alive while that server lists it; else while its worker process lives."""
        where = _server_address(run)
        if where is None:
            return RUNNING              # a tag Dagster did not write: nothing to ask
        try:
            current = _current_runs(where)
        except DagsterUserCodeUnreachableError as exc:
            if not _server_gone(exc):
                return RUNNING          # a timeout, a busy server: no proof the run died
            current, gone = None, f"the code server that launched this run ({_describe(where)}) is gone"
        else:
            if current is None or run.run_id in current:
                return RUNNING
            gone = f"the code server at {_describe(where)} does not run this run (the one that launched it is gone)"
        if self.has_instance and _worker_alive(self._instance, run):
            return RUNNING              # its server died alone (OOM-killed): the worker still runs and reports
        return CheckRunHealthResult(WorkerStatus.FAILED, f"{gone}, and so is its run worker (the machine restarted, "
                                    "or `pickapic serve` was killed with its runs)")

    def _data_home(self) -> DataHome | None:
        """The data home whose instance this is (``HOME/dagster``, as ``pickapic`` sets it up); None elsewhere."""
        if not self.has_instance:
            return None
        root = Path(self._instance.root_directory)
        return DataHome(root.parent) if root.name == "dagster" else None


def _server_address(run: DagsterRun) -> dict | None:
    """Where the code server that launched ``run`` listened (host and port or socket), from its tag; None for a
    tag Dagster does not write (not JSON, a port that is not a number, a socket that is not a path, ...)."""
    try:
        info = json.loads(run.tags.get(GRPC_INFO_TAG) or "null")
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    port, socket, host = info.get("port"), info.get("socket"), info.get("host", "localhost")
    port_ok = type(port) is int and 0 < port < 65536
    socket_ok = isinstance(socket, str) and bool(socket) and "\0" not in socket
    if port_ok == socket_ok or not isinstance(host, str) or not host or not isinstance(info.get("use_ssl", False), bool):
        return None
    return info


def _worker_alive(instance, run: DagsterRun) -> bool:
    """Whether the run worker process the run's "Started process for run (pid: N)" event names still runs and is
    that process: it started no later than the event (a pid reused after a reboot belongs to a later process).
    The monitoring daemon runs on the machine of the code servers it launched through, so the pid is its own."""
    from dagster._core.events import DagsterEventType

    events = instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
    for event in reversed(events):
        data = event.dagster_event.event_specific_data if event.dagster_event else None
        pid = getattr(getattr(data, "metadata", {}).get("pid"), "value", None) if data is not None else None
        if isinstance(pid, str) and pid.isdigit() and event.message.startswith("Started process for"):
            started = _process_start_time(int(pid))
            return started is not None and started <= event.timestamp + 2.0
    return False


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, from ``/proc``); None when there is none (or it is a
    zombie: it ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _current_runs(where: dict) -> list[str] | None:
    """The run ids the code server at ``where`` executes now (None: it answered with an error)."""
    from dagster._grpc.__generated__ import dagster_api_pb2
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    client = DagsterGrpcClient(port=where.get("port"), socket=where.get("socket"),
                               host=where.get("host", "localhost"), use_ssl=where.get("use_ssl", False))
    # a short deadline (Dagster's default is a minute): the sensors ask this on their ticks, and a hung server must
    # not stall them; a timeout leaves the run as it is
    reply = client._query("GetCurrentRuns", dagster_api_pb2.Empty, timeout=QUERY_TIMEOUT_S)
    result = deserialize_value(reply.serialized_current_runs, GetCurrentRunsResult)
    if result.serializable_error_info is not None:
        return None
    return list(result.current_runs)


def _server_gone(exc: BaseException) -> bool:
    """Whether the gRPC error under ``exc`` says nothing listens there any more (``UNAVAILABLE``)."""
    cause = exc.__cause__
    return isinstance(cause, grpc.RpcError) and callable(getattr(cause, "code", None)) \
        and cause.code() == grpc.StatusCode.UNAVAILABLE


def _describe(where: dict) -> str:
    return f"socket {where['socket']}" if where.get("socket") else f"{where.get('host') or 'localhost'}:{where['port']}"
