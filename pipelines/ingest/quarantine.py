"""The ingest's quarantine rows, streamed: identical bad lines collapse into one row, batches spill to disk.

A ``QuarantineSink`` takes the bad lines of one raw file (one table of one day). Lines with the same
(reason, detail, raw_sha256, raw_length) are one quarantine row: ``line_number`` is the first such
line, ``last_line_number`` the last, ``line_count`` how many (a million blank lines are one row, not
a million). The sink holds at most ``SinkLimits.max_rows`` collapsed rows and ``max_text_bytes`` of
raw text and details in memory; past that it writes them, sorted by that key, as a run file (Arrow IPC, small
batches) in the ingest's scratch folder under ``cache/tmp`` and starts afresh. At the end the runs
are merged by key, combining the rows of one key (first line, last line, summed count), and the
combined rows are sorted by line number the same way: sorted chunks of bounded size spilled as runs,
then merged. Every merge reads at most ``FAN_IN`` runs at once, one small batch of each (more runs
are merged in passes), so memory is bounded by constants, never by the number of bad lines, and the
rows come out exactly as the in-memory path gives them. ``write_quarantine`` writes them sorted by
(table, line_number) in row groups cut by row count and raw-text and detail bytes, so the file's bytes never
depend on where batches were cut or whether anything spilled.
"""
from __future__ import annotations

import datetime as dt
import heapq
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS, cast_to_schema
from pipelines.ingest import lines
from pipelines.ingest import parse as rp
from schemas import get_schema

# A collapsed row while it is being combined: (reason, detail, raw_sha256, raw_length, line_number,
# last_line_number, line_count, raw_text); the first four are the key identical lines share.
_RUN_SCHEMA = pa.schema([
    pa.field("reason", pa.string()), pa.field("detail", pa.string()), pa.field("raw_sha256", pa.string()),
    pa.field("raw_length", pa.int64()), pa.field("line_number", pa.int64()),
    pa.field("last_line_number", pa.int64()), pa.field("line_count", pa.int64()), pa.field("raw_text", pa.string()),
])
_ROW_COLUMNS = ("line_number", "last_line_number", "line_count", "reason", "detail", "raw_text", "raw_length",
                "raw_sha256")
_MEMO_LINE_BYTES = 512
_MEMO_ENTRIES = 1024
FAN_IN = 32                      # runs merged at once
RUN_BATCH_ROWS = 256             # rows per batch of a run file (what a merge holds per run)
RUN_BATCH_TEXT_BYTES = 2 << 20   # raw_text + detail bytes per batch of a run file, at most (one row may pass it)
ROW_GROUP_ROWS = 65_536          # rows per Parquet row group of the quarantine file, at most
ROW_GROUP_TEXT_BYTES = 32 << 20  # raw_text + detail bytes per row group, at most (one row may pass it)


def _text_size(text: str | None, detail: str) -> int:
    """What a row's texts count against the memory bounds: its raw_text and its detail (review rev27b: a detail
    as long as its line was held uncounted)."""
    return (len(text) if text else 0) + len(detail)


def _key(row: tuple) -> tuple:
    return row[:4]


def _line(row: tuple) -> int:
    return row[4]


@dataclass(frozen=True)
class SinkLimits:
    """How much of the quarantine a sink, and the final sort, keep in memory before spilling."""

    max_rows: int = 20_000
    max_text_bytes: int = 16 << 20
    sort_rows: int = 100_000
    sort_text_bytes: int = 32 << 20


