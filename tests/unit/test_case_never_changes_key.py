"""Review rev18e: a prompt's key never depends on the case it was typed in (a sentence-initial capital or caps lock
must not give one prompt two keys, which could put it in two splits). Checked for every cased letter in Unicode."""
from __future__ import annotations

import sys

from pipelines.splits.assign import moderation_key, moderation_text, normalize_prompt

CASED = [chr(cp) for cp in range(sys.maxunicode + 1) if chr(cp).lower() != chr(cp)]


def test_every_cased_letter_keys_as_its_small_letter():
    assert len(CASED) > 1400
    apart = []
    for char in CASED:
        small = char.lower()
        for word in ("{}", "{}ot", "ka{}", "к{}т", "λ{}ν"):
            if normalize_prompt(word.format(char)) != normalize_prompt(word.format(small)):
                apart.append((f"U+{ord(char):04X}", word))
    assert apart == []


def test_every_cased_letter_reads_as_its_small_letter_to_moderation():
    apart = [f"U+{ord(c):04X}" for c in CASED
             if moderation_key(f"a{c}b") != moderation_key(f"a{c.lower()}b")
             or moderation_text(f"a{c}b!") != moderation_text(f"a{c.lower()}b!")]
    assert apart == []


def test_the_reported_prompts_key_alike_in_any_case():
    for prompt in ("Кот в сапогах", "Москва ночью", "Год дракона", "Λίμνη στο βουνό", "Νύχτα", "Ύπνος"):
        keys = {normalize_prompt(p) for p in (prompt, prompt.lower(), prompt.upper(), prompt.title())}
        assert len(keys) == 1, (prompt, keys)


def test_only_apostrophe_like_modifier_letters_fold_to_punctuation():
    # review rev18e: NKo ߺ, ˆ, ː and 〳 (modifier letters ICU reads as _ ^ : /) stay letters; ʼ ʻ still read as '
    for letter in ("\u07fa", "\u02c6", "\u02d0", "\u3033", "\ua4f8", "\ua4f9", "\u07f4"):
        assert normalize_prompt(f"ab{letter}") != normalize_prompt("ab"), f"U+{ord(letter):04X}"
    assert moderation_key("a girl\u02bcs") == moderation_key("a girl\u02bbs") == moderation_key("a girl's")


def test_katakana_keys_as_katakana():
    # review rev18e: halfwidth Katakana keys as fullwidth (NFKC), and no longer as its Han / Hiragana look-alikes
    assert normalize_prompt("ﾛﾘ") == normalize_prompt("ロリ") == "ロリ"
    assert normalize_prompt("ロリへ") != normalize_prompt("ロリヘ")
    assert normalize_prompt("ﾍﾟﾛﾘ") == normalize_prompt("ペロリ") == normalize_prompt("ヘ\u309aロリ")
