"""Hostile review rev18g: the rev18e fixes (case folded before the look-alike fold, Katakana folded by NFKC only in
keys, shaped letters and voiced marks in the guards, glued emoji phrases, apostrophe-like modifier letters) attacked
for train / test leaks, moderation misses and crashes.

Each test reproduced a defect (a strict xfail until it was fixed, the same day); each asserts the
violated property directly (what the README promises, or what a team running the pipeline would expect).
"""
from __future__ import annotations

import pytest
from test_hostile_rev17d import _matches

from pipelines.splits.assign import moderation_text, normalize_prompt

# --- 1. a sentence-initial capital still changes the key of a Greek letter with perispomeni and ypogegrammeni ---------

@pytest.mark.parametrize("prompt", ["ᾷσμα αρχαίο", "ῇδε η νύχτα", "ῷδε ο ήλιος"])
def test_a_capitalized_polytonic_prompt_keys_as_its_small_letters(prompt):
    # README section 5: "since review rev18e the fold never depends on case ... A test walks every cased letter of
    # Unicode". That test only walks letters whose lower() differs; ᾷ ῇ ῷ have no one-character capital, and their
    # Unicode title case (what str.capitalize / a sentence-initial capital gives) is Α + perispomeni + ypogegrammeni,
    # which NFC writes ᾼ + U+0342: the key puts the tilde on the iota (``aĩ``) instead of the alpha (``ãi``), so the
    # same prompt typed with a capital lands under a second key (and a phrase typed in small letters misses it)
    capitalized = prompt.capitalize()
    assert capitalized != prompt
    assert normalize_prompt(capitalized) == normalize_prompt(prompt)


# --- 2. Han 一 (and Hangul ㅡ) still fold to the Katakana prolonged sound mark ー in keys and texts ---------------------

def test_a_katakana_phrase_before_the_han_numeral_one_is_matched_in_halfwidth_or_with_an_invisible():
    # README section 5: "Han letters and Hiragana are no Katakana (エロ二次元 holds エロ: 二 is the numeral two) ...
    # Since review rev18e keys and texts keep Katakana as Katakana ... so the guard is the same on the prompt as typed
    # and on its key". The look-alike fold still turns the Han numeral 一 ("one": 一枚絵, 一人, 一色) into the Katakana
    # ー, so in the key the phrase continues a Katakana run: the rev18e defect 3 with 一 instead of 二 (ｴﾛ二次元 is
    # caught, ｴﾛ一枚絵 is not). Halfwidth Katakana and a zero-width space are matched only through the key.
    prompts = ["ｴﾛ一枚絵", "エ\u200bロ一枚絵", "ﾛﾘ一人", "ｾｯｸｽ一回"]
    assert _matches(prompts, ["エロ", "ロリ", "セックス"]) == {(0, "エロ"), (1, "エロ"), (2, "ロリ"), (3, "セックス")}


# --- 3. moderation text of a precomposed Greek letter still depends on case ------------------------------------------

def test_moderation_text_of_greek_with_accents_does_not_depend_on_case():
    # tests/unit/test_case_never_changes_key.py: every cased letter reads as its small letter to moderation (key and
    # text); README: "moderation text uses the same fold". moderation_text folds letter by letter before case folding,
    # so the small ΰ goes through its casefold (υ as y) while the capital Ϋ + acute folds as Ϋ's own skeleton (ü), and
    # the capital Α + U+0342 keeps a perispomeni the small ᾶ folds to a tilde: a phrase holding an emoji, matched on
    # the text, misses the same prompt in capitals
    for prompt in ("ταΰγετος 🏔", "ᾶ 🍆"):
        assert moderation_text(prompt.upper()) == moderation_text(prompt), prompt
    assert _matches(["ΤΑΫ́ΓΕΤΟΣ 🏔"], ["ταΰγετος 🏔"]) == {(0, "ταΰγετος 🏔")}


# --- 4. a Hangul neighbour no longer hides a Hangul phrase in the key when its vowel folds to ー or 丨 -----------------

def test_a_korean_phrase_is_not_matched_inside_a_longer_korean_word_through_its_key():
    # README section 5: "Hangul next to a word of another script is a boundary ..., next to a Hangul word it is not
    # (음란섹스 is one word)"; a phrase ending in Hangul is free at its end, its start stays a word boundary. The key
    # spells a syllable whose vowel holds ㅡ or ㅣ as jamo with the Katakana ー or the Han 丨 (니 as ᄂ丨, 르 as ᄅー),
    # which the Hangul guard takes for another script: 유니섹스 (unisex), 오르가슴, 스누드 hold 섹스, 가슴, 누드 in
    # their keys, while 음란섹스 (ᄂ before the phrase) rightly does not. A fashion prompt "유니섹스 패션" is dropped.
    prompts = ["유니섹스 패션", "오르가슴", "스누드", "음란섹스", "섹스를"]
    assert _matches(prompts, ["섹스", "가슴", "누드"]) == {(4, "섹스")}
