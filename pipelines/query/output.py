"""How ``pickapic query`` writes a result: a terminal table (first rows, the rest counted), CSV, JSON lines
or Parquet, batch by batch, so memory stays flat in the number of rows."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, TextIO

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
TABLE_MAX_LINES = 20_000      # lines a table prints (rich takes ~21 us a line, whatever its length)
TABLE_MAX_CELL = 1000         # characters of one value a table shows (csv, json and parquet write every value whole)
_CONVERT_ROWS = 32            # a table's rows are made text this many at a time, until the budget is spent
_FOR_ALL = "--format csv|json|parquet for all"     # what a cut value's note ends with


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
        _refuse_duplicate_names(schema, "--format parquet", "which Parquet readers (pyarrow, pandas, polars) "
                                "cannot read back")
        texts = _parquet_text_columns(schema)
        target = pa.schema([pa.field(field.name, pa.string()) if i in texts else field
                            for i, field in enumerate(schema)], metadata=schema.metadata)
        rows = 0
        with pq.ParquetWriter(sink, target, **PARQUET_OPTIONS) as writer:
            for batch in batches:
                if texts:
                    written = _as_text(pa.Table.from_batches([batch]), texts)
                    writer.write_table(pa.Table.from_arrays(written.columns, schema=target))
                else:
                    writer.write_batch(batch)
                rows += batch.num_rows
        return Written(rows, rows, width, width)
    if fmt == "table":
        columns = table_columns(schema.names)
        kept, rows = _TableRows(schema, columns), 0
        for batch in batches:  # the first rows' cell texts, until a budget is spent; the rest only counted
            kept.add(batch)
            rows += batch.num_rows
        text, shown, columns = _render(kept, to_terminal, total_rows=rows, total_columns=width)
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
    if rows == 0:   # the header alone (of text columns: an empty table of a UNION cannot be made)
        buffer = io.BytesIO()
        pacsv.write_csv(pa.Table.from_arrays([pa.array([], pa.string())] * len(schema), names=schema.names), buffer)
        sink.write(buffer.getvalue())
    return rows


def _refuse_duplicate_names(schema: pa.Schema, flag: str, why: str) -> None:
    """ValueError where two columns of ``schema`` have the same name (a ``SELECT *`` of a join)."""
    seen: set[str] = set()
    twice = sorted({name for name in schema.names if name in seen or seen.add(name)})
    if twice:
        raise ValueError(f"{flag}: the result has more than one column named {', '.join(map(repr, twice))}, "
                         f"{why}; give each column its own name (... AS name)")


def _write_json(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    """``json.dumps(rows, indent=1)``, written one row at a time; refuses (ValueError) duplicate column names,
    which a JSON object cannot hold (the last would silently win). NaN and infinite numbers, which JSON has no
    word for, are written ``null`` (as JavaScript's JSON.stringify does; review rev27a: bare ``NaN`` made the
    file unreadable to strict parsers)."""
    _refuse_duplicate_names(schema, "--format json", "which a JSON object cannot hold")
    rows = 0
    for batch in batches:
        for row in _rows(batch):
            text = _json_text(row, indent=1)
            sink.write((("[\n" if rows == 0 else ",\n") + " " + text.replace("\n", "\n ")).encode("utf-8"))
            rows += 1
    sink.write(b"[]\n" if rows == 0 else b"\n]\n")
    return rows


def table_row_limit(columns: int, max_rows: int = TABLE_MAX_ROWS) -> int:
    """Rows a table of ``columns`` columns lays out at most: ``max_rows``, fewer where they would pass
    ``TABLE_MAX_CELLS`` cells (at least one)."""
    return min(max_rows, max(1, TABLE_MAX_CELLS // max(1, columns)))


def table_columns(names: list[str]) -> int:
    """How many of the first columns a table may show, by their names: all of them, unless the header lines as
    printed (the names, cut to ``TABLE_MAX_CELL`` characters, three borders and one row) would pass
    ``TABLE_MAX_CHARS``, or one row of them ``TABLE_MAX_CELLS`` (at least one column). A PIVOT makes a column
    per value. :class:`_TableRows` then also counts the first row's values."""
    width, high = 2, 1
    for k, name in enumerate(names):
        cut = _printable(_cut_text(name))
        width += _width(cut) + 3
        high = max(high, _height(cut))
        if k and ((high + 4) * width > TABLE_MAX_CHARS or k >= TABLE_MAX_CELLS):
            return k
    return len(names)


