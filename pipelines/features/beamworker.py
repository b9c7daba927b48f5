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

import contextlib
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
from apache_beam.runners.worker import data_plane  # noqa: E402

# where every gRPC server of a run listens: the loopback interfaces only (gRPC binds both 127.0.0.1 and ::1 for
# "localhost", on one port), never every interface; the workers connect to ``localhost:PORT``
LOOPBACK_ANY_PORT = "localhost:0"


def loopback_address(address: str) -> str:
    """``address`` with an all-interfaces host (``[::]``, ``0.0.0.0``, none) replaced by ``localhost``."""
    host, _, port = address.rpartition(":")
    return f"localhost:{port}" if host in ("[::]", "::", "0.0.0.0", "") else address


class _LoopbackGrpc:
    """The ``grpc`` module as Beam's ``worker_handlers`` sees it: the same, except that every server it makes binds
    its insecure ports on loopback (:func:`loopback_address`). Beam's ``GrpcServer`` listens on ``[::]:0`` for its
    control, data, state and logging servers, all without authentication: on every interface, a host on the network
    could connect as a worker and be handed bundles (the images) or send results (review rev32h)."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def server(self, *args, **kwargs):
        made = self._module.server(*args, **kwargs)
        add_insecure_port = made.add_insecure_port
        made.add_insecure_port = lambda address: add_insecure_port(loopback_address(address))
        return made


if not isinstance(worker_handlers.grpc, _LoopbackGrpc):
    worker_handlers.grpc = _LoopbackGrpc(worker_handlers.grpc)


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
EXIT_WAIT_S = 5.0    # how long a worker whose connection broke may take to end, so that its exit status is named


class WorkerDied(RuntimeError):
    """A Beam SDK worker process of the run ended (the OOM killer, a native crash, an exit of its own) or could not
    be started before the run was done with it: the run fails with this error (review rev31c)."""


def _status(code: int) -> str:
    """A process's exit status in words: ``status 3``, or ``signal SIGKILL`` for a negative returncode."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class _StoppableWorker(local_job_service.SubprocessSdkWorker):
    """Beam's ``SubprocessSdkWorker`` (one SDK worker process, run by a ``run_worker`` thread) that the build can
    stop: the process is recorded, started with the stop signals blocked (a Ctrl-C at the terminal reaches the
    whole process group: each worker printed its KeyboardInterrupt traceback, and the thread its "Worker
    subprocess exited with return code -2", above the build's one line, review rev30c), through ``exec`` when it is
    the quiet worker command (so the process killed is the worker, not the shell before it), and a worker
    :meth:`stop` killed ends its thread without an error.

    A worker that ends when it was not told to (``expected()`` false: its handler is not closing it), or whose
    start fails, is handed to ``on_death`` as a :class:`WorkerDied` naming its exit status; the thread itself ends
    quietly. Beam's raised a RuntimeError in the thread, which the run never saw: it waited for the dead worker's
    answer for good, holding the build lock (review rev31c)."""

    def __init__(self, *args, on_death=None, expected=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stopped = False
        self._on_death = on_death
        self._expected = expected or (lambda: False)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def run(self) -> None:
        """Beam's ``SubprocessSdkWorker.run`` (apache-beam 2.x), with the changes above."""
        try:
            try:
                self._run()
            except WorkerDied:
                raise
            except Exception as exc:   # the logging server, the fork: the worker never ran
                raise WorkerDied(f"a Beam SDK worker process could not be started: {type(exc).__name__}: {exc}") \
                    from None
        except WorkerDied as died:
            if self._on_death is not None:
                self._on_death(died)

    def _run(self) -> None:
        if self._stopped:    # stopped before its thread ran
            return
        import grpc
        from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
        from apache_beam.utils import thread_pool_executor
        from google.protobuf import json_format, text_format

        logging_server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                                     options=[("grpc.http2.max_pings_without_data", 0),
                                              ("grpc.http2.max_ping_strikes", 0)])
        try:
            logging_port = logging_server.add_insecure_port(LOOPBACK_ANY_PORT)
            logging_server.start()
            beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(local_job_service.BeamFnLoggingServicer(),
                                                                     logging_server)
            self._run_process(logging_port, endpoints_pb2, json_format, text_format)
        finally:
            logging_server.stop(0)

    def _run_process(self, logging_port: int, endpoints_pb2, json_format, text_format) -> None:
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
                stopped = self._stopped
            if not stopped and not self._expected():
                raise WorkerDied(f"a Beam SDK worker process (pid {process.pid}) ended with "
                                 f"{_status(process.returncode)} before the run was done with it")
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Kill the worker process now (or keep it from starting); its thread then ends without an error."""
        with self._lock:
            self._stopped = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()


class _WatchedControlConnection(worker_handlers.ControlConnection):
    """The runner's end of one worker's control stream (Beam's ``ControlConnection``) that a dead worker cannot
    hang: a stream that breaks ends its reader quietly and is reported (``on_broken``); once :meth:`fail` ed, every
    request waiting for an answer and every one pushed later fails with the worker's error; :meth:`close_within`
    waits a bounded time. Beam's left the runner waiting for answers that would never come."""

    def watch(self, on_broken) -> None:
        self._on_broken = on_broken
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._read_thread = threading.Thread(name="beam_control_read", target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            super()._read()
        except Exception as exc:   # the stream broke: the worker died, or was killed by the build
            self._on_broken(exc)

    def push(self, req):
        with self._failure_lock:
            if self._failure is None or req is worker_handlers.BeamFnControlServicer._DONE_MARKER:
                return super().push(req)
        future = worker_handlers.ControlFuture(req.instruction_id or "failed")
        future.abort(self._failure)
        return future

    def fail(self, error: BaseException) -> None:
        with self._failure_lock:
            self._failure = error
            waiting = list(self._futures_by_id.values())
        for future in waiting:
            future.abort(error)
        self.push(worker_handlers.BeamFnControlServicer._DONE_MARKER)   # the stream's server thread ends

    def close_within(self, timeout: float) -> bool:
        """Beam's ``close`` (the worker told it is done, its answers read to their end) waiting at most ``timeout``
        s for the end; False when the worker has not ended its stream by then."""
        with worker_handlers.ControlConnection._lock:
            started = self._state == worker_handlers.BeamFnControlServicer.STARTED_STATE
            self._state = worker_handlers.BeamFnControlServicer.DONE_STATE
        if started:
            self.push(worker_handlers.BeamFnControlServicer._DONE_MARKER)
            self._read_thread.join(timeout)
            return not self._read_thread.is_alive()
        return True


class _WatchedDataChannel(data_plane._GrpcDataChannel):
    """The runner's end of one worker's data stream (Beam's ``_GrpcDataChannel``) whose wait for a bundle's outputs
    fails with the worker's :class:`WorkerDied` when the stream ended early because the worker died (Beam's said
    "Channel closed prematurely", or waited for good when the worker had not connected)."""

    failure_after = staticmethod(lambda timeout: None)   # the handler's: its worker's failure once known

    def _read_inputs(self, elements_iterator) -> None:
        """Beam's reader of the worker's outputs, whose stream breaking (the worker died, or was killed by the build)
        ends it quietly, the error kept for the wait (Beam's logged it and printed its thread's traceback)."""
        def until_broken():
            try:
                yield from elements_iterator
            except Exception as exc:
                if not self._closed:
                    self._exception = exc

        super()._read_inputs(until_broken())

    def input_elements(self, *args, **kwargs):
        try:
            yield from super().input_elements(*args, **kwargs)
        except Exception:   # the stream ended early: the worker's end names the error, when it died
            failure = self.failure_after(EXIT_WAIT_S)
            if failure is None:
                raise
            raise failure from None


def _close_data_within(channel, timeout: float) -> bool:
    """Beam's ``_GrpcDataChannel.close`` (its last outputs sent, the stream's end after them) waiting at most
    ``timeout`` s for a worker to take them; False when it has not by then (a full queue no worker reads)."""
    import queue

    try:
        channel._pending_send.put((channel._WRITES_FINISHED, 0), 0, timeout=timeout)
    except queue.Full:
        return False
    if channel._send_forwarder is not None:
        channel._send_forwarder.join(timeout)
        if channel._send_forwarder.is_alive():
            return False
    if channel._exception:
        raise channel._exception
    channel._closed = True
    return True


def _end_data_stream(channel) -> None:
    """Wake the server thread of a failed worker's data stream (it waits for outputs to send), never waiting."""
    import queue

    with contextlib.suppress(queue.Full):
        channel._to_send.put(channel._WRITES_FINISHED, 0, block=False)


@worker_handlers.WorkerHandler.register_environment(python_urns.SUBPROCESS_SDK, bytes)
class StoppableSubprocessSdkWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
    """Beam's handler of a ``multi_processing`` SDK worker (registered in its place), which no worker can hang.

    Its close never waits for ever: when the run is failing or interrupted (an exception, a KeyboardInterrupt or
    Dagster's interrupt of the step, is on its way up through Beam's ``close_all``) the worker is killed before
    anything waits for it; and otherwise a worker that has not ended :data:`STOP_WAIT_S` after it was told to is
    killed. Beam's own joined the worker's thread unbounded: a SIGTERM as the workers started hung the build for
    good, holding the build lock, waiting for a worker that was never told to stop (review rev30c).

    A worker that dies while the run needs it (SIGKILLed by the OOM killer, a native crash, before it connected or
    mid-bundle), or whose start fails, fails the run within seconds with a :class:`WorkerDied` naming its exit
    status: every answer the run waits for from it (its control stream) fails with that error, and so does the
    wait for its outputs (its data stream); its control stream's reader ends quietly. Beam's raised the error in
    the worker's thread only (its traceback printed) and the run waited for the dead worker for good, holding the
    build lock (review rev31c)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failure: WorkerDied | None = None
        self._failure_lock = threading.Lock()
        self._closing = False
        self.worker: _StoppableWorker | None = None
        self.worker_thread: threading.Thread | None = None
        # the connections the servicers made for this worker's id, watched (not started: no worker runs yet)
        if type(self.control_conn) is not worker_handlers.ControlConnection \
                or type(self.data_conn) is not data_plane._GrpcDataChannel:
            raise TypeError("apache-beam's worker connections changed: pipelines.features.beamworker needs updating")
        self.control_conn.__class__ = _WatchedControlConnection
        self.control_conn.watch(self._control_broken)
        self.data_conn.__class__ = _WatchedDataChannel
        self.data_conn.failure_after = self._failure_after

    def start_worker(self) -> None:
        self.worker = _StoppableWorker(self._worker_command_line, self.control_address, self.provision_info,
                                       self.worker_id, on_death=self._fail, expected=lambda: self._closing)
        self.worker_thread = threading.Thread(name="run_worker", target=self.worker.run, daemon=True)
        self.worker_thread.start()

    def _fail(self, error: WorkerDied) -> None:
        """The worker died or could not start: everything the run waits for from it fails with ``error``."""
        with self._failure_lock:
            if self.failure is not None or self._closing:
                return
            self.failure = error
        if self.worker is not None:
            self.worker.stop()
        self.control_conn.fail(error)
        self.data_conn._exception = error   # the wait for its outputs raises it within a second
        _end_data_stream(self.data_conn)

    def _failure_after(self, timeout: float) -> WorkerDied | None:
        """The worker's failure, once its thread has ended (at most ``timeout`` s), or None while it runs."""
        if self.worker_thread is not None and self.worker_thread is not threading.current_thread():
            self.worker_thread.join(timeout)
        return self.failure

    def _control_broken(self, exc: BaseException) -> None:
        """The worker's control stream broke: its process's end names the failure; one still running is killed."""
        if self._closing or self.worker is None or self.worker.stopped \
                or self._failure_after(EXIT_WAIT_S) is not None:
            return
        pid = self.worker.pid
        try:
            raise WorkerDied(f"a Beam SDK worker process (pid {pid}) lost its control connection "
                             f"({type(exc).__name__}) before the run was done with it")
        except WorkerDied as died:
            self._fail(died)

    def close(self) -> None:
        failing = sys.exc_info()[1] is not None or self.failure is not None
        with self._failure_lock:
            self._closing = True
        if failing:   # the run failed or was interrupted: nothing more is wanted of the worker, nor waited for
            if self.worker is not None:
                self.worker.stop()
            self.control_conn.fail(self.failure or RuntimeError("the run ended"))
            _end_data_stream(self.data_conn)
        else:
            ended = self.control_conn.close_within(STOP_WAIT_S)
            if ended:
                ended = _close_data_within(self.data_conn, STOP_WAIT_S)
            if not ended and self.worker is not None:
                self.worker.stop()
                _end_data_stream(self.data_conn)
        worker_handlers.WorkerHandler.close(self)   # stop_worker

    def stop_worker(self) -> None:
        if self.worker_thread is None:
            return
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
