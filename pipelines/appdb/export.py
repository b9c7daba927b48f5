"""One day of the app database -> ``raw/app_logs/dt=DAY/{users,images,rankings,downloads}.jsonl.gz``.

Each table is streamed from a server-side cursor (``sql/app_db/export_*.sql``, fetched in batches of
binary rows) in one REPEATABLE READ READ ONLY transaction, formatted row by row with ``formats.rawlines`` (the
functions the simulator writes with) and gzip-compressed into a staging folder beside the day, so
memory does not grow with the day. Text the JSON layer cannot carry (bytes that are not UTF-8, which a
``SQL_ASCII`` database can hold) is written as the same raw bytes, so the ingest quarantines that line
as ``invalid_utf8``; NUL and other control characters are JSON escapes (``\\u0000``) that the ingest
quarantines as ``control_characters`` in a prompt. Nothing is changed silently.

Publishing: a new day's staging folder is renamed into place in one step; for a day already there, a
file whose bytes are unchanged is left alone (same inode and mtime, so the raw-partition sensor sees no
change) and each changed file is renamed over its old version, only once all four are complete.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import psycopg

from formats import rawlines
from formats.files import sha256_file
from formats.home import DataHome
from formats.progress import Progress, silent
from formats.settings import check_fields, knob
from pipelines.appdb.connection import (
    AppDatabaseError,
    ServerName,
    as_text,
    connect,
    database_error,
    read_rows,
    server_name,
)
from pipelines.appdb.tables import check_tables, statement
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
    published: str = ""                      # "new day", "updated", "unchanged"
    blobs: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def changed_tables(self) -> list[str]:
        return [t for t, e in self.tables.items() if e.changed]

    def metadata(self) -> dict:
        """JSON-able values and a markdown table for the orchestrator (no password: the server has none)."""
        rows = "\n".join(f"| {t} | {e.rows} | {e.bytes} | {'yes' if e.changed else 'no'} | `{e.sha256[:16]}` |"
                         for t, e in self.tables.items())
        return {
            "day": self.day, "published": self.published, "changed_tables": ", ".join(self.changed_tables) or "none",
            "rows": sum(e.rows for e in self.tables.values()),
            **{f"rows_{t}": e.rows for t, e in self.tables.items()},
            **{f"server_{k}": v for k, v in self.server.items()},
            **{f"blobs_{k}": v for k, v in self.blobs.items()},
            "seconds": round(self.seconds, 3),
            "files": "| table | rows | bytes | changed | sha256 |\n|---|---:|---:|---|---|\n" + rows,
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
    ready = day_bounds(day)[1] + dt.timedelta(minutes=lag_minutes)
    if now < ready:
        raise ExportTooEarly(f"day {day} is still open for late commits until {ready:%Y-%m-%d %H:%M} UTC "
                             f"(lag_minutes = {lag_minutes}); export it after that or lower lag_minutes")


def closed_days(first: str, last: str, lag_minutes: int, now: dt.datetime | None = None) -> list[str]:
    """Every day in [first, last] that has been closed for ``lag_minutes``."""
    days = []
    day = dt.date.fromisoformat(first)
    while day <= dt.date.fromisoformat(last):
        try:
            check_lag(day.isoformat(), lag_minutes, now)
        except ExportTooEarly:
            break
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    return days


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


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


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


def _write_table(conn: psycopg.Connection, table: str, params: dict, path: Path) -> TableExport:
    """Stream one table into a gzip file; returns rows, bytes and sha256 of the file."""
    rows = 0
    with open(path, "wb") as raw, rawlines.gzip_writer(raw) as gz:
        writer = _CompressingWriter(gz)
        try:
            for batch in read_rows(conn, statement("export_" + table), params):
                rows += len(batch)
                writer.write(b"\n".join([format_row(table, row) for row in batch]) + b"\n")
        finally:
            writer.close()
        gz.close()
        raw.flush()
        os.fsync(raw.fileno())
    return TableExport(rows=rows, bytes=path.stat().st_size, sha256=sha256_file(path))


def _publish(home: DataHome, day: str, staging: Path, report: AppExportReport) -> None:
    """Move the staged files into ``raw/app_logs/dt=DAY/``: the folder at once, or only the changed files."""
    final = home.raw_day(day)
    if not final.exists():
        for export in report.tables.values():
            export.changed = True
        os.rename(staging, final)
        report.published = "new day"
        return
    if final.is_symlink() or not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder: refusing to replace it")
    moves = []
    for table, export in report.tables.items():
        target = home.raw_file(day, table)
        same = target.is_file() and not target.is_symlink() and target.stat().st_size == export.bytes \
            and sha256_file(target) == export.sha256
        export.changed = not same
        if export.changed:
            moves.append((staging / target.name, target))
    for source, target in moves:  # every file is complete before the first rename
        os.replace(source, target)
    report.published = "updated" if moves else "unchanged"


def export_day(home: DataHome, dsn: str, day: str, config: AppExportConfig | None = None, *,
               image_store: str = "", source: str = "the DSN", now: dt.datetime | None = None,
               progress: Progress = silent) -> AppExportReport:
    """Export ``day`` (YYYY-MM-DD, UTC) from the app database into the raw zone; see the module docstring."""
    config = (config or AppExportConfig()).validate()
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from None
    check_lag(day, config.lag_minutes, now)
    started = time.perf_counter()
    name: ServerName = server_name(dsn, source)
    report = AppExportReport(day=day, server=name.as_metadata())
    start, end = day_bounds(day)
    params = {"start": start.isoformat(sep=" "), "end": end.isoformat(sep=" ")}
    conn = connect(dsn, source=source)  # raises before anything is written
    staging = None
    try:
        check_tables(conn, str(name))
        home.raw_logs.mkdir(parents=True, exist_ok=True)
        staging = home.raw_logs / f".dt={day}.export-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o777)  # the umask applies, as to the files inside
        for table in RAW_TABLES:
            table_params = {**params, "start": "-infinity"} if table == "users" and config.users_snapshot \
                else params
            report.tables[table] = _write_table(conn, table, table_params, staging / f"{table}.jsonl.gz")
            progress(f"{table}: {report.tables[table].rows} rows")
        if image_store:
            from pipelines.appdb.blobs import copy_day_blobs

            report.blobs = copy_day_blobs(conn, params, image_store, home, config.blob_workers)
        else:
            report.blobs = {"store": "none configured: no blob copied"}
            progress("no image store configured: no blob copied (the feature stage will reject the images as missing)")
        conn.rollback()  # read-only: nothing to commit
        _publish(home, day, staging, report)
    except psycopg.Error as exc:
        raise database_error(exc, dsn, name, f"exporting day {day}") from None
    finally:
        conn.close()
        if staging is not None and staging.exists():
            shutil.rmtree(staging)
    report.seconds = time.perf_counter() - started
    return report


def app_day_range(dsn: str, source: str = "the DSN") -> tuple[str, str] | None:
    """(first, last) day with any row in the app tables, or None when they are all empty."""
    name = server_name(dsn, source)
    conn = connect(dsn, source=source)
    try:
        check_tables(conn, str(name))
        first, last = (as_text(v) for v in conn.execute(statement("day_bounds")).fetchone())
    except psycopg.Error as exc:
        raise database_error(exc, dsn, name, "reading the app's first and last day") from None
    finally:
        conn.close()
    return None if first is None else (first, last)


__all__ = ["AppExportConfig", "AppExportReport", "AppDatabaseError", "ExportTooEarly", "export_day",
           "app_day_range", "check_lag", "closed_days", "format_row"]