def render_table(table: pa.Table, to_terminal: bool = False, max_rows: int = TABLE_MAX_ROWS,
                 total_rows: int | None = None) -> str:
    """An aligned text table (rich): the first rows, then the row count (``total_rows`` if given) and how many
    are shown. The rows shown are at most ``max_rows``, at most ``TABLE_MAX_CELLS`` cells (rich lays a cell out
    in ~55 us: 1,000 rows of 300 integers took 17 s), and as many as fit in ``TABLE_MAX_CHARS`` characters as
    printed: every row is as wide as the widest value or column name of each column (a wide result of 60 columns
    of 1,000 characters took rich 10-20 s to lay out as 64 MB of text); of a result with very many columns, the
    first columns whose header and first row fit. A cell shows at most ``TABLE_MAX_CELL`` characters of its
    value, and only those are read: strings are cut in Arrow, nested values written as JSON straight from their
    Arrow buffers until the cell is full (:class:`_Node`), never converted to Python whole.
    The table is printed at its own width, also on a terminal (rich would fold wide cells into many lines)."""
    kept = _TableRows(table.schema, table_columns(table.column_names), max_rows)
    for batch in table.to_batches():
        kept.add(batch)
    return _render(kept, to_terminal, total_rows=table.num_rows if total_rows is None else total_rows,
                   total_columns=table.num_columns)[0]


