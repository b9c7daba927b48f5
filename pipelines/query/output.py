"""How ``pickapic query`` writes a result: a terminal table (first rows, the rest counted), CSV, JSON lines
or Parquet, batch by batch, so memory stays flat in the number of rows."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS

FORMATS = ("table", "csv", "json", "parquet")
TABLE_MAX_ROWS = 1000
TABLE_MAX_CHARS = 4_000_000   # characters a table prints in all, laid out (the rows that fit; at least one)
TABLE_MAX_CELLS = 50_000      # cells a table lays out (rich takes ~55 us a cell, whatever its length)
TABLE_MAX_CELL = 1000         # characters of one value a table shows (csv, json and parquet write every value whole)
_CONVERT_ROWS = 32            # a table's rows are made text this many at a time, until the budget is spent


@dataclass(frozen=True)
class Written:
    """What :func:`write_result` wrote: the result's rows, and how many of them the output holds (a table
    shows its first rows; every other format holds them all); a table may also show only its first columns."""

    rows: int
    shown: int
    columns: int = dataclasses.field(default=0, compare=False)         # the result's columns
    columns_shown: int = dataclasses.field(default=0, compare=False)   # of them, those the output holds


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
                 to_terminal: bool = False) -> Written:
    """Write batches as an aligned table, CSV, JSON (an array of objects) or Parquet; returns the counts."""
    width = len(schema)
    if fmt == "parquet":
        rows = 0
        with pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        return Written(rows, rows, width, width)
    if fmt == "table":
        columns = table_columns(schema.names)
        limit = table_row_limit(columns)
        kept, rows = [], 0
        for batch in batches:  # keep the first rows of the columns shown, cut to what a table shows; count the rest
            if rows < limit:
                part = pa.Table.from_batches([batch.slice(0, limit - rows)], schema=schema)
                kept.append(cut_for_table(part.select(list(range(columns)))))
            rows += batch.num_rows
        table = pa.concat_tables(kept) if kept else cut_for_table(schema.empty_table().select(list(range(columns))))
        text, shown = _render(table, to_terminal, total_rows=rows, total_columns=width)
        sink.write(text.encode("utf-8"))
        return Written(rows, shown, width, columns)
    rows = _write_csv(schema, batches, sink) if fmt == "csv" else _write_json(schema, batches, sink)
    return Written(rows, rows, width, width)


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


def _write_json(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    """``json.dumps(rows, indent=1)``, written one row at a time; refuses (ValueError) duplicate column names,
    which a JSON object cannot hold (the last would silently win)."""
    seen: set[str] = set()
    twice = sorted({name for name in schema.names if name in seen or seen.add(name)})
    if twice:
        raise ValueError(f"--format json: the result has more than one column named {', '.join(map(repr, twice))}, "
                         "which a JSON object cannot hold; give each column its own name (... AS name)")
    rows = 0
    for batch in batches:
        for row in _rows(batch):
            text = json.dumps(row, ensure_ascii=False, default=_json_default, indent=1)
            sink.write((("[\n" if rows == 0 else ",\n") + " " + text.replace("\n", "\n ")).encode("utf-8"))
            rows += 1
    sink.write(b"[]\n" if rows == 0 else b"\n]\n")
    return rows


def table_row_limit(columns: int, max_rows: int = TABLE_MAX_ROWS) -> int:
    """Rows a table of ``columns`` columns lays out at most: ``max_rows``, fewer where they would pass
    ``TABLE_MAX_CELLS`` cells (at least one)."""
    return min(max_rows, max(1, TABLE_MAX_CELLS // max(1, columns)))


def table_columns(names: list[str]) -> int:
    """How many of the first columns a table shows: all of them, unless the header lines as printed (the
    names, cut to ``TABLE_MAX_CELL`` characters, three borders and one row) would pass ``TABLE_MAX_CHARS``, or
    one row of them ``TABLE_MAX_CELLS`` (at least one column). A PIVOT makes a column per value."""
    width = 2
    for k, name in enumerate(names):
        width += _width(_cut_text(name)) + 3
        if k and (5 * width > TABLE_MAX_CHARS or k >= TABLE_MAX_CELLS):
            return k
    return len(names)


def render_table(table: pa.Table, to_terminal: bool = False, max_rows: int = TABLE_MAX_ROWS,
                 total_rows: int | None = None) -> str:
    """An aligned text table (rich): the first rows, then the row count (``total_rows`` if given) and how many
    are shown. The rows shown are at most ``max_rows``, at most ``TABLE_MAX_CELLS`` cells (rich lays a cell out
    in ~55 us: 1,000 rows of 300 integers took 17 s), and as many as fit in ``TABLE_MAX_CHARS`` characters as
    printed: every row is as wide as the widest value or column name of each column (a wide result of 60 columns
    of 1,000 characters took rich 10-20 s to lay out as 64 MB of text); of a result with very many columns,
    the first columns whose header fits (:func:`table_columns`). A value shows its first ``TABLE_MAX_CELL``
    characters; strings and binaries are cut in Arrow, at any depth, before they become Python."""
    columns = table_columns(table.column_names)
    shown = table.select(list(range(columns))).slice(0, table_row_limit(columns, max_rows))
    return _render(cut_for_table(shown), to_terminal, total_rows=table.num_rows if total_rows is None else total_rows,
                   total_columns=table.num_columns)[0]


def cut_for_table(table: pa.Table) -> pa.Table:
    """``table`` with every value cut to what a table cell can show of it, in new buffers (the batch it came
    from need not be kept). A string longer than ``TABLE_MAX_CELL`` characters becomes its shown text, note
    included; inside lists, structs and maps strings keep ``TABLE_MAX_CELL + 1`` characters, binaries
    everywhere ``TABLE_MAX_CELL + 1`` bytes and lists ``TABLE_MAX_CELL`` items (what is cut is longer than
    a cell anyway, so the cell's text is the same); other values are copied as they are."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        chunks = [_decoded(chunk) for chunk in column.chunks]
        kind = chunks[0].type if chunks else field.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns.append(_cut_strings(pa.chunked_array(chunks, kind)))
        else:
            cut = [_cut_values(chunk) for chunk in chunks]
            columns.append(pa.chunked_array(cut, cut[0].type if cut else kind))
    return pa.table(columns, names=table.column_names)


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _cut_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings as a table cell shows them: as they are up to ``TABLE_MAX_CELL`` characters, else the first
    ``TABLE_MAX_CELL`` and how many there are (the text :func:`_cut_text` gives); nulls stay null."""
    head = pc.utf8_slice_codeunits(column, 0, TABLE_MAX_CELL)        # the whole value where it is short
    head = pa.chunked_array([chunk.cast(pa.string()) for chunk in head.chunks], pa.string())
    lengths = pc.utf8_length(column)
    long = pc.fill_null(pc.greater(lengths, TABLE_MAX_CELL), False)
    if pc.any(long).as_py():
        noted = pc.binary_join_element_wise(head, "... (", pc.cast(lengths, pa.string()),
                                            " characters; --format csv|json|parquet for all)", "")
        head = pc.if_else(long, noted, head)
    return head


def _cut_values(array: pa.Array) -> pa.Array:
    """``array`` with every string and binary in it, at any depth, cut to ``TABLE_MAX_CELL + 1`` characters or
    bytes and every list to ``TABLE_MAX_CELL`` items, in new buffers."""
    array = _decoded(array)
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.utf8_slice_codeunits(array, 0, TABLE_MAX_CELL + 1)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pc.binary_slice(array, 0, TABLE_MAX_CELL + 1)
    mask = array.is_null() if array.null_count else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        sliced = pc.list_slice(array, 0, TABLE_MAX_CELL)
        flat = sliced.flatten()
        offsets = _rebased(sliced.offsets, np.int32 if pa.types.is_list(kind) else np.int64)
        maker = pa.ListArray if pa.types.is_list(kind) else pa.LargeListArray
        return maker.from_arrays(offsets, _cut_values(flat), mask=mask)
    if pa.types.is_fixed_size_list(kind):
        values = array.values.slice(array.offset * kind.list_size, len(array) * kind.list_size)
        return pa.FixedSizeListArray.from_arrays(_cut_values(values), kind.list_size, mask=mask)
    if pa.types.is_struct(kind):
        children = [_cut_values(child) for child in array.flatten()]
        return pa.StructArray.from_arrays(children, fields=[kind.field(i) for i in range(kind.num_fields)],
                                          mask=mask) if children else array
    if pa.types.is_map(kind):
        bounds = array.offsets.to_numpy()
        start, end = int(bounds[0]), int(bounds[-1])     # the entries of the values shown
        keys, items = array.keys.slice(start, end - start), array.items.slice(start, end - start)
        return pa.MapArray.from_arrays(_rebased(array.offsets, np.int32), _cut_values(keys), _cut_values(items),
                                       mask=mask)
    try:
        return pc.take(array, pa.array(np.arange(len(array), dtype=np.int64)))    # its own, compact buffers
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return array


def _rebased(offsets: pa.Array, dtype) -> pa.Array:
    """A list array's offsets starting at 0 (those of its flattened values)."""
    values = offsets.to_numpy()
    return pa.array((values - values[0]).astype(dtype))


def _render(table: pa.Table, to_terminal: bool, total_rows: int, total_columns: int) -> tuple[str, int]:
    """The table's text and the rows it shows (``table``: the columns shown, cut by :func:`cut_for_table`, at
    most :func:`table_row_limit` rows)."""
    from rich.console import Console
    from rich.table import Table

    names = [_cut_text(name) for name in table.column_names]   # by position: duplicate names are kept
    widths = [_width(name) for name in names]
    cells: list[list[str]] = []
    lines = 0
    done = False
    for start in range(0, table.num_rows, _CONVERT_ROWS):
        part = table.slice(start, _CONVERT_ROWS)
        columns = [_texts(field, column) for field, column in zip(table.schema, part.columns)]
        for texts in zip(*columns):
            wider = [max(w, _width(t)) for w, t in zip(widths, texts)]
            height = max([t.count("\n") + 1 for t in texts])
            # as printed: every line as wide as the widest value of each column (3 characters between and
            # around columns), the header and 3 border lines besides the rows'
            if cells and (lines + height + 4) * (sum(wider) + 3 * len(wider) + 2) > TABLE_MAX_CHARS:
                done = True
                break
            cells.append(list(texts))
            widths, lines = wider, lines + height
        if done:
            break
    out = Table(show_lines=False)
    for i, name in enumerate(names):
        kind = table.schema.field(i).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        out.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        out.add_row(*row)
    width = None if to_terminal else max(40, sum(widths) + 3 * len(widths) + 4)
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                      highlight=False, emoji=False, markup=False)
    console.print(out)
    # the row count on its own line: as a caption rich would wrap it to the width of a narrow table
    shown = len(cells) if table.num_columns else total_rows     # rows of no columns take no characters
    return console.file.getvalue() + _row_note(total_rows, shown, table.num_columns, total_columns) + "\n", shown


