"""Removing a folder tree whatever its depth: iteratively (an explicit stack, no recursion) and relative to open
folders (no path longer than one name), following no link. ``shutil.rmtree`` recurses once per folder level on
Python 3.11 (a tree 1,000 folders deep raises ``RecursionError``, which ``ignore_errors`` does not cover) and needs
one descriptor per level: a tree anyone can plant deep enough (a marked scratch folder, review rev33k; a published
version's folder, reviews rev25e and rev25i) must not make a clean-up raise. Neither enters another file system
mounted inside the tree (review rev33t): its files are not the tool's. Standard library only.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# this process's mounts (its mount namespace), one a line; the fifth field is the mount point, octal-escaped
MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount_point(field: str) -> str:
    """A mount point as ``/proc/self/mountinfo`` writes it (space, tab, newline, backslash as ``\\ooo``), unescaped."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mounts_under(path: str | os.PathLike) -> set[tuple[int, int]]:
    """The (device, inode) of every mount point strictly under the folder ``path`` (what a ``stat`` of it gives: the
    mounted file system's root, or the bound folder or file of a bind mount), read once from
    :data:`MOUNTINFO`; empty where that cannot be read. A bind mount of a folder of the same file system keeps the
    device number, so this, not only ``st_dev``, is how :func:`remove_tree` tells one (review rev33t)."""
    try:
        top = os.path.realpath(path)
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as table:
            lines = table.read().split("\n")   # not splitlines: a name may hold \x1c, \x85
    except (OSError, ValueError):
        return set()
    prefix = top.rstrip("/") + "/"
    found = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _mount_point(fields[4])
        if not point.startswith(prefix):
            continue
        try:
            info = os.lstat(point)
        except (OSError, ValueError):       # hidden by a later mount above it, or not reachable: not walked either
            continue
        found.add((info.st_dev, info.st_ino))
    return found


def open_folder(name: str | os.PathLike, dir_fd: int | None, ident: tuple[int, int] | None) -> int:
    """The real folder ``name`` (relative to ``dir_fd``) opened without following a link; OSError (ESTALE) unless it
    is the folder of device and inode ``ident`` (when given): it was replaced (by a link, another folder) since it
    was listed, and is never entered."""
    fd = os.open(name, FOLDER_FLAGS, dir_fd=dir_fd)
    if ident is not None:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != ident:
            os.close(fd)
            raise OSError(errno.ESTALE, "the folder was replaced while it was being walked (not entered)",
                          os.fspath(name))
    return fd


def listing(fd: int) -> list[tuple[str, os.stat_result]]:
    """The entries of the folder open as ``fd``, sorted by name, each with its ``lstat``."""
    with os.scandir(fd) as entries:         # scandir works on a duplicate of fd and rewinds it
        return sorted((entry.name, entry.stat(follow_symlinks=False)) for entry in entries)


