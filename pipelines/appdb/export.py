"""One day of the app database -> ``raw/app_logs/dt=DAY/{users,images,rankings,downloads}.jsonl.gz``.

Each table is streamed from a server-side cursor (``sql/app_db/export_*.sql``, fetched in batches of
binary rows) in one REPEATABLE READ READ ONLY transaction, formatted row by row with ``formats.rawlines`` (the
functions the simulator writes with) and gzip-compressed into a staging folder beside the day, so
memory does not grow with the day. Text the JSON layer cannot carry (bytes that are not UTF-8, which a
``SQL_ASCII`` database can hold) is written as the same raw bytes, so the ingest quarantines that line
as ``invalid_utf8``; text of a database in another encoding that has no UTF-8 equivalent (a WIN1252
byte 0x81) is written as ``\\udcXX`` escapes of its stored bytes (``connection.Unconvertible``), which
the ingest quarantines as ``invalid_utf8`` too, and the report counts those rows per table; NUL and
other control characters are JSON escapes (``\\u0000``) that the ingest quarantines as
``control_characters`` in a prompt. Nothing is changed silently.

Publishing: a new day's staging folder is renamed into place in one step; for a day already there, a
file whose bytes are unchanged is left alone (same inode and mtime, so the raw-partition sensor sees no
change) and the day is swapped in whole once all four files are complete (see :func:`_publish`); an export whose
day already holds a newer snapshot (another export of the day took its snapshot later and published first: the
tickets of :func:`take_snapshot`, under the day's export lock) publishes nothing (review rev31e). From a
replica (a hot standby, a logical-replication subscriber) a re-export never drops a row its files hold that the
app's table does not hold at all: such a row is kept in the re-exported file beside the rows read, with a warning
(:func:`keep_vanishing_rows`): rows leave an exported day only when it is exported from the primary, or when the
app holds them on another day, undated, or left out by the export's settings.
"""
from __future__ import annotations

import array
import bisect
import contextlib
import ctypes
import datetime as dt
import decimal
import errno
import gzip
import hashlib
import heapq
import json
import math
import os
import queue
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from formats import rawlines
from formats.files import (
    FileTooLarge,
    NotRegularFile,
    atomic_path,
    lstat_or_none,
    open_regular,
    open_regular_file,
    read_small_file,
    sha256_file,
    write_bytes_atomic,
)
from formats.home import DataHome
from formats.locks import LockFileRefused, hold_lock
from formats.progress import Progress, silent
from formats.rawzone import EXPORT_STAGING, hold_staging_fd, staging_in_use
from formats.settings import check_fields, knob, load
from pipelines.appdb.connection import (
    APP_SCHEMA,
    BATCH_BYTES,
    BATCH_LINES,
    AppDatabaseError,
    ServerName,
    Unconvertible,
    as_text,
    connect,
    database_error,
    read_rows,
    server_name,
    text_encoding,
)
from pipelines.appdb.scheduled import ScheduledDays, newest_closed
from pipelines.appdb.tables import check_tables, expected_columns, statement
from pipelines.ingest import lines as _lines
from pipelines.ingest import parse as _ingest
from pipelines.ingest.config import IngestConfig, shift_day
from pipelines.ingest.parse import without_bom
from pipelines.provenance import read_cache, writing_cache
from schemas.raw import RAW_TABLES

_SURROGATES = re.compile("[\udc80-\udcff]+")


@dataclass(frozen=True)
class AppExportConfig:
    """Settings of the app-database export (``[app_export]`` of HOME/pickapic.toml; Dagster run config, CLI flags)."""

    lag_minutes: int = knob(60, "Minutes after a day ends (UTC) before it may be exported: late commits land first.",
                            min=0, max=7 * 24 * 60, output=False)
    lookback_days: int = knob(2, "Days before the newest closed day that each scheduled export re-exports, so rows "
                                 "committed late reach their day (an unchanged day is not rewritten).",
                              min=0, max=31, output=False)
    users_snapshot: bool = knob(True, "users file = every account created up to the day's end (a snapshot); "
                                      "false = only the accounts created that day, like the simulator's files.")
    blob_workers: int = knob(8, "Threads copying image blobs from the app's storage into raw/images.",
                             min=1, max=64, output=False)
    max_line_bytes: int = knob(0, "The ingest's line limit the export cuts over-long text at (rows then "
                                  "quarantined as line_too_long); 0: the home's ingest.max_line_bytes. `pickapic "
                                  "build` passes its own ingest.max_line_bytes (--set, --config) here.",
                               min=0, output=False)
    blob_max_bytes: int = knob(0, "The feature stage's blob limit the blob copy stops at (max_bytes + 1 bytes); "
                                  "0: the home's features.max_bytes. `pickapic build` passes its own "
                                  "features.max_bytes here.", min=0, output=False)
    keep_exported_rows: bool = knob(False, "Keep, in a day re-exported from the primary too, the rows its raw "
                                           "files hold that the app no longer has (rows the app deleted), with a "
                                           "warning; false: they leave the day. A re-export from a replica always "
                                           "keeps them; a row the app holds on another day, undated or left out "
                                           "by users_snapshot is never kept.", output=False)
    primary_host: str = knob("", "The primary's address as its hot standbys' primary_conninfo names it ('host' or "
                                 "'host:port', comma-separated for several): a standby whose WAL receiver streams "
                                 "from it is a standby of the primary (a caught-up one of a quiet primary is "
                                 "exported). Empty: the export asks the standby's upstream itself (connecting with "
                                 "the DSN's user and password) whether it is the primary.", output=False)

    def validate(self) -> "AppExportConfig":
        """Raise ``ValueError`` naming the first bad value; return self."""
        check_fields(self)
        return self


class ExportTooEarly(ValueError):
    """The day has not been closed for ``lag_minutes`` yet."""


@dataclass
class TableExport:
    """One exported file."""

    rows: int
    bytes: int
    sha256: str
    changed: bool = False


@dataclass
class AppExportReport:
    """What one day's export read and wrote."""

    day: str
    server: dict
    tables: dict[str, TableExport] = field(default_factory=dict)
    published: str = ""                      # "new day", "updated", "unchanged", "superseded" (review rev31e),
    #                                          "held back" (fix36g: rows leaving the day could not be recorded)
    blobs: dict = field(default_factory=dict)
    seconds: float = 0.0
    undated: dict = field(default_factory=dict)     # table -> {"rows", "first_ids"}: rows no day holds
    unconvertible: dict = field(default_factory=dict)   # table -> {"rows", "first_ids"}: text with no UTF-8
    oversized: dict = field(default_factory=dict)       # table -> {"rows", "first_ids"}: lines written cut
    late: dict = field(default_factory=dict)            # older day -> table -> counts: rows its raw files lack
    #                                                     (or rows that left it; "edited": rows edited, rev35a)
    kept: dict = field(default_factory=dict)            # table -> {"rows", "first_ids"}: rows kept, the app lacks them
    warnings: list[str] = field(default_factory=list)

    @property
    def changed_tables(self) -> list[str]:
        return [t for t, e in self.tables.items() if e.changed]

    def metadata(self) -> dict:
        """JSON-able values and a markdown table for the orchestrator (no password: the server has none)."""
        rows = "\n".join(f"| {t} | {e.rows} | {e.bytes} | {'yes' if e.changed else 'no'} | `{e.sha256[:16]}` |"
                         for t, e in self.tables.items())
        files = "| table | rows | bytes | changed | sha256 |\n|---|---:|---:|---|---|\n" + rows
        if self.published == "superseded":      # review rev31h: no file of its own to show (see its warning)
            files = ("none published: another export of the day published a newer snapshot, whose files the day "
                     "holds (see the warnings)")
        elif self.published == "held back":     # fix36g: the day's rows that leave it could not be recorded
            files = "none published: the day keeps its raw files until the rows leaving it are recorded (see the warnings)"
        return {
            "day": self.day, "published": self.published, "changed_tables": ", ".join(self.changed_tables) or "none",
            "rows": sum(e.rows for e in self.tables.values()),
            **{f"rows_{t}": e.rows for t, e in self.tables.items()},
            **{f"server_{k}": v for k, v in self.server.items()},
            **{f"blobs_{k}": v for k, v in self.blobs.items()},
            "seconds": round(self.seconds, 3),
            "undated_rows": sum(info["rows"] for info in self.undated.values()),
            "unconvertible_rows": sum(info["rows"] for info in self.unconvertible.values()),
            "oversized_rows": sum(info["rows"] for info in self.oversized.values()),
            "late_days": ", ".join(sorted(self.late)) or "none",
            "kept_rows": sum(info["rows"] for info in self.kept.values()),
            "warnings": "\n".join(self.warnings) or "none",
            "files": files,
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "changed_tables": self.changed_tables}