class QuarantineSink:
    """Collapsed quarantine rows of one raw file; counts every line it is given, per reason."""

    def __init__(self, table: str, file: str, spill_dir: Path | None, limits: SinkLimits = SinkLimits()):
        self.table = table
        self.file = file
        self.spill_dir = spill_dir
        self.limits = limits
        self.rows: dict[tuple, list] = {}   # (reason, detail, sha256, length) -> [first, last, count, text]
        self.text_bytes = 0
        self.spills: list[Path] = []           # run files, each sorted by key
        self.lines = 0                      # quarantined lines (line_number > 0)
        self.reasons: dict[str, int] = {}   # lines per reason; a file-level row counts 1
        self._memo: dict[bytes, tuple] = {}  # short line bytes -> raw fields (bounded)

    def add(self, line: int, reason: str, detail: str, text: str | None, length: int, sha256: str,
            count: int = 1, last: int | None = None) -> None:
        """One bad line (or ``count`` identical ones from ``line`` to ``last``); line 0 is the whole file."""
        if line > 0:
            self.lines += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count
        key = (reason, detail, sha256, length)
        row = self.rows.get(key)
        last = line if last is None else last
        if row is None:
            self.rows[key] = [line, last, count, text]
            self.text_bytes += _text_size(text, detail)
            if len(self.rows) >= self.limits.max_rows or self.text_bytes >= self.limits.max_text_bytes:
                self._flush()
        else:
            row[0], row[1], row[2] = min(row[0], line), max(row[1], last), row[2] + count

    def add_line(self, line: int, reason: str, detail: str, data: bytes | lines.OverlongLine) -> None:
        """One bad line given by its raw bytes (text, length and sha256 are taken from them)."""
        self.add(line, reason, detail, *self.raw_fields(data))

    def raw_fields(self, data: bytes | lines.OverlongLine) -> tuple[str | None, int, str]:
        """``parse.raw_fields``, remembered for short lines: repeated bad lines (the cheap way to
        make millions) are decoded and hashed once. Every table's text is masked here (``parse.mask_line``:
        no email or name, whatever the table, review rev25h), the one way a line's text enters the sink:
        every row of its quarantine, whatever its reason, holds the masked text."""
        if type(data) is not bytes or len(data) > _MEMO_LINE_BYTES:
            return rp.raw_fields(data, self.table)
        fields = self._memo.get(data)
        if fields is None:
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            fields = self._memo[data] = rp.raw_fields(data, self.table)
        return fields

    def merge(self, other: "QuarantineSink") -> None:
        """Take over ``other``'s rows, spill files and counts (another part of the same raw file)."""
        lines, reasons = self.lines, dict(self.reasons)
        for (reason, detail, sha256, length), (first, last, count, text) in other.rows.items():
            self.add(first, reason, detail, text, length, sha256, count, last)
        self.spills += other.spills
        self.lines = lines + other.lines
        self.reasons = {r: reasons.get(r, 0) + other.reasons.get(r, 0) for r in sorted({*reasons, *other.reasons})}

    def close(self) -> None:
        """Drop the line memo (before the sink is pickled to the parent or combined)."""
        self._memo = {}

    def _flush(self) -> None:
        if self.spill_dir is None:
            raise RuntimeError(f"quarantine of {self.file} outgrew memory and no spill folder was given")
        rows = sorted((key + tuple(value) for key, value in self.rows.items()), key=_key)
        self.spills.append(_write_run(rows, self.spill_dir, f"{self.table}-"))
        self.rows.clear()
        self.text_bytes = 0

    def rows_in_line_order(self) -> Iterator[tuple]:
        """The combined rows (memory and spilled runs together), sorted by line_number."""
        if not self.spills:
            yield from sorted((key + tuple(value) for key, value in self.rows.items()), key=_line)
            return
        if self.rows:
            self._flush()
        folder = self.spill_dir
        combined = _merged(self.spills, _key, folder, combine=True)
        self.spills = []
        yield from _sorted_by_line(combined, folder, self.limits)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The combined rows as record batches of the quarantine columns, sorted by line_number."""
        chunk: list[tuple] = []
        for row in self.rows_in_line_order():
            chunk.append(row)
            if len(chunk) >= RUN_BATCH_ROWS:
                yield _batch(chunk).select(list(_ROW_COLUMNS))
                chunk = []
        if chunk:
            yield _batch(chunk).select(list(_ROW_COLUMNS))


def _batch(rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows))
    return pa.record_batch([pa.array(column, field.type) for column, field in zip(columns, _RUN_SCHEMA)],
                           schema=_RUN_SCHEMA)


def _write_run(rows: Iterable[tuple], folder: Path, prefix: str = "run-") -> Path:
    """Write ``rows`` (already in the run's order) as an Arrow IPC file of small batches."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=prefix, suffix=".arrow", delete=False)
    handle.close()
    path = Path(handle.name)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _RUN_SCHEMA) as writer:
        chunk: list[tuple] = []
        text = 0
        for row in rows:
            chunk.append(row)
            text += _text_size(row[7], row[1])
            if len(chunk) >= RUN_BATCH_ROWS or text >= RUN_BATCH_TEXT_BYTES:
                writer.write_batch(_batch(chunk))
                chunk, text = [], 0
        if chunk:
            writer.write_batch(_batch(chunk))
    return path


