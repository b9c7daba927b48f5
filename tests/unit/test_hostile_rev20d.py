"""Hostile review (rev20d) of the rev20c fixes (cc4f763): ``pickapic query``'s table cells written from the
Arrow buffers (``pipelines/query/output.py``: ``_TableRows``, ``_column_texts``, the ``_Node`` classes) and
``_render``'s budget (columns chosen from the header and first row, rows as printed).

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong;
each asserts the behaviour that is right, so it passes once the defect is fixed. None needs a server.

What held up: against the table of 4a1d87d~1 (``_cell`` of ``_to_python``), the cells of ~140 shapes are the
same text: timestamps of every unit with and without a time zone (top level and in lists, DuckDB's infinity,
years past 9999, nanosecond fractions), date64, time32/64, durations, decimal128/256, half floats, NaN/inf/-0.0,
booleans, the null type, nested nulls, empty structs/lists/maps, dictionaries with null indices and null values,
dictionaries of floats/lists/structs, fixed_size_binary, string/binary/list views, uuid and json extension
types, run-end encoded arrays, intervals, JSON escapes; sliced lists/large lists/fixed-size lists (also of
fixed-size lists)/maps/structs/strings, children that have their own offset (lists, fixed-size lists, maps,
structs, dictionaries, union members), and 25 DuckDB types over 100 rows (ENUMs in structs, maps with NULL
values, ARRAY, infinite timestamps in lists, blobs, VARINT, INTERVAL lists, unions inside lists). Cut values
keep the same first 1,000 characters (strings of multi-byte, wide, escaped and control characters at every
length from 998 to 1,500, at top level, in lists, structs, maps, dictionaries and unions; binaries as hex).
Zero columns, zero rows and duplicate column names render and count as before. (Differences that are not
defects: a struct with two fields of one name now shows both; a fixed-size list or union of an infinite
timestamp now shows ``"infinity"`` where the old table said ``<a ... value Python cannot represent>``.)
"""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipelines.query import output
from tests.query_table_probes import arrow_peak


def _duck(sql: str) -> pa.Table:
    """A result as ``pickapic query`` streams it (``relation.to_arrow_reader``)."""
    return duckdb.connect().sql(sql).to_arrow_reader(2048).read_all()


def _cells(table: pa.Table) -> list[list[str]]:
    kept = output._TableRows(table.schema, table.num_columns)
    for batch in table.to_batches():
        kept.add(batch)
    return kept.rows


# --- 1. a union column shows other rows' values from its 33rd row on -------------------------------------------
#
# _TableRows makes rows text 32 at a time from batch.slice(start, 32): from the second part on, every column is
# a sliced array (offset 32, 64, ...). _UnionNode (output.py:387, :390) reads array.type_codes and
# array.offsets, which in pyarrow 25 do NOT account for the array's offset (they start at the buffer's first
# row), while the sparse members (array.field(k)) do: row 32 of a union takes row 0's member and row 32's value
# of that member. `SELECT (CASE WHEN i >= 32 THEN union_value(n := i) ELSE union_value(s := 'r' || i)
# END)::UNION(n INT, s VARCHAR) FROM range(40) t(i)` prints NULL for rows 32-39 (the old table: 32 ... 39); a
# struct of a union likewise; other patterns show a value of the wrong member. Dense unions read both the codes
# and the offsets of the buffer's first rows.

_UNION = "(CASE WHEN i >= 32 THEN union_value(n := i) ELSE union_value(s := 'r' || i) END)::UNION(n INT, s VARCHAR)"


@pytest.mark.parametrize("sql, expected", [
    (f"SELECT {_UNION} AS u FROM range(40) t(i)", [str(i) for i in range(32, 40)]),
    (f"SELECT {{'u': {_UNION}}} AS u FROM range(40) t(i)", [f'{{"u": {i}}}' for i in range(32, 40)]),
])
def test_a_union_past_its_first_32_rows_shows_its_own_values(sql: str, expected: list[str]) -> None:
    rows = _cells(_duck(sql))
    assert [row[0] for row in rows[32:]] == expected


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_a_sliced_union_shows_its_own_values(mode: str) -> None:
    codes = pa.array([0, 1, 0, 1], pa.int8())
    if mode == "sparse":
        union = pa.UnionArray.from_sparse(codes, [pa.array([1, 2, 3, 4]), pa.array(["a", "b", "c", "d"])])
    else:
        union = pa.UnionArray.from_dense(codes, pa.array([0, 0, 1, 1], pa.int32()),
                                         [pa.array([1, 3]), pa.array(["b", "d"])])
    sliced = union.slice(1)
    assert sliced.to_pylist() == ["b", 3, "d"]
    assert output._column_texts(sliced) == ["b", "3", "d"]


