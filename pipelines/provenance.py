"""Content digests of what the stages read, from which every asset's data version is derived.

A data version here is a digest of what went into an output: the stage's code version, the settings
that change its output (:func:`formats.settings.config_digest`) and the data versions of its inputs,
the way Dagster derives a default data version from code and input versions, plus the settings. At
the bottom sit the raw inputs, digested by content:

- a raw day: the sha256 of each of its four table files (:func:`raw_day_digest`); a file whose size and
  modification time match the last digest is not read again (the record lives in
  ``cache/raw_day_digests.json``, disposable: deleting it costs one re-read). A re-export with the same
  bytes therefore keeps the day's version, and any changed byte changes it;
- the moderation lists (banned users, NSFW phrases) the decisions read (:func:`files_digest`).

Equal versions mean equal outputs (every stage is deterministic), so a build can skip any asset whose
recorded version equals the one its inputs give now.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from formats.files import sha256_file, write_bytes_atomic
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
