"""The per-day index of a raw images file's uids (``cache/raw_image_uids/dt=DAY.parquet``): a cache of the
byte search, trusted while the raw file keeps its recorded size and times (else its recorded sha256),
so a day's reference check does not decompress the whole history."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import sha256_file, write_parquet_atomic
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, writing_shared
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
    """
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
