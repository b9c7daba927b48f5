"""Daily ingest: one day of raw app exports -> validated Parquet tables + quarantine, nothing lost.

``ingest_day(home, day)`` reads ``raw/app_logs/dt=DAY/{users,images,rankings,downloads}.jsonl.gz``
and writes, for that day, ``warehouse/{users,images,rankings,downloads,quarantine,ingest_files}/dt=DAY/
part-0.parquet``. Every input line ends in exactly one place: its table or ``quarantine`` (with the
table, day, file, 1-based line number, reason, detail, the first 64 KiB of the line as lossy UTF-8,
its byte length and sha256). Identical bad lines (same reason, detail, length and sha256) share one
quarantine row: ``line_number`` is the first, ``last_line_number`` the last, ``line_count`` how many
(``pipelines.ingest.quarantine``: rows stream to ``cache/tmp`` in bounded batches, so memory is flat in the
number of bad lines). Outputs are sorted by primary key, so the same raw files and config always give
byte-identical Parquet; all six files are written under temporary names and renamed only once every
one of them is complete, so a crash leaves the previous version readable. Every stored path and
detail names files relative to the data home, never its absolute location. Each ingest also rewrites
``warehouse/raw_zone_problems/data.parquet``: the raw-zone entries that are not days
(``formats.rawzone``: misnamed or linked-out ``dt=`` folders, stray files), skipped, never fatal.

Line rules, checked in this order (the first failing check is the line's reason):

- ``line_too_long``: more bytes than ``max_line_bytes`` (default 1 MiB); never decoded.
- ``invalid_utf8``: the line is not valid UTF-8, or a string holds a lone surrogate escape (``\\ud800``).
- ``malformed_json``: not parseable as JSON (also a blank line, a duplicate key, nesting too deep,
  or an integer with more than 4,300 digits).
- ``invalid_value`` for ``NaN``/``Infinity``/``-Infinity`` tokens (not JSON).
- ``not_an_object``: a JSON array, string, number, boolean or null.
- ``missing_field``: a column of the table is absent, or null where the column is required.
- ``unexpected_field``: a key that is not a column of the table.
- ``wrong_type``: a string/boolean/fractional number where an integer is expected, a non-number
  where a number is expected, a non-string where a string is expected. A float with no fraction
  (``5.0``) is accepted as the integer 5.
- ``invalid_value``: ids (``user_id``, ``image_id``, ``ranking_id``, ``download_id``) outside
  [1, ``max_id`` = 2^53]; ``seed`` outside [0, 2^63-1]; ``gs`` outside [``min_gs``, ``max_gs``] = [0, 50]
  (also a number that overflows to infinity); ``steps`` outside [1, 1000]; ``idx`` outside [0, 999] or
  not below ``num_generated``; ``num_generated`` outside [1, 1000]; ``model_id``/``scheduler_cls``
  empty or longer than ``max_name_chars`` (256).
- ``bad_timestamp``: ``created_at`` not exactly ``YYYY-MM-DD HH:MM:SS`` with an optional 1-6 digit
  fraction (naive UTC, ASCII digits), not a real calendar time, before ``earliest_created_at``
  (2022-01-01), or at/after the end of the partition day plus ``future_tolerance_days`` (2). Rows from
  earlier days (late arrivals) are accepted.
- ``invalid_uid``: an image uid that is not a canonical lowercase UUID (8-4-4-4-12 hex digits); this
  rejects path tricks (``../``, ``/``, ``\\``, NUL), so ``blob_path`` always stays in ``raw/images/``.
- ``prompt_too_long``: ``prompt``/``negative_prompt`` longer than ``max_prompt_chars`` (2000) characters.
- ``control_characters``: a C0/C1 control character (tab and newline included), a bidi embedding,
  override, isolate or mark (U+061C, U+200E/F, U+202A-E, U+2066-9), U+2028/9 or U+FEFF in a prompt,
  ``model_id`` or ``scheduler_cls``.
- ``invalid_ranking``: ``image_2_uid``/``image_3_uid`` not both set or both null, the same image
  shown twice, or ``best_image_uid`` neither ``'none'`` nor one of the shown uids.

Then, per file, on the lines that passed (primary keys: users ``user_id``, images ``image_uid``,
rankings ``ranking_id``, downloads ``download_id``; values compared after typing, so ``5`` and
``5.0`` are the same):

- ``duplicate_row``: an exact repeat of an earlier line's object; the first is kept.
- ``conflicting_primary_key``: one key with two or more different objects; every version of that
  key is quarantined, none is guessed. Keys are unique within one day's file; repeats across days
  are left to the downstream stages, which see every partition.
- ``unknown_image_reference`` (rankings' shown uids, downloads' ``image_uid``): the uid appears as an
  ``"image_uid"`` member in none of the raw images files of this day, any earlier day, or the
  ``late_image_days`` (2) days after it in the raw zone. Only the raw bytes are searched (quarantined
  image lines count as exported), so the answer depends on the raw zone alone, not on what was
  ingested before. A row resolved only by a later day's export is accepted and counted in
  ``ingest_files.accepted_late_image``; the detail names the first unknown image and the window, never
  which later days exist yet. When day D is ingested, each ingested day in [D - late_image_days, D)
  whose ``unknown_image_reference`` rows name an image D's export holds is ingested again
  (``refresh_late_references``, reported in ``IngestReport.refreshed``), so ingesting day by day as
  the days land gives the same bytes as ingesting all of them at once, in any order.

File rules (``ingest_files`` has one row per table and day; file-level quarantine rows have line 0):

- missing file: status ``missing``, one quarantine row ``missing_file``.
- not gzip / truncated / corrupt / not a regular file / a link out of the raw zone: status
  ``unreadable``, one quarantine row ``unreadable_file``; lines decoded before the damage are ingested
  normally, and the text after the last newline counts as a line (usually ``malformed_json``).
- empty file (zero bytes, or a gzip of nothing): status ``empty``, no rows.

Transformations of accepted rows: ``[single_quote]`` -> ``'`` in prompts and negative prompts; each
``[bracketed]`` part of a prompt (after unescaping) moves to ``bracket_negative_prompt`` (parts
stripped, joined with ``", "``, null when there are none) and is replaced by one space, then the
prompt is stripped of surrounding whitespace (downloads get the same prompt cleaning, without the
bracket column); ``created_at`` -> ``timestamp[us]``; rankings get ``num_shown`` (2 or 4),
``best_image_uid = 'none'`` -> null with ``is_tie = true``; images get ``blob_path =
raw/images/<image_uid>.png``; users keep only ``user_id`` and ``created_at`` (email and name never
leave the raw zone); every table gets ``dt``.

Reconciliation: for every table, lines_in = accepted + quarantined (quarantined = the summed
``line_count`` of its line-level rows), stated by ``IngestReport.reconciled`` and checked again from
the written files by the ``ingest_files`` contract.

Speed: each line is decoded with the standard ``json`` scanner and checked by a compiled fast path
(falling back to the reference rules for anything unusual). A day whose raw files total at least
``parallel_min_bytes`` (16 MiB compressed, about 60,000 rankings) is read by ``workers`` (2) forked
processes: each reads every file but validates only the lines whose primary key, as written in the
raw bytes, routes to it (crc32 of the key; a line whose key cannot be read that way goes to worker
0), and the parent merges the parts. If versions of one key still reach two workers, that table is
redone in one process. The reference check reads other days through a per-day index of their raw
images files' uids (``cache/raw_image_uids/dt=DAY.parquet``, written by that day's ingest, trusted
while the raw file has the recorded size and times, else its recorded sha256; otherwise the file is
searched again), so a day's check does not decompress the whole history. None of this changes a
byte of the output.

Command line: ``python -m pipelines.ingest.day --home DIR [--day YYYY-MM-DD ...]`` (default: every raw day);
prints one JSON summary per day and exits 1 if a day does not reconcile.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import pickle
import re
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS, atomic_path, cast_to_schema, sha256_file, write_parquet_atomic
from formats.home import DataHome
from formats.rawzone import RawZoneScan
from formats.settings import add_flags, check_fields, knob, stage_config
from pipelines import faults
from pipelines.ingest import parse as rp
from pipelines.ingest.quarantine import QuarantineSink, SinkLimits, write_quarantine
from schemas import get_schema
from schemas.raw import PRIMARY_KEYS, RAW_TABLES

OUTPUT_DATASETS = ("users", "images", "rankings", "downloads", "quarantine", "ingest_files")
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SINK_LIMITS = SinkLimits()   # memory bounds of each table's quarantine before it spills to disk
_REFERENCE_FIELDS = {"rankings": ("image_0_uid", "image_1_uid", "image_2_uid", "image_3_uid"),
                     "downloads": ("image_uid",)}


@dataclass(frozen=True)
class IngestConfig:
    """Limits of the daily ingest; every field is documented in the module docstring."""

    max_line_bytes: int = knob(1 << 20, "longer lines -> line_too_long (bytes)", min=1)
    max_prompt_chars: int = knob(2000, "longer prompt / negative_prompt -> prompt_too_long (characters)", min=1)
    max_name_chars: int = knob(256, "longest model_id / scheduler_cls (characters)", min=1)
    max_id: int = knob(2**53, "ids above this -> invalid_value (JSON-safe integers)", min=1)
    min_gs: float = knob(0.0, "lowest accepted guidance scale")
    max_gs: float = knob(50.0, "highest accepted guidance scale")
    earliest_created_at: str = knob("2022-01-01 00:00:00", "created_at before this -> bad_timestamp")
    future_tolerance_days: int = knob(2, "created_at at/after the end of the partition day + this many days -> "
                                         "bad_timestamp", min=0, max=3650)
    workers: int = knob(2, "processes for a large day (lines split between them by primary key); output does not "
                           "depend on it", min=1, output=False)
    parallel_min_bytes: int = knob(16 << 20, "compressed raw bytes of a day from which the worker processes are used",
                                   min=1, output=False)
    late_image_days: int = knob(2, "a ranking/download may name an image first exported up to this many days later "
                                   "(0: none)", min=0, max=30)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.min_gs <= self.max_gs:
            raise ValueError(f"IngestConfig.min_gs {self.min_gs!r} must not exceed max_gs {self.max_gs!r}")
        try:
            dt.datetime.fromisoformat(self.earliest_created_at)
        except (TypeError, ValueError):
            raise ValueError(f"IngestConfig.earliest_created_at {self.earliest_created_at!r} is not an ISO timestamp") from None

    def timestamp_range(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """[earliest, end of ``day`` + tolerance) for ``created_at``."""
        end = dt.datetime.combine(day, dt.time()) + dt.timedelta(days=1 + self.future_tolerance_days)
        return dt.datetime.fromisoformat(self.earliest_created_at), end


@dataclass
class TableReport:
    """What happened to one raw file of one day."""

    table: str
    file: str
    status: str = "ok"
    file_sha256: str | None = None
    file_bytes: int = 0
    lines_in: int = 0
    accepted: int = 0
    quarantined: int = 0                       # quarantined lines (identical ones share a row)
    accepted_late_image: int = 0               # accepted rows whose image only a later day's export has
    late_image_days: list[str] = field(default_factory=list)   # later days whose images export was used
    reasons: dict[str, int] = field(default_factory=dict)  # every quarantine row, file-level included
    error: str | None = None

    @property
    def reconciled(self) -> bool:
        return self.lines_in == self.accepted + self.quarantined


@dataclass
class IngestReport:
    """Counts of one ingested day; ``metadata()`` gives JSON-able values for the orchestrator."""

    day: str
    tables: dict[str, TableReport]
    outputs: dict[str, str]
    seconds: float = 0.0
    raw_zone_problems: list[str] = field(default_factory=list)   # one line per skipped raw-zone entry
    quarantine_rows: int = 0          # rows of the quarantine file (identical bad lines share a row)
    refreshed: dict[str, "IngestReport"] = field(default_factory=dict)  # earlier days ingested again

    @property
    def lines_in(self) -> int:
        return sum(t.lines_in for t in self.tables.values())

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.tables.values())

    @property
    def quarantined(self) -> int:
        return sum(t.quarantined for t in self.tables.values())

    @property
    def reconciled(self) -> bool:
        return all(t.reconciled for t in self.tables.values()) and all(r.reconciled for r in self.refreshed.values())

    @property
    def accepted_late_image(self) -> int:
        return sum(t.accepted_late_image for t in self.tables.values())

    @property
    def late_image_days(self) -> list[str]:
        """The later days whose images export this day's output depends on (inputs of the day, too)."""
        return sorted({d for t in self.tables.values() for d in t.late_image_days})

    def quarantine_by_reason(self) -> dict[str, int]:
        """Quarantine rows per reason over all tables (file-level rows included), sorted by reason."""
        total: dict[str, int] = {}
        for report in self.tables.values():
            for reason, count in report.reasons.items():
                total[reason] = total.get(reason, 0) + count
        return dict(sorted(total.items()))

    def reasons_markdown(self) -> str:
        """Markdown table of quarantine rows by table and reason."""
        lines = ["| table | reason | rows |", "|---|---|---:|"]
        for table, report in self.tables.items():
            for reason, count in sorted(report.reasons.items()):
                lines.append(f"| {table} | {reason} | {count} |")
        if len(lines) == 2:
            lines.append("| - | (none) | 0 |")
        return "\n".join(lines)

    def asset_metadata(self, dataset: str) -> dict[str, object]:
        """Metadata for one output dataset: its own counts for a table, the totals for quarantine/ingest_files."""
        if dataset in self.tables:
            report = self.tables[dataset]
            return {
                "day": self.day,
                "dagster/row_count": report.accepted,
                "rows_accepted": report.accepted,
                "rows_quarantined": report.quarantined,
                "accepted_late_image": report.accepted_late_image,
                "lines_in": report.lines_in,
                "reconciled": report.reconciled,
                "file": report.file,
                "file_status": report.status,
                "file_sha256": report.file_sha256,
                "quarantine_by_reason": dict(report.reasons),
                "path": self.outputs.get(dataset),
            }
        meta = self.metadata()
        meta.pop("files", None)
        meta["path"] = self.outputs.get(dataset)
        if dataset == "quarantine":
            meta["dagster/row_count"] = self.quarantine_rows
        elif dataset == "ingest_files":
            meta["dagster/row_count"] = len(self.tables)
        return meta

    def metadata(self) -> dict[str, object]:
        """JSON-able summary: totals, per-table counts, reasons, file statuses, markdown table."""
        return {
            "day": self.day,
            "lines_in": self.lines_in,
            "rows_accepted": self.accepted,
            "rows_quarantined": self.quarantined,
            "file_problems": sum(1 for t in self.tables.values() if t.status in ("missing", "unreadable")),
            "reconciled": self.reconciled,
            "accepted_by_table": {t: r.accepted for t, r in self.tables.items()},
            "accepted_late_image": self.accepted_late_image,
            "late_image_days": self.late_image_days,
            "refreshed_days": {d: {"accepted_late_image": r.accepted_late_image,
                                   "unknown_image_reference": r.quarantine_by_reason().get(rp.UNKNOWN_IMAGE_REFERENCE, 0)}
                               for d, r in sorted(self.refreshed.items())},
            "quarantined_by_table": {t: r.quarantined for t, r in self.tables.items()},
            "quarantine_by_reason": self.quarantine_by_reason(),
            "file_status": {t: r.status for t, r in self.tables.items()},
            "files": {t: asdict(r) for t, r in self.tables.items()},
            "outputs": dict(self.outputs),
            "seconds": round(self.seconds, 3),
            "quarantine_reasons_md": self.reasons_markdown(),
            "raw_zone_problems": list(self.raw_zone_problems),
        }


