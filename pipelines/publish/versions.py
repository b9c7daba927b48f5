"""The versions of a data home: retention, one publish at a time, fsyncs (the ``latest`` switch is in formats.dataset)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from formats.dataset import fsync_dir, latest_link, list_versions
from formats.home import DataHome


def apply_retention(home: DataHome, keep: int) -> list[str]:
    """Delete complete versions beyond the newest ``keep`` (never the one ``latest`` points to)."""
    link = latest_link(home)
    current = os.readlink(link) if link.is_symlink() else None
    versions = [v for v in list_versions(home) if v != current]
    doomed = versions[: max(0, len(versions) - (keep - 1 if current else keep))]
    for name in doomed:
        hidden = home.datasets / f".deleting-{name}"
        os.rename(home.datasets / name, hidden)  # disappears atomically, then goes
        shutil.rmtree(hidden)
    return doomed



@contextlib.contextmanager
def publish_lock(home: DataHome) -> Iterator[None]:
    """One publish at a time per data home; a second one waits for the first."""
    with open(home.datasets / ".publish.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync_tree(root: Path, enabled: bool) -> None:
    """fsync every directory under ``root`` (files were fsynced as they were written)."""
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(path, enabled)