def _width(text: str) -> int:
    """The columns ``text`` takes in a table cell as rich prints it: its widest line, tabs expanded, East Asian
    wide characters counted twice."""
    if text.isascii() and "\n" not in text and "\t" not in text:
        return len(text)
    from rich.cells import cell_len

    return max(cell_len(line.expandtabs(8)) for line in text.split("\n"))


def _texts(field: pa.Field, column: pa.ChunkedArray) -> list[str]:
    """Each value of a cut column (:func:`cut_for_table`) as its cell's text."""
    kind = field.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ["NULL" if value is None else value for value in column.to_pylist()]
    return [_cell(value) for value in _to_python(column)]


def _row_note(total: int, shown: int, columns: int = 0, total_columns: int = 0) -> str:
    note = f"{total} row" + ("" if total == 1 else "s")
    if shown < total:
        note += f", first {shown} shown"
    if columns < total_columns:
        note += f"; first {columns} of {total_columns} columns shown"
    if shown < total or columns < total_columns:
        note += " (use --format csv|json|parquet for all)"
    return note


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=lambda value: _json_default(value))


def _cut_text(text: str) -> str:
    if len(text) > TABLE_MAX_CELL:
        return f"{text[:TABLE_MAX_CELL]}... ({len(text)} characters; --format csv|json|parquet for all)"
    return text


