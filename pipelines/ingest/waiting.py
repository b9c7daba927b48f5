"""The image uids a day's quarantine waits for: its ``unknown_image_reference`` rows' missing images.

Read from the day's ``quarantine`` partition (the detail names the first unknown image of the row). A
cache, ``cache/waiting_image_uids.json``, records per day the partition's stat (size, mtime, inode, ctime)
and how many uids it waits for (the uids themselves when they are at most ``CACHED_UIDS``), so a day is
read again only when its partition changed or it waits for many images: a look at every later day, when an
earlier day lands, costs one ``stat`` each. Memory stays bounded whatever a quarantine holds (a few KB a
day). Disposable: deleting it costs one read of every partition.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import write_bytes_atomic
from formats.home import DataHome
from pipelines.ingest import parse as rp
from pipelines.provenance import stat_key, writing_cache

WAITING_CACHE = "waiting_image_uids.json"   # in cache/; swept by pipelines.cachesweep
_CACHE_VERSION = 1
CACHED_UIDS = 64   # a day waiting for at most this many uids keeps them in the cache (a few KB a day), others are read
WAITING_UID = re.compile(r"_uid = ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) is in no images export")


class Unreadable(Exception):
    """The day's quarantine partition cannot be read (ingesting the day again repairs it)."""


def read_waiting(path: Path) -> set[str]:
    """The uids the ``unknown_image_reference`` rows of the quarantine file ``path`` name as missing."""
    try:
        rows = pq.read_table(path, columns=["reason", "detail"], filters=[("reason", "=", rp.UNKNOWN_IMAGE_REFERENCE)])
    except (OSError, pa.ArrowException) as exc:
        raise Unreadable(str(exc)) from None
    return {m.group(1) for detail in rows.column("detail").to_pylist() if (m := WAITING_UID.search(detail))}


class WaitingIndex:
    """Per day, the uids its quarantine waits for; days waiting for none are answered from the cache."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.path = home.cache / WAITING_CACHE
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
            self.known: dict[str, dict] = known["days"] if known.get("version") == _CACHE_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            self.known = {}   # disposable: worked out again (a file nested past the parser's limit too)
        if not isinstance(self.known, dict):
            self.known = {}
        self.changed = False

    def uids(self, day: str) -> set[str] | None:
        """The uids ``day`` waits for; None when it was never ingested. Raises :class:`Unreadable`."""
        path = self.home.partition_file("quarantine", day)
        stat = stat_key(path)
        if stat is None:
            return None
        entry = self.known.get(day)
        if isinstance(entry, dict) and entry.get("stat") == stat:
            if entry.get("count") == 0:
                return set()
            uids = entry.get("uids")
            if isinstance(uids, list) and len(uids) == entry.get("count") and all(isinstance(u, str) for u in uids):
                return set(uids)
        waiting = read_waiting(path)
        self.known[day] = {"stat": stat, "count": len(waiting),
                           **({"uids": sorted(waiting)} if len(waiting) <= CACHED_UIDS else {})}
        self.changed = True
        return waiting

    def save(self) -> None:
        """Write the cache back when it learnt something (never required for correctness)."""
        if self.changed:
            body = {"version": _CACHE_VERSION, "days": self.known}
            # its temporary file exists only while the shared cache-writers lock is held, as the other caches':
            # the sweep removes what a killed write left (review rev31c: it was left for good); no lock, no write
            with writing_cache(self.home) as held:
                if held:
                    try:
                        write_bytes_atomic(self.path, (json.dumps(body, sort_keys=True) + "\n").encode())
                    except OSError:
                        pass   # a cache: a full disk or a read-only cache folder only costs speed
            self.changed = False