# ---------------------------------------------------------------------------------------------
class _TableRun:
    """Mutable state of one table while its file is read: kept rows, quarantine sink, pending raws."""

    def __init__(self, home: DataHome, day: str, table: str, spill_dir: Path | None):
        self.table = table
        self.path = home.raw_file(day, table)
        self.report = TableReport(table, self.path.relative_to(home.root).as_posix())
        self.rows: dict[object, tuple[int, tuple]] = {}     # primary key -> (line number, values)
        self.quarantine = QuarantineSink(table, self.report.file, spill_dir, SINK_LIMITS)
        self.pending: dict[int, tuple[str, str]] = {}       # line -> (reason, detail): raw bytes re-read later
        self.seen: set = set()                              # every primary key of a line that parsed
        self.repeats = _RepeatLog(spill_dir, table)         # later lines of a key already in ``rows``
        self.conflicting: set = set()                       # keys with two or more different versions

    def reject(self, number: int, reason: str, detail: str, data: bytes | rp.OverlongLine | None) -> None:
        if data is None:
            self.pending[number] = (reason, detail)
            return
        self.quarantine.add_line(number, reason, detail, data)

    def file_row(self, reason: str, detail: str, length: int, sha: str | None) -> None:
        self.quarantine.add(0, reason, detail, None, length, sha or _EMPTY_SHA256)