def day_bounds(day: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of ``day`` in UTC, naive (as the app's timestamps are)."""
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time())
    return start, start + dt.timedelta(days=1)


def check_lag(day: str, lag_minutes: int, now: dt.datetime | None = None) -> None:
    """Raise ``ExportTooEarly`` unless ``day`` ended at least ``lag_minutes`` ago (UTC)."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    try:
        ready = day_bounds(day)[1] + dt.timedelta(minutes=lag_minutes)
    except OverflowError:
        raise ExportTooEarly(f"day {day} ends past the last date this exporter can represent; it is never "
                             "closed for export") from None
    if now < ready:
        raise ExportTooEarly(f"day {day} is still open for late commits until {ready:%Y-%m-%d %H:%M} UTC "
                             f"(lag_minutes = {lag_minutes}); export it after that or lower lag_minutes")


def is_closed(day: str, lag_minutes: int, now: dt.datetime | None = None) -> bool:
    """Whether ``day`` ended at least ``lag_minutes`` ago (UTC)."""
    try:
        check_lag(day, lag_minutes, now)
    except ExportTooEarly:
        return False
    return True


# --- formatting -----------------------------------------------------------------------------------

def jstr_raw(value: str | None) -> str:
    """``rawlines.jstr`` that keeps ``surrogateescape`` characters literal (they encode back to the raw bytes)."""
    if value is None:
        return "null"
    parts, pos = [], 0
    for match in _SURROGATES.finditer(value):
        parts += [json.dumps(value[pos:match.start()])[1:-1], match.group()]
        pos = match.end()
    parts.append(json.dumps(value[pos:])[1:-1])
    return '"' + "".join(parts) + '"'


class _Unrepresentable(str):
    """A number the app's column holds that a float64 cannot hold as written (``numeric`` 1e-400, 1e400,
    7.00000000000000000001): written as its text in a JSON string, so the ingest quarantines the line
    (``wrong_type``: gs must be a JSON number, a float64) instead of the export writing 0.0, Infinity or
    7.0 unseen."""

    def __repr__(self) -> str:   # what rawlines.jnum writes
        return json.dumps(str(self))


def _float(text: str | None) -> float | _Unrepresentable | None:
    """The float64 of a ``gs`` text, or the text itself (:class:`_Unrepresentable`) when the float's
    shortest decimal is not the same number: a ``double precision`` / ``real`` column always round-trips
    (the server writes its shortest exact text), a ``numeric`` one only when its digits fit a float64.
    NaN and Infinity as written stay floats (the ingest quarantines them as ``invalid_value``)."""
    if text is None:
        return None
    value = float(text)
    if not math.isfinite(value):
        return value if ("inf" in text.lower() or "nan" in text.lower()) else _Unrepresentable(text)
    if repr(value) == text:      # the usual case, without a Decimal
        return value
    try:
        same = decimal.Decimal(repr(value)) == decimal.Decimal(text)
    except decimal.InvalidOperation:
        same = False
    return value if same else _Unrepresentable(text)


# One formatter per table: values in the SELECT's column order (text already decoded) -> one line.
FORMATS: dict[str, Callable[[list, rawlines.Encoder], str]] = {
    "users": lambda v, enc: rawlines.user_line(v[0], v[1], v[2], v[3], enc),
    "images": lambda v, enc: rawlines.image_line(v[0], v[1], v[2], v[3], enc(v[4]), enc(v[5]), v[6], _float(v[7]),
                                                 v[8], v[9], v[10], v[11], v[12], enc),
    "rankings": lambda v, enc: rawlines.ranking_line(v[0], v[1], v[2], v[3:7], v[7], enc(v[8]), enc),
    "downloads": lambda v, enc: rawlines.download_line(v[0], v[1], v[2], v[3], enc(v[4]), enc),
}
def format_row(table: str, row: Iterable) -> bytes:
    """One raw line (without the newline) for a row of ``table`` as ``read_rows`` yields it."""
    fmt = FORMATS[table]
    try:
        values = [v.decode("utf-8") if type(v) is bytes else v for v in row]
        return fmt(values, rawlines.jstr).encode("utf-8")
    except UnicodeDecodeError:
        values = [v.decode("utf-8", "surrogateescape") if type(v) is bytes else v for v in row]
        return fmt(values, jstr_raw).encode("utf-8", "surrogateescape")


# --- reading and writing --------------------------------------------------------------------------

class _CompressingWriter:
    """Feeds one gzip stream from a thread (zlib releases the GIL), so formatting and compressing overlap.

    One stream fed in order gives the same bytes as writing inline; the queue is bounded, so memory
    stays a few batches whatever the day's size.
    """

    def __init__(self, gz) -> None:
        self.gz, self.error = gz, None
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, name="export-gzip", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.gz.write(chunk)
                except BaseException as exc:  # handed to the caller by write()/close()
                    self.error = exc

    def write(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# The snapshot of users starts at the first day a date names (undated_rows.sql's bound): an account
# created '-infinity' or BC is one the report lists as undated, never a snapshot row (to_char has no
# era: a BC date would read as the same date AD, '-infinity' as null).
FIRST_DATED = "0001-01-01"


ROW_OVERHEAD = 16    # bytes a fetch plan counts per value besides its text (JSON key, quotes, separators)
# The characters a JSON string literal (``ensure_ascii``, formats.rawlines.jstr) writes longer than one byte:
# '"', backslash and the five control characters with a short escape (\b \t \n \f \r) take 2 bytes; every
# other control character, and DEL, takes 6 (\u0001, \u007f). PostgreSQL text cannot hold NUL.
_SHORT_ESCAPES = '"\\' + "\b\t\n\f\r"
_LONG_ESCAPES = "".join(chr(c) for c in [*range(1, 32), 127] if chr(c) not in "\b\t\n\f\r")


def _char_runs(chars: str) -> str:
    """A PostgreSQL regular expression matching each run of ``chars`` (single-byte ASCII characters): one
    match per run, so text made of nothing else (a paste of binary junk) is one match, not one per byte."""
    return "[" + "".join("\\" + c if c in "\\]^-[" else c for c in chars) + "]+"


# the parameters _written_bytes' SQL takes: the characters of each escape length, as bracket expressions
WRITTEN_BYTES_PARAMS = {"plan_short": _char_runs(_SHORT_ESCAPES), "plan_long": _char_runs(_LONG_ESCAPES)}


def _written_bytes(column: str, utf8: bool) -> str:
    """SQL for a bound on the bytes text column ``column`` becomes in a raw line (its JSON literal without
    quotes): each stored byte once, plus 1 for a short escape and 5 for a \\u00XX one (counted with
    regexp_replace() of their runs, which drops those characters: translate() did the same 2-13x slower, 45 s
    of server time for a day of 4,096 prompts of 32 KB), plus the cost of non-ASCII text, which ``ensure_ascii``
    writes as \\uXXXX escapes. In a UTF8 database a character of k >= 2 bytes is written as 6 bytes (12 for
    a surrogate pair), at most its k bytes + 4 * (k - 1); octet_length - char_length counts the (k - 1)s.
    In any other database (text converted by the export, or written as \\udcXX escapes of its stored bytes
    where it has no UTF-8) each non-ASCII byte is counted as 6, by removing the non-ASCII characters.
    The regular expressions run under the "C" collation: a column declared with a nondeterministic ICU
    collation (case-insensitive prompts) would otherwise fail the export ("nondeterministic collations are
    not supported for regular expressions"); the characters they match are ASCII, which every collation
    compares alike."""
    text = f"{column}::text"
    bytewise = f'{text} COLLATE "C"'     # PostgreSQL refuses a regex under a nondeterministic (ICU) collation
    short = f"(octet_length({text}) - octet_length(regexp_replace({bytewise}, %(plan_short)s, '', 'g')))"
    long = f"(octet_length({text}) - octet_length(regexp_replace({bytewise}, %(plan_long)s, '', 'g')))"
    wide = (f"4 * (octet_length({text}) - char_length({text}))" if utf8 else
            f"5 * (octet_length({text}) - octet_length(regexp_replace({bytewise}, '[^\\x01-\\x7f]+', '', 'g')))")
    return f"coalesce(octet_length({text}) + {short} + 5 * {long} + {wide}, 0)"


def fetch_plan(conn: psycopg.Connection, table: str, params: dict) -> list[int]:
    """Rows per fetch of ``table``'s export statement, in order, so that no fetch makes much more than
    BATCH_BYTES of lines (at most BATCH_BYTES plus its last row) nor more than BATCH_LINES rows.

    Sized from the previous fetch, a fetch could not see the next rows' size: after 4,080 short rows,
    4,096 rows of 32 KB prompts arrived in one fetch (128 MiB of text, ~4x that in memory). The plan is
    computed by the server from the same statement in the same snapshot, before the rows are read: a
    running sum of each row's size in the statement's own order (all its columns: rows that tie are
    identical, so they have the same size), grouped into runs of BATCH_BYTES and of BATCH_LINES rows. A
    row's size is what its line will take, not its stored text: a text value counts the escapes the JSON
    line writes for it (:func:`_written_bytes`: a control character is 6 bytes there, a non-ASCII one up
    to 6), so a day of prompts pasted from binary junk is fetched in as many more, smaller fetches and the
    memory stays near the same bound. It costs the server a second sort of the day's rows; the export
    receives one integer per fetch. ``OFFSET 0`` keeps the sizes subquery from being pulled up, which would
    compute each row's size twice (once for the running sum, once for ``- b``)."""
    columns = expected_columns(table)
    names = [f"c{i}" for i in range(1, len(columns) + 1)]
    utf8 = conn.info.parameter_status("server_encoding") == "UTF8"
    size = " + ".join(_written_bytes(c, utf8) if kind == "text" else f"coalesce(octet_length({c}::text), 0)"
                      for c, (_, kind) in zip(names, columns)) + f" + {ROW_OVERHEAD * len(names)}"
    aliases = ", ".join(names)
    query = (f"SELECT count(*)::int8 FROM (SELECT (sum(b) OVER w - b) / %(plan_bytes)s AS byte_run, "
             f"(row_number() OVER w - 1) / %(plan_rows)s AS row_run "
             f"FROM (SELECT {size} AS b, r.* FROM ({statement('export_' + table)}) AS r({aliases}) OFFSET 0) AS s "
             f"WINDOW w AS (ORDER BY {aliases} ROWS UNBOUNDED PRECEDING)) AS runs "
             f"GROUP BY byte_run, row_run ORDER BY byte_run, row_run")
    return [int(n) for (n,) in conn.execute(query, {**params, "plan_bytes": BATCH_BYTES, "plan_rows": BATCH_LINES,
                                                    **WRITTEN_BYTES_PARAMS})]


FIRST_IDS = 10       # primary keys the report names per table with unconvertible rows
DEFAULT_LINE_BYTES = IngestConfig().max_line_bytes   # the ingest's line limit (export_day: the home's)
MAX_CHARS = 2**31 - 1   # the largest int4 (left()'s length); PostgreSQL's largest text value is 1 GB


def _utf8_bytes(value: object) -> int:
    """The length in bytes of a text value as UTF-8 (its stored bytes for ``bytes``; a ``\\udcXX``
    character of :class:`Unconvertible` text counts 3); -1 for anything else."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return -1


def _cut_oversized(table: str, batch: list, lines: list[bytes], max_line_bytes: int, found: dict) -> None:
    """Cut, in place, the line of each row holding a text value of more than ``max_line_bytes`` bytes
    (UTF-8) to its first ``max_line_bytes + 1`` bytes, and count those rows into ``found``.

    Such a value was fetched cut to ``max_line_bytes + 1`` characters (the export statements' ``left()``,
    at most 4 bytes each), so the export never holds a huge value whole (a 100 MB prompt cost 4-5.5x its
    size in memory); a value cut there is over the limit in bytes too, so one not cut is measured whole.
    Its line is longer than ``max_line_bytes`` whatever its escaping, so the ingest quarantines it as
    ``line_too_long`` (keeping its first 64 KiB, as it would of the whole line). The written line stops
    inside the JSON, so no later limit can take the cut value for the app's: it stays quarantined.
    """
    for i, line in enumerate(lines):
        if len(line) > max_line_bytes and any(_utf8_bytes(v) > max_line_bytes for v in batch[i]):
            lines[i] = line[:max_line_bytes + 1]
            info = found.setdefault(table, {"rows": 0, "first_ids": []})
            info["rows"] += 1
            if len(info["first_ids"]) < FIRST_IDS:
                info["first_ids"].append(_id_text(batch[i][0]))


def _write_table(conn: psycopg.Connection, table: str, params: dict, path: Path,
                 unconvertible: dict | None = None, oversized: dict | None = None,
                 max_line_bytes: int = DEFAULT_LINE_BYTES, keys: array.array | None = None) -> TableExport:
    """Stream one table into a gzip file; returns rows, bytes and sha256 of the file (``keys``: gets the rows'
    non-NULL ids, in the file's order, for :func:`not_read`). Rows holding
    :class:`Unconvertible` text are counted into ``unconvertible`` (``{"rows", "first_ids"}``, set only
    when there are some); rows whose text is over the ingest's ``max_line_bytes``, written as a cut line
    (:func:`_cut_oversized`), into ``oversized``."""
    rows = 0
    converting = text_encoding(conn) is not None   # only then can a value be Unconvertible
    bad, first_ids = 0, []
    # left(text, int4): no text value holds more than 1 GB, so a larger limit cuts nothing either
    params = {**params, "max_chars": min(max_line_bytes + 1, MAX_CHARS)}
    oversized = {} if oversized is None else oversized

    plan = iter(fetch_plan(conn, table, params))

    def next_fetch() -> int:           # the same snapshot: the plan covers every row (BATCH_LINES: a safe end)
        return next(plan, BATCH_LINES)

    with open_new_file(path) as raw, rawlines.gzip_writer(raw) as gz:
        writer = _CompressingWriter(gz)
        try:
            for batch in read_rows(conn, statement("export_" + table), params, next_fetch):
                rows += len(batch)
                if keys is not None:
                    keys.extend(row[0] for row in batch if row[0] is not None)
                if converting:
                    for row in batch:
                        if any(type(v) is Unconvertible for v in row):
                            bad += 1
                            if len(first_ids) < FIRST_IDS:
                                first_ids.append(_id_text(row[0]))
                lines = [format_row(table, row) for row in batch]
                if max(map(len, lines)) > max_line_bytes:
                    _cut_oversized(table, batch, lines, max_line_bytes, oversized)
                writer.write(b"\n".join(lines) + b"\n")
        finally:
            writer.close()
        gz.close()
        raw.flush()
        os.fsync(raw.fileno())
    if bad and unconvertible is not None:
        unconvertible[table] = {"rows": bad, "first_ids": first_ids}
    return TableExport(rows=rows, bytes=path.stat().st_size, sha256=sha256_file(path))


def open_new_file(path: Path):
    """``path`` created and opened to write, binary: it must not exist (``O_EXCL``) and a symlink there is
    never followed (``O_NOFOLLOW``; with ``O_EXCL`` a link is an ``EEXIST`` either way), so an entry
    planted in the staging folder is refused instead of written through. The umask applies (0666 &
    ~umask), as to any new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    return open(fd, "wb", closefd=True)


def process_umask() -> int:
    """This process's umask, read without changing it (``/proc/self/status``; else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def folder_mode(path: Path) -> int:
    """The mode ``mkdir(path, 0o777)`` would have given ``path``: 0777 & ~umask, and the setgid bit of a
    setgid parent (a group-shared home's folders carry it down)."""
    return (0o777 & ~process_umask()) | (os.lstat(path.parent).st_mode & stat.S_ISGID)


_RENAME_EXCHANGE = 2        # <linux/fs.h>: renameat2 swaps the two paths atomically
_AT_FDCWD = -100
_renameat2 = None


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system does not offer it (nothing was changed then)."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        with contextlib.suppress(OSError, AttributeError):
            function = ctypes.CDLL(None, use_errno=True).renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
            _renameat2 = function
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EBUSY):
        return False            # not here, or not for this account (a sticky folder): the per-file path
    raise OSError(code, f"cannot swap {first} and {second}: {os.strerror(code)}")


def _foreign_entries(folder: Path, ours: set[str]) -> list[str]:
    """Entries of ``folder`` that are not the export's own regular files."""
    return [e.name for e in os.scandir(folder) if e.name not in ours or not e.is_file(follow_symlinks=False)]


class DayFolderRefused(FileExistsError):
    """The day's folder holds something the export did not write and cannot carry into the new day
    (or changed while the new day was swapped in): nothing was replaced."""


def _publish(home: DataHome, day: str, staging: Path, report: AppExportReport) -> None:
    """Move the staged files into ``raw/app_logs/dt=DAY/``: the folder at once, or only the changed files.

    A day already there whose files changed is replaced in one step where the system can swap two
    folders: its unchanged files, and anything else the folder holds that the export did not write (an
    operator's note), are hard-linked into the staging folder (same inode and mtime: untouched), and
    the two folders are exchanged, so a reader sees the old day or the new one, never a mix; a foreign
    entry added, removed or replaced (another inode under its name: an editor's save) in the old day
    between its link and the exchange swaps the folders back and refuses the update. A foreign
    entry that cannot be hard-linked (a folder, another account's file under ``protected_hardlinks``)
    refuses the update (:class:`DayFolderRefused`): renaming file by file beside it would leave a mixed
    day if the export died between two renames. Only where the system cannot swap folders (or refuses
    a link to the export's own files) is each changed file renamed over its old version, once every
    target is known to be replaceable.
    """
    final = home.raw_day(day)
    if not os.path.lexists(final):
        for export in report.tables.values():
            export.changed = True
        # private while staged (0700), the day takes the mode a new folder gets here (the umask, the parent's
        # setgid bit): the home's group still reads it. Review rev34g: taken before the rename (it came after, and an
        # export killed between the two left the day 0700 for good: every rerun found it unchanged); the files are
        # complete by now, so the folder no longer needs to be private
        os.chmod(staging, folder_mode(final))
        os.rename(staging, final)
        report.published = "new day"
        return
    if final.is_symlink() or not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder: refusing to replace it")
    moves, keep = [], []
    for table, export in report.tables.items():
        target = home.raw_file(day, table)
        info = lstat_or_none(target)
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise FileExistsError(f"{target} exists and is not a regular file: refusing to replace it")
        same = info is not None and info.st_size == export.bytes and sha256_file(target) == export.sha256
        export.changed = not same
        (moves if export.changed else keep).append((staging / target.name, target))
    if not moves:
        report.published = "unchanged"
        return
    report.published = "updated"
    ours = {target.name for _, target in moves + keep}
    foreign = sorted(_foreign_entries(final, ours))
    linked: list[Path] = []
    carried: dict[str, tuple[int, int]] = {}   # foreign name -> (device, inode) of the entry carried
    try:
        for staged, target in keep:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            if os.path.lexists(target):
                os.link(target, staged, follow_symlinks=False)
                linked.append(staged)
        for name in foreign:               # carried over as the same inode: never copied, never replaced
            try:
                os.link(final / name, staging / name, follow_symlinks=False)
            except OSError as exc:
                _unlink_all(linked)
                raise DayFolderRefused(
                    f"{final} holds {name!r}, which the export did not write and cannot carry into the "
                    f"updated day ({exc.strerror}: a folder, or a file this account may not hard-link); "
                    "move it out of the day folder to export the day (the ingest skips it as "
                    "unexpected_file anyway)") from None
            linked.append(staging / name)
            carried[name] = _identity(staging / name)
        # the day folder's mode and group carry over (an operator's 2750 stays), taken by the new folder before
        # the swap (review rev34g: after it, a kill between the two left the day private for good); the group first
        # (a chown may drop the setgid bit the mode then sets)
        kept = os.lstat(final)
        with contextlib.suppress(OSError):
            os.chown(staging, -1, kept.st_gid)
        os.chmod(staging, stat.S_IMODE(kept.st_mode))
        swapped = exchange(staging, final)
    except DayFolderRefused:
        raise
    except OSError:   # a link refused (another owner under protected_hardlinks, another device) or the swap
        swapped = False
    if swapped and sorted(_foreign_entries(staging, ours)) == foreign \
            and all(_identity(staging / name) == carried[name] for name in foreign):
        return                              # the old day is now at ``staging``, removed by the caller
    if swapped:                             # the day changed meanwhile: swap back, replace nothing
        exchange(staging, final)
        _unlink_all(linked)
        raise DayFolderRefused(f"{final} changed while the updated day was swapped in (an entry was added, "
                               "removed or replaced): nothing was replaced; run the export again")
    _unlink_all(linked)                     # no swap here: the old files stay where they are
    for source, target in moves:  # every file is complete and every target replaceable before the first rename
        os.replace(source, target)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the entry ``path`` names (a link is not followed); None when there is none."""
    info = lstat_or_none(path)
    return None if info is None else (info.st_dev, info.st_ino)


def _unlink_all(paths: list[Path]) -> None:
    """Remove the staging folder's hard links (the day folder's own names stay)."""
    for path in paths:
        path.unlink(missing_ok=True)


STALE_AFTER_S = 60    # a staging folder unlocked and untouched this long is an interrupted export's


def hold_staging(staging: Path) -> int:
    """Hold the staging folder for as long as the returned descriptor is open (:func:`formats.rawzone.hold_staging_fd`:
    an OFD lock, and a shared ``flock`` for the release before fix34g's probe, review rev34i): other exports and the
    raw-zone scan see the folder in use (any PID namespace on this kernel).
    Review rev34g: a scan probing the folder at that instant (it took the exclusive ``flock`` the hold took with
    ``LOCK_NB``) failed the export; a probe now takes no lock the hold could find taken."""
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        hold_staging_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_staging(home: DataHome, now: float | None = None) -> list[str]:
    """Remove the staging folders of exports that died (killed before their cleanup ran): real folders
    with a staging name that no export holds locked and that were not touched for ``STALE_AFTER_S``
    (the moment between an export's ``mkdir`` and its lock). Returns the names removed."""
    removed = []
    now = time.time() if now is None else now
    for entry in os.scandir(home.raw_logs):
        if not EXPORT_STAGING.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        if now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_S or staging_in_use(Path(entry.path)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed


def database_now(conn: psycopg.Connection) -> dt.datetime:
    """The database server's clock (its transaction start, UTC): what the app's rows are committed by."""
    return conn.execute("SELECT now()").fetchone()[0]


def real_folders(home: DataHome, folders: list[Path], create: bool) -> None:
    """Raise when one of ``folders`` (inside the data home), or a folder between the home and them, is
    a symlink or not a folder: the export writes only into the home's own folders, never through a
    link to somewhere else (the ingest would not read there either). With ``create`` the missing ones
    are made (the umask applies); without, a missing folder ends the check of its path."""
    if create:
        home.root.mkdir(parents=True, exist_ok=True)    # the home itself may be a link (a deployment's choice)
    for folder in folders:
        path = home.root
        for part in folder.relative_to(home.root).parts:
            path = path / part
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    break
                path.mkdir(mode=0o777, exist_ok=True)
                info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode):
                kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a folder"
                raise FileExistsError(f"{path} is {kind}: the app export writes only into real folders of the "
                                      "data home; move it away (and its files into a real folder) to export")


REPLAY_WAIT_S = 60.0    # how long an export from a hot standby waits for it to replay the WAL it has received
REPLAY_POLL_S = 0.2
# The longest a streaming standby may have heard nothing from its upstream: its walreceiver asks for a reply
# after wal_receiver_timeout / 2 of silence (and ends the stream after wal_receiver_timeout), so a live stream
# is never silent for long; with wal_receiver_timeout = 0 it never asks, and this bound is what holds.
MIN_SILENCE_S = 60.0


class ReplicaBehind(AppDatabaseError):
    """The server is a hot standby (read replica) that cannot show it holds what its primary committed: replay
    paused or behind the WAL it has received, or no WAL receiver streaming to it, or an upstream standby that does
    not stream; or a logical-replication subscriber of the app tables whose subscription does not receive."""


class RowsWouldVanish(AppDatabaseError):
    """A re-export of a day would replace its raw files with ones that lack rows (primary keys) they hold, from a
    source that may be behind (a replica). Raised until review rev29c; such rows are now kept in the day
    (:func:`keep_vanishing_rows`). Kept for callers that catch it."""


@dataclass
class _StandbyState:
    """One row of ``sql/app_db/standby.sql``."""

    standby: bool
    received: str | None
    replayed: str | None
    behind: int | None
    caught_up: bool | None
    paused: bool | None
    replayed_at: dt.datetime | None
    receiver: bool
    receiver_status: str | None
    flushed: str | None
    latest_end: str | None
    sent_at: dt.datetime | None
    silent_s: float | None
    replayed_all: bool
    receiver_timeout_ms: int | None
    subscriptions: list[str]
    sender_host: str | None = None
    sender_port: int | None = None


def _standby_state(conn: psycopg.Connection, target: str | None) -> _StandbyState:
    """standby.sql read in a transaction of its own (it ends here: no snapshot is held)."""
    row = list(conn.execute(statement("standby"), {"target": target, "schema": APP_SCHEMA,
                                                   "tables": list(RAW_TABLES)}).fetchone())
    conn.rollback()
    for i in (1, 2, 8, 9, 10, 16):
        row[i] = as_text(row[i])
    row[15] = [as_text(s) for s in row[15] or []]
    return _StandbyState(*row)


def _silence_allowed(state: _StandbyState) -> float:
    """Seconds a streaming standby may have heard nothing from its upstream (see MIN_SILENCE_S)."""
    return max(MIN_SILENCE_S, (state.receiver_timeout_ms or 0) / 1000.0)


def _check_receiver(state: _StandbyState, day: str, where: str) -> None:
    """Raise :class:`ReplicaBehind` unless a WAL receiver streams to the standby and heard from its upstream
    lately (review rev24g: a standby whose receiver stopped has replayed all it received and its last replayed
    commit may be recent, yet every commit since it stopped is missing)."""
    tail = (f": its data may lack rows committed for day {day} since, so it is not exported from it (nothing was "
            "written); export from the primary or a streaming replica")
    if not state.receiver:
        raise ReplicaBehind(
            f"the app {where} is a hot standby (read replica) with no WAL receiver: it does not stream from a "
            f"primary (archive recovery, a primary_conninfo lost after a failover, a connection that failed; "
            f"last received {state.received or 'nothing'}, last transaction replayed committed at "
            f"{_stamp(state.replayed_at)}){tail}")
    if state.receiver_status is None:
        raise ReplicaBehind(
            f"the app {where} is a hot standby (read replica) whose WAL receiver the export's role may not see "
            "(pg_stat_wal_receiver shows its status only to roles with pg_read_all_stats): whether it streams "
            f"from its primary is unknown, so day {day} is not exported from it (nothing was written); grant "
            "pg_read_all_stats (or pg_monitor) to the export's role, or export from the primary")
    if state.receiver_status != "streaming":
        raise ReplicaBehind(
            f"the app {where} is a hot standby (read replica) whose WAL receiver is {state.receiver_status!r}, not "
            f"streaming (last received {state.received or 'nothing'}, last transaction replayed committed at "
            f"{_stamp(state.replayed_at)}){tail}, or retry once it streams")
    if state.silent_s is None or state.silent_s > _silence_allowed(state):
        silent = "never" if state.silent_s is None else f"not for {state.silent_s:.0f} s"
        if state.receiver_timeout_ms == 0:     # review rev24k: a live stream of a quiet primary is silent then
            raise ReplicaBehind(
                f"the app {where} is a hot standby (read replica) whose WAL receiver has heard from its upstream "
                f"{silent} (more than {_silence_allowed(state):g} s; last message sent at {_stamp(state.sent_at)}) "
                "and runs with wal_receiver_timeout = 0, so it never asks its upstream for a reply: a quiet stream "
                f"cannot be told from a dead one, and day {day} is not exported from it (nothing was written); set "
                "wal_receiver_timeout above 0 on the standby (the default is 60s) or export from the primary")
        raise ReplicaBehind(
            f"the app {where} is a hot standby (read replica) whose WAL receiver has heard from its upstream "
            f"{silent} (more than {_silence_allowed(state):g} s; last message sent at {_stamp(state.sent_at)}){tail}")


UPSTREAM_HOPS = 4     # the longest chain of cascading standbys the export follows to the primary


def _sender(state: _StandbyState) -> str | None:
    """The upstream the standby's WAL receiver streams from, as 'host:port' (None where not shown)."""
    if not state.sender_host:
        return None
    return f"{state.sender_host}:{state.sender_port}" if state.sender_port else state.sender_host


def _named_primary(state: _StandbyState, primary_host: str) -> bool:
    """Whether the standby's upstream is one app_export.primary_host names ('host' or 'host:port' items)."""
    if not state.sender_host:
        return False
    names = {state.sender_host, _sender(state)}
    return any(item.strip() in names for item in primary_host.split(",") if item.strip())


def _upstream_dsn(dsn: str, state: _StandbyState) -> str:
    """``dsn`` with its host and port replaced by the standby's upstream's (the same user, password, database,
    service and TLS settings: a physical standby holds its upstream's roles)."""
    parts = {key: value for key, value in conninfo_to_dict(dsn).items()
             if key not in ("host", "hostaddr", "port", "target_session_attrs", "load_balance_hosts")}
    parts["host"], parts["hostaddr"] = state.sender_host, ""    # given: a service file's hostaddr does not apply
    if state.sender_port:
        parts["port"] = str(state.sender_port)
    return make_conninfo(**parts)


def _reach(state: _StandbyState, upstream_is_primary: bool) -> dt.datetime | None:
    """How far a standby's data reaches by its primary's clock: the commit time of the last transaction
    replayed, or, where it has caught up with an upstream that is the primary (or a standby whose own reach
    bounds it), the time that upstream sent its last message; None where neither is known."""
    reaches = state.replayed_at
    if upstream_is_primary and state.replayed_all and state.sent_at is not None \
            and (reaches is None or state.sent_at > reaches):
        reaches = state.sent_at
    return reaches


def _upstream(conn_state: _StandbyState, dsn: str | None, day: str, where: str,
              primary_host: str) -> tuple[str, list[dt.datetime | None], str]:
    """What the standby's upstream is: ('primary', [], ''): the primary (named by app_export.primary_host, or
    asked: ``pg_is_in_recovery()`` false there); ('chain', reaches, ''): standbys each streaming from the next up
    to the primary, with how far each one's data reaches; ('unknown', [], why): it could not be told. A standby
    in the chain that does not stream, heard nothing lately or has replay paused: :class:`ReplicaBehind` (review
    rev24k: a cascading standby of a stalled standby is caught up with its upstream and hears it, yet lacks every
    commit since the upstream stopped receiving). Each connection ends here."""
    state, reaches = conn_state, []
    for _ in range(UPSTREAM_HOPS):
        sender = _sender(state)
        if sender is None:
            return "unknown", [], "pg_stat_wal_receiver shows no upstream address (sender_host)"
        if _named_primary(state, primary_host):
            return ("chain" if reaches else "primary"), reaches, ""
        if dsn is None:
            return "unknown", [], f"its upstream {sender} is not named by app_export.primary_host"
        try:
            up = connect(_upstream_dsn(dsn, state), source=f"the upstream {sender} of the app {where}")
            try:
                up_state = _standby_state(up, None)
            finally:
                up.close()
        except (AppDatabaseError, psycopg.Error) as exc:
            reason = str(exc) if isinstance(exc, AppDatabaseError) else type(exc).__name__
            return "unknown", [], f"asking its upstream {sender} failed ({reason})"
        if not up_state.standby:
            return ("chain" if reaches else "primary"), reaches, ""
        if up_state.paused:
            raise ReplicaBehind(
                f"the app {where} streams from {sender}, a hot standby whose WAL replay is paused at "
                f"{up_state.replayed}: its data may lack the rows day {day} ended with, so it is not exported from "
                "it (nothing was written); resume replay there or export from the primary")
        _check_receiver(up_state, day, f"server {sender}, the upstream of {where},")
        reaches.append(_reach(up_state, True))
        state = up_state
    return "unknown", [], f"more than {UPSTREAM_HOPS} standbys chain up to its primary"


def check_standby(conn: psycopg.Connection, day: str, lag_minutes: int, where: str, dsn: str | None = None,
                  primary_host: str = "") -> str | None:
    """On a hot standby (``pg_is_in_recovery()``, ``sql/app_db/standby.sql``), make sure the export's snapshot,
    taken after this check, holds what its primary committed for ``day``; return what kind of replica the
    server is ('a hot standby', 'a logical-replication subscriber (subscriptions ...)') or None for a primary.

    The lag rule cannot go by the standby's ``now()``: its clock runs on while WAL holding the day's last
    commits waits unreplayed, so a day was published without its last rows and a lookback re-export from
    such a replica replaced a day exported complete from the primary. So:

    - replay paused (``pg_wal_replay_pause()``, or a pause requested): :class:`ReplicaBehind` at once;
    - no WAL receiver streaming (``pg_stat_wal_receiver`` empty: archive recovery, primary_conninfo lost; or its
      status not 'streaming'; or nothing heard from its upstream for longer than the receiver's timeout):
      ReplicaBehind at once (review rev24g: such a standby has replayed all it received, yet lacks every commit
      since it stopped receiving);
    - WAL received and not replayed (``pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()``): wait up to
      REPLAY_WAIT_S for replay to reach the position received when the check began (a busy replica
      catches up in moments), else :class:`ReplicaBehind` naming the replay lag (a delayed standby,
      ``recovery_min_apply_delay``, stays behind by design);
    - the lag rule by what the standby's data reaches, by the primary's clock: the commit time of the last
      transaction replayed (``pg_last_xact_replay_timestamp()``), or, where the standby has replayed all it
      flushed and flushed all its upstream reported (caught up), the time its upstream sent its last message
      (``last_msg_send_time``; review rev24g: a caught-up standby of a quiet primary has replayed no transaction
      since it started, and was refused). ``day`` must have been over for ``lag_minutes`` by then (else
      :class:`ExportTooEarly`); with neither, how far its data reaches is unknown: ReplicaBehind;
    - the upstream must be the primary, or standbys each streaming from the next up to it (:func:`_upstream`,
      review rev24k: a cascading standby of a stalled standby is caught up with it and hears it): asked over a
      connection with the DSN's credentials, or named by ``primary_host`` (app_export.primary_host); the data
      reaches no further than any standby in the chain. Where it cannot be asked, only a replayed commit counts
      (the upstream's ``last_msg_send_time`` is not trusted), and a standby that replayed none is refused saying
      to set app_export.primary_host.

    On a primary, a subscription of the app tables (``pg_subscription_rel``) that is disabled, has no apply
    worker or is still copying refuses the export (review rev24k: a day's first export lacked rows); one of
    other tables only is no replica of the app's. What no check on a replica can see (a cascading standby whose
    upstream cannot be asked, a logical subscriber whose worker lags) is guarded at publish time: a re-export
    from a replica never drops a row the day holds (:func:`keep_vanishing_rows`).
    Nothing is written before the check, so a refused export leaves the raw zone as it was. Each read ends its
    transaction: no snapshot is held."""
    state = _standby_state(conn, None)
    if not state.standby:
        stalled = [name for name in state.subscriptions if name.endswith(")")]
        if stalled:     # review rev24k: a first export of the day from it lacked rows too
            raise ReplicaBehind(
                f"the app {where} is a logical-replication subscriber whose subscription feeding the app tables "
                f"does not receive ({', '.join(stalled)}: disabled, no apply worker running "
                f"(pg_stat_subscription.pid is null) or a table still copying): its data may lack rows its "
                f"publisher committed for day {day}, so it is not exported from it (nothing was written); enable "
                "the subscription (ALTER SUBSCRIPTION ... ENABLE) and retry once it applies, or export from the "
                "publisher")
        if state.subscriptions:
            return f"a logical-replication subscriber (subscriptions {', '.join(state.subscriptions)})"
        return None
    target, started = state.received, time.monotonic()
    while True:
        if state.paused:
            raise ReplicaBehind(
                f"the app {where} is a hot standby (read replica) whose WAL replay is paused (pg_wal_replay_pause()) "
                f"at {state.replayed}, {_behind(state.behind)}, last transaction replayed committed at "
                f"{_stamp(state.replayed_at)}: its data may lack the rows day {day} ended with, so it is not exported "
                "from it (nothing was written); resume replay (pg_wal_replay_resume()) or export from the primary")
        _check_receiver(state, day, where)
        if target is None or state.behind is None or state.behind <= 0 or state.caught_up:
            break
        if time.monotonic() - started >= REPLAY_WAIT_S:
            raise ReplicaBehind(
                f"the app {where} is a hot standby (read replica) whose replay is behind the WAL it has received "
                f"({_behind(state.behind)}: received {target}, replayed {state.replayed} after waiting "
                f"{REPLAY_WAIT_S:g} s; last transaction replayed committed at {_stamp(state.replayed_at)}, e.g. "
                "recovery_min_apply_delay or a replay conflict): its data may lack the rows day "
                f"{day} ended with, so it is not exported from it (nothing was written); export from the primary "
                "or an up-to-date replica, or retry once it has caught up")
        time.sleep(REPLAY_POLL_S)
        state = _standby_state(conn, target)
        if not state.standby:       # promoted meanwhile: a primary holds every commit
            return None
    kind, chain, why = _upstream(state, dsn, day, where, primary_host)
    reaches = _reach(state, kind != "unknown")
    for reach in chain:     # a cascading standby's data reaches no further than any standby it streams through
        reaches = None if reaches is None or reach is None else min(reaches, reach)
    if reaches is None and kind == "unknown":
        raise ReplicaBehind(f"the app {where} is a hot standby (read replica) that has replayed no transaction since "
                            f"it started, and whether it streams from the primary cannot be told ({why}): a standby "
                            f"of a standby that stopped receiving hears it and is caught up with it, so how far its "
                            f"data reaches is unknown and day {day} is not exported from it (nothing was written); "
                            "set app_export.primary_host to the primary's address as the standby's primary_conninfo "
                            "names it (host or host:port) where it streams from the primary, or export from the "
                            "primary, or retry once it has replayed a commit made after the day closed")
    if reaches is None:
        raise ReplicaBehind(f"the app {where} is a hot standby (read replica) that has replayed no transaction since "
                            f"it started and has not caught up with its upstream, so how far its data reaches is "
                            f"unknown: day {day} is not exported from it (nothing was written); export from the "
                            "primary, or retry once the standby has caught up")
    try:
        check_lag(day, lag_minutes, reaches)
    except ExportTooEarly as exc:
        raise ExportTooEarly(f"{exc} (by what the app {where}, a hot standby, has replayed, committed at or before "
                             f"{_stamp(reaches)} by its primary's clock: its data reaches no further; export from "
                             "the primary, or retry once it has replayed later commits)") from None
    return "a hot standby"


def _behind(behind: int | None) -> str:
    """The replay lag in bytes, as a message names it."""
    return "replay lag unknown" if behind is None else f"{behind} bytes of received WAL not replayed"


def _stamp(moment: dt.datetime | None) -> str:
    """A timestamp as messages name it (UTC)."""
    if moment is None:
        return "an unknown time"
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class TablesLocked(AppDatabaseError):
    """The app tables could not be locked for the export's snapshot within the session's lock_timeout."""


_KINDS = {"m": "a materialized view", "f": "a foreign table", "v": "a view", "r": "a table", "p": "a partitioned table"}


def _not_locked(table: str, reason: str) -> str:
    """The warning for an app relation the export reads without its ACCESS SHARE lock."""
    return (f"app relation {APP_SCHEMA}.{table} was read without a lock ({reason}): a rewrite of it committed "
            "while the day was read (ALTER COLUMN ... TYPE, TRUNCATE + reload, VACUUM FULL, CLUSTER) is not "
            "guarded against and could make the export read it empty; grant the export's role SELECT on the "
            "whole table (or export as its owner) to guard it")


def lock_tables(conn: psycopg.Connection, where: str) -> list[str]:
    """Take ACCESS SHARE locks on the four app tables as the first statements of the export's transaction,
    before its snapshot exists (LOCK TABLE takes none), as pg_dump does: a table-rewriting change (ALTER
    COLUMN ... TYPE, TRUNCATE + reload, VACUUM FULL, CLUSTER) is not MVCC-safe, and one committed after
    the snapshot made the table read EMPTY from it. With the locks held to the transaction's end, such a
    change either committed before the snapshot (its rows are read) or waits until the tables are read.
    The wait for a lock held elsewhere is the session's lock_timeout (at most ``MAX_LOCK_WAIT``): then
    :class:`TablesLocked`, nothing written, the next run retries.

    Only what PostgreSQL lets the role lock is locked: a table, partitioned table or view on which it holds
    table-level SELECT (or UPDATE, DELETE, TRUNCATE) or which it owns (``sql/app_db/lockable.sql``, read in
    a transaction of its own that ends before the locks, so the export's snapshot is still taken after
    them). A materialized view or foreign table (LOCK TABLE refuses them: 'cannot lock relation'), or a
    table the role reads through column grants only (a least-privilege role without the password hash), is
    read without its lock; each such relation is returned as a warning, since a rewrite of it is then not
    guarded. Each LOCK runs in a savepoint, so one refused anyway (a grant revoked meanwhile) is rolled
    back alone and read unlocked too, with the transaction still without a snapshot. A missing table is
    left to check_tables' message."""
    found = {as_text(table): (as_text(kind), bool(may)) for table, kind, may in
             conn.execute(statement("lockable"), {"schema": APP_SCHEMA, "tables": list(RAW_TABLES)})}
    conn.rollback()            # the catalog read's transaction (and snapshot) ends: the locks come first
    warnings = []
    for table in RAW_TABLES:
        if table not in found:
            continue
        kind, may_lock = found[table]
        if not may_lock:
            reason = (f"it is {_KINDS.get(kind, 'a relation of kind ' + repr(kind))}, which LOCK TABLE refuses"
                      if kind not in ("r", "p", "v") else
                      "the export's role has no table-level SELECT on it (column grants only) and does not own it")
            warnings.append(_not_locked(table, reason))
            continue
        conn.execute("SAVEPOINT pickapic_lock")
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(APP_SCHEMA, table)))
        except psycopg.errors.LockNotAvailable as exc:
            reason = " ".join((exc.diag.message_primary or "lock timeout").split())[:200]
            conn.rollback()
            timeout = conn.execute("SHOW lock_timeout").fetchone()[0]
            conn.rollback()
            raise TablesLocked(
                f"the app tables {', '.join(RAW_TABLES)} of {where} could not be locked (ACCESS SHARE, as pg_dump "
                f"locks them) within lock_timeout = {as_text(timeout)} ({reason}): another session holds or waits "
                "for an exclusive lock on one of them (a migration: ALTER TABLE, TRUNCATE, VACUUM FULL; see pg_locks "
                "and pg_stat_activity); nothing was written, the next run retries") from None
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.WrongObjectType,
                psycopg.errors.UndefinedTable) as exc:     # changed since the catalog was read
            conn.execute("ROLLBACK TO SAVEPOINT pickapic_lock")
            reason = " ".join((exc.diag.message_primary or type(exc).__name__).split())[:200]
            warnings.append(_not_locked(table, f"LOCK TABLE refused: {as_text(reason)}"))
        conn.execute("RELEASE SAVEPOINT pickapic_lock")
    return warnings


# --- exports of one day, one at a time where it matters (review rev31e) -------------------------------------------

SNAPSHOT_ORDER = "app_export_snapshots"   # HOME/cache/<this>/dt=DAY.json: {"taken": ticket, "published": ticket}
SNAPSHOT_ORDER_MAX_BYTES = 4 << 10        # a record is ~50 bytes; a larger file is not the export's


def export_lock_file(home: DataHome, day: str) -> Path:
    """``HOME/.locks/app-export-dt=DAY.lock``: held by an export of ``day`` while it takes its snapshot (with its
    ticket) and while it publishes the day (with everything it records of it)."""
    return home.locks / f"app-export-dt={day}.lock"


UNDATED_LOCK = "app-export-undated.lock"  # HOME/.locks/<this>: one writer at a time of HOME/cache/UNDATED_STATE


@contextlib.contextmanager
def day_export_lock(home: DataHome, day: str) -> Iterator[None]:
    """Hold ``day``'s export lock (waiting for another export's hold, which lasts a snapshot's first statement or a
    publish: never a whole export)."""
    with hold_lock(export_lock_file(home, day), f"the app export of day {day}", lambda _holder: None):
        yield


def _snapshot_order_path(home: DataHome, day: str) -> Path:
    return home.cache / SNAPSHOT_ORDER / f"dt={day}.json"


# review rev31h: one clock for the tickets of every day's snapshots and of the late markers, so a marker set on a day
# by another day's export is ordered against the snapshots of that day's exports (see mark_late)
TICKET_CLOCK = "clock.json"               # HOME/cache/SNAPSHOT_ORDER/<this>: {"last": the last ticket drawn}
TICKETS_LOCK = "app-export-tickets.lock"  # HOME/.locks/<this>: held to draw a ticket and to set or clear a marker
LAST_TICKET = (1 << 63) - 1                # the largest ticket (a signed 64-bit integer): the clock stops there


@contextlib.contextmanager
def tickets_lock(home: DataHome) -> Iterator[None]:
    """Hold ``HOME/.locks/app-export-tickets.lock``: a ticket drawn, a late marker set or cleared (never held
    across a database statement, and no other lock is taken under it)."""
    with hold_lock(home.locks / TICKETS_LOCK, "the app export's tickets", lambda _holder: None):
        yield


def _read_ticket(record: object, name: str) -> int:
    """The ticket ``name`` of a record the export wrote, as :func:`read_cache` gives it (0 where none is readable)."""
    value = record.get(name) if isinstance(record, dict) else None
    return value if type(value) is int and 0 <= value <= LAST_TICKET else 0


def last_ticket(home: DataHome) -> int:
    """The last ticket the clock gave (0: none recorded)."""
    return _read_ticket(read_cache(home.cache / SNAPSHOT_ORDER / TICKET_CLOCK, SNAPSHOT_ORDER_MAX_BYTES), "last")


def draw_ticket(home: DataHome, at_least: int = 0) -> tuple[int, str]:
    """A ticket larger than any the clock gave before (the time in nanoseconds, else one past the last, so a
    clock set back still counts up) and at least ``at_least``; the caller holds :func:`tickets_lock`. Returns
    (ticket, '' or a warning saying it could not be recorded)."""
    ticket = max(time.time_ns(), last_ticket(home) + 1, at_least)
    path = home.cache / SNAPSHOT_ORDER / TICKET_CLOCK
    end = ""
    if ticket > LAST_TICKET:   # review rev32c: 2**63 read back as no ticket, and the clock restarted from the time
        ticket = LAST_TICKET
        end = (f"the app export's ticket clock ({path}) has reached its end ({LAST_TICKET}: a record the export did "
               "not write, the time is ~1.8e18): its exports and late markers are no longer ordered (a marker stays "
               "set, its day re-exported each night); with no export running, remove the folder "
               f"{path.parent} to restart the clock")
    try:
        _write_cache_json(home, path, {"last": ticket})
    except OSError as exc:
        return ticket, (f"the app export's ticket clock could not be recorded in {path} ({exc.strerror or exc}): an "
                        "export that overlaps this one is not kept from publishing an older snapshot or clearing a "
                        "newer late marker")
    return ticket, end


def snapshot_order(home: DataHome, day: str) -> dict[str, int]:
    """``day``'s record of its exports' tickets: the last one taken and the one whose snapshot the day holds
    (0 where none is recorded; anything the export did not write reads as none)."""
    record = read_cache(_snapshot_order_path(home, day), SNAPSHOT_ORDER_MAX_BYTES)
    return {name: _read_ticket(record, name) for name in ("taken", "published")}


def _write_cache_json(home: DataHome, path: Path, record: object) -> None:
    """Write ``record`` as JSON (keys sorted) to ``path`` in the home's cache, atomically, its folder made, under
    :func:`pipelines.provenance.writing_cache` (swept under it: :mod:`pipelines.cachesweep`; the sweep never waits,
    and a write goes ahead whether or not the lock was held); OSError raised. The export's state in HOME/cache:
    the tickets and their clock, late markers, undated rows, counts, written and content records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_cache(home):
        write_bytes_atomic(path, json.dumps(record, sort_keys=True).encode("utf-8"))


def _write_snapshot_order(home: DataHome, day: str, record: dict[str, int]) -> str:
    """Write ``day``'s ticket record; '' or a warning saying it could not be written."""
    path = _snapshot_order_path(home, day)
    try:
        _write_cache_json(home, path, record)
    except OSError as exc:
        return (f"day {day}: the order of its exports could not be recorded in {path} ({exc.strerror or exc}): an "
                "export of the day that overlaps this one is not kept from publishing an older snapshot")
    return ""


