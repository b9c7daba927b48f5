"""Hostile review rev17e: the rev17d changes to curation and the splits' prompt key (right-to-left override runs
moderated in display order, per-phrase word boundaries with unspaced scripts, decorative marks and the symbols-only
key), attacked as hostile users of the app would.

Each test reproduces a defect on main and is marked ``xfail(strict=True)`` until it is fixed; each asserts the
violated property directly.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from pipelines.curation.decisions import phrase_matches
from pipelines.splits.assign import moderation_key, normalize_prompt

RLO, LRO, LRE, PDF, LRI, PDI = "\u202e", "\u202d", "\u202a", "\u202c", "\u2066", "\u2069"
ZWSP = "\u200b"


def _matches(prompts: list[str], phrases: list[str]) -> set[tuple[int, str]]:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return {(row["ranking_id"], row["phrase"]) for row in phrase_matches(con, phrases).to_pylist()}


# --- 1. left-to-right text nested inside a right-to-left override is reversed although it shows as typed -------------

@pytest.mark.xfail(strict=True, reason="_display_order reverses everything up to the first PDF/PDI: text inside an "
                                       "LRI..PDI isolate or an LRO..PDF override nested in the RLO shows left to right "
                                       "as typed, yet is reversed, so a phrase the key used to catch is hidden")
@pytest.mark.parametrize("wrapped", [RLO + LRI + f"nu{ZWSP}de" + PDI,          # isolate inside the override
                                     RLO + LRO + f"nu{ZWSP}de" + PDF + PDF])   # override inside the override
def test_left_to_right_text_nested_in_an_override_is_not_reversed(wrapped):
    # both render 'a nude statue'; without the RLO wrapper, 'a nu<ZWSP>de statue' is matched by its key (control)
    prompts = [f"a {wrapped} statue", f"a nu{ZWSP}de statue"]
    assert _matches(prompts, ["nude"]) == {(0, "nude"), (1, "nude")}


# --- 2. a stray pop (no isolate open) or an empty embedding ends the reversed run early ---------------------------

@pytest.mark.xfail(strict=True, reason="_OVERRIDE_RUN ends the override at any PDI or at the PDF of an embedding "
                                       "opened inside it; a PDI with no open isolate is ignored by the bidi "
                                       "algorithm and an inner LRE..PDF pops only the LRE, so 'edun' still shows "
                                       "as 'nude' but is moderated as typed")
@pytest.mark.parametrize("opener", [RLO + PDI, RLO + LRE + PDF])
def test_a_stray_pop_does_not_end_a_right_to_left_override(opener):
    prompts = [f"a {opener}edun statue"]      # renders as 'a nude statue' (the override runs to the end)
    assert _matches(prompts, ["nude"]) == {(0, "nude")}


# --- 3. an override around text that is already right-to-left changes nothing on screen, but reverses the key --------

@pytest.mark.xfail(strict=True, reason="_display_order reverses the code points of a run of Hebrew/Arabic text in an "
                                       "RLO, which already shows right to left: the display is unchanged, the key is "
                                       "reversed, and a Hebrew phrase the key used to catch is hidden")
def test_an_override_around_right_to_left_text_does_not_hide_a_phrase():
    word = "זו" + ZWSP + "נה"                 # the Hebrew phrase with a zero-width space: caught by its key
    prompts = [RLO + word + PDF, word]        # an RLO around RTL letters renders exactly like the bare word
    assert _matches(prompts, ["זונה"]) == {(0, "זונה"), (1, "זונה")}


# --- 4. a decomposed accent in an override is moved onto the wrong letter ------------------------------------------

@pytest.mark.xfail(strict=True, reason="_display_order reverses code points, not grapheme clusters: a combining "
                                       "accent typed decomposed (NFD) lands on the letter before its base, so "
                                       "'\\u202eno\\u0301ciram' (shown as 'maricón') keys as 'marićon'")
def test_a_decomposed_accent_in_an_override_stays_on_its_letter():
    composed, decomposed = RLO + "nóciram" + PDF, RLO + "no\u0301ciram" + PDF   # both render 'maricón'
    assert moderation_key(decomposed) == moderation_key(composed) == "maricón"
    assert _matches([decomposed], ["maricón"]) == {(0, "maricón")}


# --- 5. an override run crosses a paragraph separator --------------------------------------------------------------

@pytest.mark.xfail(strict=True, reason="_OVERRIDE_RUN stops at \\n and \\r only: a PARAGRAPH SEPARATOR (U+2029), "
                                       "which ends every override, is reversed over, so a later paragraph that the "
                                       "key used to catch is moderated backwards")
def test_an_override_ends_at_a_paragraph_separator():
    prompts = [RLO + "abc\u2029" + f"nu{ZWSP}de statue", "abc\u2029" + f"nu{ZWSP}de statue"]
    assert _matches(prompts, ["nude"]) == {(0, "nude"), (1, "nude")}


# --- 6. a phrase of a spaced script ending in a vowel sign lost its word boundary ----------------------------------

@pytest.mark.xfail(strict=True, reason="_bounded tests str.isalnum() on the phrase's last character: a Devanagari "
                                       "(Bengali, Tamil, ...) word ending in a vowel sign (Mc/Mn) gets no trailing "
                                       "guard, so the phrase matches the start of longer words")
def test_a_phrase_ending_in_a_vowel_sign_is_not_matched_inside_a_longer_word():
    # 'पानी' (water) ends with the vowel sign U+0940; 'पानीपत' is the city of Panipat, a different word
    assert _matches(["पानीपत शहर", "ठंडा पानी"], ["पानी"]) == {(1, "पानी")}


# --- 7. a katakana phrase now matches inside any katakana word ----------------------------------------------------

@pytest.mark.xfail(strict=True, reason="phrase_pattern puts no guard at a kana end of a phrase: 'ロリ' matches "
                                       "inside カロリー (calorie) and フロリダ (Florida), which the previous "
                                       "word-bounded pattern did not")
def test_a_katakana_phrase_is_not_matched_inside_another_katakana_word():
    prompts = ["低カロリーのケーキ", "フロリダの海", "ロリの絵"]
    assert _matches(prompts, ["ロリ"]) == {(2, "ロリ")}


# --- 8. the prolonged sound mark is a Japanese letter of no unspaced script --------------------------------------

@pytest.mark.xfail(strict=True, reason="U+30FC (ー, Script=Common) is a letter but no \\p{Katakana}: a phrase "
                                       "ending in it keeps a guard a Latin letter fails ('セクシーgirl' unmatched while "
                                       "'セクシー女優' matches), and ー before a Latin phrase is no boundary")
@pytest.mark.parametrize("prompt, phrase", [("セクシーgirl", "セクシー"), ("ローsexy", "sexy")])
def test_the_prolonged_sound_mark_is_a_boundary_like_any_kana(prompt, phrase):
    assert _matches([prompt], [phrase]) == {(0, phrase)}


# --- 9. a prohibition mark on an emoji is dropped from the symbols-only key ---------------------------------------

@pytest.mark.xfail(strict=True, reason="_DECORATIVE_MARKS removes every enclosing mark (\\p{Me}), including U+20E0 "
                                       "COMBINING ENCLOSING CIRCLE BACKSLASH, the prohibition sign: 'no smoking' "
                                       "🚬⃠ now keys as 'smoking' 🚬")
def test_a_prohibited_emoji_does_not_key_as_the_emoji():
    assert normalize_prompt("🚬\u20e0") != normalize_prompt("🚬")
    assert normalize_prompt("🍺\u20e0") != normalize_prompt("🍺")


# --- 10. a phrase starting or ending with ASCII punctuation now matches inside arithmetic ----------------------------

@pytest.mark.xfail(strict=True, reason="phrase_pattern waives the word guard at any non-alphanumeric end of a phrase, "
                                       "meant for emoji: '18+' now matches '18+2=20' and '+18' matches '10+18=28', "
                                       "which the previous pattern did not")
@pytest.mark.parametrize("prompt, phrase", [("18+2=20 on a chalkboard", "18+"), ("10+18=28 on a chalkboard", "+18")])
def test_a_punctuation_ended_phrase_is_not_matched_inside_arithmetic(prompt, phrase):
    assert _matches([prompt, f"rated {phrase} only"], [phrase]) == {(1, phrase)}


# --- 11. the combined pattern of a few hundred phrases no longer compiles ------------------------------------------

@pytest.mark.xfail(strict=True, reason="phrase_pattern repeats the seven-script _BEFORE/_AFTER classes in every "
                                       "branch: the combined RE2 of ~300 plain phrases is 'pattern too large - "
                                       "compile failed' in DuckDB (it compiled with 20,000 before), so "
                                       "build_decisions fails on an ordinary moderation list")
def test_a_moderation_list_of_a_few_hundred_phrases_compiles():
    words = sorted({f"w{i:04d}x" for i in range(399)} | {"nude"})
    assert _matches(["a nude statue", "a w0123x here", "nothing"], words) == {(0, "nude"), (1, "w0123x")}