class _RepeatLog:
    """Lines whose primary key was already seen, in line order, as (line, key, raw text, length, sha256):
    kept in memory up to a bound, then appended to a spill file in pickled batches; read back in order."""

    max_events = 4096
    max_text_bytes = 8 << 20

    def __init__(self, spill_dir: Path | None, table: str):
        self.spill_dir = spill_dir
        self.table = table
        self.batch: list[tuple] = []
        self.text_bytes = 0
        self.path: Path | None = None
        self.count = 0

    def add(self, number: int, key: object, fields: tuple[str | None, int, str]) -> None:
        text, length, sha = fields
        self.batch.append((number, key, text, length, sha))
        self.count += 1
        self.text_bytes += len(text)
        if len(self.batch) >= self.max_events or self.text_bytes >= self.max_text_bytes:
            self._flush()

    def _flush(self) -> None:
        if self.spill_dir is None:
            raise RuntimeError(f"repeated keys of {self.table} outgrew memory and no spill folder was given")
        if self.path is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(dir=self.spill_dir, prefix=f"{self.table}-repeats-", delete=False)
            handle.close()
            self.path = Path(handle.name)
        with open(self.path, "ab") as out:
            pickle.dump(self.batch, out, protocol=pickle.HIGHEST_PROTOCOL)
        self.batch = []
        self.text_bytes = 0

    def __iter__(self) -> Iterator[tuple]:
        if self.path is not None:
            with open(self.path, "rb") as spilled:   # our own file, written above
                while True:
                    try:
                        yield from pickle.load(spilled)
                    except EOFError:
                        break
        yield from self.batch

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.batch = []