def take_snapshot(conn: psycopg.Connection, home: DataHome, day: str) -> tuple[int, str]:
    """Take the export's snapshot (its transaction's first statement that reads: REPEATABLE READ keeps it to
    the end) under ``day``'s export lock, with a ticket that orders it among the day's exports: larger than any
    taken before (a clock in nanoseconds, and one past the last recorded, so a clock set back still counts up).
    Two exports of a day against one database: the larger ticket holds the newer snapshot (one taken after the
    other's, which sees every commit the other saw). Review rev31h: the ticket comes from the clock every day's
    exports and late markers share (:func:`draw_ticket`), drawn before the snapshot, so a late marker with a
    smaller ticket was set before this snapshot was taken (:func:`mark_late`). Returns (ticket, '' or a warning)."""
    with day_export_lock(home, day):
        record = snapshot_order(home, day)
        with tickets_lock(home):
            ticket, clock_warning = draw_ticket(home, max(record["taken"], record["published"]) + 1)
        record["taken"] = ticket
        warning = _write_snapshot_order(home, day, record)
        conn.execute("SELECT 1")
    return ticket, warning or clock_warning


# review rev32c: the export's state in HOME/cache (tickets, day records, late markers, counts, written records) is
# keyed by day and ordered by the home's own locks (HOME/.locks): a cache folder two homes reach (a home copied with
# `cp -a` whose cache is a link to one folder on a fast disk, or a link at one of these folders) made one home's
# export clear the other's late markers and supersede its exports. Each folder records the home it belongs to.
CACHE_OWNER = "owner.json"     # HOME/cache/<folder>/<this>: {"home": path, "home_id": [dev, ino],
#                                 "host": the host's name, "folder_id": [dev, ino]}
CACHE_OWNER_MAX_BYTES = 8 << 10           # a record is ~100 bytes plus the home's path


class CacheOfAnotherHome(FileExistsError):
    """A folder of the app export's state in ``HOME/cache`` is the one another data home's exports use."""


def export_state_folders(home: DataHome) -> list[Path]:
    """The folders of ``HOME/cache`` that hold the app export's state of the home's days."""
    return [home.cache / name for name in (SNAPSHOT_ORDER, LATE_MARKERS, COUNTS_CACHE, WRITTEN_RECORDS,
                                           CONTENT_RECORDS)]


def _stat_id(info: os.stat_result) -> list[int]:
    return [info.st_dev, info.st_ino]


def claim_export_state(home: DataHome) -> None:
    """Record in each of :func:`export_state_folders` that it is this home's (its identity: device and inode of the
    home's folder, and of the cache folder itself), or raise :class:`CacheOfAnotherHome` (one line naming both
    homes) when one already records another home that reaches the same folder. A record of another folder (the
    cache copied with its home by ``cp -a``, or restored from a backup: a folder of its own) is this home's to
    replace; so is one that cannot be read as the export writes it, and one of this home's path on this host (the
    home restored where it was: another inode, review rev33d; the record's ``host`` is the host's name). A moved
    home's record gets its new path. Creates the folders (the umask applies). A
    folder that cannot be made or written is left unclaimed: the export's own writes there fail with a warning
    each (the cache is disposable), as before."""
    home.root.mkdir(parents=True, exist_ok=True)       # the export makes it anyway (real_folders)
    home_id = _stat_id(os.stat(home.root))
    host = socket.gethostname()
    owner = {"home": str(home.root), "home_id": home_id, "host": host}
    for folder in export_state_folders(home):
        path = folder / CACHE_OWNER
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder_id = _stat_id(os.stat(folder))
        except OSError:
            continue
        record = read_cache(path, CACHE_OWNER_MAX_BYTES)
        if isinstance(record, dict) and record.get("folder_id") == folder_id:
            same_path = record.get("home") == str(home.root) and record.get("host", host) == host
            if record.get("home_id") == home_id and same_path and "host" in record:
                continue
            # review rev33d: the home restored at its own path (a new folder: another inode) is this home, not
            # another one (no two homes are at one path of one host at once); a home moved (mv: the same folder)
            # has its record's path brought up to date below
            if record.get("home_id") != home_id and not same_path:
                other = record.get("home")
                other = as_text(other if isinstance(other, str) else "unknown")[:500]
                real = folder.resolve()
                where = f"{folder} (the folder {real})" if real != folder else str(folder)
                # review rev33l: a record of this path on another host read "of P, not of P": name the hosts
                theirs = record.get("host")
                if isinstance(theirs, str) and theirs != host:
                    other = f"{other} on the host {as_text(theirs)[:200]!r}"
                    mine = f"{home.root} on this host ({host!r})"
                else:
                    mine = str(home.root)
                raise CacheOfAnotherHome(
                    f"{where} holds the app export's state of the data home {other}, not of "
                    f"{mine}: two homes must not share it (their exports would clear each other's late "
                    f"markers and supersede each other's exports); give this home a cache folder of its own, or "
                    f"remove {path} if that home no longer uses it (this home restored from it, on another host)")
        with writing_cache(home), contextlib.suppress(OSError):   # swept under it (pipelines.cachesweep)
            write_bytes_atomic(path, json.dumps({**owner, "folder_id": folder_id}, sort_keys=True).encode("utf-8"))


def held_back_warning(day: str, unrecorded: list[str]) -> str:
    """Fix36g: why an export published nothing: what lets the rows leaving ``day`` be found again (the late
    markers of ``unrecorded`` days, or the rows remembered) could not be written."""
    return (f"day {day} was not published: rows its re-export takes out (the app dates them to another day now) "
            f"could not be recorded where a later export finds them again ({', '.join(unrecorded[:FIRST_IDS])}"
            f"{', ...' if len(unrecorded) > FIRST_IDS else ''}; see the warnings above), so its raw files stay as "
            "they were, holding them, until an export can record them: the next scheduled export tries again")


def superseded_warning(day: str, published: int, ticket: int) -> str:
    """The line of an export whose day already holds a newer snapshot (another export of the day published it)."""
    return (f"day {day}: another export of the day took its snapshot after this one's and published it first "
            f"(tickets {published} > {ticket}, {SNAPSHOT_ORDER}): this export's older snapshot was not published, "
            "the day keeps the newer one")


def named_uids(home: DataHome, day: str, own_staging: Path | None, uids: set[str],
               why: list[str] | None = None) -> set[str] | None:
    """Those of ``uids`` that a raw images file still names (the ingest's byte search, as its reference check finds
    them: a line over the line limit, which the ingest quarantines, names its uid all the same): the staged files of
    the exports in flight (but ``own_staging``), then ``day``'s published file and every other day's a reference
    resolves against (:func:`pipelines.ingest.uidindex.reference_days`: the raw zone's days and the pruned ones the
    warehouse keeps). None where a file that may name them cannot be read whole (it may name any: nothing is
    removed by it); ``why`` then gets the line that says which file and why.
    Review rev33d: only ``day``'s file was read, by ``json.loads`` line by line, so a blob whose row moved into
    another day was removed from under that day's rows, and one over-long line kept every erased account's blob.
    The staged files are read first: one renamed into its day meanwhile is read there after.

    A staged file is read whole whatever the ingest's file limits (:func:`search_image_uids`). Review rev33l: one
    that could not be read whole counted as naming none, so a running export's staging folder of another account
    (private, 0700) or a staged file past ``ingest.max_file_bytes`` had the blob withdrawn that its export had found
    present and was about to publish a row for. Only a file still being written (a gzip stream that ends early: its
    export copies no blob before the file is whole, and its first batch of copies waits for the withdrawal, under
    ``BLOBS_LOCK``) or none names nothing yet; a staging folder this account cannot open, whose export may be
    running, stops the withdrawal like an unreadable day."""
    from pipelines.ingest.uidindex import named_image_uids, reference_days, search_image_uids

    def stopped(line: str) -> None:
        if why is not None:
            why.append(line)

    config = load(home.root).config("ingest")
    left, found = set(uids), set()
    try:
        staged = sorted(entry.path for entry in os.scandir(home.raw_logs) if EXPORT_STAGING.fullmatch(entry.name))
    except OSError:
        staged = []
    for folder in staged:
        path = Path(folder)
        if own_staging is not None and folder == str(own_staging):
            continue      # its own older snapshot
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue      # published (read below) or removed meanwhile
        except OSError as exc:
            info = lstat_or_none(path)
            if info is None or not stat.S_ISDIR(info.st_mode):
                continue  # gone, or not a folder (a link, a file: no export stages there)
            stopped(f"the staging folder {path.name} of another export cannot be opened "
                    f"({exc.strerror}: another account's, private while it exports); it may name them")
            return None
        os.close(fd)
        if not staging_in_use(path):
            continue      # a dead export's leftover (remove_stale_staging)
        named, state = search_image_uids(home, path / "images.jsonl.gz", left, config)
        if named is None:
            stopped(f"the images file staged in {path.name} by a running export cannot be read whole ({state})")
            return None
        found |= named
        left -= named
    days = reference_days(home, home.raw_days())
    for each in [day] + [d for d in days if d != day]:
        if not left:
            break
        try:
            named = named_image_uids(home, each, left, config)
        except OSError as exc:      # its folder cannot be searched by this account
            named, reason = None, f" ({exc.strerror or exc})"
        else:
            reason = ""
        if named is None:
            stopped(f"day {each}'s images file cannot be read whole{reason}")
            return None
        found |= named
        left -= named
    return found


def withdrawn_warning(day: str, withdrawn: int, read: bool, why: str = "", what: str = "superseded") -> str:
    """The line of an export that published nothing (``what``: "superseded", or "held back", fix36g) and had
    copied blobs into raw/images; ``why``: what stopped the look-up (:func:`named_uids`), where it stopped."""
    if not read:
        return (f"day {day}: this {what} export copied image blob(s) into raw/images, but "
                f"{why or 'a file that may name them cannot be read whole'}: {withdrawn} removed; the others stay "
                "in raw/images, those no day's rows name (an erased account's) among them")
    return (f"day {day}: {withdrawn} image blob(s) this {what} export copied into raw/images, which no day's "
            "published images file names (nor a running export's), were removed again")


def withdraw_interrupted_exports(home: DataHome) -> list[str]:
    """Review rev34g: finish what exports that no longer run left in raw/images, from their records
    (``raw/images/.exports/<staging folder's name>``, :class:`pipelines.appdb.blobs.BlobRecord`; an export whose
    staging folder is held still runs): remove the temporary files of their blob copies killed before the rename,
    and the blobs they wrote where raw/images had none that no file names (:func:`named_uids`, as a superseded
    export withdraws its own: an export killed between its copies and its publish kept an erased account's images
    it had copied back for good); a record is removed once its look-up is complete (one a file stops stays for the
    next export). Also sweeps the capped markers' temporary files (:func:`blobs.sweep_capped_temps`). Returns the
    warnings to report. Called by an export with an image store before its own copies, its staged files whole."""
    from pipelines.appdb.blobs import EXPORTS, sweep_capped_temps

    lines = list(sweep_capped_temps(home))
    folder = home.raw_images / EXPORTS
    info = lstat_or_none(folder)
    if info is None or not stat.S_ISDIR(info.st_mode):
        return lines
    # review rev34i: another export may remove the folder (its last record, removed as empty) or anything may
    # replace it between the look above and the listing: nothing to withdraw then, never an error (it raised
    # FileNotFoundError out of export_day); the folder is opened once, never through a link, and read through that
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return lines
    except OSError as exc:
        if exc.errno != errno.ELOOP:       # a link put there meanwhile: not a record folder
            raise
        return lines
    try:
        lines.extend(_withdraw_records(home, folder, folder_fd))
    finally:
        os.close(folder_fd)
    return lines


def _withdraw_records(home: DataHome, folder: Path, folder_fd: int) -> list[str]:
    """:func:`withdraw_interrupted_exports`' work on the records of the open folder ``folder_fd`` (``folder``)."""
    from pipelines.appdb.blobs import remove_record, remove_recorded_temps, withdraw_blobs

    lines: list[str] = []
    for name in sorted(os.listdir(folder_fd)):
        if not EXPORT_STAGING.fullmatch(name) or staging_in_use(home.raw_logs / name):
            continue          # not a record, or its export still runs
        path = folder / name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
        except OSError:
            continue          # gone meanwhile (another export finished it), or a link: never followed
        with open(fd, "rb", buffering=1 << 16) as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            temps = remove_recorded_temps(handle, home)
            why: list[str] = []
            day = name[4:14]
            withdrawn, read = withdraw_blobs(handle, home, lambda uids: named_uids(home, day, None, uids, why))
        if read:
            remove_record(path)
        if temps or withdrawn or not read:
            lines.append(f"day {day}: an export that did not finish ({name}) left {temps} temporary blob file(s) "
                         f"and {withdrawn} image blob(s) no day's published images file names (nor a running "
                         "export's) in raw/images: removed" + ("" if read else
                         f"; {why[-1] if why else 'a file that may name the others cannot be read whole'}: the "
                         "others stay until an export can read it"))
    return lines


def export_day(home: DataHome, dsn: str, day: str, config: AppExportConfig | None = None, *,
               image_store: str = "", source: str = "the DSN", now: dt.datetime | None = None,
               progress: Progress = silent) -> AppExportReport:
    """Export ``day`` (YYYY-MM-DD, UTC) from the app database into the raw zone; see the module docstring."""
    config = (config or AppExportConfig()).validate()
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):   # fromisoformat also takes 20230301, 2023-W09-3
            raise ValueError(day)
        dt.date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from None
    check_lag(day, config.lag_minutes, now)

    def still_open(on: str) -> bool:   # fix37d: a day a row moved to that no export can export yet
        return not is_closed(on, config.lag_minutes, now)

    # fix38f (review rev38c): the newest day closed by this export's clock, which ScheduledDays counts its gap
    # horizon from where it is later than the raw zone's last day (the coming nights' catch-up follows the clock)
    clock_newest = newest_closed(now, config.lag_minutes)

    started = time.perf_counter()
    name: ServerName = server_name(dsn, source)
    report = AppExportReport(day=day, server=name.as_metadata())
    start, end = day_bounds(day)
    params = {"start": start.isoformat(sep=" "), "end": end.isoformat(sep=" ")}
    folders = [home.raw_logs, home.raw_images] if image_store else [home.raw_logs]
    real_folders(home, folders, create=False)
    # the limits of the ingest and feature stage that will read the day: the run's (a build's --set), else the home's
    line_limit = config.max_line_bytes or load(home.root).config("ingest").max_line_bytes
    # the raw files late_rows compares with the database, read (decompressed where not cached) before the
    # export connects: never inside its transaction, with the app tables locked
    raw_before = raw_counts(home, verified_days(home, day, config))
    conn = connect(dsn, source=source)  # raises before anything is written
    staging, held, late_check, record, record_done = None, None, None, None, False
    try:
        # a hot standby (read replica): its replay must have passed the day's close, whatever its clock says
        # (before the snapshot, which then holds at least what was replayed by now)
        replica = check_standby(conn, day, config.lag_minutes, str(name), dsn, config.primary_host)
        keeping = bool(replica or config.keep_exported_rows)
        # the ids of the day's raw files, read before the snapshot (no transaction open, the tables not locked):
        # those the export does not read are looked up in its snapshot (held_ids) for keep_vanishing_rows
        old_keys = old_key_indexes(home, day, line_limit) if keeping else {}
        # first, before the transaction's snapshot: see lock_tables (relations it cannot lock: warnings, which
        # the asset logs with the others)
        report.warnings += lock_tables(conn, str(name))
        # review rev32c: the cache's state of the export is this home's alone (raises where another home uses it)
        claim_export_state(home)
        # review rev31e: the snapshot is taken here, under the day's export lock, with the ticket that orders it
        # among the day's exports (an export that started first and published last replaced the newer day)
        ticket, line = take_snapshot(conn, home, day)
        if line:
            report.warnings.append(line)
        if now is None:   # the lag again by the database's clock: a fast clock here must not open a day early
            try:
                check_lag(day, config.lag_minutes, database_now(conn))
            except ExportTooEarly as exc:
                raise ExportTooEarly(f"{exc} (by the app database's clock, which is behind this machine's)") from None
        check_tables(conn, str(name))
        real_folders(home, folders, create=True)
        remove_stale_staging(home)
        staging = home.raw_logs / f".dt={day}.export-{os.getpid()}-{secrets.token_hex(4)}"
        # private (0700) until published: no other account, not even the home's group under a umask of 002,
        # can add or replace an entry in it while the export writes (see _publish for the day's mode)
        staging.mkdir(mode=0o700)
        held = hold_staging(staging)   # the lock says "in use" to other exports and the raw-zone scan
        held_by_app: dict[str, HeldRows] = {}
        for table in RAW_TABLES:
            table_params = {**params, "start": FIRST_DATED} if table == "users" and config.users_snapshot \
                else params
            read = array.array("q") if table in old_keys else None
            report.tables[table] = _write_table(conn, table, table_params, staging / f"{table}.jsonl.gz",
                                                report.unconvertible, report.oversized, line_limit, read)
            if read is not None:      # the rows of the raw day not read: which the app holds all the same
                if any(read[i] > read[i + 1] for i in range(len(read) - 1)):
                    read = array.array("q", sorted(read))
                held_by_app[table] = held_ids(conn, table, not_read(old_keys.pop(table), read))
            progress(f"{table}: {report.tables[table].rows} rows")
        watched: dict[str, list[int]] = {}
        report.undated = undated_rows(conn, watched)
        if report.undated:
            report.warnings.append(undated_warning(report.undated))
        # rows once reported undated: where they stand now (dated since: their day is marked below)
        undated_watch = watch_undated(conn, home, day, watched)
        # fix37h: and the rows moved to a day not closed yet past the cap (MOVED_WAITING)
        waiting_watch = watch_waiting(conn, home, day)
        if waiting_watch.damaged:     # review rev38e: never read as no rows, silently
            report.warnings.append(damaged_waiting_warning(waiting_watch.damaged))
        if report.unconvertible:
            report.warnings.append(unconvertible_warning(day, report.unconvertible))
        if report.oversized:
            report.warnings.append(oversized_warning(day, report.oversized, line_limit))
        # older days the lookback no longer re-exports: counted in the snapshot here, the ids of a day whose digest
        # differs spilled beside the staged files; compared with the raw files once the session has ended
        late_check = start_late_check(conn, home, day, config, raw_before, staging, through=day)
        late_check.still_open, late_check.newest = still_open, clock_newest
        # review rev35a: the content digest of the rows written, recorded with the day once published (review
        # rev35e: from the check's query, which reaches the day, where it ran: the users snapshot's parts by
        # creation day from the check's first day)
        content = day_content(conn, day, config.users_snapshot, late_check.counted)
        from pipelines.appdb.blobs import BlobRecord, copy_blobs, read_day_uids, withdraw_blobs

        # The image uids are read from the same snapshot into an unnamed file, and the transaction and the
        # session end before any blob is copied (see blobs.read_day_uids).
        with tempfile.TemporaryFile(dir=staging) if image_store else contextlib.nullcontext() as spill:
            invalid = read_day_uids(conn, params, spill) if spill is not None else 0
            conn.rollback()  # read-only: nothing to commit; the snapshot and the locks end here
            # compared with the raw files after the snapshot; the ids a raw day holds that left it are looked up
            # in a transaction of their own (LateCheck.finish)
            report.late = late_check.finish(home, conn)
            report.warnings += late_check.notes
            conn.rollback()
            if not keeping:   # from the primary: the rows its re-export takes out that the app holds elsewhere
                held_by_app = left_rows(home, day, staging, report, conn, line_limit)
                conn.rollback()
            # review rev30b: a row the app gave a kept row's id again (a restore) is another row, which the day
            # keeps (same_rows); review rev31e: its day is marked all the same (moved_rows, below), the identity
            # decides only what this day keeps: a row moved and reassigned (another user) reached no raw day
            exact = exact_identities(conn) if keeping else True
            same_by_app = {table: rows.same_rows(home.raw_file(day, table), table, exact, KeyReading(line_limit))
                           for table, rows in held_by_app.items()} if keeping else {}
            conn.close()
            report.warnings += late_warnings(report.late, config.lookback_days)
            # '' when each day it would name is the nightly export's own: no empty warning (review rev30b)
            line = moved_warning(ScheduledDays(home, home.raw_days(), raw_day_counts, clock_newest),
                                 late_check.moved, still_open) if late_check.moved else ""
            if line:
                report.warnings.append(line)
            # review rev29h: the day a row that leaves this day is dated to now is marked for the schedule (or
            # named with the build that exports it), so a raw day holds it once the moves are exported
            moved: dict[str, dict[str, list]] = {}
            outside = Outside()      # review rev35a: moved before the raw zone's first day (fix37d: or not closed)
            # fix36g: the days the schedule exports (the moved rows' days marked) or not (the rows remembered)
            scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts, clock_newest)
            for table, rows in held_by_app.items():
                moved_rows(home, table, rows, day, config.users_snapshot, scheduled, moved, outside, still_open)
            line = moved_warning(scheduled, moved, still_open) if moved else ""
            if line:
                report.warnings.append(line)
            if keeping:   # never a subset of the day from a replica (see there)
                keep_vanishing_rows(home, day, staging, report, replica or
                                    "a primary with app_export.keep_exported_rows = true", str(name),
                                    {table: rows.ids for table, rows in same_by_app.items()}, line_limit)
            if spill is not None:
                # review rev34g: what exports that did not finish left in raw/images (their staging folders not
                # held: remove_stale_staging removed the stale ones above), before this export's own copies
                report.warnings += withdraw_interrupted_exports(home)
                # review rev32c: the blobs this export writes into raw/images, removed again if it is superseded;
                # review rev34g: named beside raw/images and written before each copy, so an export killed or
                # failing before its publish leaves them to the next export (withdraw_interrupted_exports)
                record = BlobRecord.create(home, staging.name)
                report.blobs = copy_blobs(spill, invalid, image_store, home, config.blob_workers,
                                          config.blob_max_bytes or None, record=record,
                                          stop=lambda: snapshot_order(home, day)["published"] > ticket)
            else:
                report.blobs = {"store": "none configured: no blob copied"}
                progress("no image store configured: no blob copied (the feature stage will reject the images as "
                         "missing)")
        # review rev31e: under the day's export lock, only a snapshot at least as new as the one the day holds is
        # published (an export that began before another and finished after it replaced the newer day)
        with day_export_lock(home, day):
            order = snapshot_order(home, day)
            superseded = order["published"] > ticket
            # review rev36a: what lets a row this day no longer holds be found again is written BEFORE the day is
            # published without it (the rule fix35e applied to LateCheck.finish): the day the app dates it to now
            # marked for the schedule (review rev29h), a day before the raw zone's first remembered (review
            # rev35a). Written after the publish, a kill in between left the row in no raw day, named by no night
            # (the rerun no longer sees it leave). A kill before the publish leaves the row in its old day as well:
            # the marked day's re-export, or the night naming the remembered row, is then one more than needed.
            early = [moved_day for moved_day in moved_days(scheduled, moved) if moved_day != day]
            for moved_day in early:
                report.warnings += filter(None, [mark_late(home, moved_day, True)])
            unrecorded = [moved_day for moved_day in early if not _marker_set(home, moved_day)]
            if not superseded and outside:  # the rows it forgets are in the day it publishes, not a superseded one
                line = remember_moved(home, outside)
                if line:
                    report.warnings.append(line)
                    unrecorded.append("the rows moved to a day no schedule exports")
            # fix36g: a marker not set or a row not remembered: the day is not published without the row (as
            # LateCheck.finish records no verdict then): its raw files stay as they were, holding it, and the next
            # export tries again. Before, the day was published without it, named that night only.
            held_back = not superseded and bool(unrecorded)
            if superseded or held_back:
                if superseded:
                    report.published = "superseded"
                    report.warnings.append(superseded_warning(day, order["published"], ticket))
                else:
                    report.published = "held back"
                    report.warnings.append(held_back_warning(day, unrecorded))
                # review rev31h: it published no file: its report names none (they were the staged files' counts)
                report.tables, report.kept = {}, {}
                # review rev32c: nor does the day keep a blob it copied that the newer snapshot's rows do not name
                if record is not None and not record.empty():
                    why: list[str] = []
                    with record.reader() as handle:
                        report.blobs["withdrawn"], read = withdraw_blobs(
                            handle, home, lambda uids: named_uids(home, day, staging, uids, why))
                    record_done = read      # else the record stays: the next export looks them up again
                    report.warnings.append(withdrawn_warning(day, report.blobs["withdrawn"], read,
                                                             why[-1] if why else "", report.published))
                else:
                    record_done = True
            else:
                _publish(home, day, staging, report)
                record_done = True          # the published day names the blobs it wrote
                order["published"] = ticket
                line = _write_snapshot_order(home, day, order)
                if line:
                    report.warnings.append(line)
                # review rev29i: what the export left in the day, so a ranged build may re-export it once the app
                # holds no row on it (an erased account), and never a day it did not write (written_by_export)
                record_written(home, day, report)
                # review rev35a: what the late-row check compares the day's rows with, for an edit past the lookback
                written = {table: _file_key(home.raw_file(day, table)) for table in report.tables}
                report.warnings += filter(None, [record_content(
                    home, day, {table: (key, content[table]) for table, key in written.items()
                                if key is not None and key[0] == report.tables[table].bytes}, replace=True)])
                # from this snapshot: whole again, and so is each checked day found whole; review rev31h: only
                # the markers set before this snapshot was taken (a later one stands for rows it may not hold)
                report.warnings += filter(None, [mark_late(home, day, False, ticket)])
                report.warnings += late_check.clear_whole(home, ticket)
            dated, marked = dated_warning(home, {table: {**undated_watch.dated.get(table, {}),
                                                         **waiting_watch.dated.get(table, {})}
                                                 for table in {*undated_watch.dated, *waiting_watch.dated}},
                                          waiting_watch.more, clock_newest)
            # a row dated since it was reported undated: that day is re-exported (the rows moved off this day:
            # marked above, before the publish; the state that still names the dated rows is saved below)
            for marked_day in marked:
                if marked_day != day and marked_day not in early:
                    report.warnings += filter(None, [mark_late(home, marked_day, True)])
            if dated:
                report.warnings.append(dated)
            if not superseded and not held_back:   # held back: the rows it would forget are not published
                report.warnings += filter(None, [save_undated(home, undated_watch)])
                report.warnings += filter(None, [forget_waiting(home, waiting_watch)])
        report.warnings += blob_warnings(day, report)
    except psycopg.Error as exc:
        raise database_error(exc, dsn, name, f"exporting day {day}") from None
    finally:
        conn.close()
        if late_check is not None and late_check.spill is not None:
            late_check.spill.close()            # closed by finish(); here when the export failed before it
        if record is not None:          # kept where blobs it wrote may be named by no file (see BlobRecord)
            record.close(remove=record_done or record.empty())
        if staging is not None and staging.exists():
            shutil.rmtree(staging)
        if held is not None:
            os.close(held)
    report.seconds = time.perf_counter() - started
    return report


# --- a re-export that would drop rows ----------------------------------------------------------------

