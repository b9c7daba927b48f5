"""Removing a folder tree whatever its depth: iteratively (an explicit stack, no recursion) and relative to open
folders (no path longer than one name), following no link. ``shutil.rmtree`` recurses once per folder level on
Python 3.11 (a tree 1,000 folders deep raises ``RecursionError``, which ``ignore_errors`` does not cover) and needs
one descriptor per level: a tree anyone can plant deep enough (a marked scratch folder, review rev33k; a published
version's folder, reviews rev25e and rev25i) must not make a clean-up raise. Standard library only.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def remove_tree(path: str | os.PathLike) -> None:
    """Remove the real folder ``path`` and everything under it, following no link, as ``shutil.rmtree`` does but
    iteratively (``shutil.rmtree`` recurses once per folder level on Python 3.11: review rev25e) and relative to open
    folders, never by full path (review rev25i: a tree deeper than PATH_MAX raised ENAMETOOLONG and a ``.deleting-``
    folder holding it was never removed). Each folder is opened by name relative to its open parent without following
    a link and checked to be the folder that was listed (device and inode), and left through ``..`` checked to be its
    parent, so a folder replaced by a link meanwhile is never entered; one descriptor is open at a time. What can be
    removed is; then OSError for the first thing that could not be (EBUSY: a file a reader holds open on NFS), and
    :class:`NotADirectoryError` for a link or a file at ``path``. Memory: the names of one folder at a time, and of
    the folders not yet entered on the way down (never the files' names of the folders above, nor every error)."""
    root = os.fspath(path)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a real folder (not removed)", root)
    first_error: list[OSError] = []     # only the first is kept: memory does not grow with what cannot be removed

    def note(exc: OSError) -> None:
        if not first_error:
            first_error.append(exc)

    def enter(fd: int) -> list[tuple[str, tuple[int, int]]]:
        """Unlink the open folder's entries but its folders; return those (name, identity), sorted."""
        folders = []
        for name, child in listing(fd):
            if stat.S_ISDIR(child.st_mode):
                folders.append((name, (child.st_dev, child.st_ino)))
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
        stack: list[tuple[tuple[int, int], str, list]] = [((info.st_dev, info.st_ino), root, enter(fd))]
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
            if not stack:
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
    rev25i: one deeper than PATH_MAX was never removed). OSError for what cannot be removed."""
    try:
        shutil.rmtree(path)
    except RecursionError:
        remove_tree(path)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG):
            raise
        remove_tree(path)
