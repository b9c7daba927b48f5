"""Copy one day's image blobs from the app's storage into ``raw/images/{image_uid}.png``.

The store is a local folder or any URL Beam's ``FileSystems`` reads (``s3://bucket/images`` with
``apache-beam[aws]``, ``gs://bucket/images`` with ``apache-beam[gcp]``), holding ``{image_uid}.png``
as the app wrote them. Blobs are copied, not referenced in place: the ingest's ``blob_path`` is
relative to the data home, and a copy freezes the bytes that were exported (the app's storage may
delete or overwrite objects later), so the raw zone alone rebuilds every dataset.
A blob already in the raw zone is never copied again (the copy stays what was exported): it is
compared with the store's object, by size and then byte for byte (a blob replaced by other bytes of
the same size is no match), and one that differs is counted as ``differs_in_store``: a re-export
reads each object of the copy's size once (nothing is written), up to the first difference. A
missing object (also one deleted between its sizing and its read) is counted and left to the feature
stage, which rejects it as ``missing_blob``;
a uid that is not a canonical UUID is never used as a file name (the ingest quarantines its row).
In a local store only regular files are copied: a symlink (which could name any file the export
can read), a FIFO, a device or a folder is counted as ``not_a_file_in_store`` and left out (the
feature stage then rejects the image as ``missing_blob``), and a file is copied up to the size it
had when opened, so one that keeps growing cannot fill the disk.
An object larger than the feature stage's ``max_bytes`` (the home's ``features.max_bytes``, 64 MiB by
default) is copied only up to ``max_bytes + 1`` bytes and counted as ``too_large``: no stage reads past
that, the feature stage rejects the copy as ``file_too_large`` exactly as it would the whole object,
and a 1 TB object (a sparse file costs its writer nothing) no longer fills the raw zone's disk.
A capped copy (marked in ``raw/images/.capped``) shorter than the cap, which the object starts with
(capped under a lower ``max_bytes`` before it was raised), is the one exception to "never copied
again": it is completed up to the cap, keeping the bytes exported (see :func:`_copy_one`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import psycopg

from formats.files import (
    is_url,
    lstat_or_none,
    naming_full_disk,
    naming_the_file,
    open_regular_file,
    sweep_temps,
    write_bytes_atomic,
)
from formats.home import DataHome
from formats.locks import hold_lock, sweep_exclusively, writing_shared
from formats.settings import load
from pipelines.appdb.connection import as_text, read_rows
from pipelines.appdb.tables import statement
from pipelines.ingest.parse import UID_RE

BATCH = 256
UID_CHARS = 36          # a canonical UUID, the only blob name the export uses (UID_RE)
CHUNK = 1 << 20
WITHDRAW_BATCH = 1 << 16   # uids a withdrawal looks up at once (memory: a batch's uids)
# HOME/.locks/<this>: each batch of blob copies holds it shared (a uid found in raw/images there is taken as copied);
# a withdrawal holds it exclusively while it looks up the uids and removes the blobs no file names (review rev33d)
BLOBS_LOCK = "app-export-blobs.lock"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024     # features.max_bytes's default (a test checks they agree)


def _is_local(store: str) -> bool:
    return not is_url(store)


class NotAFile(Exception):
    """A local store entry that is not a regular file (a symlink is not followed)."""


def _source_size(store: str, name: str) -> int | None:
    """Size of ``name`` in the store, or None when it is not there (:class:`NotAFile`: not a regular file)."""
    if _is_local(store):
        try:
            info = os.lstat(Path(store) / name)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise NotAFile(name)
        return info.st_size
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([store.rstrip("/") + "/" + name])[0].metadata_list
    return found[0].size_in_bytes if found else None


def _open_local(store: str, name: str) -> BinaryIO:
    """The local store's regular file ``name``, open to read; a link is not followed (:class:`NotAFile`,
    as for anything but a regular file); FileNotFoundError when it is gone."""
    try:
        fd = os.open(Path(store) / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError:                  # ELOOP: swapped for a link since the lstat
        raise NotAFile(name) from None
    source = open(fd, "rb", closefd=True)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        source.close()
        raise NotAFile(name)
    return source


def _open_local_or_outcome(store: str, name: str) -> BinaryIO | str:
    """:func:`_open_local`, or the outcome to count when there is nothing to read: 'missing' (gone since it
    was sized) or 'not_a_file_in_store'."""
    try:
        return _open_local(store, name)
    except FileNotFoundError:
        return "missing"
    except NotAFile:
        return "not_a_file_in_store"


def _read_full(handle: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end (a stream may return less than asked before it)."""
    parts, left = [], size
    while left > 0 and (block := handle.read(left)):
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def _same_bytes(source: BinaryIO, copy: BinaryIO, whole: bool = True) -> bool:
    """Whether two open files hold the same bytes (``whole=False``: the source starts with the copy's
    bytes): read side by side, stopping at the first difference, and at the copy's end plus one byte of
    the source however long the source keeps growing."""
    while True:
        mine = _read_full(copy, CHUNK)
        if not mine:
            return not whole or not _read_full(source, 1)
        if _read_full(source, len(mine)) != mine:
            return False