def _read_run(path: Path) -> Iterator[tuple]:
    """The rows of a run file, one batch in memory at a time; the file is deleted once read."""
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            yield from zip(*(column.to_pylist() for column in batch.columns))
    path.unlink()


def _merge_once(paths: list[Path], order: Callable[[tuple], object], combine: bool) -> Iterator[tuple]:
    stream = heapq.merge(*(_read_run(path) for path in paths), key=order)
    if not combine:
        yield from stream
        return
    current = None
    for row in stream:
        if current is not None and row[:4] == current[:4]:
            current = (*current[:4], min(current[4], row[4]), max(current[5], row[5]), current[6] + row[6], current[7])
            continue
        if current is not None:
            yield current
        current = row
    if current is not None:
        yield current


def _merged(paths: list[Path], order: Callable[[tuple], object], folder: Path, combine: bool) -> Iterator[tuple]:
    """Rows of runs sorted by ``order``, merged (rows of one key combined when ``combine``); at most
    ``FAN_IN`` runs are open at once, more are merged into intermediate runs first."""
    paths = list(paths)
    while len(paths) > FAN_IN:
        paths = [_write_run(_merge_once(paths[i:i + FAN_IN], order, combine), folder)
                 for i in range(0, len(paths), FAN_IN)]
    yield from _merge_once(paths, order, combine)


def _sorted_by_line(rows: Iterable[tuple], folder: Path, limits: SinkLimits) -> Iterator[tuple]:
    """``rows`` in line_number order: sorted chunks of bounded size spilled as runs, then merged."""
    runs: list[Path] = []
    chunk: list[tuple] = []
    text = 0
    for row in rows:
        chunk.append(row)
        text += _text_size(row[7], row[1])
        if len(chunk) >= limits.sort_rows or text >= limits.sort_text_bytes:
            chunk.sort(key=_line)
            runs.append(_write_run(chunk, folder))
            chunk, text = [], 0
    chunk.sort(key=_line)
    if not runs:
        yield from chunk
        return
    if chunk:
        runs.append(_write_run(chunk, folder))
    yield from _merged(runs, _line, folder, combine=False)


def _row_groups(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into row groups of at most ROW_GROUP_ROWS rows and about
    ROW_GROUP_TEXT_BYTES of raw_text and detail, decided row by row (so the cuts depend on the rows only)."""
    pending: list[pa.Table] = []
    rows = 0
    text = 0
    for table in tables:
        lengths = pc.add(pc.fill_null(pc.binary_length(table.column("raw_text")), 0),
                         pc.fill_null(pc.binary_length(table.column("detail")), 0)).to_numpy(zero_copy_only=False)
        start = 0
        while start < table.num_rows:
            cumulative = text + np.cumsum(lengths[start:], dtype=np.int64)
            by_bytes = int(np.searchsorted(cumulative, ROW_GROUP_TEXT_BYTES, side="left")) + 1
            take = min(ROW_GROUP_ROWS - rows, by_bytes, table.num_rows - start)
            pending.append(table.slice(start, take))
            rows += take
            text = int(cumulative[take - 1])
            start += take
            if rows == ROW_GROUP_ROWS or text >= ROW_GROUP_TEXT_BYTES:
                yield pa.concat_tables(pending)
                pending, rows, text = [], 0, 0
    if pending:
        yield pa.concat_tables(pending)


def _stamped(sinks: list[QuarantineSink], day: dt.date, schema: pa.Schema) -> Iterator[pa.Table]:
    for sink in sorted(sinks, key=lambda s: s.table):
        for batch in sink.batches():
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch])
            n = table.num_rows
            table = table.append_column("table", pa.repeat(pa.scalar(sink.table, pa.string()), n))
            table = table.append_column("file", pa.repeat(pa.scalar(sink.file, pa.string()), n))
            table = table.append_column("dt", pa.repeat(pa.scalar(day, pa.date32()), n))
            yield cast_to_schema(table, schema)


def write_quarantine(sinks: list[QuarantineSink], day: dt.date, path: Path) -> int:
    """Write the quarantine partition of ``day`` from every table's sink to ``path``; returns its rows."""
    schema = get_schema("quarantine")
    written = 0
    with pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as writer:
        for group in _row_groups(_stamped(sinks, day, schema)):
            writer.write_table(group, row_group_size=group.num_rows)
            written += group.num_rows
    return written
