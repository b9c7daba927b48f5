"""Hostile review (rev20e) of the rev20d fixes (c0a439e): ``pickapic query``'s table budget
(``pipelines/query/output.py``: ``_width`` / ``_height`` as ``_render``, ``_TableRows._first_row`` and
``table_columns`` count a cell or a name) and the ``_Node`` classes that write cells from the Arrow buffers.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong;
each asserts the behaviour that is right, so it passes once the defect is fixed. None needs a server.

What held up: against the table of 4a1d87d~1 (``_cell`` of ``_to_python``), ~1,600 random nested arrays
(lists, large lists, fixed-size lists, maps, structs with nulls of their own, sparse and dense unions,
dictionaries with null indices and null values, booleans, strings, large strings, string views, binaries, the
null type; every child with an offset of its own, every array sliced) give the same cell texts, so the validity
read a bit at ``array.offset + i`` is right; so do DuckDB's unions with NULL rows (top level, in structs with
nulls of their own, in lists) past their 32nd row, booleans and lists of booleans, maps with NULL values, lists
of ENUMs and ARRAYs; run-end encoded arrays, string / binary / list views (top level and in structs). Zero
columns, zero rows and duplicate column names render and count as before; ``\\r``, ``\\x0b`` and ``\\x0c`` are
removed by rich (counted, not printed: safe).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from pipelines.query import output
from tests.query_table_probes import arrow_peak, python_peak

# --- 1. a tab is laid out wider than rich measures it: the cell folds into lines the budget does not count -----
#
# _width (output.py:518-525) counts a tab as the spaces it expands to (`expandtabs(8)`), _height (:528-530) one
# line. rich measures a cell's width without its tabs (a tab is a control character: 0 cells), makes the column
# that narrow, then expands the tabs to 8 spaces and folds them into the column: `"\t" * 200 + "x"` takes a
# column of width 1 and prints ~1,600 lines, the row's other cells padded to each of them. One row of that and
# a 100-character neighbour prints 175 KB against a budget of 20 KB; ten rows 1.2 MB (61x). With the real
# budget a column of 1,000-character prompts beside a column of tab-indented text prints gigabytes. (Plain
# prompts with tabs also show oddly: "a\tb\tc" prints as three lines.)

def test_tabs_stay_within_the_table_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 20_000)
    text = output.render_table(pa.table({"a": ["\t" * 200 + "x"], "b": ["y" * 100]}))
    assert len(text) <= 2 * 20_000, f"{len(text)} characters printed against a budget of 20,000"


# --- 2. line breaks other than \n are outside the budget -------------------------------------------------------
#
# rich breaks a cell's (and a column name's) lines where str.splitlines does: besides \n (and \r\n), at \x1c,
# \x1d, \x1e, \x85, \u2028 and \u2029 (\r, \x0b, \x0c it removes). _height (output.py:528-530) counts only \n
# and _width (:518-525) splits only at \n, so such a value counts as one line as wide as all its lines together.
# Alone that over-counts, but beside a wide column every one of its lines is as wide as the whole row: a value of
# 400 lines joined by \u2028 beside a 1,000-character one prints 400 x 1,000 characters for a row counted as
# 5 x 1,800. Five rows print 2.0 MB against a budget of 20 KB (100x); a column name of 400 such lines beside a
# 1,000-character value prints 408 KB for one row (table_columns, _first_row and _render's `header` all count it
# as one line).

_BREAKS = ["\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("sep", _BREAKS, ids=[f"U+{ord(c):04X}" for c in _BREAKS])
def test_values_of_other_line_breaks_stay_within_the_table_budget(monkeypatch: pytest.MonkeyPatch, sep: str) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 20_000)
    text = output.render_table(pa.table({"a": [("a" + sep) * 400] * 5, "b": ["y" * 1000] * 5}))
    assert len(text) <= 2 * 20_000, f"{len(text)} characters printed against a budget of 20,000"


@pytest.mark.parametrize("sep", _BREAKS, ids=[f"U+{ord(c):04X}" for c in _BREAKS])
def test_names_of_other_line_breaks_stay_within_the_table_budget(monkeypatch: pytest.MonkeyPatch, sep: str) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 20_000)
    table = pa.Table.from_arrays([pa.array([1]), pa.array(["y" * 1000])], names=["n" + (sep + "n") * 400, "m"])
    text = output.render_table(table)
    assert len(text) <= 2 * 20_000, f"{len(text)} characters printed against a budget of 20,000"


# --- 3. a list of dictionary values (DuckDB: ENUM[]) copies the indices of its whole child -----------------------
#
# _DictionaryNode.__init__ (output.py:451) makes `pc.fill_null(array.indices, 0)` of the array it wraps; below a
# list that is array.values, the whole child (not sliced to the rows), and _TableRows builds the nodes again for
# each 32-row part. The rev20d fix of the validity (read a bit at a time, "no array over a whole child") left this
# one: a list column of 1,001 rows whose last, unshown, row holds 40M items (one NULL) allocates 160 MB of Arrow
# memory per part to show 1,000 one-item lists.

def test_a_list_of_dictionary_values_does_not_copy_its_whole_child() -> None:
    n = 40_000_000
    indices = pa.array(np.zeros(n, dtype=np.int32), mask=np.arange(n) == n - 1)
    items = pa.DictionaryArray.from_arrays(indices, pa.array(["a"]))
    offsets = pa.array(np.concatenate([np.arange(1001), [n]]).astype(np.int32))
    table = pa.table({"l": pa.ListArray.from_arrays(offsets, items)})   # row 1000 (not shown): 40M items
    text, held = arrow_peak(lambda: output.render_table(table))
    assert text.rstrip().rsplit("\n", 1)[-1].startswith("1001 rows, first 1000 shown")
    assert held < 1_000_000, f"{held} bytes of Arrow memory for 1,000 one-item lists"


# --- 4. a list of fixed-size lists (DuckDB: INT[2][]) builds offsets for its whole child -------------------------
#
# _ListNode.__init__ (output.py:372) makes `np.arange(len(array) + 1) ...` for a fixed-size list: below a
# list, array is the whole child, so every 32-row part allocates 8 bytes per fixed-size list of the child, rows
# not shown included: 1,000 one-item rows beside an unshown row of 20M pairs take 160 MB of numpy memory and
# 2.4 s (a plain list of lists of the same shape: 2.7 MB, 0.44 s).

def test_a_list_of_fixed_size_lists_does_not_build_offsets_for_its_whole_child() -> None:
    n = 20_000_000
    items = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * n, dtype=np.int8)), 2)
    offsets = pa.array(np.concatenate([np.arange(1001), [n]]).astype(np.int32))
    table = pa.table({"l": pa.ListArray.from_arrays(offsets, items)})   # row 1000 (not shown): 20M pairs
    started = time.perf_counter()
    text, peak = python_peak(lambda: output.render_table(table))
    seconds = time.perf_counter() - started
    assert text.rstrip().rsplit("\n", 1)[-1].startswith("1001 rows, first 1000 shown")
    assert peak < 30_000_000, f"{peak} bytes of Python/numpy memory for 1,000 one-item lists ({seconds:.1f} s)"


# --- 5. a cut binary shows a repr its value does not have ---------------------------------------------------------
#
# _BytesNode.cell (output.py:345) cuts a binary to its first 1,001 bytes and gives that to _cell, which
# writes str(bytes): Python chooses the quotes of a bytes repr from the whole value (double quotes only where it
# holds ' but no "). A value whose first 1,001 bytes hold a ' and whose later bytes a " shows as b"'aaa..., where
# its repr (and the old table, and the value not cut) begins b'\'aaa...: the shown characters are not the start
# of the value's text. Images (the pickapic blobs) hold both bytes more often than not, but not always early.

def test_a_cut_binary_shows_the_start_of_its_own_repr() -> None:
    value = b"'" + b"a" * 2000 + b'"'
    cell = output._column_texts(pa.array([value]))[0]
    assert cell[:output.TABLE_MAX_CELL] == str(value)[:output.TABLE_MAX_CELL]
