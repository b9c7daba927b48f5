"""One small simulated-and-built data home shared by the end-to-end tests (built once per session).

Under pytest-xdist every worker asks for the same home; a file lock makes the first one build it and
the others reuse it. Tests must treat it as read-only (copy it with ``copy_home`` to mutate).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from formats.home import DataHome

# The shared home is made by `pickapic demo` itself (a smaller sample than the default demo), so the
# demo command is exercised end to end and every other e2e test reads a fully built home.
DEMO_ARGS = ["--days", "2", "--users", "24", "--rankings-per-day", "50", "--image-size", "64",
             "--train-steps", "30", "--seed", "7"]



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/ carries the ``e2e`` marker: ``pytest -m "not e2e"`` is the fast lane."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


def _build(root: Path) -> None:
    from dagster_project.cli import main

    code = main(["demo", "--home", str(root), *DEMO_ARGS])
    if code != 0:
        raise RuntimeError(f"pickapic demo exited {code}")
    (root / ".built").write_text(json.dumps(DEMO_ARGS))


@pytest.fixture(scope="session")
def built_home(tmp_path_factory) -> DataHome:
    """A data home with 2 simulated days built by `pickapic demo` through Dagster, model included (read-only)."""
    # Under xdist each worker's basetemp is <session dir>/popen-gwN: share the session dir, never a
    # folder that outlives this test session.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "pickapic-built-home"
    with FileLock(str(shared / "pickapic-built-home.lock")):
        if not (root / ".built").exists():
            if root.exists():
                shutil.rmtree(root)
            _build(root)
    return DataHome(root)


def copy_home(home: DataHome, destination: Path) -> DataHome:
    """A private, writable copy of a data home (symlinks such as `latest` kept as links)."""
    shutil.copytree(home.root, destination, symlinks=True)
    return DataHome(destination)
