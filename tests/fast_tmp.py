"""Folders on tmpfs for tests that build data homes: the same code and files, without the disk's fsyncs.

The pipeline and Dagster's SQLite instance fsync what they commit (Dagster: every event of a run, about
700 per daily run). No test cuts the power, so the page cache is all they need: on a 2-core machine's
disk a build takes 1.5-2x as long as in a home on tmpfs (``/dev/shm``). Every folder here falls back to
pytest's own temporary folders when ``/dev/shm`` is missing, read-only or has less than 1 GiB free.

tmpfs is memory, so nothing here may outlive its test run: per-test and per-module folders are removed
by their fixtures, the folders shared by the xdist workers of a run (``build_once``) by the run's
controller when the run ends (``remove_shared_dirs``, called from ``tests/conftest.py``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from filelock import FileLock

TMPFS = Path("/dev/shm")
TMPFS_MIN_FREE = 1 << 30


def fast_base(fallback: Path) -> Path:
    """tmpfs (``/dev/shm``) when it is writable with >= 1 GiB free, else ``fallback``."""
    try:
        stats = os.statvfs(TMPFS)
    except OSError:
        return fallback
    if stats.f_bavail * stats.f_frsize >= TMPFS_MIN_FREE and os.access(TMPFS, os.W_OK):
        return TMPFS
    return fallback


@contextmanager
def fast_folder(fallback: Path, prefix: str = "pickapic-test-") -> Iterator[Path]:
    """A new, empty folder on tmpfs when possible (else under ``fallback``), removed on leaving."""
    fallback.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=fast_base(fallback)))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's folder of this test run, the same one in every xdist worker and in the controller.

    Each worker's basetemp is ``<run folder>/popen-gwN``; without xdist the basetemp is that folder.
    """
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _shared_name(run: Path) -> str:
    # pytest numbers its run folders per account (pytest-of-<user>/pytest-<n>): unique among live runs
    return f"pickapic-{run.parent.name}-{run.name}"


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder of this test run shared by its xdist workers (on tmpfs when possible), filled by
    ``build(folder)`` by the first worker that asks; the others wait for it, then reuse it.

    The lock and the "built" marker live in pytest's run folder (on disk), beside, not inside, what was
    built. The folder lasts until the run ends (``remove_shared_dirs``).
    """
    run = session_dir(tmp_path_factory)
    with FileLock(str(run / f"{name}.lock")):
        marker = run / f"{name}.built"
        if marker.exists():
            return Path(marker.read_text())
        folder = fast_base(run) / _shared_name(run) / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        build(folder)
        marker.write_text(str(folder))
        return folder


def remove_shared_dirs(config: pytest.Config) -> None:
    """At the end of a run, in the process that owns the run folder (the xdist controller, or the only
    process without xdist): remove the folders ``build_once`` made on tmpfs for it."""
    if hasattr(config, "workerinput"):
        return   # an xdist worker: the other one may still be using them
    factory = getattr(config, "_tmp_path_factory", None)
    run = getattr(factory, "_basetemp", None)
    if run is not None:
        shutil.rmtree(TMPFS / _shared_name(run), ignore_errors=True)
