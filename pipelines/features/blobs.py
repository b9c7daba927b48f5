"""The blob store: URLs under the blob base (a local folder or a bucket), training-JPEG keys, atomic blob writes."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.files import create_temp, is_url, naming_the_file


def join_url(base: str, relpath: str) -> str:
    """``base`` + ``/`` + ``relpath`` for local paths and ``scheme://`` URLs alike."""
    return base.rstrip("/") + "/" + relpath


def is_local(base: str) -> bool:
    """True for a local path (no ``scheme://`` at its start)."""
    return not is_url(base)


def train_jpg_key(prefix: str, sha256: str) -> str:
    """Content-addressed key of a training JPEG, relative to the home."""
    return f"{prefix}/{sha256[:2]}/{sha256}.jpg"


def write_blob_atomic(base: str, key: str, data: bytes) -> None:
    """Make ``base/key`` hold exactly ``data`` (a training JPEG), writing it unless it already does.

    The stage encodes a key's bytes deterministically, so anything else at the key can only be damage and is
    replaced (review rev24d: any non-empty entry was kept for good, a file cut short by an interrupted copy, a
    folder, a link): locally, a regular file of other bytes or size, a link (replaced, never written through),
    an empty folder (a non-empty one is refused, naming it: its files are not the stage's to delete), a FIFO or
    other node; in an object store, an object of another size. A local key's folder (``<sha[:2]>``, the one
    folder of the store the stage makes per key) must be a real folder: a link there is refused, and the folder
    is opened once (``O_DIRECTORY | O_NOFOLLOW``) and every later step (the check, the temporary file, the
    rename) works relative to it, so a folder swapped for a link mid-write is never written through and
    nothing is written outside the store (review rev24h).

    Readers never see a partial file: a local file is written under a unique temporary name in the same
    folder (created exclusively, no link followed) and renamed into place (with the umask's permissions); an
    object store makes an object visible only when its upload completes.
    """
    url = join_url(base, key)
    if is_local(base):
        _write_local(url, data)
        return
    filesystem = FileSystems.get_filesystem(url)   # one plugin lookup per write, not one per call below
    try:   # metadata of one path; FileSystems.match would compile a glob per image (~2 ms)
        if filesystem.metadata(url).size_in_bytes == len(data):
            return
    except BeamIOError:
        pass   # not there yet
    with filesystem.create(url, mime_type="image/jpeg", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def _holds(folder_fd: int, name: str, data: bytes) -> bool:
    """Whether ``name`` in the open folder ``folder_fd`` is a regular file (not a link) holding exactly ``data``."""
    info = _lstat_at(folder_fd, name)
    if info is None or not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return False    # swapped for a link, unreadable: written again
    with io.FileIO(fd, "rb") as handle:
        return stat.S_ISREG(os.fstat(fd).st_mode) and handle.read(len(data) + 1) == data


def _lstat_at(folder_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_key_folder(folder: str) -> int:
    """The key's folder, made if missing and opened once (``O_DIRECTORY | O_NOFOLLOW``): everything after works
    relative to this descriptor, so a folder swapped for a link later is never written through (review rev24h)."""
    with contextlib.suppress(FileExistsError):   # a dangling link there: refused below
        os.makedirs(folder, exist_ok=True)
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise OSError(errno.ENOTDIR, f"the training-JPEG store's folder {folder} is a link or not a folder; "
                                     "remove it (the feature stage writes it again)", folder) from None


def _write_local(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    folder_fd = _open_key_folder(folder)
    try:
        _write_in_folder(folder_fd, folder, name, data)
    finally:
        os.close(folder_fd)


def _write_in_folder(folder_fd: int, folder: str, name: str, data: bytes) -> None:
    # a key is written by any day's run (content-addressed), each under its own day's lock: another day's run that
    # has just made the key whole sweeps its killed writers' temporary files (review rev29b), and may take this
    # one's; then the key is looked at again, and it holds the bytes, or it is written again
    for attempt in range(3):
        try:
            _write_once(folder_fd, folder, name, data)
            return
        except FileNotFoundError:   # the temporary file was gone at the rename (or the folder is gone)
            if attempt == 2:
                raise


def _write_once(folder_fd: int, folder: str, name: str, data: bytes) -> None:
    if _holds(folder_fd, name, data):
        return
    path = os.path.join(folder, name)
    entry = _lstat_at(folder_fd, name)
    if entry is not None and stat.S_ISDIR(entry.st_mode):
        try:
            os.rmdir(name, dir_fd=folder_fd)
        except OSError as exc:
            raise OSError(exc.errno, f"a folder is at the training JPEG key {path} and is not empty; remove it "
                                     "(the feature stage writes the JPEG there)", path) from None
    fd, temporary = create_temp(folder, name, dir_fd=folder_fd)
    try:
        with naming_the_file(path):   # a full store (maybe another disk than the home's) names the JPEG (rev33h)
            with io.FileIO(fd, "wb") as handle:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view):]
        # replaces a link or a node at the key, never writes through it; in the folder opened above
        os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder_fd)
        raise


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def training_jpeg_ok(base: str, key: str, size: int) -> bool:
    """Whether the training JPEG at ``base/key`` is there as a row recorded it: locally a regular file (not a
    link) of ``size`` bytes that starts with the JPEG start marker and ends with its end marker (one open and two
    2-byte reads; review rev24h: a file of the recorded size but other bytes, zeros from a preallocating copy or
    an interrupted in-place copy, was kept for good); in an object store an object of that size (one metadata
    call: an object is replaced whole, never rewritten in place). Damage that keeps the size and both ends (a
    bit flipped inside) is not seen: the rows record no digest of the JPEG."""
    url = join_url(base, key)
    if is_local(base):
        if size < 4:
            return False
        try:
            fd = os.open(url, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False   # lost, a link, unreadable: written again
        try:
            info = os.fstat(fd)
            return (stat.S_ISREG(info.st_mode) and info.st_size == size and os.pread(fd, 2, 0) == JPEG_START
                    and os.pread(fd, 2, size - 2) == JPEG_END)
        except OSError:
            return False
        finally:
            os.close(fd)
    try:   # an object store replaces an object whole (an upload completes or nothing changes): its size
        return FileSystems.get_filesystem(url).metadata(url).size_in_bytes == size
    except BeamIOError:
        return False


def lost_training_jpegs(base: str, rows: Iterable[dict]) -> set[str]:
    """``image_uid`` of each row (``train_jpg_key``, ``train_jpg_bytes``) whose training JPEG is not there as
    recorded (:func:`training_jpeg_ok`): one open and two small reads a row locally, metadata calls 16 at a
    time in a bucket."""
    rows = list(rows)
    if not rows:
        return set()

    def lost(row: dict) -> bool:
        return not training_jpeg_ok(base, row["train_jpg_key"], row["train_jpg_bytes"])

    if is_local(base):
        flags = [lost(row) for row in rows]
    else:
        with ThreadPoolExecutor(max_workers=16) as pool:
            flags = list(pool.map(lost, rows))
    return {row["image_uid"] for row, flag in zip(rows, flags) if flag}