def _bomless(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """``pieces`` of a raw file's lines with a byte order mark at the file's start left out, as the ingest skips it
    (review rev29h: line 1 behind one was read as unreadable)."""
    for piece in pieces:
        piece = without_bom(piece)
        if piece:
            yield piece
        break
    yield from pieces


def _line_keys(path: Path, cut_ok: bool = False, name: str | None = None,
               first_pieces: bool = False, reading: "KeyReading | None" = None) -> Iterator:
    """The primary key (member ``name``) of each line of a raw table file as the ingest keys it (``reading``, a
    :class:`KeyReading`: the ingest's ``max_line_bytes`` and whether the export's own cut line counts as its row's;
    None: a NULL key; UNREADABLE: no key), each line read whole (:class:`_LineKeyer`: held within the ingest's limit,
    as the ingest holds it, a longer one scanned as it streams, ``lines.MemberScan``); with ``first_pieces``, (key,
    the line's first piece) pairs. With ``cut_ok``, a file that ends early (a gzip member without its trailer, a copy
    cut short: EOFError, or corrupt data past some point) yields the complete lines read before the error and
    stops (review rev24k: those rows are the day's too); one with no complete line read raises the error."""
    keyer = _LineKeyer(name, reading or KeyReading())
    limit, short_key = keyer.reading.limit, keyer.short_key
    at_start, lines_read = True, 0
    try:
        with open_regular_file(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as lines:
            for piece in _bomless(iter(lambda: lines.readline(PIECE_BYTES), b"")):
                if at_start and piece.endswith(b"\n") and len(piece) <= limit:    # a whole line in one piece
                    key = short_key(piece, piece)
                    lines_read += 1
                    yield (key, piece) if first_pieces else key
                    continue
                if at_start:
                    keyer.start(piece)
                keyer.feed(piece)
                at_start = piece.endswith(b"\n")
                if at_start:
                    lines_read += 1
                    yield (keyer.key(), keyer.first) if first_pieces else keyer.key()
            if not at_start:             # a last line without its newline, in a file read to its end
                yield (keyer.key(), keyer.first) if first_pieces else keyer.key()
    except (EOFError, zlib.error, gzip.BadGzipFile):
        if not cut_ok or not lines_read:
            raise


@dataclass(frozen=True)
class KeyReading:
    """How the export reads a raw line's key (review rev36i: one reading, the ingest's): ``limit``, the ingest's
    ``max_line_bytes`` (a line within it is read whole with the ingest's decoder, :func:`_piece_key`; a longer one
    by its top-level key members as the ingest's ``lines.MemberScan`` reads them as they stream). The one exception
    is the export's own cut line of an oversized row (:func:`_cut_oversized`: the export's line start, then a JSON
    object cut short at ``limit + 1`` bytes, :func:`_cut_key`), which the ingest quarantines with no key: it is read
    as its row's, so a re-export replaces it when the row is edited and the late-row check counts it as holding its
    row (the day is not re-exported every night for it). A line cut short otherwise (a writer that stopped, a cut
    at another limit, a bracket that does not match) is no row's: the ingest quarantines it keyless, a re-export
    keeps it."""

    limit: int = DEFAULT_LINE_BYTES


def home_line_limit(home: DataHome) -> int:
    """The ingest's ``max_line_bytes`` as the ingest reads it: the home's settings (``ingest`` section)."""
    return load(home.root).config("ingest").max_line_bytes


class _LineKeyer:
    """The key of one raw line fed piece by piece (``readline``'s pieces of :data:`PIECE_BYTES`, the last ending in
    its newline or the file's end), read as :class:`KeyReading` says: the line held while within the ingest's limit
    (the ingest holds it too), a longer one scanned by ``lines.MemberScan`` as it streams (never held: bounded)."""

    def __init__(self, name: str | None, reading: KeyReading) -> None:
        self.name, self.reading = name, reading
        self.first, self.parts, self.size, self.scan = b"", [], 0, None

    def start(self, piece: bytes) -> None:
        self.first, self.parts, self.size, self.scan = piece, [], 0, None

    def feed(self, piece: bytes) -> None:
        data = piece[:-1] if piece.endswith(b"\n") else piece
        self.size += len(data)
        if self.scan is not None:
            self.scan.feed(data)
            if self.parts is not None:          # held up to limit + 1 bytes: the length of the export's own cut
                self.parts = self.parts + [data] if self.size <= self.reading.limit + 1 else None
            return
        self.parts.append(data)
        if self.size > self.reading.limit:      # over the ingest's limit: its line_too_long, keyed by MemberScan
            self.scan = _lines.MemberScan(self.name or "", bom=False)
            for part in self.parts:
                self.scan.feed(part)
            if self.size > self.reading.limit + 1:
                self.parts = None

    def key(self) -> int | None | _Unreadable:
        if self.scan is None:
            return self.short_key(b"".join(self.parts), self.first)
        key = _scanned_key(self.scan, self.name)
        if key is UNREADABLE and self.parts is not None:     # limit + 1 bytes: the export's own cut, its row's
            key = _cut_key(b"".join(self.parts), self.name, self.scan)
        return key

    def short_key(self, line: bytes, first: bytes) -> int | None | _Unreadable:
        """The key of a whole line within the limit (``first``: its first piece; never a cut line, longer)."""
        return _piece_key(line, self.name, self.reading.limit)


def _scanned_key(scan: "_lines.MemberScan", name: str | None) -> int | None | _Unreadable:
    """The key of a line over the ingest's limit as ``LineParser.overlong_key`` reads it from ``scan`` (its
    top-level members named ``name``, each value decoded, one value as written), its range aside; UNREADABLE where
    the ingest reads none (not one JSON object, the member absent, an object, two values; ``name`` None: no name)."""
    written = scan.result()
    if name is None or not written or None in written:
        return UNREADABLE
    values = []
    for text in written:
        try:
            value = _ingest.load_json(text.decode("utf-8"))
        except (_ingest.Reject, UnicodeDecodeError):
            return UNREADABLE
        if type(value) is dict or type(value) is list:
            return UNREADABLE
        values.append(value)
    if any(not _ingest._alike(v, values[0]) for v in values):
        return UNREADABLE
    if values[0] is None:
        return None
    key = _integer_as_written(values[0])
    return UNREADABLE if key is None else key


# the export's flat line (scalars and JSON strings, no container: no raw table has one) cut short, maybe in a string
_JSON_STRING_BODY = rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+'
_FLAT_CUT = re.compile(rb'\{(?:[^"\[\]{}\\]++|"' + _JSON_STRING_BODY + rb'")*+(?:"' + _JSON_STRING_BODY
                       + rb'(?:\\(?:u[0-9a-fA-F]{0,3})?)?)?')


def _cut_key(line: bytes, name: str | None, scan: "_lines.MemberScan") -> int | None | _Unreadable:
    """The id of the export's own cut line of an oversized row (:func:`_cut_oversized`; ``line``: its bytes, of
    the ingest's limit + 1): the export's line start (``{"NAME": id,``, :func:`_key_re`), a flat JSON object (no
    container) cut short (``scan``, the ingest's ``MemberScan`` of it, followed it without a fault and not to its
    end), its key member named with that one value; else UNREADABLE."""
    match = _key_re(name)[0].match(line)
    if match is None or not scan.truncated() or (name is not None and scan.values != [match.group(1)]) \
            or _FLAT_CUT.fullmatch(line) is None:
        return UNREADABLE
    return None if match.group(1) == b"null" else int(match.group(1))


# The column each raw table file's lines are keyed by: the app table's primary key, the export's first column.
EXPORT_KEYS = {"users": "user_id", "images": "image_id", "rankings": "ranking_id", "downloads": "download_id"}


class _Unreadable:
    """The key of a line whose id cannot be read (see :func:`_piece_key`)."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE = _Unreadable()
_WS = "[ \t\r\n]*"
_KEY_RES: dict[str | None, tuple[re.Pattern, bytes]] = {}


class _AsWritten(float):
    """A JSON number whose double is a whole number (or an overflow) but not the number written
    (``9007199254740993.0``, ``4503599627370497.5``, ``1e-400``, ``1e400``): ``text`` keeps how it was written, so a
    key or an identity reads the number itself, as the ingest does (``pipelines.ingest.parse._WrittenNumber``),
    never its rounding (review rev35a: ``9007199254740993.0`` was the id 2^53)."""

    __slots__ = ("text",)


def _float_as_written(text: str) -> float:
    """The decoder's number with a fraction or an exponent: its float, or an :class:`_AsWritten` where that float
    is a whole number (or infinite) that is not the number written."""
    value = float(text)
    if value.is_integer() or math.isinf(value):
        try:
            exact = decimal.Decimal(text) == value
        except ArithmeticError:
            exact = False
        if not exact:
            marked = _AsWritten(value)
            marked.text = text
            return marked
    return value


def _integer_as_written(value: object) -> int | None:
    """The integer a decoded JSON value is as written (``5``, ``5.0``, ``5e0``, ``9007199254740993.0``); None for
    anything else (a fraction, ``1e-400``, a number past 40 digits written with an exponent, ``1e400``, a NaN, a
    string, a boolean, null): :meth:`pipelines.ingest.parse.LineParser.key_of`'s reading, without its range."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float:        # a plain float is exactly the number written
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if kind is not _AsWritten and kind is not _ingest._WrittenNumber:   # the ingest decoder's own (_piece_key)
        return None
    try:
        exact = decimal.Decimal(value.text)
    except ArithmeticError:
        return None
    if not exact.is_finite() or exact.adjusted() > 40 or exact != exact.to_integral_value():
        return None
    return int(exact)


def _alike(a: object, b: object) -> bool:
    """Whether two values of a member named twice are one value as written (the ingest's ``parse._alike``): the same
    type and value, and a number kept as written (:class:`_AsWritten`) the same number."""
    if type(a) is not type(b) or a != b:
        return False
    if type(a) is not _AsWritten or a.text == b.text:
        return True
    try:
        return decimal.Decimal(a.text) == decimal.Decimal(b.text)
    except ArithmeticError:
        return False


_LENIENT = json.JSONDecoder(strict=False, parse_float=_float_as_written)


class _Broken:
    """The value of a member that is not JSON (:func:`_json_members`): no key, no identity."""

    def __repr__(self) -> str:
        return "BROKEN"


BROKEN = _Broken()


def _key_re(name: str | None) -> tuple[re.Pattern, bytes]:
    """The export's own line start, ``{"NAME": 123,`` (any JSON blanks, NAME first, an integer as JSON writes it or
    null): a line the export wrote (cut lines and lines of bytes that are not UTF-8 included) is keyed without a JSON
    decode. ``name`` None: any ``*_id`` first (the generic reading of :func:`vanishing_rows` on files of no table).
    With the pattern: the member's name as a JSON string, which must not come again in the line's first piece. Only
    the plain form: an integer with a leading zero (``05``, ``-05``: not JSON, the ingest's malformed_json with no
    key; review rev35c: it was read as 5) or ``-0`` does not match, and is left to :func:`_scan_key`."""
    if name not in _KEY_RES:
        field = b'[a-z_]+_id' if name is None else re.escape(name.encode())
        ws = _WS.encode()
        _KEY_RES[name] = (re.compile(rb'\{' + ws + b'"' + field + b'"' + ws + b':' + ws
                                     + rb'(0|-?[1-9][0-9]{0,39}|null)' + ws + b'[,}]'),
                          b'"' + (name or "").encode() + b'"')
    return _KEY_RES[name]


# how JSON may spell a member name's character (the fetch plan's own _SHORT_ESCAPES, above, is another table)
_NAME_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_SPELLED: dict[str, tuple[re.Pattern, bytes]] = {}


def _spelled_re(name: str) -> tuple[re.Pattern, bytes]:
    """A pattern of ``name`` as a JSON string in any spelling (each character as is, as a ``\\u`` escape in
    either case of its hex digits, a surrogate pair's two, or JSON's short escape), and the bytes a spelling other
    than the plain one must hold (``\\u``, or a backslash where the name holds a character of a short escape)."""
    if name not in _SPELLED:
        parts = []
        for char in name:
            code = ord(char)
            units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10),
                                                   0xDC00 + ((code - 0x10000) & 0x3FF)]
            escaped = b"".join(rb"\\u" + b"".join(b"[" + d.encode() + d.upper().encode() + b"]" if d.isalpha()
                                                   else d.encode() for d in f"{unit:04x}") for unit in units)
            choices = [re.escape(char.encode()), escaped]
            if char in _NAME_SHORT_ESCAPES:
                choices.append(rb"\\" + re.escape(_NAME_SHORT_ESCAPES[char].encode()))
            parts.append(b"(?:" + b"|".join(choices) + b")")
        marker = b"\\" if any(char in _NAME_SHORT_ESCAPES for char in name) else b"\\u"
        _SPELLED[name] = (re.compile(b'"' + b"".join(parts) + b'"'), marker)
    return _SPELLED[name]


def _named_again(piece: bytes, name: str, needle: bytes, start: int) -> bool:
    """Whether member ``name``'s name may come again in ``piece`` from ``start`` on: written plainly (``needle``)
    or with escapes (review rev35c: ``"download\\u005fid": 6`` after ``{"download_id": 5,`` was not seen, so the
    line was keyed 5 where the ingest reads a key named twice with two values: none). A line holding no ``\\u``
    escape (no backslash at all for a name with a short escape's character) is looked at no further."""
    if piece.find(needle, start) >= 0:
        return True
    pattern, marker = _spelled_re(name)
    return piece.find(marker, start) >= 0 and pattern.search(piece, start) is not None


PIECE_BYTES = 1 << 20    # what the export reads of a raw line at a time (``readline``): its budget for a line's key


def _written_key(piece: bytes, name: str | None = None) -> int | None | _Unreadable:
    """The id a raw line names from its first piece (at most 1 MiB), read leniently: an int, None for a JSON null,
    or UNREADABLE where no integer id can be read. The export's own cut line (:func:`_cut_oversized`, no JSON
    object) and a line whose first piece holds its id are read by the id they start with. Used only where a kept
    line goes in a merged file (:class:`_Lines`), never to decide that a line may be replaced or holds its row:
    that is the ingest's reading (:class:`KeyReading`; review rev36i: the late-row check read lines this way, so a
    line the ingest keys no row by held its row and the day was never re-exported).

    Review rev29d: the export's own spacing was the only form read (a regex), so every line of a day written by
    the raw zone's other way in (compact JSON, the id anywhere in the object) was keyless. A line not in the
    export's form is read as JSON (:func:`_scan_key`), within its first piece: bounded whatever the line's length.
    Review rev35c: the fast match reads only the plain form (:func:`_key_re`: the id as JSON writes an integer, its
    member's name not again in the piece in any spelling, :func:`_named_again`); any other line is left to
    :func:`_scan_key`."""
    pattern, needle = _key_re(name)
    match = pattern.match(piece)
    if match and (name is None or not _named_again(piece, name, needle, match.end())):
        return None if match.group(1) == b"null" else int(match.group(1))
    if name is None:
        return UNREADABLE
    return _scan_key(piece, name)       # not the export's form, or the member's name again further on


_ID_NAME = re.compile(r"[a-z_]+_id")
# The C decoder as it is: NaN and Infinity read, a member named twice kept once, controls in strings refused. A
# line it reads whole whose key member is named once is one the ingest keys by that member (load_json, or
# LineParser.decoded_key for a NaN or another member named twice): _piece_key's fast path.
_PLAIN = json.JSONDecoder()


def _piece_key(piece: bytes, name: str | None = None,
               limit: int = DEFAULT_LINE_BYTES) -> int | None | _Unreadable:
    """The primary key (member ``name``) of a whole raw line as the ingest keys it (at ``limit``, its
    ``max_line_bytes``): an int, None for a JSON null (a table without its primary key
    may hold NULL ids), or UNREADABLE where the ingest reads no key. What decides whether a re-export may replace
    the line (:class:`_Absent`: a line keyed by an id the new file holds is that row's old version).

    Review rev36c: the line is read as :meth:`pipelines.ingest.parse.LineParser.parse` reads it for its key, with
    the ingest's own decoder (``load_json``): the whole line one JSON object (no text after it, no raw control
    character in a string, every member a JSON value), or one ``load_json`` refuses only for a NaN, a member named
    twice or nesting too deep, read leniently as ``LineParser.decoded_key`` reads it (``lenient_members``, the key
    written once or every time alike), bytes that are not UTF-8 read as U+FFFD (``undecodable_key``). Before, the
    export read the members up to the first that was not JSON and the id found so far stood, a line's trailing
    text and raw control characters were allowed, and the id named again past the first MiB was never seen: a line
    the ingest quarantines with no key was taken for the app's row of that id, and a replica's re-export holding
    that row dropped it from the raw zone. The id is read as written (:func:`_integer_as_written`: ``5.0`` is 5,
    ``9007199254740993.0`` is 2^53 + 1), whatever its range (``0`` is 0: the app's row of that id replaces it).

    Review rev36i: a line longer than the ingest's ``limit`` (its ``max_line_bytes``) is read as the ingest reads
    it (its line_too_long, keyed by its top-level key members, ``lines.MemberScan``: :func:`_scanned_key`); before,
    a line longer than the export's 1 MiB piece was not keyed, so a replica's re-export kept the old version of an
    edited long row beside the new one and the ingest quarantined the app's row as a key conflict. ``piece`` is the
    whole line, with or without its newline (a file's last line); the readers of a file feed a longer line in
    pieces (:class:`_LineKeyer`). ``name`` None: the first member, where its name is an id's (``*_id``;
    :func:`vanishing_rows` on files of no table)."""
    data = piece[:-1] if piece.endswith(b"\n") else piece
    if len(data) > limit:               # the ingest's line_too_long: keyed as it streams
        scan = _lines.MemberScan(name or "", bom=False)
        scan.feed(data)
        return _scanned_key(scan, name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:          # the ingest's undecodable_key: each invalid byte as U+FFFD
        text = data.decode("utf-8", "replace")
    if name is not None:                # the export's own form, its name once: only whether the line is JSON
        pattern, needle = _key_re(name)
        match = pattern.match(data)
        if match and not _named_again(data, name, needle, match.end()):
            try:
                end = _PLAIN.raw_decode(text)[1]
            except (ValueError, RecursionError):
                pass                    # not JSON, or past the C decoder (digits, depth): the ingest's own read
            else:
                if text[end:].strip(" \t\r\n"):
                    return UNREADABLE   # text after the object: malformed_json with no key
                return None if match.group(1) == b"null" else int(match.group(1))
    try:
        obj = _ingest.load_json(text)
    except _ingest.Reject as exc:
        if not exc.readable:
            return UNREADABLE           # malformed_json with no key: the ingest quarantines it keyless
        members = _ingest.lenient_members(text)     # LineParser.decoded_key's reading
        if not members:
            return UNREADABLE
        name = name if name is not None else _id_name(members[0][0])
        values = [value for member, value in members if member == name]
        if not values or any(not _ingest._alike(v, values[0]) for v in values):
            return UNREADABLE
        value = values[0]
    else:
        if type(obj) is not dict or not obj:
            return UNREADABLE
        if name is None:
            name = _id_name(next(iter(obj)))
        if name not in obj:
            return UNREADABLE
        value = obj[name]
    if value is None:
        return None
    key = _integer_as_written(value)
    return UNREADABLE if key is None else key


def _id_name(member: object) -> str | None:
    """``member`` where it is an id's name (``*_id``: the generic reading's key), else None (no member)."""
    return member if type(member) is str and _ID_NAME.fullmatch(member) else None


# what a JSON scalar cut by the end of a piece can be: a number's start, a constant's, or nothing yet
_SCALAR_START = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]*)?)?|t(?:r(?:ue?)?)?|f(?:a(?:l(?:se?)?)?)?"
                           r"|n(?:u(?:ll?)?)?|N(?:aN?)?|-?I(?:n(?:f(?:i(?:n(?:i(?:ty?)?)?)?)?)?)?")


def _cut(text: str, exc: BaseException) -> bool:
    """Whether the decoder's error ``exc`` on a value of ``text`` is the end of ``text`` cutting the value (a string
    not closed, an escape, a container or a scalar not ended before it), not a value that is not JSON
    (``-\\t}``, ``tru,``, a number past Python's digit limit, nesting past its depth)."""
    if not isinstance(exc, json.JSONDecodeError):
        return False
    if exc.msg.startswith("Unterminated string"):
        return True
    if exc.msg.startswith("Invalid \\uXXXX"):
        return len(text) - exc.pos < 5
    return _SCALAR_START.fullmatch(text[exc.pos:].rstrip(" \t\r\n")) is not None


def _json_members(text: str) -> Iterator[tuple[str, object]]:
    """The members of the JSON object ``text`` starts, decoded one by one with the json module's scanner (control
    characters in strings allowed) until the end of the object or the first member that cannot be read (a value cut
    by the end of ``text``, in a first piece without its line's newline, :func:`_cut`: nothing more); nothing for
    text that is no JSON object. A value that is not JSON (``tru``, ``-\\t}``; or cut, where ``text`` holds the
    whole line), or one run into what follows it (``05``, ``-05``, ``5 x``, ``1.e5``: the decoder reads ``0``,
    ``5``, ``1``), is yielded as :data:`BROKEN`, the last member: no reading of it is a value the ingest reads
    (review rev35c: ``05`` was the id 0)."""
    blanks = " \t\r\n"
    at, end = 0, len(text)
    whole = text.endswith("\n")     # the line's whole first piece is its whole line: no value is cut by its end

    def skip(i: int) -> int:
        while i < end and text[i] in blanks:
            i += 1
        return i

    at = skip(at)
    if text[at:at + 1] != "{":
        return
    at = skip(at + 1)
    try:
        if text[at:at + 1] != "}":
            while True:
                if text[at:at + 1] != '"':
                    break
                member, at = json.decoder.scanstring(text, at + 1, False)
                at = skip(at)
                if text[at:at + 1] != ":":
                    break
                try:
                    value, at = _LENIENT.raw_decode(text, skip(at + 1))
                except (ValueError, RecursionError) as exc:
                    if whole or not _cut(text, exc):      # not cut by the piece's end: a value that is not JSON
                        yield member, BROKEN
                    return
                at = skip(at)
                if at < end and text[at] not in ",}":
                    yield member, BROKEN    # a value run into what follows (05, 5 x, 1.e5): not JSON
                    return
                yield member, value
                if text[at:at + 1] != ",":
                    break
                at = skip(at + 1)
    except (ValueError, RecursionError):
        return                              # the rest of the line: undecodable, or past its first piece


def _scan_key(piece: bytes, name: str) -> int | None | _Unreadable:
    """The value of member ``name`` of the JSON object a line's first piece starts (bytes that are not UTF-8
    read as escapes, members read by :func:`_json_members` up to the end of the piece): an integer (a number with
    no fraction, ``5.0``, ``5e0``, as the ingest reads it: as written, :func:`_integer_as_written`; review rev35a:
    ``9007199254740993.0`` was 2^53 and ``4503599627370497.5`` 4503599627370498, their doubles, so a line another
    exporter wrote was taken for another id's row and dropped by a re-export), None for null; UNREADABLE for a line
    that is no JSON object, lacks the member (in its first piece), names it twice with two values as written (the
    ingest reads no key there either), or holds another value (a string, a boolean, a fraction, ``1e-400``). A member after the key that cannot be decoded (a
    value cut by the piece's end, a NaN) leaves the key read: the ingest keys such a line too
    (``LineParser.decoded_key``)."""
    found, seen = UNREADABLE, False
    for member, value in _json_members(piece.decode("utf-8", "surrogateescape")):
        if member == name:
            if seen and not _alike(value, found):
                return UNREADABLE
            found, seen = value, True
    if not seen:
        return UNREADABLE
    if found is None:
        return None
    key = _integer_as_written(found)
    return UNREADABLE if key is None else key


# Review rev30b: the columns that say which row an id names, in row_days.sql's order (int: an integer column,
# str: a text one). A row keeps them when it moves (its created_at corrected); a row that took a lost row's id
# after a restore from an older backup has its own. Review rev30g: only columns a legitimate edit of the row does not
# change (a prompt cleaned, an email changed changed the identity, so a row moved and edited stayed in its old day,
# and an account whose email changed was kept as deleted): a ranking is its user and the images it showed, a
# download its user and image, an image its uid and user; an account is its id alone (the id is what every other
# row names it by; its email and name are its user's to change).
IDENTITY_COLUMNS: dict[str, tuple[tuple[str, type], ...]] = {
    "users": (),
    "images": (("image_uid", str), ("user_id", int)),
    "rankings": (("user_id", int), ("image_0_uid", str), ("image_1_uid", str), ("image_2_uid", str),
                 ("image_3_uid", str)),
    "downloads": (("user_id", int), ("image_uid", str)),
}
UNKNOWN_IDENTITY = 0      # a raw line whose identity cannot be read: its id alone names the row


def identity_digest(text: str) -> int:
    """The int64 digest of an identity (row_days.sql's ``identity`` column, or :func:`row_identity`'s), never
    UNKNOWN_IDENTITY."""
    value = int.from_bytes(hashlib.blake2b(text.encode("ascii"), digest_size=8).digest(), "big", signed=True)
    return value if value != UNKNOWN_IDENTITY else 1


def _identity_part(value: object, kind: type, exact: bool) -> str | None:
    """One column of an identity as row_days.sql writes it; None where the raw value cannot be the app's."""
    if value is None:
        return "-"
    if kind is int:
        value = _integer_as_written(value)      # as written (review rev35a: 9007199254740993.0 was 2^53)
        return None if value is None else str(value)
    if type(value) is not str:
        return None
    if not exact and not value.isascii():
        return "?"
    try:
        data = value.encode("utf-8", "surrogateescape")   # the stored bytes a SQL_ASCII database held too
    except UnicodeEncodeError:
        return None                                       # a lone surrogate no stored text gives
    return hashlib.sha256(data).hexdigest()


def row_identity(piece: bytes, table: str, exact: bool = True) -> int:
    """The identity digest (:func:`identity_digest`) of the raw line whose first piece (at most 1 MiB) is
    ``piece``: its IDENTITY_COLUMNS read as row_days.sql reads the app's (``exact``: the database's text is UTF8
    or SQL_ASCII); UNKNOWN_IDENTITY where one is missing in the piece, named twice with two values, or holds what
    no app row gives (a line another exporter wrote, a cut line)."""
    columns = dict(IDENTITY_COLUMNS[table])
    found: dict[str, object] = {}
    for member, value in _json_members(piece.decode("utf-8", "surrogateescape")):
        if member in columns:
            if member in found and not _alike(found[member], value):
                return UNKNOWN_IDENTITY
            found[member] = value
    parts = []
    for name, kind in IDENTITY_COLUMNS[table]:
        part = _identity_part(found[name], kind, exact) if name in found else None
        if part is None:
            return UNKNOWN_IDENTITY
        parts.append(part)
    return identity_digest(",".join(parts))


class _KeyIndex:
    """The ids of a raw table file (member ``name``), sorted (8 bytes a row; a key past int64, which no integer
    column holds, in a set), and how many of its lines have a NULL id (``unkeyed``) or none that can be read
    (``unreadable``). ``reading``: how a line is keyed (:class:`KeyReading`: the ingest's reading; the late-row
    check's counts the export's own cut line as its row's)."""

    def __init__(self, path: Path, cut_ok: bool = False, name: str | None = None,
                 reading: KeyReading | None = None) -> None:
        keys, self.unkeyed, self.unreadable, wide = array.array("q"), 0, 0, []
        for key in _line_keys(path, cut_ok, name, reading=reading):
            if key is None:
                self.unkeyed += 1
            elif key is UNREADABLE:
                self.unreadable += 1
            elif -(1 << 63) <= key < (1 << 63):
                keys.append(key)
            else:
                wide.append(key)
        if not all(keys[i] <= keys[i + 1] for i in range(len(keys) - 1)):    # the export writes them in order
            keys = array.array("q", sorted(keys))
        self.keys, self.wide = keys, set(wide)

    def has(self, key: int) -> bool:
        if key in self.wide:
            return True
        if not -(1 << 63) <= key < (1 << 63):
            return False
        at = bisect.bisect_left(self.keys, key)
        return at < len(self.keys) and self.keys[at] == key


class _Absent:
    """Counts the lines of an old file whose key a new file's :class:`_KeyIndex` lacks and the app does not hold
    (``held``: sorted ids the app's table holds outside the rows the export read, see :func:`held_ids`; such a
    line is counted in ``left``), and names the first FIRST_IDS. Lines with a NULL id, and lines whose id cannot
    be read (``unreadable``, counted apart, not named): as many as the old file has more of them."""

    def __init__(self, index: _KeyIndex, held: array.array | None = None) -> None:
        self.index, self.unkeyed, self.count, self.first = index, index.unkeyed, 0, []
        self.spare_unreadable, self.unreadable, self.left = index.unreadable, 0, 0
        self.held = held if held is not None else array.array("q")

    def __call__(self, key: int | None | _Unreadable) -> bool:
        """Whether the line keyed ``key`` (the next of the old file) is absent from the new one; counted."""
        if key is UNREADABLE:
            if self.spare_unreadable:
                self.spare_unreadable -= 1
                return False
            self.count += 1
            self.unreadable += 1
            return True
        if key is None:
            if self.unkeyed:
                self.unkeyed -= 1
                return False
        elif self.index.has(key):
            return False
        elif _sorted_has(self.held, key):
            self.left += 1
            return False
        self.count += 1
        if len(self.first) < FIRST_IDS:
            self.first.append(_id_text(key))
        return True


def _sorted_has(keys: array.array, key: int) -> bool:
    """Whether sorted int64 ``keys`` hold ``key``."""
    if not -(1 << 63) <= key < (1 << 63):
        return False
    at = bisect.bisect_left(keys, key)
    return at < len(keys) and keys[at] == key


def vanishing_rows(old: Path, new: Path, name: str | None = None,
                   reading: KeyReading | None = None) -> tuple[int, list[str]]:
    """Rows of raw table file ``old`` whose primary key (member ``name``) no row of ``new`` has (lines without a
    key: as many as ``old`` has more of them), and the first FIRST_IDS of those keys. Memory: 8 bytes per row of
    ``new`` (its keys, sorted); ``old`` is streamed."""
    absent = _Absent(_KeyIndex(new, name=name, reading=reading))
    for key in _line_keys(old, cut_ok=True, name=name, reading=reading):
        absent(key)
    return absent.count, absent.first


class _Lines:
    """The lines of a binary stream one at a time, each by its leading key and copied on in pieces of 1 MiB,
    so a long line is never held whole. The key orders the lines only (:func:`_written_key`: the export's own cut
    line stays at its id's place); whether a line is kept was decided by the ingest's reading (:class:`KeyReading`)."""

    def __init__(self, stream, name: str | None = None) -> None:
        self.stream, self.name = stream, name
        self._next()

    def _next(self) -> None:
        self.piece = self.stream.readline(PIECE_BYTES)
        self.key = _written_key(self.piece, self.name) if self.piece else None

    @property
    def order(self) -> tuple[int, int]:
        return _order(self.key)

    def copy_to(self, write: Callable[[bytes], object]) -> None:
        """Write the current line whole (ending it with a newline if the stream did not) and move to the next."""
        piece = self.piece
        while True:
            write(piece)
            if piece.endswith(b"\n"):
                break
            piece = self.stream.readline(1 << 20)
            if not piece:
                write(b"\n")
                break
        self._next()


