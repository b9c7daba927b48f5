"""Hostile review rev17f: the rev17e rework of moderation phrase matching (edge kinds, grouped alternations, the
Katakana look-alikes, both orders of a right-to-left override). Each test was a confirmed defect (filed as a strict
xfail), fixed since; the rendered order of every bidi prompt below was checked with ICU's ``Bidi.writeReordered``.
"""
from __future__ import annotations

import random

import duckdb
import pytest
from test_hostile_rev17d import _matches  # noqa: E402  (phrase_matches over prompts, as curation runs it)

from pipelines.curation.decisions import PATTERN_BYTES, phrase_patterns

RLO, LRO, PDF, LRI, PDI = "\u202e", "\u202d", "\u202c", "\u2066", "\u2069"


# --- 1. a PDI closes an override opened inside its isolate: the code keeps reversing past it -------------------------

def test_an_override_inside_an_isolate_ends_at_the_isolates_pdi():
    prompt = f"a {LRI}{RLO}edun{PDI} statue"          # renders 'a nude statue' (ICU)
    assert _matches([prompt], ["nude statue"]) == {(0, "nude statue")}


# --- 2. a phrase spanning nested left-to-right text and the override's own text is in neither order ----------------

@pytest.mark.parametrize("nested", [LRI + "nude" + PDI, LRO + "nude" + PDF])
def test_a_phrase_across_nested_ltr_text_in_an_override_is_matched(nested):
    prompt = f"a {RLO}eutats {nested}{PDF}"           # both render 'a nude statue' (ICU)
    assert _matches([prompt], ["nude statue"]) == {(0, "nude statue")}


# --- 3. Hiragana and Han look-alikes of Katakana bound phrases as if they were Katakana -----------------------------

def test_a_katakana_phrase_before_the_particle_he_is_matched():
    # README: 'ロリ' is in 'ロリの絵'; 'ロリへの愛' ('love for lolis') differs only by the particle
    assert _matches(["ロリの絵", "ロリへの愛"], ["ロリ"]) == {(0, "ロリ"), (1, "ロリ")}


def test_a_chinese_phrase_starting_with_a_kana_lookalike_is_a_substring_match():
    assert _matches(["一个女人口交", "一个女工口交"], ["口交"]) == {(0, "口交"), (1, "口交")}


def test_a_hiragana_phrase_after_katakana_is_matched():
    assert _matches(["アニメのへんたい", "アニメへんたい"], ["へんたい"]) == {(0, "へんたい"), (1, "へんたい")}


# --- 4. the combining ring above is a Katakana look-alike, so it bounds a Latin word --------------------------------

def test_a_latin_phrase_is_not_matched_before_a_decomposed_ring():
    assert _matches(["pa\u0301 bordet", "pa\u030a bordet", "pa bordet"], ["pa"]) == {(2, "pa")}


# --- 5. the combined pattern of a few thousand multi-word phrases is still too large for RE2 ------------------------

def test_a_list_of_a_few_thousand_cyrillic_phrases_compiles():
    rng = random.Random(3)
    letters = "абвгдежзийклмнопрстуфхцчшщыэюя"
    phrases = sorted({" ".join("".join(rng.choice(letters) for _ in range(rng.randint(4, 8)))
                               for _ in range(rng.randint(3, 8))) for _ in range(4000)} | {"nude"})
    # one combined RE2 of them all is too large for DuckDB's RE2 (about 190 kB): phrase_matches runs the hits query
    # once per part of phrase_patterns, each of which compiles and finds its phrases
    patterns = phrase_patterns(phrases)
    assert len(patterns) > 1 and all(len(pattern.encode()) <= PATTERN_BYTES for pattern in patterns)
    con = duckdb.connect()
    found = [con.execute("SELECT regexp_matches(?, ?)", [f"x {phrase} y", pattern]).fetchone()[0]
             for pattern in patterns for phrase in (phrases[0], "nude", phrases[-1])]
    assert sum(found) == 3                    # each of the three phrases in exactly one part
    # the whole path, on a shorter list (phrase_matches runs one query a phrase for the matches themselves)
    assert _matches(["a nude statue", f"x {phrases[7]} y", "nothing"], phrases[:60] + ["nude"]) == {
        (0, "nude"), (1, phrases[7])}
