"""Hostile review 15: a run launched from `pickapic ui` is started, not left in the run queue.

Found by the review: `pickapic ui` ran the webserver alone, and Dagster's default run coordinator (a queue) needs
the daemon to start a launched run, so every run launched there sat QUEUED for good. `pickapic ui` now runs the
daemon too (schedules and sensors off by default), and the webserver alone only when a `pickapic serve` already
runs the home's daemon (one daemon per home: ``HOME/.locks/daemon.lock``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error

import dagster as dg
import pytest

from dagster_project.serve import DaemonRunning, daemon_lock_file, serve
from formats.home import DataHome
from formats.locks import hold_lock
from tests.e2e.test_launch_refusal import _launch
from tests.e2e.test_serve import REPO, _free_port, _graphql


def _runs(home: DataHome) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        return list(instance.get_runs())


def test_a_good_run_launched_from_pickapic_ui_is_started_not_left_queued(tmp_path):
    home = DataHome(tmp_path / "home")
    port = _free_port()
    log = tmp_path / "ui.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_AUTOMATION")}
    with open(log, "wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ui", "--home", str(home.root),
                               "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                if _graphql(port, "{ version }").get("data"):
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            assert ui.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        result = _launch(port, {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}})
        assert result["__typename"] == "LaunchRunSuccess", result
        run_id = result["run"]["runId"]
        deadline = time.monotonic() + 120
        while True:       # the daemon dequeues it (an empty home: the run then fails for want of data, not queued)
            status = next(r.status for r in _runs(home) if r.run_id == run_id)
            if status not in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED):
                break
            assert time.monotonic() < deadline, f"still {status}; log:\n{log.read_text(errors='replace')[-4000:]}"
            time.sleep(1)
        with pytest.raises(DaemonRunning, match="one daemon per home"):   # a second daemon on this home is refused
            serve(home, port=_free_port())
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()


def test_serve_refuses_a_home_whose_daemon_runs_and_starts_nothing(tmp_path, monkeypatch):
    home = DataHome(tmp_path / "home")
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    with hold_lock(daemon_lock_file(home), "a test's daemon", lambda holder: None):
        with pytest.raises(DaemonRunning, match=f"pid {os.getpid()}"):
            serve(home, port=_free_port())
    assert started == []


def test_serve_creates_the_dagster_databases_before_it_starts_the_daemon_and_webserver(tmp_path, monkeypatch):
    """CI: on a new home the daemon and webserver both created the SQLite schema at once and the daemon died
    (``table alembic_version already exists``). Serve now creates it before either starts."""
    home = DataHome(tmp_path / "home")
    seen = []

    class Started:
        pid = 0
        returncode = 0

        def __init__(self, command, **kwargs) -> None:
            names = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")
            seen.append({name: (home.dagster_home / name).is_file() for name in names})

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    import types

    import dagster_project.serve as serve_module
    monkeypatch.setattr(serve_module, "subprocess", types.SimpleNamespace(
        Popen=Started, TimeoutExpired=subprocess.TimeoutExpired))
    assert serve(home, port=_free_port(), progress=lambda line: None) == 1   # a child "exited" at once
    assert len(seen) == 2 and all(all(found.values()) for found in seen), seen
