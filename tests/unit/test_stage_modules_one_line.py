"""Every ``python -m`` entry point of the pipeline answers an ordinary failure in one line on stderr with exit 1
(``formats.commands.run_command``), a URL's credential hidden: ``python -m simulator --to-postgres`` against a
server that is not there printed a Python traceback before (the query, export and app-export modules were
wrapped the same day)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as probe:        # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_simulator_says_in_one_line_that_the_database_is_unreachable(tmp_path: Path) -> None:
    # the password through PGPASSWORD: one on the command line is refused before connecting (review rev32h)
    dsn = f"postgresql://bob@127.0.0.1:{_closed_port()}/appdb"
    done = subprocess.run(
        [sys.executable, "-m", "simulator", "--home", str(tmp_path / "home"), "--days", "1", "--users", "4",
         "--rankings-per-day", "10", "--quiet", "--no-images", "--to-postgres", dsn],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), PGPASSWORD="s3cret-pw"),
        timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m simulator: error: cannot connect to the app database")


def test_the_stage_modules_run_their_main_as_a_command() -> None:
    """The modules a user runs by hand go through run_command (the others are listed in README's *The pickapic
    command*): checked on their source, since their ordinary errors are already one line of their own."""
    for module in ("pipelines/query/engine.py", "pipelines/query/export.py", "pipelines/appdb/__main__.py",
                   "simulator/__main__.py"):
        tail = (REPO / module).read_text(encoding="utf-8").rsplit('if __name__ == "__main__":', 1)[1]
        assert "run_command(" in tail, module
