"""Run ``python -m dagster_project.cli ...`` (or ``python -c CODE ...``, or a script) as its own process without
paying Python's start-up and the third-party imports (Dagster, Beam, DuckDB, pyarrow, pandas: ~3 CPU-s) at every
command.

A server process (``python -c SERVER``) imports those libraries once and then only forks: each command is a child
that becomes what ``subprocess.Popen([python, *argv], start_new_session=True, stdin=DEVNULL)`` would start: its
own pid, session and process group (the pid is the group's id, so a test can signal or SIGKILL the whole group),
the signal dispositions and mask a new interpreter started with ``preexec_fn=default_signals`` has (those the
server, started so, had before its imports: SIGINT raising KeyboardInterrupt, SIGTERM and SIGHUP at their defaults
whatever the test process ignores), stdin ``/dev/null``, stdout / stderr in files, the given
environment (``sys.path`` follows its PYTHONPATH) and working folder, ``sys.argv`` and ``sys.path[0]`` as ``python``
sets them for ``-m``, ``-c`` and a script, and a new ``__main__``. The project's modules are imported fresh in
each child, as ``python -m`` does (a hook may patch ``os.replace`` or a class before they bind it). The child ends
the way an interpreter does: non-daemon threads joined, ``atexit`` handlers run, streams flushed, the exit code of
``SystemExit`` (a message printed to stderr and 1 for a non-int), a traceback and 1 for an exception, death by
SIGINT for an uncaught KeyboardInterrupt; ``run`` returns the code as ``Popen.returncode`` gives it (``-N`` for a
signal N) and SIGKILLs what is left of the group afterwards (a worker left behind must not write on).

``preimport``: a module whose commands never patch a project name before it is bound may also preimport project
modules (``CLI_MODULES``: ~0.8 CPU-s more saved a command here, where no bytecode is cached); their module-level
state is then the server's, copied into each child (nothing of one command passes to the next all the same: every
child is a copy of the server, which runs nothing but imports).

What a fork shares that a fresh ``python`` would not: the string hash seed of the server and numpy's global random
state (``random`` reseeds itself in a forked child). So a test that compares a version built here with one built
by a fresh process builds its reference with ``run_python(..., fresh=True)`` (a real subprocess), which is also
what ``run_python`` does when no server is active (the fallback).

One server per test module (``forked_cli`` fixture, ``pytestmark = pytest.mark.usefixtures("forked_cli")`` for
``run_python``): nothing is shared between files.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import default_signals

REPO = Path(__file__).resolve().parents[1]

# the start-up every `pickapic` command paid before it read a byte of its home
THIRD_PARTY = ("dagster", "apache_beam", "duckdb", "numpy", "pandas", "pyarrow.parquet", "PIL.Image", "psycopg",
               "regex", "open_data_contract_standard")
# what every `pickapic build` imports of the project (the mounted CLI, the build, the definitions and their stages)
CLI_MODULES = ("dagster_project.cli", "dagster_project.build", "dagster_project.definitions",
               "pipelines.features.stage")
CLI = ["-m", "dagster_project.cli"]

SERVER = r"""
import atexit, importlib, json, os, runpy, signal, sys, threading, traceback, types
dispositions = {sig: signal.getsignal(sig) for sig in signal.valid_signals()
                if sig not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(sig) is not None}
server_path = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
rest = sys.path[1:]                              # sys.path after its first entry and PYTHONPATH's
while rest and rest[0] in server_path:
    rest.pop(0)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