def _open_raw(home: DataHome, path: Path) -> rp.RawFile:
    """A ``RawFile`` whose status is already ``missing``/``unreadable`` when it cannot be read safely
    (a link that leaves the raw zone is never followed)."""
    rel = path.relative_to(home.root).as_posix()
    raw = rp.RawFile(path, name=rel)
    if raw.check():
        try:
            home.resolve_inside(rel, zone="raw")
        except ValueError as exc:
            raw.status, raw.error = "unreadable", str(exc)
    return raw


# A worker of a large day reads every file but validates only the lines routed to it: routed by
# the primary key as written in the raw bytes, so every version of a key normally meets the same
# worker. A line whose key cannot be read this way goes to part 0; if versions of one key still end
# up in two parts, ``ingest_day`` notices (``seen`` keys intersect) and redoes that table in one process.
_ROUTE_RE = {table: re.compile(rb'"' + key.encode() + rb'"[ \t\r]{0,16}:[ \t\r]{0,16}("[0-9a-f-]{1,64}"|[0-9]{1,20})[ \t\r]{0,16}[,}]')
             for table, key in PRIMARY_KEYS.items()}


def _route(data: bytes, pattern: re.Pattern, parts: int) -> int:
    match = pattern.search(data)
    return zlib.crc32(match.group(1)) % parts if match else 0


def _read_table(home: DataHome, day: str, table: str, parser: rp.LineParser, config: IngestConfig,
                uid_sink: set[str] | None = None, part: tuple[int, int] = (0, 1),
                spill_dir: Path | None = None) -> _TableRun:
    """Validate every line of one raw file (of ``part`` = (index, parts): only the lines routed to
    it), then resolve exact duplicates and key conflicts."""
    run = _TableRun(home, day, table, spill_dir)
    index, parts = part
    route = _ROUTE_RE[table]
    report = run.report
    raw = _open_raw(home, run.path)
    if raw.status == "ok":
        chunks = raw.chunks()
        if uid_sink is not None:
            chunks = rp.tap_image_uids(chunks, uid_sink)
        pk_index = parser.names.index(PRIMARY_KEYS[table])
        rows = run.rows
        repeats, conflicting = run.repeats, run.conflicting
        parse = parser.parse
        max_bytes = config.max_line_bytes
        number = 0
        for number, data in rp.iter_lines(chunks, max_bytes):
            if type(data) is not bytes:
                if index == 0:
                    run.reject(number, rp.LINE_TOO_LONG, f"{data.length} bytes (max {max_bytes})", data)
                continue
            if parts > 1 and _route(data, route, parts) != index:
                continue
            try:
                values = parse(data)
            except rp.Reject as exc:
                run.reject(number, exc.reason, exc.detail, data)
                continue
            key = values[pk_index]
            first = rows.get(key)
            if first is None:
                rows[key] = (number, values)
            else:
                if values != first[1]:
                    conflicting.add(key)
                repeats.add(number, key, run.quarantine.raw_fields(data))
        report.lines_in = number
        run.seen = set(rows) if parts > 1 else set()   # only the worker split needs a copy
        _resolve_repeats(run, PRIMARY_KEYS[table])
    report.status = raw.status
    report.error = raw.error
    report.file_sha256 = raw.file_sha256
    report.file_bytes = raw.file_bytes
    if index == 0 and raw.status == "missing":   # every part reads the file; part 0 reports it
        run.file_row(rp.MISSING_FILE, raw.error or "missing", 0, None)
    elif index == 0 and raw.status == "unreadable":
        run.file_row(rp.UNREADABLE_FILE, raw.error or "unreadable", raw.file_bytes, raw.file_sha256)
    return run