def _cell(value: Any) -> str:
    """A value's cell text (at most ``TABLE_MAX_CELL`` characters of it). A binary holds at most its first
    ``TABLE_MAX_CELL + 1`` bytes here (:func:`cut_for_table`); a list or a struct is written as JSON up to the
    cut, not whole."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bytes):
        text = str(value)
        if len(value) > TABLE_MAX_CELL:
            return f"{text[:TABLE_MAX_CELL]}... (more than {TABLE_MAX_CELL} bytes; --format csv|json|parquet for all)"
        if len(text) > TABLE_MAX_CELL:
            return f"{text[:TABLE_MAX_CELL]}... ({len(value)} bytes; --format csv|json|parquet for all)"
        return text
    if isinstance(value, (list, dict)):     # not a tuple: an interval (MonthDayNano) shows as itself
        pieces, length = [], 0
        for piece in _ENCODER.iterencode(value):
            pieces.append(piece)
            length += len(piece)
            if length > TABLE_MAX_CELL:
                return f"{''.join(pieces)[:TABLE_MAX_CELL]}... (more than {TABLE_MAX_CELL} characters; " \
                       "--format csv|json|parquet for all)"
        return "".join(pieces)
    return _cut_text(str(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _flatten_nested(table: pa.Table) -> pa.Table:
    """CSV has no nested types: lists, structs and maps become JSON strings; a date / timestamp column holding
    values Python cannot represent becomes text (Arrow would write ``<value out of range: N>``)."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if _beyond_python(column):
            text = pc.cast(column, pa.string()).to_pylist()
            column = pa.array([v if isinstance(v, str) else t for v, t in zip(_to_python(column), text)], pa.string())
        elif pa.types.is_nested(field.type):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=_json_default)
                               for v in _to_python(column)], pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _rows(batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """``batch.to_pylist()``, with dates and timestamps Python cannot hold as text (see :func:`_to_python`)."""
    columns = [_to_python(column) for column in batch.columns]
    for values in zip(*columns):
        yield dict(zip(batch.schema.names, values))


def _to_python(array: pa.Array | pa.ChunkedArray) -> list:
    """``array.to_pylist()``; dates and timestamps Python cannot hold (DuckDB's ``infinity``, years past 9999)
    become text, also inside lists and structs: ``infinity`` / ``-infinity`` or the proleptic Gregorian date."""
    try:
        return array.to_pylist()
    except (OverflowError, ValueError):
        pass
    if isinstance(array, pa.ChunkedArray):
        return [value for chunk in array.chunks for value in _to_python(chunk)]
    kind, valid = array.type, array.is_valid().to_pylist()
    if pa.types.is_date32(kind) or pa.types.is_date64(kind) or pa.types.is_timestamp(kind):
        raw = array.view(pa.int32() if pa.types.is_date32(kind) else pa.int64()).to_pylist()
        return [_temporal(array[i], raw[i], kind) if valid[i] else None for i in range(len(array))]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        values, offsets = _to_python(array.values), array.offsets.to_pylist()
        if pa.types.is_map(kind):   # as to_pylist: a list of (key, value) pairs
            values = [(entry["key"], entry["value"]) for entry in values]
        return [values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(array))]
    if pa.types.is_struct(kind):
        fields = [_to_python(child) for child in array.flatten()]
        names = [kind.field(i).name for i in range(kind.num_fields)]
        return [dict(zip(names, values)) if valid[i] else None for i, values in enumerate(zip(*fields))] \
            if fields else [{} if ok else None for ok in valid]
    return [_scalar(array[i]) for i in range(len(array))]   # fixed-size lists, unions: value by value


