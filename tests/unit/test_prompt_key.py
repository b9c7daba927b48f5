"""The prompt key ignores invisible characters and cross-script look-alike letters; the caption stays as typed."""
from __future__ import annotations

import sys

import pyarrow.parquet as pq
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from splits_fixtures import pair_row, write_pairs

from formats.home import DataHome
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt

# Every default-ignorable code point (the Unicode property, as the regex package knows it).
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
IGNORABLES = [chr(cp) for cp in range(sys.maxunicode + 1) if _IGNORABLE.match(chr(cp))]
# Well-known homoglyphs of Latin letters from other scripts (Cyrillic, Greek, Armenian, IPA), an oracle
# independent of the ICU data the key is built from.
LOOKALIKES = {"a": "аɑα", "c": "сⅽ", "e": "еҽ", "i": "іɩ", "j": "ј", "o": "оοσ", "p": "рρ", "s": "ѕ", "x": "х",
              "y": "уγ", "h": "һ", "n": "ո", "u": "υս", "v": "ν", "w": "ԝ", "d": "ԁ", "g": "ɡ"}
ASCII_PROMPT = st.text(alphabet="abcdeghijnopsuvwxy ABCDEFGHIJ,.!-'", min_size=1, max_size=40)


def test_ignorables_cover_the_characters_of_the_reported_leak():
    for char in ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufe0f", "\U000e0041", "\u180e", "\u034f"):
        assert char in IGNORABLES, hex(ord(char))
    assert normalize_prompt("a red\u200b circle on white") == normalize_prompt("a red circle on white")


@settings(max_examples=200, deadline=None)
@given(ASCII_PROMPT, st.lists(st.tuples(st.integers(0, 60), st.sampled_from(IGNORABLES)), max_size=6))
def test_invisible_characters_never_change_the_key(prompt, inserts):
    typed = prompt
    for position, char in inserts:
        at = position % (len(typed) + 1)
        typed = typed[:at] + char + typed[at:]
    assert normalize_prompt(typed) == normalize_prompt(prompt)


@settings(max_examples=200, deadline=None)
@given(ASCII_PROMPT, st.lists(st.integers(0, 60), max_size=8), st.integers(0, 2))
def test_lookalike_letters_from_other_scripts_give_one_key(prompt, positions, pick):
    typed = list(prompt)
    for position in positions:
        at = position % len(typed)
        options = LOOKALIKES.get(typed[at].lower())
        if options:
            typed[at] = options[pick % len(options)]
    assert normalize_prompt("".join(typed)) == normalize_prompt(prompt)


def test_different_prompts_keep_different_keys():
    assert normalize_prompt("a red circle") != normalize_prompt("a red square")
    assert normalize_prompt("corn field") != normalize_prompt("com field")  # ASCII is left as typed
    assert normalize_prompt("красный круг") != normalize_prompt("синий круг")
    assert normalize_prompt("\u200b\u200d") != ""  # nothing left: keyed on its own text, never the empty key


def test_the_caption_keeps_what_was_typed(tmp_path):
    home = DataHome(tmp_path)
    variants = ["a red circle on white", "a red\u200b circle on white", "a r\u0435d circle on white"]
    write_pairs(home, [pair_row(i + 1, f"{i:016x}", v, f"c{i}", f"d{i}") for i, v in enumerate(variants)])
    build_splits(home, SplitConfig(min_unique_rows=0))
    rows = pq.read_table(home.table_file("split_pairs")).to_pylist()
    rejects = pq.read_table(home.table_file("split_rejects")).to_pylist()
    assert {r["prompt_key"] for r in rows + rejects} == {"a red circle on white"}
    assert {r["caption"] for r in rows} <= set(variants)
    assert len({r["split"] for r in rows if not r["split"].endswith("_unique")}) == 1  # one owner, no leak


# Capital homoglyphs (a hostile review: case folding ran first, so Cyrillic М became м, no look-alike of m).
CAPITAL_LOOKALIKES = {"A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "K": "КΚ", "M": "МΜ",
                      "N": "Ν", "O": "ОΟ", "P": "РΡ", "T": "ТΤ", "X": "ХΧ", "Y": "Υ", "Z": "Ζ"}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCEHIKMNOPTXYZ abc", min_size=1, max_size=40), st.lists(st.integers(0, 60), max_size=8),
       st.integers(0, 2))
def test_capital_lookalikes_from_other_scripts_give_one_key(prompt, positions, pick):
    typed = list(prompt)
    for position in positions:
        at = position % len(typed)
        options = CAPITAL_LOOKALIKES.get(typed[at])
        if options:
            typed[at] = options[pick % len(options)]
    assert normalize_prompt("".join(typed)) == normalize_prompt(prompt)


def test_what_the_hostile_review_typed_keys_as_the_plain_prompt():
    plain = normalize_prompt("a cafe on the moon at night")
    cases = {
        "capitals": ("THE MOON AND HONEY", "ТНЕ МОО\u039d А\u039dD НО\u039dЕ\u03a5"),
        "greek capitals": ("NIKE SHOES", "\u039d\u0399\u039a\u0395 SHOES"),
        "turkish capital dotted I": ("istanbul gece", "\u0130STANBUL GECE"),
        "joiner inside an accent": ("café", "cafe\u034f\u0301"),
        "zero width space inside an accent": ("café", "cafe\u200b\u0301"),
        "cyrillic e with a combining acute": ("café", "caf\u0435\u0301"),
        "braille blank as spaces": ("a cafe on the moon", "a\u2800cafe\u2800on\u2800the\u2800moon"),
        "interlinear annotation": ("a cafe", "a \ufff9cafe"),
        "egyptian format control": ("a cafe", "a cafe\U00013430"),
    }
    for name, (typed, lookalike) in cases.items():
        assert normalize_prompt(lookalike) == normalize_prompt(typed), name
    assert plain != normalize_prompt("a cafe on the moon at noon")


def test_icu_lookalike_letters_key_as_their_ascii_twin():
    """Every non-ASCII letter ICU's confusables data ties to an ASCII letter or digit keys as that character,
    but for a few whose NFKC or case folding says otherwise (long s is s; the lunate sigmas are sigmas)."""
    import unicodedata

    import icu

    checker = icu.SpoofChecker()
    twins: dict[str, list[str]] = {}
    for char in (chr(c) for c in range(0x30, 0x7F) if chr(c).isalnum()):
        twins.setdefault(checker.getSkeleton(0, char), []).append(char)
    missed = []
    for cp in range(0x80, sys.maxunicode + 1):
        char = chr(cp)
        if not unicodedata.category(char).startswith("L"):
            continue
        targets = twins.get(checker.getSkeleton(0, char))
        if targets and normalize_prompt(f"x{char}x") not in {normalize_prompt(f"x{t}x") for t in targets}:
            missed.append(char)
    assert set(missed) <= {"\u017f", "\u03f2", "\u03f9", "\u037a"}, [f"U+{ord(c):04X}" for c in missed]
