"""Reading one raw file of one day: every line validated into a row or a quarantine row, then the per-file rules.

Per file, on the lines that passed (primary keys: users ``user_id``, images ``image_uid``,
rankings ``ranking_id``, downloads ``download_id``; values compared after typing, so ``5`` and
``5.0`` are the same):

- ``duplicate_row``: an exact repeat of an earlier line's object; the first is kept.
- ``conflicting_primary_key``: one key with two or more different objects; every version of that
  key is quarantined, none is guessed. Keys are unique within one day's file; repeats across days
  are left to the downstream stages, which see every partition. A line that fails a line rule but is a
  JSON object with a valid key (``Reject.key``) is a version of that key too: it keeps its own reason,
  and the lines of that key that passed are quarantined as ``conflicting_primary_key`` (review rev25c: the
  one passing version was accepted, a guess). Such keys go to a spill log (``TableRun.rejected``), so
  memory stays flat in the number of bad lines.

A UTF-8 byte order mark at the very start of a file is skipped before line 1 is parsed (``parse.without_bom``);
its quarantine row, if any, keeps the bytes as written.

File rules (``ingest_files`` has one row per table and day; file-level quarantine rows have line 0):

- missing file: status ``missing``, one quarantine row ``missing_file``.
- not gzip / truncated / corrupt / not a regular file / a link out of the raw zone: status
  ``unreadable``, one quarantine row ``unreadable_file``; the lines of the gzip members before the damage (and
  of a truncated last member, up to the cut) are ingested normally, none of a member that fails its integrity
  check (``lines.RawFile``), and the text after the last newline counts as a line (usually ``malformed_json``).
- empty file (zero bytes, or a gzip of nothing): status ``empty``, no rows.

Lines whose raw bytes are needed only later (a key found conflicting after its first line was kept)
are re-read from the file at the end (:func:`fill_pending`). A worker of a large day validates only
the lines whose primary key, as written in the raw bytes, routes to it (``_route``).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator

from formats.home import DataHome
from pipelines.ingest import lines
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig, TableReport
from pipelines.ingest.quarantine import QuarantineSink, SinkLimits
from pipelines.ingest.uidset import UidSet
from schemas.raw import PRIMARY_KEYS

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SINK_LIMITS = SinkLimits()   # memory bounds of each table's quarantine before it spills to disk


# ---------------------------------------------------------------------------------------------
class TableRun:
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
        self.rejected = _RepeatLog(spill_dir, table)        # (line, key, reason) of rejected lines with a valid key
        self.rejected_seen: set = set()                     # their keys, for the worker split (bounded)
        self.conflicting: set = set()                       # keys with two or more different versions
        self.home = home
        self.identity: tuple[int, int, int, int] | None = None   # the raw file as the first pass opened it
        self.limited = False                                # what was read depends on the limits (RawFile.limited)

    def reject(self, number: int, reason: str, detail: str, data: bytes | lines.OverlongLine | None) -> None:
        if data is None:
            self.pending[number] = (reason, detail)
            return
        self.quarantine.add_line(number, reason, detail, data)

    def file_row(self, reason: str, detail: str, length: int, sha: str | None) -> None:
        self.quarantine.add(0, reason, detail, None, length, sha or _EMPTY_SHA256)


class _RepeatLog:
    """Lines whose primary key was already seen, in line order, as (line, key, raw text, length, sha256)
    (``add``), or any small tuples (``add_item``): kept in memory up to a bound, then appended to a spill
    file in pickled batches; read back in order."""

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
        self.add_item((number, key, text, length, sha), len(text))

    def add_item(self, item: tuple, text_bytes: int) -> None:
        self.batch.append(item)
        self.count += 1
        self.text_bytes += text_bytes
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


def open_raw(home: DataHome, path: Path, expect: tuple[int, int, int, int] | None = None,
             config: IngestConfig | None = None) -> lines.RawFile:
    """A ``RawFile`` whose status is already ``missing``/``unreadable`` when it cannot be read safely (a link that
    leaves the raw zone is never followed, checked again on the open file); ``expect``: the identity an earlier
    read recorded (``RawFile.identity``), another file is refused."""
    rel = path.relative_to(home.root).as_posix()
    config = config or IngestConfig()
    raw = lines.RawFile(path, name=rel, zone_root=str((home.root / "raw").resolve()), expect=expect,
                        max_bytes=config.max_file_bytes, max_lines=config.max_file_lines)
    if raw.check():
        try:
            home.resolve_inside(rel, zone="raw")
        except ValueError as exc:
            raw.status, raw.error = "unreadable", str(exc)
            raw.unread_as = lines.LINK_OUT_OF_ZONE    # as RawDigests names it: never the target's bytes (rev27f)
    return raw


# A worker of a large day reads every file but validates only the lines routed to it: routed by
# the primary key as written in the raw bytes, so every version of a key normally meets the same
# worker. A line whose key cannot be read this way goes to part 0; if versions of one key still end
# up in two parts, ``ingest_day`` notices (``seen`` keys intersect) and redoes that table in one process.
_ROUTE_RE = {table: re.compile(rb'"' + key.encode() + rb'"[ \t\r]{0,16}:[ \t\r]{0,16}("[0-9a-f-]{1,64}"|[0-9]{1,20})[ \t\r]{0,16}[,}]')
             for table, key in PRIMARY_KEYS.items()}


# Keys of rejected lines a worker keeps for the split check; past this many it says so (``SEEN_OVERFLOW``) and the
# table is redone in one process, where they go to the spill log: memory stays bounded by the constant.
MAX_REJECTED_SEEN = 100_000
SEEN_OVERFLOW = "\0rejected keys overflowed"   # never a key (ids are ints, uids canonical)


def _route(data: bytes, pattern: re.Pattern, parts: int) -> int:
    match = pattern.search(data)
    return zlib.crc32(match.group(1)) % parts if match else 0


_ROUTE_VALUE_RE = re.compile(rb'"[0-9a-f-]{1,64}"|[0-9]{1,20}')   # a key as ``_ROUTE_RE`` routes it


def _route_members(line: lines.OverlongLine, parts: int) -> int:
    """The part of an overlong line: by its first top-level key member's value as written (``OverlongLine.members``),
    as ``_route`` routes a line whose key it finds; part 0 when there is none or it is not written that way."""
    value = line.members[0] if line.members else None
    return zlib.crc32(value) % parts if value is not None and _ROUTE_VALUE_RE.fullmatch(value) else 0


class OverlongMembers:
    """The key members of a raw file's overlong lines (``OverlongLine.members``), scanned by one reader and read by
    the others (review fix35d: every worker of a parallel day ran :class:`~pipelines.ingest.lines.MemberScan` over
    every overlong line, up to ``MemberScan.BUDGET`` bytes a line each, to route it: the work multiplied by the
    number of workers).

    The file ``path`` (in the ingest's private scratch folder, one per compute and table) holds, in line order, one
    record per overlong line: (line number, length, sha256, members), then an end record. Worker 0 writes it as it
    reads (:meth:`publish`, :meth:`finish`); another worker, on an overlong line, waits until the record of that line
    number, a later one or the end is written (:meth:`members`: worker 0 reads the same lines, never waits on another
    worker, so the wait ends), and uses the members only when the line has the same length and sha256 (the same
    bytes, so the same members); otherwise (the workers read two versions of the file: the day is read again in one
    process, ``_compute``) it has none. The table's redo in one process after its keys split between workers reads the
    complete file the same way (``strict``: a line of other bytes there means the file changed meanwhile, an error,
    as :func:`fill_pending` says). Memory: one record at a time; records are framed by their length, so a record being
    written is never read half."""

    _END = None
    _FRAME = struct.Struct(">Q")
    POLL_S = 0.002     # the first wait between looks at the file, doubled up to MAX_POLL_S
    MAX_POLL_S = 0.05

    def __init__(self, path: Path, *, strict: bool = False):
        self.path = path
        self.strict = strict
        self._fd: int | None = None     # the writer's
        self._handle = None             # a reader's
        self._next: tuple | None = None   # the record read but not used yet
        self._ended = False

    # --- the writer (worker 0) ---------------------------------------------------------------
    def open_for_writing(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _write(self, record) -> None:
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        frame = self._FRAME.pack(len(data)) + data
        while frame:
            frame = frame[os.write(self._fd, frame):]

    def publish(self, number: int, line: lines.OverlongLine) -> None:
        self._write((number, line.length, line.sha256, line.members))

    def finish(self) -> None:
        """The end record (also when the read failed: the others then stop waiting); closes the file."""
        if self._fd is not None:
            try:
                self._write(self._END)
            finally:
                os.close(self._fd)
                self._fd = None

    # --- a reader (another worker, or the table's redo) --------------------------------------
    def _read_record(self, wait: bool):
        """The next record (waiting for the writer while ``wait``), or ``_END``."""
        delay = self.POLL_S
        while True:
            if self._handle is None:
                try:
                    self._handle = open(self.path, "rb")   # our own file, in our private scratch folder
                except FileNotFoundError:
                    self._handle = None
            if self._handle is not None:
                start = self._handle.tell()
                head = self._handle.read(self._FRAME.size)
                if len(head) == self._FRAME.size:
                    size = self._FRAME.unpack(head)[0]
                    body = self._handle.read(size)
                    if len(body) == size:
                        return pickle.loads(body)
                self._handle.seek(start)     # a record not whole yet
            if not wait:
                return self._END
            time.sleep(delay)
            delay = min(delay * 2, self.MAX_POLL_S)

    def members(self, number: int, line: lines.OverlongLine) -> lines.OverlongLine:
        """``line`` with the members the writer scanned for it (None when it has no record of these bytes)."""
        while not self._ended and (self._next is None or self._next[0] < number):
            record = self._read_record(wait=not self.strict)
            if record is self._END:
                self._ended = True
                self._next = None
            else:
                self._next = record
        found = self._next
        if found is not None and found[0] == number and found[1:3] == (line.length, line.sha256):
            return dataclasses.replace(line, members=found[3])
        if self.strict:
            raise RuntimeError(f"the raw file of line {number} changed while it was ingested (an overlong line's bytes "
                               "differ from the first read); ingest the day again")
        return line

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_table(home: DataHome, day: str, table: str, parser: rp.LineParser, config: IngestConfig,
               uid_sink: set[str] | None = None, part: tuple[int, int] = (0, 1),
               spill_dir: Path | None = None, *, overlong: Path | None = None) -> TableRun:
    """Validate every line of one raw file (of ``part`` = (index, parts): only the lines routed to
    it), then resolve exact duplicates and key conflicts.

    ``overlong``: the file of the key members of the overlong lines (:class:`OverlongMembers`), each line scanned
    once: part 0 of several writes it, the other parts (and a redo in one process, once it is whole) read it;
    without it every reader scans the overlong lines itself."""
    shared = None
    if overlong is not None:
        if part[1] > 1 and part[0] == 0:
            shared = OverlongMembers(overlong)
            shared.open_for_writing()
        else:
            shared = OverlongMembers(overlong, strict=part[1] == 1)
    try:
        return _read_table(home, day, table, parser, config, uid_sink, part, spill_dir, shared)
    finally:
        if shared is not None:
            shared.finish()   # the writer's end record, even when the read failed: no reader waits for good
            shared.close()


def _read_table(home: DataHome, day: str, table: str, parser: rp.LineParser, config: IngestConfig,
                uid_sink: set[str] | None, part: tuple[int, int], spill_dir: Path | None,
                shared: OverlongMembers | None) -> TableRun:
    run = TableRun(home, day, table, spill_dir)
    index, parts = part
    writer = shared is not None and parts > 1 and index == 0
    route = _ROUTE_RE[table]
    report = run.report
    raw = open_raw(home, run.path, config=config)
    if raw.status == "ok":
        chunks = raw.chunks()
        if uid_sink is not None:
            chunks = lines.tap_image_uids(chunks, uid_sink)
        pk_index = parser.names.index(PRIMARY_KEYS[table])
        rows = run.rows
        repeats, conflicting = run.repeats, run.conflicting
        parse, same = parser.parse, parser.same
        max_bytes = config.max_line_bytes
        number = 0
        # its memory allowance grows with the accepted rows (review rev33i): a worker taps every line's uid but accepts
        # only the rows routed to it (about 1/parts of them), so each of its rows counts for ``parts`` (review rev34a)
        counting = isinstance(uid_sink, UidSet)
        key_name = PRIMARY_KEYS[table]
        # a reader of the shared members scans nothing: the writer's record of the line's bytes says its members
        scanned = key_name if shared is None or writer else None
        for number, data in lines.iter_lines(chunks, max_bytes, lambda: raw.cut, scanned):
            if type(data) is not bytes:
                if shared is not None:
                    if writer:
                        shared.publish(number, data)
                    else:
                        data = shared.members(number, data)
                # never decoded, but a version of its key all the same when its top-level key member reads one way
                # (review rev34a): routed by that key as written, like any line
                if parts > 1 and _route_members(data, parts) != index:
                    continue
                run.reject(number, rp.LINE_TOO_LONG, f"{data.length} bytes (max {max_bytes})", data)
                key = parser.overlong_key(data)
                if key is not None:
                    run.rejected.add_item((number, key, rp.LINE_TOO_LONG), 0)
                    if parts > 1:
                        _note_rejected_key(run, key)
                continue
            if uid_sink is not None:   # a uid the byte tap misses (an escape, odd blanks) is still the day's
                spelled = lines.spelled_image_uid(data)
                if spelled is not None:
                    uid_sink.add(spelled)
            if parts > 1 and _route(data, route, parts) != index:
                continue
            try:
                values = parse(data if number != 1 else rp.without_bom(data))
            except rp.Reject as exc:
                run.reject(number, exc.reason, exc.detail, data)
                if exc.key is not None:   # a version of that key all the same: none of its versions is guessed
                    run.rejected.add_item((number, exc.key, exc.reason), 0)
                    if parts > 1:
                        _note_rejected_key(run, exc.key)
                continue
            key = values[pk_index]
            first = rows.get(key)
            if first is None:
                rows[key] = (number, values)
                if counting:
                    uid_sink.allowance += parts
            else:
                if not same(values, first[1]):    # typed: two spellings of one instant are the same
                    conflicting.add(key)
                repeats.add(number, key, run.quarantine.raw_fields(data))
        report.lines_in = number
        run.seen = set(rows) | run.rejected_seen if parts > 1 else set()   # only the worker split needs a copy
        run.rejected_seen = set()
        _resolve_repeats(run, PRIMARY_KEYS[table])
    run.identity = raw.identity
    run.limited = raw.limited
    report.status = raw.status
    report.error = raw.error
    report.file_sha256 = raw.file_sha256
    report.file_bytes = raw.file_bytes
    report.unread_as = raw.unread_as
    if index == 0 and raw.status == "missing":   # every part reads the file; part 0 reports it
        run.file_row(rp.MISSING_FILE, raw.error or "missing", 0, None)
    elif index == 0 and raw.status == "unreadable":
        run.file_row(rp.UNREADABLE_FILE, raw.error or "unreadable", raw.file_bytes, raw.file_sha256)
    return run


def _note_rejected_key(run: TableRun, key: object) -> None:
    """Remember a rejected line's key for the worker split check (``seen``), up to ``MAX_REJECTED_SEEN``."""
    if len(run.rejected_seen) < MAX_REJECTED_SEEN:
        run.rejected_seen.add(key)
    else:
        run.rejected_seen.add(SEEN_OVERFLOW)


def _resolve_repeats(run: TableRun, key_name: str) -> None:
    """Exact repeats of a key -> duplicate_row (first kept); different versions -> all conflicting.

    The repeats come back from ``run.repeats`` in line order; only the conflicting keys get state
    here (their line count and first lines, for the detail), so exact duplicates cost no memory.
    A key that passed on some line and failed a line rule on another (``run.rejected``) conflicts too:
    its rejected lines keep their own reason, its accepted ones are quarantined as conflicting.
    """
    rows, conflicting, sink = run.rows, run.conflicting, run.quarantine
    failed: dict[object, list] = {}   # key -> [its rejected lines, the first ten of them, the first one's reason]
    if run.rejected.count:
        for number, key, reason in run.rejected:
            if key in rows:
                conflicting.add(key)
                entry = failed.get(key)
                if entry is None:
                    failed[key] = [1, [number], reason]
                else:
                    entry[0] += 1
                    if len(entry[1]) < _LISTED_LINES:
                        entry[1].append(number)
        run.rejected.discard()
    if not run.repeats.count and not conflicting:
        return
    lines = {key: [rows[key][0]] for key in conflicting}
    totals = dict.fromkeys(conflicting, 1)
    if conflicting:
        for number, key, *_ in run.repeats:
            if key in conflicting:
                totals[key] += 1
                if len(lines[key]) < _LISTED_LINES:
                    lines[key].append(number)
    for key, (count, numbers, _) in failed.items():
        totals[key] += count
        lines[key] = sorted(lines[key] + numbers)[:_LISTED_LINES]   # both in line order: the first of their union
    details = {key: f"{key_name} {key!r} has {totals[key]} lines with different content "
                    f"(lines {_line_list(lines[key], totals[key])})" for key in conflicting}
    for key, (count, numbers, reason) in failed.items():
        details[key] += (f"; {count} of them failed a line rule and {'is' if count == 1 else 'are'} quarantined "
                         f"under its own reason (line {numbers[0]}: {reason})")
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


def fill_pending(run: TableRun, config: IngestConfig) -> None:
    """Re-read the file for the raw bytes of lines quarantined after the first pass."""
    if not run.pending:
        return
    raw = open_raw(run.home, run.path, expect=run.identity, config=config)   # the file the first pass read, or nothing
    wanted = run.pending
    chunks = raw.chunks() if raw.status == "ok" and run.identity is not None else iter(())
    for number, data in lines.iter_lines(chunks, config.max_line_bytes, lambda: raw.cut):
        if number in wanted:
            reason, detail = wanted.pop(number)
            run.quarantine.add_line(number, reason, detail, data)
            if not wanted:
                break
    if wanted:
        why = raw.error if raw.status != "ok" else f"lines {sorted(wanted)[:5]} vanished"
        raise RuntimeError(f"{run.report.file} changed while it was ingested: {why}; ingest the day again")
