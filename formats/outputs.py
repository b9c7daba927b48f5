"""User-given output paths: refuse what the tool did not create.

A path the *user* names (``query --output``, ``export --output``, ``train --output-dir``,
``simulate --home``) may only name something new or something the tool itself wrote before: never a
device, FIFO, socket, symbolic link or directory where a file is expected, and never a place inside a
data home (the tool's own files are not outputs), and never a path through a folder that is a symbolic link
(dangling or not): see :func:`_refuse_linked_folder` for which folders of the path are checked.
:func:`open_output_file` re-checks the entry right before it renames over it, through a descriptor of the
folder, so a swap of the folder for a link after the first check still cannot redirect the write;
:func:`open_output_files` writes several files of one folder all or nothing, holding the folder locked while it
writes, so that a later run removes only a dead run's temporary files, and only once the folder passed every check.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, Sequence

from formats.files import TEMP_NAME_EXTRA, create_temp, file_mode, lstat_or_none, naming_full_disk, temp_names
from formats.home import DataHome


class RefusedOutput(ValueError):
    """A user-given output path that names something the tool did not create (the message says what)."""




# --------------------------------------------------------------------------- user-given output paths
def looks_like_home(folder: Path) -> bool:
    """True when ``folder`` holds a data home's own entries (raw logs, datasets, Dagster state, build lock,
    settings file ``pickapic.toml``).

    Names specific to this tool only: a ``ground_truth/`` or ``warehouse/`` alone is common elsewhere.
    """
    home = DataHome(Path(folder))
    return (home.raw_logs.is_dir() or home.datasets.is_dir() or (home.dagster_home / "dagster.yaml").is_file()
            or home.lock_file.is_file() or (home.root / "pickapic.toml").is_file())


def enclosing_home(path: Path, homes: Sequence[Path] = ()) -> Path | None:
    """The data home ``path`` (absolute, links resolved) lies in or is: one of ``homes`` or any ancestor that looks like one."""
    roots = [Path(h).resolve() for h in homes]
    for candidate in (path, *path.parents):
        if candidate in roots or looks_like_home(candidate):
            return candidate
    return None


def entry_kind(mode: int) -> str:
    """What a directory entry is, in words."""
    for test, word in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "of an unknown kind"


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` absolute, its folder's links resolved and its last component kept as given (never followed)."""
    given = Path(path).expanduser()
    given = given if given.is_absolute() else Path.cwd() / given
    if given.name in ("", ".", ".."):
        return given.resolve()  # "." and ".." are never links: resolving them follows none
    return given.parent.resolve() / given.name


def _refuse_linked_folder(path: str | os.PathLike, flag: str, given: object) -> None:
    """Refuse a symbolic link (live or dangling) among the existing folders of a user-given path.

    Checked, with ``lstat``: every folder component the user typed, down to the path's parent (the last
    component is checked by the caller). Not checked: a relative path's working directory, the folder ``~``
    stands for, and a component right under ``/`` (system layout such as macOS's ``/tmp -> private/tmp``
    or a merged ``/lib -> usr/lib``; only an administrator makes those). The walk stops at the first
    missing component: that one and the ones below it are created, as plain folders.
    """
    raw = Path(path)
    parts = raw.parts
    if parts and parts[0].startswith("~"):
        current, rest, skip = Path(parts[0]).expanduser(), parts[1:], 0
    elif raw.is_absolute():
        current, rest, skip = Path(parts[0]), parts[1:], 1
    else:
        current, rest, skip = Path.cwd(), parts, 0
    for index, part in enumerate(rest[:-1]):
        current = current / part
        if index < skip or part == "..":
            continue
        try:
            info = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(info.st_mode):
            raise RefusedOutput(f"{flag} {given}: {current} is a symbolic link; outputs are never written through a "
                                "linked folder (give the real folder instead)")
        if not stat.S_ISDIR(info.st_mode):
            return  # reported by _refuse_non_folder_ancestor


def pipeline_zones(home: DataHome) -> list[Path]:
    """The folders of a data home that only the pipeline writes (``models/`` holds user-started runs too)."""
    return [home.raw, home.warehouse, home.blobs, home.datasets.parent, home.dagster_home, home.cache,
            home.locks, home.ground_truth]


def _refuse_inside_home(final: Path, homes: Sequence[Path], flag: str, given: object, zones_only: bool = False) -> None:
    """Refuse ``final`` inside a data home (with ``zones_only``: inside one of its :func:`pipeline_zones`, or the home itself)."""
    home = enclosing_home(final, homes)
    if home is None:
        return
    if zones_only:
        zone = next((z for z in pipeline_zones(DataHome(home)) if final == z or z in final.parents), None)
        if zone is None and final != home:
            return
        raise RefusedOutput(f"{flag} {given}: {final} is {'the data home' if zone is None else 'inside ' + str(zone)}, "
                            f"which only the pipeline writes; give a folder outside it (or under {DataHome(home).models})")
    raise RefusedOutput(f"{flag} {given}: {final} is inside the data home {home}, whose files only the pipeline "
                        "writes (published versions are read-only); write the result elsewhere")


def check_output_file(path: str | os.PathLike, homes: Sequence[Path] = (), flag: str = "--output") -> Path:
    """Validate a user-given output file: new or an existing regular file, not a link, outside every data home.

    Returns the absolute path the write will replace (folder links resolved, last component never followed).
    """
    final = _absolute(path)
    _refuse_inside_home(final, homes, flag, path)
    _refuse_linked_folder(path, flag, path)
    try:
        info = os.lstat(final)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise RefusedOutput(f"{flag} {path}: {final} is {entry_kind(info.st_mode)}; the output must be a new path or a "
                            "regular file (devices, FIFOs, links and directories are never replaced)")
    _refuse_non_folder_ancestor(final, flag, path)
    _refuse_long_name(final, flag, path)
    return final


def _refuse_long_name(final: Path, flag: str, given: object) -> None:
    """The file is written under a temporary name first (``.NAME.<12 hex>.tmp``), which must fit the file
    system too: a name that does not is refused before any work, not after it (review rev22a)."""
    ancestor = _nearest_existing(final.parent)
    try:
        limit = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    length = len(os.fsencode(final.name))
    if length + TEMP_NAME_EXTRA > limit:
        raise RefusedOutput(f"{flag} {given}: the file name is too long ({length} bytes): it is written under a "
                            f"temporary name {TEMP_NAME_EXTRA} bytes longer first, and {ancestor} takes names of at "
                            f"most {limit} bytes; give a name of at most {limit - TEMP_NAME_EXTRA} bytes")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (the missing ones are created when the output is written)."""
    while not os.path.lexists(folder):
        folder = folder.parent
    return folder


def _refuse_non_folder_ancestor(final: Path, flag: str, given: object) -> None:
    """The nearest existing ancestor of a new path must be a folder (the missing ones are created)."""
    ancestor = _nearest_existing(final.parent)
    if not ancestor.is_dir():
        raise RefusedOutput(f"{flag} {given}: {ancestor} is {entry_kind(os.lstat(ancestor).st_mode)}, not a folder")


def _recheck_entry(dir_fd: int, name: str, final: Path, homes: Sequence[Path], flag: str, given: object) -> None:
    """Right before the rename: the entry is still absent or a regular file, and the folder still outside any home."""
    with contextlib.suppress(OSError):
        folder = Path(os.readlink(f"/proc/self/fd/{dir_fd}"))  # the folder actually held open (Linux)
        _refuse_inside_home(folder / name, homes, flag, given)
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise RefusedOutput(f"{flag} {given}: {final} became {entry_kind(info.st_mode)} while the result was written; "
                            "nothing was replaced")


@contextlib.contextmanager
def open_output_file(path: str | os.PathLike, homes: Sequence[Path] = (), flag: str = "--output",
                     private: bool = False) -> Iterator[BinaryIO]:
    """A binary handle on a new temp file beside the checked user-given ``path``, renamed over it on success.

    The folder is opened once and every later step (create, re-check, rename) goes through that
    descriptor; the entry is re-checked right before the rename, which itself never follows a link. The file
    gets :func:`give_replaced_mode`'s mode (an existing file of this account's keeps its own), 0600 until then
    where it replaces a file; with ``private`` 0600 always.
    """
    final = check_output_file(path, homes, flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = None
    held = None
    try:
        remove_dead_temps(dir_fd, [final.name])
        # 0600 while it is written where it replaces a file (that one may be private), its mode given at the end
        fd, tmp, held = _create_locked_temp(dir_fd, final, private or _entry(dir_fd, final.name) is not None)
        with naming_full_disk(final), os.fdopen(fd, "wb") as handle:
            yield handle
            if not private:
                give_replaced_mode(handle.fileno(), dir_fd, final.name)
            handle.flush()
            os.fsync(handle.fileno())
        _recheck_entry(dir_fd, final.name, final, homes, flag, path)
        os.replace(tmp, final.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        if held is not None:
            os.close(held)                  # the temp file's lock goes with its last descriptor
        os.close(dir_fd)


def _entry(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in the open folder; None where there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def give_replaced_mode(fd: int, dir_fd: int, name: str) -> int:
    """Give the open temporary file ``fd``, about to be renamed over ``name`` in the open folder, the mode it should
    have; returns it. Over a regular file of this account: that file's permission bits (``rwx`` for its owner,
    group and others; no setuid, setgid or sticky bit) and its group, as ``cp`` or a shell's ``>`` would keep them,
    so a result the user made private (``chmod 600``, a file made under umask 077) stays private (review rev34e: it
    became ``0666 & ~umask``, 0644, readable by every account); where the group cannot be kept, the group bits are
    at most the umask's. A new file, or one of another account (the new one becomes this account's):
    ``0666 & ~umask``. Looked up right before the rename: a ``chmod`` while the result was written counts."""
    info = _entry(dir_fd, name)
    if info is None or not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        mode = file_mode()
    else:
        mode = stat.S_IMODE(info.st_mode) & 0o777
        if info.st_gid != os.fstat(fd).st_gid:
            try:
                os.fchown(fd, -1, info.st_gid)
            except OSError:             # not a member of that group: the bits were that group's, not this one's
                mode &= ~0o070 | file_mode()
    os.fchmod(fd, mode)
    return mode


def _create_locked_temp(dir_fd: int, final: Path, private: bool) -> tuple[int, str, int | None]:
    """A new temp file for ``final`` in the open folder, with an exclusive ``flock`` on it held by a second
    descriptor (returned third; None where the file system has no ``flock``) until the caller closes it, after
    the rename: a temp file that nobody holds locked is a dead run's (:func:`remove_dead_temps`). A cleaner may
    take a new file's lock in the instant before its writer does, and remove it: then another one is made."""
    for _ in range(100):
        fd, tmp = create_temp(final.parent, final.name, private, dir_fd=dir_fd)
        held = os.dup(fd)
        locked = _try_flock(held)
        try:
            mine = locked is not False and os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            mine = False
        if mine:
            if not locked:                  # no flock here: nothing to hold
                os.close(held)
                held = None
            return fd, tmp, held
        os.close(held)
        os.close(fd)
    raise FileExistsError(f"no temporary file for {final} could be kept: another process removes them as fast as they "
                          "are made")


def remove_dead_temps(dir_fd: int, names: Sequence[str]) -> list[str]:
    """Delete, in the open folder, the temporary files of ``names`` (``.NAME.<hex>.tmp``, as
    :func:`formats.files.create_temp` names them) that a killed run left: regular files of this account that
    no process holds locked (a live writer of :func:`open_output_file` or :func:`open_output_files` holds each
    of its temp files' ``flock`` from its creation to its rename; the latter also holds the folder's).
    Nothing is removed where files cannot be locked. Returns the names removed."""
    own = temp_names(names)
    with os.scandir(dir_fd) as entries:
        found = sorted(entry.name for entry in entries if own.fullmatch(entry.name))
    removed = []
    for name in found:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or _try_flock(fd) is not True:
                continue
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == info.st_ino:
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def open_output_files(folder: Path, names: Sequence[str], homes: Sequence[Path] = (),
                      flag: str = "--output") -> Iterator[Callable[[str], ContextManager[BinaryIO]]]:
    """Write several files of one user-given folder all or nothing; yields ``open(name)``, a binary temp handle.

    Every target (``folder / name``) is checked before anything is written; each file goes to a temp name
    in the folder, and only once the block ends without error are the entries re-checked and the temp files
    renamed over them. On an error the temp files are removed, and the folders this call made (empty) too,
    so the folder is left as it was. ``folder`` is an absolute folder already checked by :func:`check_output_dir`.
    The folder is held locked (:func:`_try_flock`) from before the first temp file until the end, so no other
    run takes its temp files for a dead run's leftovers; a folder another run holds is refused, nothing written.
    """
    folder = Path(folder)
    targets = {name: check_output_file(folder / name, homes, flag) for name in names}
    made = []                                       # folders created here, outermost last
    missing = folder
    while not os.path.lexists(missing):
        made.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    temps: dict[str, str] = {}
    held: list[int] = []                            # a descriptor holding each temp file's flock
    done = False
    try:
        if _try_flock(dir_fd) is False:
            raise RefusedOutput(_busy_message(flag, folder, folder))
    except BaseException:
        os.close(dir_fd)
        _remove_made(made)
        raise

    @contextlib.contextmanager
    def open_one(name: str) -> Iterator[BinaryIO]:
        if name not in targets or name in temps:
            raise ValueError(f"{name!r} is not one of the files to write ({', '.join(targets)}), or written twice")
        fd, temps[name], lock = _create_locked_temp(dir_fd, targets[name], _entry(dir_fd, name) is not None)
        if lock is not None:                # held to the end: a single-file writer's clean-up never takes it
            held.append(lock)
        with naming_full_disk(targets[name]), os.fdopen(fd, "wb") as handle:
            yield handle
            give_replaced_mode(handle.fileno(), dir_fd, name)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        yield open_one
        for name in temps:
            _recheck_entry(dir_fd, name, targets[name], homes, flag, folder / name)
        for name in list(temps):
            os.replace(temps[name], name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            del temps[name]
        done = True
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        for lock in held:
            os.close(lock)
        os.close(dir_fd)                            # also releases the folder's lock
        if not done:
            _remove_made(made)


def _remove_made(made: Sequence[Path]) -> None:
    """Remove the folders a failed write made (innermost first); a folder holding anything stays."""
    for created in made:
        with contextlib.suppress(OSError):
            os.rmdir(created)


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on an open output folder or temporary file without waiting, held until the
    descriptor is closed (the kernel also drops it when the process dies, killed or not): :func:`open_output_files`
    holds its folder's from before its first temp file until after the last rename or removal, and both writers
    hold each temp file's, so a temp file found unlocked is provably a dead run's. True: locked; False: another
    process holds it; None: the file system has no ``flock`` there (some network file systems), nothing is locked."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _busy_message(flag: str, given: object, folder: Path) -> str:
    return (f"{flag} {given}: another run is writing into {folder} now (it holds the folder locked); nothing was "
            "written or removed, wait for it to finish or give another folder")


def check_output_dir(path: str | os.PathLike, homes: Sequence[Path] = (), flag: str = "--output-dir",
                     markers: Sequence[str] = (), in_home: bool = False, leftovers: Sequence[str] = ()) -> Path:
    """Validate a user-given output folder: new, empty, or a previous output of this command; never a link.

    A non-empty folder counts as a previous output when it holds one of ``markers`` (paths relative to it).
    It may not lie inside a data home; with ``in_home`` only not inside its :func:`pipeline_zones`.
    With ``leftovers`` (file names), the temporary files of those names that a killed run left do not count
    against an empty folder, and are removed (:func:`_remove_own_leftovers`) once the folder passed every check:
    a refused folder loses nothing.
    Returns the absolute path.
    """
    final = _absolute(path)
    _refuse_inside_home(final, homes, flag, path, zones_only=in_home)
    _refuse_linked_folder(path, flag, path)
    try:
        info = os.lstat(final)
    except (FileNotFoundError, NotADirectoryError):
        _refuse_non_folder_ancestor(final, flag, path)
        return final
    if not stat.S_ISDIR(info.st_mode):
        raise RefusedOutput(f"{flag} {path}: {final} is {entry_kind(info.st_mode)}; give a new folder or one this command "
                            "wrote before")
    refuse_linked_subfolders(final, markers, flag, path)
    debris = temp_names(leftovers) if leftovers else None
    with os.scandir(final) as entries:      # a killed run's temp files of its own names do not count ...
        empty = not any(debris is None or not debris.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False)
                        for entry in entries)
    if not empty and not any(os.path.lexists(final / marker) for marker in markers):
        raise RefusedOutput(f"{flag} {path}: {final} already holds files that are not a previous output of this "
                            f"command (none of {', '.join(markers) or 'its files'}); give a new or empty folder")
    if leftovers:                           # ... and are removed only once the folder is accepted
        _remove_own_leftovers(final, leftovers, homes, flag, path)
    return final


def refuse_linked_subfolders(final: Path, markers: Sequence[str], flag: str, given: object) -> None:
    """Refuse an earlier output whose known subfolders (every folder on the way to a marker, e.g. a run's
    ``checkpoints/``, ``best/``, ``init/``) include a symbolic link: the command would write and delete
    there, inside whatever the link points to."""
    folders = sorted({Path(*Path(marker).parts[:i]) for marker in markers
                      for i in range(1, len(Path(marker).parts))}, key=lambda p: len(p.parts))
    for folder in folders:
        try:
            info = os.lstat(final / folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISLNK(info.st_mode):
            raise RefusedOutput(f"{flag} {given}: {final / folder} is a symbolic link; this command writes and "
                                "replaces files there and never does so through a link (give a new folder)")


def recorded_output_dir(given: str | os.PathLike, homes: Sequence[Path], flag: str, record: str,
                        names: Sequence[str]) -> tuple[Path, list[str]]:
    """A user-given folder for a command that keeps a record of what it wrote there (``record``, e.g.
    ``pickapic-export.json``); returns the folder (absolute) and the file names its new record lists.

    Refused: anything :func:`check_output_dir` refuses (a folder is an earlier output only when it holds
    ``record``), a record that is not one this tool wrote, and any of ``names`` already there but not
    listed in the record: only files an earlier run of the command wrote are ever replaced.
    """
    folder = check_output_dir(given, homes, flag, markers=[record], leftovers=[*names, record])
    earlier = _recorded_files(folder, record, flag, given)
    foreign = [name for name in names if os.path.lexists(folder / name) and name not in earlier]
    if foreign:
        raise RefusedOutput(f"{flag} {given}: {', '.join(foreign)} in {folder} "
                            f"{'was' if len(foreign) == 1 else 'were'} not written by this command before (not "
                            f"listed in its {record}); nothing was replaced, give a new or empty folder")
    kept = {name for name in earlier if os.path.lexists(folder / name)}
    return folder, sorted(kept | set(names))


def _remove_own_leftovers(folder: Path, names: Sequence[str], homes: Sequence[Path], flag: str,
                          given: object) -> list[str]:
    """Delete the temporary files a killed run of the command left in ``folder`` (``.NAME.HEX.tmp``, as
    :func:`formats.files.create_temp` names them, for the command's own ``names``; regular files only), so
    the rerun of a crashed command is not refused for its own debris. Returns the names removed.

    Called only for a folder that passed every check of :func:`check_output_dir` on its path (not in a data
    home, no linked folder, a real folder). The folder is opened without following a link and checked
    again through its descriptor; its exclusive ``flock`` (:func:`_try_flock`) is held while the files are
    removed, so only a dead run's temp files go: a folder another run holds is refused
    (:class:`RefusedOutput`), nothing removed, and a temp file a live single-file writer holds locked (a
    `pickapic score --output` into the same folder) stays (:func:`remove_dead_temps`). Where folders cannot be
    locked nothing is removed."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        with contextlib.suppress(OSError):   # the folder actually opened (Linux): still the checked one
            held = Path(os.readlink(f"/proc/self/fd/{dir_fd}"))
            _refuse_inside_home(held, homes, flag, given)
            if held != folder:
                return []
        locked = _try_flock(dir_fd)
        if locked is False:
            raise RefusedOutput(_busy_message(flag, given, folder))
        if locked is None:
            return []
        return remove_dead_temps(dir_fd, names)
    finally:
        os.close(dir_fd)                     # also releases the lock


def _recorded_files(folder: Path, record: str, flag: str, given: object) -> set[str]:
    """The file names an earlier run's ``record`` in ``folder`` lists (none when there is no record)."""
    path = folder / record
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    problem = None
    listed = None
    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
        problem = "not a regular file of at most 1 MiB"
    else:
        try:
            listed = json.loads(path.read_bytes()).get("files")
        except (ValueError, AttributeError, OSError, RecursionError):   # RecursionError: "[[[[..." nested deep
            listed = None
        if not isinstance(listed, list) or not all(isinstance(n, str) and n and "/" not in n and n not in (".", "..")
                                                   for n in listed):
            problem = "not a record this tool wrote"
    if problem:
        raise RefusedOutput(f"{flag} {given}: {path} is {problem}; nothing was replaced, give a new or empty folder")
    return set(listed) - {record}


def write_output_record(open_file: Callable[[str], ContextManager[BinaryIO]], record: str, files: Sequence[str],
                        written_by: str, extra: dict | None = None) -> None:
    """Write the folder's record (through :func:`open_output_files`' ``open``): the files runs of the
    command wrote into it, the only ones a later run replaces, and ``extra`` (JSON-able keys beside those)."""
    with open_file(record) as handle:
        handle.write((json.dumps({"written_by": written_by, "files": list(files), **(extra or {})}, indent=1)
                      + "\n").encode("utf-8"))


def check_home_dir(home: DataHome, flag: str = "--home") -> Path:
    """Validate a data home about to be written: new, empty or already a data home, and not inside another one."""
    root = home.root
    info = lstat_or_none(root)
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise RefusedOutput(f"{flag} {root} is {entry_kind(info.st_mode)}, not a folder for a data home")
        with os.scandir(root) as entries:
            empty = next(entries, None) is None
        if not empty and not looks_like_home(root):
            raise RefusedOutput(f"{flag} {root} is a folder that holds other files and is not a data home (no "
                                "raw/app_logs, datasets/pickapic, dagster/dagster.yaml, pickapic.toml); give a new "
                                "or empty folder")
    outer = next((p for p in root.parents if looks_like_home(p)), None)
    if outer is not None:
        raise RefusedOutput(f"{flag} {root} lies inside the data home {outer}; a data home cannot hold another one")
    return root
