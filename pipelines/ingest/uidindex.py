"""The per-day index of a raw images file's uids (``cache/raw_image_uids/dt=DAY.parquet``): a cache of the
byte search, trusted while the raw file keeps its recorded size and times (else its recorded sha256),
so a day's reference check does not decompress the whole history.

A pruned day (its raw folder gone from the raw zone, its warehouse partitions kept: README, "raw folder gone")
still holds the images its ingest found: :func:`raw_image_uids` answers for it from the warehouse (the day's
``images`` partition and the ``image_uid`` members of its quarantined images lines, :func:`kept_image_uids`), and
:func:`reference_days` adds such days to the raw days a reference is looked up in (review rev29a: a re-ingest of
a later day quarantined its rows that named a pruned day's images as ``unknown_image_reference``).
"""
from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import sha256_file, write_parquet_atomic
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, writing_shared
from formats.rawzone import day_of_folder
from pipelines.ingest import lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.reader import open_raw

_UID_INDEX_VERSION = "2"   # 2: uids only a JSON decode finds (lines.spelled_image_uid) included


def stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def raw_image_uids(home: DataHome, day: str, wanted: set[str], config: IngestConfig | None = None) -> set[str]:
    """The uids of ``wanted`` that appear as an ``"image_uid"`` member in ``day``'s raw images file.

    Answered from the day's uid index when it describes the file as it is now (same size and
    times, else the same sha256); otherwise the file is searched and the index (re)written. The
    answer depends only on the raw bytes: the index is a cache of the byte search, nothing more.
    A day that is not a day of the raw zone any more (pruned) is answered from what the warehouse keeps of it
    (:func:`kept_image_uids`).
    """
    if not raw_day_present(home, day):
        return kept_image_uids(home, day, wanted)   # a pruned day: what its ingest found, as the warehouse keeps it
    path = home.raw_file(day, "images")
    config = config or IngestConfig()
    raw = open_raw(home, path, config=config)   # a file that is not a regular one inside the raw zone: never read or hashed
    if raw.status != "ok":
        return set()
    index = home.raw_image_uid_index(day)
    if index.is_file():
        try:
            meta = pq.read_schema(index).metadata or {}
            if meta.get(b"version") == _UID_INDEX_VERSION.encode():
                fresh = meta.get(b"stat") == (stat_key(path) or "").encode()
                if not fresh and path.is_file():
                    fresh = meta.get(b"raw_sha256") == sha256_file(path).encode()
                if fresh:
                    uids = pq.read_table(index).column("image_uid")
                    hits = uids.filter(pc.is_in(uids, value_set=pa.array(sorted(wanted), pa.string())))
                    return set(hits.to_pylist())
        except (OSError, pa.ArrowException):
            pass  # an unreadable cache is searched around and rewritten
    stat = stat_key(path)
    found: set[str] = set()
    lines.scan_image_uids(raw.chunks(), found, config.max_line_bytes)
    if not raw.limited:   # a read that depends on the limits (cut, or stopped unchecked): never kept for another run's
        write_uid_index(home, day, found, raw.file_sha256, stat)
    return found & wanted


def write_uid_index(home: DataHome, day: str, uids: set[str], raw_sha256: str | None, stat: str | None) -> None:
    """Record the uids found in ``day``'s raw images file, keyed by the file's sha256 and stat."""
    path = home.raw_file(day, "images")
    if raw_sha256 is None or stat is None or stat_key(path) != stat:
        return  # not read, or changed while it was read: leave no index
    table = pa.table({"image_uid": pa.array(sorted(uids), pa.string())})
    table = table.replace_schema_metadata({"version": _UID_INDEX_VERSION, "raw_sha256": raw_sha256, "stat": stat})
    with writing_shared(home.locks / CACHE_WRITERS_LOCK, "the cache writers of the data home") as held:
        if held:   # the ingest sweeps killed writers' temporary files under this lock, exclusively (review rev29b)
            write_parquet_atomic(table, home.raw_image_uid_index(day))


def raw_day_present(home: DataHome, day: str) -> bool:
    """Whether ``day`` is a day of the raw zone (as ``formats.rawzone.scan_raw_zone`` lists it): its ``dt=`` folder
    is a folder inside the raw zone (a link to one inside it counts, one leading out or dangling does not)."""
    folder = home.raw_day(day)
    try:
        zone = (home.root / "raw").resolve()
        target = folder.resolve(strict=True)
        return folder.is_dir() and (target == zone or zone in target.parents)
    except (OSError, RuntimeError):
        return False


def pruned_days(home: DataHome, raw_days: Collection[str]) -> list[str]:
    """The days not among ``raw_days`` (the raw zone's) whose ``images`` partition the warehouse holds: days whose
    raw folder was pruned (or moved out of the raw zone) after their ingest, kept as they were built. One listing
    of ``warehouse/images``; sorted."""
    found: list[str] = []
    present = set(raw_days)
    try:
        entries = list(os.scandir(home.table_dir("images")))
    except OSError:
        return []
    for entry in entries:
        day, _ = day_of_folder(entry.name)
        if day is not None and day not in present and home.partition_file("images", day).is_file() \
                and not raw_day_present(home, day):
            found.append(day)
    return sorted(found)


def reference_days(home: DataHome, raw_days: Collection[str]) -> list[str]:
    """The days whose images exports a reference may resolve against: the raw zone's days and the pruned days the
    warehouse keeps (:func:`pruned_days`), sorted. :func:`raw_image_uids` answers for both."""
    return sorted(set(raw_days) | set(pruned_days(home, raw_days)))


def kept_image_uids(home: DataHome, day: str, wanted: set[str]) -> set[str]:
    """The uids of ``wanted`` that a pruned ``day``'s ingest found in its raw images file, as its warehouse partitions
    keep them: the accepted ``images`` rows, then the ``image_uid`` members of its quarantined images lines (their
    stored text, the first 64 KiB of each line: the byte search and the JSON decode a raw file gets). Empty when the
    day has no readable ``images`` partition (never ingested: nothing was built from it)."""
    value_set = pa.array(sorted(wanted), pa.string())
    try:
        uids = pq.read_table(home.partition_file("images", day), columns=["image_uid"]).column("image_uid")
    except (OSError, pa.ArrowException):
        return set()
    found = set(uids.filter(pc.is_in(uids, value_set=value_set)).to_pylist())
    if found == wanted:
        return found
    try:
        texts = pq.read_table(home.partition_file("quarantine", day), columns=["raw_text"],
                              filters=[("table", "=", "images")]).column("raw_text")
    except (OSError, pa.ArrowException):
        return found
    seen: set[str] = set()
    for text in texts.to_pylist():
        if text:
            data = text.encode("utf-8")
            for _ in lines.tap_image_uids([data], seen):
                pass
            uid = lines.spelled_image_uid(data)
            if uid is not None:
                seen.add(uid)
    return found | (seen & wanted)
