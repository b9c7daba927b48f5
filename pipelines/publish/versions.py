"""The versions of a data home: their staging folder, retention, one publish at a time, fsyncs (the ``latest``
switch and the publish history are in formats.dataset)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from formats.dataset import (
    MANIFEST_FILE,
    VERSION_NAME,
    describe,
    fsync_dir,
    history_file,
    holders_text,
    latest_version,
    list_versions,
    lock_holders,
    read_history,
    read_manifest,
)
from formats.files import current_umask, is_apple_double
from formats.home import DataHome
from formats.locks import hold_lock
from formats.text import terminal_text
from formats.trees import listing as _listing
from formats.trees import open_folder as _open_folder
from formats.trees import remove_folder, remove_tree  # noqa: F401 -- re-exported (tests, callers)
from pipelines.publish.reuse import give_mode, real_folder

STAGING_PREFIX = ".partial-"      # a version being written: .partial-<version>
DELETING_PREFIX = ".deleting-"    # a version being deleted by retention: .deleting-<version>


class StagingRefused(RuntimeError):
    """Something at a version's or its staging folder's name that no publish made (the message says what
    is there and what to do); nothing was written or deleted through it."""


LATEST_TMP = re.compile(r"\.latest\.([0-9]+)\.tmp")   # formats.dataset.switch_latest's temporary link
# the folders a publish makes beside the versions: a staging .partial-<version>, and retention's
# .deleting-<version> (.deleting-<version>.<n> where that name was taken: apply_retention)
STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + VERSION_NAME.pattern)
DELETING_NAME = re.compile(re.escape(DELETING_PREFIX) + VERSION_NAME.pattern + r"(\.[0-9]{1,2})?")


def sweep_stale(datasets: Path, keep: str) -> list[str]:
    """Remove what interrupted publishes left beside the versions: the ``.partial-<version>`` staging folders
    of other versions than ``keep`` (a name), the ``.deleting-<version>`` folders of a retention cut short, and
    the temporary ``.latest.<pid>.tmp`` links of a ``latest`` switch cut short.

    Called under the publish lock by every publish, a version published again included (review rev24c: a
    rerun that found its version complete left a whole ``.deleting-*`` copy of an old version, and a killed
    switch's temporary link, in the folder consumers sync, for good).

    Only the names a publish makes are touched (review rev24j): a version's name (``formats.dataset.VERSION_NAME``)
    after the prefix, so a user's ``.deleting-notes`` or ``.partial-backup`` is left as it is and named in the
    returned notes. A folder that cannot be removed whole (on NFS a file a reader still holds open is renamed
    ``.nfsXXXX`` and the removal fails with EBUSY; a folder this account may not write) is left with a note, and
    the next publish tries again: the publish never fails on it (review rev25d). Only real folders are removed
    (:func:`remove_folder`: a deep tree raises no RecursionError, review rev25e; it follows no link inside
    them), and only
    symbolic links at a temporary link's name. A switch makes its temporary link only under the publish lock
    that the sweeping publish holds, so every such link is a dead switch's, whatever its pid (review rev24j:
    a killed switch whose pid a process reused, pid 1 in a container, kept its link for good). Anything else
    under such a name (a symbolic link, a file) is nothing a publish made: it is left as it is, never
    followed, and named in the returned notes; a publish does not fail on it."""
    notes = []
    with os.scandir(datasets) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        if not name.startswith((DELETING_PREFIX, STAGING_PREFIX)) or name == keep:
            continue
        path = datasets / name
        if not (DELETING_NAME.fullmatch(name) or STAGING_NAME.fullmatch(name)):
            notes.append(terminal_text(f"{path} is not named as a folder a publish makes (.partial-<version>, "
                                       f".deleting-<version>): left as it is; move it out of {datasets} if it is "
                                       f"yours"))
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                remove_folder(path)      # a deep tree raises no RecursionError (review rev25e)
            except (OSError, RecursionError) as exc:  # review rev25d: a reader's open file on NFS (EBUSY), ...
                notes.append(terminal_text(f"{path} (left by an interrupted publish or retention) could not be "
                                           f"removed whole ({exc}): left as it is (hidden); the next publish tries "
                                           f"again"))
        else:
            notes.append(terminal_text(f"{path} is {describe(path)}, not a folder a publish made: left as it is "
                                       f"(not followed); remove it by hand"))
    for name in names:
        if LATEST_TMP.fullmatch(name) is None:
            continue
        path = datasets / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            notes.append(f"{path} is {describe(path)}, not the temporary link a publish makes: left as it is; "
                         f"remove it by hand")
    return notes


def check_version_name(datasets: Path, version: str) -> bool:
    """Whether ``datasets/<version>`` is a complete version already (a real folder with its manifest);
    False when nothing is there. :class:`StagingRefused` for anything else at that name (a link, a file, a
    folder without a manifest): the staged version could not be renamed into place, and a link would make
    ``latest`` name a folder outside the home."""
    final = datasets / version
    try:
        info = os.lstat(final)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode) and (final / MANIFEST_FILE).is_file():
        return True
    what = describe(final) + (f" without {MANIFEST_FILE}" if stat.S_ISDIR(info.st_mode) else "")
    raise StagingRefused(f"{final} is {what}, not a version a publish made: nothing was published and it was "
                         f"left as it is; move it aside (or remove it: a symbolic link's removal leaves what it "
                         f"names) and publish again")


STAGING_SUFFIX = "staging"        # datasets/pickapic.staging/: where the versions are staged, beside their folder


def staging_root(datasets: Path) -> Path:
    """``datasets/pickapic.staging``: the folder the partial versions are staged in (``.partial-<version>``), beside
    the versions' folder and not in it, like the publish history (:func:`formats.dataset.history_file`), so
    whoever syncs or walks the versions' folder never meets a partial version (review rev28c: a failed publish
    left its 0700 staging among the versions, and another account's ``rsync -a`` or ``find`` of the folder
    failed on it)."""
    datasets = Path(datasets)
    return datasets.parent / f"{datasets.name}.{STAGING_SUFFIX}"


def sweep_staging_root(datasets: Path) -> list[str]:
    """Where the versions are staged among themselves (the fallback of :func:`open_staging_root`, the versions'
    folder on another file system): the stagings left in :func:`staging_root` before are stale, swept as
    :func:`sweep_stale` sweeps (review rev28f: a ``.partial-<version>`` left there stayed for good), and the
    folder removed once empty (it is only made to stage in). A link or a file there is left as it is."""
    root = staging_root(datasets)
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(info.st_mode):
        return []
    notes = sweep_stale(root, "")
    with contextlib.suppress(OSError):     # not empty (a user's file, a staging left with a note): kept
        os.rmdir(root)
    return notes


def open_staging_root(datasets: Path) -> Path:
    """The folder to stage a version in: :func:`staging_root`, made (with this run's umask) where missing.

    It must be a real folder (a link or a file at that name is nothing a publish made: :class:`StagingRefused`,
    nothing written through it) on the file system of the versions' folder, since the staged version is
    renamed into place: where the versions' folder is on another one (``datasets/pickapic`` a link to another
    disk) the versions' folder itself is returned, and the staging stays there, hidden, as before: a folder made
    here to find that out is removed again (review rev30e: retention, which calls this after
    :func:`sweep_staging_root` removed it, left it behind, empty)."""
    root = staging_root(datasets)
    made = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(root)
        made = True
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise StagingRefused(f"{root} is {describe(root)}, not the folder a publish stages its versions in: nothing "
                             f"was written or deleted through it; remove it (a symbolic link's removal leaves what "
                             f"it names) and publish again")
    if info.st_dev != os.stat(datasets).st_dev:
        if made:
            with contextlib.suppress(OSError):   # made empty a moment ago, under the publish lock
                os.rmdir(root)
        return Path(datasets)
    return root


def hiding_root(datasets: Path) -> Path:
    """The folder retention hides a version it deletes in, as :func:`open_staging_root` finds it but making
    nothing: :func:`staging_root` where it is a real folder on the versions' file system, else the versions'
    folder (whose ``.deleting-`` names :func:`sweep_stale` removes too)."""
    root = staging_root(datasets)
    try:
        info = os.lstat(root)
        if stat.S_ISDIR(info.st_mode) and info.st_dev == os.stat(datasets).st_dev:
            return root
    except OSError:
        pass
    return Path(datasets)


def free_deleting_name(folder: Path, version: str) -> Path | None:
    """The first of ``.deleting-<version>``, ``.deleting-<version>.1`` ... ``.99`` (:data:`DELETING_NAME`) that
    nothing holds in ``folder`` (a stray link or file there is not renamed over, nor an empty folder, which a
    rename replaces; review rev30e: the last name, ``.99``, was never checked), None where all are taken."""
    for suffix in ("", *(f".{n}" for n in range(1, 100))):
        name = Path(folder) / f"{DELETING_PREFIX}{version}{suffix}"
        if not os.path.lexists(name):
            return name
    return None


def open_folders(home: DataHome) -> list[str]:
    """Give the folders on the way to the versions, ``datasets/`` and ``datasets/pickapic/`` (and the staging
    folder beside, :func:`staging_root`), the read and search bits this run's umask gives a new folder where they
    lack them; return a note per folder changed.

    They are made by the first publish, with its umask: after one under umask 077 (0700), every later version
    published under umask 022 (its folder 0755, its files 0644) was out of every other account's reach, though
    a version is readable by whoever its run's umask lets read it (review rev28c). Bits are only added, never
    taken: a version published earlier under a wider umask stays reachable, and a group's write bit set by hand
    on a shared home stays. Only what a publish makes there is touched: a real folder (a symbolic link, a user's
    layout such as ``datasets`` on another disk, is never followed or changed) of this account; the data home
    itself and anything above it are never touched."""
    # read and search only: a write bit would undo a folder locked by hand (0555, to keep a version from
    # retention) and give a group (umask 002) the right to plant or delete versions and `latest` (review rev28f)
    want = 0o555 & ~current_umask()
    notes = []
    for folder in (home.datasets.parent, home.datasets, staging_root(home.datasets)):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:            # missing, a link, a file: not a folder this publish gives modes to
            continue
        try:
            info = os.fstat(fd)
            mode = stat.S_IMODE(info.st_mode)
            if info.st_uid != os.geteuid() or mode & want == want:
                continue
            os.fchmod(fd, mode | want)
            notes.append(f"{folder} had mode {mode:04o}: given {mode | want:04o}, what this run's umask "
                         f"({current_umask():03o}) lets others reach, so its versions are readable as published")
        finally:
            os.close(fd)
    return notes


def open_staging(datasets: Path, version: str) -> Path:
    """``<folder>/.partial-<version>``: made, or resumed from an interrupted run of the same version; ``datasets``
    is the folder the versions are staged in (:func:`open_staging_root`).

    It must be a real folder: a symbolic link there (even a dangling one) or a file is refused with
    :class:`StagingRefused`, and nothing is written or deleted through it (a link would put the version,
    and the clean-up of hidden files, in whatever folder it names, and the rename would move the link
    into place as the version). In a resumed staging every folder the publish writes into must be a real
    folder too: a link or other non-file in it (the publish makes none) is unlinked, the name only, so the
    writers make a real folder afresh; the temporary files of a writer killed mid-write go as well.

    It is made 0700 (no other account enters it until :func:`give_modes` opens the staged version, after its
    manifest is written), and a resumed one keeps its files only where no other account could have written
    them (:func:`_writable_by_others`): one another account could write into (group-writable in a group-shared
    home, or made by another account) is emptied and made afresh, since a file planted there would be
    published and listed in the manifest with its sha256 (review rev25a)."""
    staging = Path(datasets) / f"{STAGING_PREFIX}{version}"
    try:
        os.mkdir(staging, 0o700)     # a setgid parent's bit is kept (mkdir gives it whatever the mode)
        return staging
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(staging).st_mode):
        raise StagingRefused(f"{staging} is {describe(staging)}, not the staging folder a publish makes: nothing "
                             f"was written or deleted through it; remove it (a symbolic link's removal leaves "
                             f"what it names) and publish again")
    others = _writable_by_others(staging)
    if others:
        done = "its files were removed"
        try:
            shutil.rmtree(staging)   # follows no link; refuses a link at the top
        except OSError as exc:
            # another account's 0700 staging (a group member's publish killed mid-way) cannot be emptied by this
            # account: it is moved aside, as retention hides a version, and the version written afresh (rev25g)
            done = _set_aside(staging, version, others, exc)
        try:
            os.mkdir(staging, 0o700)
        except OSError as exc:
            raise StagingRefused(f"{staging}, an interrupted publish's staging, {others}: it was {done}, but could "
                                 f"not be made afresh ({exc.strerror or exc}): nothing was published") from None
        print(f"publish: {staging}, an interrupted publish's staging, {others}: {done} and the version is written "
              f"afresh", file=sys.stderr, flush=True)
        return staging
    for root, dirs, files in os.walk(staging):       # followlinks=False: a linked folder is listed, never entered
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                if name.startswith("."):
                    shutil.rmtree(path)
                    dirs.remove(name)
            elif name.startswith(".") or not stat.S_ISREG(info.st_mode):
                os.unlink(path)
                if name in dirs:
                    dirs.remove(name)
    return staging


def _set_aside(staging: Path, version: str, others: str, error: OSError) -> str:
    """Rename the untrusted staging ``staging``, which this account could not remove (``error``), to a free
    ``.deleting-<version>[.N]`` beside it, the name retention hides a version under (:data:`DELETING_NAME`), so
    :func:`sweep_stale` removes it at a later publish (one of an account that may: a note until then) and it
    never blocks this one; the rename needs only the datasets folder, which a group-shared home's group writes.
    What it says was done; :class:`StagingRefused` when it cannot be renamed either (review rev25g)."""
    aside = free_deleting_name(staging.parent, version)   # under the publish lock: nothing there is renamed over
    try:
        if aside is None:
            raise FileExistsError(f"no free {DELETING_PREFIX}{version}[.N] name to move it to")
        os.rename(staging, aside)
    except OSError as exc:
        raise StagingRefused(f"{staging}, an interrupted publish's staging, {others}, so its files cannot be "
                             f"trusted, and it could neither be removed ({error.strerror or error}) nor moved aside "
                             f"({exc.strerror or exc}): nothing was published; let its owner publish again or remove "
                             f"it") from None
    return (f"it could not be removed ({error.strerror or error}), so it was moved aside to {aside.name} (removed by a "
            f"later publish that may, e.g. its owner's)")


def _writable_by_others(staging: Path) -> str | None:
    """Why another account could have written into the staging folder ``staging`` (a real folder), or None:
    it or a folder under it belongs to another account or is group- or world-writable, or a file in it belongs
    to another account. A top no other account may enter (0700, this account's) holds only this account's
    files, whatever the modes below it."""
    me = os.geteuid()
    info = os.lstat(staging)
    if info.st_uid != me:
        return f"belongs to another account (uid {info.st_uid})"
    if not info.st_mode & 0o077:
        return None
    if info.st_mode & 0o022:
        return f"is writable by other accounts (mode {stat.S_IMODE(info.st_mode):04o})"
    for root, dirs, files in os.walk(staging):       # followlinks=False: a linked folder is listed, never entered
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if info.st_uid != me:
                return f"holds {os.path.relpath(path, staging)} of another account (uid {info.st_uid})"
            if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022:
                return (f"has a folder {os.path.relpath(path, staging)} writable by other accounts "
                        f"(mode {stat.S_IMODE(info.st_mode):04o})")
    return None


def give_modes(root: Path, fsync: bool) -> int:
    """Give every folder and file of a version (or of its staging) this account owns the modes this run
    gives new ones (``0777`` / ``0666`` ``& ~umask``, a folder's setgid bit kept); return how many had another.

    A version published again under a more permissive umask would otherwise keep the modes of the run that
    wrote it (0600 under umask 077), and ``latest`` would name files other accounts cannot read. Files are
    given their mode as :func:`reuse.give_mode` does (a file shared with another version is copied, not
    chmodded). Another account's files and folders are left as they are: not this run's to change. No link
    is followed."""
    mask = current_umask()
    changed = 0
    for top, _, files in os.walk(root):             # followlinks=False: every top is a real folder
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            # the permission bits only: a folder's setgid bit (a group-shared home's) is kept (review rev25a)
            if info.st_uid == os.geteuid() and info.st_mode & 0o777 != 0o777 & ~mask:
                os.fchmod(fd, (0o777 & ~mask) | (info.st_mode & stat.S_ISGID))
                changed += 1
        finally:
            os.close(fd)
        for name in files:
            path = Path(top) / name
            if os.lstat(path).st_uid == os.geteuid():
                changed += give_mode(path, 0o666 & ~mask, fsync)
    if changed:
        fsync_tree(root, fsync)
    return changed


def remove_mode_copies(version_dir: Path, files: dict) -> list[str]:
    """Remove from a complete version the temporary copies a :func:`give_modes` killed mid-copy left: the
    ``.<file>.<hex>.tmp`` names :func:`formats.files.create_temp` gives a copy of a file the manifest (``files``)
    lists in the same folder; return them (relative). Called before the version is verified again, so the rerun
    of a publish killed there recovers by itself (review rev24c: every rerun failed with ``ManifestMismatch``
    on the leftover, and ``latest`` kept the files other accounts could not read). Only regular files and
    links at such names are removed (a link is never followed); nothing else is touched."""
    by_folder: dict[str, set[str]] = {}
    for rel in files:
        folder, _, name = rel.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    by_folder.setdefault("", set()).add(MANIFEST_FILE)
    removed = []
    for folder, names in sorted(by_folder.items()):
        if folder and not real_folder(version_dir, folder):     # a linked folder is never entered
            continue
        top = version_dir / folder if folder else version_dir
        try:
            with os.scandir(top) as entries:
                leftovers = sorted(entry.name for entry in entries
                                   if (match := TEMP_COPY.fullmatch(entry.name)) and match.group(1) in names)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in leftovers:
            path = top / name
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                os.unlink(path)
                removed.append(f"{folder}/{name}" if folder else name)
    return removed


# formats.files.create_temp's name for a temporary copy of NAME: .NAME.<12 hex>.tmp
TEMP_COPY = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")


def check_version_identity(final: Path, expected: dict) -> None:
    """Raise :class:`StagingRefused` unless the manifest of the complete folder ``final`` records ``expected``
    (:func:`pipelines.publish.manifest.identity`: the format, the version and the sources this publish would
    record), so a folder at the new version's name that holds another version (a backup restored under the wrong
    name, a copy) is never switched to as that version (review rev25d: it was, and the publish record then said
    ``latest`` held the new ``split_pairs``). Nothing is written or deleted."""
    try:
        recorded = read_manifest(final)
    except (OSError, ValueError) as exc:
        raise StagingRefused(f"{final} is not a version a publish made ({exc}): nothing was published and it was "
                             f"left as it is; move it aside and publish again") from None
    expected = json.loads(json.dumps(expected))          # as the manifest's JSON holds it
    differs = sorted(key for key, value in expected.items() if recorded.get(key) != value)
    if differs:
        raise StagingRefused(
            f"{final} holds a {MANIFEST_FILE} that is not this version's (its {', '.join(differs)} differ; it names "
            f"version {recorded.get('version')!r}): another version's files at this version's name (a backup "
            f"restored under the wrong name, a copy), not what this publish makes of its inputs. Nothing was "
            f"published and it was left as it is; move it aside (its files may be hard links shared with other "
            f"versions: never edit them in place) and publish again")


# Files that operating systems and file-sharing drop into a folder someone merely browsed (review rev25e): macOS
# Finder's .DS_Store and AppleDouble ._<name> (over SMB/NFS/on a FAT disk), Windows Explorer's Thumbs.db and
# desktop.ini, and the name the Linux NFS client gives a file removed while a reader still holds it open. They do
# not make a version "not made by the publish" (it would be kept for good and disk grow without bound); retention
# deletes them with the version. Only regular files at exactly these names; anything else still keeps the version.
# A ._<name> file is AppleDouble only when its first bytes say so (formats.files.is_apple_double, review rev25i: a
# user's ._results.parquet was deleted with the version): :func:`system_file` checks both. The NFS name is exactly
# the one fs/nfs/unlink.c nfs_sillyrename prints, ".nfs" "%0*llx%0*x": 16 lowercase hex digits of the file id and 8
# of a counter (review rev38a, noticed: any .nfs<hex> was one, so a user's .nfscafe was deleted with the version);
# another client's name (BSD's .nfs.<ticks>.<pid>.4) keeps the version, with a note.
SYSTEM_FILE = re.compile(r"\.DS_Store|\._.+|Thumbs\.db|desktop\.ini|\.nfs[0-9a-f]{24}")


def system_file(name: str, info: os.stat_result, dir_fd: int | None = None) -> bool:
    """Whether the entry ``name`` (of ``lstat`` ``info``, in the folder open as ``dir_fd``, or a path) is a file an
    operating system dropped (:data:`SYSTEM_FILE`): a regular file at such a name, and for ``._<name>`` one that
    begins with the AppleDouble magic (review rev25i)."""
    if not SYSTEM_FILE.fullmatch(os.path.basename(name)) or not stat.S_ISREG(info.st_mode):
        return False
    if os.path.basename(name).startswith("._"):
        return is_apple_double(name, dir_fd=dir_fd, follow_symlinks=False)
    return True


def _walk(folder: str | os.PathLike) -> Iterator[tuple[str, os.stat_result, int]]:
    """:func:`walk_tree`, each entry also with the descriptor of the open folder that holds it (valid until the
    next entry is asked for). Folders are entered by name relative to the open parent (``O_NOFOLLOW``, checked to be
    the folder that was listed) and left through ``..`` (checked to be the parent that was entered): one descriptor
    open at a time and no path longer than one name, whatever the depth (review rev25i: full paths beyond PATH_MAX
    raised ENAMETOOLONG)."""
    fd = _open_folder(folder, None, None)
    try:
        top = os.fstat(fd)
        # (path relative to folder, (dev, ino), its sorted entries, index of the next entry)
        stack: list[list] = [["", (top.st_dev, top.st_ino), _listing(fd), 0]]
        while stack:
            frame = stack[-1]
            rel, _, found, index = frame
            if index < len(found):
                frame[3] = index + 1
                name, info = found[index]
                path = f"{rel}/{name}" if rel else name
                yield path, info, fd
                if stat.S_ISDIR(info.st_mode):
                    child = _open_folder(name, fd, (info.st_dev, info.st_ino))
                    os.close(fd)
                    fd = child
                    stack.append([path, (info.st_dev, info.st_ino), _listing(fd), 0])
                continue
            stack.pop()
            if stack:
                parent = _open_folder("..", fd, stack[-1][1])
                os.close(fd)
                fd = parent
    finally:
        os.close(fd)


def walk_entries(folder: str | os.PathLike) -> Iterator[tuple[str, os.stat_result, int]]:
    """:func:`walk_tree`, each entry with the descriptor of the open folder that holds it (valid until the next entry
    is asked for: :func:`system_file` reads an AppleDouble's first bytes through it)."""
    return _walk(folder)


def walk_tree(folder: str | os.PathLike) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``folder`` but the folder itself, as (its path relative to ``folder``, its ``lstat``),
    parents before children (depth first), names sorted in each folder; no link is followed. Iterative (an explicit
    stack, not ``os.walk``, which recurses once per folder level on Python 3.11: a tree 1,000 folders deep raised
    RecursionError out of retention after the switch, review rev25e), and relative to open folders, never by full
    path (a tree deeper than PATH_MAX raised ENAMETOOLONG and its version was kept for good, review rev25i). An
    OSError (a folder that cannot be listed, one replaced meanwhile) is raised to the caller."""
    for path, info, _ in _walk(folder):
        yield path, info


def previous_versions(home: DataHome, version: str, walks: VersionWalks | None = None) -> list[Path]:
    """Complete versions to reuse shards from (:mod:`pipelines.publish.reuse` links them): the one ``latest`` names first, then newest first.

    Only versions a publish made and recorded: each one retention too takes for a version a publish made
    (:func:`pipelines.publish.versions.made_by_publish`: its manifest names the folder's own name, it holds only
    the files its manifest lists, no link), and, where the publish history exists
    (:func:`formats.dataset.read_history`), one it names or the one ``latest`` names. Review rev36e: a folder
    named like a version that held a manifest was a source, also a copy of another version restored under this
    name, which retention reports as "not a version a publish made", its tars then trusted by their size.
    ``walks``: the publish's :class:`VersionWalks` (each version walked once a publish)."""
    judge = walks if walks is not None else made_by_publish
    current = latest_version(home.datasets)      # a relative or an absolute link (review rev25d)
    history = read_history(home.datasets)
    recorded = None if history is None else {*history, current}
    names = [v for v in reversed(list_versions(home)) if v != version and (recorded is None or v in recorded)]
    if current in names:
        names.remove(current)
        names.insert(0, current)
    return [home.datasets / name for name in names if judge(home.datasets / name) is None]



def made_by_publish(folder: Path, marks: list[tuple] | None = None,
                    present: dict[str, os.stat_result] | None = None) -> str | None:
    """None when ``folder`` (a complete version by its name and manifest) is a version a publish made: its
    manifest names the folder's own name as its version, and it holds only the files its manifest lists (and
    the temporary copies :func:`remove_mode_copies` removes, and the files an operating system drops in a folder
    someone browsed: :data:`SYSTEM_FILE`), as regular files in real folders. Otherwise why not (file names with
    their control characters escaped: review rev25e): a copy of a version under another name, a version a user
    added files to, a link inside it, a tree that cannot be walked.

    ``marks``, when given, gets what the verdict rests on beyond the names it listed (:class:`VersionWalks` checks
    them again): the identity and times of the folder, of its manifest, of every folder in it and of every
    AppleDouble file whose first bytes were read, as (the index in ``marks`` of the folder that holds it, its name,
    its ``lstat``), the folder's own first (``-1, ""``), parents before children. Names, not paths (review rev38a,
    noticed: a path each kept O(d^2) bytes for a chain of folders ``d`` deep, and could not be checked beyond
    PATH_MAX): :func:`_unchanged` checks them relative to open folders. ``present``, when given, gets the files
    :func:`pipelines.publish.manifest.verify_version` would compare with the manifest (all but the folders, the
    manifest and the files an operating system drops), as (path relative to ``folder`` -> ``lstat``); it is
    complete only where the verdict is None."""
    if marks is not None:
        try:
            marks.append((-1, "", os.lstat(folder)))
            marks.append((0, MANIFEST_FILE, os.lstat(folder / MANIFEST_FILE)))
        except OSError:
            marks.append((-1, "", None))           # never taken for unchanged: walked again
    chain = [("", 0)]        # (path, index of its mark) of the folders on the way to the entry walked
    try:
        recorded = read_manifest(folder)
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST_FILE} cannot be read ({exc})"
    if recorded.get("version") != folder.name:
        return f"its {MANIFEST_FILE} names version {recorded.get('version')!r}, not {folder.name!r}"
    files = recorded["files"]
    try:
        for rel, info, dir_fd in _walk(folder):    # iterative, relative to open folders, no link followed
            prefix, _, name = rel.rpartition("/")
            if marks is not None:
                while chain[-1][0] != prefix:
                    chain.pop()
                if stat.S_ISDIR(info.st_mode):
                    marks.append((chain[-1][1], name, info))
                    chain.append((rel, len(marks) - 1))
            if stat.S_ISDIR(info.st_mode):
                continue
            prefix = prefix + "/" if prefix else ""
            temp = TEMP_COPY.fullmatch(name)
            listed = rel == MANIFEST_FILE or rel in files or (temp is not None and (
                prefix + temp.group(1) in files or prefix + temp.group(1) == MANIFEST_FILE))
            if marks is not None and not listed and name.startswith("._"):
                marks.append((chain[-1][1], name, info))   # its first bytes are read: rewritten in place, it is seen
            if not listed and SYSTEM_FILE.fullmatch(name) and stat.S_ISREG(info.st_mode) \
                    and not system_file(name, info, dir_fd):
                return (f"it holds {terminal_text(rel)}, which its {MANIFEST_FILE} does not list (named like macOS's "
                        f"AppleDouble metadata but not beginning as one)")
            if present is not None and rel != MANIFEST_FILE and (rel in files or not SYSTEM_FILE.fullmatch(name)):
                present[rel] = info
            if not listed and not SYSTEM_FILE.fullmatch(name):
                return f"it holds {terminal_text(rel)}, which its {MANIFEST_FILE} does not list"
            if not stat.S_ISREG(info.st_mode):
                return (f"{terminal_text(rel)} in it is {terminal_text(describe(os.path.join(folder, rel)))}, which "
                        f"no publish makes")
    except (OSError, RecursionError) as exc:
        return f"it cannot be looked into whole ({terminal_text(str(exc))})"
    return None


class VersionWalks:
    """:func:`made_by_publish` for one publish, each version walked once: the verdict is kept with what it rests on
    (the ``lstat`` of the folder, its manifest, each folder in it and each AppleDouble file read: ``marks``) and
    given again while all of those are unchanged (device, inode, size, mtime and ctime to the nanosecond; a name
    added, removed or replaced in a folder changes that folder's mtime and ctime), else the version is walked again.

    A publish walked each version twice, for :func:`previous_versions` (under the home's ingest lock, also with
    ``reuse_shards = false``) and for retention (:func:`apply_retention`), ~10 us a file: ~0.7 s a version of
    Pick-a-Pic's ~70,000 files (review rev37c, noticed). :meth:`prime` walks them before the ingest lock and retention
    checks a few ``lstat`` a version. A verdict whose marks were changed less than :data:`SETTLE_S` before its walk
    began is not kept (a change in the same tick of a coarse clock would leave the times as they were)."""

    SETTLE_S = 2.0

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str | None, list[tuple], list[str] | None]] = {}
        self.walked = 0        # how many walks were made (tests, benchmarks)
        self.latest: str | None = None    # the folder ``latest`` named at :meth:`prime`: its files are kept

    def __call__(self, folder: Path) -> str | None:
        key = os.fspath(folder)
        kept = self.seen.get(key)
        if kept is not None and _unchanged(folder, kept[1]):
            return kept[0]
        self.seen.pop(key, None)
        marks: list[tuple] = []
        present: dict[str, os.stat_result] | None = {} if key == self.latest else None
        began = time.time()
        why = made_by_publish(folder, marks, present)
        self.walked += 1
        settled = began - self.SETTLE_S
        if all(info is not None and max(info.st_mtime_ns, info.st_ctime_ns) < settled * 1e9 for *_, info in marks):
            self.seen[key] = (why, marks, list(present) if why is None and present is not None else None)
        return why

    def present(self, folder: Path) -> dict[str, os.stat_result] | None:
        """The files the walk of ``folder`` found, each ``lstat`` afresh now, as
        :func:`pipelines.publish.manifest.verify_version` compares them with the manifest (``present``), while the
        verdict on it is given again (nothing it rests on changed: no name added, removed or replaced in any of its
        folders, so the names are the walk's); None otherwise (walk it). Kept only for the version ``latest`` named
        at :meth:`prime`: an unchanged night verifies that version, which the walk for the reuse sources had just
        walked (fix38d: it was walked twice, ~0.7 s a version of 70,000 files). Only the folders' listings are
        skipped: a file truncated or extended in place since the walk (same name and inode, no folder's times
        changed) is compared by its size now (fix38n, review rev38f: the walk's sizes were given, read before the
        ingest lock's unbounded wait, and a shard truncated meanwhile was verified and switched to). Each file is
        looked at by name in its open folder, as :func:`_unchanged` checks the marks; a file that cannot be is
        None (walk it)."""
        kept = self.seen.get(os.fspath(folder))
        if kept is None or kept[2] is None:
            return None
        marks, files = kept[1], kept[2]
        folders = {"": 0}          # a folder's path relative to ``folder`` -> the index of its mark
        paths = {0: ""}
        for index, (parent, name, info) in enumerate(marks):
            if index and info is not None and stat.S_ISDIR(info.st_mode) and parent in paths:
                paths[index] = f"{paths[parent]}/{name}" if paths[parent] else name
                folders[paths[index]] = index
        names: dict[int, list[tuple[str, str]]] = {}
        for rel in files:
            prefix, _, name = rel.rpartition("/")
            if prefix not in folders:
                return None
            names.setdefault(folders[prefix], []).append((rel, name))
        now: dict[str, os.stat_result] = {}

        def look(index: int, fd: int) -> None:
            for rel, name in names.get(index, ()):
                now[rel] = os.lstat(name, dir_fd=fd)

        return now if _unchanged(folder, marks, look) else None

    def prime(self, home: DataHome) -> None:
        """Walk every complete version of ``home`` now (under the publish lock, before the ingest lock is taken)."""
        current = latest_version(home.datasets)
        self.latest = os.fspath(home.datasets / current) if current else None
        for name in list_versions(home):
            self(home.datasets / name)