# --- 2. characters of no width are outside the budget --------------------------------------------------------
#
# TABLE_MAX_CHARS is "characters a table prints in all, laid out", but _render (output.py:448, :457) measures a
# cell by _width, rich's cell width: combining marks, zero-width spaces/joiners and the like count 0 while every
# one of them is printed. A cell of one letter and 999 combining accents counts as 1 character; _TableRows stops
# after the 32-row part whose len() passes the budget, and _render then lays out every row of it. With the real
# budget: 200 columns x 40 rows of such text print 6.4 MB (1.6x TABLE_MAX_CHARS, 11 s of rich); 1,562 columns
# print 50 MB. Here with the budget made 40x smaller: 20 columns print 640 KB against 100 KB.

def test_zero_width_characters_count_in_the_table_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 100_000)
    cell = "a" + "\u0301" * 999
    text = output.render_table(pa.table({f"c{k}": [cell] * 40 for k in range(20)}))
    assert len(text) <= 2 * 100_000, f"{len(text)} characters printed against a budget of 100,000"


# --- 3. the first row's height is outside the column choice --------------------------------------------------
#
# rev20c's fix chooses the columns whose header and first row fit: _render (output.py:446-451) adds each
# column's widest line of name / first value and stops when `5 * width` passes TABLE_MAX_CHARS -- 5 lines (3
# borders, the header, one row), whatever the first row's height. The first row is always laid out, so a
# first row of multi-line values prints height x width: 1,000 columns of `repeat(chr(10), 2000)` (1,001 lines of
# ~58 columns each, cut) print ~61 MB, fifteen times TABLE_MAX_CHARS. Here with the budget made 200x smaller: 60
# columns of 400-line values print 142 KB against 20 KB.

def test_a_first_row_of_multi_line_values_stays_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 20_000)
    text = output.render_table(pa.table({f"c{k}": ["a\n" * 399 + "a"] for k in range(60)}))
    assert len(text) <= 2 * 20_000, f"{len(text)} characters printed against a budget of 20,000"


# --- 4. the header's height is outside the budget ---------------------------------------------------------------
#
# Column names may hold line breaks (a PIVOT over prompts makes one column per prompt). table_columns
# (output.py:130-134), _render's column choice (:448-449) and its row budget (:461, `+ 4`: 3 borders and a
# one-line header) all count the header as one line, but rich prints every line of every name: 60 columns whose
# names hold 400 lines print 142 KB for one row of integers. Here with the budget at 20 KB.

def test_a_header_of_multi_line_names_stays_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 20_000)
    table = pa.Table.from_arrays([pa.array([1])] * 60, names=[f"n{k}" + "\n" * 400 for k in range(60)])
    text = output.render_table(table)
    assert len(text) <= 2 * 20_000, f"{len(text)} characters printed against a budget of 20,000"


# --- 5. a nested cell costs the size of its whole child array ----------------------------------------------------
#
# _Node.__init__ (output.py:245) makes `array.is_valid().to_numpy()` of every array it wraps that has a null:
# for a list, map, fixed-size list or dense union that is the whole child (array.values / keys / items are not
# sliced to the rows), and _TableRows builds the nodes again for each 32-row part. A cell that shows 1,000
# characters thus costs a bitmap and a numpy bool per item of its whole list -- and of every row after it in the
# batch: a list column of 1,001 rows whose last, unshown, row holds 40M items (one NULL) takes 2.45 s and 5 MB of
# Arrow + 40 MB of numpy memory per part (0.23 s and nothing without the NULL). A map of a million entries with
# NULL values (the README's example) pays the same.

def test_a_table_does_not_read_the_validity_of_items_it_does_not_show() -> None:
    n = 40_000_000
    items = pa.array(np.zeros(n, dtype=np.int8), mask=np.arange(n) == n - 1)
    offsets = pa.array(np.concatenate([np.arange(1001), [n]]).astype(np.int32))
    table = pa.table({"l": pa.ListArray.from_arrays(offsets, items)})   # row 1000 (not shown): 40M items
    text, held = arrow_peak(lambda: output.render_table(table))
    assert text.rstrip().rsplit("\n", 1)[-1].startswith("1001 rows, first 1000 shown")
    assert held < 1_000_000, f"{held} bytes of Arrow memory for 1,000 one-item lists"
