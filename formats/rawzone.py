"""The raw zone's folder layout: which ``dt=`` folders are days, and every entry that is not one.

``scan_raw_zone(root)`` lists ``root/raw/app_logs/``: a child named ``dt=YYYY-MM-DD`` (a real calendar
date, zero-padded) that is a folder, or a link to a folder inside the raw zone, is a day. Every other
entry is a ``RawZoneProblem``, never read and never fatal to the other days:

- ``invalid_day_name``: a ``dt=`` name that is not ``YYYY-MM-DD`` with a real date (``dt=2023-02-30``,
  ``dt=2023-2-1``, ``dt=garbage``, ``dt=``);
- ``not_a_folder``: a well-named ``dt=`` entry that is a file, FIFO or other non-folder;
- ``link_outside_raw_zone``: a ``dt=`` link that leaves the raw zone or dangles (never followed);
- ``unexpected_entry``: a child of ``app_logs/`` not named ``dt=...``;
- ``unexpected_file``: an entry of a day folder other than the four ``<table>.jsonl.gz`` files.

A staging folder an app export is writing (``.dt=YYYY-MM-DD.export-PID-HEX`` that the export holds a lock on,
:func:`hold_staging_fd`) is not an entry of the raw zone: a day being written. One nobody holds (an
export that was killed; the next export removes it) is an ``unexpected_entry`` like any other folder,
so a folder given such a name by anything else is never silently ignored.

The files under a skipped folder are recorded one row each (up to ``MAX_LISTED_FILES`` per entry, then
one row counting the rest), so nothing in the raw zone is silently ignored. Paths are relative to the
data home and names that are not UTF-8 are shown with backslash escapes, a backslash of the name itself doubled
(``display_name``: one text per name, so two entries never share a path); no absolute path is stored.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import re
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

DAY_FOLDER = re.compile(r"dt=([0-9]{4}-[0-9]{2}-[0-9]{2})")
EXPORT_STAGING = re.compile(r"\.dt=[0-9]{4}-[0-9]{2}-[0-9]{2}\.export-([0-9]+)-[0-9a-f]+")   # group 1: the PID
RAW_FILE_NAMES = ("users.jsonl.gz", "images.jsonl.gz", "rankings.jsonl.gz", "downloads.jsonl.gz")
# An exporter's completion marker beside its output (Spark's and Hadoop's FileOutputCommitter write `_SUCCESS`; on a
# local file system Hadoop adds its checksum `._SUCCESS.crc`): in a day folder it is not a table and no data is lost
# by leaving it, so a build names the folders holding nothing else in one line and the sensor names it once, at
# info level (every build still records it in raw_zone_problems).
EXPORT_MARKERS = frozenset({"_SUCCESS", "._SUCCESS.crc"})
MAX_LISTED_FILES = 1000

INVALID_DAY_NAME = "invalid_day_name"
NOT_A_FOLDER = "not_a_folder"
LINK_OUTSIDE_RAW_ZONE = "link_outside_raw_zone"
UNEXPECTED_ENTRY = "unexpected_entry"
UNEXPECTED_FILE = "unexpected_file"
REASONS = (INVALID_DAY_NAME, NOT_A_FOLDER, LINK_OUTSIDE_RAW_ZONE, UNEXPECTED_ENTRY, UNEXPECTED_FILE)
RAW_ZONE_SAID = "raw_zone_said"   # HOME/cache/<this>: what the raw-zone sensor said last (a cache)


# An export's hold on its staging folder (review rev34g): an open-file-description (OFD) read lock on the folder,
# which a probe tests with F_OFD_GETLK without taking any lock, so a scan probing a folder never makes its export's
# hold fail (the hold and the probe were both an exclusive ``flock``: a scan probing the instant after the export's
# mkdir failed the export with a bare BlockingIOError). Where the system has no OFD locks (or refuses one on the
# folder), the hold is an exclusive ``flock`` taken with a short retry, which the probe detects with a shared
# ``flock`` taken and dropped. Review rev34i: an OFD hold also takes a shared ``flock`` (retried, never fatal), so
# the release before fix34g, whose probe is an exclusive ``flock`` with ``LOCK_NB``, still sees the folder held
# (its stale-staging sweep removed a running new export's staged day while both releases ran); this release's
# probe, a shared ``flock``, never conflicts with it.
_FLOCK_STRUCT = struct.Struct("hhqqi4x")      # struct flock: l_type, l_whence, l_start, l_len, l_pid (x86-64, arm64)
HOLD_RETRY_S = 2.0          # the fallback's retry: a probe holds its shared flock for microseconds
SHARED_HOLD_RETRY_S = 0.5   # the OFD hold's shared flock's retry: an old release's probe holds its one for microseconds
_NO_LOCK_ERRNOS = (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)   # no OFD lock here
_HOLD_POLL_S = 0.005


def _ofd_lock(fd: int, command: int, kind: int) -> bytes:
    return fcntl.fcntl(fd, command, _FLOCK_STRUCT.pack(kind, os.SEEK_SET, 0, 0, 0))


def hold_staging_fd(fd: int) -> None:
    """Make the open folder ``fd`` (a staging folder) held for as long as it stays open: an OFD read lock with a
    shared ``flock`` beside it (for the probes of the release before fix34g: :func:`_hold_shared_flock`), else an
    exclusive ``flock`` (retried for ``HOLD_RETRY_S`` while a probe's shared one is held). Raises ``OSError`` when
    neither can be taken."""
    command = getattr(fcntl, "F_OFD_SETLK", None)
    if command is not None:
        try:
            _ofd_lock(fd, command, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno not in _NO_LOCK_ERRNOS:
                raise
        else:
            _hold_shared_flock(fd)
            return
    deadline = time.monotonic() + HOLD_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_HOLD_POLL_S)


def _hold_shared_flock(fd: int) -> bool:
    """Beside an OFD hold, a shared ``flock`` on ``fd``: what the probe of the release before fix34g (an exclusive
    ``flock`` with ``LOCK_NB``, taken and dropped) finds taken, so an export of that release (a daemon or code server
    started before the upgrade) never sweeps this export's staging folder as stale (review rev34i). This release's
    probes take a shared ``flock`` (no conflict); an old probe holds its exclusive one for microseconds, so it is
    retried for ``SHARED_HOLD_RETRY_S``. Never fatal: the OFD lock is the hold, so where no ``flock`` can be had (a file
    system without it, or an exclusive one that stays) the export goes on without it. Returns whether it is held."""
    deadline = time.monotonic() + SHARED_HOLD_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_HOLD_POLL_S)
        except OSError:
            return False


def staging_in_use(path: Path) -> bool:
    """Whether an app export holds ``path`` (a staging folder) now (:func:`hold_staging_fd`), which any process on
    this kernel sees, whatever its PID namespace. Takes no lock an export could find taken (review rev34g): the OFD
    lock is tested (``F_OFD_GETLK``), and a ``flock`` held exclusively (the fallback's, or an export before fix34g)
    is found with a shared ``flock`` taken and dropped (the fallback's hold retries past it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        command = getattr(fcntl, "F_OFD_GETLK", None)
        if command is not None:
            with contextlib.suppress(OSError):
                if _FLOCK_STRUCT.unpack(_ofd_lock(fd, command, fcntl.F_WRLCK))[0] != fcntl.F_UNLCK:
                    return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False
    finally:
        os.close(fd)        # also drops the shared flock taken just now


@dataclass(frozen=True)
class RawZoneProblem:
    """One entry of the raw zone that is not ingested: where it is, why, and its size if it is a file."""

    path: str                 # relative to the data home
    entry: str                # the child of raw/app_logs it lies under (the day folder for unexpected_file)
    reason: str
    detail: str
    file_bytes: int | None    # a regular file's size; None for folders, links and other kinds


@dataclass(frozen=True)
class RawZoneScan:
    """The days of the raw zone and its problems, both sorted."""

    days: list[str]
    problems: list[RawZoneProblem]

    def summary(self, leave_out: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """One line per problem entry (not per file), naming it and saying what was skipped; none for the entries
        in ``leave_out``."""
        lines: dict[str, list[RawZoneProblem]] = {}
        for problem in self.problems:
            if problem.entry not in leave_out:
                lines.setdefault(problem.entry, []).append(problem)
        out = []
        for entry, problems in lines.items():
            files = sum(1 for p in problems if p.file_bytes is not None)
            first = problems[0]
            what = f"; {files} file(s) not ingested" if files else ""
            out.append(f"{entry}: {first.reason}: {first.detail}{what}")
        return out

    def skipped_lines(self) -> list[str]:
        """What a build names of the entries it skips (``pickapic build`` on every path, ``--dry-run`` and "up to
        date" included): one line per entry (:meth:`summary`), except that the entries holding nothing but
        exporters' completion markers (:data:`EXPORT_MARKERS`, in each day folder of a Spark or Hadoop export) are
        one line, with their count: a home of 365 such days printed 365 lines on every build (noted by fix26d1;
        review rev30d: ``pickapic build`` named them one per line before this line, ``--dry-run`` only so). Every
        one is still recorded in ``raw_zone_problems``."""
        entries: dict[str, list[RawZoneProblem]] = {}
        for problem in self.problems:
            entries.setdefault(problem.entry, []).append(problem)
        marked = [entry for entry, problems in entries.items()
                  if all(p.file_bytes is not None and p.path.rpartition("/")[2] in EXPORT_MARKERS for p in problems)]
        lines = self.summary(set(marked))
        if marked:
            files = sum(len(entries[entry]) for entry in marked)
            names = sorted({p.path.rpartition("/")[2] for entry in marked for p in entries[entry]})
            lines.append(f"{files} exporter marker file(s) ({', '.join(names)}) in {len(marked)} folder(s) "
                         f"({marked[0]}{', ...' if len(marked) > 1 else ''}): left alone, not tables (each is "
                         "recorded in raw_zone_problems)")
        return lines


def future_days_note(future: list[str], today: str) -> str:
    """What a build says of the raw day folders it skips because their day (``future``) has not begun (``today``,
    UTC): on every path, the build stamp's "up to date" and ``--dry-run`` included (review rev30d)."""
    return (f"raw day(s) {', '.join(future)} lie in the future (today is {today}, UTC): a day is ingested once its "
            "export exists and the day has begun; check the export's folder names")


def display_name(name: str) -> str:
    """A file name as valid UTF-8 text: undecodable bytes become backslash escapes (``\\xff``) and a backslash of
    the name is doubled (``\\\\``), so the text is one name's only (review rev25h: the byte ``\\xff`` and the four
    characters ``\\xff`` read alike, two rows of raw_zone_problems had one path and its uniqueness check failed
    every ingest). Deterministic; a name without a backslash that is valid UTF-8 reads as written."""
    raw = os.fsencode(name)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def day_of_folder(name: str) -> tuple[str | None, str | None]:
    """``(day, None)`` for a valid ``dt=YYYY-MM-DD`` folder name, else ``(None, why it is not)``."""
    match = DAY_FOLDER.fullmatch(name)
    if match is None:
        return None, f"{display_name(name)!r} is not dt=YYYY-MM-DD"
    try:
        dt.date.fromisoformat(match.group(1))
    except ValueError as exc:
        return None, f"{display_name(name)!r} is not a calendar date ({exc})"
    return match.group(1), None


def _inside(path: Path, zone: Path) -> bool:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):   # dangling link, loop
        return False
    return target == zone or zone in target.parents


def _rel(path: Path, root: Path) -> str:
    return display_name(path.relative_to(root).as_posix())


def _listed(folder: Path, root: Path, entry: str, reason: str, detail: str) -> list[RawZoneProblem]:
    """One row per entry under ``folder`` (links not followed), capped; the folder itself if empty."""
    rows: list[RawZoneProblem] = []
    extra_files = extra_bytes = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            path = Path(dirpath) / name
            try:
                info = path.lstat()
            except OSError:
                continue   # vanished while listed
            size = info.st_size if stat.S_ISREG(info.st_mode) else None
            if len(rows) < MAX_LISTED_FILES:
                rows.append(RawZoneProblem(_rel(path, root), entry, reason, detail, size))
            else:
                extra_files += 1
                extra_bytes += size or 0
    if extra_files:
        rows.append(RawZoneProblem(_rel(folder, root), entry, reason,
                                   f"{detail}; and {extra_files} more entries ({extra_bytes} bytes) not listed", None))
    if not rows:
        rows.append(RawZoneProblem(_rel(folder, root), entry, reason, f"{detail}; the folder is empty", None))
    return rows


def _entry_problems(child: Path, root: Path, entry: str, reason: str, detail: str) -> list[RawZoneProblem]:
    """Rows for one skipped entry: its files if it is a real folder, else the entry itself."""
    if not child.is_symlink() and child.is_dir():
        return _listed(child, root, entry, reason, detail)
    try:
        info = child.lstat()
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
    except OSError:
        size = None
    return [RawZoneProblem(_rel(child, root), entry, reason, detail, size)]


def scan_raw_zone(root: Path) -> RawZoneScan:
    """Days and problems of the raw zone under data home ``root`` (see the module docstring)."""
    logs = root / "raw" / "app_logs"
    if not logs.is_dir():
        return RawZoneScan([], [])
    zone = (root / "raw").resolve()
    if not _inside(logs, zone):
        entry = _rel(logs, root)
        return RawZoneScan([], [RawZoneProblem(entry, entry, LINK_OUTSIDE_RAW_ZONE,
                                               "app_logs links outside the raw zone; nothing under it is read", None)])
    days: list[str] = []
    problems: list[RawZoneProblem] = []
    for child in sorted(logs.iterdir(), key=lambda p: p.name):
        entry = _rel(child, root)
        if EXPORT_STAGING.fullmatch(child.name) and not child.is_symlink() and child.is_dir() and staging_in_use(child):
            continue                     # a running export's staging (see the module docstring)
        if not child.name.startswith("dt="):
            problems += _entry_problems(child, root, entry, UNEXPECTED_ENTRY,
                                        f"{display_name(child.name)!r} is not a dt=YYYY-MM-DD day folder; not ingested")
            continue
        day, why = day_of_folder(child.name)
        if day is None:
            problems += _entry_problems(child, root, entry, INVALID_DAY_NAME, f"{why}; not ingested")
        elif child.is_symlink() and not _inside(child, zone):
            problems.append(RawZoneProblem(entry, entry, LINK_OUTSIDE_RAW_ZONE,
                                           "the day folder links outside the raw zone (or dangles); not followed", None))
        elif not child.is_dir():
            problems += _entry_problems(child, root, entry, NOT_A_FOLDER, "a day must be a folder; not ingested")
        else:
            days.append(day)
            for inner in sorted(child.iterdir(), key=lambda p: p.name):
                if inner.name not in RAW_FILE_NAMES:
                    problems += _entry_problems(
                        inner, root, entry, UNEXPECTED_FILE,
                        f"{display_name(inner.name)!r} is not one of {', '.join(RAW_FILE_NAMES)}; not ingested")
    problems.sort(key=lambda p: (p.path, p.reason))
    return RawZoneScan(sorted(days), problems)
