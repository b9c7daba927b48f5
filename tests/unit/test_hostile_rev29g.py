"""Hostile review rev29g: the fix of review rev29b (merge 893a02b): ``pickapic build`` watching each Dagster run for
Ctrl-C / SIGTERM (``build.signals_seen``, ``signal.set_wakeup_fd``, ``BuildInterrupted``, exit 130 / 143, Beam's
traceback of an interrupted step filtered out), and the temporary-file sweeps each stage now runs under its lock
(``formats.files.sweep_temps_of``, the new ``.locks/curation.lock`` and ``.locks/cache-writers.lock``,
``assign.sweep_split_temps``, the feature stage's partition and JPEG sweeps with the JPEG writer's retry,
``day.sweep_ingest_temps``).

Reviewed by running the real CLI (``python -m dagster_project.cli build``: Dagster, Beam, DuckDB) in its own session
on small simulated homes, signalled by the test (SIGINT to the process group, as a terminal's Ctrl-C does; SIGTERM
to the build's pid, as kill(1) and a service manager do; a second signal 0.3-0.4 s after the first) and by hooks in
the build process that signal it at chosen points (as a Dagster run returns, between two runs, while it plans, just
before or after each rename of the publish), and by real locks held in other processes.

Checked and found sound (no test here):
- SIGINT just before or just after every rename of the publish (the version folder, ``pickapic.history``,
  ``pickapic.switched``, ``latest``, a split's ``sizes.json`` in the staging, ``cache/published_split_pairs.json``,
  ``cache/build_stamp.json``): exit 130, "interrupted", no traceback, and the rerun succeeded and left
  ``datasets/``, ``warehouse/`` and ``blobs/`` byte-identical to an uninterrupted build;
- SIGTERM to the build's pid during an ingest or a Beam step: "terminated", exit 143, no process of the group left;
  a second Ctrl-C / SIGTERM after the first: "interrupted" / "terminated" printed, then the interpreter's
  finalization (handlers back to SIG_DFL) ends by the signal (-2 / -15: the shell's 130 / 143), nothing left;
- the new lock files in a group-shared home (umask 002, setgid folders): ``.locks`` 2775, ``curation.lock`` and
  ``cache-writers.lock`` 0664; a reader that cannot open ``cache-writers.lock`` writes no cache and does not fail;
  ``tests/e2e/test_hostile_rev16c_readers.py`` (``nobody`` reading, a group member building a group-shared home)
  still passes with the new lock files;
- lock order: no new lock is taken while holding a later one (the curation lock's block only writes the table;
  ``writing_shared``'s block only writes a cache; ``sweep_exclusively`` never waits), so no cycle with the build,
  ingest, day, ledger and publish locks; every writer of the swept names (curation tables, the four split tables,
  ``datasets/pickapic.salts``, ``cache/split_ledger_versions.json``, a day's ``image_features`` / ``image_rejects``,
  ``raw_zone_problems`` via both ``ingest_day`` and ``record_raw_zone_problems``, the raw-day digests and uid index)
  writes under the lock its sweep holds; a JPEG writer whose temporary file another day's sweep takes retries.

Found (each a strict xfail stating the correct behaviour; all three fixed the same day by fix29g, tested further in
``tests/unit/test_fix29g.py``), most severe first:
1. A SIGTERM that reaches the build as a Dagster run returns (after Dagster's ``capture_interrupts`` has put its
   handlers back, which leaves SIGTERM on SIGINT's ``default_int_handler``, and before ``signals_seen`` restores
   SIGTERM) raises a plain KeyboardInterrupt: the build says "interrupted" and exits 130, not "terminated" / 143.
2. A SIGTERM that reaches ``pickapic build`` outside a Dagster run (between two runs, while it plans or waits for
   the build lock, while it writes the build stamp) meets SIG_DFL: the process dies by the signal (-15) without
   the "terminated" line the README promises "wherever it comes".
3. A Ctrl-C at the terminal during a step reaches Dagster's compute-log babysitters (``watch_orphans.py``, two per
   step, in the build's process group): each prints a KeyboardInterrupt traceback above the build's one line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from formats.home import DataHome
from formats.settings import write_settings
from simulator import SimConfig, simulate
from tests.conftest import default_signals
from tests.fast_tmp import fast_folder

REPO = Path(__file__).resolve().parents[2]
SIM = SimConfig(days=1, users=12, rankings_per_day=25, image_size=64, seed=3)
TIMEOUT = 300

# `pickapic build` with a hook that sends itself REV29G_SIG at a chosen point (REV29G_AT), once, and marks that it
# did: "returned" as JobDefinition.execute_in_process returns (inside signals_seen, Dagster's run over), "between"
# the moment the build's first Dagster run has been fully handled (_execute returned, before the next run starts)
HOOK = r"""
import os, signal, sys
import dagster as dg
import dagster_project.build as build
sig, at, sent = getattr(signal, os.environ["REV29G_SIG"]), os.environ["REV29G_AT"], []
def fire():
    if not sent:
        sent.append(True)
        with open(os.environ["REV29G_SENT"], "w") as marker:
            marker.write("sent")
        os.kill(os.getpid(), sig)