def _unchanged(folder: Path, marks: list[tuple], look: Callable[[int, int], None] | None = None) -> bool:
    """Whether every ``lstat`` in ``marks`` (:func:`made_by_publish`) is still that of the same entry, each looked at
    by name in its open folder as :func:`_walk` walks: a folder entered without following a link and only where it
    is the marked one, left through ``..`` checked to be its parent; one descriptor open at a time, no path longer
    than one name (review rev38a, noticed: by full path, a chain deeper than PATH_MAX failed with ENAMETOOLONG at
    every check, and its version was walked again each time). ``look(index, fd)``, when given, is called once for
    each folder of ``marks`` (by its index) once it is checked and open as ``fd`` (:meth:`VersionWalks.present`); an
    OSError it raises makes the answer False."""
    if not marks or any(info is None for *_, info in marks):
        return False
    try:
        fd = _open_folder(folder, None, (marks[0][2].st_dev, marks[0][2].st_ino))
    except OSError:
        return False
    chain = [0]              # the marks of the folders from ``folder`` to the one open as ``fd``
    try:
        for index, (parent, name, info) in enumerate(marks):
            if index:
                while chain[-1] != parent:
                    chain.pop()
                    up = _open_folder("..", fd, (marks[chain[-1]][2].st_dev, marks[chain[-1]][2].st_ino))
                    os.close(fd)
                    fd = up
            now = os.lstat(name, dir_fd=fd) if index else os.fstat(fd)
            if (now.st_dev, now.st_ino, now.st_mode, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
                    (info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns):
                return False
            if index and stat.S_ISDIR(info.st_mode):
                child = _open_folder(name, fd, (info.st_dev, info.st_ino))
                os.close(fd)
                fd = child
                chain.append(index)
            if look is not None and (not index or stat.S_ISDIR(info.st_mode)):
                look(index, fd)
    except (OSError, IndexError):
        return False
    finally:
        os.close(fd)
    return True


def apply_retention(home: DataHome, keep: int, notes: list[str] | None = None,
                    walks: VersionWalks | None = None) -> list[str]:
    """Delete the complete versions a publish made beyond the newest ``keep`` (never the one ``latest`` reaches,
    however the link is written: :func:`formats.dataset.latest_version`); return the versions deleted. What was
    left alone, and why, goes to ``notes`` (every name in them with its control characters escaped:
    :func:`formats.text.terminal_text`, review rev25e).

    Only versions a publish made (:func:`made_by_publish`) are deleted or counted among the ``keep``: a folder
    named like a version whose manifest names another version (a user's copy), or that holds files its manifest
    does not list (a user's notes; not the files an operating system drops, :data:`SYSTEM_FILE`), is left as it is
    and named in ``notes`` (review rev25d: it was deleted first, before any real old version). A version is
    renamed ``.deleting-<version>`` in the staging folder beside the versions (it disappears at once; review
    rev28c put the stagings there for the same reason), then removed (:func:`remove_folder`: a deep tree
    never raises RecursionError here); what cannot be renamed (EACCES/EPERM: another account's version on a
    shared home) stays a version, and what cannot be removed whole once renamed (EBUSY: a file a reader still
    holds open on NFS) stays hidden, each with a note: the publish never fails on it after its switch, and the
    next publish tries again (:func:`sweep_stale`), as the model runs' retention does.

    A version a reader holds (a shared ``flock`` on its folder: :func:`formats.dataset.hold_for_reading`, taken by
    the trainer, the evaluation, ``pickapic query`` and ``export``, or by another tool's ``flock -s``) is kept, with
    a note, beyond ``keep`` while it is held, and deleted by the first publish after it is free (review rev26b: a
    training of ``latest`` lasting past the retention window failed with FileNotFoundError). The exclusive lock
    retention takes instead, without waiting (:func:`_lock_for_deletion`), is held across the rename and the
    removal, so a reader that resolved the version just before finds it gone once it holds the lock
    (:class:`formats.dataset.VersionGone`, or `latest` resolved again), never half removed.

    ``walks``: the publish's :class:`VersionWalks`, whose verdicts of :func:`previous_versions` are given again for
    the versions unchanged since (each version walked once a publish).

    Nothing is deleted, with a note, while the publish history (:func:`formats.dataset.read_history`) does not end
    with the version ``latest`` names, as every switch leaves it: the order of the versions is then not known
    (fix38n, review rev38f: a switch made without writing the history had retention delete the version ``latest``
    named until then before older ones)."""
    notes = [] if notes is None else notes
    current = latest_version(home.datasets)
    history = read_history(home.datasets)
    if current and history is not None and history[-1:] != [current]:
        # fix38n (review rev38f): a history that does not end with latest's version (the switch went on without
        # writing it) would order every version it does not name, latest's until then among them, as the oldest
        notes.append(terminal_text(
            f"retention deleted nothing: the publish history {history_file(home.datasets)} does not end with the "
            f"version `latest` names ({current}), so which versions are the oldest is not known; the next publish "
            f"that writes the history deletes what is beyond keep_versions"))
        return []
    made = []
    for name in list_versions(home):
        if name == current:
            continue
        why = (walks if walks is not None else made_by_publish)(home.datasets / name)
        if why is None:
            made.append(name)
        else:
            notes.append(terminal_text(
                f"{home.datasets / name} is not a version a publish made ({why}): retention left it as it is and "
                f"does not count it among keep_versions; move it out of {home.datasets} if it is yours"))
    doomed = made[: max(0, len(made) - (keep - 1 if current else keep))]
    deleted = []
    for name in doomed:
        free, fd = _lock_for_deletion(home.datasets / name, notes)
        if not free:
            continue
        try:      # the lock is held across the rename and the removal: no reader starts on it meanwhile
            if _delete_version(home.datasets, name, notes):
                deleted.append(name)
        finally:
            if fd is not None:
                os.close(fd)
    return deleted


def _lock_for_deletion(version: Path, notes: list[str]) -> tuple[bool, int | None]:
    """(whether retention may delete the version folder ``version``, the descriptor holding the exclusive
    ``flock`` it deletes it under), the lock taken without waiting. (False, None), with a note, where a reader
    holds its shared lock (:func:`formats.dataset.hold_for_reading`: a training, a query or an export reading it,
    or another tool's ``flock -s``) or it cannot be opened to look: the version is kept, and a later publish
    deletes it once free. (True, None) where this file system has no ``flock`` on folders (some NFS and FUSE
    mounts): it is deleted unlocked, as before (noted)."""
    try:
        fd = os.open(version, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        notes.append(terminal_text(f"retention could not delete version {version.name} ({exc}: it cannot be opened "
                                   f"to check that no reader holds it): left in place; the next publish tries again"))
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = holders_text(lock_holders(fd))
        os.close(fd)
        notes.append(terminal_text(
            f"version {version.name} kept: in use by a reader ({holders}: a training, query or export reading it, "
            f"or another tool's flock -s, holds a shared lock on {version}); it is deleted by a later publish once "
            f"no reader holds it"))
        return False, None
    except OSError as exc:
        os.close(fd)
        notes.append(terminal_text(
            f"version {version.name} deleted without checking for readers: this file system has no flock on "
            f"folders ({exc.strerror or exc}), so a reader still on it may fail"))
        return True, None
    return True, fd


def _delete_version(datasets: Path, name: str, notes: list[str]) -> bool:
    """Rename the version ``name`` to ``.deleting-<version>`` in the staging folder beside the versions
    (:func:`open_staging_root`; among the versions where that is on another file system): it disappears at once,
    then is removed; whether it left the versions (a note for what was left).

    It was hidden among the versions until December 2026: a consumer syncing the versions' folder while it was
    being removed met a tree losing its files (rsync's "vanished" errors), and one a reader held open on NFS
    (EBUSY) stayed there, hidden, until the next publish."""
    try:
        root = open_staging_root(datasets)
    except (OSError, StagingRefused) as exc:     # a link or a file at its name: not used, as a publish refuses it
        notes.append(terminal_text(f"retention could not delete version {name} ({exc}): left in place; the next "
                                   f"publish tries again"))
        return False
    hidden = free_deleting_name(root, name)   # what is there (a stray link, file or folder) is not renamed over
    try:
        if hidden is None:
            raise FileExistsError(f"no free {DELETING_PREFIX}{name}[.N] name in {root} to hide it under")
        os.rename(datasets / name, hidden)  # disappears atomically, then goes
    except OSError as exc:
        notes.append(terminal_text(f"retention could not delete version {name} ({exc}): left in place; the next "
                                   f"publish tries again"))
        return False
    try:
        remove_folder(hidden)      # a deep tree raises no RecursionError (review rev25e)
    except (OSError, RecursionError) as exc:
        notes.append(terminal_text(
            f"version {name} was deleted from the versions but {hidden} could not be removed whole ({exc}: on "
            f"NFS, a file a reader still holds open): left as it is (hidden); the next publish removes it"))
    return True


def publish_lock_file(home: DataHome) -> Path:
    """The lock file of the home's publish stage (``.locks/publish.lock``)."""
    return home.locks / "publish.lock"


@contextlib.contextmanager
def publish_lock(home: DataHome, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """One publish at a time per data home; a second one says so through ``log`` (default stderr) and waits
    for the first.

    The lock file is ``HOME/.locks/publish.lock`` (:mod:`formats.locks`): opened without following a link and
    never written unless it holds nothing but a pid, so a link, a hard link, a FIFO or another program's file
    at its path is refused, untouched. It was ``datasets/pickapic/.publish.lock`` until December 2026, opened
    by ``open(..., "a+")``, which followed a symbolic link planted there and created the file it pointed to,
    wherever that was, and sat among the published versions that consumers sync."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    path = publish_lock_file(home)
    waiting_since: list[float] = []

    def busy(holder: str) -> None:
        log(f"waiting for another publish on this home (pid {holder} holds {path})")
        waiting_since.append(time.monotonic())

    def old_busy(old: Path) -> None:
        log(f"waiting for a publish of the code before December 4, 2026 on this home (it holds {old})")
        waiting_since.append(time.monotonic())

    with hold_lock(path, "the publish stage", busy), _hold_old_publish_lock(home, old_busy):
        if waiting_since:
            log(f"publish lock taken after {time.monotonic() - waiting_since[0]:.1f} s of waiting")
        yield


OLD_PUBLISH_LOCK = ".publish.lock"    # in datasets/pickapic/: the publish lock of code before December 4, 2026


@contextlib.contextmanager
def _hold_old_publish_lock(home: DataHome, busy: Callable[[Path], None]) -> Iterator[None]:
    """Also hold the publish lock of the code before the move to ``.locks/`` while it exists, so a Dagster
    daemon or code server still running that code (started before an upgrade) and this one never publish at
    once. Only a regular file with one name is locked, opened without following a link, without creating it
    and without writing to it (the old code created it empty with ``open(.., "a+")``); anything else there is
    left alone. Once no process runs the old code, the file may be deleted."""
    try:
        fd = os.open(home.datasets / OLD_PUBLISH_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd < 0:          # yielded outside the except block: an error of the publish must not carry the
        yield           # FileNotFoundError of the absent old lock as its context (review rev24c)
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy(home.datasets / OLD_PUBLISH_LOCK)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fsync_tree(root: Path, enabled: bool) -> None:
    """fsync every directory under ``root`` (files were fsynced as they were written)."""
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        fsync_dir(path, enabled)
