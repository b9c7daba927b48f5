"""The run launcher of a data home's Dagster instance: Dagster's default one, which can also tell a dead run.

Dagster moves a run out of STARTED only when its process reports the end, or when its run monitoring finds the
run's worker gone; the default launcher cannot answer that question, so a run whose process died with the
machine (a reboot, a power cut, ``kill -9`` of the whole ``pickapic serve`` tree) stayed STARTED for good, and
every sensor and the nightly waited on it. :class:`MonitoredRunLauncher` launches exactly as the default
launcher does (through the code server of the daemon or webserver) and answers
:meth:`check_run_worker_health`, so the run monitoring that ``HOME/dagster/dagster.yaml`` turns on
(:data:`dagster_project.coordinator.DAGSTER_YAML`) marks such a run failed within a poll interval:

- a run that a code server launched (Dagster's ``dagster/grpc_info`` tag names it): alive while that server
  lists it among its current runs. A server that lives already marks failed a run whose worker process died;
  a server that is gone (the connection refused, its socket missing: gRPC ``UNAVAILABLE``) took its run
  workers with it, and a server at that address that does not list the run is not the one that launched it.
  Any other answer (a timeout, an error) is not proof of anything: the run is left as it is;
- a run of ``pickapic build`` (tag ``pickapic/launched_by``): alive while a build holds the home's build lock
  (:func:`dagster_project.automation.build_running`); the build runs it in its own process;
- any other run (``dagster job execute`` by hand on this instance): left as it is.

The monitoring daemon re-reads the run before acting, so a run that ended meanwhile is not touched.
"""
from __future__ import annotations

import json
from pathlib import Path

import grpc
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

from formats.home import DataHome

RUNNING = CheckRunHealthResult(WorkerStatus.RUNNING)


class MonitoredRunLauncher(DefaultRunLauncher):
    """:class:`DefaultRunLauncher` that tells the run monitoring whether a run's worker still lives."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        from dagster_project.automation import BUILD_TAG, BUILD_TAG_VALUE, build_running

        if run.tags.get(BUILD_TAG) == BUILD_TAG_VALUE:
            home = self._data_home()
            if home is None or build_running(home):
                return RUNNING
            return CheckRunHealthResult(WorkerStatus.FAILED, "the `pickapic build` that ran this run is no longer "
                                        "running (nobody holds the home's build lock: killed, or the machine "
                                        "restarted); the next build recomputes what it left")
        where = _server_address(run)
        if where is None:
            return RUNNING
        try:
            current = _current_runs(where)
        except DagsterUserCodeUnreachableError as exc:
            if _server_gone(exc):
                return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server that launched this run "
                                            f"({_describe(where)}) is gone, and its run worker with it (the "
                                            "machine restarted, or `pickapic serve` was killed with it)")
            return RUNNING              # a timeout, a busy server: no proof the run died
        if current is None or run.run_id in current:
            return RUNNING
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server at {_describe(where)} does not run "
                                    "this run: the server that launched it is gone, and its run worker with it")

    def _data_home(self) -> DataHome | None:
        """The data home whose instance this is (``HOME/dagster``, as ``pickapic`` sets it up); None elsewhere."""
        if not self.has_instance:
            return None
        root = Path(self._instance.root_directory)
        return DataHome(root.parent) if root.name == "dagster" else None


def _server_address(run: DagsterRun) -> dict | None:
    """Where the code server that launched ``run`` listened (host and port or socket), from its tag."""
    try:
        info = json.loads(run.tags.get(GRPC_INFO_TAG) or "null")
    except ValueError:
        return None
    if not isinstance(info, dict) or bool(info.get("port")) == bool(info.get("socket")):
        return None
    return info


def _current_runs(where: dict) -> list[str] | None:
    """The run ids the code server at ``where`` executes now (None: it answered with an error)."""
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    client = DagsterGrpcClient(port=where.get("port"), socket=where.get("socket"),
                               host=where.get("host") or "localhost", use_ssl=bool(where.get("use_ssl", False)))
    result = deserialize_value(client.get_current_runs(), GetCurrentRunsResult)
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