class _TableRows:
    """The cell texts of a result's first rows, for :func:`_render`, and the columns shown: of the first
    ``columns`` (:func:`table_columns`), those whose header and first row fit ``TABLE_MAX_CHARS`` as printed (the
    first row is made text column by column until they do not); then at most ``table_row_limit`` rows, made text
    a few at a time (:data:`_CONVERT_ROWS`, fewer for wide rows) until their cells hold more than
    ``TABLE_MAX_CHARS`` characters (a table prints at least that many). Nothing of a batch is kept but text."""

    def __init__(self, schema: pa.Schema, columns: int, max_rows: int = TABLE_MAX_ROWS) -> None:
        self.names = [_printable(_cut_text(name)) for name in schema.names[:columns]]   # by position: duplicates kept
        self.kinds = [schema.field(i).type for i in range(columns)]
        self.columns = columns
        self.max_rows = max_rows
        self.limit = table_row_limit(columns, max_rows)
        self.rows: list[list[str]] = []
        self.chars = 0

    def add(self, batch: pa.RecordBatch) -> None:
        start = 0
        if not self.rows and batch.num_rows and self.columns:
            self._first_row(batch.slice(0, 1))
            start = 1
        step = max(1, min(_CONVERT_ROWS, TABLE_MAX_CHARS // max(1, self.columns * (TABLE_MAX_CELL + 80))))
        while start < batch.num_rows:
            if len(self.rows) >= self.limit or self.chars > TABLE_MAX_CHARS or not self.columns:
                return
            part = batch.slice(start, min(step, self.limit - len(self.rows)))
            texts = [_column_texts(part.column(i)) for i in range(self.columns)]
            for row in zip(*texts):
                row = [_printable(text) for text in row]
                self.rows.append(row)
                self.chars += sum(map(len, row))
            start += part.num_rows

    def _first_row(self, first: pa.RecordBatch) -> None:
        """The first row's texts, and the columns shown: those whose header lines and first row fit as printed
        (their tallest name, the row's tallest value and three borders, at the width of both; at least one)."""
        texts: list[str] = []
        width, header, row = 2, 1, 1
        for k in range(self.columns):
            text = _printable(_column_texts(first.column(k))[0])
            (columns, extra), (text_columns, text_extra) = _extent(self.names[k]), _extent(text)
            width += max(columns, text_columns) + max(extra, text_extra) + 3      # as _render counts a column
            header, row = max(header, _height(self.names[k])), max(row, _height(text))
            if k and (header + row + 3) * width > TABLE_MAX_CHARS:
                break
            texts.append(text)
        self.columns = len(texts)
        self.names, self.kinds = self.names[:self.columns], self.kinds[:self.columns]
        self.limit = table_row_limit(self.columns, self.max_rows)
        self.rows.append(texts)
        self.chars += sum(map(len, texts))


def _column_texts(array: pa.Array) -> list[str]:
    """Each value of ``array`` as its table cell's text."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ["NULL" if value is None else value for value in _cut_strings(pa.chunked_array([array])).to_pylist()]
    if (pa.types.is_nested(kind) or pa.types.is_dictionary(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        node = _node(array)
        return [node.cell(i) for i in range(len(array))]
    return [_cell(value) for value in _to_python(array)]


def _cut_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings as a table cell shows them: as they are up to ``TABLE_MAX_CELL`` characters, else the first
    ``TABLE_MAX_CELL`` and how many there are (the text :func:`_cut_text` gives); nulls stay null."""
    head = pc.utf8_slice_codeunits(column, 0, TABLE_MAX_CELL)        # the whole value where it is short
    head = pa.chunked_array([chunk.cast(pa.string()) for chunk in head.chunks], pa.string())
    lengths = pc.utf8_length(column)
    long = pc.fill_null(pc.greater(lengths, TABLE_MAX_CELL), False)
    if pc.any(long).as_py():
        noted = pc.binary_join_element_wise(head, "... (", pc.cast(lengths, pa.string()),
                                            f" characters; {_FOR_ALL})", "")
        head = pc.if_else(long, noted, head)
    return head


class _Full(Exception):
    """A cell's text passed ``TABLE_MAX_CELL`` characters: the rest of its value is not read."""


class _Out:
    """A cell's text as it is written; raises :class:`_Full` once it holds more than ``TABLE_MAX_CELL``."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > TABLE_MAX_CELL:
            raise _Full

    def room(self) -> int:
        """Characters that still fit, and one more (so that what does not fit shows)."""
        return max(1, TABLE_MAX_CELL + 1 - self.size)

    def text(self) -> str:
        return "".join(self.parts)


_MORE = f"... (more than {TABLE_MAX_CELL} characters; {_FOR_ALL})"


class _Node:
    """One Arrow array (and, below it, its children) read value by value for a table cell: ``cell(i)`` is the
    text a table shows for value ``i``, ``json(i, out)`` writes it as ``json.dumps`` would (ensure_ascii off,
    bytes as hex, dates ISO) into ``out`` until the cell is full. Only the values and bytes a cell shows are
    read, so a cell costs what it shows, however large its value (lists of lists, maps of a million entries,
    strings of megabytes inside structs or unions)."""

    def __init__(self, array: pa.Array, valid: bool = True) -> None:
        self.array = array
        self.bits: np.ndarray | None = None       # the validity bitmap, read a bit at a time (no array per child)
        self.all_null = False
        if valid and array.null_count:
            bitmap = array.buffers()[0]
            if bitmap is None:                     # the null type: every value is null
                self.all_null = True
            else:
                self.bits = np.frombuffer(bitmap, dtype=np.uint8)

    def null(self, i: int) -> bool:
        if self.bits is None:
            return self.all_null
        at = self.array.offset + i
        return not (int(self.bits[at >> 3]) >> (at & 7)) & 1

    def cell(self, i: int) -> str:
        if self.null(i):
            return "NULL"
        out = _Out()
        try:
            self.json(i, out)
        except _Full:
            return out.text()[:TABLE_MAX_CELL] + _MORE
        return out.text()

    def json(self, i: int, out: _Out) -> None:
        if self.null(i):
            out.add("null")
            return
        out.add(_ENCODER.encode(self.value(i)))

    def value(self, i: int) -> Any:
        """Value ``i`` as Python (a date Python cannot hold: as :func:`_to_python` writes it)."""
        try:
            return self.array[i].as_py()
        except (OverflowError, ValueError):
            return _to_python(self.array.slice(i, 1))[0]


class _ValueNode(_Node):
    def cell(self, i: int) -> str:
        return "NULL" if self.null(i) else _cell(self.value(i))


class _BytesNode(_Node):
    """A string or binary array, read straight from its offsets and data buffers."""

    def __init__(self, array: pa.Array) -> None:
        super().__init__(array)
        kind = array.type
        wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
        buffers = array.buffers()
        self.offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)[
            array.offset:array.offset + len(array) + 1] if len(array) else np.zeros(1, np.int64)
        self.data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        self.text = pa.types.is_string(kind) or pa.types.is_large_string(kind)

    def head(self, i: int, count: int) -> str | bytes:
        """The first ``count`` characters (a string) or bytes (a binary) of value ``i``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if not self.text:
            return self.data[start:min(end, start + count)].tobytes()
        raw = self.data[start:min(end, start + 4 * count)].tobytes()
        return raw.decode("utf-8", "ignore")[:count]       # "ignore": only a character cut at the end

    def cell(self, i: int) -> str:
        if self.null(i):
            return "NULL"
        if not self.text:
            head = self.head(i, TABLE_MAX_CELL + 1)
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            if end - start <= len(head):
                return _cell(head)
            # Python quotes a bytes repr by the whole value ('...' unless it holds ' and no "): the shown start is
            # that repr's
            single, double = (self._holds(start, end, byte) for byte in (0x27, 0x22))
            text = _bytes_repr(head, '"' if single and not double else "'")
            return f"{text[:TABLE_MAX_CELL]}... (more than {TABLE_MAX_CELL} bytes; {_FOR_ALL})"
        text = self.head(i, TABLE_MAX_CELL + 1)
        if len(text) <= TABLE_MAX_CELL:
            return text
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        length = sum(int(np.count_nonzero((span & 0xC0) != 0x80)) for span in self._spans(start, end))  # first bytes
        return f"{text[:TABLE_MAX_CELL]}... ({length} characters; {_FOR_ALL})"

    def _spans(self, start: int, end: int) -> Iterator[np.ndarray]:
        """Data bytes ``start:end`` a MiB at a time (a test on each makes no array the size of a long value)."""
        for at in range(start, end, 1 << 20):
            yield self.data[at:min(end, at + (1 << 20))]

    def _holds(self, start: int, end: int, byte: int) -> bool:
        """Whether value bytes ``start:end`` hold ``byte``."""
        return any(bool(np.any(span == byte)) for span in self._spans(start, end))

    def json(self, i: int, out: _Out) -> None:
        if self.null(i):
            out.add("null")
        elif self.text:
            out.add(_ENCODER.encode(self.head(i, out.room())))
        else:
            out.add(_ENCODER.encode(self.head(i, out.room() // 2 + 1).hex()))


class _ListNode(_Node):
    """Lists, large lists, fixed-size lists and maps (a map's entries as ``[key, value]`` pairs)."""

    def __init__(self, array: pa.Array) -> None:
        super().__init__(array)
        kind = array.type
        self.size = 0
        if pa.types.is_fixed_size_list(kind):
            self.size = kind.list_size        # row i's items start at (offset + i) * size: nothing built per row
            self.offsets = None
            self.items = [_node(array.values)]
        elif pa.types.is_map(kind):
            self.offsets = array.offsets.to_numpy()
            self.items = [_node(array.keys), _node(array.items)]
        else:
            self.offsets = array.offsets.to_numpy()
            self.items = [_node(array.values)]

    def json(self, i: int, out: _Out) -> None:
        if self.null(i):
            out.add("null")
            return
        out.add("[")
        if self.offsets is None:
            start = (self.array.offset + i) * self.size
            end = start + self.size
        else:
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        for j in range(start, end):
            if j > start:
                out.add(", ")
            if len(self.items) == 1:
                self.items[0].json(j, out)
            else:
                out.add("[")
                self.items[0].json(j, out)
                out.add(", ")
                self.items[1].json(j, out)
                out.add("]")
        out.add("]")


class _StructNode(_Node):
    def __init__(self, array: pa.StructArray) -> None:
        super().__init__(array)
        kind = array.type
        # field(k): the child for this array's rows (offset applied); flatten() would also check a union child's
        # buffers, and Arrow aborts the process on DuckDB's unions there
        self.fields = [(_ENCODER.encode(kind.field(k).name) + ": ", _node(array.field(k)))
                       for k in range(kind.num_fields)]

    def json(self, i: int, out: _Out) -> None:
        if self.null(i):
            out.add("null")
            return
        out.add("{")
        for k, (name, child) in enumerate(self.fields):
            out.add((", " if k else "") + name)
            child.json(i, out)
        out.add("}")


class _UnionNode(_Node):
    """A union's value is its member's (the top level shows it as that member's cell would)."""

    def __init__(self, array: pa.UnionArray) -> None:
        super().__init__(array, valid=False)     # a union has no nulls of its own: its members do
        kind = array.type
        # from the buffers, at this array's offset (pyarrow's type_codes / offsets of a sliced union start at
        # the buffer's first row); a sparse member (field(k)) is sliced already, a dense one is indexed by offset
        buffers, rows = array.buffers(), slice(array.offset, array.offset + len(array))
        self.codes = np.frombuffer(buffers[1], dtype=np.int8)[rows]
        self.member = {code: k for k, code in enumerate(kind.type_codes)}
        self.children = [_node(array.field(k)) for k in range(kind.num_fields)]
        self.offsets = np.frombuffer(buffers[2], dtype=np.int32)[rows] if kind.mode == "dense" else None

    def _at(self, i: int) -> tuple[_Node, int]:
        child = self.children[self.member[int(self.codes[i])]]
        return child, (int(self.offsets[i]) if self.offsets is not None else i)

    def cell(self, i: int) -> str:
        child, j = self._at(i)
        return child.cell(j)

    def json(self, i: int, out: _Out) -> None:
        child, j = self._at(i)
        child.json(j, out)


class _DictionaryNode(_Node):
    def __init__(self, array: pa.DictionaryArray) -> None:
        super().__init__(array)
        indices = array.indices         # read from its buffer (under a list this is every item's: no copy)
        self.indices = np.frombuffer(indices.buffers()[1], dtype=indices.type.to_pandas_dtype())[
            indices.offset:indices.offset + len(indices)]
        self.values = _node(array.dictionary)

    def cell(self, i: int) -> str:
        return "NULL" if self.null(i) else self.values.cell(int(self.indices[i]))

    def json(self, i: int, out: _Out) -> None:
        if self.null(i):
            out.add("null")
        else:
            self.values.json(int(self.indices[i]), out)


def _bytes_repr(value: bytes, quote: str) -> str:
    """``repr(value)`` written with ``quote`` around it (as Python writes it when the value holds ' and no ")."""
    text = repr(value)
    if text[1] == quote:
        return text
    body = text[2:-1]
    if quote == '"':     # b'...' -> b"...": a quote no longer needs its backslash
        body = re.sub(r"(\\*)\\'", lambda m: m.group(1) + "'" if len(m.group(1)) % 2 == 0 else m.group(0), body)
    else:                # b"..." -> b'...': a ' needs one (the value holds no ")
        body = body.replace("'", "\\'")
    return f"b{quote}{body}{quote}"


def _node(array: pa.Array) -> _Node:
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _DictionaryNode(array)
    if any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                     pa.types.is_large_binary)):
        return _BytesNode(array)
    if any(check(kind) for check in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list,
                                     pa.types.is_map)):
        return _ListNode(array)
    if pa.types.is_struct(kind):
        return _StructNode(array)
    if pa.types.is_union(kind):
        return _UnionNode(array)
    return _ValueNode(array)


def _render(kept: _TableRows, to_terminal: bool, total_rows: int, total_columns: int) -> tuple[str, int, int]:
    """The table's text, the rows it shows and the columns it shows. ``to_terminal`` changes nothing: the table
    is printed at its own width (rich would fold it to the terminal's, into more lines than the budget counts)."""
    from rich.console import Console
    from rich.table import Table

    names, rows = kept.names, kept.rows
    shown = len(names)
    header = max([_height(name) for name in names] or [1])
    extents = [_extent(name) for name in names]      # per column: the columns rich gives it, characters beyond
    cells: list[list[str]] = []
    lines = 0
    for texts in rows:
        wider = [(max(c, tc), max(e, te)) for (c, e), (tc, te) in zip(extents, map(_extent, texts))]
        height = max([_height(t) for t in texts])
        # as printed: every line as wide as the widest value of each column (3 characters between and
        # around columns; characters rich gives no column still printed), the header's lines and 3 borders
        printed = sum(c + e for c, e in wider) + 3 * len(wider) + 2
        total = lines + height + header + 3
        if cells and (total * printed > TABLE_MAX_CHARS or total > TABLE_MAX_LINES):
            break
        cells.append(texts)
        extents, lines = wider, lines + height
    widths = [c for c, _ in extents]
    out = Table(show_lines=False)
    for i, name in enumerate(names[:shown]):
        kind = kept.kinds[i]
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        out.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        out.add_row(*row)
    console = Console(file=io.StringIO(), width=max(40, sum(widths) + 3 * len(widths) + 4), force_terminal=False,
                      color_system=None, highlight=False, emoji=False, markup=False)
    console.print(out)
    # the row count on its own line: as a caption rich would wrap it to the width of a narrow table
    rows_shown = len(cells) if shown else total_rows     # rows of no columns take no characters
    note = _row_note(total_rows, rows_shown, shown, total_columns)
    return console.file.getvalue() + note + "\n", rows_shown, shown


def _extent(text: str) -> tuple[int, int]:
    """``text`` in a table cell: the columns rich gives its widest line (East Asian wide characters twice), and
    the most characters a line of it prints beyond its columns (zero-width ones: combining marks, ZWJ)."""
    if text.isascii() and "\n" not in text:
        return len(text), 0
    from rich.cells import cell_len

    columns = extra = 0
    for line in text.split("\n"):
        width = cell_len(line)
        columns, extra = max(columns, width), max(extra, len(line) - width)
    return columns, extra


def _width(text: str) -> int:
    """The most characters a line of ``text`` prints in a column as wide as it (:func:`_extent`)."""
    columns, extra = _extent(text)
    return columns + extra


_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


# control characters, and the bidirectional embeddings, overrides and isolates that reorder what a terminal shows
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """``text`` as a table cell gets it: every line break rich would make (or strip: CR, VT, FF) a ``\\n``, so
    the lines counted are the lines printed; tabs expanded (rich gives a tab no width when it sizes a column,
    then expands it and wraps the cell); and every other control character written as ``\\xNN`` (a prompt
    anyone typed never reaches the terminal as an escape sequence: ESC, CSI, NUL, DEL)."""
    if _BREAKS.search(text):
        text = _BREAKS.sub("\n", text)
    if "\t" in text:
        text = text.expandtabs(8)
    if _CONTROLS.search(text):
        text = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() < "\u0100" else
                             f"\\u{ord(m.group()):04x}", text)
    return text


def _height(text: str) -> int:
    """The lines ``text`` takes in a table cell."""
    return text.count("\n") + 1


def _row_note(total: int, shown: int, columns: int = 0, total_columns: int = 0) -> str:
    note = f"{total} row" + ("" if total == 1 else "s")
    if shown < total:
        note += f", first {shown} shown"
    if columns < total_columns:
        note += f"; first {columns} of {total_columns} columns shown"
    if shown < total or columns < total_columns:
        note += f" (use {_FOR_ALL})"
    return note


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=lambda value: _json_default(value))


