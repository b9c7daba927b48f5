"""Writing the raw zone: JSON lines (the format lives in ``formats.rawlines``), PNG blobs, moderation lists."""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import AnyStr

import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS, file_mode, write_bytes_atomic
from formats.rawlines import GZIP_LEVEL, download_line, gzip_bytes, image_line, jstr, ranking_line, user_line  # noqa: F401 - the simulator's modules use these through ``export``


def write_unless_same(path: Path | str, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically, unless ``path`` is a regular file (not a link) holding exactly these
    bytes: that file is left as it is, its mtime too. Returns whether it wrote. A simulation run again with the
    same settings rewrote every file with the same bytes, and a build watches the blobs it rejected by size and
    mtime (``pipelines.provenance.RejectedBlobs``), so every run of the home ran again (fix35b: a second
    ``pickapic demo`` reran all four runs).

    Review rev35e: the file is left only where it is also what a fresh write makes it: this account's, the
    umask's mode (``0666 & ~umask``) and one name (no hard link). A world-writable or owner-only file, another
    account's, or one whose inode another name shares (an edit through that name would change the raw zone) is
    rewritten by the atomic replace, as before fix35b. Review rev36a: and of the group a fresh file gets
    (:func:`fresh_group`), with no POSIX ACL of its own (``system.posix_acl_access``): a same-bytes file chgrp'ed
    to another group, group-writable under umask 002, or one an ACL lets another account write, was left, and
    that group or account could edit the raw zone in place. (In a folder with a default ACL a fresh file gets an
    ACL too: there every write rewrites, as before fix35b.)"""
    path = Path(path)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            info = os.fstat(handle.fileno())
            if (stat.S_ISREG(info.st_mode) and info.st_size == len(data) and info.st_nlink == 1
                    and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == file_mode()
                    and info.st_gid == fresh_group(path.parent) and not _has_acl(handle.fileno())
                    and handle.read(len(data) + 1) == data):
                return False
    except OSError:
        pass        # missing, a link, or unreadable: written as before
    write_bytes_atomic(path, data)
    return True


def write_parquet_unless_same(path: Path, table: pa.Table) -> bool:
    """Write ``table`` as Parquet (``formats.files.PARQUET_OPTIONS``: the bytes ``write_parquet_atomic`` writes)
    through :func:`write_unless_same`; returns whether it wrote. The simulation's ground truth: a run again with the
    same settings left every file of ``ground_truth/`` rewritten with the same bytes (fix36n)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return write_unless_same(path, sink.getvalue().to_pybytes())


def fresh_group(folder: Path) -> int:
    """The group a file created in ``folder`` gets: the folder's where it is setgid (a group-shared home) or where
    its file system is mounted ``grpid`` / ``bsdgroups`` (ext4, ext2/3, xfs: BSD group semantics, a new file takes
    its folder's group, setgid or not; fix37d, review rev37d: such a home had every same-bytes file rewritten on
    every run), else this process's effective group (review rev36a). Raises OSError where the folder cannot be
    looked at."""
    info = os.stat(folder)
    if info.st_mode & stat.S_ISGID or _bsd_groups(folder, info.st_dev):
        return info.st_gid
    return os.getegid()


MOUNTINFO = "/proc/self/mountinfo"
_BSD_GROUP_OPTIONS = {"grpid", "bsdgroups"}      # nogrpid / sysvgroups (the default): the process's group


def _bsd_groups(folder: Path, device: int) -> bool:
    """Whether the file system ``folder`` is on (``device``: its ``st_dev``) gives a new file its folder's group:
    the ``grpid`` / ``bsdgroups`` option of the mount that holds it in /proc/self/mountinfo (the mount of that
    device whose mount point is the longest prefix of the folder's real path). False where mountinfo cannot be
    read (not Linux) or names no such mount."""
    try:
        # fix37h (review rev37h): bytes, as the kernel writes them, compared with the folder's real path as bytes
        # (os.fsencode: a non-UTF-8 name's surrogate escapes back to its bytes); read as replaced text, a mount
        # point with such a byte never matched the folder and a grpid home was taken for the default
        data = Path(MOUNTINFO).read_bytes()
        where = os.fsencode(os.path.realpath(folder))
    except OSError:
        return False
    wanted = f"{os.major(device)}:{os.minor(device)}".encode()
    best, options = -1, b""
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) < 7 or fields[2] != wanted or b"-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        # of two mounts at the same point the later line is the one on top (the one the path reaches): it wins
        if not (where == point or where.startswith(point.rstrip(b"/") + b"/")) or len(point) < best:
            continue
        tail = fields[fields.index(b"-", 6) + 1:]
        best, options = len(point), fields[5] + b"," + (tail[2] if len(tail) > 2 else b"")
    return bool(_BSD_GROUP_OPTIONS & set(options.decode("ascii", "replace").split(",")))


def _unescape(field: AnyStr) -> AnyStr:
    """A mountinfo path field as the path it names (the kernel writes space, tab, newline, backslash as \\ooo;
    any other byte, UTF-8 or not, as itself): bytes as bytes (what :func:`_bsd_groups` compares), text as text."""
    if isinstance(field, bytes):
        return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


ACL_ACCESS = "system.posix_acl_access"      # the extended attribute a file's POSIX access ACL is stored in


def _has_acl(fd: int) -> bool:
    """Whether the open file carries a POSIX access ACL (beyond its mode bits: the kernel stores none for an ACL
    its mode says whole); False where the file system has no extended attributes."""
    try:
        return ACL_ACCESS in os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise


def write_jsonl_gz(path: Path, lines: list[str]) -> int:
    """Write lines (each followed by a newline) gzip-compressed and atomically (a file holding these bytes already
    is left as it is: :func:`write_unless_same`); returns bytes written."""
    payload = gzip_bytes(("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    write_unless_same(path, payload)
    return len(payload)


def write_text_lines(path: Path, lines: list[str]) -> None:
    """Write a plain text file with one entry per line, atomically (:func:`write_unless_same`)."""
    write_unless_same(path, ("".join(f"{line}\n" for line in lines)).encode("utf-8"))
