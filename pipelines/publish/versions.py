"""The versions of a data home: retention, one publish at a time, fsyncs (the ``latest`` switch is in formats.dataset)."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from formats.dataset import fsync_dir, latest_link, list_versions
from formats.home import DataHome
from formats.locks import hold_lock


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



def publish_lock_file(home: DataHome) -> Path:
    """The lock file of the home's publish stage (``.locks/publish.lock``)."""
    return home.locks / "publish.lock"


@contextlib.contextmanager
def publish_lock(home: DataHome, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """One publish at a time per data home; a second one says so through ``log`` (default stderr) and waits
    for the first.

    The lock file is ``HOME/.locks/publish.lock`` (:mod:`formats.locks`): opened without following a link and
    never written unless it holds nothing but a pid, so a link, a hard link, a FIFO or another program's file
    at its path is refused, untouched. It was ``datasets/pickapic/.publish.lock`` until December 2026, opened
    by ``open(..., "a+")``, which followed a symbolic link planted there and created the file it pointed to,
    wherever that was, and sat among the published versions that consumers sync."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    path = publish_lock_file(home)
    waiting_since: list[float] = []

    def busy(holder: str) -> None:
        log(f"waiting for another publish on this home (pid {holder} holds {path})")
        waiting_since.append(time.monotonic())

    with hold_lock(path, "the publish stage", busy):
        if waiting_since:
            log(f"publish lock taken after {time.monotonic() - waiting_since[0]:.1f} s of waiting")
        yield


def fsync_tree(root: Path, enabled: bool) -> None:
    """fsync every directory under ``root`` (files were fsynced as they were written)."""
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(path, enabled)
