"""Hostile review rev18e: the rev18a fixes to prompt moderation (``decisions.phrase_matches``: kana / kana_key
guards, edge kinds as read, ``\\s*`` next to an emoji) and to the prompt keys (``assign._prototype``,
``normalize_prompt``), attacked as hostile or ordinary users of the app would.

Each test reproduces a defect on main and is marked ``xfail(strict=True)`` until it is fixed; each asserts the
violated property directly (what the README promises, or what a team running the pipeline would expect).
"""
from __future__ import annotations

import unicodedata

import pytest
from test_hostile_rev17d import _matches

from pipelines.splits.assign import normalize_prompt

# --- 1. a phrase typed in shaped letters matches inside a longer word typed in the same shapes -----------------------

@pytest.mark.parametrize("phrase, prompts", [
    # circled letters (NFKC: a s s) and negative squared letters (read as letters since rev18a)
    ("ⓐⓢⓢ", ["ⓖⓛⓐⓢⓢ ⓞⓕ ⓦⓐⓣⓔⓡ", "an ⓐⓢⓢ", "ⓑⓐⓢⓢ guitar"]),
    ("🅰🆂🆂", ["🅶🅻🅰🆂🆂 🅾🅵 🆆🅰🆃🅴🆁", "an 🅰🆂🆂", "🅱🅰🆂🆂 guitar"]),
])
def test_a_shaped_phrase_is_not_matched_inside_a_shaped_longer_word(phrase, prompts):
    # README: "ⓐⓢⓢ is bounded as ass, not in glass"; fancy-text generators write a whole prompt in one shape, so
    # "glass of water" / "bass guitar" in circled letters must not hit, as their plain spellings do not
    assert _matches(prompts, [phrase]) == {(1, phrase)}


# --- 2. the Hiragana へ added to the key's Katakana look-alikes hides ロリ before the particle へ ----------------------

def test_a_katakana_phrase_before_the_particle_he_is_matched_in_halfwidth_or_with_an_invisible():
    # README: ロリ "is in ロリの絵 and ロリへの愛"; the key reads halfwidth Katakana (NFKC) and drops zero-width
    # characters, so these render / read as ロリへの愛. On the prompt as typed the phrase is not there, and in the
    # key 口リへの愛 the へ after リ now counts as Katakana (it is what ヘ folds to)
    prompts = ["ﾛﾘへの愛", "ロ\u200bリへの愛", "ロリへの愛"]
    assert _matches(prompts, ["ロリ"]) == {(0, "ロリ"), (1, "ロリ"), (2, "ロリ")}


# --- 3. the rev18a fix for エロ二次元 covers only the prompt as typed ----------------------------------------------------

def test_a_katakana_phrase_before_a_han_numeral_is_matched_in_halfwidth_or_with_an_invisible():
    # README: "エロ二次元 holds エロ: 二 is the numeral two"; halfwidth Katakana or one zero-width space hides it again
    prompts = ["ｴﾛ二次元の絵", "エ\u200bロ二次元の絵", "エロ二次元の絵"]
    assert _matches(prompts, ["エロ"]) == {(0, "エロ"), (1, "エロ"), (2, "エロ")}


# --- 4. a decomposed voiced Katakana letter before a Katakana phrase ends the Katakana run as typed ------------------

def test_a_katakana_phrase_is_not_matched_inside_a_decomposed_voiced_katakana_word():
    # README: ロリ "is not in カロリー, フロリダ, ペロリ, ポロリ or ドロリ"; the same words in NFD (macOS text, pasted
    # file names: ヘ + U+309A, ト + U+3099) render identically but are matched on the prompt as typed
    prompts = [unicodedata.normalize("NFD", p) for p in ["ペロリと舐める", "ポロリ", "ドロリとした"]] + ["ロリの絵"]
    assert _matches(prompts, ["ロリ"]) == {(3, "ロリ")}


# --- 5. an emoji phrase typed glued does not match the same text spaced ----------------------------------------------

def test_a_glued_emoji_phrase_matches_the_spaced_prompt():
    # README: "the whitespace of a phrase next to an emoji may be absent (peach🍑 holds peach 🍑)", "an emoji is
    # never part of a word"; the prompts key alike (#🍑🍆, peach), yet the glued phrase misses the spaced prompt
    prompts = ["🍑 🍆", "peach 🍑 on a table"]
    assert normalize_prompt("🍑 🍆") == normalize_prompt("🍑🍆")
    assert normalize_prompt("peach 🍑") == normalize_prompt("peach🍑")
    assert _matches(prompts, ["🍑🍆", "peach🍑"]) == {(0, "🍑🍆"), (1, "peach🍑")}


# --- 6. a Cyrillic or Greek prompt keys apart in upper and lower case: a train / test leak ----------------------------

@pytest.mark.parametrize("prompt", ["Кот в сапогах", "Москва ночью", "Год дракона", "Λίμνη στο βουνό"])
def test_a_cyrillic_or_greek_prompt_keys_alike_in_upper_and_lower_case(prompt):
    # step 6 case-folds the key (A Red Fox is a red fox); capitals are folded as Latin capitals before it, small
    # letters to other look-alikes (К→k, к→ĸ; М→m, м→ʍ; Г→y, г→r; Λ→ʌ, λ→λ), so a sentence-initial capital
    # (or caps lock) gives the same prompt a second key and both can land in different splits
    lower = prompt[0].lower() + prompt[1:]
    assert normalize_prompt(prompt) == normalize_prompt(lower) == normalize_prompt(prompt.upper())


# --- 7. Lisu tone letters (modifier letters) fold to punctuation and vanish from the key -----------------------------

def test_lisu_tone_letters_are_not_folded_to_punctuation():
    # README (splits v9): the confusable fold "turns no letter or digit into punctuation (but the apostrophe-like
    # modifier letters)"; Lisu tone letters MYA TI ꓸ and NA PO ꓹ (U+A4F8, U+A4F9, Lm) look like . and , and mark the
    # tone of the syllable before them: the same syllable in two tones is two words, all three key as 'll m'
    keys = {normalize_prompt(p) for p in ["ꓡꓲ ꓟꓸ", "ꓡꓲ ꓟꓹ", "ꓡꓲ ꓟ"]}
    assert len(keys) == 3


# --- fixes of this review: what else they must keep ------------------------------------------------------------------

def test_halfwidth_sound_marks_are_katakana_to_the_typed_guard():
    # ﾍﾟﾛﾘ (halfwidth ﾍ + the halfwidth semi-voiced mark) is ペロリ: one Katakana word
    assert _matches(["ﾍﾟﾛﾘと舐める", "ﾛﾘの絵"], ["ロリ"]) == {(1, "ロリ")}


def test_a_shaped_phrase_still_matches_as_its_own_word():
    assert _matches(["ⓐⓢⓢ", "big ⓐⓢⓢ!", "ⓐⓢⓢ🍑"], ["ⓐⓢⓢ", "ass"]) >= {(0, "ⓐⓢⓢ"), (1, "ⓐⓢⓢ"), (2, "ⓐⓢⓢ")}


def test_a_glued_emoji_phrase_is_still_bounded_at_its_words():
    # peach🍑 holds peach 🍑, but not peaches🍑: the letters keep their word boundary
    assert _matches(["peaches 🍑", "a peach🍑", "🍑🍆🍑"], ["peach🍑", "🍑🍆"]) == {(1, "peach🍑"), (2, "🍑🍆")}