def _matches_copy(store: str, name: str, target: Path, whole: bool = True) -> str:
    """'present' when the store's object holds the bytes of the copy (of the same size; ``whole=False``:
    a copy capped at ``max_bytes + 1`` is the object's start), else 'differs_in_store' (or 'missing' /
    'not_a_file_in_store' when the object went since it was sized)."""
    with open_regular_file(target) as copy:
        if not _is_local(store):
            try:
                with _open_url(store, name) as source:
                    return "present" if _same_bytes(source, copy, whole) else "differs_in_store"
            except Exception:
                if _url_gone(store, name):
                    return "missing"
                raise
        source = _open_local_or_outcome(store, name)
        if isinstance(source, str):
            return source
        with source:
            return "present" if _same_bytes(source, copy, whole) else "differs_in_store"


class _NoLongerItsStart(Exception):
    """The object read to complete a capped copy no longer starts with that copy's bytes."""


CAPPED = ".capped"   # raw/images/.capped/{uid}.png: the sizes at which the tool wrote {uid}.png capped


def _capped_sizes(target: Path) -> set[int]:
    """The sizes at which the tool wrote ``target`` capped (its marker in ``.capped``), if any."""
    folder, marker = target.parent / CAPPED, target.parent / CAPPED / target.name
    for path in (folder, marker):
        info = lstat_or_none(path)
        if info is None or not (stat.S_ISDIR if path is folder else stat.S_ISREG)(info.st_mode):
            return set()
    try:
        return {int(word) for word in marker.read_text("ascii").split()}
    except (OSError, ValueError):
        return set()


def _mark_capped(target: Path, sizes: set[int]) -> None:
    """Record (atomically) that ``target`` is, or is about to be, a capped copy of one of ``sizes``."""
    folder = target.parent / CAPPED
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise FileExistsError(f"{folder} is not a folder: refusing to write through it")
    write_bytes_atomic(folder / target.name, " ".join(map(str, sorted(sizes))).encode("ascii"))


def _unmark_capped(target: Path) -> None:
    """Remove ``target``'s capped marker (it is whole now)."""
    info = lstat_or_none(target.parent / CAPPED)
    if info is not None and stat.S_ISDIR(info.st_mode):
        (target.parent / CAPPED / target.name).unlink(missing_ok=True)


