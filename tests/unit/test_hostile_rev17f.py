"""Hostile review rev17f: the rev17e rework of moderation phrase matching (edge kinds, grouped alternations, the
Katakana look-alikes, both orders of a right-to-left override). Each test is a confirmed defect, filed as a strict
xfail; the rendered order of every bidi prompt below was checked with ICU's ``Bidi.writeReordered``.
"""
from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from pipelines.curation.decisions import phrase_matches, phrase_pattern

RLO, LRO, PDF, LRI, PDI = "\u202e", "\u202d", "\u202c", "\u2066", "\u2069"


def _matches(prompts: list[str], phrases: list[str]) -> set[tuple[int, str]]:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return {(row["ranking_id"], row["phrase"]) for row in phrase_matches(con, phrases).to_pylist()}


# --- 1. a PDI closes an override opened inside its isolate: the code keeps reversing past it -------------------------

@pytest.mark.xfail(strict=True, reason="_display_order ignores a PDI whose isolate opened before the override; the "
                   "override runs on, and neither order holds the phrase the reader sees")
def test_an_override_inside_an_isolate_ends_at_the_isolates_pdi():
    prompt = f"a {LRI}{RLO}edun{PDI} statue"          # renders 'a nude statue' (ICU)
    assert _matches([prompt], ["nude statue"]) == {(0, "nude statue")}


# --- 2. a phrase spanning nested left-to-right text and the override's own text is in neither order ----------------

@pytest.mark.xfail(strict=True, reason="both orders are not enough: nested LTR text shows as stored while the "
                   "rest of the run is reversed around it, so a phrase across the two is in neither order")
@pytest.mark.parametrize("nested", [LRI + "nude" + PDI, LRO + "nude" + PDF])
def test_a_phrase_across_nested_ltr_text_in_an_override_is_matched(nested):
    prompt = f"a {RLO}eutats {nested}{PDF}"           # both render 'a nude statue' (ICU)
    assert _matches([prompt], ["nude statue"]) == {(0, "nude statue")}


# --- 3. Hiragana and Han look-alikes of Katakana bound phrases as if they were Katakana -----------------------------

@pytest.mark.xfail(strict=True, reason="the Hiragana particle へ is in _KANA_EXTRA (a fold target of ヘ), so the "
                   "kana guard refuses it as a neighbour even in the prompt as typed")
def test_a_katakana_phrase_before_the_particle_he_is_matched():
    # README: 'ロリ' is in 'ロリの絵'; 'ロリへの愛' ('love for lolis') differs only by the particle
    assert _matches(["ロリの絵", "ロリへの愛"], ["ロリ"]) == {(0, "ロリ"), (1, "ロリ")}


@pytest.mark.xfail(strict=True, reason="口 is a Katakana look-alike (ロ), so a Chinese phrase starting with it gets "
                   "the kana guard, and a preceding 工 (エ's look-alike) blocks it; README: Han phrases match as "
                   "substrings")
def test_a_chinese_phrase_starting_with_a_kana_lookalike_is_a_substring_match():
    assert _matches(["一个女人口交", "一个女工口交"], ["口交"]) == {(0, "口交"), (1, "口交")}


@pytest.mark.xfail(strict=True, reason="a Hiragana phrase starting with へ gets the kana guard: a preceding Katakana "
                   "letter blocks it; README: Hiragana phrases match as substrings")
def test_a_hiragana_phrase_after_katakana_is_matched():
    assert _matches(["アニメのへんたい", "アニメへんたい"], ["へんたい"]) == {(0, "へんたい"), (1, "へんたい")}


# --- 4. the combining ring above is a Katakana look-alike, so it bounds a Latin word --------------------------------

@pytest.mark.xfail(strict=True, reason="U+030A is in _KANA_EXTRA (from a semi-voiced kana's prototype), so the "
                   "word guard's unspaced class accepts it: 'pa' is matched inside decomposed 'på'; README: a mark "
                   "is part of its word (the acute U+0301 is, correctly)")
def test_a_latin_phrase_is_not_matched_before_a_decomposed_ring():
    assert _matches(["pa\u0301 bordet", "pa\u030a bordet", "pa bordet"], ["pa"]) == {(2, "pa")}


# --- 5. the combined pattern of a few thousand multi-word phrases is still too large for RE2 ------------------------

@pytest.mark.xfail(strict=True, reason="the grouped alternation still grows past RE2's program limit: 4,000 "
                   "Cyrillic phrases of 3-8 words (~190 kB of pattern) fail 'pattern too large'")
def test_a_list_of_a_few_thousand_cyrillic_phrases_compiles():
    rng = random.Random(3)
    letters = "абвгдежзийклмнопрстуфхцчшщыэюя"
    phrases = sorted({" ".join("".join(rng.choice(letters) for _ in range(rng.randint(4, 8)))
                               for _ in range(rng.randint(3, 8))) for _ in range(4000)} | {"nude"})
    con = duckdb.connect()     # the combined RE2 of curation_phrase_hits, as phrase_matches builds it
    assert con.execute("SELECT regexp_matches('a nude statue', ?)", [phrase_pattern(phrases)]).fetchone() == (True,)
