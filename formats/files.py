"""Safe file writing: temp name in the same folder, fsync, rename; modes from the umask; full-disk messages.

Everything the pipeline writes goes through :func:`atomic_path`: readers see the old file or the new one,
and the new one gets the mode any other tool would give it (``0666 & ~umask``: 0644 under umask 022),
so another account can read published files; only files marked ``private`` stay 0600. Paths a *user*
names are checked by :mod:`formats.outputs` first.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

# Written into every Parquet file so identical tables give identical bytes.
PARQUET_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC



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


def account_name() -> str | None:
    """This process's account name (its effective uid's), or None where it has none (or no ``pwd``)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return None


def file_mode(private: bool = False) -> int:
    """The permission bits a new file should get: ``0666 & ~umask``, or 0600 for a private file."""
    return 0o600 if private else 0o666 & ~current_umask()


_TEMP_TOKEN_BYTES = 6


def temp_names(names: Sequence[str]) -> re.Pattern:
    """What :func:`create_temp` names the temporary files of ``names`` (``.NAME.<12 hex>.tmp``)."""
    return re.compile("|".join(rf"\.{re.escape(name)}\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.tmp" for name in names))


TEMP_NAME_EXTRA = len("..") + 2 * _TEMP_TOKEN_BYTES + len(".tmp")   # bytes create_temp's name adds to ``name``


def temp_pattern(final: str) -> re.Pattern:
    """What :func:`create_temp` names the temporary files of the final names matching the regular expression
    ``final`` (``.NAME.<12 hex>.tmp``)."""
    return re.compile(rf"\.(?:{final})\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.tmp")


def sweep_temps(folder: str | os.PathLike, final: str, follow: bool = False) -> tuple[list[str], list[str]]:
    """Remove from ``folder`` the temporary files a writer killed mid-write left (:func:`create_temp`'s
    ``.NAME.<12 hex>.tmp`` of a final name matching the regular expression ``final``); return the names removed
    and notes on what was left.

    The caller must hold the lock under which every writer of those names writes (a temporary file being written
    now would be removed under it). Only those exact names are looked at, in ``folder`` only (opened without
    following a link: a link or a file there, or nothing, sweeps nothing; with ``follow``, a link at ``folder``
    itself is resolved once, by the kernel as it opens it, for a folder the caller's writers write through, such
    as a home's ``datasets/`` linked to another disk: review rev25e), and only regular files this account owns
    are removed, relative to the folder opened: anything else at such a name (a link, never followed, a folder,
    another account's file) is left as it is and named in the notes. Never raises for what it cannot remove (a
    note says why)."""
    pattern = temp_pattern(final)
    return _sweep(folder, pattern.fullmatch, follow)


_ANY_TEMP = re.compile(rf"\.(.+)\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.tmp")


def sweep_temps_of(finals: Iterable[str | os.PathLike], follow: bool = True) -> list[str]:
    """Remove the temporary files that writers killed mid-write left for exactly the final paths ``finals``
    (:func:`create_temp`'s ``.NAME.<12 hex>.tmp`` beside each), one listing per folder, as :func:`sweep_temps`
    does (only this account's regular files at those names, relative to the folder opened, never through a link
    at such a name); return its notes on what was left. ``follow``: a link at a folder itself is followed once,
    as the writers that write through it do (a warehouse table folder, ``cache/``); with ``follow=False`` a link
    there sweeps nothing (the training-JPEG store, whose writers refuse such a link).

    The caller must hold what keeps every writer of those names from writing now (the lock they write under):
    a temporary file being written would be removed under it (review rev29b: the curation and split tables, the
    feature stage's partitions and JPEGs, the ingest's files outside its day folders, each crash left one)."""
    by_folder: dict[str, set[str]] = {}
    for final in finals:
        folder, name = os.path.split(os.fspath(final))
        by_folder.setdefault(folder, set()).add(name)
    notes: list[str] = []
    for folder, names in sorted(by_folder.items()):
        def wanted(temp: str, names: set[str] = names) -> bool:
            match = _ANY_TEMP.fullmatch(temp)
            return match is not None and match.group(1) in names

        notes += _sweep(folder, wanted, follow)[1]
    return notes


