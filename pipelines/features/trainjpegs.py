"""Removal of the training JPEGs no warehouse day needs any more (review rev30b: an erased account's stayed for good).

The feature stage writes one training JPEG per distinct image, content-addressed
(``<blob base>/blobs/train/s<size>q<quality>/<sha[:2]>/<sha256>.jpg``), and never removes one: a JPEG is shared by
every day whose images have those bytes. Once an image has left every raw day (an account erased as README 1a
says, a day deleted), its JPEG stayed under ``HOME/blobs/train`` and its digest in ``cache/train_jpg_sha256``.
The publish step (``dagster_project/assets/publish.py``: every rebuild, ``pickapic build`` and the nightly
schedule alike) calls :func:`prune_training_jpegs` once it has published: a JPEG is removed when

- no day of the warehouse's ``image_features`` names it (``train_jpg_key``, under any size/quality folder), and
- no version folder without its manifest names it in a sidecar (``jpg_0_key`` / ``jpg_1_key``: a publish still
  writing, or one that stopped and is run again).

A complete published version never needs one: its shards hold the JPEG bytes (a later publish reuses a shard by
linking the tar, never by reading the JPEGs again), so keeping the JPEGs of the versions retention keeps would keep
an erased account's images for as long as the versions published before the erasure are kept.

Safe beside the other writers: the feature stage holds ``.locks/train-jpegs.lock`` shared for its whole run (from
before it writes a JPEG until its day's partition is in place), and the removal holds it exclusively without
waiting: while a feature stage runs nothing is removed (the next build does it). The store is listed before the
keys are read, so a JPEG written after the listing is never a candidate. Only regular files named as the stage
names them are removed (never a link, a folder or a file of another name), each ``unlink`` relative to its folder
opened without following a link. Crash-safe and idempotent: the keys removed are a function of the warehouse, the
version folders and the store; a run stopped half-way leaves JPEGs no day needs, which the next run removes (the
digest cache entries of the removed keys are dropped first: an entry without its file is only a key that is
hashed again if it ever comes back). A key a day needs that is lost is decoded again by the feature stage's next
run of that day (``lost_training_jpegs``). A blob base in a bucket is not pruned (noted).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import is_url
from formats.home import DataHome
from formats.locks import sweep_exclusively

LOCK_NAME = "train-jpegs.lock"      # in HOME/.locks: the feature stage holds it shared, the removal exclusively
TRAIN_ROOT = "blobs/train"
_SIZE_FOLDER = re.compile(r"s[0-9]+q[0-9]+")
_SHARD_FOLDER = re.compile(r"[0-9a-f]{2}")
_JPEG = re.compile(r"([0-9a-f]{64})\.jpg")
_VERSION_SIDECAR_COLUMNS = ("jpg_0_key", "jpg_1_key")


def lock_file(home: DataHome) -> Path:
    """The lock file the feature stage holds shared while it writes training JPEGs."""
    return home.locks / LOCK_NAME


@dataclass
class PruneReport:
    """What :func:`prune_training_jpegs` found and did."""

    listed: int = 0              # training JPEGs in the store
    needed: int = 0              # keys a warehouse day or an unfinished version names
    removed: int = 0
    removed_bytes: int = 0
    cache_entries_removed: int = 0
    notes: list[str] = field(default_factory=list)


class NotPruned(Exception):
    """A reason to remove nothing this time (a source of the needed keys that cannot be read)."""


def stored_jpegs(home: DataHome) -> dict[str, int]:
    """key (relative to the home) -> size of every regular file ``blobs/train/s<N>q<N>/<xx>/<sha256>.jpg`` whose
    two hex digits are its digest's first two; folders are listed without following a link."""
    out: dict[str, int] = {}
    root = home.root / TRAIN_ROOT
    for size in _entries(root):
        if not (_SIZE_FOLDER.fullmatch(size.name) and size.is_dir(follow_symlinks=False)):
            continue
        for shard in _entries(Path(size.path)):
            if not (_SHARD_FOLDER.fullmatch(shard.name) and shard.is_dir(follow_symlinks=False)):
                continue
            for entry in _entries(Path(shard.path)):
                match = _JPEG.fullmatch(entry.name)
                if match and match[1][:2] == shard.name and entry.is_file(follow_symlinks=False):
                    out[f"{TRAIN_ROOT}/{size.name}/{shard.name}/{entry.name}"] = entry.stat(follow_symlinks=False).st_size
    return out


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def needed_keys(home: DataHome) -> set[str]:
    """The training JPEG keys a warehouse day (``image_features``, every partition file) or a version folder
    without its manifest (its sidecars) names; raises :class:`NotPruned` naming a file that cannot be read."""
    from formats.dataset import MANIFEST_FILE, VERSION_NAME

    keys: set[str] = set()
    for part in sorted(home.table_dir("image_features").glob("dt=*/*.parquet")):
        keys.update(_column_values(part, ("train_jpg_key",)))
    datasets = home.datasets
    for folder in _entries(datasets) if datasets.is_dir() else []:
        if not VERSION_NAME.fullmatch(folder.name) or not folder.is_dir(follow_symlinks=False):
            continue
        if (Path(folder.path) / MANIFEST_FILE).is_file():
            continue                    # complete: its shards hold the bytes
        for sidecar in sorted(Path(folder.path).glob("*/*.parquet")):
            keys.update(_column_values(sidecar, _VERSION_SIDECAR_COLUMNS, optional=True))
    return keys


