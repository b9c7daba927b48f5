"""Crash-safe rewrites of another day's partitions: an intent record written before the renames, cleared after.

A day's own ingest renames its six files one after the other (:func:`pipelines.ingest.day.write_tables_atomic`);
a crash between two renames leaves them mixed, and the rerun of that day (which the next build runs: the day
was never recorded) writes all six again. When day D's ingest rewrites *another* day E (a late image resolved
E's waiting references, or E's quarantine waits for an image D brings), nothing would run E again: its
files decide whether it is rewritten, and a crash leaves them half new (review rev23a: a ranking in no table
and no quarantine, ``ingest_files`` counting it as accepted). So before E is ingested again, the intent is
recorded: ``warehouse/.ingest_rewrites/dt=E`` (JSON naming E and the day that caused it), written under a
temporary name, fsynced, renamed and its folder fsynced. E's ingest clears it once its six renames are done
and their folders fsynced. Any ingest that finds a record (:func:`pending`) ingests that day again from the
raw zone before anything else reads it (the same six files an uninterrupted run writes: ingest is a function
of the raw zone), and ``pickapic build`` plans a day with a record as stale. A crash at any point therefore
leaves either the old six files (no record yet: the rerun decides again from them) or a record (redone).

The record lives beside the warehouse, never in the disposable ``cache/``: deleting it would lose the repair.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from formats.dataset import fsync_dir
from formats.files import write_bytes_atomic
from formats.home import DataHome

FOLDER = ".ingest_rewrites"
_NAME = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")


def folder(home: DataHome) -> Path:
    """Where the intent records live: ``warehouse/.ingest_rewrites/``."""
    return home.warehouse / FOLDER


def record_path(home: DataHome, day: str) -> Path:
    """The intent record of a rewrite of ``day``'s partitions."""
    return folder(home) / f"dt={day}"


def begin(home: DataHome, day: str, cause: str) -> None:
    """Record, durably, that ``day``'s partitions are about to be rewritten because of ``cause``."""
    path = record_path(home, day)
    write_bytes_atomic(path, (json.dumps({"day": day, "cause": cause}, sort_keys=True) + "\n").encode())
    fsync_dir(path.parent)


def finish(home: DataHome, day: str, written: list[Path]) -> None:
    """``day``'s files (``written``) are all in place: make their renames durable, then drop its record."""
    path = record_path(home, day)
    if not os.path.lexists(path):
        return
    for parent in sorted({p.parent for p in written}):
        fsync_dir(parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


def pending(home: DataHome) -> list[str]:
    """The days whose rewrite was begun and never finished (a crash), oldest first."""
    try:
        names = os.listdir(folder(home))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(m.group(1) for name in names if (m := _NAME.fullmatch(name)))


def is_pending(home: DataHome, day: str) -> bool:
    """Whether ``day`` has an unfinished rewrite."""
    return os.path.lexists(record_path(home, day))
