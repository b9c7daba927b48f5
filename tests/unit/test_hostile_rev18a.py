"""Hostile review rev18a: prompt moderation (``decisions.phrase_matches`` and its edge kinds) and the prompt keys
(``assign.moderation_key`` / ``moderation_text`` / ``normalize_prompt``), attacked as hostile users of the app would.

Each test reproduces a defect on main and is marked ``xfail(strict=True)`` until it is fixed; each asserts the
violated property directly.
"""
from __future__ import annotations

import pytest
from test_hostile_rev17d import _matches

from pipelines.splits.assign import normalize_prompt

# --- 1. a caseless look-alike of l or O keys as the digit 1 or 0 -----------------------------------------------------

def test_a_caseless_lookalike_letter_does_not_hide_a_phrase():
    # U+A4F3 LISU LETTER O and U+A4D1 / U+A4E3 / U+A4E0 (Lisu P, R, N) look like O, P, R, N; U+01C0 LATIN LETTER
    # DENTAL CLICK is a vertical bar, like l. The key folds them to '0' and '1' ('p0rn', 's1ut'), not to letters.
    prompts = ["a p\ua4f3rn image", "\ua4d1\ua4f3\ua4e3\ua4e0", "a s\u01c0ut here"]
    assert _matches(prompts, ["porn", "slut"]) == {(0, "porn"), (1, "porn"), (2, "slut")}
    # the same fold splits one prompt in two keys (the ASCII capital O keys as o): a train / test leak
    assert normalize_prompt("a red fox in the sn\ua4f3w") == normalize_prompt("a red fox in the snOw")


# --- 2. a Han numeral after a Katakana phrase is taken for Katakana in the prompt as typed ---------------------------

def test_a_katakana_phrase_before_a_han_numeral_is_matched():
    # 'エロ二次元' ('erotic 2D art', a very common Japanese phrase): 二 is the Han numeral two, a change of script
    # (the README's rule: a Katakana phrase must not continue a Katakana run; 二 is a look-alike only in a key)
    assert _matches(["エロ二次元の絵", "エロ本"], ["エロ"]) == {(0, "エロ"), (1, "エロ")}


# --- 3. a voiced or semi-voiced Katakana letter before a Katakana phrase ends the Katakana run in the key ------------

def test_a_katakana_phrase_is_not_matched_after_a_voiced_katakana_letter():
    # 'ペロリと舐める' (licks it up), 'ポロリ' (slips out), 'ドロリとした' (thick, gooey): each one Katakana word, like
    # 'カロリー', which the README says does not hold 'ロリ'
    assert _matches(["ペロリと舐める", "ポロリ", "ドロリとした", "ロリの絵"], ["ロリ"]) == {(3, "ロリ")}


# --- 4. a punctuation or symbol look-alike hides a phrase holding punctuation -----------------------------------------

@pytest.mark.parametrize("prompts, phrase", [
    # smart punctuation (iOS, macOS, Word) turns ' into ’ as the user types; U+02BC, a letter, is already folded
    (["a girl\u2019s nipples", "a girl's nipples", "a girl\u02bcs nipples"], "girl's nipples"),
    # README: keycap digits do not hide '18+'; the heavy plus sign emoji U+2795 (ICU skeleton '+') does
    (["rated 1\ufe0f\u20e38\ufe0f\u20e3\u2795 only", "rated 18+ only", "rated 1\ufe0f\u20e38\ufe0f\u20e3+ only"], "18+"),
])
def test_a_phrase_with_punctuation_matches_its_lookalikes(prompts, phrase):
    assert _matches(prompts, [phrase]) == {(0, phrase), (1, phrase), (2, phrase)}


# --- 5. skin-tone modifiers hide a phrase of several emoji -----------------------------------------------------------

def test_an_emoji_phrase_is_matched_with_skin_tones():
    # U+1F3FB / U+1F3FF: the same gesture in another skin colour; the splits key already reads 👍🏻 as 👍
    prompts = ["👉👌 now", "👉\U0001F3FB👌\U0001F3FB now", "👉\U0001F3FF👌"]
    assert _matches(prompts, ["👉👌"]) == {(0, "👉👌"), (1, "👉👌"), (2, "👉👌")}


# --- 6. a phrase typed in circled or fullwidth characters loses its word boundaries (unless its plain form is listed)

@pytest.mark.parametrize("phrase, plain, prompts, hits", [
    ("ⓐⓢⓢ", "ass", ["a glass of water", "an ass", "grass"], {1}),
    # a fullwidth '１８＋' (as Japanese lists write it) matches the arithmetic review rev17e kept '18+' out of
    ("１８＋", "18+", ["18+2=20 on a chalkboard", "rated 18+ only"], {1}),
])
def test_a_styled_phrase_is_bounded_like_its_plain_form_whatever_else_is_listed(phrase, plain, prompts, hits):
    alone = _matches(prompts, [phrase])
    listed = {hit for hit in _matches(prompts, [phrase, plain]) if hit[1] == phrase}
    assert alone == listed == {(i, phrase) for i in hits}


# --- 7. "fancy text" made of other decorative combining marks -------------------------------------------------------

def _marked(text: str, mark: str) -> str:
    return "".join(c + mark if c != " " else c for c in text)


# U+0489 COMBINING CYRILLIC MILLIONS SIGN (an enclosing mark: n҉u҉d҉e҉), U+033D COMBINING X ABOVE and U+0353
# COMBINING X BELOW ('cross above / below'): styles of online fancy-text generators, put on every letter
@pytest.mark.parametrize("mark", ["\u0489", "\u033d", "\u0353"])
def test_a_phrase_in_other_fancy_text_marks_is_matched(mark):
    assert _matches([f"a {_marked('nude', mark)} statue"], ["nude"]) == {(0, "nude")}
    assert normalize_prompt(_marked("a red fox in the snow", mark)) == normalize_prompt("a red fox in the snow")