def _copy_one(store: str, uid: str, target_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES,
              created: Callable[[str], object] | None = None, record: Callable[[str], object] | None = None) -> str:
    """Copy one blob; returns 'copied', 'too_large' (copied up to ``max_bytes + 1`` bytes), 'present',
    'differs_in_store', 'missing' or 'not_a_file_in_store'.

    A capped copy (marked in ``.capped`` when written, or of the default cap's size, which copies made
    before the marker have) whose bytes the object still starts with is 'present' when it is at least
    ``max_bytes + 1`` bytes long (the feature stage rejects it as too large, as it would the whole
    object), and is copied again when it is shorter (``features.max_bytes`` was raised): the new copy
    replaces it in one rename, only if it starts with the old copy's bytes, so the bytes exported stay.
    Any other copy is frozen: an object that grew since its whole copy is 'differs_in_store'. ``created`` is
    called with ``uid`` when a copy was written where raw/images had none (review rev32c). ``record`` (an export's
    :class:`BlobRecord`) gets a line naming the uid and its temporary file before that file is made: ``UID TOKEN``
    where raw/images has no copy, ``UID TOKEN over`` for a capped copy being completed (review rev34g)."""
    name = f"{uid}.png"
    cap = max_bytes + 1           # one byte past what the feature stage accepts: it rejects the copy as too large
    try:
        size = _source_size(store, name)
    except NotAFile:
        return "not_a_file_in_store"
    if size is None:
        return "missing"
    target = target_dir / name
    info = lstat_or_none(target)
    if info is None:
        outcome = _write_copy(store, name, target, cap, note=_noting(record, uid, ""))
        if created is not None and outcome in ("copied", "too_large"):
            created(uid)
        return outcome
    if not stat.S_ISREG(info.st_mode):
        raise FileExistsError(f"{target} exists and is not a regular file: refusing to replace it")
    if info.st_size == size:
        return _matches_copy(store, name, target)
    capped = info.st_size in (cap, DEFAULT_MAX_BYTES + 1) or info.st_size in _capped_sizes(target)
    if info.st_size > size or not capped:
        return "differs_in_store"
    outcome = _matches_copy(store, name, target, whole=False)     # the object must still start with it
    if outcome != "present" or info.st_size >= cap:
        return outcome
    try:                                                          # capped under a lower max_bytes: completed
        return _write_copy(store, name, target, cap, start_of=target, note=_noting(record, uid, " over"))
    except _NoLongerItsStart:
        return "differs_in_store"


def _noting(record: Callable[[str], object] | None, uid: str, kind: str) -> Callable[[str], object] | None:
    """What :func:`_blob_temp` calls with its token: the record's line for ``uid`` (None: no record)."""
    if record is None:
        return None
    return lambda token: record(f"{uid} {token}{kind}\n")


TEMP_TOKEN_HEX = 12     # .{uid}.png.<12 hex>.tmp: formats.files.create_temp's names, the ones sweep_temps knows


