"""Fixtures and hooks for every test: per-test folders on tmpfs (see ``tests/fast_tmp.py``)."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import pipelines  # noqa: F401 - first: it turns onnxruntime's telemetry off before a test imports nudenet
from tests.fast_tmp import fast_folder, remove_shared_dirs


@pytest.fixture
def fast_tmp(tmp_path: Path):
    """A fresh, empty folder for one test's data homes (on tmpfs when possible), removed afterwards.

    Use it instead of ``tmp_path`` where a test builds through Dagster or writes many small files."""
    with fast_folder(tmp_path) as folder:
        yield folder


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


def pytest_sessionfinish(session: pytest.Session) -> None:
    remove_shared_dirs(session.config)