# --- 8. an emoji glued to the word before it hides a phrase of a word and an emoji -----------------------------------

def test_a_word_and_emoji_phrase_is_matched_when_the_emoji_is_glued_to_the_word():
    # the README's own example phrase; an emoji is never part of a word (rev17d: 'big🍆' holds '🍆'), and the splits
    # key reads 'peach🍑' and 'peach 🍑' as one prompt
    assert normalize_prompt("peach🍑") == normalize_prompt("peach 🍑")
    assert _matches(["a peach🍑 please", "a peach 🍑 please"], ["peach 🍑"]) == {(0, "peach 🍑"), (1, "peach 🍑")}


# --- 9. a phrase with an emoji misses the styled letters the key reads ----------------------------------------------

def test_a_word_and_emoji_phrase_is_matched_in_negative_squared_or_circled_letters():
    # the key reads 🅽🆄🅳🅴 as 'nude' (README: phrases match prompts in negative squared letters); squared 🄽 and
    # circled ⓝ letters already match 'nude 🍆' (NFKC), small capitals too
    prompts = ["\U0001F17D\U0001F184\U0001F173\U0001F174 🍆", "\U0001F15D\U0001F164\U0001F153\U0001F154 🍆",
               "\U0001F13D\U0001F144\U0001F133\U0001F134 🍆"]
    assert _matches(prompts, ["nude 🍆"]) == {(0, "nude 🍆"), (1, "nude 🍆"), (2, "nude 🍆")}


# --- 10. a common letter ICU reads as punctuation vanishes from a phrase's key ---------------------------------------

# ICU's skeleton ties Hiragana く to '<', Katakana ノ to '/', Hebrew yod י to "'": the key turns them into spaces, so
# a phrase's key loses a letter and matches words that do not hold the phrase
@pytest.mark.parametrize("prompts, phrase, hits", [
    # 'kuso' (shit), a Hiragana phrase (a substring match): 'blue sky and a breeze', 'that is a cat' hold no くそ
    (["青い空とそよ風", "それは猫", "くそ"], "くそ", {2}),
    # 'poruno' (porn): 'a portrait of Pol Pot' (ポル・ポト) holds no ポルノ
    (["ポル・ポトの肖像", "ポルノ動画"], "ポルノ", {1}),
    # Hebrew 'child': 'LED' (לד) is another word
    (["מנורת לד", "ילד"], "ילד", {1}),
])
def test_a_letter_read_as_punctuation_stays_in_a_phrase_key(prompts, phrase, hits):
    assert _matches(prompts, [phrase]) == {(i, phrase) for i in hits}


# --- 11. a prompt of bracketed text alone keys on its text without the look-alike fold -------------------------------

@pytest.mark.parametrize("retyped", ["[m\u0430sterpiece, best quality]",        # Cyrillic а
                                     "[\u1d0d\u1d00sterpiece, best quality]"])   # small capitals ᴍᴀ
def test_a_bracketed_only_prompt_with_lookalike_letters_keys_as_the_plain_prompt(retyped):
    # a whole prompt in brackets (Stable Diffusion's weighting / negative syntax) normalizes to nothing and keys on
    # its visible text; a Cyrillic а or a small capital keys as its Latin letter everywhere else (README section 5)
    assert normalize_prompt(retyped) == normalize_prompt("[masterpiece, best quality]")


# --- fixes' own guards (rev18a) --------------------------------------------------------------------------------------

def test_a_bracketed_only_prompt_keeps_its_words_and_symbols_apart():
    # the bracketed-only key keeps its words apart and its symbols (two prompts of other meaning, two keys)
    assert normalize_prompt("[a red fox]") != normalize_prompt("[ared fox]")
    assert normalize_prompt("\U0001F98A [fox]") != normalize_prompt("\U0001F436 [fox]")
    assert normalize_prompt("[a red fox!]") == normalize_prompt("[a  red fox]")
    assert normalize_prompt("[\U0001F17D\U0001F184\U0001F173\U0001F174]") == normalize_prompt("[nude]")
    # symbols-only and punctuation-only prompts keep their rev17d keys
    assert normalize_prompt("\U0001F98A \U0001F98A") == normalize_prompt("\U0001F98A\U0001F98A!")
    assert normalize_prompt("!!!") == "#!!!"


def test_a_letter_stays_a_letter_and_a_digit_a_digit_in_a_key():
    from pipelines.splits.assign import moderation_key
    assert moderation_key("\u05d9\u05dc\u05d3") != moderation_key("\u05dc\u05d3")      # Hebrew yod kept
    assert moderation_key("\u0661") == "1" and moderation_key("\u0627") == "l"          # Arabic-Indic one, alef
    assert moderation_key("a girl\u02bcs") == moderation_key("a girl's")                 # modifier apostrophe


def test_a_phrase_matches_the_same_prompts_whatever_else_shares_its_key():
    # ロ (Katakana) and 口 (Han) key alike: each phrase keeps its own edge kinds
    prompts = ["カロリー", "口リの絵", "ロリの絵", "x口リ", "力口リー"]
    for phrase, other in (("ロリ", "口リ"), ("口リ", "ロリ")):
        alone = _matches(prompts, [phrase])
        listed = {hit for hit in _matches(prompts, [phrase, other]) if hit[1] == phrase}
        assert alone == listed
