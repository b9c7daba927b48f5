"""Hostile review of "rev20f fixes" (pipelines/query/output.py): the table's character budget."""
import pyarrow as pa

from pipelines.query import output


def test_first_row_of_zero_width_characters_under_wide_names_stays_within_char_budget():
    # each name: 1000 columns, no zero-width characters; each first-row value: 1 column and 999 combining marks
    # (printed, zero width). As printed the value's line is 1000 columns + 999 characters beyond them.
    names = [f"{i:04d}" + "x" * 996 for i in range(850)]
    table = pa.table({name: ["a" + "\u0301" * 999] for name in names})
    text = output.render_table(table)
    assert len(text) <= output.TABLE_MAX_CHARS, (len(text), text.splitlines()[-1])
