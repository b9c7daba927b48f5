"""rev38b: hostile review of fix37g (moderation group testing tells halves apart by their guarded patterns).

Held up (no defect): a seeded differential test of ``decisions._phrase_values`` against each element's own
``phrase_pattern`` on every value (300 random lists of 1-40 phrases over a hostile alphabet: regex
metacharacters, spaces, case-folding traps ß/ſ/K (Kelvin)/İ/ς, combining marks, ZWJ/ZWSP, emoji and non-BMP
shaped letters, Katakana/Hangul/Han, prefixes/suffixes/overlaps of each other; random ``kinds`` too): 0
mismatches. Which phrase is reported is not a choice: every (prompt, phrase) pair is kept and sorted.

Defect found:
1. A prompt that holds many listed phrases as plain words (someone pasting the banned list) now builds about two
   guarded RE2 patterns per listed phrase instead of one: at a node where both halves' bodies occur, fix37g
   tests both halves' guarded patterns, and when every phrase is present nothing is pruned, so every internal
   node of the split tree adds two guarded patterns on top of the singletons it used to reach. Counted with
   ``_phrase_values`` alone (one form): 64 phrases 65 -> 127 guarded patterns, 256: 257 -> 511, 1,000: 1,001 ->
   1,999 (total queries unchanged, 2,000 -> 1,999); half the list as words, half stuffed: 65 -> 127. By hand on
   this loaded 2-vCPU machine (not asserted): 1,000 phrases in one prompt, 80 s before, 151 s after.

Fixed (fix38j, ``tests/unit/test_fix38j.py``): the halves are first tested by their plain words (bodies between
spaces, ASCII punctuation or the ends, a proof of the guarded match), so a pasted list builds only the part's guarded
pattern; the marker is removed.
"""
from __future__ import annotations

import random
import string

import duckdb

import pipelines.curation.decisions as decisions


def _phrases(count: int) -> list[str]:
    rng = random.Random(38)
    return sorted({"".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(count)})


def test_a_prompt_pasting_the_list_costs_no_more_guarded_patterns_than_one_a_phrase(monkeypatch):
    phrases = _phrases(32)
    prompt = " ".join(phrases)
    built: list[int] = []
    real = decisions.phrase_pattern
    monkeypatch.setattr(decisions, "phrase_pattern",
                        lambda group, kinds=None: (built.append(len(group)), real(group, kinds))[1])
    found = decisions._phrase_values(duckdb.connect(), [prompt], phrases, None)
    assert found == {phrase: [prompt] for phrase in phrases}     # every phrase found, as before
    # before fix37g: the part's pattern, then one per phrase (33); now 1 + 2 * 31 = 63
    assert len(built) <= len(phrases) + 1, len(built)
