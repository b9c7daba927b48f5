"""Run ``python -m dagster_project.cli ...`` (or a wrapper script) as its own process without paying Python's
start-up and the third-party imports (Dagster, Beam, pyarrow, DuckDB, pandas: ~3 CPU-s) for every command.

A server process imports those libraries once and nothing of the project, and runs nothing else; each
command is a child forked from it: a new process (its own pid, process group, environment, working folder,
stdout / stderr files, exit status or killing signal), whose project modules are imported fresh, as in
``python -m``. The child ends the way an interpreter does (non-daemon threads joined, ``atexit`` handlers
run, streams flushed). One server per test module (``forked_cli`` fixture): nothing is shared between files.

What a fork shares that a fresh ``python`` would not: the string hash seed of the server (``random`` reseeds
itself in a forked child). So a test that compares a version built here with one built by a fresh process
(the modules' fixtures build their references with ``subprocess``) still compares two hash seeds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

SERVER = r"""
import atexit, json, os, runpy, signal, sys, threading, traceback
import dagster, apache_beam, duckdb, numpy, pandas, pyarrow.parquet  # noqa: F401 - the start-up every command paid
requests, replies = sys.stdin, sys.stdout
for line in requests:
    job = json.loads(line)
    replies.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for fd, target in ((null, 0), (out, 1), (err, 2)):
                os.dup2(fd, target)
                os.close(fd)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
            os.environ.clear()
            os.environ.update(job["env"])
            os.chdir(job["cwd"])
            argv = job["argv"]
            try:
                if argv[0] == "-m":
                    sys.argv = argv[1:]
                    sys.path[0] = os.getcwd()
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = argv
                    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                    runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os._exit(code)
    replies.write(f"{pid}\n"); replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(f"{os.waitstatus_to_exitcode(status)}\n"); replies.flush()
"""


class ForkedCli:
    """``run(argv, env, cwd)`` -> ``CompletedProcess``: ``argv`` as after ``python`` (``["-m", "mod", ...]`` or
    ``[script, ...]``), run by a child of the server."""

    def __init__(self, folder: Path, env: dict[str, str], cwd: Path):
        self.folder = folder
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600
            ) -> subprocess.CompletedProcess:
        out = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".out", delete=False)
        err = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".err", delete=False)
        out.close(), err.close()
        job = {"argv": argv, "env": env, "cwd": str(cwd), "out": out.name, "err": err.name}
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())
        timed_out: list[bool] = []

        def kill() -> None:
            timed_out.append(True)
            os.killpg(pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            code = int(self.server.stdout.readline())
        finally:
            timer.cancel()
        stdout, stderr = Path(out.name).read_text(errors="replace"), Path(err.name).read_text(errors="replace")
        os.unlink(out.name), os.unlink(err.name)
        args = [sys.executable, *argv]
        if timed_out:
            raise subprocess.TimeoutExpired(args, timeout, stdout, stderr)
        return subprocess.CompletedProcess(args, code, stdout, stderr)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)
        self.server.stdout.close()


_ACTIVE: list[ForkedCli] = []   # the server of the module running now (``forked_cli``)


def run_python(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600, fresh: bool = False
               ) -> subprocess.CompletedProcess:
    """``python <argv>``, output captured: a child of this module's fork server when the module uses
    ``forked_cli`` (and not ``fresh``), else a new interpreter (``subprocess.run``)."""
    if _ACTIVE and not fresh:
        return _ACTIVE[-1].run(argv, env=env, cwd=cwd, timeout=timeout)
    return subprocess.run([sys.executable, *argv], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def forked_cli(tmp_path_factory) -> Iterator[ForkedCli]:
    """This module's fork server (see the module's docstring), started with the caller's environment less the
    home, instance and fault variables (each command gets its own environment anyway); ``run_python`` uses it
    while the module's tests run (``pytestmark = pytest.mark.usefixtures("forked_cli")``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_FAULT")}
    cli = ForkedCli(tmp_path_factory.mktemp("forked-cli"), env, Path(__file__).resolve().parents[2])
    _ACTIVE.append(cli)
    try:
        yield cli
    finally:
        _ACTIVE.remove(cli)
        cli.close()
