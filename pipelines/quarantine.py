"""The ingest's quarantine rows, streamed: identical bad lines collapse into one row, batches spill to disk.

A ``QuarantineSink`` takes the bad lines of one raw file (one table of one day). Lines with the same
(reason, detail, raw_sha256, raw_length) are one quarantine row: ``line_number`` is the first such
line, ``last_line_number`` the last, ``line_count`` how many (a million blank lines are one row, not
a million). The sink holds at most ``SinkLimits.max_rows`` collapsed rows and ``max_text_bytes`` of
raw text in memory; past that it appends them to a spill file (Parquet, one row group per flush,
inside the data home's ``cache/``) and starts afresh. ``write_quarantine`` combines each sink's rows:
in memory when nothing spilled, else with DuckDB (a GROUP BY under a memory limit, spilling to disk
itself), and writes them sorted by (table, line_number) in row groups cut by row count and raw-text
bytes, so the file's bytes never depend on where the batches were cut or whether anything spilled.
Memory is flat in the number of bad lines.
"""
from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import rawparse as rp
from pipelines.storage import PARQUET_OPTIONS, cast_to_schema
from schemas import get_schema

_SPILL_SCHEMA = pa.schema([
    pa.field("line_number", pa.int64()), pa.field("last_line_number", pa.int64()), pa.field("line_count", pa.int64()),
    pa.field("reason", pa.string()), pa.field("detail", pa.string()), pa.field("raw_text", pa.string()),
    pa.field("raw_length", pa.int64()), pa.field("raw_sha256", pa.string()),
])
_COMBINE_SQL = """
SELECT min(line_number) AS line_number, max(last_line_number) AS last_line_number,
       sum(line_count)::BIGINT AS line_count, reason, detail, min(raw_text) AS raw_text, raw_length, raw_sha256
FROM read_parquet({files})
GROUP BY reason, detail, raw_sha256, raw_length
ORDER BY line_number
"""
_MEMO_LINE_BYTES = 512
_MEMO_ENTRIES = 1024
ROW_GROUP_ROWS = 65_536          # rows per Parquet row group of the quarantine file, at most
ROW_GROUP_TEXT_BYTES = 32 << 20  # raw_text bytes per row group, at most (one row may pass it)


@dataclass(frozen=True)
class SinkLimits:
    """How much of the quarantine a sink keeps in memory before spilling (and DuckDB's budget)."""

    max_rows: int = 20_000
    max_text_bytes: int = 16 << 20
    duckdb_memory: str = "128MB"
    fetch_rows: int = 512


class QuarantineSink:
    """Collapsed quarantine rows of one raw file; counts every line it is given, per reason."""

    def __init__(self, table: str, file: str, spill_dir: Path | None, limits: SinkLimits = SinkLimits()):
        self.table = table
        self.file = file
        self.spill_dir = spill_dir
        self.limits = limits
        self.rows: dict[tuple, list] = {}   # (reason, detail, sha256, length) -> [first, last, count, text]
        self.text_bytes = 0
        self.spills: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
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
            self.text_bytes += len(text) if text else 0
            if len(self.rows) >= self.limits.max_rows or self.text_bytes >= self.limits.max_text_bytes:
                self._flush()
        else:
            row[0], row[1], row[2] = min(row[0], line), max(row[1], last), row[2] + count

    def add_line(self, line: int, reason: str, detail: str, data: bytes | rp.OverlongLine) -> None:
        """One bad line given by its raw bytes (text, length and sha256 are taken from them)."""
        if type(data) is bytes and len(data) <= _MEMO_LINE_BYTES:
            # repeated short bad lines (the cheap way to make millions) are hashed once
            fields = self._memo.get(data)
            if fields is None:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()
                fields = self._memo[data] = rp.raw_fields(data)
        else:
            fields = rp.raw_fields(data)
        self.add(line, reason, detail, *fields)

    def merge(self, other: "QuarantineSink") -> None:
        """Take over ``other``'s rows, spill files and counts (another part of the same raw file)."""
        lines, reasons = self.lines, dict(self.reasons)
        for (reason, detail, sha256, length), (first, last, count, text) in other.rows.items():
            self.add(first, reason, detail, text, length, sha256, count, last)
        self.spills += other.spills
        self.lines = lines + other.lines
        self.reasons = {r: reasons.get(r, 0) + other.reasons.get(r, 0) for r in sorted({*reasons, *other.reasons})}

    def close(self) -> None:
        """Close the spill file being written (before the sink is pickled or combined)."""
        self._memo = {}
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _table(self) -> pa.Table:
        items = sorted(self.rows.items(), key=lambda item: item[1][0])
        return pa.table({
            "line_number": pa.array([v[0] for _, v in items], pa.int64()),
            "last_line_number": pa.array([v[1] for _, v in items], pa.int64()),
            "line_count": pa.array([v[2] for _, v in items], pa.int64()),
            "reason": pa.array([k[0] for k, _ in items], pa.string()),
            "detail": pa.array([k[1] for k, _ in items], pa.string()),
            "raw_text": pa.array([v[3] for _, v in items], pa.string()),
            "raw_length": pa.array([k[3] for k, _ in items], pa.int64()),
            "raw_sha256": pa.array([k[2] for k, _ in items], pa.string()),
        }, schema=_SPILL_SCHEMA)

    def _flush(self) -> None:
        if self.spill_dir is None:
            raise RuntimeError(f"quarantine of {self.file} outgrew memory and no spill folder was given")
        if self._writer is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(dir=self.spill_dir, prefix=f"{self.table}-", suffix=".parquet",
                                                 delete=False)
            handle.close()
            self.spills.append(Path(handle.name))
            self._writer = pq.ParquetWriter(handle.name, _SPILL_SCHEMA, compression="lz4")
        self._writer.write_table(self._table())
        self.rows.clear()
        self.text_bytes = 0

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The combined rows, sorted by line_number (spill files and memory together)."""
        if not self.spills:
            yield from self._table().to_batches()
            return
        if self.rows:
            self._flush()
        self.close()
        con = duckdb.connect(":memory:")
        try:
            scratch = self.spills[0].parent / "duckdb"
            con.execute(f"SET memory_limit = '{self.limits.duckdb_memory}'")
            con.execute("SET threads = 1")
            con.execute("SET enable_progress_bar = false")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"SET temp_directory = '{_sql_text(str(scratch))}'")
            files = "[" + ", ".join(f"'{_sql_text(str(p))}'" for p in self.spills) + "]"
            yield from con.sql(_COMBINE_SQL.format(files=files)).to_arrow_reader(self.limits.fetch_rows)
        finally:
            con.close()


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _row_groups(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into row groups of at most ROW_GROUP_ROWS rows and about
    ROW_GROUP_TEXT_BYTES of raw_text, decided row by row (so the cuts depend on the rows only)."""
    pending: list[pa.Table] = []
    rows = 0
    text = 0
    for table in tables:
        lengths = pc.fill_null(pc.binary_length(table.column("raw_text")), 0).to_numpy(zero_copy_only=False)
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
