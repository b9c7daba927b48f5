"""Hostile review rev18i: the rev18g / rev18h fixes (case folded on the canonical decomposition, moderation text folds
case first, the CJK scripts kept out of the confusable fold) attacked for train / test leaks, moderation misses and
case dependence.

Each test reproduced a defect found by running it (a strict xfail until it was fixed; 1 and 2 fixed the same day, 3 left); each asserts the violated
property directly (what the README promises, or what a team running the pipeline would expect).
"""
from __future__ import annotations

import pytest
from test_hostile_rev17d import _matches

from pipelines.splits.assign import normalize_prompt

# --- 1. a Korean phrase typed in compatibility jamo is no longer found when a syllable has a final consonant ----------

def test_a_korean_phrase_typed_in_compatibility_jamo_is_matched_whatever_its_final_consonants():
    # Spelling a word out in compatibility jamo (ㅅㅔㄱㅅㅡ for 섹스) is a usual way to slip past a Korean word filter.
    # NFKC turns every compatibility consonant into a *leading* conjoining jamo, so NFC composes ㄴㅜㄷㅡ back into
    # 누드 (matched) but can never give 섹 or 슴 their final consonant: the key of ㅅㅔㄱㅅㅡ is 세ᄀ스, of ㄱㅏㅅㅡㅁ
    # 가스ᄆ. Before 26f9785 ICU's prototypes spelled 섹스 and ㅅㅔㄱㅅㅡ alike (서丨ᄀᄉー) and all three prompts were
    # dropped; keeping Hangul syllables whole (review rev18g) lost them, while the same spelling of a word without a
    # final consonant (ㄴㅜㄷㅡ) is still caught: whether the filter sees a jamo-typed word depends on its batchim.
    prompts = ["ㅅㅔㄱㅅㅡ 사진", "ㄱㅏㅅㅡㅁ 노출", "ㅅㅔㄱㅅㅡ를", "ㄴㅜㄷㅡ 사진"]
    assert _matches(prompts, ["섹스", "가슴", "누드"]) == {(0, "섹스"), (1, "가슴"), (2, "섹스"), (3, "누드")}


# --- 2. a combining semi-voiced mark continues a Katakana run as typed but not in the key ------------------------------

def test_a_semi_voiced_mark_continues_a_katakana_run_in_the_key_as_it_does_as_typed():
    # README section 5: a Katakana phrase's neighbour "must not be Katakana (with the prolonged sound mark ー and the
    # voiced and semi-voiced sound marks, combining U+3099 / U+309A as NFD text has them, spacing and halfwidth) ... so
    # the guard is the same on the prompt as typed and on its key". Where U+309A composes with nothing (ロ゚, the Ainu
    # ト゚, halfwidth ﾛﾟ), the key keeps ICU's prototype of the lone mark, the combining ring U+030A, which
    # decisions._kana_lookalikes (built from precomposed Katakana only) does not list: the key's guard takes it for a
    # boundary. The voiced mark U+3099 (its own prototype) is guarded, so ｴﾛﾞ and ｴﾛﾟ are bounded differently.
    prompts = ["ｴﾛﾟ", "エロ\u309a", "ト\u309aロリ", "ｴﾛﾞ", "エロ\u3099"]
    assert _matches(prompts, ["エロ", "ロリ"]) == set()


# --- 3. case still changes the key of a dotless i carrying a caron or inverted breve ----------------------------------

@pytest.mark.xfail(strict=True, reason="left on purpose (rev18i): ı̌/ı̑ key as ĭ/î (ICU folds the lone mark) but "
                                       "capitalised Ǐ/Ȋ as ǐ/ȋ: case changes the key of a dotless i with a caron or "
                                       "inverted breve, spellings no language uses; README section 5")
@pytest.mark.parametrize("prompt", ["ı\u030cri", "ı\u0311ri"])
def test_case_does_not_change_the_key_of_a_dotless_i_with_a_mark(prompt):
    # tests/unit/test_case_never_changes_key.py / README section 5: the fold "never depends on case". The small
    # dotless ı is non-ASCII and case-folds to itself, so its mark stays a lone combining character that the
    # look-alike fold maps through ICU (caron U+030C as breve U+0306, inverted breve U+0311 as circumflex U+0302);
    # its capital is the ASCII I, whose mark NFC composes into Ǐ / Ȋ and keeps. The same word keys apart when
    # capitalised (low severity: a rare spelling; a sweep of every cased letter with every combining mark U+0300..036F,
    # U+1DC0..1DFF, U+20D0..20F0 found only these and Greek letters with ypogegrammeni followed by a further mark).
    for cased in (prompt.upper(), prompt.capitalize()):
        assert normalize_prompt(cased) == normalize_prompt(prompt), cased
