"""What the feature stage knows of the blobs behind its rows: their identity when it last read or checked them.

A row reused by uid (:func:`pipelines.features.reuse.rows_reused_by_uid`) is a copy of what an earlier run read
from the uid's blob. A file-fed raw zone may deliver a corrected image again under the same uid (the blob at
``raw/images/<uid>.png`` replaced with other bytes): until review rev29a the copy was kept for good, even by
``pickapic build --force``, and the published version kept the old training JPEG, sha256 and duplicate clusters.

So each run records, per day, the identity of the blob behind each of its ``image_features`` rows
(``HOME/cache/blob_identities/dt=DAY.parquet``: ``image_uid``, ``blob_path``, ``sha256`` of the row and the blob's
[size, mtime_ns, inode, ctime_ns] as :func:`pipelines.provenance.blob_identity` takes it), and a row is reused by
uid without reading its blob only while its blob is that file still: a record of the uid (the day's own, or the
day's the row is copied from) with the row's path and sha256 and the identity the blob has now (one ``stat`` a
row). Any other row (no record: a home from before this record, a deleted cache; the blob changed; a record of
other bytes) is sent through the pipeline to be read and hashed (``restoring`` in :mod:`pipelines.features.stage`):
where the bytes are the row's the row is kept (no decode, no NSFW model), else the image gets what a build from
scratch gives it. An identity is recorded only where the blob did not change while the run read it: the same
before the pipeline started and after it ended, and a ctime older than the run's start (by 0.1 s, 2 s on a file
system that keeps whole seconds: :func:`pipelines.provenance.changed_since`), so bytes changed in the same clock
tick as a read are never vouched for; a blob changed just before the run (landed moments before it) is read and
hashed once more by the driver after the run, between two equal identities, once its ctime is that old. The ctime is what ``utime`` cannot set back: a blob rewritten in place with
its size and mtime kept (``cp -p``, ``rsync -t --inplace``) is seen.

Not seen: a blob whose bytes change with its size, mtime, inode and ctime all kept (bit rot); a blob base that is
a URL (a bucket: no identity is taken, rows are reused by uid as before; ``pickapic build --force`` does not
re-read them either). Disposable: without the cache every reused row's blob is read and hashed once more, with
the same result; a record that cannot be read counts as none, and so does one that is not a regular file in a
real ``cache/blob_identities`` folder (a symbolic link, a FIFO, a device: never followed, never waited on), and
nothing is written through a link at that folder (review rev29e). A record is read filtered by the uids looked up
in it, so a rerun holds memory for the rows it checks, not for the earlier days it copies from.
"""
from __future__ import annotations

import io
import json
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import make_real_folder, open_regular_in_real_folder, sha256_file, write_parquet_atomic
from formats.home import DataHome
from pipelines.features.blobs import is_local, join_url
from pipelines.provenance import blob_identity, changed_since, writing_cache

_VERSION = "1"
_SCHEMA = pa.schema([pa.field("image_uid", pa.string(), nullable=False),
                     pa.field("blob_path", pa.string(), nullable=False),
                     pa.field("sha256", pa.string(), nullable=False),
                     pa.field("identity", pa.string(), nullable=False)])

Record = dict[str, tuple[str, str, str]]   # image_uid -> (blob_path, sha256, identity as JSON)


def record_path(home: DataHome, day: str) -> Path:
    return home.cache / "blob_identities" / f"dt={day}.parquet"


def _key(home: DataHome, base: str) -> str:
    """The blob base a record was taken under: relative to the home when inside it (a home moved keeps its
    records), else its real path."""
    real, root = os.path.realpath(base), os.path.realpath(home.root)
    return "HOME/" + os.path.relpath(real, root) if real == root or real.startswith(root + os.sep) else real


def _identity_text(identity: list | None) -> str | None:
    """A regular file's identity as recorded (JSON); None for nothing there or something else than a file."""
    if identity is None or identity[0] == "not-a-file":
        return None
    return json.dumps(identity, separators=(",", ":"))


