"""Content digests of what the stages read, from which every asset's data version is derived.

A data version here is a digest of what went into an output: the stage's code version, the settings
that change its output (:func:`formats.settings.config_digest`) and the data versions of its inputs,
the way Dagster derives a default data version from code and input versions, plus the settings. At
the bottom sit the raw inputs, digested by content:

- a raw day: the sha256 of each of its four table files (:func:`raw_day_digest`); a file whose size and
  modification time match the last digest is not read again (the record lives in
  ``cache/raw_day_digests.json``, disposable: deleting it costs one re-read). A re-export with the same
  bytes therefore keeps the day's version, and any changed byte changes it;
- the moderation lists (banned users, NSFW phrases) the decisions read (:func:`files_digest`);
- the image blobs a day's features rejected as missing: which of them are still missing
  (:class:`MissingBlobs`, named in the day's features version).

Equal versions mean equal outputs (every stage is deterministic), so a build can skip any asset whose
recorded version equals the one its inputs give now.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from formats.files import is_url, sha256_file, write_bytes_atomic
from formats.home import DataHome

RAW_TABLES = ("users", "images", "rankings", "downloads")
_CACHE = "raw_day_digests.json"


def combine(*parts: object) -> str:
    """A 16-hex-digit digest of ``parts`` (strings, numbers, lists), order-sensitive."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stat_key(path: Path) -> list | None:
    """[size, mtime_ns, inode, ctime_ns] of a file (None when missing, a marker when not a regular file).

    The ctime is what ``utime`` cannot set: a file rewritten in place with the same size and its mtime put
    back (``cp -p``, ``rsync -t --inplace``, ``touch -r``) was trusted as unchanged (review rev21b). Anything
    else that moves a ctime (a chmod, a new link) only costs one more read of the file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if not path.is_file():
        return ["not-a-file", info.st_mode]
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


class RawDigests:
    """sha256 of raw files, re-read only when a file's size, mtime, inode or ctime changed (cache in ``cache/``)."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.path = home.cache / _CACHE
        try:
            self.known: dict[str, dict] = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self.known = {}
        self.changed = False

    def file(self, path: Path) -> str:
        """Content digest of one file ("missing" / "not-a-file" for those)."""
        rel = str(path.relative_to(self.home.root))
        stat = stat_key(path)
        if stat is None:
            return "missing"
        if stat[0] == "not-a-file":
            return "not-a-file"
        entry = self.known.get(rel)
        if entry and entry.get("stat") == stat:
            return entry["sha256"]
        digest = sha256_file(path)
        self.known[rel] = {"stat": stat, "sha256": digest}
        self.changed = True
        return digest

    def day(self, day: str) -> str:
        """Digest of one raw day's four table files."""
        return combine("raw-day", day, [(t, self.file(self.home.raw_file(day, t))) for t in RAW_TABLES])

    def save(self) -> None:
        """Write the cache back when it learnt something (never required for correctness)."""
        if self.changed:
            write_bytes_atomic(self.path, (json.dumps(self.known, sort_keys=True) + "\n").encode())
            self.changed = False


def raw_day_digest(home: DataHome, day: str) -> str:
    """Content digest of one raw day (see :class:`RawDigests`)."""
    digests = RawDigests(home)
    value = digests.day(day)
    digests.save()
    return value


def files_digest(paths: Iterable[Path]) -> str:
    """Content digest of a few small files (missing ones count as missing)."""
    return combine([(str(p.name), sha256_file(p) if p.is_file() else "missing") for p in paths])


def raw_stats(home: DataHome) -> list:
    """Cheap fingerprint of the raw zone: every day folder's table files by size, mtime, inode and ctime."""
    out = []
    if home.raw_logs.is_dir():
        for folder in sorted(os.scandir(home.raw_logs), key=lambda e: e.name):
            if folder.is_dir():
                out.append([folder.name, [stat_key(Path(folder.path) / f"{t}.jsonl.gz") for t in RAW_TABLES]])
    out.append(["moderation", [stat_key(p) for p in (home.banned_users_file, home.nsfw_phrases_file)]])
    return out


# --------------------------------------------------------------------------- blobs that landed after their day
MISSING_BLOB = "missing_blob"   # the feature stage's reason (pipelines.features.decode: not imported, it loads Pillow)
MISSING_MARK = "+missing-blobs:"   # appended to a features version: the digest of the blobs its output lacks
_MISSING_CACHE = "missing_blobs.json"
_MISSING_CACHE_VERSION = 1


class MissingBlobs:
    """Per day, the blob paths its ``image_rejects`` partition rejects as ``missing_blob``, and which of them
    are there now.

    A blob that lands after its day was fingerprinted (a raw zone fed by files: the blob sync lagging the log
    export) changes what the feature stage would write, yet no raw day file changes (review rev23a). The
    features version of a day with such rejects therefore names them (:data:`MISSING_MARK`): recorded as the
    digest of the paths its output rejects as missing, expected as the digest of those still missing now. A
    landed blob makes the day stale, and only the missing ones are looked at (one ``stat`` each). The paths of
    a partition are cached in ``cache/missing_blobs.json`` by the partition's stat (disposable: deleting it
    costs one read of each ``image_rejects`` partition). Blob bases that are URLs (a bucket) are not looked
    at: no network here (``pickapic build --force --from D --to D`` fingerprints such a day again)."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.path = home.cache / _MISSING_CACHE
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
            self.known: dict[str, dict] = known["days"] if known.get("version") == _MISSING_CACHE_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.known = {}
        self.changed = False

    def paths(self, day: str) -> list[str]:
        """The blob paths ``day``'s ``image_rejects`` partition rejects as missing, sorted (none when it is
        missing or unreadable: the stage then runs for other reasons)."""
        path = self.home.partition_file("image_rejects", day)
        stat = stat_key(path)
        if stat is None or stat[0] == "not-a-file":
            return []
        entry = self.known.get(day)
        if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("paths"), list) \
                and all(isinstance(p, str) for p in entry["paths"]):
            return entry["paths"]
        # imported here, not at the top: the build stamp's fast path reads the cache only
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path, columns=["blob_path", "reason"])
            paths = sorted(set(rows.filter(pc.equal(rows["reason"], MISSING_BLOB)).column("blob_path").to_pylist()))
        except (OSError, pa.ArrowException, KeyError):
            return []
        self.known[day] = {"stat": stat, "paths": paths}
        self.changed = True
        return paths

    def still_missing(self, day: str, base: str | None) -> list[str]:
        """The paths of :meth:`paths` with nothing at them now under the local blob base ``base`` (all of
        them when the base is a URL: not looked at)."""
        paths = self.paths(day)
        if not paths or base is None or is_url(base):
            return paths
        return [p for p in paths if not os.path.exists(os.path.join(base, p))]

    def save(self) -> None:
        """Write the cache back when it learnt something (never required for correctness)."""
        if self.changed:
            try:
                write_bytes_atomic(self.path, (json.dumps({"version": _MISSING_CACHE_VERSION, "days": self.known},
                                                          sort_keys=True) + "\n").encode())
            except OSError:
                pass
            self.changed = False


def missing_mark(paths: list[str]) -> str:
    """The suffix of a features version whose output rejects ``paths`` as missing ('' for none)."""
    return MISSING_MARK + combine("missing-blobs", sorted(paths)) if paths else ""
