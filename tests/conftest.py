"""Fixtures and hooks for every test: per-test folders on tmpfs (see ``tests/fast_tmp.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fast_tmp import fast_folder, remove_shared_dirs


@pytest.fixture
def fast_tmp(tmp_path: Path):
    """A fresh, empty folder for one test's data homes (on tmpfs when possible), removed afterwards.

    Use it instead of ``tmp_path`` where a test builds through Dagster or writes many small files."""
    with fast_folder(tmp_path) as folder:
        yield folder


def pytest_sessionfinish(session: pytest.Session) -> None:
    remove_shared_dirs(session.config)
