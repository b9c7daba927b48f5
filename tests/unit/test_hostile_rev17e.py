"""Hostile review rev17e: the rev17d changes to curation and the splits' prompt key (right-to-left override runs
moderated in display order, per-phrase word boundaries with unspaced scripts, decorative marks and the symbols-only
key), attacked as hostile users of the app would.

Each test was a confirmed defect (filed as a strict xfail), fixed since; each asserts the property directly.
"""
from __future__ import annotations

import pytest
from test_hostile_rev17d import _matches  # noqa: E402  (phrase_matches over prompts, as curation runs it)

from pipelines.splits.assign import moderation_key, normalize_prompt

RLO, LRO, LRE, PDF, LRI, PDI = "\u202e", "\u202d", "\u202a", "\u202c", "\u2066", "\u2069"
ZWSP = "\u200b"


# --- 1. left-to-right text nested inside a right-to-left override is reversed although it shows as typed -------------

@pytest.mark.parametrize("wrapped", [RLO + LRI + f"nu{ZWSP}de" + PDI,          # isolate inside the override
                                     RLO + LRO + f"nu{ZWSP}de" + PDF + PDF])   # override inside the override
def test_left_to_right_text_nested_in_an_override_is_not_reversed(wrapped):
    # both render 'a nude statue'; without the RLO wrapper, 'a nu<ZWSP>de statue' is matched by its key (control)
    prompts = [f"a {wrapped} statue", f"a nu{ZWSP}de statue"]
    assert _matches(prompts, ["nude"]) == {(0, "nude"), (1, "nude")}


# --- 2. a stray pop (no isolate open) or an empty embedding ends the reversed run early ---------------------------

@pytest.mark.parametrize("opener", [RLO + PDI, RLO + LRE + PDF])
def test_a_stray_pop_does_not_end_a_right_to_left_override(opener):
    prompts = [f"a {opener}edun statue"]      # renders as 'a nude statue' (the override runs to the end)
    assert _matches(prompts, ["nude"]) == {(0, "nude")}


# --- 3. an override around text that is already right-to-left changes nothing on screen, but reverses the key --------

def test_an_override_around_right_to_left_text_does_not_hide_a_phrase():
    word = "זו" + ZWSP + "נה"                 # the Hebrew phrase with a zero-width space: caught by its key
    prompts = [RLO + word + PDF, word]        # an RLO around RTL letters renders exactly like the bare word
    assert _matches(prompts, ["זונה"]) == {(0, "זונה"), (1, "זונה")}


# --- 4. a decomposed accent in an override is moved onto the wrong letter ------------------------------------------

def test_a_decomposed_accent_in_an_override_stays_on_its_letter():
    composed, decomposed = RLO + "nóciram" + PDF, RLO + "no\u0301ciram" + PDF   # both render 'maricón'
    # the key holds the stored order and the shown one (both, since an override shows nested or right-to-left text
    # as stored): the shown one is the composed word, and the phrase is matched either way
    assert moderation_key(decomposed).split("\u2029")[-1] == moderation_key(composed).split("\u2029")[-1] == "maricón"
    assert _matches([decomposed, composed], ["maricón"]) == {(0, "maricón"), (1, "maricón")}
    assert _matches([decomposed], ["maricón"]) == {(0, "maricón")}


# --- 5. an override run crosses a paragraph separator --------------------------------------------------------------

def test_an_override_ends_at_a_paragraph_separator():
    prompts = [RLO + "abc\u2029" + f"nu{ZWSP}de statue", "abc\u2029" + f"nu{ZWSP}de statue"]
    assert _matches(prompts, ["nude"]) == {(0, "nude"), (1, "nude")}


# --- 6. a phrase of a spaced script ending in a vowel sign lost its word boundary ----------------------------------

def test_a_phrase_ending_in_a_vowel_sign_is_not_matched_inside_a_longer_word():
    # 'पानी' (water) ends with the vowel sign U+0940; 'पानीपत' is the city of Panipat, a different word
    assert _matches(["पानीपत शहर", "ठंडा पानी"], ["पानी"]) == {(1, "पानी")}


# --- 7. a katakana phrase now matches inside any katakana word ----------------------------------------------------

def test_a_katakana_phrase_is_not_matched_inside_another_katakana_word():
    prompts = ["低カロリーのケーキ", "フロリダの海", "ロリの絵"]
    assert _matches(prompts, ["ロリ"]) == {(2, "ロリ")}


# --- 8. the prolonged sound mark is a Japanese letter of no unspaced script --------------------------------------

@pytest.mark.parametrize("prompt, phrase", [("セクシーgirl", "セクシー"), ("ローsexy", "sexy")])
def test_the_prolonged_sound_mark_is_a_boundary_like_any_kana(prompt, phrase):
    assert _matches([prompt], [phrase]) == {(0, phrase)}


# --- 9. a prohibition mark on an emoji is dropped from the symbols-only key ---------------------------------------

def test_a_prohibited_emoji_does_not_key_as_the_emoji():
    assert normalize_prompt("🚬\u20e0") != normalize_prompt("🚬")
    assert normalize_prompt("🍺\u20e0") != normalize_prompt("🍺")


# --- 10. a phrase starting or ending with ASCII punctuation now matches inside arithmetic ----------------------------

@pytest.mark.parametrize("prompt, phrase", [("18+2=20 on a chalkboard", "18+"), ("10+18=28 on a chalkboard", "+18")])
def test_a_punctuation_ended_phrase_is_not_matched_inside_arithmetic(prompt, phrase):
    assert _matches([prompt, f"rated {phrase} only"], [phrase]) == {(1, phrase)}


# --- 11. the combined pattern of a few hundred phrases no longer compiles ------------------------------------------

def test_a_moderation_list_of_a_few_hundred_phrases_compiles():
    words = sorted({f"w{i:04d}x" for i in range(399)} | {"nude"})
    assert _matches(["a nude statue", "a w0123x here", "nothing"], words) == {(0, "nude"), (1, "w0123x")}