reply = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)    # nothing an import prints reaches the replies
print("ready", file=reply, flush=True)
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid:
        print(pid, file=reply, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), file=reply, flush=True)
        continue
    code, interrupted = 1, False
    try:
        reply.close()
        os.setsid()
        for sig, handler in dispositions.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if job["append"] else os.O_TRUNC)
        for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, job["out"], flags), (2, job["err"], flags)):
            opened = os.open(path, mode, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        env = job["env"]
        unbuffered = 1 if env.get("PYTHONUNBUFFERED") else -1
        sys.stdin = sys.__stdin__ = open(0, closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=unbuffered, closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        os.environ.clear()
        os.environ.update(env)
        os.chdir(job["cwd"])
        job_path = list(dict.fromkeys(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p))
        argv = job["argv"]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        try:
            if argv[0] == "-m":
                sys.path[:] = [os.getcwd(), *job_path, *rest]
                sys.argv = argv[1:]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.path[:] = ["", *job_path, *rest]
                sys.argv = ["-c", *argv[2:]]
                main.__dict__["__builtins__"] = __builtins__
                exec(compile(argv[1], "<string>", "exec"), main.__dict__)
            else:
                sys.path[:] = [os.path.dirname(os.path.realpath(argv[0])), *job_path, *rest]
                sys.argv = argv
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            interrupted = True
        except BaseException:
            traceback.print_exc()
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush(); sys.stderr.flush()
        if interrupted:                          # as an interpreter: it dies of the SIGINT it did not handle
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)
"""


class ForkServer:
    """One server process; ``run`` one command at a time. ``close`` (or the context manager) ends it."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None, preimport: tuple[str, ...] = THIRD_PARTY):
        self.folder = folder
        self._proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(list(preimport))], cwd=REPO,
                                      env=pickapic_env() if env is None else env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True,
                                      preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs here
        self._replies = self._proc.stdout.fileno()
        self._pending = b""
        assert self._line(300) == "ready", f"the fork server did not start (exit {self._proc.poll()})"

    def _line(self, timeout: float) -> str | None:
        """The server's next reply line, or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self._replies, 4096)
            assert chunk, f"the fork server ended (exit {self._proc.wait()})"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path = REPO, timeout: float = 600,
            log: Path | None = None) -> subprocess.CompletedProcess:
        """``python <argv>`` (``["-m", mod, ...]``, ``["-c", code, ...]`` or ``[script, ...]``) in a child of the
        server; its stdout and stderr appended to ``log`` when given (the result's are then None), else captured.
        Raises ``subprocess.TimeoutExpired`` (after SIGKILLing its group) when it runs past ``timeout`` s."""
        if log is None:
            out, err = (tempfile.mkstemp(dir=self.folder, suffix=suffix) for suffix in (".out", ".err"))
            os.close(out[0]), os.close(err[0])
            paths = [out[1], err[1]]
        else:
            paths = [str(log), str(log)]
        try:
            job = {"argv": list(argv), "env": env, "cwd": str(cwd), "out": paths[0], "err": paths[1],
                   "append": log is not None}
            self._proc.stdin.write(json.dumps(job) + "\n")
            self._proc.stdin.flush()
            pid = int(self._line(60))
            status = self._line(timeout)
            timed_out = status is None
            if timed_out:
                _kill_group(pid)
                status = self._line(60)
            _kill_group(pid)
            stdout, stderr = (None, None) if log else (Path(p).read_text(errors="replace") for p in paths)
        finally:
            if log is None:
                for path in paths:
                    os.unlink(path)
        args = [sys.executable, *argv]
        if timed_out:
            raise subprocess.TimeoutExpired(args, timeout, stdout, stderr)
        return subprocess.CompletedProcess(args, int(status), stdout, stderr)

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc.pid)
            self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pickapic_env(**extra: str) -> dict[str, str]:
    """This process's environment for a `pickapic` command: the repository first on PYTHONPATH, no home, Dagster home
    or fault injection of the test run's own; ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


_ACTIVE: list[ForkServer] = []   # the server of the module running now (``forked_cli``)


def run_python(argv: list[str], *, env: dict[str, str], cwd: Path = REPO, timeout: float = 600,
               fresh: bool = False, log: Path | None = None) -> subprocess.CompletedProcess:
    """``python <argv>`` as ``ForkServer.run`` runs it: by this module's fork server when the module uses
    ``forked_cli`` (and not ``fresh``), else by a new interpreter in its own session (the same contract)."""
    if _ACTIVE and not fresh:
        return _ACTIVE[-1].run(argv, env=env, cwd=cwd, timeout=timeout, log=log)
    args = [sys.executable, *argv]
    with open(log, "ab") if log else open(os.devnull, "rb") as sink:
        stream = sink if log else subprocess.PIPE
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stream,
                                stderr=subprocess.STDOUT if log else subprocess.PIPE, start_new_session=True,
                                preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs here
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(args, timeout, _text(stdout), _text(stderr)) from None
        finally:
            _kill_group(proc.pid)
    return subprocess.CompletedProcess(args, proc.returncode, _text(stdout), _text(stderr))


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode(errors="replace")


@pytest.fixture(scope="module")
def forked_cli(request, tmp_path_factory) -> Iterator[ForkServer]:
    """This module's fork server (see the module's docstring), started with ``pickapic_env()``; it preimports the
    module's ``FORK_PREIMPORT`` if it sets one (else ``THIRD_PARTY``). ``run_python`` uses it while the module's
    tests run."""
    preimport = getattr(request.module, "FORK_PREIMPORT", THIRD_PARTY)
    with ForkServer(tmp_path_factory.mktemp("forked-cli"), preimport=preimport) as server:
        _ACTIVE.append(server)
        try:
            yield server
        finally:
            _ACTIVE.remove(server)


def build_stdout(server: ForkServer, home: Path, *args: str) -> str:
    """`pickapic build --home HOME ARGS` run by ``server``, which must succeed; its stdout."""
    done = server.run([*CLI, "build", "--home", str(home), *args], env=pickapic_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout
