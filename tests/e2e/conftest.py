"""Fixtures and ordering of the end-to-end tests.

The small simulated-and-built data home they share (``built_home``, ``copy_home``) is defined in
``tests/conftest.py`` so the unit tests can reuse it too (built once per run, shared by the xdist workers).
The homes of these tests live on tmpfs when the machine has one (``tests/fast_tmp.py``).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from formats.home import DataHome
from tests.conftest import DEMO_ARGS, copy_home  # noqa: F401 - imported from here by the e2e tests
from tests.fast_tmp import fast_folder

# The slowest test files (seconds on 2 cores, December 2026), longest first. `make test` hands whole
# files to its 2 workers in collection order (`--dist loadfile --no-loadscope-reorder`), so these go
# first and the short ones fill in behind them: the default `load` scheduling gave one worker all the
# end-to-end tests in its first chunk (560 s against the other's 221 s). Files not listed keep their order.
SLOW_FILES_FIRST = [
    "e2e/test_nightly_build.py",         # ~130 (builds the shared home)
    "e2e/test_concurrency.py",           # ~80
    "e2e/test_crash_recovery.py",        # ~80
    "e2e/test_app_db_e2e.py",            # ~65
    "e2e/test_serve.py",                 # ~50
    "e2e/test_fix27u.py",                # ~45 (a killed build, a serve, a re-executed step)
    "e2e/test_hostile_corpus.py",        # ~50
    "unit/test_publish_incremental.py",  # ~40
    "e2e/test_build_e2e.py",             # ~35
    "unit/test_automation.py",           # ~25
    "unit/test_publish_reuse_hostile.py",  # ~25
    "e2e/test_training_ddp.py",          # ~15
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/ carries the ``e2e`` marker: ``pytest -m "not e2e"`` is the fast lane.

    The files in ``SLOW_FILES_FIRST`` move to the front, in that order (a stable sort: the tests of a
    file stay together and in their own order).
    """
    here = Path(__file__).parent
    tests = here.parent
    rank = {tests / name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: rank.get(Path(item.path), len(rank)))


@pytest.fixture
def scratch(fast_tmp: Path) -> Path:
    """A fresh, empty folder for one test's data homes (``fast_tmp``: on tmpfs when possible), removed afterwards."""
    return fast_tmp


@pytest.fixture(scope="module")
def private_home(built_home: DataHome, tmp_path_factory):
    """A module's own copy of the shared home, for what must not touch the shared one: opening its
    Dagster instance (SQLite's ``-wal`` / ``-shm`` files come and go under tests that copy or walk the
    shared home on the other worker) or snapshotting the whole home (which would see those files)."""
    with fast_folder(tmp_path_factory.mktemp("private"), prefix="pickapic-private-") as folder:
        yield copy_home(built_home, folder / "home")
