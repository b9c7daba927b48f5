"""Removal of the training JPEGs no warehouse day needs any more (review rev30b: an erased account's stayed for good).

The feature stage writes one training JPEG per distinct image, content-addressed
(``<blob base>/blobs/train/s<size>q<quality>/<sha[:2]>/<sha256>.jpg``), and never removes one: a JPEG is shared by
every day whose images have those bytes. Once an image has left every raw day (an account erased as README 1a
says, a day deleted), its JPEG stayed under ``HOME/blobs/train`` and its digest in ``cache/train_jpg_sha256``.
The publish step (``dagster_project/assets/publish.py``: every rebuild, ``pickapic build`` and the nightly
schedule alike) calls :func:`prune_training_jpegs` once it has published: a JPEG is removed when

- no day of the warehouse's ``image_features`` names it (``train_jpg_key``, under any size/quality folder),
- the home's ``warehouse/split_pairs`` does not name it (``jpg_0_key`` / ``jpg_1_key``: review rev30g, a publish run
  alone between a day's feature stage and the next splits build removed JPEGs that file still names, and every later
  publish of it failed "training JPEG ... is missing"), and
- no unfinished version names it in a sidecar (``jpg_0_key`` / ``jpg_1_key``: a version staged in
  ``datasets/pickapic.staging/.partial-<version>``, or ``datasets/pickapic/.partial-<version>`` where the versions'
  folder is on another file system, by a publish still writing or one that stopped and is run again; a version
  folder without its manifest, as code before review rev28c staged it).

A complete published version never needs one: its shards hold the JPEG bytes (a later publish reuses a shard by
linking the tar, never by reading the JPEGs again), so keeping the JPEGs of the versions retention keeps would keep
an erased account's images for as long as the versions published before the erasure are kept.

Safe beside the other writers: the feature stage holds ``.locks/train-jpegs.lock`` shared for its whole run (from
before it writes a JPEG until its day's partition is in place), and the removal holds it exclusively without
waiting: while a feature stage runs nothing is removed (the next build does it). The removal also holds the
publish lock (``.locks/publish.lock``, waited for), under which alone the JPEG digest cache is written and swept
(review rev30g: it rewrote the cache outside it). The store is listed before the keys are read, so a JPEG written
after the listing is never a candidate. The store is reached as the feature stage writes it and the publish reads
it: through a symbolic link at ``HOME/blobs``, ``HOME/blobs/train`` or a size folder (the store on another disk),
followed when listing and when removing alike (review rev30g: the listing followed one at ``blobs/train``, the
removal refused it, and nothing was removed or said), but only ever to what this home alone owns (review rev30i):
a size folder a link takes into another data home, or into a store another home writes into, is skipped with a
note; a home whose store is outside it records itself there
(:func:`pipelines.features.storewriters.record_store_user`, a marker in ``blobs/train/.writers``), and a home
whose store holds another home's marker removes nothing (one note); a size folder a link takes outside the home on
its own records the home in the size folder's own ``.writers``, and a size folder holding another home's marker there
is skipped with a note wherever it lies (review rev31a: two homes linking their size folder to one folder on another
disk recorded no writer, and one home's removal deleted the other's JPEGs); a link at a ``<xx>`` key folder (which the
feature stage refuses to write through) or at a JPEG's name is never followed. Only regular files named as the
stage names them are removed, each ``unlink`` relative to its key folder, opened without following a link.
Crash-safe and idempotent: the keys removed are a function of the warehouse, the version folders and the store; a
run stopped half-way leaves JPEGs no day needs, which the next run removes. The digest cache entries of the JPEGs
actually removed are dropped after them (review rev30g: every unneeded key's entry was dropped first, also those of
files the removal could not remove); an entry left by a run stopped in between names a file that is gone, and the
cache hashes a file whose identity (size, times, inode) is not the recorded one again, so it is never believed. A
key a day needs that is lost is decoded again by the feature stage's next run of that day (``lost_training_jpegs``).
A blob base in a bucket, or a local one that is not the home, is not pruned (noted); a ``file://`` URL of the home
is the home.
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

from formats.files import is_url, path_within
from formats.home import DataHome
from formats.locks import LockFileRefused, sweep_exclusively
from pipelines.features.storewriters import _MARKER, SIZE_FOLDER, TRAIN_ROOT, WRITERS, home_digest

LOCK_NAME = "train-jpegs.lock"      # in HOME/.locks: the feature stage holds it shared, the removal exclusively
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


_LINKED_PARTS = 3        # blobs, train, s<N>q<N>: a link there is the home's own (the store on another disk), followed


def other_writers(home: DataHome, train: str | os.PathLike | None = None) -> list[str]:
    """The marker files of data homes other than ``home`` in the ``.writers`` folder of ``train`` (default the
    home's ``blobs/train``, its links followed)."""
    own = home_digest(home.root)
    folder = Path(train if train is not None else home.root / TRAIN_ROOT) / WRITERS
    return [entry.path for entry in _entries(folder) if _MARKER.fullmatch(entry.name) and entry.name != own]


def _other_home_holding(path: str, home_real: str) -> str | None:
    """The folder of another data home (a ``warehouse`` folder or a ``pickapic.toml`` file in it) that is ``path``
    or holds it, the nearest first; None where there is none."""
    folder = path
    while True:
        if folder != home_real and (os.path.isdir(os.path.join(folder, "warehouse"))
                                    or os.path.isfile(os.path.join(folder, "pickapic.toml"))):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _foreign_size_folder(home: DataHome, size: os.DirEntry) -> str | None:
    """Why a size folder is not this home's alone to prune (review rev30i), or None. One holding another home's
    marker in its own ``.writers`` (that home links its size folder here, or both link theirs to one folder on
    another disk: review rev31a) is not, wherever it lies. Otherwise one inside the home (its real path, links
    followed) is; one a link at ``blobs``, ``blobs/train`` or the folder itself takes outside the home is not where
    that place lies in another data home or its store records another home as a writer."""
    home_real = os.path.realpath(home.root)
    real = os.path.realpath(size.path)
    markers = other_writers(home, real)
    if markers:
        return f"it is {real}, where another data home writes its training JPEGs (marker {markers[0]})"
    if path_within(real, home_real):
        return None
    other = _other_home_holding(real, home_real)
    if other is not None:
        return f"it is {real}, in the data home {other}"
    markers = other_writers(home, os.path.dirname(real))
    if markers:
        return f"it is {real}, a store another data home writes into ({markers[0]})"
    return None


def stored_jpegs(home: DataHome, notes: list[str] | None = None) -> dict[str, tuple[int, tuple[int, int]]]:
    """key (relative to the home) -> (size, (device, inode)) of every regular file
    ``blobs/train/s<N>q<N>/<xx>/<sha256>.jpg`` whose two hex digits are its digest's first two. A link at
    ``blobs``, ``blobs/train`` or a size folder is followed (as the feature stage writes through it and the publish
    reads through it) where it stays in the home or leads to a place no other data home holds or writes into
    (review rev30i); a size folder it takes into another home's store, or one holding another home's marker (review
    rev31a), is skipped, said in ``notes``. A ``<xx>``
    folder or a JPEG that is a link is never followed."""
    out: dict[str, tuple[int, tuple[int, int]]] = {}
    root = home.root / TRAIN_ROOT
    for size in _entries(root):
        if not (SIZE_FOLDER.fullmatch(size.name) and _is_dir(size, follow=True)):
            continue
        foreign = _foreign_size_folder(home, size)
        if foreign is not None:
            if notes is not None:
                notes.append(f"training JPEGs of {TRAIN_ROOT}/{size.name} not pruned: {foreign}, not this home's "
                             "alone")
            continue
        for shard in _entries(Path(size.path)):
            if not (_SHARD_FOLDER.fullmatch(shard.name) and _is_dir(shard, follow=False)):
                continue
            for entry in _entries(Path(shard.path)):
                match = _JPEG.fullmatch(entry.name)
                if match and match[1][:2] == shard.name and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    out[f"{TRAIN_ROOT}/{size.name}/{shard.name}/{entry.name}"] = (info.st_size,
                                                                                  (info.st_dev, info.st_ino))
    return out


def _is_dir(entry: os.DirEntry, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def needed_keys(home: DataHome) -> set[str]:
    """The training JPEG keys a warehouse day (``image_features``, every file of a calendar day's partition:
    :meth:`DataHome.table_files`), the home's
    ``split_pairs`` or an unfinished version (its sidecars) names; raises :class:`NotPruned` naming a file that
    cannot be read."""
    from formats.dataset import MANIFEST_FILE, VERSION_NAME
    from pipelines.publish.versions import STAGING_PREFIX, staging_root

    keys: set[str] = set()
    # the table's calendar days only (DataHome.table_files): an operator's dt=DAY.bak copy is no day, and one
    # taken before train_jpg_key existed stopped every prune (review rev31k)
    for part in home.table_files("image_features"):
        keys.update(_column_values(part, ("train_jpg_key",)))
    split_pairs = home.table_file("split_pairs")
    if split_pairs.exists():        # the publish reads every key it names (review rev30g)
        keys.update(_column_values(split_pairs, _VERSION_SIDECAR_COLUMNS))
    datasets = home.datasets
    unfinished = []
    for folder in (datasets, staging_root(datasets)):
        for entry in _entries(folder):
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(STAGING_PREFIX):          # a version being staged (review rev28c)
                unfinished.append(Path(entry.path))
            elif (folder == datasets and VERSION_NAME.fullmatch(entry.name)
                  and not (Path(entry.path) / MANIFEST_FILE).is_file()):
                unfinished.append(Path(entry.path))            # staged among the versions by older code
    for folder in unfinished:
        for sidecar in sorted(folder.glob("*/*.parquet")):
            keys.update(_column_values(sidecar, _VERSION_SIDECAR_COLUMNS, optional=True))
    return keys


def _column_values(path: Path, columns: tuple[str, ...], optional: bool = False) -> set[str]:
    """The distinct non-null values of ``columns`` in the Parquet file ``path``; raises :class:`NotPruned` where it
    cannot be read, lacks a column that is not ``optional``, or holds one that is not text (a sidecar of an unexpected
    type in a ``.partial-<version>``: its keys cannot be known, so nothing is removed; it failed the publish step
    after ``latest`` moved, outside this ``try``, before fix31a)."""
    try:
        names = pq.read_schema(path).names
        wanted = [name for name in columns if name in names]
        if len(wanted) < len(columns) and not optional:
            raise NotPruned(f"{path} has no column {', '.join(sorted(set(columns) - set(wanted)))}")
        if not wanted:
            return set()
        table = pq.read_table(path, columns=wanted)
        out: set[str] = set()
        for name in wanted:
            column = table.column(name)
            if pa.types.is_null(column.type):
                continue
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise NotPruned(f"{path}: column {name} is {column.type}, not text (training JPEG keys)")
            out.update(v for v in pc.unique(column).to_pylist() if v is not None)
    except NotPruned:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise NotPruned(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    return out


def prune_training_jpegs(home: DataHome, base: str | None = None) -> PruneReport:
    """Remove the training JPEGs no warehouse day, nor the home's split_pairs, nor an unfinished version needs (see
    the module), and their entries in the JPEG digest cache. ``base``: the feature stage's blob base (default the
    home; a ``file://`` URL of it is it); one in a bucket or elsewhere is left alone. Waits for a publish holding the
    publish lock; never for the store's lock: while a feature stage runs nothing is removed."""
    from pipelines.features.config import file_url_path
    from pipelines.publish.versions import publish_lock

    report = PruneReport()
    if base is not None:
        try:
            local = file_url_path(base, "features.blob_base") or base
        except ValueError:          # a file URL the feature stage refuses too
            local = base
        if is_url(local) or Path(local).resolve() != home.root.resolve():
            report.notes.append(f"training JPEGs not pruned: the blob base {base} is not the data home")
            return report

    def prune() -> list[str]:
        try:
            _prune(home, report)
        except OSError as exc:      # a folder that cannot be listed or opened: what was removed stays removed
            report.notes.append(f"training JPEGs not all pruned: {exc}")
        return ["done"]

    # the digest cache is written and swept under the publish lock alone (review rev30g)
    try:
        with publish_lock(home, lambda message: report.notes.append(f"training JPEG removal: {message}")):
            if not sweep_exclusively(lock_file(home), "the training JPEG store", prune):
                report.notes.append(f"training JPEGs not pruned: a feature stage is writing some, or "
                                    f"{lock_file(home)} cannot be opened (the next build prunes them)")
    except (LockFileRefused, OSError) as exc:     # the publish lock file refused: nothing removed
        report.notes.append(f"training JPEGs not pruned: {exc}")
    return report


def _prune(home: DataHome, report: PruneReport) -> None:
    if _written_by_others(home, report):
        return
    stored = stored_jpegs(home, report.notes)   # listed first: a JPEG written after this is never a candidate
    report.listed = len(stored)
    if not stored:
        return
    try:
        needed = needed_keys(home)
    except NotPruned as exc:
        report.notes.append(f"training JPEGs not pruned: {exc}")
        return
    report.needed = len(needed)
    # a file a needed key names under another name (two size folders linked to one folder, a hard link) stays too
    needed_files = {identity for key, (_, identity) in stored.items() if key in needed}
    unneeded = sorted(key for key, (_, identity) in stored.items()
                      if key not in needed and identity not in needed_files)
    if not unneeded or _written_by_others(home, report):   # again: a home that began writing here meanwhile
        return
    taken = _size_folders_taken(home, {key.split("/")[2] for key in unneeded}, report)   # and in a size folder
    unneeded = [key for key in unneeded if key.split("/")[2] not in taken]
    removed, failed = [], []
    for key in unneeded:
        if _unlink_jpeg(home.root, key, stored[key][1]):
            removed.append(key)
            report.removed += 1
            report.removed_bytes += stored[key][0]
        else:
            failed.append(key)
    if failed:
        report.notes.append(f"training JPEGs not all pruned: {len(failed)} of {len(unneeded)} no warehouse day "
                            f"needs could not be removed (first: {failed[0]}): they stay, with their digest cache "
                            "entries")
    if removed:     # only the entries of the files removed (review rev30g)
        from pipelines.publish.jpgdigests import forget

        report.cache_entries_removed, note = forget(home, set(removed))
        if note:
            report.notes.append(note)


def _size_folders_taken(home: DataHome, sizes: set[str], report: PruneReport) -> set[str]:
    """Of the size folders ``sizes``, those another home's marker was written into since the listing (review rev31a:
    a home linking its size folder here as its feature stage starts), each said in a note: none of their JPEGs is
    removed."""
    taken = set()
    for name in sorted(sizes):
        markers = other_writers(home, os.path.realpath(home.root / TRAIN_ROOT / name))
        if markers:
            taken.add(name)
            report.notes.append(f"training JPEGs of {TRAIN_ROOT}/{name} not pruned: another data home writes its "
                                f"training JPEGs there (marker {markers[0]})")
    return taken


def _written_by_others(home: DataHome, report: PruneReport) -> bool:
    """Whether another data home's feature stage writes into this home's store (its marker in
    ``blobs/train/.writers``: that home's ``features.blob_base`` names this one, or the two homes' stores are one
    folder behind links), said in one note: then nothing is removed, as that home's JPEGs are not in this home's
    warehouse (review rev30i)."""
    markers = other_writers(home)
    if markers:
        report.notes.append(
            f"training JPEGs not pruned: {len(markers)} other data home(s) write their training JPEGs into this "
            f"store (marker {markers[0]}); a JPEG this home no longer needs may be theirs. Remove a marker once "
            "its home's features.blob_base, or its link, no longer names this store")
    return bool(markers)


def _unlink_jpeg(root: Path, key: str, identity: tuple[int, int]) -> bool:
    """Remove the regular file ``key`` (``blobs/train/<size>/<xx>/<name>``) when it is still the file listed
    (``identity``: device, inode). ``blobs``, ``train`` and the size folder are opened following a link (the
    home's own, as the listing follows it); the ``<xx>`` folder without (a folder swapped for a link since the
    listing is never followed), and the JPEG itself is never a link."""
    parts = key.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts[:-1]):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if depth >= _LINKED_PARTS else 0)
            try:
                inner = os.open(part, flags, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = inner
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != identity:
                return False
            os.unlink(parts[-1], dir_fd=fd)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