def _resolve_repeats(run: _TableRun, key_name: str) -> None:
    """Exact repeats of a key -> duplicate_row (first kept); different versions -> all conflicting.

    The repeats come back from ``run.repeats`` in line order; only the conflicting keys get state
    here (their line count and first lines, for the detail), so exact duplicates cost no memory.
    """
    if not run.repeats.count:
        return
    rows, conflicting, sink = run.rows, run.conflicting, run.quarantine
    lines = {key: [rows[key][0]] for key in conflicting}
    totals = dict.fromkeys(conflicting, 1)
    if conflicting:
        for number, key, *_ in run.repeats:
            if key in conflicting:
                totals[key] += 1
                if len(lines[key]) < _LISTED_LINES:
                    lines[key].append(number)
    details = {key: f"{key_name} {key!r} has {totals[key]} lines with different content "
                    f"(lines {_line_list(lines[key], totals[key])})" for key in conflicting}
    for number, key, text, length, sha in run.repeats:
        if key in conflicting:
            sink.add(number, rp.CONFLICTING_PRIMARY_KEY, details[key], text, length, sha)
        else:
            sink.add(number, rp.DUPLICATE_ROW, f"exact duplicate of line {rows[key][0]}", text, length, sha)
    run.repeats.discard()
    for key in sorted(conflicting, key=repr):
        first_line = rows.pop(key)[0]
        run.reject(first_line, rp.CONFLICTING_PRIMARY_KEY, details[key], None)


_LISTED_LINES = 10


def _line_list(lines: list[int], total: int) -> str:
    text = ", ".join(str(n) for n in lines[:_LISTED_LINES])
    return text + (f", ... {total - _LISTED_LINES} more" if total > _LISTED_LINES else "")


def _check_references(runs: dict[str, _TableRun], parsers: dict[str, rp.LineParser],
                      known_today: set[str] | None, home: DataHome, day: str, raw_days: Sequence[str],
                      late_days: int) -> None:
    """Quarantine rankings/downloads rows whose image uid no images export of this day, an earlier
    day or the ``late_days`` days after it has; count the rows only a later export resolved.

    ``known_today`` holds the uids found while the same process read today's images file; without
    it, today's file is searched like the others (the same byte-level search either way). Other days
    are searched through their uid index (``raw_image_uids``), so a day's check costs one small
    Parquet read per day, not a decompression of every images file.
    """
    tables = [t for t in _REFERENCE_FIELDS if t in runs]
    positions = {t: [parsers[t].names.index(name) for name in _REFERENCE_FIELDS[t]] for t in tables}
    referenced: set[str] = set()
    for table in tables:
        for _, values in runs[table].rows.values():
            referenced.update(values[i] for i in positions[table] if values[i] is not None)
    unresolved = referenced - known_today if known_today is not None else referenced
    scan_days = {d for d in raw_days if d < day}
    if known_today is None:
        scan_days.add(day)
    for other in sorted(scan_days, reverse=True):
        if not unresolved:
            break
        unresolved -= raw_image_uids(home, other, unresolved)
    late: set[str] = set()
    used: list[str] = []
    last_day = late_window_end(day, late_days)
    for later in sorted(d for d in raw_days if day < d <= last_day):
        if not unresolved:
            break
        found = raw_image_uids(home, later, unresolved)
        late |= found
        unresolved -= found
        if found:
            used.append(later)
    for table in tables:
        runs[table].report.late_image_days = used
    if not unresolved and not late:
        return
    # the text names the window, never which later days exist yet: it must not change when one lands
    where = (f"of {day}, an earlier day or the {late_days} day(s) after it (up to {last_day})" if late_days
             else f"of {day} or earlier")
    for table in tables:
        run = runs[table]
        bad = []
        for key, (number, values) in run.rows.items():
            uids = [(name, values[i]) for name, i in zip(_REFERENCE_FIELDS[table], positions[table])]
            missing = next(((name, uid) for name, uid in uids if uid in unresolved), None)
            if missing is not None:
                bad.append(key)
                run.reject(number, rp.UNKNOWN_IMAGE_REFERENCE, f"{missing[0]} = {missing[1]} is in no images export "
                                                               f"{where}", None)
            elif any(uid in late for _, uid in uids):
                run.report.accepted_late_image += 1
        for key in bad:
            del run.rows[key]


def late_window_end(day: str, late_days: int) -> str:
    """The last day whose images export may still resolve a reference of ``day``."""
    return (parse_day(day) + dt.timedelta(days=late_days)).isoformat()


_UID_INDEX_VERSION = "1"


def _stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def raw_image_uids(home: DataHome, day: str, wanted: set[str]) -> set[str]:
    """The uids of ``wanted`` that appear as an ``"image_uid"`` member in ``day``'s raw images file.

    Answered from the day's uid index when it describes the file as it is now (same size and
    times, else the same sha256); otherwise the file is searched and the index (re)written. The
    answer depends only on the raw bytes: the index is a cache of the byte search, nothing more.
    """
    path = home.raw_file(day, "images")
    index = home.raw_image_uid_index(day)
    if index.is_file():
        try:
            meta = pq.read_schema(index).metadata or {}
            if meta.get(b"version") == _UID_INDEX_VERSION.encode():
                fresh = meta.get(b"stat") == (_stat_key(path) or "").encode()
                if not fresh and path.is_file():
                    fresh = meta.get(b"raw_sha256") == sha256_file(path).encode()
                if fresh:
                    uids = pq.read_table(index).column("image_uid")
                    hits = uids.filter(pc.is_in(uids, value_set=pa.array(sorted(wanted), pa.string())))
                    return set(hits.to_pylist())
        except (OSError, pa.ArrowException):
            pass  # an unreadable cache is searched around and rewritten
    raw = _open_raw(home, path)
    if raw.status != "ok":
        return set()
    stat = _stat_key(path)
    found: set[str] = set()
    for _ in rp.tap_image_uids(raw.chunks(), found):
        pass
    write_uid_index(home, day, found, raw.file_sha256, stat)
    return found & wanted