_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896   # 0001-01-01 and 9999-12-31, in days since 1970-01-01


def _beyond_python(column: pa.Array | pa.ChunkedArray) -> bool:
    """True for a date / timestamp column holding a value outside Python's years 1-9999 (DuckDB's infinity)."""
    kind = column.type
    if not (pa.types.is_date(kind) or pa.types.is_timestamp(kind)) or len(column) == column.null_count:
        return False
    per_day = 1 if pa.types.is_date32(kind) else _PER_DAY["ms" if pa.types.is_date64(kind) else kind.unit]
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    raw = [chunk.view(pa.int32() if pa.types.is_date32(kind) else pa.int64()) for chunk in chunks]
    bounds = pc.min_max(pa.chunked_array(raw)).as_py()
    return bounds["min"] < _FIRST_DAY * per_day or bounds["max"] >= (_LAST_DAY + 1) * per_day


def _scalar(scalar: pa.Scalar) -> Any:
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        return f"<a {scalar.type} value Python cannot represent>"


_INFINITE = {2**63 - 1: "infinity", -(2**63 - 1): "-infinity"}   # DuckDB's infinite timestamps (date32: 2**31 - 1)
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _temporal(scalar: pa.Scalar, raw: int, kind: pa.DataType) -> Any:
    """A date or timestamp as Python, or as text when Python cannot hold it."""
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        pass
    if pa.types.is_date32(kind):
        return {2**31 - 1: "infinity", -(2**31 - 1): "-infinity"}.get(raw) or _civil_text(raw)
    if raw in _INFINITE:
        return _INFINITE[raw]
    unit = "ms" if pa.types.is_date64(kind) else kind.unit
    days, rest = divmod(raw, _PER_DAY[unit])
    if pa.types.is_date64(kind):
        return _civil_text(days)
    per_second = _PER_DAY[unit] // 86_400
    seconds, fraction = divmod(rest, per_second)
    text = f"{_civil_text(days)} {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if fraction:
        text += "." + f"{fraction:0{len(str(per_second)) - 1}d}".rstrip("0")
    return text


def _civil_text(days: int) -> str:
    """Days since 1970-01-01 as a proleptic Gregorian YYYY-MM-DD, for any year (H. Hinnant's civil_from_days)."""
    era, day_of_era = divmod(days + 719_468, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted + 2) // 5 + 1
    month = shifted + 3 if shifted < 10 else shifted - 9
    year = year_of_era + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}"