if at == "returned":
    original = dg.JobDefinition.execute_in_process
    def execute_in_process(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        fire()
        return result
    dg.JobDefinition.execute_in_process = execute_in_process
elif at == "between":
    original = build._execute
    def _execute(*args, **kwargs):
        result = original(*args, **kwargs)
        fire()
        return result
    build._execute = _execute
from dagster_project.cli import main
sys.exit(main(sys.argv[1:]))
"""

# `pickapic build` whose feature step, once Dagster's compute-log babysitters (watch_orphans.py, children of the build)
# have been running a second, sends SIGINT to the build's whole process group: what a terminal's Ctrl-C does
CTRL_C_IN_A_STEP = r"""
import os, signal, sys, time
import pipelines.features.stage as stage
original, sent = stage._build_day, []
def babysitters():
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"watch_orphans" in command:
            found.append(pid)
    return found
def _build_day(*args, **kwargs):
    if not sent:
        deadline = time.monotonic() + 60
        while not babysitters() and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(os.environ["REV29G_SENT"], "w") as marker:
            marker.write(",".join(babysitters()))
        time.sleep(1)   # the babysitters are in their sleep loop, as they are for all but a step's first moments
        sent.append(True)
        os.killpg(os.getpgrp(), signal.SIGINT)
    return original(*args, **kwargs)
stage._build_day = _build_day
from dagster_project.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _build(folder: Path, code: str, **extra: str) -> tuple[DataHome, int, str]:
    """Run `pickapic build` through ``code`` on a new one-day home in its own session; (home, exit, output)."""
    home = DataHome(folder / "home")
    simulate(home, SIM)
    write_settings(home.root, {"splits.min_users": 3, "splits.min_unique_rows": 1})
    proc = subprocess.Popen([sys.executable, "-c", code, "build", "--home", str(home.root)], cwd=REPO,
                            env=_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=default_signals)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the build ran past {TIMEOUT}s:\n{output.decode(errors='replace')[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # nothing of the group may write on
        except ProcessLookupError:
            pass
    return home, proc.returncode, output.decode(errors="replace")


def test_sigterm_as_a_dagster_run_returns_says_terminated(tmp_path: Path) -> None:
    with fast_folder(tmp_path) as folder:
        sent = folder / "sent"
        home, code, output = _build(folder, HOOK, REV29G_SIG="SIGTERM", REV29G_AT="returned", REV29G_SENT=str(sent))
        assert sent.read_text() == "sent", "the hook never signalled the build"
        assert "built" not in output and not os.path.lexists(home.datasets / "latest"), output[-3000:]
        assert output.rstrip().splitlines()[-1] == "terminated", output[-3000:]
        assert code == 128 + signal.SIGTERM, f"exit {code}:\n{output[-3000:]}"


def test_sigterm_between_dagster_runs_says_terminated(tmp_path: Path) -> None:
    with fast_folder(tmp_path) as folder:
        sent = folder / "sent"
        home, code, output = _build(folder, HOOK, REV29G_SIG="SIGTERM", REV29G_AT="between", REV29G_SENT=str(sent))
        assert sent.read_text() == "sent", "the hook never signalled the build"
        assert "built" not in output and not os.path.lexists(home.datasets / "latest"), output[-3000:]
        assert code == 128 + signal.SIGTERM, f"exit {code} (a negative one: killed by the signal):\n{output[-3000:]}"
        assert output.rstrip().splitlines()[-1:] == ["terminated"], output[-3000:]


def test_ctrl_c_at_the_terminal_during_a_step_prints_one_line(tmp_path: Path) -> None:
    with fast_folder(tmp_path) as folder:
        sent = folder / "sent"
        home, code, output = _build(folder, CTRL_C_IN_A_STEP, REV29G_SENT=str(sent))
        assert sent.read_text(), "no compute-log babysitter was running in the step (the hook found none)"
        assert code == 130, f"exit {code}:\n{output[-3000:]}"
        assert output.rstrip().splitlines()[-1] == "interrupted", output[-3000:]
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
        assert not os.path.lexists(home.datasets / "latest")