def _cut_text(text: str) -> str:
    if len(text) > TABLE_MAX_CELL:
        return f"{text[:TABLE_MAX_CELL]}... ({len(text)} characters; {_FOR_ALL})"
    return text


def _cell(value: Any) -> str:
    """A value's cell text (at most ``TABLE_MAX_CELL`` characters of it). A binary holds at most its first
    ``TABLE_MAX_CELL + 1`` bytes here (:class:`_BytesNode`); a list or a dict is written as JSON up to the cut."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bytes):
        text = str(value)
        if len(value) > TABLE_MAX_CELL:
            return f"{text[:TABLE_MAX_CELL]}... (more than {TABLE_MAX_CELL} bytes; {_FOR_ALL})"
        if len(text) > TABLE_MAX_CELL:
            return f"{text[:TABLE_MAX_CELL]}... ({len(value)} bytes; {_FOR_ALL})"
        return text
    if isinstance(value, (list, dict)):     # not a tuple: an interval (MonthDayNano) shows as itself
        pieces, length = [], 0
        for piece in _ENCODER.iterencode(value):
            pieces.append(piece)
            length += len(piece)
            if length > TABLE_MAX_CELL:
                return f"{''.join(pieces)[:TABLE_MAX_CELL]}{_MORE}"
        return "".join(pieces)
    return _cut_text(str(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float in it (at any depth) None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):   # not an interval (a named tuple)
        return [_finite(item) for item in value]
    return value


def _flatten_nested(table: pa.Table) -> pa.Table:
    """CSV has no nested types: lists, structs, maps and unions become JSON strings; a date / timestamp column
    holding values Python cannot represent becomes text (Arrow would write ``<value out of range: N>``); an
    INTERVAL becomes DuckDB's text for it (``1 year 2 months 3 days 04:05:06.5``, as ``::VARCHAR`` and DuckDB's
    own CSV write it; Arrow cannot write it to CSV at all) and a BLOB its bytes in hex, as ``--format json``
    writes them (review rev27a: a traceback; raw bytes, NUL included, or 'Invalid UTF8 payload'). The JSON
    text is JSON: NaN and infinite numbers in it are ``null``, as ``--format json`` writes them (review rev27d:
    bare ``NaN`` / ``Infinity``)."""
    return _as_text(table, range(table.num_columns), dates=True)


def _as_text(table: pa.Table, indexes: Iterable[int], dates: bool = False) -> pa.Table:
    """``table`` with the columns at ``indexes`` that are nested, INTERVAL or binary made text, as
    :func:`_flatten_nested` writes them for CSV (and date / timestamp ones beyond Python where ``dates``)."""
    columns = list(table.columns)
    for i in indexes:
        field, column = table.schema.field(i), columns[i]
        if dates and _beyond_python(column):
            text = pc.cast(column, pa.string()).to_pylist()
            column = pa.array([v if isinstance(v, str) else t for v, t in zip(_to_python(column), text)], pa.string())
        elif pa.types.is_interval(field.type):
            column = pa.array([None if v is None else interval_text(*v) for v in column.to_pylist()], pa.string())
        elif _is_bytes(field.type):
            column = pa.chunked_array([_hex(chunk) for chunk in column.chunks], pa.large_string())
        elif pa.types.is_nested(field.type):
            values = _to_python(column)
            if _holds_interval(field.type):
                values = map(_interval_texts, values)
            column = pa.array([None if v is None else _json_text(v) for v in values], pa.string())
        columns[i] = column
    return pa.table(columns, names=table.column_names)


def _json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON (one line, or ``indent``-ed), NaN and infinite numbers in it ``null``."""
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default, indent=indent, allow_nan=False)
    except ValueError:   # a NaN or an infinity somewhere in it
        return json.dumps(_finite(value), ensure_ascii=False, default=_json_default, indent=indent, allow_nan=False)


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex(array: pa.Array) -> pa.Array:
    """A binary array's values in lowercase hex (``bytes.hex()``), as large strings; nulls stay null. From the
    Arrow buffers, without a Python object per value."""
    array = array.cast(pa.large_binary())
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    first, last = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    raw = np.frombuffer(data, dtype=np.uint8)[first:last] if data is not None else np.empty(0, np.uint8)
    digits = np.empty(2 * len(raw), dtype=np.uint8)
    digits[0::2], digits[1::2] = _HEX_DIGITS[raw >> 4], _HEX_DIGITS[raw & 15]
    text = pa.LargeStringArray.from_buffers(len(array), pa.py_buffer(((offsets - first) * 2).astype(np.int64)),
                                            pa.py_buffer(digits.tobytes()))
    return pc.if_else(array.is_valid(), text, pa.scalar(None, pa.large_string())) if array.null_count else text


