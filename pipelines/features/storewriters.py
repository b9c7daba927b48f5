"""The homes that write into a training JPEG store (review rev30i), apart from ``pipelines.features.trainjpegs`` so
the feature settings' check (``pipelines.features.config.check_blob_base``) records them without an import cycle.

A home whose store (``<blob base>/blobs/train``) lies outside it, a blob base that is another data home or its own
store behind a link to another disk, leaves a marker there; the removal of training JPEGs of a store holding
another home's marker removes nothing (``trainjpegs.other_writers``). A size folder (``blobs/train/s<N>q<N>``) that
a link takes outside the home on its own (review rev31a: two homes linking their ``s512q90`` to one folder on another
disk recorded no writer at all, and one home's removal deleted the other's JPEGs) gets a marker of its own, in
``<that folder>/.writers``; the removal skips a size folder holding another home's marker."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat

from formats.files import naming_the_file, path_within

TRAIN_ROOT = "blobs/train"
SIZE_FOLDER = re.compile(r"s[0-9]+q[0-9]+")      # blobs/train/s<size>q<quality>: one per training JPEG size
WRITERS = ".writers"     # in <blob base>/blobs/train: a marker file per data home whose feature stage writes there
_MARKER = re.compile(r"[0-9a-f]{64}")
_MARKER_TEXT = b"a pickapic data home's feature stage writes its training JPEGs into this store\n"


def home_digest(home: str | os.PathLike) -> str:
    """The name of a home's marker file: the SHA-256 of its real path (no path in the store's files)."""
    return hashlib.sha256(os.fsencode(os.path.realpath(home))).hexdigest()


def record_store_user(base: str, home: str | os.PathLike) -> None:
    """Record ``home`` as a writer of the training JPEG store of the local blob base ``base`` wherever that store's
    real location is outside the home, at any level the feature stage writes through and the removal follows: the
    store itself (``<base>/blobs/train``, its links followed: a blob base that is another data home, or the home's
    own ``blobs`` or ``blobs/train`` behind a link to another disk; review rev30i: the other home's removal deleted
    the JPEGs this home needs, judged by its own warehouse alone), and each size folder
    ``<base>/blobs/train/s<N>q<N>`` a link takes elsewhere than that store (review rev31a: a size folder two homes
    link to one folder on another disk recorded no writer). The marker ``<folder>/.writers/<digest of the home's
    real path>`` is written once, atomically (a temporary file linked into place: nothing is replaced), as the umask
    allows; the removal of a store or size folder holding another home's marker removes nothing there. Raises
    ``OSError`` where it cannot be written, or where ``.writers`` or the marker is not what this writes."""
    train = os.path.join(base, TRAIN_ROOT)
    home_real = os.path.realpath(home)
    train_real = os.path.realpath(train)
    if not path_within(train_real, home_real):
        _record_in(train, home)
    for size in _size_folders(train):
        real = os.path.realpath(size)
        if not path_within(real, home_real) and os.path.dirname(real) != train_real:
            _record_in(size, home)      # a link at the size folder itself: the store on another disk, in part


def _size_folders(train: str) -> list[str]:
    """The paths of the size folders (``s<N>q<N>``, links to folders included) in ``train``, sorted."""
    try:
        with os.scandir(train) as listing:
            names = sorted(entry.name for entry in listing
                           if SIZE_FOLDER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(train, name) for name in names]


def _record_in(store: str, home: str | os.PathLike) -> None:
    """Write ``home``'s marker in ``<store>/.writers`` once (see :func:`record_store_user`)."""
    folder = os.path.join(store, WRITERS)
    os.makedirs(folder, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise OSError(f"{folder} is not a folder (the feature stage records the homes writing into the store there)")
    marker = os.path.join(folder, home_digest(home))
    try:
        if stat.S_ISREG(os.lstat(marker).st_mode):
            return
        raise OSError(f"{marker} is not a regular file (this home's marker as a writer of the store)")
    except FileNotFoundError:
        pass
    temp = f"{marker}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        try:
            with naming_the_file(marker):
                view = memoryview(_MARKER_TEXT)
                while view:                     # a short write is written on (review rev33h: it was ignored)
                    view = view[os.write(fd, view):]
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, marker)
        except FileExistsError:     # another run of this home wrote it meanwhile
            pass
    finally:
        os.unlink(temp)