def _column_values(path: Path, columns: tuple[str, ...], optional: bool = False) -> set[str]:
    try:
        names = pq.read_schema(path).names
        wanted = [name for name in columns if name in names]
        if len(wanted) < len(columns) and not optional:
            raise NotPruned(f"{path} has no column {', '.join(sorted(set(columns) - set(wanted)))}")
        if not wanted:
            return set()
        table = pq.read_table(path, columns=wanted)
    except NotPruned:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise NotPruned(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    out: set[str] = set()
    for name in wanted:
        out.update(v for v in pc.unique(table.column(name)).to_pylist() if v is not None)
    return out


def prune_training_jpegs(home: DataHome, base: str | None = None) -> PruneReport:
    """Remove the training JPEGs no warehouse day and no unfinished version needs (see the module), and their
    entries in the JPEG digest cache. ``base``: the feature stage's blob base (default the home); one in a bucket
    is left alone. Never waits for the lock: while a feature stage runs nothing is removed."""
    report = PruneReport()
    if base is not None and (is_url(base) or Path(base).resolve() != home.root.resolve()):
        report.notes.append(f"training JPEGs not pruned: the blob base {base} is not the data home")
        return report

    def prune() -> list[str]:
        try:
            _prune(home, report)
        except OSError as exc:      # a folder that cannot be listed or opened: what was removed stays removed
            report.notes.append(f"training JPEGs not all pruned: {exc}")
        return ["done"]

    if not sweep_exclusively(lock_file(home), "the training JPEG store", prune):
        report.notes.append(f"training JPEGs not pruned: a feature stage is writing some, or {lock_file(home)} cannot "
                            "be opened (the next build prunes them)")
    return report


def _prune(home: DataHome, report: PruneReport) -> None:
    stored = stored_jpegs(home)          # listed first: a JPEG written after this is never a candidate
    report.listed = len(stored)
    if not stored:
        return
    try:
        needed = needed_keys(home)
    except NotPruned as exc:
        report.notes.append(f"training JPEGs not pruned: {exc}")
        return
    report.needed = len(needed)
    unneeded = sorted(key for key in stored if key not in needed)
    if not unneeded:
        return
    from pipelines.publish.jpgdigests import forget

    report.cache_entries_removed, note = forget(home, set(unneeded))
    if note:
        report.notes.append(note)
    for key in unneeded:
        if _unlink_jpeg(home.root, key):
            report.removed += 1
            report.removed_bytes += stored[key]


def _unlink_jpeg(root: Path, key: str) -> bool:
    """Remove the regular file ``key`` (``blobs/train/<size>/<xx>/<name>``), its folders opened one by one without
    following a link (a folder swapped for a link since the listing is never followed)."""
    parts = key.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = inner
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                return False
            os.unlink(parts[-1], dir_fd=fd)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