def interval_text(months: int, days: int, nanoseconds: int) -> str:
    """An INTERVAL as DuckDB writes it (``Interval::ToString``: ``-1 year -2 months 3 days -04:05:06.000789``,
    ``00:00:00`` for none); DuckDB's intervals hold microseconds."""
    years = abs(months) // 12 * (1 if months >= 0 else -1)
    parts = [f"{n} {unit}{'' if abs(n) == 1 else 's'}" for n, unit in
             ((years, "year"), (months - 12 * years, "month"), (days, "day")) if n]
    micros = abs(nanoseconds) // 1000
    if micros:
        hours, rest = divmod(micros, 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        seconds, fraction = divmod(rest, 1_000_000)
        clock = f"{'-' if nanoseconds < 0 else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
        parts.append(clock + ("." + f"{fraction:06d}".rstrip("0") if fraction else ""))
    return " ".join(parts) or "00:00:00"


def _holds_interval(kind: pa.DataType) -> bool:
    """True for an Arrow INTERVAL type, or a nested type holding one at any depth."""
    if pa.types.is_interval(kind):
        return True
    if pa.types.is_dictionary(kind):
        return _holds_interval(kind.value_type)
    return any(_holds_interval(kind.field(k).type) for k in range(kind.num_fields))


def _interval_texts(value: Any) -> Any:
    """``value`` (Python, as ``to_pylist`` gives it) with every interval in it, at any depth, DuckDB's text for it
    (:func:`interval_text`): never the anonymous ``[months, days, nanoseconds]`` list JSON made of the named tuple
    (fix35b)."""
    if isinstance(value, pa.MonthDayNano):
        return interval_text(*value)
    if isinstance(value, dict):
        return {key: _interval_texts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interval_texts(item) for item in value]
    if isinstance(value, tuple):     # a map's (key, value) pair
        return tuple(_interval_texts(item) for item in value)
    return value


def _parquet_text_columns(schema: pa.Schema) -> list[int]:
    """The columns Parquet cannot hold (an INTERVAL or a UNION, at any depth: pyarrow has no Parquet type for
    them), which ``--format parquet`` writes as text as CSV does (review rev27a: a traceback)."""
    def unwritable(kind: pa.DataType) -> bool:
        if pa.types.is_interval(kind) or pa.types.is_union(kind):
            return True
        if pa.types.is_dictionary(kind):
            return unwritable(kind.value_type)
        return any(unwritable(kind.field(k).type) for k in range(kind.num_fields))

    return [i for i, field in enumerate(schema) if unwritable(field.type)]


def _rows(batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """``batch.to_pylist()``, with dates and timestamps Python cannot hold as text (see :func:`_to_python`) and
    INTERVALs as DuckDB's text for them."""
    columns = [list(map(_interval_texts, _to_python(column))) if _holds_interval(column.type) else _to_python(column)
               for column in batch.columns]
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
