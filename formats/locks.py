"""The lock files of a data home: ``.build.lock`` and ``.locks/`` (never under the disposable ``cache/``).

Each lock is an exclusive ``flock`` on a small file that holds its holder's pid. The file must outlive every
holder: a lock file deleted while held (say with ``cache/``, which the README calls disposable) lets the next
process create a new one, another inode, and lock it at once beside the holder. So they live beside the
home's build lock, in folders no clean-up removes.

Opening one must not write into a file the tool did not create: :func:`open_lock_file` follows no link,
never blocks on a FIFO, and refuses anything but a regular file with one name (a hard link of another
program's pid file at the lock path would otherwise be truncated and get our pid) in a real folder (a link at
``.locks`` would put the locks wherever it points); :func:`record_holder` replaces nothing but a pid.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from formats.files import account_name


class LockFileRefused(ValueError):
    """Something at a lock file's path that the tool did not create (the message says what, and what to do)."""


_PID_RECORD = re.compile(rb"[0-9]*\n?")


def open_lock_file(path: Path, what: str, *, linked_folder: bool = False) -> int:
    """Open (creating it and its folder) the lock file ``path`` for reading and writing, or raise
    :class:`LockFileRefused` naming ``what`` it locks; the caller closes the descriptor (which releases
    its lock). Nothing is written here: no ``O_TRUNC``, so a refused file keeps its bytes.

    The lock file's folder is opened first, and the file relative to it, so nothing is created through a link
    there: the tool's own ``HOME/.locks`` must be a real folder (a symbolic link, even a dangling one, or a
    file there is refused); otherwise every stage would create and lock files wherever it points. Only
    ``linked_folder`` (the build lock's folder, the home root itself, which may be a link to another disk)
    lets the folder's path be followed."""
    folder = path.parent
    if linked_folder:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):   # whatever is there is checked below, without following it
            os.mkdir(folder)
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                            | (0 if linked_folder else os.O_NOFOLLOW))
    except OSError as exc:
        raise LockFileRefused(f"cannot lock {what}: {folder}: {exc.strerror or exc} (the lock files' folder must be a "
                              "real folder, not a symbolic link or a file; remove what is there)") from None
    try:
        if not stat.S_ISDIR(os.fstat(folder_fd).st_mode):
            raise LockFileRefused(f"cannot lock {what}: {folder} is not a folder (remove what is there)")
        try:
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666,
                         dir_fd=folder_fd)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise LockFileRefused(f"cannot lock {what}: {path}: {exc.strerror or exc}: the data home is on a "
                                      "file system mounted read-only here; mount it read-write to build") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                # the owner's own lock file, or a folder this account may not write: never "remove it" (deleting a
                # held lock file lets a second build run beside the first)
                who = account_name() or f"uid {os.geteuid()}"
                raise LockFileRefused(f"cannot lock {what}: {path}: {exc.strerror or exc}: this account ({who}) "
                                      f"may not write there; run it as the data home's owner, or give this account "
                                      "write access to the home (README, Permissions)") from None
            raise LockFileRefused(f"cannot lock {what}: {path}: {exc.strerror or exc} (a symbolic link or something "
                                  "else is there; remove it)") from None
    finally:
        os.close(folder_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LockFileRefused(f"cannot lock {what}: {path} is not a regular file (remove it)")
        if info.st_nlink != 1:
            # O_NOFOLLOW sees symbolic links only; a hard link is the other program's file itself
            raise LockFileRefused(f"cannot lock {what}: {path} has {info.st_nlink} names (a hard link: the file "
                                  "may be another program's, and locking writes a pid into it); remove this name")
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(fd: int) -> str:
    """The pid a lock file's holder recorded, or ``unknown``."""
    holder = os.pread(fd, 32, 0).strip().decode("ascii", "replace")
    return holder if holder.isdigit() else "unknown"


def record_holder(fd: int, path: Path, what: str) -> None:
    """Replace the pid in a lock file this process holds by its own; refuse (:class:`LockFileRefused`) a file
    that holds anything else, untouched."""
    record = os.pread(fd, 33, 0)
    if len(record) > 32 or not _PID_RECORD.fullmatch(record):
        raise LockFileRefused(f"cannot lock {what}: {path} holds something this tool did not write (it only "
                              "writes its pid there); move it away")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def try_lock(fd: int, mode: int = fcntl.LOCK_EX) -> bool:
    """``flock`` ``fd`` (``LOCK_EX`` or ``LOCK_SH``) without waiting: True when taken, False when another holder
    has it; any other error is raised."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


GRACE_POLL_S = 0.01   # how often :func:`hold_lock` tries again within its grace


@contextlib.contextmanager
def hold_lock(path: Path, what: str, on_busy: Callable[[str], None], *, linked_folder: bool = False,
              grace_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (:func:`open_lock_file`) for the ``with`` block,
    its holder's pid recorded in it. When another process holds it (still, after trying again for ``grace_s``
    seconds: a lock that others probe by taking it shared for an instant), ``on_busy(holder_pid)`` decides: it
    raises to refuse, or returns to wait for the lock. Closing the file at the end releases the lock (the
    kernel also drops it when the holder dies, killed or not, unless a process it forked still has the file
    open: a pool's workers forked under a lock must die with it, :func:`formats.processes.start_worker` /
    ``worker_pool``; review rev33e)."""
    fd = open_lock_file(path, what, linked_folder=linked_folder)
    try:
        deadline = time.monotonic() + grace_s
        taken = try_lock(fd)
        while not taken and time.monotonic() < deadline:
            time.sleep(GRACE_POLL_S)
            taken = try_lock(fd)
        if not taken:     # outside an except: a refusal carries no BlockingIOError context
            on_busy(lock_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        record_holder(fd, path, what)
        yield
    finally:
        os.close(fd)


# Writers that hold no stage lock of their own (the disposable caches an ingest, a plan and a check each write: the
# raw-day digests, the raw image-uid index) hold this file's lock shared while their temporary file exists; the
# ingest sweeps what killed ones left only while it holds it exclusively (review rev29b)
CACHE_WRITERS_LOCK = "cache-writers.lock"


@contextlib.contextmanager
def writing_shared(path: Path, what: str) -> Iterator[bool]:
    """Hold a shared ``flock`` on the lock file ``path`` for the ``with`` block (waiting while a sweep holds it
    exclusively), for a writer whose temporary files :func:`sweep_exclusively` sweeps. Yields whether it is held:
    False when the lock file cannot be opened (:func:`open_lock_file` refused it, a folder this account may not
    write); the caller then writes nothing its sweep could remove under it (a cache: it is written another time).
    The pid in the file is not touched (many hold it at once)."""
    try:
        fd = open_lock_file(path, what)
    except (LockFileRefused, OSError):
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)


def sweep_exclusively(path: Path, what: str, sweep: Callable[[], list[str]]) -> list[str]:
    """Run ``sweep`` (it removes the temporary files of the writers that write under :func:`writing_shared` of
    ``path``; returns notes) while holding that lock exclusively, so no such writer has a temporary file now.
    Never waits: while one writes (or the lock file cannot be opened) nothing is swept now, the next sweep does it.
    ``sweep`` must not write under the lock itself (it would wait for itself)."""
    try:
        fd = open_lock_file(path, what)
    except (LockFileRefused, OSError):
        return []
    try:
        return sweep() if try_lock(fd) else []
    finally:
        os.close(fd)


# a scratch folder made by :func:`held_scratch_folder` and not yet held and named (microseconds), left by a process
# killed in between: swept once it is this old, so a running process's is never taken
FRESH_SCRATCH_AGE_S = 3600

# the empty file :func:`held_scratch_folder` makes in each of its folders before it names it: the sweep removes only a
# folder holding it, never one another program made under a matching name (a scratch folder reached through a link
# to a shared scratch disk: review rev33a)
SCRATCH_MARKER = ".pickapic-scratch"


def _make_marked_folder(scratch: Path, prefix: str) -> Path:
    """Make ``scratch/.new-PREFIXXXXX`` (a random name; mode 0777 less the umask, like every folder the tool makes,
    so the other members of a group-shared home can sweep it once its maker is killed: review rev33a) holding
    :data:`SCRATCH_MARKER`."""
    for _ in range(100):
        fresh = scratch / f".new-{prefix}{os.urandom(6).hex()}"
        try:
            os.mkdir(fresh, 0o777)
        except FileExistsError:
            continue
        except FileNotFoundError:         # its folder was removed (an empty .staging the feature stage tidies)
            _make_scratch(scratch)
            continue
        try:
            os.close(os.open(fresh / SCRATCH_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o666))
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(fresh)
            raise
        return fresh
    raise FileExistsError(errno.EEXIST, f"no free scratch folder name in {scratch}")


def _remove_folder(path: Path) -> bool:
    """Remove the folder ``path`` and what it holds (following no link), as far as this account may; whether it is
    gone (a folder of another account's that could not be emptied is not reported as removed). Never raises for what
    the folder holds: :func:`formats.trees.remove_tree` walks without recursion and one descriptor at a time, where
    ``shutil.rmtree`` raised ``RecursionError`` (which its ``ignore_errors`` does not cover) out of every later build
    on a planted marked folder 1,200 levels deep (review rev33k). Its :data:`SCRATCH_MARKER` is removed last, only
    once the rest is gone, so a folder that could not be emptied (a subfolder not writable for now, a ``.nfsXXXX``
    file a reader holds) stays marked and a later sweep removes it (review rev33t: it lost its marker first and was
    then left for good, taken for another program's); a file system mounted inside is left whole."""
    from formats.trees import remove_tree

    try:
        remove_tree(path, last=SCRATCH_MARKER)
    except OSError:
        pass                              # what could be removed is; the rest stays (not reported as removed)
    return not os.path.lexists(path)


class ScratchFolderUnusable(OSError):
    """The folder :func:`held_scratch_folder` makes its folders in cannot be used: no folder and none can be made
    there (a symbolic link to nothing, as a scratch disk not mounted or a target a temp cleaner removed; a loop of
    links; a file at its path, or at a folder's above it), or one nothing can be made in (a read-only or full disk,
    another account's folder: review rev36d). The message (one line) says what is there (a link's target escaped,
    :func:`formats.settings.quoted`) or which error the system gave, and what to do; ``errno`` is that error's
    number where there is one."""


# the errors of making a folder that say the scratch folder is there (or could be) but nothing can be made in it: a
# read-only disk (ext4's errors=remount-ro), a full one (space or inodes), a quota, another account's folder
_UNWRITABLE = {errno.EROFS: "a read-only disk", errno.ENOSPC: "a full disk (space or inodes)",
               errno.EDQUOT: "the disk quota used up", errno.EACCES: "not writable for this account",
               errno.EPERM: "not writable for this account"}

# what a link target a message shows may hold of it (a longer one is cut, its length said)
_SHOWN_TARGET = 240


def _shown_target(link: Path) -> str:
    """The target of the link ``link`` as a one-line message shows it: escaped (a newline, a terminal escape),
    never raw (review rev36d: any member of a group-shared home may make the link)."""
    from formats.text import quoted

    try:
        return quoted(os.readlink(link), _SHOWN_TARGET)
    except OSError:
        return "(a target that cannot be read)"


def _in_the_way(path: Path) -> str | None:
    """What at ``path`` (a link, not followed) makes it no folder, as a message says it, or None: a link to
    nothing, a loop of links (a self-link: review rev36d, it was said to lead to a folder "which does not
    exist"), a link to a file, a file."""
    if os.path.islink(path):
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                return None
            return (f"{path} is a symbolic link to {_shown_target(path)}, which is not a folder: point it at a "
                    "folder or remove the link")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return (f"{path} is a symbolic link to {_shown_target(path)}, a loop of links that never reaches a "
                        "folder: point it at a folder or remove the link")
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return (f"{path} is a symbolic link to {_shown_target(path)}, which does not exist (a scratch disk "
                        "not mounted, or its folder removed): mount it, make the folder it names, or remove the link")
            return f"{path} is a symbolic link to {_shown_target(path)}, which cannot be reached: {_errno_text(exc)}"
    if os.path.lexists(path) and not os.path.isdir(path):
        return f"{path} is not a folder: remove what is there"
    return None


def _errno_text(exc: OSError) -> str:
    """An error's number and text as a message names them: ``[Errno 30] Read-only file system (EROFS)``."""
    name = errno.errorcode.get(exc.errno or 0)
    return f"[Errno {exc.errno}] {exc.strerror or os.strerror(exc.errno or 0)}" + (f" ({name})" if name else "")


def scratch_unusable(scratch: Path, exc: OSError) -> ScratchFolderUnusable | None:
    """The :class:`ScratchFolderUnusable` that says why making a folder in (or at) ``scratch`` failed with ``exc``,
    or None for an error that says nothing of the folder (the caller raises ``exc`` itself)."""
    if isinstance(exc, ScratchFolderUnusable):
        return exc
    # a link or a file at scratch or above it (EEXIST, ENOTDIR, ELOOP, ENAMETOOLONG, ...): the lowest one (those under
    # it cannot even be looked at)
    for path in (scratch, *scratch.parents):
        said = _in_the_way(path)
        if said is not None:
            refused = ScratchFolderUnusable(said)
            refused.errno = exc.errno
            return refused
    if exc.errno in _UNWRITABLE:
        refused = ScratchFolderUnusable(
            f"the scratch folder {scratch} cannot be written ({_UNWRITABLE[exc.errno]}): {_errno_text(exc)}; make "
            "it writable, free space on its disk, or make it a link to a folder that is")
        refused.errno = exc.errno
        return refused
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
        refused = ScratchFolderUnusable(f"the scratch folder {scratch} cannot be made: {_errno_text(exc)}")
        refused.errno = exc.errno
        return refused
    return None


def _make_scratch(scratch: Path) -> None:
    """Make the folder ``scratch`` (and those above it); raise :class:`ScratchFolderUnusable` naming what is in the
    way, where ``mkdir`` raised a bare ``FileExistsError`` "File exists" for a dangling link (review rev35b), a bare
    ``NotADirectoryError`` for a file above it and ``ELOOP`` for a loop of links above it (review rev36d, noticed),
    or the system's error (a read-only or full disk: review rev36d) for a folder that cannot be made."""
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        refused = scratch_unusable(scratch, exc)
        if refused is None:
            raise
        raise refused from None


@contextlib.contextmanager
def held_scratch_folder(scratch: Path, prefix: str) -> Iterator[Path]:
    """A folder ``scratch/PREFIXXXXX`` held (exclusive ``flock``) for the ``with`` block and removed after.

    It is made as ``.new-PREFIXXXXX`` (a random name) holding :data:`SCRATCH_MARKER`, held, and only then renamed to
    its sweepable name, so :func:`sweep_scratch_folders` tells a running holder's folder from one a killed process
    left (the ingest's quarantine spills, review rev25f; curation's input snapshots, review rev32k), and both from
    another program's folder of a matching name (review rev33a). Its mode is 0777 less the umask (a group-shared
    home's umask 002 lets another member's sweep remove it; review rev33a: a 0700 folder of a killed build stayed
    for good, with the hard links it held). A ``scratch`` that is no folder (a dangling link: review rev35b) is
    refused with :class:`ScratchFolderUnusable`, so is one nothing can be made in (a read-only or full disk:
    review rev36d, a bare ``OSError`` naming a ``.new-PREFIX...`` folder that was never made), naming the error."""
    try:
        _make_scratch(scratch)
        fresh = _make_marked_folder(scratch, prefix)
    except OSError as exc:
        refused = scratch_unusable(scratch, exc)
        if refused is None or refused is exc:
            raise
        raise refused from None
    fd = os.open(fresh, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)    # just made: nobody else holds it
        folder = scratch / fresh.name.removeprefix(".new-")
        os.rename(fresh, folder)          # named for the sweep only once held
        try:
            yield folder
        finally:
            _remove_folder(folder)
    finally:
        os.close(fd)
        if os.path.lexists(fresh):        # the rename failed
            _remove_folder(fresh)


def _marked(fd: int) -> bool:
    """Whether the folder open at ``fd`` holds :data:`SCRATCH_MARKER` (a regular file, not a link)."""
    try:
        return stat.S_ISREG(os.stat(SCRATCH_MARKER, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def sweep_scratch_folders(scratch: Path, name: re.Pattern[str]) -> list[str]:
    """Remove the folders of ``scratch`` whose names ``name`` matches in full, that hold :data:`SCRATCH_MARKER` and
    that no running process holds (:func:`held_scratch_folder`): what killed processes left; and ``.new-`` + such a
    name (one killed before it held and named its folder) once :data:`FRESH_SCRATCH_AGE_S` old (an empty one, killed
    before its marker was made, too). Links, files, other names and unmarked folders (another program's, say in a
    shared scratch folder ``scratch`` links to: review rev33a) are left alone. Returns the names removed, in order:
    only those that are gone (a folder this account could not empty is not).

    Never raises for what a folder holds (review rev33k: a planted marked folder 1,200 levels deep raised
    ``RecursionError`` out of every later build and ingest): folders are removed without recursion
    (:func:`_remove_folder`), and one that cannot be opened, locked or emptied is left, the others still swept."""
    try:
        names = sorted(os.listdir(scratch))
    except OSError:
        return []
    removed = []
    for entry in names:
        with contextlib.suppress(OSError):   # one folder that cannot be opened, locked or removed: the others still are
            if _sweep_one(scratch, entry, name):
                removed.append(entry)
    return removed


def _sweep_one(scratch: Path, entry: str, name: re.Pattern[str]) -> bool:
    """:func:`sweep_scratch_folders` for the entry ``entry`` of ``scratch``: whether it was removed (and is gone)."""
    import time

    path = scratch / entry
    fresh = entry.startswith(".new-") and name.fullmatch(entry.removeprefix(".new-"))
    if not fresh and not name.fullmatch(entry):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False                      # not a real folder (a link, a file), or another account's private one
    try:
        if fresh:
            if time.time() - os.fstat(fd).st_mtime <= FRESH_SCRATCH_AGE_S:
                return False
            if not _marked(fd):
                with contextlib.suppress(OSError):
                    os.rmdir(path)        # only an empty folder: nothing of anyone's is lost
                return not os.path.lexists(path)
        elif not _marked(fd):
            return False                  # not made by held_scratch_folder
        return try_lock(fd) and _remove_folder(path)   # no running process holds it
    finally:
        os.close(fd)
