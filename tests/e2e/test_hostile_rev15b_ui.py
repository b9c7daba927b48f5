"""Hostile review 15b: `pickapic ui` / `pickapic serve` and the one-daemon-per-home lock (process level)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dagster_project.serve import daemon_lock_file
from formats.home import DataHome
from tests.e2e.test_serve import REPO

# serve() with stand-ins for the daemon and the webserver (sleeping processes), so no Dagster process starts
_SERVE = """
import sys
from dagster_project import serve as s
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
s.commands = lambda host, port: {"daemon": sleeper, "webserver": sleeper}
from formats.home import DataHome
from pathlib import Path
s.serve(DataHome(Path(sys.argv[1])), port=1, automation=False, progress=lambda m: print(m, flush=True))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _lock_is_free(home: DataHome) -> bool:
    fd = os.open(daemon_lock_file(home), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("launcher_sigterm", ["default", "ignored"])
def test_a_killed_serve_leaves_no_daemon_running_without_the_lock(tmp_path, launcher_sigterm):
    home = DataHome(tmp_path / "home")
    # "ignored": serve started by something that ignores SIGTERM (it survives exec; a test runner's worker did)
    script = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if launcher_sigterm == "ignored"
              else "") + _SERVE
    serve = subprocess.Popen([sys.executable, "-c", script, str(home.root)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    children: list[int] = []
    try:
        line = serve.stdout.readline()
        match = re.search(r"daemon pid (\d+), webserver pid (\d+)", line)
        assert match, line
        children = [int(match.group(1)), int(match.group(2))]
        serve.kill()                       # SIGKILL to serve only (kill -9 PID, the OOM killer)
        serve.wait()
        daemon = children[0]
        # correct: either the daemon went with its serve, or the home's daemon lock is still held while it runs
        # (the signal is delivered at once, but a loaded machine may take a while to run the dying process)
        deadline = time.monotonic() + 20
        while _alive(daemon) and _lock_is_free(home) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (_alive(daemon) and _lock_is_free(home)), "an orphan daemon runs and the daemon lock is free"
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if serve.poll() is None:
            serve.kill()
            serve.wait()
