"""Local Beam workers without Beam's start-up noise: a quiet ``apache_beam`` import and the worker entry point.

Importing ``apache_beam`` without ``google-apitools`` installed logs ``apitools not found, and bigquery
client libraries are not available ...`` through ``logging.warning``, which as a side effect installs
a stderr handler on the root logger (``logging.basicConfig``). Every SDK worker process of the
DirectRunner's ``multi_processing`` mode then prints that warning and, through the handler it left,
``INFO:__main__:Logging handler created.``: two lines per process per run that say nothing about the
run. :func:`import_beam_quietly` imports Beam with only that notice dropped and no handler left
behind, and ``python -m pipelines.features.beamworker`` is Beam's ``sdk_worker_main`` started that way;
:class:`QuietFnApiRunner` makes the local runner start its worker processes through it. Every other
record, warnings included, reaches the handlers exactly as before.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from formats.processes import die_with_parent

APITOOLS_NOTICE = "apitools not found, and bigquery client libraries are not available"
STOCK_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
QUIET_WORKER_MODULE = "pipelines.features.beamworker"


class _DropApitoolsNotice(logging.Filter):
    """Drop the root logger's apitools notice (a missing optional GCP client, not a problem of the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(APITOOLS_NOTICE)


def import_beam_quietly() -> None:
    """Import ``apache_beam`` with its apitools notice dropped and the root logger's handlers left as they were."""
    if "apache_beam" in sys.modules:
        return
    root = logging.getLogger()
    notice_filter = _DropApitoolsNotice()
    # With no handler on the root logger, logging.warning() would call basicConfig(); Python's own
    # last-resort handler stands in while Beam imports, so real warnings still print as they would.
    stand_in = (logging.lastResort or logging.StreamHandler()) if not root.handlers else None
    root.addFilter(notice_filter)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeFilter(notice_filter)
        if stand_in is not None:
            root.removeHandler(stand_in)


def quiet_worker_command(command: str) -> str:
    """The command that starts Beam's SDK worker module through this one instead (other commands unchanged)."""
    stock = f"-m {STOCK_WORKER_MODULE}"
    return command.replace(stock, f"-m {QUIET_WORKER_MODULE}") if command.endswith(stock) else command


import_beam_quietly()

from apache_beam.portability import python_urns  # noqa: E402 - after the quiet import
from apache_beam.runners.portability import local_job_service  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers  # noqa: E402


class QuietFnApiRunner(fn_runner.FnApiRunner):
    """Beam's batch ``FnApiRunner`` whose ``multi_processing`` workers run ``python -m pipelines.features.beamworker``."""

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK:
                environment.payload = quiet_worker_command(environment.payload.decode("utf-8")).encode("utf-8")
        return super().run_via_runner_api(pipeline_proto, options)


# signals a terminal or a service manager sends to stop the build: its SDK workers never take them (the build does,
# and stops them); blocked in the thread that starts one, so the worker starts with them blocked (review rev30c)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
STOP_WAIT_S = 60.0   # how long a worker told to stop (its control stream done) may take to end before it is killed


class _StoppableWorker(local_job_service.SubprocessSdkWorker):
    """Beam's ``SubprocessSdkWorker`` (one SDK worker process, run by a ``run_worker`` thread) that the build can
    stop: the process is recorded, started with the stop signals blocked (a Ctrl-C at the terminal reaches the
    whole process group: each worker printed its KeyboardInterrupt traceback, and the thread its "Worker
    subprocess exited with return code -2", above the build's one line, review rev30c), through ``exec`` when it is
    the quiet worker command (so the process killed is the worker, not the shell before it), and a worker
    :meth:`stop` killed ends its thread without an error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stopped = False

    def run(self) -> None:
        """Beam's ``SubprocessSdkWorker.run`` (apache-beam 2.x), with the changes above."""
        if self._stopped:    # stopped before its thread ran
            return
        import grpc
        from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
        from apache_beam.utils import thread_pool_executor
        from google.protobuf import json_format, text_format

        logging_server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                                     options=[("grpc.http2.max_pings_without_data", 0),
                                              ("grpc.http2.max_ping_strikes", 0)])
        logging_port = logging_server.add_insecure_port("[::]:0")
        logging_server.start()
        beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(local_job_service.BeamFnLoggingServicer(),
                                                                 logging_server)
        env = dict(os.environ,
                   CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                       endpoints_pb2.ApiServiceDescriptor(url=self._control_address)),
                   LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                       endpoints_pb2.ApiServiceDescriptor(url=f"localhost:{logging_port}")),
                   PIPELINE_OPTIONS=json_format.MessageToJson(self._provision_info.provision_info.pipeline_options),
                   **{PARENT_ENV: str(os.getpid())})
        if self._worker_id:
            env["WORKER_ID"] = self._worker_id
        command = self._worker_command_line
        if command.endswith(f" -m {QUIET_WORKER_MODULE}"):
            command = f"exec {command}"
        process = None
        try:
            with worker_handlers.SUBPROCESS_LOCK, self._lock:
                if self._stopped:    # stopped before it started
                    return
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                try:
                    process = self._process = subprocess.Popen(command, shell=True, env=env)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            process.wait()
            with self._lock:
                if process.returncode and not self._stopped:
                    raise RuntimeError(f"Worker subprocess exited with return code {process.returncode}")
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            logging_server.stop(0)

    def stop(self) -> None:
        """Kill the worker process now (or keep it from starting); its thread then ends without an error."""
        with self._lock:
            self._stopped = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()


@worker_handlers.WorkerHandler.register_environment(python_urns.SUBPROCESS_SDK, bytes)
class StoppableSubprocessSdkWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
    """Beam's handler of a ``multi_processing`` SDK worker (registered in its place), whose close never waits for
    ever: when the run is failing or interrupted (an exception, a KeyboardInterrupt or Dagster's interrupt of the
    step, is on its way up through Beam's ``close_all``) the worker is killed before anything waits for it; and
    otherwise a worker that has not ended :data:`STOP_WAIT_S` after it was told to is killed. Beam's own joined the
    worker's thread unbounded: a SIGTERM as the workers started hung the build for good, holding the build lock,
    waiting for a worker that was never told to stop (review rev30c)."""

    def start_worker(self) -> None:
        self.worker = _StoppableWorker(self._worker_command_line, self.control_address, self.provision_info,
                                       self.worker_id)
        self.worker_thread = threading.Thread(name="run_worker", target=self.worker.run, daemon=True)
        self.worker_thread.start()

    def close(self) -> None:
        if sys.exc_info()[1] is not None:   # the run failed or was interrupted: nothing more is wanted of the worker
            self.worker.stop()
        super().close()

    def stop_worker(self) -> None:
        self.worker_thread.join(STOP_WAIT_S)
        if self.worker_thread.is_alive():
            self.worker.stop()
            self.worker_thread.join(STOP_WAIT_S)


PARENT_ENV = "PICKAPIC_BEAM_PARENT"   # the pid of the build that started the worker


def main(argv: list[str]) -> None:
    """Beam's SDK worker entry point (``sdk_worker_main.main``), imported after the quiet import."""
    from apache_beam.runners.worker import sdk_worker_main

    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        die_with_parent(int(parent))   # a build killed outright (SIGKILL, the OOM killer) leaves no worker behind
    sdk_worker_main.main(argv)


if __name__ == "__main__":
    main(sys.argv)