def _order(key: int | None | _Unreadable) -> tuple[int, int]:
    """Where a line keyed ``key`` sorts in an export's order (ascending keys, lines without one last)."""
    return (1, 0) if key is None or key is UNREADABLE else (0, key)


class _OldUnreadable(Exception):
    """The old raw file has no readable line (not a regular file, unreadable, not gzip): it is not compared."""


class _CutShort(Exception):
    """Reading the old raw file failed past some point (a gzip member without its trailer, corrupt data)."""


def _read_piece(stream) -> bytes:
    """The next piece of a line of the old raw file (:class:`_CutShort` where it cannot be read on)."""
    try:
        return stream.readline(PIECE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise _CutShort() from exc


def _spill_absent(old: Path, absent: _Absent, spill, name: str | None = None,
                  reading: KeyReading | None = None) -> bool:
    """Copy the lines of raw file ``old`` that ``absent`` finds missing from the new file into ``spill`` (an
    open binary temp file), each ending with a newline; return whether they came in an export's order. Each line is
    keyed whole as the ingest keys it (``reading``, :class:`_LineKeyer`; review rev36i: a line past its first MiB
    was not keyed): a line of several pieces is spilled as it is read and taken back when it is not missing. A file
    cut short keeps the complete lines read before its end (as :func:`_line_keys` with ``cut_ok``); one with no
    complete line raises :class:`_OldUnreadable`. An error writing the spill is an ``OSError``: never taken for
    an unreadable old file (the export fails, nothing replaced)."""
    keyer = _LineKeyer(name, reading or KeyReading())
    limit = keyer.reading.limit
    ordered, last = True, None
    lines_read, at_start, start = 0, True, 0

    def ended(key, first: bytes) -> bool:
        nonlocal ordered, last
        copying = absent(key)
        if copying:             # the order the merge reads the kept lines in (_Lines)
            place = _order(_written_key(first, name))
            ordered = ordered and (last is None or place >= last)
            last = place
        return copying

    try:
        raw = open_regular_file(old)
    except OSError as exc:
        raise _OldUnreadable() from exc
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        try:
            for piece in _bomless(iter(lambda: _read_piece(stream), b"")):
                if at_start and piece.endswith(b"\n") and len(piece) <= limit:    # a whole line in one piece
                    lines_read += 1
                    if ended(keyer.short_key(piece, piece), piece):
                        spill.write(piece)
                    continue
                if at_start:
                    keyer.start(piece)
                    start = spill.tell()
                keyer.feed(piece)
                spill.write(piece)      # a line of several pieces: spilled as read, taken back where not missing
                at_start = piece.endswith(b"\n")
                if at_start:
                    lines_read += 1
                    if not ended(keyer.key(), keyer.first):
                        spill.truncate(start)
                        spill.seek(start)
            if not at_start:             # a last line without its newline, in a file read to its end
                if ended(keyer.key(), keyer.first):
                    spill.write(b"\n")
                else:
                    spill.truncate(start)
                    spill.seek(start)
                at_start = True
        except _CutShort:
            if not lines_read:
                raise _OldUnreadable() from None
            if not at_start:             # the line the file ended in: not a whole line, not kept (nor counted)
                spill.truncate(start)
                spill.seek(start)
    return ordered


def _keep_absent_rows(old: Path, new: Path, out: Path, name: str | None = None,
                      held: array.array | None = None, reading: KeyReading | None = None) -> tuple[int, list[str]]:
    """:func:`_merge_absent`: how many lines were kept and their first FIRST_IDS keys."""
    absent = _merge_absent(old, new, out, name, held, reading)
    return absent.count, absent.first


def _merge_absent(old: Path, new: Path, out: Path, name: str | None = None,
                  held: array.array | None = None, reading: KeyReading | None = None) -> _Absent:
    """Write into ``out`` (new) the lines of ``new`` with those of ``old`` whose key (member ``name``) ``new``
    lacks and ``held`` does not hold (see :class:`_Absent`), gzip-compressed as the export writes; return the
    :class:`_Absent` counts (nothing written when no line is kept). Kept lines go where the export's order
    puts them (ascending keys, keyless lines last) when ``old`` holds them in that order (every file the
    export wrote), else after the new lines in ``old``'s order: either way the same inputs give the same
    bytes, so a day re-exported again from the same rows is unchanged. Memory: 8 bytes per row of ``new``;
    the kept lines are spilled to an unnamed file beside ``out``."""
    absent = _Absent(_KeyIndex(new, name=name, reading=reading), held)
    with tempfile.TemporaryFile(dir=out.parent) as spill:
        ordered = _spill_absent(old, absent, spill, name, reading)
        if not absent.count:
            return absent
        spill.seek(0)
        with open_new_file(out) as raw, rawlines.gzip_writer(raw) as gz, open_regular_file(new) as staged, \
                gzip.GzipFile(fileobj=staged, mode="rb") as fresh_stream:
            fresh, kept = _Lines(fresh_stream, name), _Lines(spill, name)
            while fresh.piece or kept.piece:
                take_kept = kept.piece and (not fresh.piece or (ordered and kept.order < fresh.order))
                (kept if take_kept else fresh).copy_to(gz.write)
            gz.close()
            raw.flush()
            os.fsync(raw.fileno())
    return absent


def keep_vanishing_rows(home: DataHome, day: str, staging: Path, report: AppExportReport, source: str,
                        where: str, held: dict[str, array.array] | None = None, limit: int | None = None) -> None:
    """Keep, in each staged table file of ``day``, the rows its file in the raw zone holds that the app's table
    does not hold at all: rows the app deleted since, or rows a replica lacks. ``source`` says what the server is
    ('a hot standby', 'a logical-replication subscriber (...)', or a primary held to this by
    app_export.keep_exported_rows). ``held`` (table -> sorted ids, :func:`held_ids`, read in the export's
    snapshot): the ids of the old file's rows the export did not read that the app's table holds all the same, on
    another day (a ``created_at`` corrected), undated, or left out by the export's settings (an older account
    with ``app_export.users_snapshot = false``): those rows leave the day (review rev29d: they were kept, so a row
    moved to another day was in two raw days, and ``users_snapshot = false`` never took effect for a day
    exported before). Each changed staged file lacking such rows is rewritten with them
    (:func:`_merge_absent`), the report's rows, bytes and sha256 follow, the rows kept are named in
    ``report.kept`` and a warning, and the day is published with the rows read added (review rev29c: the re-export
    was refused whole, ``RowsWouldVanish``, so from a replica a late ranking never reached a day one of whose
    users had deleted their account, night after night).

    Old lines are keyed by their parsed id (:func:`_piece_key`, review rev29d: a day another exporter wrote as
    compact JSON was doubled; review rev36c: as the ingest keys them; review rev36i: whole, at the ingest's
    ``limit``, its ``max_line_bytes``, None: the home's, a line over it by its key members as the ingest's
    ``MemberScan`` reads them, and the export's own cut line by its id, :class:`KeyReading`). A line
    whose id cannot be read (not one JSON object, no integer id) is no row the ingest can key either (it
    quarantines the line): such lines, beyond as many as the new
    file holds,
    are kept as they were and counted apart (``unreadable`` in ``report.kept``, named in the warning): never a
    second version of a row read, never dropped unseen.

    A replica may be behind its primary in ways no check on it can see (review rev24g: a cascading standby whose
    upstream standby stopped receiving streams and is caught up with that upstream; a logical subscriber whose
    subscription is disabled or whose apply worker fails is a primary by every server function): rows leave an
    exported day only when it is exported from the primary, or when the app holds them elsewhere. A file cut
    short (a gzip member without its trailer) counts with the rows read before it ends (review rev24k); only a
    file with no readable row is not compared (the ingest reports it; replacing it loses nothing readable). Run
    after the export's session ended and before anything is published."""
    kept: dict[str, dict] = {}
    held = held or {}
    reading = KeyReading(limit or home_line_limit(home))
    for table in report.tables:
        old, new = home.raw_file(day, table), staging / f"{table}.jsonl.gz"
        info = lstat_or_none(old)
        if info is None or not stat.S_ISREG(info.st_mode):
            continue
        export = report.tables[table]
        merged = staging / f".{table}.kept.jsonl.gz"
        try:
            if info.st_size == export.bytes and sha256_file(old) == export.sha256:
                continue                                # the same bytes: nothing vanishes
        except OSError:
            continue                                    # unreadable: the ingest reports it
        try:
            absent = _merge_absent(old, new, merged, EXPORT_KEYS[table], held.get(table), reading)
        except _OldUnreadable:                          # no readable line: nothing of it to keep
            merged.unlink(missing_ok=True)
            continue
        if absent.count:
            os.replace(merged, new)
            report.tables[table] = TableExport(rows=export.rows + absent.count, bytes=new.stat().st_size,
                                               sha256=sha256_file(new))
            kept[table] = {"rows": absent.count - absent.unreadable, "first_ids": absent.first}
            if absent.unreadable:
                kept[table]["unreadable"] = absent.unreadable
    if kept:
        report.kept = kept
        rows = {table: info for table, info in kept.items() if info["rows"]}
        lines = {table: info["unreadable"] for table, info in kept.items() if info.get("unreadable")}
        why = ("app_export.keep_exported_rows = true keeps rows the app deleted in the days exported before"
               if source.startswith("a primary") else
               "a replica may be behind its primary, so rows leave an exported day only when it is exported from "
               "the primary or the app holds them on another day")
        parts = []
        if rows:
            total = sum(info["rows"] for info in rows.values())
            parts.append(f"{total} row(s) its raw files held (exported earlier) are in no table of the app {where}, "
                         f"{source} (deleted, or not replicated to it yet): kept in the re-exported day beside the "
                         f"rows read ({_rows_named(rows)}); {why}")
        if lines:
            parts.append(f"{sum(lines.values())} line(s) of its raw files have no id the export can read (not JSON, "
                         "or no integer " + ", ".join(f"{EXPORT_KEYS[t]}: {n} in {t}" for t, n in lines.items())
                         + " the ingest reads, a byte order mark at the file's start skipped as the ingest "
                         "skips it): kept as they were, after the rows, where the ingest reads them as before (it "
                         "quarantines a line with no integer id)")
        report.warnings.append(f"day {day}: " + "; ".join(parts))


HELD_FETCH = 2048    # ids a look-up of row_days.sql sends (psycopg adapts a list at ~240 bytes an id: ~0.5 MB a query)


class HeldRows:
    """Rows of one app table found by primary key (:func:`held_ids`): their ids, sorted (``ids``, int64, 8 bytes
    a row), and the day each is dated to now (``days``: an index into ``names`` a row, 4 bytes; -1: undated).
    Review rev29h: held as Python ints in a set and a sorted list, ~145-215 bytes an id (a users snapshot of a
    million accounts after ``users_snapshot = false``: +150 MB in the primary's nightly)."""

    def __init__(self, capacity: int = 0) -> None:
        # sized once for the most rows a look-up can find (no copy of a grown buffer beside it), cut at the end
        self.ids, self.days = array.array("q", [0]) * capacity, array.array("i", [0]) * capacity
        self.identities = array.array("q", [0]) * capacity     # review rev30b: identity_digest a row, 8 bytes
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._count = 0

    def add(self, key: int, day: str | None, identity: int = UNKNOWN_IDENTITY) -> None:
        if day is None:
            code = -1
        else:
            code = self._index.get(day)
            if code is None:
                code = self._index[day] = len(self.names)
                self.names.append(day)
        if self._count < len(self.ids):
            self.ids[self._count], self.days[self._count] = key, code
            self.identities[self._count] = identity
        else:
            self.ids.append(key)
            self.days.append(code)
            self.identities.append(identity)
        self._count += 1

    def done(self) -> "HeldRows":
        """Cut the arrays to the rows found."""
        del self.ids[self._count:]
        del self.days[self._count:]
        del self.identities[self._count:]
        return self

    def same_rows(self, path: Path, table: str, exact: bool = True,
                  reading: KeyReading | None = None) -> "HeldRows":
        """The rows found that are the rows raw table file ``path`` holds under their ids: a row is left out where
        the file's lines with its id have an identity (:func:`row_identity`) and none is the app row's (review
        rev30b: after a restore from an older backup the app gave a lost row's id to a new, unrelated row, which
        the late-row check took for the exported row moved to another day, and the day's re-export took the
        exported row out of the raw zone). A line whose identity cannot be read names its row by its id, as
        before. Streamed: 2 bytes a row found besides the arrays; a file that cannot be read leaves them all.
        ``reading``: how a line is keyed (:class:`KeyReading`: the ingest's; the late-row check's its own)."""
        if not self.ids:
            return self
        same, other = bytearray(len(self.ids)), bytearray(len(self.ids))
        try:
            for key, piece in _line_keys(path, cut_ok=True, name=EXPORT_KEYS[table], first_pieces=True,
                                         reading=reading):
                if type(key) is int and -(1 << 63) <= key < (1 << 63):
                    at = bisect.bisect_left(self.ids, key)
                    if at < len(self.ids) and self.ids[at] == key:
                        identity = row_identity(piece, table, exact)
                        if identity == UNKNOWN_IDENTITY or identity == self.identities[at] \
                                or self.identities[at] == UNKNOWN_IDENTITY:
                            same[at] = 1
                        else:
                            other[at] = 1
        except (OSError, EOFError, zlib.error):
            return self
        if not any(other[i] and not same[i] for i in range(len(other))):
            return self
        kept = HeldRows(len(self.ids))
        kept.names, kept._index = self.names, self._index
        for i, key in enumerate(self.ids):
            if same[i] or not other[i]:
                kept.ids[kept._count], kept.days[kept._count] = key, self.days[i]
                kept.identities[kept._count] = self.identities[i]
                kept._count += 1
        return kept.done()

    def __len__(self) -> int:
        return len(self.ids)

    def by_day(self) -> dict[str, tuple[int, list[str]]]:
        """dated day -> (rows dated to it, their first FIRST_IDS ids), undated rows left out."""
        counts = [0] * len(self.names)
        first: list[list[str]] = [[] for _ in self.names]
        for key, code in zip(self.ids, self.days):
            if code >= 0:
                counts[code] += 1
                if len(first[code]) < FIRST_IDS:
                    first[code].append(str(key))
        # review rev30g: a day whose rows same_rows() took out is no day a row moved to (it was named with 0 rows)
        return {name: (counts[i], first[i]) for i, name in enumerate(self.names) if counts[i]}


def _sorted_unique(ids: Iterable[int]) -> array.array:
    """``ids`` within int64 as a sorted int64 array without repeats (already so: no Python list of them)."""
    out, last, ordered = array.array("q"), None, True
    for key in ids:
        if not -(1 << 63) <= key < (1 << 63):
            continue
        if last is not None and key <= last:
            if key == last:
                continue
            ordered = False
        out.append(key)
        last = key
    if not ordered:             # not in order (a file another exporter wrote): sorted once
        _sort_once(out)
    return out


def _sort_once(ids: array.array) -> None:
    """Sort the int64 array ``ids`` in place, each id once (review rev38e: numpy sorts the array's own memory, and
    the ids kept are copied back into it: ~17 bytes an id at most; ``sorted(set(...))`` took ~100 bytes an id in
    Python ints)."""
    import numpy as np

    values = np.frombuffer(ids, dtype=np.int64)
    values.sort()
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    kept = values[keep]
    values[:len(kept)] = kept
    count = len(kept)
    del values, keep, kept       # no view of the array left: it may shrink
    del ids[count:]


def exact_identities(conn: psycopg.Connection) -> bool:
    """Whether row_days.sql's identities cover every text (the database's text is the raw line's UTF-8: a UTF8 or
    SQL_ASCII database), not only ASCII text."""
    return conn.info.parameter_status("server_encoding") in ("UTF8", "SQL_ASCII")


def held_ids(conn: psycopg.Connection, table: str, ids: Iterable[int], raw: Path | None = None) -> HeldRows:
    """The ids among ``ids`` that rows of app table ``table`` hold, on any day or none (``row_days.sql``, a
    primary-key lookup, HELD_FETCH ids a query, its rows read one at a time in id order), with the day each is
    dated to: in the export's snapshot, the rows an old raw file holds that the export did not read and the app
    did not delete. With ``raw`` (the raw file the ids are from), only the rows that are that file's rows, not a
    new row given the id again (:meth:`HeldRows.same_rows`, review rev30b). Memory: 20 bytes a row found (review
    rev29h), besides ``ids``."""
    wanted = ids if isinstance(ids, array.array) and _ascending(ids) else _sorted_unique(ids)
    found = HeldRows(len(wanted))
    last = None
    exact = exact_identities(conn)
    for at in range(0, len(wanted), HELD_FETCH):
        params = {name: (wanted[at:at + HELD_FETCH].tolist() if name == table else []) for name in RAW_TABLES}
        for _, key, on, identity in conn.execute(statement("row_days"), {**params, "exact": exact}):
            if key != last:     # ascending (ORDER BY id): a key of two rows (no primary key) once
                found.add(key, as_text(on), identity_digest(as_text(identity)))
                last = key
    found.done()
    return found.same_rows(raw, table, exact) if raw is not None else found


def _ascending(keys: array.array) -> bool:
    """Whether int64 ``keys`` are strictly ascending."""
    return all(keys[i] < keys[i + 1] for i in range(len(keys) - 1))


def left_rows(home: DataHome, day: str, staging: Path, report: AppExportReport,
              conn: psycopg.Connection, limit: int | None = None) -> dict[str, HeldRows]:
    """table -> the rows of ``day``'s raw file that its staged re-export (from the primary) does not hold and
    that the app's table holds all the same (:func:`held_ids`, with where they are dated now; ``conn``: the
    export's connection, its snapshot ended: a transaction of its own). Only a table whose file changed is read:
    the old file's ids are streamed against the staged file's (:class:`_KeyIndex`, 8 bytes a row), so a quiet
    night costs nothing. Review rev29h: a re-export from the primary took a moved row out of its old day and its
    new day, before the late-row check's window, was never exported again."""
    out: dict[str, HeldRows] = {}
    reading = KeyReading(limit or home_line_limit(home))      # review rev36i: the ingest's reading
    for table, export in report.tables.items():
        old, new = home.raw_file(day, table), staging / f"{table}.jsonl.gz"
        info = lstat_or_none(old)
        if info is None or not stat.S_ISREG(info.st_mode):
            continue
        try:
            if info.st_size == export.bytes and sha256_file(old) == export.sha256:
                continue
            index = _KeyIndex(new, name=EXPORT_KEYS[table], reading=reading)
            gone = _sorted_unique(key for key in _line_keys(old, cut_ok=True, name=EXPORT_KEYS[table], reading=reading)
                                  if type(key) is int and not index.has(key))
        except (OSError, EOFError, zlib.error):
            continue                            # an old file that cannot be read: the ingest reports it
        del index
        if gone:              # every row under those ids, whatever its identity: its day must hold it (rev31e)
            rows = held_ids(conn, table, gone)
            if rows:
                out[table] = rows
    return out


def old_key_indexes(home: DataHome, day: str, limit: int | None = None) -> dict[str, _KeyIndex]:
    """table -> :class:`_KeyIndex` of the raw day's table files (read before the export's snapshot, with no
    transaction open: the ids :func:`held_ids` looks up); a file that cannot be read is left out."""
    out = {}
    reading = KeyReading(limit or home_line_limit(home))      # review rev36i: the ingest's reading
    for table in RAW_TABLES:
        path = home.raw_file(day, table)
        info = lstat_or_none(path)
        if info is None or not stat.S_ISREG(info.st_mode):
            continue
        try:
            out[table] = _KeyIndex(path, cut_ok=True, name=EXPORT_KEYS[table], reading=reading)
        except (OSError, EOFError, zlib.error):
            continue
    return out


def not_read(old: _KeyIndex, read: array.array) -> array.array:
    """The int64 ids of ``old`` that ``read`` (the ids the export read, sorted) lacks, once each, ascending (an
    int64 array: 8 bytes an id, review rev29h)."""
    out, last = array.array("q"), None
    for key in old.keys:
        if key != last and not _sorted_has(read, key):
            out.append(key)
        last = key
    return out


def blob_warnings(day: str, report: AppExportReport) -> list[str]:
    """What an operator must hear about the day's blobs after a re-export: objects that changed in the
    store since they were copied (the copy stays frozen), and objects copied only now for a day whose
    files did not change (the feature stage, which ran on that day without them, does not see them
    until the day is rebuilt)."""
    out = []
    odd = report.blobs.get("not_a_file_in_store", 0)
    if odd:
        out.append(f"{odd} image object(s) of day {day} in the local store are not regular files (a symlink, a FIFO, "
                   "a device, a folder): not copied; the feature stage rejects those images as missing_blob")
    large = report.blobs.get("too_large", 0)
    if large:
        cap = report.blobs.get("max_bytes")
        out.append(f"{large} image object(s) of day {day} are larger than features.max_bytes ({cap} bytes): only "
                   f"their first {cap + 1} bytes are copied into raw/images, which the feature stage rejects as "
                   "file_too_large, as it would the whole object")
    changed = report.blobs.get("differs_in_store", 0)
    if changed:
        out.append(f"{changed} image blob(s) of day {day} differ in the store from the copy in raw/images; the "
                   "copy is kept (the raw zone freezes what was exported)")
    late = report.blobs.get("copied", 0) + large
    if report.published == "unchanged" and late:
        out.append(f"{late} image blob(s) of day {day} reached the store only after the day was "
                   f"exported; they are copied now: the next build or nightly fingerprints the day again (a blob "
                   f"its features rejected as missing_blob is there now), or at once: pickapic build --force "
                   f"--from {day} --to {day}")
    return out


@dataclass
class AppDays:
    """The app database's days with activity, and the rows that belong to no day."""

    days: list[str]
    undated: dict[str, dict]      # table -> {"rows": n, "first_ids": [...]} for tables with undated rows
    replica: bool = False         # a hot standby, or a logical-replication subscriber of app tables

    def warning(self) -> str:
        """One line naming the undated rows ('' when there are none)."""
        return undated_warning(self.undated)


REMEMBER_UNDATED = 1000   # undated ids per table an export remembers (UNDATED_STATE), so their day is exported once dated
UNDATED_STATE = "app_export_undated.json"    # HOME/cache/<this>: {table: [[id, day or null], ...]}
UNDATED_STATE_MAX_BYTES = 1 << 20            # 4 x REMEMBER_UNDATED entries take ~100 KB; a larger file is not ours
# fix37h (review rev37h): HOME/cache/<this>/dt=DAY.json, {table: [id, ...]} sorted: the rows moved to DAY, a day not
# closed yet (a created_at typo into a later year) or (fix38b) a day before the raw zone's first, past the
# REMEMBER_UNDATED a table UNDATED_STATE holds; any number, one day's file read at a time, each night looking them up
# and naming those on a day up to the raw zone's last (a day is never held back for them), each forgotten once the
# export of the day it is dated to holds it, or deleted
MOVED_WAITING = "app_export_moved"
MOVED_WAITING_MAX_BYTES = 64 << 20           # review rev38e: ~3 million ids a table for a day (at most ~22 bytes an
#                                              id): a larger file is not ours (it was 1 GiB, parsed whole into
#                                              Python ints: 8x its size)
WAITING_BATCH = 10_000                       # ids a row_days look-up of the waiting rows passes at a time
WAITING_READ_BYTES = 1 << 18                 # a MOVED_WAITING file is parsed this many bytes at a time (rev38e)
WAITING_WRITE_IDS = 1 << 14                  # ids turned into text at a time when one is written
WAITING_RUN_BYTES = 1 << 14                  # ids parsed at a time: this many bytes of a piece (fix39c)
WAITING_COMPACT_IDS = 1 << 16                # ids out of order sorted, each once, whenever their array doubles past
#                                              this (fix39c: a file of one id repeated, 2 bytes an id, took 6.6x its
#                                              size as int64s and the sort's copies; now the ids it holds, once)
# review rev38e: a MOVED_WAITING file that is not as the export writes it (truncated, hand-edited, not a regular
# file, too large) may be the only record of its rows: it is never read as "no rows" and never replaced; a writer
# that meets it moves it aside to dt=DAY.json.damaged (-N where that name is taken: fix39c), and every
# export names it (in place or moved aside) until someone deletes it
DAMAGED_WAITING = ".damaged"
SET_ASIDE_WHY = "moved aside as damaged by an earlier export"


class WaitingDamaged(ValueError):
    """A MOVED_WAITING file that is not as the export writes it (review rev38e); the text says why."""


_W_SPACE = rb"[ \t\n\r]*"
_W_INT = rb"-?(?:0|[1-9][0-9]*)"
_W_OPEN = re.compile(_W_SPACE + rb"\{")
_W_CLOSE = re.compile(_W_SPACE + rb"\}")
_W_COMMA = re.compile(_W_SPACE + rb",")
_W_KEY = re.compile(_W_SPACE + rb'"([a-z_]{1,64})"' + _W_SPACE + rb":" + _W_SPACE + rb"\[")
_W_EMPTY = re.compile(_W_SPACE + rb"\]")
_W_IDS = re.compile(_W_SPACE + rb"(?=[-0-9])")
_W_RUN = re.compile(rb"(?:" + _W_SPACE + _W_INT + _W_SPACE + rb",)+")     # ids, each followed by a comma
_W_LAST = re.compile(_W_SPACE + rb"(" + _W_INT + rb")" + _W_SPACE + rb"\]")
_W_PARTIAL_MAX = 4096        # bytes a part not understood yet may take before more is read: past it, not ours
_W_BLANK = b" \t\n\r"


def _parse_waiting(handle, limit: int) -> dict[str, array.array]:
    """Review rev38e: parse a MOVED_WAITING file (``{"table": [id, ...], ...}``, JSON) from ``handle``,
    WAITING_READ_BYTES at a time, into table -> sorted int64 ids. Memory: the ids' arrays (8 bytes an id) and a
    piece of the file; it was the whole text, a list, a set and a sorted list of Python ints (8x the file). Ids in
    ascending order (as the export writes them) are taken as they come; a table listing them otherwise is sorted
    once read (each id once). Anything else raises :class:`WaitingDamaged`: not that JSON (truncated), a table the
    export does not write or twice, an id that is not an int64, more than ``limit`` bytes."""
    out = {table: array.array("q") for table in RAW_TABLES}
    unsorted: set[str] = set()
    compact_at: dict[str, int] = {}     # an unsorted table's ids are sorted, each once, past this many (fix39c)
    seen: set[str] = set()
    buf, pos, final, offset, state, table = b"", 0, False, 0, "open", ""

    def more() -> None:
        nonlocal buf, pos, final, offset
        part = handle.read(WAITING_READ_BYTES)
        final = not part
        offset += pos
        buf, pos = buf[pos:] + part, 0
        if offset + len(buf) > limit:           # grown since its size was looked at
            raise WaitingDamaged(f"more than {limit} bytes")

    def damaged(why: str) -> WaitingDamaged:
        return WaitingDamaged(f"{why} at byte {offset + pos}")

    more()
    while state != "end":
        if state == "open":
            match, next_state = _W_OPEN.match(buf, pos), "first"
        elif state in ("first", "key"):
            match, next_state = (_W_CLOSE.match(buf, pos) if state == "first" else None), "end"
            if match is None:
                match, next_state = _W_KEY.match(buf, pos), "list"
                if match is not None:
                    table = match.group(1).decode("ascii")
                    if table not in out or table in seen:
                        raise damaged(f"table {table!r} is not one the export writes, or is there twice")
                    seen.add(table)
        elif state == "list":
            match, next_state = _W_EMPTY.match(buf, pos), "after"
            if match is None:
                match, next_state = _W_IDS.match(buf, pos), "ids"
        elif state == "ids":
            ids = out[table]
            # fix39c: a run WAITING_RUN_BYTES at a time (the split's bytes objects: ~40 bytes an id of the slice)
            while (run := _W_RUN.match(buf, pos, pos + WAITING_RUN_BYTES)) is not None:
                try:
                    batch = array.array("q", map(int, buf[pos:run.end() - 1].split(b",")))
                except (OverflowError, ValueError):   # ValueError: past int()'s 4,300 digits (review rev38h)
                    raise damaged(f"an id of {table} is not a 64-bit integer") from None
                if (ids and ids[-1] >= batch[0]) or not all(map(int.__lt__, batch, batch[1:])):
                    unsorted.add(table)
                ids.extend(batch)
                pos = run.end()
                if table in unsorted and len(ids) > compact_at.get(table, WAITING_COMPACT_IDS):
                    _sort_once(ids)        # fix39c: repeated ids (2 bytes each, "0,0,...") kept once as they come
                    compact_at[table] = 2 * len(ids) + WAITING_COMPACT_IDS
            match, next_state = _W_LAST.match(buf, pos), "after"
            if match is not None:
                try:
                    ids.append(int(match.group(1)))
                except (OverflowError, ValueError):   # ValueError: past int()'s 4,300 digits (review rev38h)
                    raise damaged(f"an id of {table} is not a 64-bit integer") from None
                if len(ids) > 1 and ids[-2] >= ids[-1]:
                    unsorted.add(table)
        else:   # "after" a table's ids
            match, next_state = _W_COMMA.match(buf, pos), "key"
            if match is None:
                match, next_state = _W_CLOSE.match(buf, pos), "end"
        if match is None:
            if final or len(buf) - pos > _W_PARTIAL_MAX:
                cut = final and re.fullmatch(rb"[ \t\n\r0-9,-]*", buf[pos:]) is not None   # truncated
                raise damaged("ends early" if cut else "not the export's JSON")
            more()                        # a part cut where the piece read ended: read on
            continue
        pos, state = match.end(), next_state
    while True:                           # nothing but blanks after the object
        if buf[pos:].strip(_W_BLANK):
            raise damaged("more than one JSON object")
        if final:
            break
        pos = len(buf)
        more()
    for table in unsorted:
        _sort_once(out[table])
    return out


def undated_rows(conn: psycopg.Connection, watched: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """Per table, the rows whose ``created_at`` is NULL, infinite or outside years 1..9999 (no export
    holds them) and their first FIRST_IDS primary keys; tables without any are left out. ``watched`` gets,
    per such table, its first REMEMBER_UNDATED non-NULL keys (the server keeps no more: a top-N sort)."""
    found = {}
    for table, rows, first_ids in conn.execute(statement("undated_rows"), {"keep": REMEMBER_UNDATED}).fetchall():
        if rows:
            keys = [_id_text(as_text(i)) for i in first_ids or []]
            found[as_text(table)] = {"rows": int(rows), "first_ids": keys[:FIRST_IDS]}
            if watched is not None:
                watched[as_text(table)] = [int(k) for k in keys if k != "NULL"]
    return found


def _read_cache_state(path: Path, max_bytes: int) -> dict:
    """The JSON object a cache state file of the export holds; empty where it is not one the export wrote (not a
    regular file, larger than ``max_bytes``, not JSON, not an object)."""
    data = read_small_file(path, max_bytes)
    try:
        state = json.loads(data) if data is not None else {}
    except (ValueError, RecursionError):
        return {}
    return state if isinstance(state, dict) else {}


def _load_undated(home: DataHome) -> dict[str, dict[int, str | None]]:
    """The remembered undated ids: table -> {id: the day it was found dated to, or None}. Anything the export
    did not write (not a regular file, too large, not that JSON) reads as nothing remembered."""
    out: dict[str, dict[int, str | None]] = {table: {} for table in RAW_TABLES}
    state = _read_cache_state(home.cache / UNDATED_STATE, UNDATED_STATE_MAX_BYTES)
    for table in RAW_TABLES:
        entries = state.get(table)
        # fix37h: up to REMEMBER_UNDATED dated and as many undated (_remembered): none of ours is cut here
        for entry in entries[:2 * REMEMBER_UNDATED] if isinstance(entries, list) else []:
            if (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int
                    and -(1 << 63) <= entry[0] < (1 << 63)
                    and (entry[1] is None or (isinstance(entry[1], str)
                                              and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", entry[1])))):
                out[table][entry[0]] = entry[1]
    return out


def _save_undated(home: DataHome, state: dict[str, dict[int, str | None]]) -> None:
    """Write the remembered undated ids (the file removed when there are none); OSError raised."""
    path = home.cache / UNDATED_STATE
    if not any(state.values()):
        info = lstat_or_none(path)
        if info is not None and stat.S_ISREG(info.st_mode):     # only a file: a FIFO or folder is left alone
            path.unlink()
        return
    _write_cache_json(home, path, {table: [[key, on] for key, on in sorted(ids.items())]
                                   for table, ids in state.items() if ids})


def _remembered(ids: dict[int, str | None]) -> dict[int, str | None]:
    """``ids`` with at most REMEMBER_UNDATED undated ones: every row dated (fix37h, review rev37h: a dated row
    remembered is a row moved off a raw day that may be published without it already, so it is never trimmed:
    trimmed, it was in no raw day and named by no night; :func:`remember_moved` adds no more dated rows than
    REMEMBER_UNDATED a table and puts the others in MOVED_WAITING), then the smallest undated ids in the room
    the dated ones leave (an undated row is named by the undated warning each night all the same)."""
    dated = sum(1 for on in ids.values() if on is not None)
    undated = len(ids) - dated
    if undated <= max(0, REMEMBER_UNDATED - dated):
        return ids
    room = max(0, REMEMBER_UNDATED - dated)
    kept_undated = set(sorted(key for key, on in ids.items() if on is None)[:room])
    return {key: on for key, on in ids.items() if on is not None or key in kept_undated}


def save_undated(home: DataHome, watch: "UndatedWatch") -> str:
    """Remember what ``watch`` learnt, as a change of the state it loaded applied to the state there now, under
    HOME/.locks/UNDATED_LOCK (review rev31e: exports of two days overlapping each wrote the state as they had
    loaded it, and the later one took out the rows the other had added or dated). Returns '' or a warning."""
    try:
        with hold_lock(home.locks / UNDATED_LOCK, "the app export's undated rows", lambda _holder: None):
            current = _load_undated(home)
            for table in RAW_TABLES:
                loaded, learnt, now = watch.loaded.get(table, {}), watch.state.get(table, {}), current[table]
                for key in loaded.keys() - learnt.keys():      # forgotten: exported in its day, or deleted
                    now.pop(key, None)
                for key, on in learnt.items():
                    if key in loaded:
                        if key in now and loaded[key] != on:   # dated since it was loaded
                            now[key] = on
                        # unchanged: the state there now stands; gone: another export forgot it meanwhile
                    elif now.get(key) is None:                 # added (another export may have dated it)
                        now[key] = on
                current[table] = _remembered(now)
            _save_undated(home, current)
    except (OSError, ValueError) as exc:     # ValueError: LockFileRefused
        return (f"the app rows reported undated could not be remembered in {home.cache / UNDATED_STATE} ({exc}): "
                "once dated, their day is marked only while the late-row check reaches it")
    return ""


class Outside(dict):
    """Fix37d: ``moved_rows``' table -> {id: day} of the rows moved to a day no schedule exports (before the raw
    zone's first) or none can export yet (not closed), REMEMBER_UNDATED a table at most. Fix37h (review rev37h):
    past that, the rows moved to a day not closed yet are listed in ``waiting`` (int64 arrays, written to
    MOVED_WAITING by :func:`remember_moved`); fix38b: so are the rows moved before the raw zone's first day (they
    were counted only, and the day they left held back until a ranged build exported their days). Memory bounded:
    a dict of REMEMBER_UNDATED ids a table, the rest 8 bytes an id."""

    def __init__(self) -> None:
        super().__init__()
        # table -> day -> ids past the cap (MOVED_WAITING: any number, as int64 arrays); remember_moved's rows
        # without room in UNDATED_STATE wait there too
        self.waiting: dict[str, dict[str, array.array]] = {}


def _waiting_path(home: DataHome, day: str) -> Path:
    return home.cache / MOVED_WAITING / f"dt={day}.json"


def _waiting_names(home: DataHome) -> Iterator[str]:
    """The names in HOME/cache/MOVED_WAITING, one listing streamed (fix39g: no list of every name held)."""
    try:
        with os.scandir(home.cache / MOVED_WAITING) as entries:
            for entry in entries:
                yield entry.name
    except OSError:
        return


def waiting_days(home: DataHome) -> list[str]:
    """The days HOME/cache/MOVED_WAITING holds rows for (fix37h), in order."""
    return sorted(name[3:13] for name in _waiting_names(home)
                  if re.fullmatch(r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}\.json", name))


def _add_set_aside_files(home: DataHome, damaged: DamagedWaiting) -> None:
    """Add the MOVED_WAITING files moved aside as damaged (review rev38e) to ``damaged``, in name order (fix39g: the
    first FIRST_IDS kept, the others counted: every name was held, 100,000 a night after a broken writer's nights)."""
    pattern = re.compile(r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}\.json" + re.escape(DAMAGED_WAITING) + r"(-[0-9]+)?")
    count = 0

    def matching() -> Iterator[str]:
        nonlocal count
        for name in _waiting_names(home):
            if pattern.fullmatch(name):
                count += 1
                yield name

    first = heapq.nsmallest(FIRST_IDS, matching())
    for name in first:
        damaged.add(str(home.cache / MOVED_WAITING / name), SET_ASIDE_WHY)
    damaged.add_unnamed(count - len(first), SET_ASIDE_WHY)


def _load_waiting(home: DataHome, day: str) -> dict[str, array.array]:
    """Table -> sorted int64 ids of ``day``'s MOVED_WAITING file (none where there is no file). Review rev38e: parsed
    a piece at a time (:func:`_parse_waiting`: 8 bytes an id); a file that is not as the export writes it (not a
    regular file, larger than MOVED_WAITING_MAX_BYTES, not that JSON) raises :class:`WaitingDamaged`, never reads as
    no rows (it may be the only record of them); OSError where it cannot be read."""
    try:      # the checks of every reader here (formats.files.open_regular, fix39c: they were repeated here)
        handle = open_regular(_waiting_path(home, day), max_bytes=MOVED_WAITING_MAX_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return {table: array.array("q") for table in RAW_TABLES}
    except NotRegularFile:
        raise WaitingDamaged("not a regular file") from None
    except FileTooLarge as exc:
        raise WaitingDamaged(f"{exc.size} bytes, more than the {exc.limit} such a file may hold") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WaitingDamaged("a symbolic link") from None
        raise
    with handle:    # read blocking (fix38q: a FUSE 'try again' was taken for the end, the file for damaged)
        return _parse_waiting(handle, MOVED_WAITING_MAX_BYTES)


ASIDE_NUMBER_MAX = (1 << 63) - 1     # the highest set-aside number counted (fix39g): a longer one was planted


def _set_aside(home: DataHome, day: str) -> Path:
    """Move ``day``'s damaged MOVED_WAITING file aside (review rev38e; the caller holds UNDATED_LOCK) to
    dt=DAY.json.damaged, else -N, N one past the highest number there (fix39c: -2 ... -999 were tried and the
    1,000th file raised EEXIST, its day's rows written no more): never over another file, never out of names (a
    planted number past ASIDE_NUMBER_MAX is passed over; past a planted ASIDE_NUMBER_MAX, the first free number).
    Fix39g: the folder is listed once at most (it was listed again for each name tried). OSError raised where it
    cannot be moved."""
    path = _waiting_path(home, day)
    prefix = path.name + DAMAGED_WAITING
    numbers = _aside_numbers(home, prefix)      # lazy: listed only where dt=DAY.json.damaged is taken
    aside = path.with_name(prefix)
    while True:
        try:
            os.link(path, aside, follow_symlinks=False)      # never replaces a file there
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if lstat_or_none(aside) is None:                  # no hard link here: renamed to the free name
                os.rename(path, aside)
                return aside
        else:
            os.unlink(path)
            return aside
        number = next(numbers, None)                          # the name tried is taken: the next one
        if number is None:
            raise FileExistsError(errno.EEXIST, "no set-aside name left", str(aside))
        aside = path.with_name(f"{prefix}-{number}")


def _aside_numbers(home: DataHome, prefix: str) -> Iterator[int]:
    """The numbers N to try for ``prefix``-N, from one listing of MOVED_WAITING (fix39g: the export's own names are
    always counted, N up to ASIDE_NUMBER_MAX; 19-digit ones were not, and each was then tried after a listing of its
    own): one past the highest there (at least 2) and on, then, past a planted ASIDE_NUMBER_MAX, 2 and on (the
    taken ones fail, each a link tried: no listing)."""
    pattern = re.compile(re.escape(prefix) + r"-([1-9][0-9]{0,18})")
    top = max((number for name in _waiting_names(home) if (match := pattern.fullmatch(name)) is not None
               and (number := int(match.group(1))) <= ASIDE_NUMBER_MAX), default=1)
    yield from range(top + 1, ASIDE_NUMBER_MAX + 1)
    yield from range(2, top + 1)


def _waiting_to_change(home: DataHome, day: str) -> dict[str, array.array]:
    """``day``'s MOVED_WAITING ids for a writer holding UNDATED_LOCK: a damaged file is moved aside first, kept
    whole (review rev38e: the next write replaced it, and the rows only it listed were lost)."""
    try:
        return _load_waiting(home, day)
    except WaitingDamaged:
        _set_aside(home, day)
        return {table: array.array("q") for table in RAW_TABLES}


def _waiting_text(per_table: dict[str, array.array]) -> Iterator[bytes]:
    """The JSON of ``per_table`` (json.dumps' bytes, keys sorted), WAITING_WRITE_IDS ids at a time (review rev38e:
    no list of Python ints for the whole file)."""
    yield b"{"
    for number, table in enumerate(sorted(table for table, ids in per_table.items() if ids)):
        yield f'{", " if number else ""}{json.dumps(table)}: ['.encode("ascii")
        ids = per_table[table]
        for at in range(0, len(ids), WAITING_WRITE_IDS):
            yield ((", " if at else "") + ", ".join(map(str, ids[at:at + WAITING_WRITE_IDS]))).encode("ascii")
        yield b"]"
    yield b"}"


def _save_waiting(home: DataHome, day: str, per_table: dict[str, array.array]) -> None:
    """Write ``day``'s MOVED_WAITING file (sorted ids: the same rows, the same bytes), removed when it holds none;
    atomically, as :func:`_write_cache_json` does (a piece at a time); OSError raised, EFBIG where it would hold
    more than MOVED_WAITING_MAX_BYTES (no export could read it back: the file there stays as it was)."""
    path = _waiting_path(home, day)
    if not any(per_table.values()):
        info = lstat_or_none(path)
        if info is not None and stat.S_ISREG(info.st_mode):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_cache(home), atomic_path(path) as temp, open(temp, "wb") as handle:
        written = 0
        for part in _waiting_text(per_table):
            written += handle.write(part)
            if written > MOVED_WAITING_MAX_BYTES:
                raise OSError(errno.EFBIG, f"more than the {MOVED_WAITING_MAX_BYTES} bytes such a file may hold",
                              str(path))


def _add_waiting(home: DataHome, waiting: dict[str, dict[str, array.array]]) -> None:
    """Add table -> day -> ids to the MOVED_WAITING files, one day at a time (the caller holds UNDATED_LOCK)."""
    for day in sorted({on for per in waiting.values() for on in per}):
        current = _waiting_to_change(home, day)
        for table, per in waiting.items():
            if per.get(day):     # two sorted runs merged, each id once (no set of the day's ids as Python ints)
                merged, last = array.array("q"), None
                for key in heapq.merge(current[table], sorted(per[day])):
                    if key != last:
                        merged.append(key)
                        last = key
                current[table] = merged
        _save_waiting(home, day, current)


@dataclass
class DamagedWaiting:
    """Review rev38e: the MOVED_WAITING files no export can read, for :func:`damaged_waiting_warning`: the first
    FIRST_IDS added (``named``: (path, why)), how many in all (``count``) and moved aside (``aside``), the earliest
    day (``day``). Fix39g: no more held than that (every set-aside name was, 100,000 after a broken writer's nights);
    false where there is none."""

    named: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0
    aside: int = 0
    day: str = ""

    def add(self, path: str, why: str) -> None:
        if len(self.named) < FIRST_IDS:
            self.named.append((path, why))
        on = Path(path).name[3:13]
        self.day = min(self.day, on) if self.day else on
        self.add_unnamed(1, why)

    def add_unnamed(self, count: int, why: str) -> None:
        """Count ``count`` more files, past those named (each named later in order than those added)."""
        self.count += count
        self.aside += count if why == SET_ASIDE_WHY else 0

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class WaitingWatch:
    """Fix37h: what an export learnt of the MOVED_WAITING rows: per file day, table -> the ids to forget once
    the day is published (held by it, or deleted); the rows dated to another day (``dated``: at most FIRST_IDS
    a table and day listed, ``more``: table -> day -> the others counted) for :func:`dated_warning`; review rev38e:
    the files it could not read (``damaged``) for :func:`damaged_waiting_warning`."""

    forget: dict[str, dict[str, array.array]] = field(default_factory=dict)
    dated: dict[str, dict[int, str]] = field(default_factory=dict)
    more: dict[str, dict[str, int]] = field(default_factory=dict)
    damaged: DamagedWaiting = field(default_factory=DamagedWaiting)


def watch_waiting(conn: psycopg.Connection, home: DataHome, day: str) -> WaitingWatch:
    """Look up, in the export's snapshot, where the MOVED_WAITING rows stand (``row_days.sql``, WAITING_BATCH ids
    at a time, one file day read at a time: memory bounded by a day's ids as int64 arrays): a row dated to ``day`` is
    this export's (forgotten once published), a deleted one is forgotten, one dated to another day is named and
    that day marked where the schedule exports it (:func:`dated_warning`), like a remembered row dated since (fix38b:
    its file's day too, so a row moved before the raw zone's first day is named each night until that day's export
    holds it; a day not closed yet is after the raw zone's last, which dated_warning leaves out); an undated one
    waits (the undated warning names it). Review rev38e: a look-up takes the ids of as many file days as fit in
    WAITING_BATCH (it was one query a file day and table), the rows listed are counted a table and day (each row
    counted the rows listed over every day: quadratic in the days), and a file that cannot be read, or one moved
    aside as damaged, is listed in ``damaged`` (it read as no rows, silently)."""
    watch = WaitingWatch()
    exact = None
    listed_on: dict[str, dict[str, int]] = {}          # table -> day -> rows listed in watch.dated
    pending: list[tuple[str, str, int]] = []            # (table, file day, id), WAITING_BATCH at most

    def look_up() -> None:
        nonlocal exact
        if exact is None:
            exact = exact_identities(conn)
        params: dict[str, list[int]] = {name: [] for name in RAW_TABLES}
        for table, _, key in pending:
            params[table].append(key)
        found: dict[tuple[str, int], str | None] = {}
        for table, key, on, _ in conn.execute(statement("row_days"), {**params, "exact": exact}):
            found[(as_text(table), key)] = as_text(on)
        for table, file_day, key in pending:
            if (table, key) not in found or found[(table, key)] == day:
                watch.forget.setdefault(file_day, {}).setdefault(table, array.array("q")).append(key)
            elif found[(table, key)] is not None:
                # fix38b: named on its file's day too (dated_warning names only days up to the raw zone's
                # last: a row before its first is named each night, one on a day not closed yet is not)
                on = found[(table, key)]
                listed, counts = watch.dated.setdefault(table, {}), listed_on.setdefault(table, {})
                if key in listed:
                    continue                   # waiting on two file days: one row, named once
                if counts.get(on, 0) < FIRST_IDS:
                    listed[key] = on
                    counts[on] = counts.get(on, 0) + 1
                else:
                    per = watch.more.setdefault(table, {})
                    per[on] = per.get(on, 0) + 1
        pending.clear()

    for file_day in waiting_days(home):
        try:
            ids = _load_waiting(home, file_day)
        except (WaitingDamaged, OSError) as exc:
            why = f"not as the export writes it: {exc}" if isinstance(exc, WaitingDamaged) else (
                f"cannot be read: {exc.strerror or exc}")
            watch.damaged.add(str(_waiting_path(home, file_day)), why)
            continue
        for table in RAW_TABLES:
            for key in ids[table]:
                pending.append((table, file_day, key))
                if len(pending) >= WAITING_BATCH:
                    look_up()
    if pending:
        look_up()
    _add_set_aside_files(home, watch.damaged)
    return watch


def damaged_waiting_warning(damaged: DamagedWaiting) -> str:
    """Review rev38e: one line naming the MOVED_WAITING files no export can read (``WaitingWatch.damaged``), each
    night until someone deletes them: the rows only they list are in no raw day and named by nothing else."""
    aside = damaged.aside                                      # fix39c: how many a broken writer has left
    return (f"{damaged.count} file(s)" + (f" ({aside} of them moved aside as damaged)" if aside else "")
            + " listing app rows moved to a day before the raw zone's first or not closed yet "
            "cannot be read as the export writes them, so the rows they list (which may be recorded nowhere else) "
            "are not looked up or named: "
            + "; ".join(f"{path} ({why})" for path, why in damaged.named)
            + ("; ..." if damaged.count > len(damaged.named) else "")
            + f" -- kept as they are (one in place is moved aside, to its name + {DAMAGED_WAITING}, before rows "
            "are written for its day again): restore it from a backup, or export its day and check the app rows it "
            f"lists (pickapic build --from-app-db --from {damaged.day} --to {damaged.day}), then delete it")


def forget_waiting(home: DataHome, watch: WaitingWatch) -> str:
    """Take the rows ``watch`` found held by the published day (or deleted) out of their MOVED_WAITING files,
    under UNDATED_LOCK (rows another export added meanwhile stay). Returns '' or a warning."""
    try:
        with hold_lock(home.locks / UNDATED_LOCK, "the app export's undated rows", lambda _holder: None):
            for file_day, per in sorted(watch.forget.items()):
                current = _waiting_to_change(home, file_day)
                for table, gone in per.items():      # ``gone``: ascending, as the file listed them
                    current[table] = array.array("q", (key for key in current[table] if not _sorted_has(gone, key)))
                _save_waiting(home, file_day, current)
    except (OSError, ValueError) as exc:     # ValueError: LockFileRefused
        return (f"the app rows exported tonight could not be taken out of {home.cache / MOVED_WAITING} ({exc}): "
                "the next export looks them up again")
    return ""


def _remember_failed(home: DataHome, why: str) -> str:
    return (f"app rows moved to a day before the raw zone's first could not be remembered in "
            f"{home.cache / UNDATED_STATE} ({why}): they are named only tonight; export their day: pickapic build "
            "--from-app-db --from DAY --to DAY")


def remember_moved(home: DataHome, moved: dict[str, dict[int, str]]) -> str:
    """Review rev35a: remember the rows moved to a day before the raw zone's first (``moved_rows``' ``outside``:
    table -> {id: day}) with the undated rows dated since (HOME/cache/UNDATED_STATE, under its lock): each export
    looks them up (:func:`watch_undated`) and names them (:func:`dated_warning`) until the export of their day
    holds them, or forgets them once deleted or undated. Before, such a row was named on the night its old day lost
    it, then by no night while no raw day held it. Fix38b: the rows past REMEMBER_UNDATED a table (``waiting``, and
    the new rows that find no room) go to MOVED_WAITING, any number, looked up and named each night the same way
    (:func:`watch_waiting`); no row is left out, so no day is held back for them. Returns '' or a warning (the
    state could not be written: the caller holds the day back, as it keeps the rows)."""
    try:
        with hold_lock(home.locks / UNDATED_LOCK, "the app export's undated rows", lambda _holder: None):
            current = _load_undated(home)
            # copies (the caller's arrays stay as they are), without the rows the state remembers already (one
            # place each: watch_undated looks them up and names them each night)
            waiting: dict[str, dict[str, array.array]] = {
                table: {on: array.array("q", (key for key in ids if key not in current.get(table, {})))
                        for on, ids in per.items()}
                for table, per in getattr(moved, "waiting", {}).items()}
            for table, ids in moved.items():
                if table in current:
                    now = current[table]
                    dated = sum(1 for on in now.values() if on is not None)
                    # fix37h (review rev37h): a dated row remembered before is never trimmed to make room (its old
                    # day may be published without it already); the new rows take the room left, the first row
                    # of each day not named yet first, and a row that finds none waits in MOVED_WAITING (fix38b:
                    # a row moved before the raw zone's first day too; it held the day that kept it back)
                    named = {on for on in now.values() if on is not None}
                    firsts: dict[str, int] = {}
                    for key, on in ids.items():
                        if on not in named and (on not in firsts or key < firsts[on]):
                            firsts[on] = key
                    first_ids = set(firsts.values())
                    for key, on in sorted(ids.items(), key=lambda item: (item[0] not in first_ids, item[0])):
                        if now.get(key) is not None:
                            now[key] = on                  # remembered dated already: its day now
                        elif dated < REMEMBER_UNDATED:
                            now[key] = on
                            dated += 1
                        else:                              # fix37h: waits for its day in MOVED_WAITING
                            waiting.setdefault(table, {}).setdefault(on, array.array("q")).append(key)
                    current[table] = _remembered(now)
            # the rows past the cap, written (as the state) before the publish; one day's file at a time
            _add_waiting(home, waiting)
            _save_undated(home, current)
    except (OSError, ValueError) as exc:     # ValueError: LockFileRefused
        return _remember_failed(home, str(exc))
    return ""


@dataclass
class UndatedWatch:
    """What an export learnt of the rows once reported undated: the state to remember once the day is
    published, the rows dated since whose day (not this one) the raw zone does not hold them in yet, and the
    state as it was loaded (:func:`save_undated` applies the difference)."""

    state: dict[str, dict[int, str | None]]
    dated: dict[str, dict[int, str]]      # table -> {id: day}
    loaded: dict[str, dict[int, str | None]] = field(default_factory=dict)


def watch_undated(conn: psycopg.Connection, home: DataHome, day: str, watched: dict[str, list[int]]) -> UndatedWatch:
    """Look up, in the export's snapshot, where the remembered undated rows stand (``row_days.sql``, a
    primary-key lookup of at most REMEMBER_UNDATED ids a table) and add the ones reported undated now
    (``watched``, from :func:`undated_rows`). Review rev29c: a row the undated warning named, once given a
    real created_at on a day past the lookback window, was never exported nor reported. A remembered row dated
    since to ``day`` is in this export: forgotten; to another day: kept, with its day, until that day is
    exported (each export warns and marks the day for the schedule meanwhile); deleted: forgotten."""
    remembered = _load_undated(home)
    where: dict[tuple[str, int], str | None] = {}
    if any(remembered.values()):
        params = {table: sorted(remembered[table]) for table in RAW_TABLES}
        for table, key, on, _ in conn.execute(statement("row_days"), {**params, "exact": exact_identities(conn)}):
            where[(as_text(table), key)] = as_text(on)
    state: dict[str, dict[int, str | None]] = {table: {} for table in RAW_TABLES}
    dated: dict[str, dict[int, str]] = {}
    for table in RAW_TABLES:
        for key in remembered[table]:
            if (table, key) not in where:
                continue                       # deleted since
            on = where[(table, key)]
            if on is None:
                state[table][key] = None
            elif on != day:                    # this export holds a row dated to its own day
                state[table][key] = on
                dated.setdefault(table, {})[key] = on
        for key in watched.get(table, []):
            state[table].setdefault(key, None)
        state[table] = _remembered(state[table])  # rows dated first, then the smallest undated ids
    return UndatedWatch(state, dated, remembered)


def dated_warning(home: DataHome, dated: dict[str, dict[int, str]],
                  more: dict[str, dict[str, int]] | None = None, newest: str = "") -> tuple[str, list[str]]:
    """A line naming the rows reported undated before (or moved to a day before the raw zone's first) that have
    a day now and are not in its raw files yet, those up to the raw zone's last day (a later day is exported by
    the nightly export anyway), and the days to mark for the schedule: those of them from the raw zone's first
    day on (as :func:`moved_days`: fix36g, the days :class:`ScheduledDays` holds). ('', []) when there are none.

    Fix36n: a day before the raw zone's first is named, never marked: no schedule re-exports it (it re-exports
    the marked days the raw zone holds, and catches up only the days after its first) and only that day's own
    export clears its marker, so a row moved there and back (or deleted) left the marker for good; the row is
    remembered (HOME/cache/UNDATED_STATE) and named each night until its day is exported instead. Fix36g: so is
    a day between a stray first raw day and the history, which the schedule's catch-up never exports either.
    ``newest``: the newest day closed by the export's clock (:class:`ScheduledDays`' horizon, fix38f)."""
    if not dated:
        return "", []
    days = home.raw_days()
    last = days[-1] if days else ""
    pending = sorted({on for ids in dated.values() for on in ids.values()})
    named = [on for on in pending if on <= last]
    if not named:
        return "", []
    held = set(days)
    parts = []
    for table, ids in dated.items():
        shown = [(key, on) for key, on in sorted(ids.items()) if on in named]
        # fix37h: the MOVED_WAITING rows past those listed, counted (``more``: table -> day -> rows)
        count = len(shown) + sum(rows for on, rows in (more or {}).get(table, {}).items() if on in named)
        if shown:
            parts.append(f"{table}: {count} (" + ", ".join(f"id {key} on {on}" for key, on in shown[:FIRST_IDS])
                         + (", ..." if count > FIRST_IDS else "") + ")")
    lacking = [on for on in named if on not in held]
    scheduled = ScheduledDays(home, days, raw_day_counts, newest)
    return ("app rows reported earlier as having no day (NULL or out-of-range created_at) were given a created_at "
            "since, or were moved to a day before the raw zone's first, and are not in their day's raw files yet: "
            f"{'; '.join(parts)} -- the next scheduled export "
            "re-exports each such day the raw zone holds, as a day with late rows (or now: pickapic build "
            "--from-app-db --from DAY --to DAY)"
            + (f"; the raw zone lacks {', '.join(lacking[:FIRST_IDS])}{', ...' if len(lacking) > FIRST_IDS else ''}, "
               f"which only such a build exports (pickapic build --from-app-db --from {lacking[0]} --to "
               f"{lacking[0]})" if lacking else "")), [on for on in named if on in scheduled]



def _id_text(value: object) -> str:
    """A primary key as the reports name it: a NULL key (a table without its primary key may hold one)
    is 'NULL', never a ``None`` that a message could not join."""
    return "NULL" if value is None else str(value)


def _rows_named(found: dict[str, dict]) -> str:
    """'table: rows (ids 1, 2, ...)' per table of ``found`` (table -> {"rows", "first_ids"})."""
    return "; ".join(f"{table}: {info['rows']} (ids {', '.join(map(_id_text, info['first_ids']))}"
                     f"{', ...' if info['rows'] > len(info['first_ids']) else ''})" for table, info in found.items())


def unconvertible_warning(day: str, unconvertible: dict[str, dict]) -> str:
    """A line naming the rows of ``day`` whose text the database's encoding has no UTF-8 for."""
    return (f"app rows of day {day} hold text that the database's encoding has no UTF-8 equivalent for (e.g. "
            "WIN1252 byte 0x81): written with \\udcXX escapes of the stored bytes, so the ingest quarantines "
            "them as invalid_utf8: " + _rows_named(unconvertible) + " -- correct the text in the app database")


def oversized_warning(day: str, oversized: dict[str, dict], max_line_bytes: int) -> str:
    """A line naming the rows of ``day`` whose text is longer than the ingest's line limit."""
    return (f"app rows of day {day} hold a text value of more than ingest.max_line_bytes ({max_line_bytes}): "
            f"each is written as the first {max_line_bytes + 1} bytes of its line, which the ingest quarantines "
            "as line_too_long (the whole value stays in the app database): " + _rows_named(oversized))


def undated_warning(undated: dict[str, dict]) -> str:
    """A line telling the operator which rows no day's export holds, and what becomes of them once dated."""
    if not undated:
        return ""
    more = [table for table, info in undated.items() if info["rows"] > REMEMBER_UNDATED]
    return ("app rows with a NULL, infinite or out-of-range created_at belong to no day and are not exported: "
            + _rows_named(undated) + " -- give them a real created_at in the app database: the export remembers "
            f"up to {REMEMBER_UNDATED} of their ids a table (HOME/cache/{UNDATED_STATE}) and, once one has a day, "
            "marks that day for the next scheduled export to re-export, naming it each night until it is exported"
            + (f"; {', '.join(more)} {'holds' if len(more) == 1 else 'hold'} more than that: once the others are "
               "dated, export their days with pickapic build --from-app-db --from DAY --to DAY" if more else ""))


# --- rows committed after their day's last export ----------------------------------------------------

VERIFY_DAYS = 14     # days before an export's lookback window it compares with the database (late_rows)
COUNTS_CACHE = "app_export_counts"    # HOME/cache/<this>/dt=DAY.json: rows, max id, id digest of a raw day's files
COUNTS_READING = 4    # how its entries read ids (2: as written, review rev35a; 3: 05 and a key named again with an
                      # escape no id, review rev35c; 4: as the ingest keys a line, at the ingest's max_line_bytes,
                      # kept in the entry, review rev36i; entries of another reading or limit are recomputed)
LATE_MARKERS = "app_export_late"      # HOME/cache/<this>/dt=DAY: the day has rows its raw files lack
DIGEST_MOD = 1 << 64
_M32 = 0xFFFFFFFF
_HASH_INIT = (0x9E3779B9 + 4 + 3923095) & _M32    # lookup3's initial value for 4 bytes of key


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def id_hash(value: int) -> int:
    """PostgreSQL's ``hashint8extended(value, 0)`` as an unsigned 64-bit integer, what ``day_counts.sql`` sums
    per table and day (src/common/hashfn.c: the int8 folded to 32 bits as ``hashint8`` folds it, then
    ``hash_bytes_uint32_extended`` with seed 0, which is lookup3's final mix). A key past int64, which no
    integer column holds, is taken by its low 64 bits (its day's digest then differs from the database's)."""
    value = (value + (1 << 63)) % DIGEST_MOD - (1 << 63)
    lo, hi = value & _M32, (value >> 32) & _M32
    lo ^= hi if value >= 0 else (~hi & _M32)
    a = b = c = _HASH_INIT
    a = (a + lo) & _M32
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return (b << 32) | c


def id_digest(ids: Iterable[int | None]) -> int:
    """The order-independent digest of a set of ids (NULLs skipped), as ``day_counts.sql`` computes it: the sum of
    their :func:`id_hash` modulo 2^64. Additive: a day's users snapshot is the sum of the digests of the days
    it covers."""
    return sum(id_hash(i) for i in ids if i is not None) % DIGEST_MOD


@dataclass(frozen=True)
class RawTableCounts:
    """What the late-row check knows of one raw table file: its rows, largest leading id and :func:`id_digest`,
    and ``checked``: the (rows, digest) of the database's rows for it that an exact comparison found it to hold
    every id of (rows deleted since, none added: the day is whole while the database keeps that state), and
    ``content`` (review rev35a): (rows, id digest, content digest) of the database's rows when the file was last
    known to hold their current values (:func:`record_content`), None where unknown."""

    rows: int
    top: int | None
    digest: int
    checked: tuple[int, int] | None = None
    content: tuple[int, int, int] | None = None   # review rev35a: the baseline (rows, digest, content digest) of the
    #                                              database's rows the file is known to be up to date with
    parts: dict | None = None     # review rev35e: a users snapshot's baseline by the accounts' creation day (_parts)


def late_reading(home: DataHome) -> KeyReading:
    """The late-row check's reading of a raw line's key (review rev36i): the ingest's, at the home's
    ``ingest.max_line_bytes``, the export's own cut line of an oversized row counting as its row's."""
    return KeyReading(home_line_limit(home))


def _file_counts(path: Path, name: str | None = None,
                 reading: KeyReading | None = None) -> tuple[int, int | None, int]:
    """Lines, largest id and id digest of a raw table file (ids: member ``name``, as the ingest keys them, the
    export's own cut line as its row's, as the database's counts do: ``reading``, :func:`late_reading`; review
    rev36i: they were read leniently from a line's first MiB, so a line the ingest keys no row by, another
    exporter's, held its row and the day was never re-exported; streamed, a line over the limit never held)."""
    rows, top, digest = 0, None, 0
    for key in _line_keys(path, name=name, reading=reading or KeyReading()):
        rows += 1
        if type(key) is int:
            digest += id_hash(key)
            if top is None or key > top:
                top = key
    return rows, top, digest % DIGEST_MOD


COUNTS_CACHE_MAX_BYTES = 64 << 10    # a counts cache file is ~400 bytes; a larger one is not the export's


def _cached_counts(cache_file: Path) -> dict:
    """The counts cache file's table -> entry mapping, or {} for anything the export did not write there:
    absent, not a regular file (a FIFO is never waited on, a link never followed: ``read_small_file``),
    larger than COUNTS_CACHE_MAX_BYTES, or not a JSON object."""
    data = read_small_file(cache_file, COUNTS_CACHE_MAX_BYTES)
    if data is None:
        return {}
    try:
        cached = json.loads(data)
    except (ValueError, RecursionError):       # not JSON, not UTF-8, or nested past the parser's depth
        return {}
    return cached if isinstance(cached, dict) else {}


def _valid_entry(entry: object, key: list[int], limit: int | None = None) -> bool:
    """Whether a cache entry is [size, mtime_ns, inode, ctime_ns, rows, max id, digest, checked, COUNTS_READING,
    the ingest's max_line_bytes it was read at] for the file's current ``key`` (and ``limit``, where given), with integer counts and ``checked`` null or [rows, digest] (a hand-edited or corrupted
    entry is recomputed, never trusted or failing the export; an entry of before review rev29c, without a
    digest, or of before review rev35a, its ids read by their doubles, or of before rev35c, ``05`` read as 5, is
    recomputed once). The ctime is what ``utime``
    cannot set: a file rewritten in place with its size and mtime put back (``cp -p``) kept its old counts (review
    rev21c)."""
    return (isinstance(entry, list) and len(entry) == 10 and type(entry[8]) is int and entry[8] == COUNTS_READING
            and type(entry[9]) is int and (limit is None or entry[9] == limit)
            and all(type(v) is int for v in entry[:4])
            and entry[:4] == key and type(entry[4]) is int and entry[4] >= 0
            and (entry[5] is None or type(entry[5]) is int)
            and type(entry[6]) is int and 0 <= entry[6] < DIGEST_MOD
            and (entry[7] is None or (isinstance(entry[7], list) and len(entry[7]) == 2
                                      and all(type(v) is int and v >= 0 for v in entry[7]))))


def _file_key(path: Path) -> list[int] | None:
    """[size, mtime_ns, inode, ctime_ns] of a regular file (None for anything else, or nothing)."""
    info = lstat_or_none(path)
    if info is None or not stat.S_ISREG(info.st_mode):
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def raw_day_state(home: DataHome, day: str) -> dict[str, RawTableCounts]:
    """table -> :class:`RawTableCounts` of the raw day's table files there are, from a cache keyed by each
    file's size, mtime, inode and ctime (HOME/cache: deleting it costs one decompression of each file). The
    cache is read as the tool's own small files are (:func:`_cached_counts`): a bad or malformed entry
    is recomputed from the raw file."""
    cache_file = home.cache / COUNTS_CACHE / f"dt={day}.json"
    cached = _cached_counts(cache_file)
    baselines = _content_record(home, day)
    reading = late_reading(home)
    out, fresh = {}, {}
    for table in RAW_TABLES:
        path = home.raw_file(day, table)
        key = _file_key(path)
        if key is None:
            continue
        entry = cached.get(table)
        if not _valid_entry(entry, key, reading.limit):
            entry = key + list(_file_counts(path, EXPORT_KEYS[table], reading)) + [None, COUNTS_READING, reading.limit]
        fresh[table] = entry
        base = baselines.get(table)
        valid = _valid_content(base, key)
        out[table] = RawTableCounts(entry[4], entry[5], entry[6], None if entry[7] is None else tuple(entry[7]),
                                    tuple(base[3:6]) if valid else None,
                                    base[6] if valid and len(base) == 7 else None)
    if fresh != cached:
        _write_counts_cache(home, cache_file, fresh)
    return out


def _write_counts_cache(home: DataHome, cache_file: Path, entries: dict) -> None:
    with contextlib.suppress(OSError):
        _write_cache_json(home, cache_file, entries)


WRITTEN_RECORDS = "app_export_written"   # HOME/cache/<this>/dt=DAY.json: the day's files as the export left them
WRITTEN_RECORD_MAX_BYTES = 16 << 10       # a record is ~600 bytes; a larger one is not the export's
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _written_record_path(home: DataHome, day: str) -> Path:
    return home.cache / WRITTEN_RECORDS / f"dt={day}.json"


def record_written(home: DataHome, day: str, report: AppExportReport) -> None:
    """Record, once the export published ``day``, each table file it left there: table -> [size, mtime_ns,
    inode, sha256] (review rev29i; :func:`written_by_export` reads it; no ctime: removing the staging folder, which
    holds a hard link of each unchanged file, changes it). A file that is not what the
    export wrote (another size: changed since the rename) leaves no record at all, and a record that cannot be
    written is none: a day without one is never re-exported for holding no row of the app's."""
    path = _written_record_path(home, day)
    entries: dict[str, list] = {}
    for table, export in report.tables.items():
        key = _file_key(home.raw_file(day, table))
        if key is None or key[0] != export.bytes:
            entries = {}
            break
        entries[table] = key[:3] + [export.sha256]
    with contextlib.suppress(OSError):
        if not entries:
            path.unlink(missing_ok=True)
            return
        _write_cache_json(home, path, entries)


CONTENT_RECORDS = "app_export_content"   # HOME/cache/<this>/dt=DAY.json: table -> [size, mtime_ns, inode, rows,
#                                          id digest, content digest] of the database's rows the file holds (rev35a)
CONTENT_RECORD_MAX_BYTES = 64 << 10       # a record is ~400 bytes (a users snapshot's parts: ~60 a day of the
#                                          window); a larger one is not the export's


def _content_record(home: DataHome, day: str) -> dict:
    """``day``'s content baselines (:func:`record_content`) as JSON gives them ({} where there is none, or it is not
    a regular file the export wrote: ``read_cache``)."""
    record = read_cache(home.cache / CONTENT_RECORDS / f"dt={day}.json", CONTENT_RECORD_MAX_BYTES)
    return record if isinstance(record, dict) else {}


def _valid_content(entry: object, key: list[int] | None) -> bool:
    """Whether a content baseline is [size, mtime_ns, inode, rows, digest, content] of the file's current ``key``
    (the file as the export or the check that recorded it left it: rewritten since, the baseline is no more),
    a users snapshot's with its parts by creation day as a seventh member (review rev35e: :func:`_valid_parts`)."""
    return (isinstance(entry, list) and len(entry) in (6, 7) and all(type(v) is int and v >= 0 for v in entry[:6])
            and key is not None and entry[:3] == key[:3] and entry[4] < DIGEST_MOD and entry[5] < DIGEST_MOD
            and (len(entry) == 6 or _valid_parts(entry[6])))


# Review rev35e: a users snapshot holds every account up to its day's end, so an account erased on any earlier day
# changed its ids, and an email edited on another day was then recorded as the baseline unseen (the bound "a
# deletion on the same day" was wider for it). Its baseline is kept by the accounts' creation day: {"from": DAY,
# "before": [rows, digest, content] of the accounts created before DAY, "days": {DAY or later: [rows, digest,
# content]}} (days with accounts only), and compared part by part (:func:`_edited_parts`).
_DAY_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _valid_triple(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 3 and all(type(v) is int and v >= 0 for v in value)
            and value[1] < DIGEST_MOD and value[2] < DIGEST_MOD)


def _valid_parts(parts: object) -> bool:
    """Whether ``parts`` is a users snapshot's baseline by creation day as :func:`_parts` makes it."""
    return (isinstance(parts, dict) and set(parts) == {"from", "before", "days"} and isinstance(parts["from"], str)
            and _DAY_TEXT.fullmatch(parts["from"]) is not None and _valid_triple(parts["before"])
            and isinstance(parts["days"], dict)
            and all(isinstance(d, str) and _DAY_TEXT.fullmatch(d) is not None and d >= parts["from"]
                    and _valid_triple(v) for d, v in parts["days"].items()))


def _parts(start: str, before: tuple, days: dict[str, tuple]) -> dict:
    """A users snapshot's baseline by creation day: the accounts created before ``start`` (``before``: rows, id
    digest, content digest) and those of each day from ``start`` (``days``; days without accounts left out)."""
    return {"from": start, "before": [int(v) for v in before[:3]],
            "days": {d: [int(v) for v in part[:3]] for d, part in sorted(days.items()) if part[0]}}


def _coarsened(parts: dict, start: str) -> dict[str | None, tuple[int, int, int]]:
    """``parts`` with every creation day before ``start`` (not before its own ``from``) summed into the None part."""
    out: dict[str | None, tuple[int, int, int]] = {None: tuple(parts["before"])}
    for day, part in parts["days"].items():
        key = day if day >= start else None
        have = out.get(key, (0, 0, 0))
        out[key] = (have[0] + part[0], (have[1] + part[1]) % DIGEST_MOD, (have[2] + part[2]) % DIGEST_MOD)
    return out


def _edited_parts(recorded: dict | None, now: dict | None) -> bool:
    """Whether a creation day's accounts (or those created before the later of the two baselines' first days) have
    the ids of the recorded baseline and another content digest: an account edited, whatever was erased on another
    day (an erasure and an edit of that same part stay unseen: the documented bound)."""
    if recorded is None or now is None:
        return False
    start = max(recorded["from"], now["from"])
    old, new = _coarsened(recorded, start), _coarsened(now, start)
    for key in set(old) | set(new):
        a, b = old.get(key, (0, 0, 0)), new.get(key, (0, 0, 0))
        if a[:2] == b[:2] and a[2] != b[2]:
            return True
    return False


def day_content(conn: psycopg.Connection, day: str, users_snapshot: bool,
                counted: tuple[str, dict] | None = None) -> dict[str, tuple]:
    """table -> (rows, id digest, content digest) of the rows ``day``'s export writes, read in the export's snapshot
    (``day_counts.sql`` over the day; the users file of ``users_snapshot``: every dated account up to its end,
    with its parts by creation day as a fourth member: :func:`_parts`). ``counted``: (first day, the late-row
    check's ``day_counts.sql`` rows by (table, day)) of a check that reached ``day`` in the same snapshot, used
    instead of a query of its own (review rev35e: the parts then go by day from the check's first day)."""
    if counted is None:
        first = day
        start, end = day_bounds(day)
        per: dict[tuple[str, str | None], tuple[int, int, int]] = {}
        for table, on, rows, _, digest, content in conn.execute(
                statement("day_counts"), {"start": start.isoformat(sep=" "), "end": end.isoformat(sep=" ")}):
            per[(as_text(table), as_text(on))] = (int(rows), int(digest or 0) % DIGEST_MOD,
                                                  int(content or 0) % DIGEST_MOD)
    else:
        first, per = counted[0], {key: (v[0], v[2], v[3]) for key, v in counted[1].items()}
    nothing = (0, 0, 0)
    out: dict[str, tuple] = {table: per.get((table, day), nothing) for table in RAW_TABLES}
    if users_snapshot:
        # review rev35e: with its parts by creation day, compared part by part (_edited_parts)
        before = per.get(("users", None), nothing)
        own = {d: per.get(("users", d), nothing) for d in _days(dt.datetime.fromisoformat(first), day)}
        out["users"] = _summed([before, *own.values()]) + (_parts(first, before, own),)
    return out


def _summed(parts: list[tuple]) -> tuple[int, int, int]:
    """Summed rows, id digest and content digest of ``parts`` (the digests modulo DIGEST_MOD)."""
    return (sum(p[0] for p in parts), sum(p[1] for p in parts) % DIGEST_MOD, sum(p[2] for p in parts) % DIGEST_MOD)


def record_content(home: DataHome, day: str, entries: dict[str, tuple[list[int], tuple]],
                   replace: bool = False) -> str:
    """Record for raw day ``day`` each table's baseline: table -> (the file's key, (rows, id digest, content digest)
    of the database's rows it holds the values of, and for a users snapshot its parts by creation day). ``replace``: the export's, after it published the day (every
    table's anew); else the late-row check's, added to the record there (a table whose file changed since it was
    counted is left out). Review rev35a: an edit of a row past the lookback window (same ids: same rows and id
    digest) was never exported nor reported; the late-row check compares the content digest with this. Returns
    '' or a warning (the cache is disposable: without a record the day's edits are seen only once it has one)."""
    path = home.cache / CONTENT_RECORDS / f"dt={day}.json"
    try:
        record = {} if replace else {table: entry for table, entry in _content_record(home, day).items()
                                     if table in RAW_TABLES}
        for table, (key, base) in entries.items():
            now = _file_key(home.raw_file(day, table))
            if now is None or now[:3] != key[:3]:
                record.pop(table, None)
                continue
            record[table] = key[:3] + [part for part in base if part is not None]
        if not record:
            info = lstat_or_none(path)
            if info is not None and stat.S_ISREG(info.st_mode):
                path.unlink()
            return ""
        _write_cache_json(home, path, record)
    except OSError as exc:
        return (f"the content record of day {day} could not be written in {path} ({exc.strerror or exc}): an edit of "
                "its rows past app_export.lookback_days is seen only once the day is exported again")
    return ""


def _sha256_no_links(path: Path) -> tuple[list[int], str] | None:
    """([size, mtime_ns, inode], sha256) of the regular file ``path`` names, opened without following a
    link or waiting on a FIFO; None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        digest = hashlib.sha256()
        with open(fd, "rb", closefd=False) as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return [info.st_size, info.st_mtime_ns, info.st_ino], digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _written_record(home: DataHome, day: str) -> dict | None:
    """``day``'s record of the files the export wrote (:func:`record_written`) as JSON gives it; None where there is
    none or it is not a regular file the export wrote (a link never followed, a FIFO never waited on), too large,
    not JSON or not an object."""
    record = read_cache(_written_record_path(home, day), WRITTEN_RECORD_MAX_BYTES)
    return record if isinstance(record, dict) else None


def written_by_export(home: DataHome, day: str) -> bool:
    """Whether every app-table file ``raw/app_logs/dt=DAY/`` holds is as an export of the app database left it
    (:func:`record_written`): the same size, mtime, inode and sha256 (its bytes read again). False for a day without a record (a
    simulator's, a hand-written or imported day; the record deleted with HOME/cache) or with a file the record
    does not name or that changed since (an operator's edit), and for a record that is not a regular file the
    export wrote (a link is never followed, a FIFO never waited on: ``read_small_file``), too large or malformed.
    Review rev29i: a ranged build re-exports a raw day the app holds no row on only when this is true, so it
    never empties a day whose rows the app export did not write."""
    record = _written_record(home, day)
    if record is None:
        return False
    for table in RAW_TABLES:
        path = home.raw_file(day, table)
        if not os.path.lexists(path):
            continue
        entry = record.get(table)
        if not (isinstance(entry, list) and len(entry) == 4 and all(type(v) is int for v in entry[:3])
                and isinstance(entry[3], str) and _SHA256_HEX.fullmatch(entry[3])):
            return False
        found = _sha256_no_links(path)
        if found is None or found != (entry[:3], entry[3]):
            return False
    return True


def built_from_export(home: DataHome, day: str) -> bool:
    """Whether the warehouse's partitions of ``day``, a day whose raw folder is gone (raw-zone retention), were built
    from the files the app export wrote for it: its record under HOME/cache/app_export_written (``record_written``)
    and the day's ``ingest_files`` partition name the same sha256 for every table either names (review rev31a: a
    ranged build re-exports such a day the app holds no row on now, so the erasure reaches what the warehouse keeps
    of it, only when this is true; a day the warehouse got another way, from the simulator, ``pickapic demo`` or
    files edited by hand, is never rebuilt from the app's nothing). False where either cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = _written_record(home, day)
    if not record:
        return False
    written: dict[str, str] = {}
    for table, entry in record.items():
        if not (table in RAW_TABLES and isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], str)
                and _SHA256_HEX.fullmatch(entry[3])):
            return False
        written[table] = entry[3]
    path = home.partition_file("ingest_files", day)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        files = pq.read_table(path, columns=["table", "file_sha256"]).to_pylist()
    except (OSError, pa.ArrowException, KeyError):
        return False
    ingested = {row["table"]: row["file_sha256"] for row in files if row["file_sha256"] is not None}
    return bool(ingested) and ingested == written


def raw_day_counts(home: DataHome, day: str) -> dict[str, tuple[int, int | None]]:
    """table -> (rows, largest id) of the raw day's table files there are (see :func:`raw_day_state`)."""
    return {table: (counts.rows, counts.top) for table, counts in raw_day_state(home, day).items()}


def _record_checked(home: DataHome, day: str, table: str, counted: list[int], checked: tuple[int, int]) -> None:
    """Remember in the counts cache that the raw file of ``day`` / ``table``, as it was when counted (its key
    ``counted``), holds every id of the database's rows for it while they are ``checked`` = (rows, digest)."""
    cache_file = home.cache / COUNTS_CACHE / f"dt={day}.json"
    cached = _cached_counts(cache_file)
    entry = cached.get(table)
    key = _file_key(home.raw_file(day, table))
    if key is None or key != counted or not _valid_entry(entry, key):
        return                             # rewritten since it was counted: the next check counts it again
    entry[7] = list(checked)
    _write_counts_cache(home, cache_file, cached)


LATE_MARKER_MAX_BYTES = 4 << 10          # a marker is ~30 bytes; a larger file is not the export's


def late_marker_file(home: DataHome, day: str) -> Path:
    return home.cache / LATE_MARKERS / f"dt={day}"


def marker_ticket(home: DataHome, day: str) -> int | None:
    """When ``day``'s late marker was set, on the tickets' clock: None where there is no marker; the ticket it
    records (review rev31h), else its modification time in nanoseconds, the time the tickets count by: a marker
    written before fix31h (an empty file), one the export did not write, or a ticket the clock never reached
    (larger than its last: not the clock's). Raises OSError where the marker's folder cannot be read."""
    marker = late_marker_file(home, day)
    info = lstat_or_none(marker)
    if info is None:
        return None
    ticket = _read_ticket(read_cache(marker, LATE_MARKER_MAX_BYTES), "ticket")
    return ticket if 0 < ticket <= last_ticket(home) else info.st_mtime_ns


def mark_late(home: DataHome, day: str, late: bool, ticket: int | None = None) -> str:
    """Set or clear the marker saying that ``day``'s raw files lack rows the database holds
    (``app_export_schedule`` re-exports the marked days: :func:`late_days`). Returns '' or a warning saying the
    marker could not be set or cleared (review rev31e: an OS error was swallowed, and a day whose rows only the
    schedule's re-export brings was never exported, with nothing said).

    Review rev31h: a marker records when it was set, a ticket of the clock the snapshots' tickets come from
    (:func:`draw_ticket`, drawn as it is set: larger than the ticket of every snapshot taken before), and an
    export clears it only with a larger ``ticket`` (its snapshot taken after the marker was set, so it sees every
    row the export that set it saw): before, an export clearing a marker from an older snapshot lost the row the
    marker stood for (a row moved into the day after that snapshot). A marker with no ticket (written before
    fix31h) counts as set at its modification time (:func:`marker_ticket`). ``ticket`` None clears whatever is
    there (an operator's clear, not an export's)."""
    marker, clock_warning = late_marker_file(home, day), ""
    try:
        with tickets_lock(home):
            if late:
                marker.parent.mkdir(parents=True, exist_ok=True)
                order = snapshot_order(home, day)
                stamp, clock_warning = draw_ticket(home, max(order["taken"], order["published"]) + 1)
                _write_cache_json(home, marker, {"ticket": stamp})
            elif ticket is None or (set_at := marker_ticket(home, day)) is None or set_at < ticket:
                marker.unlink(missing_ok=True)
    except (OSError, LockFileRefused) as exc:
        reason = exc.strerror or exc if isinstance(exc, OSError) else exc
        if late:
            return (f"day {day} holds fewer rows than the app database, but its marker {marker} could not be written "
                    f"({reason}): the schedule does not re-export it; export it now: pickapic build "
                    f"--from-app-db --from {day} --to {day}")
        return (f"day {day} was exported whole, but its late marker {marker} could not be removed "
                f"({reason}): the schedule re-exports the day once more")
    return clock_warning     # review rev32c: the clock's warning was dropped here


def _marker_set(home: DataHome, day: str) -> bool:
    """Whether ``day``'s late marker is there (False where it cannot be looked at)."""
    try:
        return lstat_or_none(late_marker_file(home, day)) is not None
    except OSError:
        return False


def late_days(home: DataHome) -> list[str]:
    """The raw days marked by an export's :func:`late_rows` check and not re-exported since, in order."""
    try:
        names = os.listdir(home.cache / LATE_MARKERS)
    except OSError:
        return []
    return sorted(name[3:] for name in names if re.fullmatch(r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}", name))


def verified_days(home: DataHome, day: str, config: AppExportConfig) -> list[str]:
    """The raw days :func:`late_rows` compares with the database for ``day``'s export: those of the
    VERIFY_DAYS days before its lookback window that the raw zone holds, in order."""
    end = shift_day(dt.date.fromisoformat(day), -config.lookback_days)      # held to the calendar's first day
    start = shift_day(end, -VERIFY_DAYS)
    return [d for d in home.raw_days() if start.isoformat() <= d < end.isoformat()]


def raw_counts(home: DataHome, days: list[str]) -> dict[str, dict[str, RawTableCounts] | None]:
    """day -> :func:`raw_day_state` of each of ``days`` (None: a raw file that cannot be read; the ingest
    reports it). The export reads them before it connects, so decompressing up to VERIFY_DAYS days of raw
    files never happens inside its transaction, with the app tables locked."""
    out: dict[str, dict[str, RawTableCounts] | None] = {}
    for checked_day in days:
        try:
            out[checked_day] = raw_day_state(home, checked_day)
        except (OSError, EOFError, zlib.error):
            out[checked_day] = None
    return out


@dataclass
class _IdSpill:
    """The database's ids of one raw day's table, spilled by :class:`LateCheck` for an exact comparison."""

    day: str
    table: str
    database: tuple[int, int | None, int]      # rows, largest id, digest
    raw: RawTableCounts
    counted: list[int] | None                  # the raw file's key when it was counted
    content: int = 0                           # the database's content digest of the rows (review rev35a)
    parts: dict | None = None                  # a users snapshot's by creation day (review rev35e: _parts)
    offset: int = 0
    ids: int = 0
    nulls: int = 0


ID_FETCH = 65536     # ids a fetch of day_ids.sql reads (512 KiB)


@dataclass
class LateCheck:
    """:func:`late_rows` in two steps: :func:`start_late_check` reads the database in the export's snapshot
    (spilling the ids of the days an exact comparison must settle into ``spill``, 8 bytes an id), and
    :meth:`finish`, called after the export's session ended, compares them with the raw files, marks the late
    days and returns them."""

    found: dict[str, dict]
    checked_days: list[str]
    spills: list[_IdSpill]
    spill: object | None = None
    users_snapshot: bool = True
    moved: dict[str, dict[str, list]] = field(default_factory=dict)   # table -> new day -> [rows, first ids]
    notes: list[str] = field(default_factory=list)                   # markers not set or cleared (mark_late)
    whole: list[str] = field(default_factory=list)   # checked days found whole: their markers go (clear_whole)
    # review rev35a: (day, table, file key, (rows, digest, content)) whose values the raw file is found to hold
    baselines: list[tuple[str, str, list[int], tuple]] = field(default_factory=list)
    # review rev35a: table -> {id: day} of rows moved to a day before the raw zone's first (remember_moved)
    outside: dict[str, dict[int, str]] = field(default_factory=lambda: Outside())
    # fix37d: the days no export can export yet (not closed by its clock): their moved rows are remembered too
    still_open: Callable[[str], bool] | None = None
    # fix38f: the newest day closed by the export's clock, where ScheduledDays' gap horizon starts if later than the
    # raw zone's last day ('': none given, as late_rows)
    newest: str = ""
    # review rev35e: (first day, day_counts.sql rows by (table, day)) of a check asked to reach the export's day
    counted: tuple[str, dict] | None = None

    def finish(self, home: DataHome, conn: psycopg.Connection | None = None) -> dict[str, dict]:
        """Compare the spilled ids with the raw files; with ``conn`` (the export's connection, its snapshot
        ended), the ids a raw file holds that its day's rows lack are looked up (:func:`held_ids`, a transaction
        of their own): a row the app holds on another day, undated, or left out by app_export.users_snapshot
        (review rev29d: a ``created_at`` corrected left the row in its old raw day for good, "a deletion alone")
        makes the day late too (``left``, ``left_ids``), so its re-export takes the row out. Review rev29h: the day
        such a row is dated to now is marked too (:func:`moved_rows`, ``moved``), so the schedule's re-exports put
        it there (a day the raw zone lacks is named with the build that exports it): the old day's re-export took
        it out and no raw day held it.

        Review rev35a: what it learnt is written only once every look-up ran and every day it marks is marked: a
        day found whole is remembered as checked (``_record_checked``) and its content baseline recorded
        (:func:`record_content`) last, and only where every marker was set and every row moved before the raw
        zone's first day remembered (:func:`remember_moved`). Before, a connection dropped in a later look-up
        failed the export after a day was recorded "whole" and before the day its moved row went to was marked:
        every later night called the day whole and the row reached no raw day."""
        found = self.found
        # fix36g: as the schedule exports them; fix38f: its gap horizon by the export's clock
        scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts, self.newest)
        checked: list[tuple[str, str, list[int], tuple[int, int]]] = []
        try:
            for spill in self.spills:
                missing, first, extra = self._missing(home, spill)
                held = held_ids(conn, spill.table, extra) if extra and conn is not None else HeldRows()
                del extra
                # the rows that left the day: those the app holds elsewhere that are the raw file's rows (review
                # rev30b: a row that took an id again is another row, which the day keeps)
                left = held.same_rows(home.raw_file(spill.day, spill.table), spill.table,
                                      exact_identities(conn), late_reading(home)) if held else held
                # review rev31e: the day each row under those ids is dated to now is marked whatever its identity
                # (a row moved and given another user is "another row" too): the identity decides only whether
                # the old day keeps the line, never whether the new day gets the app's row
                if held:
                    moved_rows(home, spill.table, held, spill.day, self.users_snapshot, scheduled, self.moved,
                               self.outside, self.still_open)
                if missing or left:
                    info = {"database": [spill.database[0], spill.database[1]], "raw": [spill.raw.rows, spill.raw.top],
                            "missing": missing, "first_ids": first}
                    if left:
                        info.update(left=len(left), left_ids=[str(key) for key in left.ids[:FIRST_IDS]])
                    found.setdefault(spill.day, {})[spill.table] = info
                elif missing == 0 and spill.counted is not None:
                    checked.append((spill.day, spill.table, spill.counted, (spill.database[0], spill.database[2])))
                    self.baselines.append((spill.day, spill.table, spill.counted,
                                           (spill.database[0], spill.database[2], spill.content, spill.parts)))
        finally:
            if self.spill is not None:
                self.spill.close()
        marked: list[str] = []
        for checked_day in self.checked_days:
            if checked_day in found:
                self.notes += filter(None, [mark_late(home, checked_day, True)])
                marked.append(checked_day)
            else:
                self.whole.append(checked_day)
        for new_day in moved_days(scheduled, self.moved):
            if new_day not in self.checked_days:      # a checked day lacking the row is late itself
                self.notes += filter(None, [mark_late(home, new_day, True)])
                marked.append(new_day)
        line = remember_moved(home, self.outside) if self.outside else ""
        if line:
            self.notes.append(line)
        # review rev35a: a verdict is remembered only once what it depends on is (a marker not set, a moved row not
        # remembered: the next night compares the day again and retries)
        if not line and all(_marker_set(home, d) for d in marked):
            for checked_day, table, counted, state in checked:
                _record_checked(home, checked_day, table, counted, state)
            per_day: dict[str, dict] = {}
            for checked_day, table, key, base in self.baselines:
                if checked_day not in found:
                    per_day.setdefault(checked_day, {})[table] = (key, base)
            for checked_day, entries in sorted(per_day.items()):
                self.notes += filter(None, [record_content(home, checked_day, entries)])
        return {d: found[d] for d in sorted(found)}

    def clear_whole(self, home: DataHome, ticket: int) -> list[str]:
        """Clear the markers of the checked days :meth:`finish` found whole, those set before the snapshot of
        ``ticket`` (:func:`mark_late`); the warnings of those that could not be cleared. Review rev31h: called by
        the export once it published its day (a superseded export clears no marker), never by :meth:`finish`,
        which ran before the export knew whether its snapshot is the day's newest."""
        return [line for line in (mark_late(home, whole_day, False, ticket) for whole_day in self.whole) if line]

    def _missing(self, home: DataHome, spill: _IdSpill) -> tuple[int | None, list[str], array.array]:
        """How many of the spilled ids the raw file lacks, the first FIRST_IDS of them (None: the raw file
        cannot be read; the ingest reports it), and the ids the raw file holds that the spilled ones lack, once
        each, ascending (both sorted: one walk; an int64 array, 8 bytes an id: review rev29h)."""
        try:
            index = _KeyIndex(home.raw_file(spill.day, spill.table), cut_ok=True, name=EXPORT_KEYS[spill.table],
                              reading=late_reading(home))  # the rows the ingest reads there, the export's cut lines too
        except (OSError, EOFError, zlib.error):
            return None, [], array.array("q")
        count, first, extra = 0, [], array.array("q")
        keys, at, previous = index.keys, 0, None
        self.spill.seek(spill.offset)
        left = spill.ids
        while left:
            chunk = array.array("q")
            chunk.frombytes(self.spill.read(8 * min(left, ID_FETCH)))
            left -= len(chunk)
            for key in chunk:             # ascending (day_ids.sql)
                while at < len(keys) and keys[at] < key:
                    if keys[at] != previous and (not extra or extra[-1] != keys[at]):
                        extra.append(keys[at])
                    at += 1
                if not (at < len(keys) and keys[at] == key):
                    count += 1
                    if len(first) < FIRST_IDS:
                        first.append(str(key))
                previous = key
            if not chunk:
                break
        for key in keys[at:]:
            if key != previous and (not extra or extra[-1] != key):
                extra.append(key)
        lacking_nulls = max(0, spill.nulls - index.unkeyed)
        count += lacking_nulls
        first += ["NULL"] * min(lacking_nulls, FIRST_IDS - len(first))
        return count, first, extra


def start_late_check(conn: psycopg.Connection, home: DataHome, day: str, config: AppExportConfig,
                     raw_before: dict[str, dict | None] | None = None, spill_dir: Path | None = None,
                     through: str | None = None) -> LateCheck:
    """The database half of :func:`late_rows` (see there), in the connection's snapshot. ``through``: the query
    reaches that day's end too (the export's day: :func:`day_content` reads it from ``counted``, review rev35e)."""
    if raw_before is None:
        raw_before = raw_counts(home, verified_days(home, day, config))
    checked = sorted(raw_before)
    if not checked:
        return LateCheck({}, [], [], users_snapshot=config.users_snapshot)
    first, after = day_bounds(checked[0])[0], day_bounds(max(checked[-1], through or checked[-1]))[1]
    per_day: dict[tuple[str, str | None], tuple[int, int | None, int, int]] = {}
    for table, on, rows, top, digest, content in conn.execute(
            statement("day_counts"), {"start": first.isoformat(sep=" "), "end": after.isoformat(sep=" ")}):
        per_day[(as_text(table), as_text(on))] = (int(rows), top, int(digest or 0) % DIGEST_MOD,
                                                  int(content or 0) % DIGEST_MOD)
    nothing = (0, None, 0, 0)
    found: dict[str, dict] = {}
    spills: list[_IdSpill] = []
    baselines: list[tuple[str, str, list[int], tuple]] = []
    for checked_day in checked:
        database = {table: per_day.get((table, checked_day), nothing) for table in RAW_TABLES}
        parts = None
        if config.users_snapshot:   # every dated account up to the day's end
            own = {d: per_day.get(("users", d), nothing) for d in _days(first, checked_day)}
            database["users"] = _cumulative([per_day.get(("users", None), nothing)] + list(own.values()))
            # review rev35e: and by creation day, so an erasure of another day's account hides no edit
            before = per_day.get(("users", None), nothing)
            parts = _parts(first.date().isoformat(), (before[0], before[2], before[3]),
                           {d: (v[0], v[2], v[3]) for d, v in own.items()})
        raw = raw_before[checked_day]
        if raw is None:
            continue                  # an unreadable raw file: the ingest reports it; nothing to compare
        for table, counts in raw.items():
            rows, top, digest, content = database[table]
            now_parts = parts if table == "users" else None
            verdict = _compare((rows, top, digest), counts)
            key = _file_key(home.raw_file(checked_day, table))
            if verdict == "late":
                found.setdefault(checked_day, {})[table] = {"database": [rows, top], "raw": [counts.rows, counts.top]}
            elif counts.content is not None and counts.content[:2] == (rows, digest):
                # review rev35a: the rows the file was last known to hold the values of, by their ids: another
                # content digest is an edit (a choice changed, a prompt cleaned, an email corrected), re-exported
                if counts.content[2] != content:
                    found.setdefault(checked_day, {})[table] = {"database": [rows, top],
                                                                "raw": [counts.rows, counts.top], "edited": True}
                elif now_parts is not None and counts.parts is None and key is not None:
                    # review rev35e: a users snapshot's baseline of before, without its parts: given them
                    baselines.append((checked_day, table, key, (rows, digest, content, now_parts)))
            elif counts.content is not None and _edited_parts(counts.parts, now_parts):
                # review rev35e: other ids (an account erased, or added, on some day), and a creation day whose
                # accounts have the recorded ids and other values: an edit, re-exported (with the ids' verdict)
                found.setdefault(checked_day, {})[table] = {"database": [rows, top],
                                                            "raw": [counts.rows, counts.top], "edited": True}
                if verdict == "check":     # rows the file lacks are named late all the same (finish replaces it)
                    spills.append(_IdSpill(checked_day, table, (rows, top, digest), counts, key, content, now_parts))
            elif verdict == "check":
                spills.append(_IdSpill(checked_day, table, (rows, top, digest), counts, key, content, now_parts))
            elif key is not None:
                # whole by its ids, with no baseline of these rows (a day exported before review rev35a, or ids
                # restored since): their values now are the baseline the next nights compare with
                baselines.append((checked_day, table, key, (rows, digest, content, now_parts)))
    check = LateCheck(found, [d for d in checked if raw_before[d] is not None], spills,
                      users_snapshot=config.users_snapshot, baselines=baselines,
                      counted=(first.date().isoformat(), per_day) if through is not None else None)
    if spills:
        check.spill = tempfile.TemporaryFile(dir=spill_dir)
        for spill in spills:
            start, end = day_bounds(spill.day)
            if spill.table == "users" and config.users_snapshot:
                start = dt.datetime.combine(dt.date.fromisoformat(FIRST_DATED), dt.time())
            spill.offset = check.spill.tell()
            for batch in read_rows(conn, statement("day_ids"), {"table": spill.table, "start": start.isoformat(sep=" "),
                                                                "end": end.isoformat(sep=" ")}, ID_FETCH):
                ids = array.array("q", (key for (key,) in batch if key is not None))
                spill.nulls += len(batch) - len(ids)
                spill.ids += len(ids)
                ids.tofile(check.spill)
    return check


def late_rows(conn: psycopg.Connection, home: DataHome, day: str, config: AppExportConfig,
              raw_before: dict[str, dict | None] | None = None) -> dict[str, dict]:
    """Days already in the raw zone whose files lack rows the database now holds: committed after the day's
    last export, when the nightly lookback no longer re-exports it (an offline client syncing, a stuck
    queue, a transaction left open). Checks the VERIFY_DAYS days before ``day``'s lookback window, per
    table by rows, largest id and a digest of the ids (one grouped query of the export's snapshot over
    those days, ``day_counts.sql``; the raw files' counts come from a cache, see :func:`raw_day_state`,
    read by the export before it connects: ``raw_before``, from :func:`raw_counts`). More rows or a larger
    id in the database: late. The same digest: whole. Another digest (review rev29c: a late row and a
    deletion on the same day kept rows and largest id alike): the day's ids are read from the snapshot
    (``day_ids.sql``, spilled to a file) and compared with the raw file's id by id, after the session ended;
    a day whose file holds them all (rows deleted since, none added) is remembered as checked for that
    database state, so a deletion costs one comparison, not one a night. Returns day -> table ->
    {"database": [rows, max_id], "raw": [rows, max_id]} (with "missing" and "first_ids" where compared id by
    id); marks each late day for the schedule to re-export and clears the mark of a day found whole. Rows
    the raw zone holds and the database no longer does (deleted since) are not reported: the raw zone keeps
    what was exported. Raw counts read before the snapshot can only be older than it: a day re-exported in
    between is at worst reported (and re-exported) once more.

    Review rev35a: a table whose ids are those of its content record (:func:`record_content`: the database's rows
    whose values the file holds) and whose content digest (``day_counts.sql``) differs has rows edited since
    (``"edited": True`` in its entry; marked and re-exported like a late day); a table found whole by its ids with
    no such record gets one (its values now)."""
    # review rev31h: a ticket drawn before the snapshot (none for a transaction already open: it clears nothing)
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if idle:
        with tickets_lock(home):
            ticket = draw_ticket(home)[0]
    else:
        ticket = 0
    check = start_late_check(conn, home, day, config, raw_before)
    conn.rollback()
    found = check.finish(home, conn)
    check.notes += check.clear_whole(home, ticket)
    return found


def _compare(database: tuple[int, int | None, int], raw: RawTableCounts) -> str:
    """'late' (the database holds more rows or a larger id than the raw file), 'whole' (the same ids, or a
    state an exact comparison found the file to hold), or 'check' (other ids: compare id by id)."""
    rows, top, digest = database
    if rows > raw.rows or _above(top, raw.top):
        return "late"
    if digest == raw.digest and rows <= raw.rows:
        return "whole"
    if raw.checked == (rows, digest):
        return "whole"
    return "check"


def _days(first: dt.datetime, last: str) -> list[str]:
    """Every day from ``first`` to ``last`` (YYYY-MM-DD), both included."""
    out, day = [], first.date()
    while day.isoformat() <= last:
        out.append(day.isoformat())
        day += dt.timedelta(days=1)
    return out


def _cumulative(parts: list[tuple[int, int | None, int, int]]) -> tuple[int, int | None, int, int]:
    """Summed rows, largest id, summed digest and summed content digest of ``parts``."""
    tops = [part[1] for part in parts if part[1] is not None]
    return (sum(part[0] for part in parts), max(tops) if tops else None,
            sum(part[2] for part in parts) % DIGEST_MOD, sum(part[3] for part in parts) % DIGEST_MOD)


def _above(database: int | None, raw: int | None) -> bool:
    """Whether the database's largest id is one the raw file's does not reach."""
    return database is not None and (raw is None or database > raw)


def _is_late(info: dict) -> bool:
    """Whether a :func:`late_rows` entry names rows the raw file lacks (not only rows that left its day, nor rows
    edited since: ``edited``, review rev35a)."""
    return not info.get("edited") and ("missing" not in info or bool(info["missing"]))


def edited_warning(late: dict[str, dict], lookback_days: int) -> str:
    """Review rev35a: a line naming the days whose rows were edited in the app since the day was last exported
    ('' when none)."""
    parts = [f"{day}: " + ", ".join(table for table, info in tables.items() if info.get("edited"))
             for day, tables in sorted(late.items()) if any(info.get("edited") for info in tables.values())]
    if not parts:
        return ""
    days = [part.split(":", 1)[0] for part in parts]
    return (f"app rows edited since their day was last exported, past app_export.lookback_days ({lookback_days}) "
            f"(the same rows, other values: a choice changed, a prompt cleaned, an email corrected): "
            f"{'; '.join(parts)} -- the next scheduled export re-exports {'that day' if len(days) == 1 else 'those days'}"
            f" (or now: pickapic build --from-app-db --from {days[0]} --to {days[-1]})")


def late_warning(late: dict[str, dict], lookback_days: int) -> str:
    """A line naming the days whose raw files lack rows the database holds ('' when none does)."""
    late = {day: {table: info for table, info in tables.items() if _is_late(info)} for day, tables in late.items()}
    late = {day: tables for day, tables in late.items() if tables}
    if not late:
        return ""
    parts = []
    for day, tables in sorted(late.items()):
        parts.append(f"{day}: " + ", ".join(
            f"{table} {info['database'][0]} rows (max id {_id_text(info['database'][1])}) in the database, "
            f"{info['raw'][0]} (max id {_id_text(info['raw'][1])}) in the raw zone"
            + (f", {info['missing']} of its ids not there (ids {', '.join(info['first_ids'])}"
               f"{', ...' if info['missing'] > len(info['first_ids']) else ''})" if info.get("missing") else "")
            for table, info in tables.items()))
    days = sorted(late)
    return (f"app rows committed after their day was last exported, past app_export.lookback_days ({lookback_days}), "
            f"are in no raw day yet: {'; '.join(parts)} -- the next scheduled export re-exports "
            f"{'that day' if len(days) == 1 else 'those days'} (or now: pickapic build --from-app-db --from "
            f"{days[0]} --to {days[-1]})")


def left_warning(late: dict[str, dict], lookback_days: int) -> str:
    """A line naming the days whose raw files hold rows the app holds outside that day now ('' when none)."""
    parts, days = [], []
    for day, tables in sorted(late.items()):
        named = [f"{table} {info['left']} (ids {', '.join(info['left_ids'])}"
                 f"{', ...' if info['left'] > len(info['left_ids']) else ''})"
                 for table, info in tables.items() if info.get("left")]
        if named:
            parts.append(f"{day}: " + ", ".join(named))
            days.append(day)
    if not parts:
        return ""
    return (f"app rows that left their day since it was last exported, past app_export.lookback_days "
            f"({lookback_days}), are still in its raw files though the app holds them on another day, undated, or "
            f"left out by app_export.users_snapshot (a created_at corrected): {'; '.join(parts)} -- the next "
            f"scheduled export re-exports {'that day' if len(days) == 1 else 'those days'}, which takes them out "
            f"(or now: pickapic build --from-app-db --from {days[0]} --to {days[-1]})")


def _file_holds(path: Path, name: str, ids: array.array, reading: KeyReading | None = None) -> bool:
    """Whether raw table file ``path`` holds a line keyed by each of ``ids`` (ascending int64; streamed, 1 byte
    an id besides them; keyed by the late-row check's reading, ``reading``, :func:`late_reading`: as the ingest keys
    a line, the export's own cut line holding its row); a file that cannot be read holds none."""
    seen, left = bytearray(len(ids)), len(ids)
    try:
        for key in _line_keys(path, cut_ok=True, name=name, reading=reading or KeyReading()):
            if type(key) is int and -(1 << 63) <= key < (1 << 63):
                at = bisect.bisect_left(ids, key)
                if at < len(ids) and ids[at] == key and not seen[at]:
                    seen[at], left = 1, left - 1
                    if not left:
                        return True
    except (OSError, EOFError, zlib.error):
        return False
    return not left


def moved_rows(home: DataHome, table: str, held: HeldRows, from_day: str, users_snapshot: bool,
               scheduled: ScheduledDays, into: dict[str, dict[str, list]],
               outside: dict[str, dict[int, str]] | None = None,
               still_open: Callable[[str], bool] | None = None) -> None:
    """Add to ``into`` (table -> day -> [rows, first ids]) the days the rows of ``held`` (rows of raw day
    ``from_day`` that its re-export does not hold) are dated to now: their new day, which must hold them once
    the old day's re-export takes them out (review rev29h: a row moved to a day past the late-row check's window
    was in no raw day). Undated rows are the undated warning's (:func:`watch_undated`); an account left out of
    an older users file by ``users_snapshot = false`` is no move where the raw zone holds its own day (that
    day's file holds the accounts created on it, in either mode).

    Review rev35a: ``outside`` gets table -> {id: day} of the rows dated to a day before the raw zone's first
    (REMEMBER_UNDATED a table at most), which no schedule exports: :func:`remember_moved` keeps them, and each
    export names them until a raw day holds them (they were named on one night only). Fix36g: and a day no
    schedule exports at all (:meth:`ScheduledDays.before`: between a stray first raw day and the history too).
    Fix37d (review rev37d): and a day after the raw zone's last that the export cannot export yet (``still_open``:
    not closed by its clock, a created_at typo into a later year), which no export takes the row into before that
    day closes: remembered, so a move back to an earlier day is seen. At most REMEMBER_UNDATED ids a table, one of
    each day first; the rows past that are listed in ``outside.waiting`` (:class:`Outside`: int64 arrays, written
    to MOVED_WAITING by :func:`remember_moved`; fix38b: those moved before the raw zone's first day too, which were
    counted only and held the day back)."""
    held_days = scheduled.held
    counted = {on: info for on, info in held.by_day().items()
               if on != from_day and not (table == "users" and not users_snapshot and on < from_day
                                          and on in held_days)}
    # a raw day that holds them already (exported after the move) needs no re-export
    wanted = {held.names.index(on): array.array("q") for on in counted if on in held_days}
    if wanted:
        for key, code in zip(held.ids, held.days):
            if code in wanted:
                wanted[code].append(key)
        for code, ids in wanted.items():
            if _file_holds(home.raw_file(held.names[code], table), EXPORT_KEYS[table], ids, late_reading(home)):
                del counted[held.names[code]]
    for on, (count, first) in counted.items():
        entry = into.setdefault(table, {}).setdefault(on, [0, []])
        entry[0] += count
        entry[1] = (entry[1] + first)[:FIRST_IDS]
    before = {held.names.index(on) for on in counted
              if scheduled.before(on) or (still_open is not None and on not in scheduled and still_open(on))}
    if outside is not None and before:
        ids = outside.setdefault(table, {})
        # fix37d: the first row of each such day first (the days are what the nights name), then the others up to
        # REMEMBER_UNDATED. Bounded: at most REMEMBER_UNDATED ids a table here, whatever the number of rows moved.
        firsts: set[int] = set()
        for key, code in zip(held.ids, held.days):
            if code in before and code not in firsts:
                firsts.add(code)
                if len(ids) < REMEMBER_UNDATED:
                    ids.setdefault(key, held.names[code])
        # fix37h (review rev37h): a row past that moved to a day not closed yet waits in MOVED_WAITING (an int64
        # array here, written by remember_moved); fix38b: so does one moved before the raw zone's first day (it
        # was counted only, and the day it left held back until a ranged build exported its new day)
        waiting = outside.waiting.setdefault(table, {}) if isinstance(outside, Outside) else None
        for key, code in zip(held.ids, held.days):
            if code in before and key not in ids:
                if len(ids) < REMEMBER_UNDATED:
                    ids[key] = held.names[code]
                elif waiting is not None:
                    waiting.setdefault(held.names[code], array.array("q")).append(key)


def moved_days(scheduled: ScheduledDays, moved: dict[str, dict[str, list]]) -> list[str]:
    """The days of :func:`moved_rows` the schedule re-exports once marked (:class:`ScheduledDays`: the raw
    days, and the days after the first real one that the catch-up exports); a later day is the nightly
    export's own, an earlier one (or one after a stray first day) is remembered, never marked."""
    return sorted({on for per in moved.values() for on in per if on in scheduled})


def moved_warning(scheduled: ScheduledDays, moved: dict[str, dict[str, list]],
                  still_open: Callable[[str], bool] | None = None) -> str:
    """A line naming the rows that left a raw day for another day, and what puts them there ('' when none).
    Fix37d (review rev37d): a later day the export cannot export yet (``still_open``: not closed by its clock) is
    named too: no raw day holds its rows until it closes (a created_at typo into a later year)."""
    marked = moved_days(scheduled, moved)
    raw_days, held = scheduled.days, scheduled.held
    lacking = sorted({on for per in moved.values() for on in per if on not in held
                      and (not raw_days or on <= raw_days[-1])})
    waiting = sorted({on for per in moved.values() for on in per if on not in held and on not in lacking
                      and still_open is not None and still_open(on)})
    if not marked and not lacking and not waiting:
        return ""
    named = set(marked) | set(lacking) | set(waiting)
    parts = []
    for table, per in moved.items():
        shown = sorted((on, info) for on, info in per.items() if on in named)
        if shown:
            parts.append(f"{table}: " + ", ".join(f"{info[0]} on {on} (ids {', '.join(info[1])}"
                                                  f"{', ...' if info[0] > len(info[1]) else ''})"
                                                  for on, info in shown[:FIRST_IDS])
                         + (", ..." if len(shown) > FIRST_IDS else ""))
    line = (f"app rows under the ids of a raw day's rows (moved since, or an id the app gave another row) are dated "
            f"to another day now, whose raw files must hold them: "
            f"{'; '.join(parts)}")
    ready = [on for on in marked if on in held]
    if ready:
        line += (f" -- the next scheduled export re-exports {', '.join(ready[:FIRST_IDS])}"
                 f"{', ...' if len(ready) > FIRST_IDS else ''} (or now: pickapic build --from-app-db --from "
                 f"{ready[0]} --to {ready[-1]})")
    if lacking:
        line += (f"; the raw zone lacks {', '.join(lacking[:FIRST_IDS])}{', ...' if len(lacking) > FIRST_IDS else ''}"
                 f", where they are in no raw day until it is exported: pickapic build --from-app-db --from "
                 f"{lacking[0]} --to {lacking[-1]}")
    if waiting:
        line += (f"; {', '.join(waiting[:FIRST_IDS])}{', ...' if len(waiting) > FIRST_IDS else ''} "
                 f"{'is' if len(waiting) == 1 else 'are'} not closed yet by the export's clock (a created_at typo "
                 f"into a later date?): the rows are in no raw day until the nightly export exports "
                 f"{'that day' if len(waiting) == 1 else 'those days'} (remembered in HOME/cache/{UNDATED_STATE} "
                 f"or HOME/cache/{MOVED_WAITING} meanwhile, and named again if dated back to an earlier day) -- correct their created_at in the "
                 f"app database if it is wrong")
    return line


def late_warnings(late: dict[str, dict], lookback_days: int) -> list[str]:
    """:func:`late_warning`, :func:`left_warning` and :func:`edited_warning`, those that say something."""
    return [line for line in (late_warning(late, lookback_days), left_warning(late, lookback_days),
                              edited_warning(late, lookback_days)) if line]


def app_days(dsn: str, source: str = "the DSN") -> AppDays:
    """Every day with a row in the app tables (in order), and the undated rows (see :func:`undated_rows`)."""
    name = server_name(dsn, source)
    conn = connect(dsn, source=source)
    try:
        state = _standby_state(conn, None)
        check_tables(conn, str(name))
        days = [as_text(day) for (day,) in conn.execute(statement("export_days")).fetchall()]
        undated = undated_rows(conn)
    except psycopg.Error as exc:
        raise database_error(exc, dsn, name, "reading the app's days") from None
    finally:
        conn.close()
    return AppDays(days, undated, bool(state.standby or state.subscriptions))


__all__ = ["AppExportConfig", "AppExportReport", "AppDatabaseError", "ExportTooEarly", "ReplicaBehind", "RowsWouldVanish",
           "export_day",
           "app_days", "check_lag", "is_closed", "format_row"]