def _sweep(folder: str | os.PathLike, wanted: Callable[[str], object], follow: bool) -> tuple[list[str], list[str]]:
    """:func:`sweep_temps` of the names ``wanted`` accepts."""
    removed: list[str] = []
    notes: list[str] = []
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW) | os.O_CLOEXEC)
    except OSError:
        return removed, notes
    try:
        try:
            names = sorted(name for name in os.listdir(fd) if wanted(name))
        except OSError as exc:
            return removed, [f"{folder}: not listed to remove the temporary files of killed writers ({exc})"]
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                notes.append(f"{path}: a temporary file of a killed writer, not removed ({exc})")
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                what = "another account's file" if stat.S_ISREG(info.st_mode) else "not a regular file"
                notes.append(f"{path} is named as the tool's temporary files but is {what}: left as it is")
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                notes.append(f"{path}: a temporary file of a killed writer, not removed ({exc})")
                continue
            removed.append(name)
    finally:
        os.close(fd)
    return removed, notes


_URL = re.compile(r"[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_url(value: str) -> bool:
    """Whether ``value`` names a ``scheme://`` location, as Apache Beam's ``FileSystems.get_scheme`` decides it: the
    scheme starts the path. ``scratch/x://y`` is a relative local path, not a URL (review rev22f)."""
    return _URL.match(value.strip()) is not None


def create_temp(folder: str | os.PathLike, name: str, private: bool = False,
                dir_fd: int | None = None) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` in ``folder`` (exclusive, no links followed); returns (fd, temp name).

    Unlike ``tempfile.mkstemp`` (always 0600) the file gets the umask's mode, like ``open(.., "w")``.
    With ``dir_fd`` the name is created relative to that open folder and ``folder`` is only for messages.
    """
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.tmp"
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
        with naming_full_disk(final):
            yield tmp
        with naming_the_file(final):      # the sync is where a write-back error (EIO) shows: named (rev33h)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


# What a write meets when its disk, or its account's quota on it, is full (review rev33h: EDQUOT was a traceback)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full_disk(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError saying the disk (or the account's quota on it) is full."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


@contextlib.contextmanager
def naming_full_disk(final: Path) -> Iterator[None]:
    """Re-raise a full disk (ENOSPC, or EDQUOT: a quota) while writing ``final`` as that error naming it (Arrow and
    plain writes name no file); Arrow's text of a full disk, which has no errno, is ENOSPC."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and is_full_disk(exc):
            raise OSError(exc.errno, os.strerror(exc.errno), str(final)) from exc
        if exc.filename is None and exc.errno is None and "no space left on device" in str(exc).lower():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from exc
        raise


@contextlib.contextmanager
def naming_the_file(final: str | os.PathLike) -> Iterator[None]:
    """Re-raise any OSError naming no file (an fsync's or a write's EIO, a full disk) as the same error naming
    ``final``: for code that only writes ``final`` (or syncs it), so whatever fails is about that file (review
    rev33h: "[Errno 5] Input/output error" alone). An error that names a file is left as it is."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(final)) from exc
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
    """Give ``folder`` and every file and folder under it the umask's mode (safetensors writes 0600); a folder's
    setgid bit (a group-shared home's: what is made inside belongs to the group) is kept (review rev25a)."""
    mask = current_umask()

    def folder_mode(path: str | Path) -> None:
        os.chmod(path, (0o777 & ~mask) | (os.stat(path).st_mode & stat.S_ISGID))

    folder_mode(folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                folder_mode(os.path.join(root, name))
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


# --------------------------------------------------------------------------- full disks
_FULL_WORDS = ("no space left on device", "database or disk is full", "errno 28]", "disk quota exceeded",
               "errno 122]")
# the path in a full disk's text: Python's "[Errno 28] No space left on device: 'SRC' -> 'DST'" (DST the file being
# made; the words may be any an error naming the file raised with that errno says: fix33h's record refusal), and this
# module's own wording, "no space left on device at PATH; ..." (also the publish's shard errors,
# pipelines.publish.shards.no_space_error), carried in a wrapped error's text (a Dagster step failure's). Each path as
# repr() quotes it: in double quotes where it holds an apostrophe (review rev33m), escapes kept as written
_PY_STR = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_ONE_ERROR = r"(?:(?!\[Errno |; [^\s:;]+: [\w.]+: )[^\n])*?"   # within one error (not into a build's next step's)
_QUOTED = re.compile(rf"(?:(?:No space left on device|Disk quota exceeded):? |\[Errno (?:28|122)\] {_ONE_ERROR}: )"
                     rf"({_PY_STR})(?: -> ({_PY_STR}))?", re.I)
_SAID_AT = re.compile(r"(?:no space left on device|disk quota exceeded) at (.+?)"
                      r"(?=; [\d,]+ bytes free there now|; the account's quota|\. Free some space|\n|$)", re.I)


def full_disk_words(code: int | None) -> str:
    """How a full disk is said: "disk quota exceeded" for EDQUOT, else "no space left on device"."""
    return "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"


def full_disk_path(text: str) -> str | None:
    """The path a full disk's text names (:data:`_QUOTED`, :data:`_SAID_AT`), or None."""
    quoted = _QUOTED.search(text)
    if quoted:
        return _unquoted(quoted.group(2) or quoted.group(1))
    said = _SAID_AT.search(text)
    return said.group(1) if said else None


def _unquoted(literal: str) -> str:
    """A path as repr() quoted it, its quotes removed and only an escaped quote or backslash unescaped: a newline
    stays the two characters ``\\n`` (never a line of its own in a message)."""
    return re.sub(r"\\(['\"\\])", r"\1", literal[1:-1])


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
    """``no space left on device at PATH ...`` when ``error`` (or an exception behind it) is a full disk, else None
    (``disk quota exceeded at PATH ...`` for an account over its quota, EDQUOT).

    Recognises ENOSPC and EDQUOT from any OSError, their text in wrapped messages (Arrow, Dagster step failures,
    this function's own wording), SQLite's "database or disk is full", and SQLite's "disk I/O error" when one of
    ``where`` has under ``full_below`` bytes free. PATH is the file named by the error (of a call given two paths,
    ``os.symlink``, ``os.link``, ``os.rename``, ``shutil.copyfile``: the second, the file being made), ``databases``
    for a SQLite error (the Dagster instance storage), else the fullest of ``where``.
    """
    chain: list[BaseException | str] = []
    item: BaseException | str | None = error
    while item is not None and len(chain) < 20 and all(item is not seen for seen in chain):
        chain.append(item)
        item = (item.__cause__ or item.__context__) if isinstance(item, BaseException) else None
    full_where = [Path(p) for p in where if (_free_bytes(Path(p)) or 0) < full_below]
    path: str | None = None
    full = quota = False
    for item in chain:
        text = str(item)
        if databases is not None and type(item).__module__.split(".")[0] in ("sqlite3", "sqlalchemy"):
            path = path or str(databases)
        if is_full_disk(item):
            named = next((n for n in (item.filename2, item.filename) if isinstance(n, (str, bytes, os.PathLike))), None)
            quota = quota if full else item.errno == errno.EDQUOT    # the outermost full disk's kind is said
            full, path = True, path or (os.fsdecode(named) if named is not None else full_disk_path(text))
        elif any(word in text.lower() for word in _FULL_WORDS):
            quota = quota if full else any(word in text.lower() for word in ("disk quota exceeded", "errno 122]"))
            full, path = True, path or full_disk_path(text)
        elif "disk I/O error" in text and full_where:
            full = True
    if not full:
        return None  # (a SQLite path noted above only matters when the disk is full)
    path = path or (str(full_where[0]) if full_where else str(where[0]) if where else "(unknown path)")
    if quota:   # the disk's free bytes say nothing of the account's quota
        return (f"disk quota exceeded at {path}; the account's quota on that disk is used up. Free some space (or "
                "have the quota raised) and rerun: writes are atomic, so nothing half-written was published")
    free = _free_bytes(Path(path))
    left = f"; {free:,} bytes free there now" if free is not None else ""
    return (f"no space left on device at {path}{left}. Free some space and rerun: writes are atomic, so nothing "
            "half-written was published")


# --------------------------------------------------------------------------- tables
def cast_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and order ``schema``'s columns from ``table`` and cast; errors name the column."""
    have, want = table.column_names, schema.names
    have_set, want_set = set(have), set(want)
    missing = [name for name in want if name not in have_set]
    extra = [name for name in have if name not in want_set]
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


def lstat_or_none(path: str | os.PathLike) -> os.stat_result | None:
    """``os.lstat(path)`` (a link is not followed), or None when nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes (anything else is refused: :func:`open_regular_file`)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class NotRegularFile(ValueError):
    """:func:`open_regular` met something that is not a regular file (a FIFO, a device, a folder)."""


class FileTooLarge(ValueError):
    """:func:`open_regular` met a file of more than the bytes allowed (``size``, ``limit``)."""

    def __init__(self, path: Path | str, size: int, limit: int) -> None:
        super().__init__(f"{path} holds {size} bytes, more than the {limit} such a file may: not read")
        self.size, self.limit = size, limit


def open_regular(path: Path | str, *, max_bytes: int | None = None, follow_symlinks: bool = True) -> io.FileIO:
    """``path`` opened to read (unbuffered, blocking) when it is a regular file of at most ``max_bytes`` (any size
    when None): the checks every reader of a file here makes, in one place (noticed in fix38m: three copies).
    ``OSError`` where it cannot be opened (``FileNotFoundError``: nothing there; ELOOP: a symbolic link when
    ``follow_symlinks`` is False, never followed then); :class:`NotRegularFile` (a FIFO, a device, a folder) and
    :class:`FileTooLarge` (the open file's size), both ``ValueError`` naming the path. The type is checked on the open
    file, so a FIFO swapped in after an earlier check is never waited on (``O_NONBLOCK`` at the open) and a device that
    never ends is never read; a regular file is then read blocking (fix38l: a FUSE file system honouring
    ``O_NONBLOCK`` may answer a read "try again"). The caller reads on (a file may grow after its size was looked
    at: :func:`read_limited` reads at most one byte past ``max_bytes``)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path} is not a regular file: not read")
        if max_bytes is not None and info.st_size > max_bytes:
            raise FileTooLarge(path, info.st_size, max_bytes)
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def open_regular_file(path: Path | str) -> io.FileIO:
    """``path`` opened to read (unbuffered) if it is a regular file, following symlinks (:func:`open_regular`);
    anything else raises ``OSError(EINVAL)``."""
    try:
        return open_regular(path)
    except NotRegularFile:
        raise OSError(errno.EINVAL, "not a regular file", str(path)) from None


def open_regular_in_real_folder(path: Path | str) -> io.FileIO | None:
    """``path`` opened to read (unbuffered) when it is a regular file, not itself a symbolic link (``O_NOFOLLOW``), in
    a real folder (:func:`is_real_folder`: not reached through a link), and not a FIFO or device (checked on the open
    file, ``O_NONBLOCK``: never waited on); else None. For the records a stage trusts (review rev29e: a FIFO at one
    hung the feature stage, a link to another file was read and trusted)."""
    path = Path(path)
    if not is_real_folder(path.parent):
        return None
    try:   # looked at first, so a FIFO is not even opened; checked again on the open file (one swapped in meanwhile)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return io.FileIO(fd, "rb", closefd=True)
    except OSError:
        pass
    os.close(fd)
    return None


APPLE_DOUBLE = b"\x00\x05\x16\x07"     # how macOS's AppleDouble "._NAME" metadata files begin


def is_apple_double(path: str | os.PathLike, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> bool:
    """Whether ``path`` (relative to ``dir_fd`` when given) is macOS's AppleDouble metadata of a file: named
    ``._NAME`` and a regular file whose first bytes are :data:`APPLE_DOUBLE`. A file of any other content at such a
    name (a user's ``._results.parquet``, a real image ``._c2.png``) is not (reviews rev22d, rev25i). Only a regular
    file's bytes are read (the type is checked on the open file: a FIFO is never waited on); a link is followed
    unless ``follow_symlinks`` is False; what cannot be read is not AppleDouble."""
    if not os.path.basename(os.fspath(path)).startswith("._"):
        return False
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, len(APPLE_DOUBLE), 0) == APPLE_DOUBLE
    except OSError:
        return False
    finally:
        os.close(fd)


def is_real_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder and not a symbolic link to one (``lstat``); False when nothing is there."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def make_real_folder(path: Path | str, what: str = "") -> None:
    """Make the folder ``path`` (its parent must exist) unless it is there, and refuse (``NotADirectoryError``,
    naming ``what`` when given) when what is there is a symbolic link or not a folder: nothing is written
    through a link planted at a folder the tool makes for itself."""
    with contextlib.suppress(FileExistsError):      # whatever is there is checked below, without following it
        os.mkdir(path)
    if not is_real_folder(path):
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is a symbolic link or not a folder: {what or 'nothing'} "
                                 f"{'is not' if what else 'is'} written through it (remove it)")


def read_limited(path: Path | str, max_bytes: int, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path`` when it holds at most ``max_bytes``; memory never grows with what is
    there. ``OSError`` when it cannot be opened or read (``FileNotFoundError``: nothing there; a symbolic link when
    ``follow_symlinks`` is False, never followed then); ``ValueError`` naming the path when it is not a regular file
    (checked on the open file: a FIFO is never waited on, ``O_NONBLOCK``, a device never read) or holds more than
    ``max_bytes``: the open file's size is looked at first, and at most ``max_bytes + 1`` bytes are read, so a
    file growing while it is read is refused too (noticed in fix38a: a planted multi-GB ``manifest.json`` was read
    whole). A regular file is read blocking (``O_NONBLOCK`` only kept a FIFO from being waited on at the open: a
    FUSE file system that honours it may answer a read "try again"); a read that still answers so is an ``OSError``
    (EAGAIN), never taken for the end of the file (noticed in rev38d: the bytes read so far were returned)."""
    with open_regular(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks) as handle:
        parts, total = [], 0
        # what fstat says, and one byte more to see it grew; a read allocates what it asks for, so never
        # max_bytes + 1 at once (fix38h: each manifest read allocated 256 MiB); growth read 1 MiB at a time
        want = min(os.fstat(handle.fileno()).st_size, max_bytes) + 1
        while total <= max_bytes:
            part = handle.read(want)
            if part is None:      # "try again" from a descriptor still non-blocking: not the end of the file
                raise OSError(errno.EAGAIN, f"read of {total} bytes, then the file system answered "
                                            "'try again': not read whole", str(path))
            if not part:
                break
            parts.append(part)
            total += len(part)
            want = min(1 << 20, max_bytes + 1 - total)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) > max_bytes:
        raise ValueError(f"{path} grew past the {max_bytes} bytes such a file may hold while it was read: not read")
    return data


def read_small_file(path: Path | str, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``, else None: absent, unreadable,
    a symbolic link (never followed), a FIFO (never waited on: ``O_NONBLOCK``) or anything else not a regular
    file, or larger (:func:`read_limited`). For the small files the tool writes for itself (commit markers,
    records) and trusts only as it wrote them."""
    try:
        return read_limited(path, max_bytes, follow_symlinks=False)
    except (OSError, ValueError):
        return None


def read_parquet_or_empty(path: Path, schema: pa.Schema) -> pa.Table:
    """Read ``path`` if it exists, else an empty table of ``schema``."""
    if Path(path).exists():
        return pq.read_table(path, schema=schema)
    return schema.empty_table()


def path_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both absolute, normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
