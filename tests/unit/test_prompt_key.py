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