def write_uid_index(home: DataHome, day: str, uids: set[str], raw_sha256: str | None, stat: str | None) -> None:
    """Record the uids found in ``day``'s raw images file, keyed by the file's sha256 and stat."""
    path = home.raw_file(day, "images")
    if raw_sha256 is None or stat is None or _stat_key(path) != stat:
        return  # not read, or changed while it was read: leave no index
    table = pa.table({"image_uid": pa.array(sorted(uids), pa.string())})
    table = table.replace_schema_metadata({"version": _UID_INDEX_VERSION, "raw_sha256": raw_sha256, "stat": stat})
    write_parquet_atomic(table, home.raw_image_uid_index(day))


def _fill_pending(run: _TableRun, max_line_bytes: int) -> None:
    """Re-read the file for the raw bytes of lines quarantined after the first pass."""
    if not run.pending:
        return
    raw = rp.RawFile(run.path, name=run.report.file)
    wanted = run.pending
    for number, data in rp.iter_lines(raw.chunks(), max_line_bytes):
        if number in wanted:
            reason, detail = wanted.pop(number)
            run.quarantine.add_line(number, reason, detail, data)
            if not wanted:
                break
    if wanted:
        raise RuntimeError(f"{run.report.file} changed while it was ingested: lines {sorted(wanted)[:5]} vanished")


# ---------------------------------------------------------------------------------------------
def _dt_column(day: dt.date, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(day, pa.date32()), n)


def _timestamps(texts: Sequence[str]) -> pa.Array:
    """Validated ``YYYY-MM-DD HH:MM:SS[.f]`` strings -> timestamp[us] (Arrow's ISO-8601 cast)."""
    return pa.array(texts, pa.string()).cast(pa.timestamp("us"))


def _users_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 4
    return pa.table({"user_id": pa.array(cols[0], pa.int64()),
                     "created_at": _timestamps(cols[1]),
                     "dt": _dt_column(day, len(rows))})


