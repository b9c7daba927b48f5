"""`pickapic` commands run in processes forked from one that has already imported the CLI and its stages.

A `pickapic build` of a small home spends most of its seconds importing (Dagster, Beam, DuckDB, pyarrow: about
3 s of CPU on the CI's cores) before it reads a byte of the home. Tests that run the real CLI a dozen times (killed
at chosen renames, then rerun) pay that at every run. ``PrewarmedCli`` starts one server process (``python -c
SERVER``) that imports those modules once and then, for each command, forks a child that becomes what
``python -c CODE ARGS`` started in its own session would be: a new session and process group (the pid is the
group's id, so a test can signal or SIGKILL the whole group), SIGINT / SIGTERM / SIGHUP at their defaults, stdin
``/dev/null``, stdout and stderr appended to a log file, the given environment and working directory, ``sys.argv``
= ``["-c", *args]``, and CODE run as ``__main__``. The child ends as an interpreter does (``SystemExit``: atexit
handlers, flushes); the server reports its exit code as ``Popen.returncode`` would (``-N`` for a signal N).

The child is a fresh copy of the server, which runs nothing but imports, so no state passes from one command to
the next. What is not the same as a new interpreter: the modules are imported before CODE runs, so CODE must not
rely on patching a module attribute before an importer binds it by name (``from os import replace``; the product
calls ``os.replace`` / ``os.rename`` through the module, which is what the rename hooks of the tests wrap).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# what every `pickapic build` imports (the mounted CLI, the build, the definitions and their stages)
PREIMPORTS = ("dagster_project.cli", "dagster_project.build", "dagster_project.definitions",
              "pipelines.features.stage")

# `python -m dagster_project.cli ARGS`, as CODE (what the module's `if __name__ == "__main__"` block runs)
PLAIN = "import sys\nfrom dagster_project.cli import main\nsys.exit(main(sys.argv[1:]))\n"

SERVER = r"""
import importlib, json, os, signal, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
reply = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)    # nothing an import or a child prints reaches the replies
print("ready", file=reply, flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        reply.close()
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["log"]), (2, request["err"] or request["log"])):
            log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(log, fd)
            os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-c", *request["args"]]
        exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        sys.exit(0)
    print(pid, file=reply, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), file=reply, flush=True)
"""


class Timeout(Exception):
    """The command ran past its time; its whole group was SIGKILLed."""


class PrewarmedCli:
    """One server process; ``run`` one command at a time. Use as a context manager (the server is ended on exit)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(PREIMPORTS)], cwd=REPO, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        self._replies = self._proc.stdout.fileno()
        self._pending = b""
        assert self._line(300) == "ready", "the prewarmed CLI server did not start"

    def _line(self, timeout: float) -> str | None:
        """The server's next reply line, or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self._replies, 4096)
            assert chunk, f"the prewarmed CLI server ended (exit {self._proc.wait()})"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def run(self, code: str, args: list[str], log: Path, env: dict[str, str], timeout: float,
            cwd: Path = REPO, err: Path | None = None) -> int:
        """Run CODE as ``python -c CODE ARGS`` in its own session (stdout appended to ``log``, stderr too unless
        ``err`` is given); wait for it, then SIGKILL whatever of its group is left (a worker left behind must not
        write on). Returns its exit code; raises Timeout (after killing the group) when it runs past ``timeout``
        seconds."""
        request = {"code": code, "args": list(args), "log": str(log), "err": str(err) if err else None, "env": env,
                   "cwd": str(cwd)}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        pid = int(self._line(60))
        status = self._line(timeout)
        timed_out = status is None
        if timed_out:
            _kill_group(pid)
            status = self._line(60)
        _kill_group(pid)
        if timed_out:
            raise Timeout(f"{args} ran past {timeout}s")
        return int(status)

    def completed(self, args: list[str], env: dict[str, str], timeout: float, folder: Path,
                  code: str = PLAIN) -> subprocess.CompletedProcess:
        """``subprocess.run([python, -m, dagster_project.cli, *args], capture_output=True, text=True)``'s result for
        a run here (its stdout and stderr kept apart in files under ``folder``, which are removed)."""
        out, err = folder / f".prewarmed-{os.getpid()}.out", folder / f".prewarmed-{os.getpid()}.err"
        try:
            returncode = self.run(code, args, out, env, timeout, err=err)
            return subprocess.CompletedProcess(args, returncode, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))
        finally:
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc.pid)
            self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> PrewarmedCli:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pickapic_env() -> dict[str, str]:
    """This process's environment for a `pickapic` command: the repository first on PYTHONPATH, no home, Dagster home
    or fault injection of the test run's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture
def prewarmed_cli() -> PrewarmedCli:
    """A server for one test's `pickapic` runs (import this fixture into the test module)."""
    with PrewarmedCli(pickapic_env()) as server:
        yield server


def build_stdout(cli: PrewarmedCli, home: Path, *args: str) -> str:
    """`pickapic build --home HOME ARGS` run by ``cli``, which must succeed; its stdout."""
    done = cli.completed(["build", "--home", str(home), *args], pickapic_env(), 600, home.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout
