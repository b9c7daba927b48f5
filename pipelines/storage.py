"""Safe file writing: temp name in the same folder, fsync, rename; modes from the umask; user-given outputs checked.

Everything the pipeline writes goes through :func:`atomic_path`: readers see the old file or the new one,
and the new one gets the mode any other tool would give it (``0666 & ~umask``: 0644 under umask 022),
so another account can read published files; only files marked ``private`` stay 0600.

A path the *user* names (``query --output``, ``export --output``, ``train --output-dir``,
``simulate --home``) may only name something new or something the tool itself wrote before: never a
device, FIFO, socket, symbolic link or directory where a file is expected, and never a place inside a
data home (the tool's own files are not outputs). :func:`open_output_file` re-checks the entry right
before it renames over it, through a descriptor of the folder, so a swap of the folder for a link after
the first check still cannot redirect the write.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.home import DataHome

# Written into every Parquet file so identical tables give identical bytes.
PARQUET_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedOutput(ValueError):
    """A user-given output path that names something the tool did not create (the message says what)."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # older kernels: set and restore (not atomic, hence the fallback only)
    os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    """The permission bits a new file should get: ``0666 & ~umask``, or 0600 for a private file."""
    return 0o600 if private else 0o666 & ~current_umask()


def create_temp(folder: str | os.PathLike, name: str, private: bool = False,
                dir_fd: int | None = None) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` in ``folder`` (exclusive, no links followed); returns (fd, temp name).

    Unlike ``tempfile.mkstemp`` (always 0600) the file gets the umask's mode, like ``open(.., "w")``.
    With ``dir_fd`` the name is created relative to that open folder and ``folder`` is only for messages.
    """
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp if dir_fd is not None else os.path.join(folder, tmp), _CREATE,
                         0o600 if private else 0o666, dir_fd=dir_fd)  # the kernel applies the umask to 0666
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(f"no free temporary name for {name!r} in {folder}")


@contextlib.contextmanager
def atomic_path(final: Path, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it over ``final``.

    Readers see the old file or the new one, never a half-written one. Temp names start with ``.``
    and end in ``.tmp`` so globs such as ``*.parquet`` never match them. The file gets the umask's
    mode (0600 when ``private``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = create_temp(final.parent, final.name, private)
    os.close(fd)
    tmp = final.parent / tmp_name
    try:
        with _naming_full_disk(final):
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def _naming_full_disk(final: Path) -> Iterator[None]:
    """Re-raise a full disk while writing ``final`` as ENOSPC naming it (Arrow and plain writes name no file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and (exc.errno == errno.ENOSPC or "no space left on device" in str(exc).lower()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from exc
        raise


def write_bytes_atomic(final: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``final`` atomically (0600 when ``private``, else the umask's mode)."""
    with atomic_path(final, private) as tmp:
        tmp.write_bytes(data)


def write_parquet_atomic(table: pa.Table, final: Path, schema: pa.Schema | None = None) -> Path:
    """Cast ``table`` to ``schema`` (when given) and write it to ``final`` atomically."""
    if schema is not None:
        table = cast_to_schema(table, schema)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
    return Path(final)


def honour_umask(folder: Path) -> None:
    """Give ``folder`` and every file and folder under it the umask's mode (safetensors writes 0600)."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


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


def _kind(mode: int) -> str:
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


def pipeline_zones(home: DataHome) -> list[Path]:
    """The folders of a data home that only the pipeline writes (``models/`` holds user-started runs too)."""
    return [home.raw, home.warehouse, home.blobs, home.datasets.parent, home.dagster_home, home.cache,
            home.ground_truth]


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
    try:
        info = os.lstat(final)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise RefusedOutput(f"{flag} {path}: {final} is {_kind(info.st_mode)}; the output must be a new path or a "
                            "regular file (devices, FIFOs, links and directories are never replaced)")
    _refuse_non_folder_ancestor(final, flag, path)
    return final


def _refuse_non_folder_ancestor(final: Path, flag: str, given: object) -> None:
    """The nearest existing ancestor of a new path must be a folder (the missing ones are created)."""
    ancestor = final.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RefusedOutput(f"{flag} {given}: {ancestor} is {_kind(os.lstat(ancestor).st_mode)}, not a folder")


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
        raise RefusedOutput(f"{flag} {given}: {final} became {_kind(info.st_mode)} while the result was written; "
                            "nothing was replaced")


@contextlib.contextmanager
def open_output_file(path: str | os.PathLike, homes: Sequence[Path] = (), flag: str = "--output",
                     private: bool = False) -> Iterator[BinaryIO]:
    """A binary handle on a new temp file beside the checked user-given ``path``, renamed over it on success.

    The folder is opened once and every later step (create, re-check, rename) goes through that
    descriptor; the entry is re-checked right before the rename, which itself never follows a link.
    """
    final = check_output_file(path, homes, flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = None
    try:
        fd, tmp = create_temp(final.parent, final.name, private, dir_fd=dir_fd)
        with _naming_full_disk(final), os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _recheck_entry(dir_fd, final.name, final, homes, flag, path)
        os.replace(tmp, final.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
        os.close(dir_fd)


def check_output_dir(path: str | os.PathLike, homes: Sequence[Path] = (), flag: str = "--output-dir",
                     markers: Sequence[str] = (), in_home: bool = False) -> Path:
    """Validate a user-given output folder: new, empty, or a previous output of this command; never a link.

    A non-empty folder counts as a previous output when it holds one of ``markers`` (paths relative to it).
    It may not lie inside a data home; with ``in_home`` only not inside its :func:`pipeline_zones`.
    Returns the absolute path.
    """
    final = _absolute(path)
    _refuse_inside_home(final, homes, flag, path, zones_only=in_home)
    try:
        info = os.lstat(final)
    except (FileNotFoundError, NotADirectoryError):
        _refuse_non_folder_ancestor(final, flag, path)
        return final
    if not stat.S_ISDIR(info.st_mode):
        raise RefusedOutput(f"{flag} {path}: {final} is {_kind(info.st_mode)}; give a new folder or one this command "
                            "wrote before")
    with os.scandir(final) as entries:
        empty = next(entries, None) is None
    if not empty and not any(os.path.lexists(final / marker) for marker in markers):
        raise RefusedOutput(f"{flag} {path}: {final} already holds files that are not a previous output of this "
                            f"command (none of {', '.join(markers) or 'its files'}); give a new or empty folder")
    return final


def check_home_dir(home: DataHome, flag: str = "--home") -> Path:
    """Validate a data home about to be written: new, empty or already a data home, and not inside another one."""
    root = home.root
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise RefusedOutput(f"{flag} {root} is {_kind(info.st_mode)}, not a folder for a data home")
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


# --------------------------------------------------------------------------- full disks
_FULL_WORDS = ("no space left on device", "database or disk is full", "errno 28]")


def _free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (its nearest existing ancestor's)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    with contextlib.suppress(OSError):
        info = os.statvfs(path)
        return info.f_bavail * info.f_frsize
    return None


def no_space_message(error: BaseException | str, where: Sequence[Path] = (), databases: Path | None = None,
                     full_below: int = 1 << 20) -> str | None:
    """``no space left on device at PATH ...`` when ``error`` (or an exception behind it) is a full disk, else None.

    Recognises ENOSPC from any OSError, its text in wrapped messages (Arrow, Dagster step failures), SQLite's
    "database or disk is full", and SQLite's "disk I/O error" when one of ``where`` has under ``full_below``
    bytes free. PATH is the file named by the error, ``databases`` for a SQLite error (the Dagster
    instance storage), else the fullest of ``where``.
    """
    chain: list[BaseException | str] = []
    item: BaseException | str | None = error
    while item is not None and len(chain) < 20 and all(item is not seen for seen in chain):
        chain.append(item)
        item = (item.__cause__ or item.__context__) if isinstance(item, BaseException) else None
    full_where = [Path(p) for p in where if (_free_bytes(Path(p)) or 0) < full_below]
    path: str | None = None
    full = False
    for item in chain:
        text = str(item)
        if databases is not None and type(item).__module__.split(".")[0] in ("sqlite3", "sqlalchemy"):
            path = path or str(databases)
        if isinstance(item, OSError) and item.errno == errno.ENOSPC:
            full, path = True, path or (os.fsdecode(item.filename) if item.filename else None)
        elif any(word in text.lower() for word in _FULL_WORDS):
            full = True
            quoted = re.search(r"No space left on device:? '([^']+)'", text)
            path = path or (quoted.group(1) if quoted else None)
        elif "disk I/O error" in text and full_where:
            full = True
    if not full:
        return None  # (a SQLite path noted above only matters when the disk is full)
    path = path or (str(full_where[0]) if full_where else str(where[0]) if where else "(unknown path)")
    free = _free_bytes(Path(path))
    left = f"; {free:,} bytes free there now" if free is not None else ""
    return (f"no space left on device at {path}{left}. Free some space and rerun: writes are atomic, so nothing "
            "half-written was published")


# --------------------------------------------------------------------------- tables
def cast_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and order ``schema``'s columns from ``table`` and cast; errors name the column."""
    missing = [name for name in schema.names if name not in table.column_names]
    extra = [name for name in table.column_names if name not in schema.names]
    if missing or extra:
        raise ValueError(f"table columns do not match schema: missing {missing}, unexpected {extra}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"column {field.name!r}: cannot cast {column.type} to {field.type}: {exc}") from exc
        if not field.nullable and columns[-1].null_count:
            raise ValueError(f"column {field.name!r} is declared non-null but has {columns[-1].null_count} nulls")
    return pa.Table.from_arrays(columns, schema=schema)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_parquet_or_empty(path: Path, schema: pa.Schema) -> pa.Table:
    """Read ``path`` if it exists, else an empty table of ``schema``."""
    if Path(path).exists():
        return pq.read_table(path, schema=schema)
    return schema.empty_table()