def remove_tree(path: str | os.PathLike, *, last: str | None = None) -> None:
    """Remove the real folder ``path`` and everything under it, following no link, as ``shutil.rmtree`` does but
    iteratively (``shutil.rmtree`` recurses once per folder level on Python 3.11: review rev25e) and relative to open
    folders, never by full path (review rev25i: a tree deeper than PATH_MAX raised ENAMETOOLONG and a ``.deleting-``
    folder holding it was never removed). Each folder is opened by name relative to its open parent without following
    a link and checked to be the folder that was listed (device and inode), and left through ``..`` checked to be its
    parent, so a folder replaced by a link meanwhile is never entered; one descriptor is open at a time. What can be
    removed is; then OSError for the first thing that could not be (EBUSY: a file a reader holds open on NFS), and
    :class:`NotADirectoryError` for a link or a file at ``path``. Memory: the names of one folder at a time, and of
    the folders not yet entered on the way down (never the files' names of the folders above, nor every error).

    Another file system mounted inside the tree (a tmpfs, an NFS share, a bind mount of a folder from elsewhere) is
    never entered, as ``rm --one-file-system`` does (review rev33t: its files were deleted): a folder whose device is
    not the tree's, or that is a mount point under ``path`` in :data:`MOUNTINFO` (read once; a bind mount keeps the
    device), is left whole, and OSError (EXDEV) is raised once the rest is removed. So is a file bind-mounted there.

    ``last``: the name of a file in ``path`` itself removed only once everything else under ``path`` is (a marker
    that says the folder is the tool's: :data:`formats.locks.SCRATCH_MARKER`), so a folder that could not be emptied
    keeps it and a later sweep still takes it for the tool's (review rev33t)."""
    root = os.fspath(path)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a real folder (not removed)", root)
    first_error: list[OSError] = []     # only the first is kept: memory does not grow with what cannot be removed
    device = info.st_dev
    mounts = mounts_under(root)

    def note(exc: OSError) -> None:
        if not first_error:
            first_error.append(exc)

    def mounted(name: str) -> None:
        note(OSError(errno.EXDEV, "another file system is mounted there: not entered, nothing on it removed", name))

    def enter(fd: int, keep: str | None = None) -> list[tuple[str, tuple[int, int]]]:
        """Unlink the open folder's entries but its folders (and ``keep``); return those (name, identity), sorted;
        a mount point is neither unlinked nor returned."""
        folders = []
        for name, child in listing(fd):
            ident = (child.st_dev, child.st_ino)
            if ident in mounts or (stat.S_ISDIR(child.st_mode) and child.st_dev != device):
                mounted(name)
                continue
            if stat.S_ISDIR(child.st_mode):
                folders.append((name, ident))
                continue
            if name == keep:
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                note(exc)
        return folders[::-1]                     # popped from the end: in name order

    fd = open_folder(root, None, (info.st_dev, info.st_ino))
    try:
        # ((dev, ino), its name in its parent, its folders not removed yet)
        stack: list[tuple[tuple[int, int], str, list]] = [((info.st_dev, info.st_ino), root, enter(fd, last))]
        while stack:
            _, name, pending = stack[-1]
            if pending:
                child_name, child_ident = pending.pop()
                try:
                    child = open_folder(child_name, fd, child_ident)
                except FileNotFoundError:
                    continue
                except OSError as exc:           # replaced meanwhile (ESTALE), not enterable: left
                    note(exc)
                    continue
                os.close(fd)
                fd = child
                stack.append((child_ident, child_name, enter(fd)))
                continue
            stack.pop()
            if not stack:                        # fd is the root's again: its marker goes once the rest is gone
                if last is not None and not first_error:
                    try:
                        os.unlink(last, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        note(exc)
                break
            parent = open_folder("..", fd, stack[-1][0])
            os.close(fd)
            fd = parent
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                note(exc)                        # not empty because of what could not be removed: said already
    finally:
        os.close(fd)
    try:
        os.rmdir(root)
    except OSError:
        if not first_error:
            raise
    if first_error:
        raise first_error[0]


def remove_folder(path: str | os.PathLike) -> None:
    """Remove the real folder ``path`` whole: ``shutil.rmtree`` (which follows no link inside it), and where that
    recursed too deep (RecursionError on Python 3.11, one level per folder; or ran out of file descriptors, one per
    level; or met a path too long) :func:`remove_tree`, iterative and relative to open folders, for what is left
    (review rev25e: a deep tree of empty folders raised RecursionError out of retention after the switch; review
    rev25i: one deeper than PATH_MAX was never removed). OSError for what cannot be removed. Where a file system is
    mounted inside the folder (``shutil.rmtree`` would delete its files), :func:`remove_tree` alone, which leaves it
    whole and raises (review rev33t)."""
    if mounts_under(path):
        remove_tree(path)
        return
    try:
        shutil.rmtree(path)
    except RecursionError:
        remove_tree(path)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG):
            raise
        remove_tree(path)
