"""Beam's portable runner on one machine: a job service and a worker pool, each a separate process.

``--runner=PortableRunner`` submits the pipeline to a job service over the Job API; the job service
runs it with Beam's ``FnApiRunner`` and asks an external worker pool for SDK harnesses, which receive
every DoFn pickled over the Fn API: the same protocol Flink, Spark and Dataflow speak to their Python
workers. What breaks first on a cluster (a DoFn that does not pickle, state of the driver's main
session, a path only the driver can see, a model or a package missing on the workers) breaks here
too, which it never does on the in-process DirectRunner. :class:`LocalPortableCluster` starts both
processes in their own folder with the environment it is given; the portable e2e test and
``benchmarks/features.py --runner portable`` use it.

The job service is Beam's own ``LocalJobServicer`` (the class behind
``python -m apache_beam.runners.portability.local_job_service_main``), started by
``python -m pipelines.features.portable jobservice`` only so that it honours ``--direct_num_workers``: the
stock entry point always runs one worker. The worker pool is Beam's
``apache_beam.runners.worker.worker_pool_main`` unchanged; it starts each harness as ``python -c ...``
with the ``python`` first on its ``PATH``.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Iterator, Sequence

WORKER_POOL_MODULE = "apache_beam.runners.worker.worker_pool_main"
START_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------ job service

def serve_jobs(argv: Sequence[str]) -> None:
    """Run Beam's local job service until killed; write its port to ``--port-file`` once it listens."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.features.portable jobservice")
    parser.add_argument("--port-file", required=True, help="the port is written here (atomically) once serving")
    parser.add_argument("--staging-dir", default=None, help="artifact staging folder (default: a temp folder)")
    args = parser.parse_args(argv)

    from pipelines.features.beamworker import import_beam_quietly

    import_beam_quietly()
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class ParallelBeamJob(local_job_service.BeamJob):
        """Beam's local job, run on ``--direct_num_workers`` SDK harnesses instead of always one."""

        def _invoke_runner(self):
            self.set_state(beam_job_api_pb2.JobState.RUNNING)
            options = self.pipeline_options()
            runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
            # What FnApiRunner.run_pipeline does with the option; run_via_runner_api (the job
            # service's entry) skips it and keeps the default of one worker.
            runner._num_workers = max(1, int(options.view_as(DirectOptions).direct_num_workers or 1))
            return runner.run_via_runner_api(self._pipeline_proto, options)

    servicer = local_job_service.LocalJobServicer(args.staging_dir, beam_job_type=ParallelBeamJob)
    port = servicer.start_grpc_server(0)
    temporary = f"{args.port_file}.tmp"
    with open(temporary, "w") as handle:
        handle.write(str(port))
    os.replace(temporary, args.port_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        servicer.stop()


# ---------------------------------------------------------------------------------------- cluster

def free_port() -> int:
    """A TCP port nobody listens on right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class LocalPortableCluster:
    """A job service and a worker pool on this machine, stopped (with their SDK harnesses) on exit.

    Both processes run in ``workdir`` (their working directory, ``TMPDIR`` and log files), with
    ``python``'s folder first on ``PATH`` and ``PYTHONPATH`` set to ``pythonpath`` and nothing else
    from this process: what the workers import must come from there or from ``python``'s own
    site-packages, as on a cluster's workers.
    """

    workdir: Path
    python: str = sys.executable
    pythonpath: Sequence[str] = ()
    start_timeout_s: float = START_TIMEOUT_S
    job_port: int = 0
    pool_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The variables both processes (and the harnesses the pool starts) get."""
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.pathsep.join([os.path.dirname(self.python), os.environ.get("PATH", "/usr/bin:/bin")]),
               "TMPDIR": str(tmp), "HOME": str(self.workdir), "LANG": os.environ.get("LANG", "C.UTF-8"),
               "PYTHONPATH": os.pathsep.join(str(p) for p in self.pythonpath), "PYTHONNOUSERSITE": "1"}
        return env

    def beam_args(self, workers: int = 1) -> list[str]:
        """Beam options that send a pipeline to this cluster with ``workers`` SDK harness processes."""
        if not self.processes:
            raise RuntimeError("the cluster is not running: use it as a context manager")
        return ["--runner=PortableRunner", f"--job_endpoint=localhost:{self.job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{self.pool_port}",
                f"--direct_num_workers={workers}", "--requirements_cache=skip"]

    def _group_processes(self) -> Iterator[Path]:
        """``/proc/<pid>`` of every live process in the job service's and the worker pool's process groups."""
        groups = {process.pid for process in self.processes.values()}
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) in groups:
                    yield entry
            except OSError:            # the process ended meanwhile
                continue

    def cpu_seconds(self) -> float:
        """CPU time so far of the job service, the worker pool and every SDK harness (Linux ``/proc``).

        Live processes count with their reaped children, so harnesses the pool already stopped still
        count; call it before the cluster stops.
        """
        ticks = 0
        for entry in self._group_processes():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += sum(int(value) for value in fields[11:15])       # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        """The largest peak resident set (``VmHWM``) among the cluster's live processes, in MiB.

        Harnesses the pool already stopped are not seen.
        """
        peaks = [0.0]
        for entry in self._group_processes():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
        return max(peaks)

    def log(self, name: str) -> str:
        """The output so far of ``jobservice`` or ``workerpool`` (for error messages)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> "LocalPortableCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_job_service()
            self._start_worker_pool()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(argv, cwd=self.workdir, env=self.environment(), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def _start_job_service(self) -> None:
        port_file = self.workdir / "jobservice.port"
        port_file.unlink(missing_ok=True)
        process = self._spawn("jobservice", [self.python, "-m", "pipelines.features.portable", "jobservice",
                                             "--port-file", str(port_file),
                                             "--staging-dir", str(self.workdir / "staging")])
        deadline = time.monotonic() + self.start_timeout_s
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the job service did not start (exit {process.poll()}):\n{self.log('jobservice')[-3000:]}")
            time.sleep(0.1)
        self.job_port = int(port_file.read_text())

    def _start_worker_pool(self) -> None:
        # worker_pool_main needs a fixed port: pick a free one, and pick again if another process took it.
        for _ in range(3):
            self.pool_port = free_port()
            process = self._spawn("workerpool", [self.python, "-m", WORKER_POOL_MODULE,
                                                 f"--service_port={self.pool_port}"])
            deadline = time.monotonic() + self.start_timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                if _listening(self.pool_port):
                    return
                time.sleep(0.2)
            _stop_group(process)
            del self.processes["workerpool"]
        raise RuntimeError(f"the worker pool did not start:\n{self.log('workerpool')[-3000:]}")

    def stop(self) -> None:
        """Stop the worker pool (with the harnesses it started) and the job service; idempotent."""
        for name in ("workerpool", "jobservice"):
            process = self.processes.pop(name, None)
            if process is not None:
                _stop_group(process)


def _stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group ``process`` leads (its children included), SIGKILL after ``grace_s``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    # Harnesses outlive a pool that exited on its own; they share its process group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipelines.features.portable jobservice --port-file F``: the job service of :class:`LocalPortableCluster`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "jobservice":
        raise SystemExit("usage: python -m pipelines.features.portable jobservice --port-file FILE [--staging-dir DIR]")
    serve_jobs(args[1:])


if __name__ == "__main__":
    main()