@contextlib.contextmanager
def _blob_temp(target: Path, note: Callable[[str], object] | None = None) -> Iterator[Path]:
    """``formats.files.atomic_path`` for a blob copy: a temporary file ``.{uid}.png.<hex>.tmp`` beside ``target``,
    renamed over it on success (synced first), removed on failure. ``note`` gets the name's token before the file
    is made (review rev34g: a copy killed before its rename left a whole blob under a name nothing removed; the
    export's record now names it, and the next export removes it, :func:`remove_recorded_temps`)."""
    for _ in range(100):
        token = secrets.token_hex(TEMP_TOKEN_HEX // 2)
        tmp = target.parent / f".{target.name}.{token}.tmp"
        if note is not None:
            note(token)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    else:
        raise FileExistsError(f"no free temporary name for {target.name!r} in {target.parent}")
    try:
        with naming_full_disk(target):
            yield tmp
        with naming_the_file(target):      # the sync is where a write-back error (EIO) shows
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_copy(store: str, name: str, target: Path, cap: int, start_of: Path | None = None,
                note: Callable[[str], object] | None = None) -> str:
    """Copy the store's object ``name`` to ``target`` (through a temporary file renamed over it, whose token
    ``note`` gets first: :func:`_blob_temp`) up to ``cap`` bytes, a capped copy marked before the rename; with
    ``start_of`` (the capped copy being completed), the rename happens only if the new copy starts with that
    file's bytes (else :class:`_NoLongerItsStart`, nothing replaced)."""
    with open_regular_file(start_of) if start_of is not None else contextlib.nullcontext() as old:
        old_size = [os.fstat(old.fileno()).st_size] if old is not None else []
        if _is_local(store):
            source = _open_local_or_outcome(store, name)
            if isinstance(source, str):
                return source
            with source:
                info = os.fstat(source.fileno())
                with _blob_temp(target, note) as tmp:
                    with open(tmp, "wb") as out:
                        # what it held when opened (a file that keeps growing stops there), at most the cap
                        left = written = min(info.st_size, cap)
                        while left > 0 and (block := source.read(min(CHUNK, left))):
                            out.write(block)
                            left -= len(block)
                    larger = written - left == cap and info.st_size > cap
                    _check_start(old, tmp)
                    if larger:                  # either size is marked while the rename may or may not be done
                        _mark_capped(target, {*old_size, cap})
        else:
            try:
                with _blob_temp(target, note) as tmp, _open_url(store, name) as source:
                    with open(tmp, "wb") as out:
                        left = cap
                        while left > 0 and (block := source.read(min(CHUNK, left))):
                            out.write(block)
                            left -= len(block)
                        larger = left == 0 and bool(source.read(1))
                    _check_start(old, tmp)
                    if larger:
                        _mark_capped(target, {*old_size, cap})
            except _NoLongerItsStart:
                raise
            except Exception:
                if _url_gone(store, name):
                    return "missing"
                raise
    if larger and old_size:
        _mark_capped(target, {cap})
    elif not larger:
        _unmark_capped(target)
    return "too_large" if larger else "copied"


def _check_start(old: BinaryIO | None, new: Path) -> None:
    """Raise :class:`_NoLongerItsStart` unless the file ``new`` starts with the bytes of ``old`` (if any)."""
    if old is None:
        return
    with open(new, "rb") as copy:
        if not _same_bytes(copy, old, whole=False):
            raise _NoLongerItsStart


def _open_url(store: str, name: str) -> BinaryIO:
    """The URL store's object ``name``, open to read (through Beam's ``FileSystems``)."""
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    return FileSystems.open(store.rstrip("/") + "/" + name, compression_type=CompressionTypes.UNCOMPRESSED)


def _url_gone(store: str, name: str) -> bool:
    """Whether the URL store's object ``name`` is no longer there: after a failed open or read, an object the
    app deleted since it was sized is counted 'missing' like a local one, whatever error its file system
    raised for it (``FileNotFoundError``, ``BeamIOError``, a client's 404); any other failure is raised."""
    from apache_beam.io.filesystems import FileSystems

    try:
        return not FileSystems.exists(store.rstrip("/") + "/" + name)
    except Exception:        # noqa: BLE001 - the store cannot say: the original error is raised
        return False


def read_day_uids(conn: psycopg.Connection, params: dict, spill: BinaryIO) -> int:
    """Write the day's image uids that are canonical UUIDs to ``spill``, one per line in order, and return
    how many were not (a uid that is not is never used as a file name). Each uid arrives cut to 37 characters
    (``export_image_uids.sql``), so one longer than a UUID is counted as not a uid without being read whole.

    Read from the export's snapshot before any blob is copied, so the export's transaction ends before
    the slow part: kept open while a slow store copied, it idled (and a server's
    ``idle_in_transaction_session_timeout`` ended the session, failing the day) and its snapshot held
    back the app database's vacuum. A file rather than a list: memory stays one fetch however many
    images the day has."""
    invalid = 0
    # each uid cut to UID_CHARS + 1 characters in SQL: one longer than a UUID is never one (UID_RE), and a
    # fetch of BATCH rows stays BATCH x 37 characters whatever the table holds
    params = {**params, "max_chars": UID_CHARS + 1}
    for rows in read_rows(conn, statement("export_image_uids"), params, BATCH):
        uids = [as_text(raw) for (raw,) in rows]   # Unconvertible text is already a str
        valid = [uid for uid in uids if UID_RE.fullmatch(uid)]
        invalid += len(uids) - len(valid)
        spill.write("".join(uid + "\n" for uid in valid).encode("ascii"))
    return invalid


EXPORTS = ".exports"   # raw/images/.exports/<staging folder's name>: a running export's BlobRecord (review rev34g)
_RECORD_LINE = re.compile(rb"(" + UID_RE.pattern.encode("ascii") + rb") ([0-9a-f]{%d})( over)?\n" % TEMP_TOKEN_HEX)
_RECORD_LINE_MAX = 64     # a record's line is 51 or 56 bytes: a longer one is none of its lines


class BlobRecord:
    """``raw/images/.exports/<staging folder's name>``: the blobs an export writes, one line each (``UID TOKEN``, or
    ``UID TOKEN over`` for a capped copy completed over its old copy), each written before its temporary file
    ``.{UID}.png.{TOKEN}.tmp`` is made (:func:`_copy_one`), synced after each batch of copies. Review rev34g: the
    export kept that list in an unnamed file, read only by a superseded export that reached its publish step, so an
    export killed (or failing) between its copies and its publish kept an erased account's images it had copied back
    for good, and a copy killed before its rename left its temporary file (a whole blob) for good. The record of an
    export that no longer runs (its staging folder gone or not held) is read by the next export with an image store
    (``export.withdraw_interrupted_exports``): the temporary files it names are removed and so are the blobs it wrote
    that no file names. An export removes its own record once its day is published, or once its withdrawal (a
    superseded export's) is complete; one that fails otherwise leaves it to the next export."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd, self.lock = path, fd, threading.Lock()

    @classmethod
    def create(cls, home: DataHome, name: str) -> "BlobRecord":
        """A new, empty record ``name`` (never replacing an entry: ``O_EXCL``, no link followed; the umask applies),
        its folder made where there is none (another export removes it once empty: made again then)."""
        folder = home.raw_images / EXPORTS
        path = folder / name
        for _ in range(100):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder)
            info = lstat_or_none(folder)
            if info is not None and not stat.S_ISDIR(info.st_mode):
                raise FileExistsError(f"{folder} is not a folder: refusing to write through it")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC,
                             0o666)
            except FileNotFoundError:
                continue          # the folder was removed as empty meanwhile
            return cls(path, fd)
        raise FileNotFoundError(f"{folder} keeps vanishing: cannot record the blobs this export writes")

    def note(self, line: str) -> None:
        """Append one line (one ``write`` of an ``O_APPEND`` file, in the kernel at once: a kill after it keeps it)."""
        data = line.encode("ascii")
        with self.lock:
            while data:
                data = data[os.write(self.fd, data):]

    def sync(self) -> None:
        os.fsync(self.fd)

    def empty(self) -> bool:
        return os.fstat(self.fd).st_size == 0

    def reader(self) -> BinaryIO:
        """The record opened to read from its start."""
        return open(self.path, "rb", buffering=1 << 16)

    def close(self, remove: bool) -> None:
        """Close it; ``remove``: unlink it (its blobs are named by a published day, or withdrawn)."""
        if remove:
            remove_record(self.path)
        os.close(self.fd)


def remove_record(path: Path) -> None:
    """Remove a record, and its folder when that is empty now (no stray ``.exports`` folder in raw/images)."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):      # another export's record is there (or its folder is gone)
        os.rmdir(path.parent)


def record_lines(handle: BinaryIO) -> Iterator[tuple[str, str, bool]]:
    """``(uid, token, over)`` of each well-formed line of a :class:`BlobRecord` (any other line is skipped, a long
    one read in pieces: memory stays one line however the file was changed); a plain ``UID`` line (the list
    :func:`copy_blobs` writes to ``created``) is ``(uid, "", False)``."""
    while line := handle.readline(_RECORD_LINE_MAX):
        if not line.endswith(b"\n"):
            if len(line) == _RECORD_LINE_MAX:           # a longer line: the rest of it is skipped
                while (rest := handle.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass
                continue
            line += b"\n"
        match = _RECORD_LINE.fullmatch(line)
        if match is not None:
            yield match.group(1).decode("ascii"), match.group(2).decode("ascii"), bool(match.group(3))
        elif UID_RE.fullmatch(uid := line[:-1].decode("ascii", "replace")):
            yield uid, "", False


def remove_recorded_temps(handle: BinaryIO, home: DataHome) -> int:
    """Remove the temporary files a :class:`BlobRecord` names (of an export that no longer runs: none of them is being
    written) that are still in raw/images: only regular files this account owns, never through a link; returns how
    many were removed. Review rev34g: a blob copy killed before its rename left its temporary file for good."""
    removed = 0
    handle.seek(0)
    for uid, token, _over in record_lines(handle):
        if not token:
            continue
        path = home.raw_images / f".{uid}.png.{token}.tmp"
        info = lstat_or_none(path)
        if info is not None and stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def sweep_capped_temps(home: DataHome) -> list[str]:
    """Remove the temporary files of capped markers (``raw/images/.capped/.UID.png.HEX.tmp``) that copies killed
    mid-write left, while no batch of blob copies runs (``BLOBS_LOCK`` taken exclusively without waiting: none is
    swept while one runs, the next export does it); returns notes on what was left."""
    folder = home.raw_images / CAPPED
    if lstat_or_none(folder) is None:
        return []
    return sweep_exclusively(home.locks / BLOBS_LOCK, "the app export's blob copies",
                             lambda: sweep_temps(folder, UID_RE.pattern + r"\.png")[1])


def copy_blobs(spill: BinaryIO, invalid: int, store: str, home: DataHome, workers: int,
               max_bytes: int | None = None, stop: Callable[[], bool] | None = None,
               created: BinaryIO | None = None, record: BlobRecord | None = None) -> dict:
    """Copy the blobs of the uids in ``spill`` (:func:`read_day_uids`, which found ``invalid`` uids that are
    not UUIDs); returns counts per outcome. Needs no database connection. ``max_bytes``: the copy cap
    (None: the home's ``features.max_bytes``).

    Review rev32c: ``stop`` is asked before each batch whether the export no longer publishes its snapshot (a newer
    export of the day published first): then no more blob is copied (``not_copied``: the uids left), and
    ``created`` (a file) receives the uid of each blob this call wrote where raw/images had none, one a line, so
    such an export removes again the ones the day it did not publish does not name (:func:`withdraw_blobs`).
    Review rev34g: ``record`` (the export's :class:`BlobRecord`) names each blob and its temporary file before the
    copy makes it, and is synced after each batch."""

    if _is_local(store) and not Path(store).is_dir():
        raise FileNotFoundError(f"image store {store!r} is not a folder")
    if max_bytes is None:
        max_bytes = load(home.root).config("features").max_bytes
    counts = {"store": store, "copied": 0, "present": 0, "differs_in_store": 0, "missing": 0, "invalid_uid": invalid,
              "not_a_file_in_store": 0, "too_large": 0, "max_bytes": max_bytes}
    target_dir = home.raw_images       # a real folder of the home (export_day checked it)
    spill.flush()
    spill.seek(0)
    new: list[str] = []     # list.append is atomic: the pool's threads add to it
    noted = record.note if record is not None else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while batch := [line.decode("ascii").rstrip("\n") for line in itertools.islice(spill, BATCH)]:
            if stop is not None and stop():
                counts["not_copied"] = len(batch) + sum(1 for _ in spill)
                break
            # review rev33d: a withdrawal never removes a blob this batch found present while the batch runs
            with writing_shared(home.locks / BLOBS_LOCK, "the app export's blob copies"):
                # positional: a wrapped _copy_one (a test's, *args) passes them on
                for outcome in pool.map(lambda uid: _copy_one(store, uid, target_dir, max_bytes, new.append, noted),
                                        batch):
                    counts[outcome] += 1
            if record is not None:
                record.sync()
            if created is not None:        # one batch at a time: memory stays a batch's uids
                created.write("".join(uid + "\n" for uid in new).encode("ascii"))
            new.clear()
    return counts


def withdraw_blobs(created: BinaryIO, home: DataHome,
                   named: Callable[[set[str]], set[str] | None]) -> tuple[int, bool]:
    """Remove the blobs listed in ``created`` (:func:`copy_blobs` wrote them into raw/images, where there was none;
    a uid a line, or an export's :class:`BlobRecord`, whose ``over`` lines are left out)
    that no file names (with their capped marker): ``named(uids)`` gives those of ``uids`` a file still names (any
    day's published images file, an export's staged one), or None where one that may name them cannot be read
    whole (nothing more is removed then). Returns how many were removed and whether every uid was looked up.
    Review rev32c: a superseded export (its older snapshot not published) copied the images of rows the newer
    snapshot no longer holds (an erased account's) back into raw/images, after the erasure removed them. Review
    rev33d: only the published day was asked, so a blob whose row moved into another day was removed from under
    that day's rows. ``WITHDRAW_BATCH`` uids at a time, under ``BLOBS_LOCK`` held exclusively: no batch of blob
    copies runs meanwhile, so a blob another export found present is named by its staged or published file."""
    removed = 0
    created.flush()
    created.seek(0)
    with hold_lock(home.locks / BLOBS_LOCK, "the app export's blob copies", lambda _holder: None):
        lines = (uid for uid, _token, over in record_lines(created) if not over)   # a blob written where none was
        while batch := set(itertools.islice(lines, WITHDRAW_BATCH)):
            kept = named(batch)
            if kept is None:
                return removed, False
            for uid in sorted(batch - kept):
                target = home.raw_images / f"{uid}.png"
                info = lstat_or_none(target)
                if info is not None and stat.S_ISREG(info.st_mode):
                    target.unlink(missing_ok=True)
                    _unmark_capped(target)
                    removed += 1
    return removed, True