def _images_table(home: DataHome, rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 13
    split = [rp.split_prompt(p) for p in cols[4]]
    return pa.table({
        "image_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "image_uid": pa.array(cols[2], pa.string()),
        "user_id": pa.array(cols[3], pa.int64()),
        "prompt": pa.array([s[0] for s in split], pa.string()),
        "bracket_negative_prompt": pa.array([s[1] for s in split], pa.string()),
        "negative_prompt": pa.array([None if p is None else rp.unescape(p) for p in cols[5]], pa.string()),
        "seed": pa.array(cols[6], pa.int64()),
        "gs": pa.array(cols[7], pa.float64()),
        "steps": pa.array(cols[8], pa.int32()),
        "idx": pa.array(cols[9], pa.int32()),
        "num_generated": pa.array(cols[10], pa.int32()),
        "scheduler_cls": pa.array(cols[11], pa.string()),
        "model_id": pa.array(cols[12], pa.string()),
        "blob_path": pa.array([home.raw_image_relpath(uid) for uid in cols[2]], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def _rankings_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 9
    split = [rp.split_prompt(p) for p in cols[8]]
    return pa.table({
        "ranking_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "user_id": pa.array(cols[2], pa.int64()),
        "image_0_uid": pa.array(cols[3], pa.string()),
        "image_1_uid": pa.array(cols[4], pa.string()),
        "image_2_uid": pa.array(cols[5], pa.string()),
        "image_3_uid": pa.array(cols[6], pa.string()),
        "num_shown": pa.array([2 if u is None else 4 for u in cols[5]], pa.int8()),
        "best_image_uid": pa.array([None if b == rp.TIE else b for b in cols[7]], pa.string()),
        "is_tie": pa.array([b == rp.TIE for b in cols[7]], pa.bool_()),
        "prompt": pa.array([s[0] for s in split], pa.string()),
        "bracket_negative_prompt": pa.array([s[1] for s in split], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def _downloads_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 5
    return pa.table({
        "download_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "user_id": pa.array(cols[2], pa.int64()),
        "image_uid": pa.array(cols[3], pa.string()),
        "prompt": pa.array([None if p is None else rp.split_prompt(p)[0] for p in cols[4]], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def _ingest_files_table(reports: list[TableReport], day: dt.date) -> pa.Table:
    reports = sorted(reports, key=lambda r: r.table)
    return pa.table({
        "table": pa.array([r.table for r in reports], pa.string()),
        "dt": _dt_column(day, len(reports)),
        "file": pa.array([r.file for r in reports], pa.string()),
        "file_sha256": pa.array([r.file_sha256 if r.status != "missing" else None for r in reports], pa.string()),
        "file_bytes": pa.array([r.file_bytes for r in reports], pa.int64()),
        "status": pa.array([r.status for r in reports], pa.string()),
        "lines_in": pa.array([r.lines_in for r in reports], pa.int64()),
        "accepted": pa.array([r.accepted for r in reports], pa.int64()),
        "accepted_late_image": pa.array([r.accepted_late_image for r in reports], pa.int64()),
        "quarantined": pa.array([r.quarantined for r in reports], pa.int64()),
    })


def write_raw_zone_problems(home: DataHome, scan: RawZoneScan) -> Path:
    """Record the raw zone's skipped entries (``warehouse/raw_zone_problems/data.parquet``), sorted by path."""
    problems = scan.problems
    table = pa.table({
        "path": pa.array([p.path for p in problems], pa.string()),
        "entry": pa.array([p.entry for p in problems], pa.string()),
        "reason": pa.array([p.reason for p in problems], pa.string()),
        "detail": pa.array([p.detail for p in problems], pa.string()),
        "file_bytes": pa.array([p.file_bytes for p in problems], pa.int64()),
    })
    return write_parquet_atomic(table, home.table_file("raw_zone_problems"), get_schema("raw_zone_problems"))


_Writer = tuple[pa.Table, pa.Schema] | Callable[[Path], None]


def write_tables_atomic(paths_writers: dict[Path, _Writer]) -> None:
    """Write every file under a temporary name first (a table cast to its schema, or a function that
    writes the temporary path itself); rename them all only when all are written."""
    items = list(paths_writers.items())
    with contextlib.ExitStack() as stack:
        for index, (final, writer) in enumerate(items):
            if index == len(items) - 1 and index > 0:
                # exits run last-in first-out: this fires after the last file's rename, before the others'
                stack.callback(faults.maybe_crash, "ingest.after_first_rename")
            tmp = stack.enter_context(atomic_path(final))
            if callable(writer):
                writer(tmp)
            else:
                table, schema = writer
                pq.write_table(cast_to_schema(table, schema), tmp, **PARQUET_OPTIONS)


def parse_day(day: str) -> dt.date:
    """``YYYY-MM-DD`` -> date; errors name the value."""
    try:
        if len(day) != 10:
            raise ValueError
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {day!r} is not a YYYY-MM-DD date") from None


_BUILDERS = {
    "users": lambda home, rows, date: _users_table(rows, date),
    "images": _images_table,
    "rankings": lambda home, rows, date: _rankings_table(rows, date),
    "downloads": lambda home, rows, date: _downloads_table(rows, date),
}


_TableResult = tuple[pa.Table, QuarantineSink, TableReport, set]


def _ingest_tables(home: DataHome, day: str, tables: Sequence[str], config: IngestConfig, raw_days: Sequence[str],
                   part: tuple[int, int] = (0, 1), spill_dir: Path | None = None) -> dict[str, _TableResult]:
    """Read, validate, de-duplicate and reference-check ``tables`` of one day; no writing.

    Returns, per table, its sorted Arrow table, its quarantine sink (closed: spilled rows are in
    ``spill_dir``), its report and the primary keys it saw. With ``part`` = (index, parts) only the
    lines routed to that part are validated (a worker of a large day); ``_merge_parts`` combines them.
    """
    date = parse_day(day)
    ts_range = config.timestamp_range(date)
    parsers = {table: rp.LineParser(table, max_id=config.max_id, max_prompt_chars=config.max_prompt_chars,
                                    max_name_chars=config.max_name_chars, gs_range=(config.min_gs, config.max_gs),
                                    ts_range=ts_range) for table in tables}
    known_today: set[str] | None = set() if "images" in tables else None
    runs = {}
    for table in tables:
        uid_sink = known_today if table == "images" else None
        indexing = uid_sink is not None and part[0] == 0   # one part writes today's uid index
        stat = _stat_key(home.raw_file(day, table)) if indexing else None
        runs[table] = _read_table(home, day, table, parsers[table], config, uid_sink, part, spill_dir)
        if indexing:
            write_uid_index(home, day, known_today, runs[table].report.file_sha256, stat)
    _check_references(runs, parsers, known_today, home, day, raw_days, config.late_image_days)
    results = {}
    for table, run in runs.items():
        _fill_pending(run, config.max_line_bytes)
        run.quarantine.close()
        report = run.report
        report.accepted = len(run.rows)
        _tally(report, run.quarantine)
        built = _BUILDERS[table](home, [values for _, values in run.rows.values()], date).sort_by(PRIMARY_KEYS[table])
        results[table] = (built, run.quarantine, report, run.seen)
    return results


def _merge_parts(table: str, parts: list[_TableResult]) -> tuple[pa.Table, QuarantineSink, TableReport]:
    """One table's result from its parts: rows and quarantine rows of every part (only part 0
    reports file-level problems), the file facts once (every part read the whole file)."""
    built = pa.concat_tables([p[0] for p in parts]).sort_by(PRIMARY_KEYS[table])
    sink = parts[0][1]
    for other in parts[1:]:
        sink.merge(other[1])
    sink.close()
    report = parts[0][2]
    if any(p[2].lines_in != report.lines_in for p in parts):
        raise RuntimeError(f"{report.file} changed while it was ingested: parts counted different lines")
    report.accepted = built.num_rows
    report.accepted_late_image = sum(p[2].accepted_late_image for p in parts)
    report.late_image_days = sorted({d for p in parts for d in p[2].late_image_days})
    _tally(report, sink)
    return built, sink, report


def _tally(report: TableReport, sink: QuarantineSink) -> None:
    """Set ``report``'s quarantined line count and its lines per reason (one per file-level row)."""
    report.quarantined = sink.lines
    report.reasons = dict(sorted(sink.reasons.items()))


def _split_keys(parts: list[_TableResult]) -> bool:
    """True when one primary key was seen by two parts (the parts cannot be merged)."""
    seen: set = set()
    for part in parts:
        if not seen.isdisjoint(part[3]):
            return True
        seen |= part[3]
    return False


def _raw_size(home: DataHome, day: str) -> int:
    return sum(path.stat().st_size for path in (home.raw_file(day, t) for t in RAW_TABLES) if path.is_file())


@contextlib.contextmanager
def _spill_folder(home: DataHome, day: str) -> Iterator[Path]:
    """A private scratch folder inside the data home's ``cache/`` for quarantine spills; removed after."""
    scratch = home.cache / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"ingest-{day}-", dir=scratch) as folder:
        yield Path(folder)


def ingest_day(home: DataHome, day: str, config: IngestConfig = IngestConfig(), *,
               refresh_earlier: bool = True) -> IngestReport:
    """Ingest one day of raw exports into the warehouse partitions of ``day``; returns the counts.

    With ``refresh_earlier``, the earlier days within ``late_image_days`` whose quarantine waits for
    an image this day's export brings are ingested again (``refresh_late_references``), so a day's
    partitions never depend on the order in which the days were ingested.
    """
    started = time.perf_counter()
    date = parse_day(day)
    scan = home.scan_raw_zone()
    write_raw_zone_problems(home, scan)
    raw_days = scan.days
    with _spill_folder(home, day) as spill_dir:
        if config.workers > 1 and _raw_size(home, day) >= config.parallel_min_bytes:
            # every worker reads every file and validates the lines whose primary key routes to it
            # fork: a spawned child would re-import the caller's __main__; the child only parses and
            # builds Arrow arrays (Arrow re-creates its thread pools after fork)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            n = config.workers
            with ProcessPoolExecutor(max_workers=n, mp_context=context) as pool:
                futures = [pool.submit(_ingest_tables, home, day, RAW_TABLES, config, raw_days, (i, n), spill_dir)
                           for i in range(n)]
                parts = [future.result() for future in futures]
            results = {}
            for table in RAW_TABLES:
                table_parts = [p[table] for p in parts]
                if _split_keys(table_parts):  # versions of one key met different workers: redo it whole
                    results[table] = _ingest_tables(home, day, (table,), config, raw_days,
                                                    spill_dir=spill_dir)[table][:3]
                else:
                    results[table] = _merge_parts(table, table_parts)
        else:
            results = {table: value[:3] for table, value
                       in _ingest_tables(home, day, RAW_TABLES, config, raw_days, spill_dir=spill_dir).items()}

        reports = {table: results[table][2] for table in RAW_TABLES}
        sinks = [results[table][1] for table in RAW_TABLES]
        outputs = {name: home.partition_file(name, day) for name in OUTPUT_DATASETS}
        written: dict[str, int] = {}

        def quarantine_writer(tmp: Path) -> None:
            written["quarantine"] = write_quarantine(sinks, date, tmp)

        writers: dict[Path, _Writer] = {outputs[table]: (results[table][0], get_schema(table)) for table in RAW_TABLES}
        writers[outputs["quarantine"]] = quarantine_writer
        writers[outputs["ingest_files"]] = (_ingest_files_table(list(reports.values()), date), get_schema("ingest_files"))
        write_tables_atomic({path: writers[path] for path in (outputs[name] for name in OUTPUT_DATASETS)})
    return IngestReport(
        day=day,
        tables=reports,
        outputs={name: path.relative_to(home.root).as_posix() for name, path in outputs.items()},
        seconds=time.perf_counter() - started,
        raw_zone_problems=scan.summary(),
        quarantine_rows=written["quarantine"],
        refreshed=refresh_late_references(home, day, config, raw_days) if refresh_earlier else {},
    )


_WAITING_UID = re.compile(r"_uid = ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) is in no images export")


def refresh_late_references(home: DataHome, day: str, config: IngestConfig,
                            raw_days: Sequence[str] | None = None) -> dict[str, IngestReport]:
    """Ingest again each ingested day in [day - late_image_days, day) whose quarantine names, as the
    missing image of a ranking or download, a uid that ``day``'s raw images export holds.

    Exact: a later export changes an earlier day's output only by resolving the uid that one of its
    ``unknown_image_reference`` rows names (the first unknown image of the row), so every other day
    is already what a build over all days gives. Returns the new reports by day.
    """
    if not config.late_image_days:
        return {}
    days = home.raw_days() if raw_days is None else raw_days
    first = (parse_day(day) - dt.timedelta(days=config.late_image_days)).isoformat()
    refreshed: dict[str, IngestReport] = {}
    for earlier in (d for d in days if first <= d < day):
        path = home.partition_file("quarantine", earlier)
        if not path.is_file():
            continue   # never ingested: its own ingest will look ahead
        try:
            rows = pq.read_table(path, columns=["reason", "detail"],
                                 filters=[("reason", "=", rp.UNKNOWN_IMAGE_REFERENCE)])
        except (OSError, pa.ArrowException):
            rows = None   # unreadable partition: ingesting it again repairs it
        waiting = set() if rows is None else {
            m.group(1) for detail in rows.column("detail").to_pylist() if (m := _WAITING_UID.search(detail))}
        if rows is None or (waiting and raw_image_uids(home, day, waiting)):
            refreshed[earlier] = ingest_day(home, earlier, config, refresh_earlier=False)
    return refreshed


# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ingest's command-line options (``--home``, ``--day``, one per setting) to ``parser``."""
    parser.add_argument("--home", default=None, help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--day", action="append", default=None, metavar="YYYY-MM-DD",
                        help="day to ingest (repeatable; default: every day in the raw zone)")
    add_flags(parser, "ingest")


def run_from_args(args: argparse.Namespace) -> int:
    """Ingest the days named by ``args``; print one JSON summary per day; 0 when every day reconciles."""
    home = DataHome.at(args.home)
    config = stage_config(home.root, "ingest", args)   # the home's settings file, then the flags given
    scan = home.scan_raw_zone()
    for line in scan.summary():
        print(f"warning: skipped {line}", file=sys.stderr)
    days = args.day or scan.days
    if not days:
        print(f"no raw days under {home.raw_logs}", file=sys.stderr)
        return 1
    status = 0
    for day in days:
        report = ingest_day(home, day, config)
        summary = {k: v for k, v in report.metadata().items() if k not in ("files", "quarantine_reasons_md")}
        print(json.dumps(summary, sort_keys=True))
        if not report.reconciled:
            print(f"day {day}: counts do not reconcile", file=sys.stderr)
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.ingest.day --home DIR --day YYYY-MM-DD``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest.day", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
