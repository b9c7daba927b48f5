"""How ``pickapic query`` writes a result: a terminal table (first rows, the rest counted), CSV, JSON lines
or Parquet, batch by batch, so memory stays flat in the number of rows."""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, BinaryIO, Iterator, TextIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS

FORMATS = ("table", "csv", "json", "parquet")
TABLE_MAX_ROWS = 1000


def silence_closed_pipe(stdout: TextIO) -> None:
    """Point a closed pipe's stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):  # a StringIO has no descriptor
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())


class TextSink(io.RawIOBase):
    """A binary sink writing UTF-8 text to a text stream (stdout); writes always end on a character."""

    def __init__(self, text: TextIO) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._text.write(bytes(data).decode("utf-8"))
        return len(data)


def write_result(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, sink: BinaryIO,
                 to_terminal: bool = False) -> int:
    """Write batches as an aligned table, CSV, JSON (an array of objects) or Parquet; returns the row count."""
    if fmt == "parquet":
        rows = 0
        with pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    if fmt == "table":
        shown, rows = [], 0
        for batch in batches:  # keep the first rows, count the rest without holding them
            if rows < TABLE_MAX_ROWS:
                shown.append(batch.slice(0, TABLE_MAX_ROWS - rows))
            rows += batch.num_rows
        table = pa.Table.from_batches(shown, schema=schema)
        sink.write(render_table(table, to_terminal, total_rows=rows).encode("utf-8"))
        return rows
    if fmt == "csv":
        return _write_csv(schema, batches, sink)
    return _write_json(batches, sink)


def _write_csv(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    rows = 0
    for batch in batches:
        buffer = io.BytesIO()  # one complete CSV chunk per batch: text never splits inside a character
        pacsv.write_csv(_flatten_nested(pa.Table.from_batches([batch])), buffer,
                        pacsv.WriteOptions(include_header=rows == 0 and batch.num_rows > 0))
        if batch.num_rows:
            sink.write(buffer.getvalue())
        rows += batch.num_rows
    if rows == 0:
        buffer = io.BytesIO()
        pacsv.write_csv(_flatten_nested(schema.empty_table()), buffer)
        sink.write(buffer.getvalue())
    return rows


def _write_json(batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    """``json.dumps(rows, indent=1)``, written one row at a time."""
    rows = 0
    for batch in batches:
        for row in batch.to_pylist():
            text = json.dumps(row, ensure_ascii=False, default=_json_default, indent=1)
            sink.write((("[\n" if rows == 0 else ",\n") + " " + text.replace("\n", "\n ")).encode("utf-8"))
            rows += 1
    sink.write(b"[]\n" if rows == 0 else b"\n]\n")
    return rows


def render_table(table: pa.Table, to_terminal: bool = False, max_rows: int = TABLE_MAX_ROWS,
                 total_rows: int | None = None) -> str:
    """An aligned text table (rich), at most ``max_rows`` rows, then the row count (``total_rows`` if given)."""
    from rich.console import Console
    from rich.table import Table

    shown = table.slice(0, max_rows)
    cells = [[_cell(v) for v in row.values()] for row in shown.to_pylist()]
    total = table.num_rows if total_rows is None else total_rows
    out = Table(show_lines=False)
    for i, name in enumerate(table.column_names):
        kind = table.schema.field(i).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        out.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        out.add_row(*row)
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(table.column_names)]
    width = None if to_terminal else max(40, sum(widths) + 3 * len(widths) + 4)
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                      highlight=False, emoji=False, markup=False)
    console.print(out)
    # the row count on its own line: as a caption rich would wrap it to the width of a narrow table
    return console.file.getvalue() + _row_note(total, shown.num_rows) + "\n"


def _row_note(total: int, shown: int) -> str:
    if shown < total:
        return f"{total} rows, first {shown} shown (use --format csv|json|parquet for all)"
    return f"{total} row" + ("" if total == 1 else "s")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _flatten_nested(table: pa.Table) -> pa.Table:
    """CSV has no nested types: lists, structs and maps become JSON strings."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_nested(field.type):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=_json_default)
                               for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)
