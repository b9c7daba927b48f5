"""fix39a (noticed after fix38j): the moderation's membership tests no longer copy their value set into Python.

``decisions._isin`` (used by :func:`~pipelines.curation.decisions._phrase_values` where both halves' bodies occur in
the same values, up to six times a split) turned the set of values a half's plain words matched into a Python list
and back into an Arrow array on every call: a Python copy of prompts already held by Arrow (2,000 characters each
in the rev37g benchmark). It now tests membership on the set's own Arrow chunks. Counted with ``tracemalloc`` (which
sees Python allocations, not Arrow's): what each call allocates against the size of its set; not timed.
"""
from __future__ import annotations

import tracemalloc

import duckdb
import pyarrow as pa
import pytest
from test_fix37g import _six_letter_phrases
from test_fix38j import _one_by_one

from pipelines.curation import decisions


def _prompts(phrases: list[str], count: int) -> list[str]:
    """``count`` distinct values of about 2,000 characters holding every phrase's body, half of them every phrase as
    a word (decided by plain words), half the first as a word and the others stuffed (left in doubt)."""
    pasted = " ".join(phrases)
    mixed = f"{phrases[0]} " + "".join(f"x{body}x" for body in phrases[1:])
    return [f"{pasted if i % 2 else mixed} {i} " + "cat dog " * 240 for i in range(count)]


def test_membership_allocates_no_python_copy_of_its_set(monkeypatch):
    """Every call of ``_isin`` during group testing allocates (Python memory) under a tenth of its set's Arrow size:
    before fix39a each call built a list of the set's strings, more than the set's own size."""
    phrases = _six_letter_phrases(39, 8)
    values = _prompts(phrases, 200)
    real, calls = decisions._isin, []

    def measured(tested, among):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        hit = real(tested, among)
        calls.append((among.nbytes, len(among), tracemalloc.get_traced_memory()[1] - before))
        return hit

    monkeypatch.setattr(decisions, "_isin", measured)
    tracemalloc.start()
    try:
        found = decisions._phrase_values(duckdb.connect(), values, phrases, None)
    finally:
        tracemalloc.stop()
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in _one_by_one(values, phrases).items()}
    large = [(size, grown) for size, count, grown in calls if count >= 100]
    assert len(large) >= 4, calls                    # the set of a half's plain words: 100 prompts or all 200
    assert all(grown < size / 10 for size, grown in large), large


@pytest.mark.parametrize("chunks", [[], [[]], [["b", None]], [["a"], ["c", "b"], []], [["a", "a"], [None, "z"]]])
def test_membership_is_python_membership_whatever_the_chunks(chunks):
    """The set as any number of chunks (none, empty ones, nulls, duplicates): the same answer as Python's, a null
    being one of a set that holds a null, as ``pa.array(set.to_pylist())`` gave."""
    tested = pa.chunked_array([pa.array(["a", None], pa.string()), pa.array(["b", "c", "d"], pa.string())])
    among = pa.chunked_array([pa.array(chunk, pa.string()) for chunk in chunks], pa.string())
    want = [value in among.to_pylist() for value in tested.to_pylist()]
    hit = decisions._isin(tested, among)
    assert hit.type == pa.bool_() and hit.null_count == 0
    assert hit.to_pylist() == want