class BlobIdentities:
    """The records of one run of a day: read for the rows it reuses, written for the rows it writes."""

    def __init__(self, home: DataHome, day: str, base: str) -> None:
        self.home, self.day, self.base = home, day, base
        self.active = is_local(base)
        self.checked: dict[str, str] = {}      # uid -> identity (JSON) of a row trusted by its record, as seen now
        self.before: dict[str, str | None] = {}
        self.since_ns = 0

    def _identity(self, relpath: str) -> str | None:
        return _identity_text(blob_identity(join_url(self.base, relpath)))

    def _entries(self, day: str, uids: set[str]) -> Record:
        """The entries of ``day``'s record for ``uids`` only (review rev29e: the whole record of every day a reused
        row was copied from was held for the run): the file is filtered by uid as it is read. None read where the
        record is no regular file in a real ``cache/blob_identities`` folder (a link, a FIFO, a device: never
        followed, never waited on), of another version or blob base, or unreadable."""
        if not uids:
            return {}
        handle = open_record(record_path(self.home, day))
        if handle is None:
            return {}
        try:
            with handle:
                meta = pq.read_schema(handle).metadata or {}
                key = _key(self.home, self.base).encode()
                if meta.get(b"version") != _VERSION.encode() or meta.get(b"base") != key:
                    return {}
                table = pq.read_table(handle, filters=pc.field("image_uid").isin(sorted(uids)))
                if not table.schema.equals(_SCHEMA, check_metadata=False):
                    return {}
                return {uid: (blob, sha, ident) for uid, blob, sha, ident in
                        zip(*(table.column(name).to_pylist() for name in _SCHEMA.names))}
        except (OSError, ValueError, pa.ArrowException, RecursionError):
            return {}   # none: the rows are read again

    def unverified(self, rows: Iterable[dict], sources: dict[str, str]) -> set[str]:
        """The uids of ``rows`` (reused by uid; ``sources``: uid -> the day the row is copied from) whose blob is not
        known to hold the row's bytes still: no record of it (the day's own or its source day's) with the row's
        path and sha256, or the blob's identity now is not the recorded one. Empty for a URL blob base. Each
        record is read once, for the uids looked up in it only (memory bounded by the rows checked)."""
        if not self.active:
            return set()
        rows = list(rows)
        wanted: dict[str, set[str]] = {}
        for row in rows:
            uid = row["image_uid"]
            for day in dict.fromkeys((self.day, sources.get(uid, self.day))):
                wanted.setdefault(day, set()).add(uid)
        records = {day: self._entries(day, uids) for day, uids in sorted(wanted.items())}
        unknown: set[str] = set()
        for row in rows:
            uid = row["image_uid"]
            now = self._identity(row["blob_path"])
            trusted = False
            if now is not None:
                for day in dict.fromkeys((self.day, sources.get(uid, self.day))):
                    entry = records[day].get(uid)
                    if entry is not None and entry == (row["blob_path"], row["sha256"], now):
                        trusted = True
                        break
            if trusted:
                self.checked[uid] = now   # type: ignore[assignment]
            else:
                unknown.add(uid)
        return unknown

    def before_read(self, paths: dict[str, str]) -> None:
        """Take the identity of the blobs the pipeline is about to read (uid -> blob path), and the time."""
        if not self.active:
            return
        self.since_ns = time.time_ns()
        self.before = {uid: self._identity(path) for uid, path in paths.items()}

    def _hashed_as(self, relpath: str, identity: str, sha256: str) -> bool:
        """Whether the blob, whose ctime was too recent to vouch for what the pipeline read, is settled now and holds
        ``sha256`` while it keeps ``identity`` (read and hashed here, between two equal identities): only blobs
        changed within moments of the run's start (a blob landed just before it) cost this second read."""
        path = join_url(self.base, relpath)
        if changed_since(json.loads(identity)[-1], time.time_ns()):
            return False
        try:
            digest = sha256_file(Path(path))
        except OSError:
            return False
        return digest == sha256 and self._identity(relpath) == identity

    def write(self, features: pa.Table) -> str | None:
        """Record the identity of the blob behind each row of the day's new ``image_features`` partition that this
        run checked (its record matched) or read without the blob changing meanwhile; a cache: a failure to write
        only costs a read of those blobs at the next run. Returns a note when the record's folder is a symbolic
        link or not a folder (nothing is written through it: review rev29e), else None."""
        if not self.active:
            return None
        uids, blobs, shas = (features.column(name).to_pylist() for name in ("image_uid", "blob_path", "sha256"))
        rows = []
        for uid, blob, sha in zip(uids, blobs, shas):
            identity = self.checked.get(uid)
            if identity is None:
                before = self.before.get(uid)
                if before is None or self._identity(blob) != before:
                    continue   # not read by this run, or changed while it ran: read again next time
                if changed_since(json.loads(before)[-1], self.since_ns) and not self._hashed_as(blob, before, sha):
                    continue   # changed just before the run, and not settled now: read again next time
                identity = before
            rows.append((uid, blob, sha, identity))
        table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(_SCHEMA.names)}, schema=_SCHEMA)
        table = table.replace_schema_metadata({"version": _VERSION, "base": _key(self.home, self.base)})
        path = record_path(self.home, self.day)
        try:
            path.parent.parent.mkdir(parents=True, exist_ok=True)
            make_real_folder(path.parent, "the blob identity record")   # never written through a link (rev29e)
            if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
                return (f"cache/blob_identities/{path.name} is not a regular file (a link, a FIFO, ...): no blob "
                        "identity record is written over it (remove it; until then the day's reused blobs are "
                        "read and hashed at each run)")
            with writing_cache(self.home) as held:   # swept under it exclusively (review rev30c)
                if held:
                    write_parquet_atomic(table, path)
        except NotADirectoryError:
            return ("cache/blob_identities is a symbolic link or not a folder: no blob identity record is written "
                    "through it (remove it; the next run then reads and hashes its reused blobs once)")
        except OSError:
            pass
        return None


def open_record(path: Path) -> io.FileIO | None:
    """A record opened to read, or None (:func:`formats.files.open_regular_in_real_folder`: a regular file, no link,
    never a FIFO waited on; review rev29e)."""
    return open_regular_in_real_folder(path)
