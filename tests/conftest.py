"""Fixtures and hooks for every test: per-test folders on tmpfs (see ``tests/fast_tmp.py``)."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pipelines  # noqa: F401 - first: it turns onnxruntime's telemetry off before a test imports nudenet
from formats.home import DataHome
from tests.fast_tmp import build_once, fast_folder, remove_shared_dirs

# The home shared by the tests (``built_home``) is made by `pickapic demo` itself (a smaller sample than
# the default demo), so the demo command is exercised end to end and the tests that only need a fully
# built home read it (or a copy) instead of building their own.
DEMO_ARGS = ["--days", "2", "--users", "24", "--rankings-per-day", "50", "--image-size", "64",
             "--train-steps", "30", "--seed", "7"]


@pytest.fixture
def fast_tmp(tmp_path: Path):
    """A fresh, empty folder for one test's data homes (on tmpfs when possible), removed afterwards.

    Use it instead of ``tmp_path`` where a test builds through Dagster or writes many small files."""
    with fast_folder(tmp_path) as folder:
        yield folder


# SIGTERM / SIGHUP as this test process found them. An in-process Dagster run maps SIGTERM to SIGINT's handler as it
# ends (``capture_interrupts``); an xdist worker ignores SIGINT, so one such run left SIGTERM ignored for every later
# test of the worker and every process it started: a CLI test's build then never took SIGTERM, and Dagster's step
# helpers (``tail -F``) outlived the SIGTERM that ends them.
_ENDING_SIGNALS = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}


@pytest.fixture(autouse=True)
def _ending_signals_as_found():
    yield
    for sig, handler in _ENDING_SIGNALS.items():
        if handler is not None and signal.getsignal(sig) != handler:
            signal.signal(sig, handler)


def default_signals() -> None:
    """``preexec_fn`` for a child a test signals: SIGINT, SIGTERM and SIGHUP at their defaults whatever the test
    process inherited (a CI runner under ``nohup`` ignores SIGHUP; a background job of a script ignores SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture
def env_kept():
    """``DAGSTER_HOME`` and ``PICKAPIC_HOME`` as they were before the test (``use_home`` sets both)."""
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def module_folder(tmp_path: Path, monkeypatch):
    """``write(name, body)``: a Python module ``name`` importable for this test (a folder put first on
    ``sys.path``); the modules written are forgotten (``sys.modules``) afterwards."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written = []

    def write(name: str, body: str) -> None:
        (folder / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def _build_demo_home(folder: Path) -> None:
    from dagster_project.cli import main

    code = main(["demo", "--home", str(folder / "home"), *DEMO_ARGS])
    if code != 0:
        raise RuntimeError(f"pickapic demo exited {code}")


@pytest.fixture(scope="session")
def built_home(tmp_path_factory) -> DataHome:
    """A data home with 2 simulated days built by `pickapic demo` through Dagster, model included (read-only).

    Under pytest-xdist every worker asks for the same home; a file lock makes the first one build it and
    the others reuse it (``build_once``, on tmpfs when possible). Tests must treat it as read-only: copy
    it with ``copy_home`` to run anything that may write into it (a build, an export, Dagster's instance)."""
    return DataHome(build_once(tmp_path_factory, "built-home", _build_demo_home) / "home")


def copy_home(home: DataHome, destination: Path) -> DataHome:
    """A private, writable copy of a data home (symlinks such as `latest` kept as links)."""
    shutil.copytree(home.root, destination, symlinks=True)
    return DataHome(destination)


def pytest_sessionfinish(session: pytest.Session) -> None:
    remove_shared_dirs(session.config)


_TIMELINE = os.environ.get("PICKAPIC_TEST_TIMELINE")   # a file: each test's worker, start, end and id appended


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """With ``PICKAPIC_TEST_TIMELINE=FILE``, one line per test (xdist worker, start and end wall-clock seconds,
    node id): what ``SLOW_FILES_FIRST`` in ``tests/e2e/conftest.py`` is ordered by, and where a worker waited."""
    start = time.time()
    yield
    if _TIMELINE:
        with open(_TIMELINE, "a", encoding="utf-8") as out:
            out.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {start:.3f} {time.time():.3f} "
                      f"{item.nodeid}\n")
