"""`pickapic serve`: the Dagster UI and daemon of one data home, so the nightly path runs by itself.

Two processes on this machine, both with ``DAGSTER_HOME=HOME/dagster`` and ``PICKAPIC_HOME=HOME``:
``dagster-daemon run`` (schedules, sensors, the automation sensor, the run queue) and
``dagster-webserver`` on 127.0.0.1, behind :mod:`dagster_project.webgate` (only the home's owner, or a holder of
its UI token, gets in). If either exits, the other is stopped and serve exits with its
status, so a service manager (systemd, see the README) restarts the pair. SIGTERM / Ctrl-C stop both.

One daemon per home: serve holds ``HOME/.locks/daemon.lock`` while its daemon runs, and a second serve on the same
home is refused (:class:`DaemonRunning`; two daemons would both tick the schedules and dequeue the same runs).
``pickapic ui`` starts the pair too, with schedules and sensors off by default, since a run launched from the UI
waits in Dagster's run queue until a daemon starts it; when a serve already runs the home's daemon, it starts the
webserver alone.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster_project.location import MODULE
from formats.home import DataHome
from formats.locks import hold_lock
from formats.progress import Progress

# Dagster's webserver command behind the gate that lets only the home's owner in (review rev32h: every local
# account drove the UI's GraphQL API): its flags and workspace are dagster-webserver's
WEBSERVER_MODULE = "dagster_project.webgate"


def ui_address(home: DataHome, host: str, port: int) -> str:
    """The UI's address as serve and ui print it (:func:`dagster_project.webgate.announce`: the token only to a
    terminal), making the home's UI token first, before the webserver starts."""
    from dagster_project.webgate import announce

    return announce(home, host, port)


def project_root() -> str:
    """The folder holding this project's packages (``dagster_project``, ``pipelines``, ``training``, ...): the working
    directory of the daemon, the webserver and their code server (:func:`commands`)."""
    return str(Path(__file__).resolve().parents[1])


def commands(host: str, port: int) -> dict[str, list[str]]:
    """The daemon and webserver command lines, run with :func:`project_root` as their working directory (``cwd``
    of :func:`_serve`, ``os.chdir`` before ``pickapic ui`` execs the webserver) and given it as the code location's
    (``-d``): ``python -m`` puts the current folder first on ``sys.path``, and Dagster's code server the location's
    working directory (the current folder, unless ``-d``), so a ``training/`` package of the folder the operator
    started ``pickapic serve`` in was imported instead of the project's (review rev32e). Ignored by the console
    script ``pickapic``, which never imports from the current folder."""
    root = project_root()
    return {
        "daemon": [sys.executable, "-m", "dagster._daemon", "run", "-m", MODULE, "-d", root],
        "webserver": [sys.executable, "-m", WEBSERVER_MODULE, "-m", MODULE, "-d", root, "-h", host, "-p", str(port)],
    }


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)      # loaded here: the forked child only calls it


def _die_with(parent: int):
    """A ``preexec_fn``: the child gets SIGTERM when its parent (serve) dies, however it dies (``kill -9``, the
    OOM killer), so no daemon outlives the serve whose lock (``daemon.lock``) said it was the home's one."""
    def set_death_signal() -> None:
        # an ignored SIGTERM survives exec, and so does a blocked one (a launcher, e.g. a test runner's worker,
        # may have either): the child takes the default action, or the death signal would do nothing
        _LIBC.signal(signal.SIGTERM, 0)          # SIG_DFL
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:      # serve died before the call: nothing would send the signal
            os._exit(1)
    return set_death_signal


class DaemonRunning(RuntimeError):
    """Another process runs the Dagster daemon of this data home (``holder``: its pid)."""

    def __init__(self, home: DataHome, holder: str) -> None:
        super().__init__(f"another `pickapic serve` (pid {holder}) runs the Dagster daemon of {home.root} "
                         f"({daemon_lock_file(home)}); one daemon per home")
        self.holder = holder


def daemon_lock_file(home: DataHome):
    """The lock a serve holds while its daemon runs (``HOME/.locks/daemon.lock``)."""
    return home.locks / "daemon.lock"


def daemon_automation_file(home: DataHome):
    """Whether the running serve's schedules and sensors start on (``on`` / ``off``): written by the serve holding
    ``daemon.lock``, read by a ``pickapic ui`` that starts its webserver alone beside it (:func:`daemon_automation`)."""
    return home.locks / "daemon.automation"


def daemon_automation(home: DataHome) -> str | None:
    """``"on"`` or ``"off"``: the automation default the home's running serve gave its daemon and webserver, as it
    recorded it (:func:`daemon_automation_file`); None when there is no such record (a serve of an earlier version),
    or it is not one. A ``pickapic ui`` beside a ``pickapic serve --no-automation`` gives its webserver this value,
    so its UI shows the schedules and sensors as the daemon runs them (review rev32e: all shown RUNNING while the
    daemon ran none)."""
    from formats.files import read_small_file

    data = read_small_file(daemon_automation_file(home), 16)
    value = (data or b"").decode("ascii", "replace").strip()
    return value if value in ("on", "off") else None


def serve(home: DataHome, host: str = "127.0.0.1", port: int = 3000, automation: bool = True,
          progress: Progress = print) -> int:
    """Run the daemon and the webserver for ``home`` until one of them stops or a signal arrives; raise
    :class:`DaemonRunning` (nothing started) when another serve runs this home's daemon."""
    def busy(holder: str) -> None:
        raise DaemonRunning(home, holder)

    with hold_lock(daemon_lock_file(home), "the Dagster daemon of the data home", busy):
        from formats.files import write_bytes_atomic

        write_bytes_atomic(daemon_automation_file(home), b"on\n" if automation else b"off\n")
        return _serve(home, host, port, automation, progress)


def _serve(home: DataHome, host: str, port: int, automation: bool, progress: Progress) -> int:
    from dagster_project.automation import AUTOMATION_ENV
    from dagster_project.build import give_old_build_runs_an_origin, use_home

    use_home(home)      # also creates the instance's databases before the two processes start (create_dagster_storage)
    give_old_build_runs_an_origin(home)     # the UI can re-execute a build's run stored by an earlier version
    env = dict(os.environ)
    env[AUTOMATION_ENV] = "on" if automation else "off"
    address = ui_address(home, host, port)
    processes = {name: subprocess.Popen(command, env=env, cwd=project_root(), preexec_fn=_die_with(os.getpid()))
                 for name, command in commands(host, port).items()}
    stopping = []

    def stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    progress(f"pickapic serve: {home.root} at {address} (daemon pid {processes['daemon'].pid}, webserver pid "
        f"{processes['webserver'].pid}); schedules and sensors {'on' if automation else 'off'} by default; "
        "Ctrl-C stops both")
    try:
        while not stopping:
            exited = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
            if exited:
                name, code = next(iter(exited.items()))
                progress(f"pickapic serve: the {name} exited with status {code}; stopping")
                return code or 1
            time.sleep(0.5)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
