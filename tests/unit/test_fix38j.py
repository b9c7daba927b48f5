"""fix38j (review rev38b): a prompt pasting the banned list no longer costs two guarded patterns a listed phrase.

fix37g told apart halves whose bodies occur in the same values by both halves' guarded patterns; where every phrase
is there as a word, nothing was pruned and every split of the list cost two guarded RE2s (1,999 at 1,000 phrases
against 1,001 before). Now the halves are first tested by :func:`~pipelines.curation.decisions.plain_word_pattern`
(their bodies between spaces, ASCII punctuation or the value's ends, as cheap as the bodies): a half matched so
holds a phrase there (each guard takes such a neighbour as a boundary), and guarded patterns are built only for the
halves left in doubt. These tests check that claim against every guard, that the result is still the per-element
definition, and the counts for pasted lists, stuffed prompts and their mixes.
"""
from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest
from test_fix37g import _six_letter_phrases

import pipelines.curation.decisions as decisions
from pipelines.curation.decisions import _GUARDS, _PLAIN_EDGE, phrase_pattern, plain_word_pattern

# a phrase of each guard kind (as a key or text would be bounded)
_OF_KIND = {"word": "ab", "kana": "ロリ", "hangul": "섹스", "free": "裸体"}


_CON = duckdb.connect()     # the oracle's own: a connection a call costs ~25 ms, more than most queries here


def _hits(values: list[str], pattern: str) -> list[bool]:
    con = _CON
    con.register("v", pa.table({"i": pa.array(range(len(values)), pa.int64()), "value": pa.array(values, pa.string())}))
    return [row[0] for row in con.execute("SELECT regexp_matches(value, ?) FROM v ORDER BY i", [pattern]).fetchall()]


def _counted(monkeypatch, values: list[str], elements: list[str], kinds=None) -> tuple[dict[str, list[str]], int]:
    """``_phrase_values``' result and how many guarded patterns it built."""
    built: list[int] = []
    real = decisions.phrase_pattern
    monkeypatch.setattr(decisions, "phrase_pattern", lambda group, kinds=None: (built.append(len(group)),
                                                                                  real(group, kinds))[1])
    found = decisions._phrase_values(duckdb.connect(), values, elements, kinds)
    monkeypatch.setattr(decisions, "phrase_pattern", real)
    return found, len(built)


def _one_by_one(values: list[str], elements: list[str], kinds=None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for element in elements:
        for value, hit in zip(values, _hits(values, phrase_pattern([element], kinds))):
            if hit:
                out.setdefault(element, []).append(value)
    return out


def test_every_plain_edge_is_a_boundary_of_every_guard():
    """The claim the shortcut rests on: each character of ``_PLAIN_EDGE`` (every character of the BMP tested) before and after a
    phrase of any kind lets the guarded pattern match; letters, digits, underscore, marks and Katakana are no plain
    edge, so a phrase next to them is left to the guarded pattern."""
    bmp = [chr(cp) for cp in range(0x10000) if not 0xD800 <= cp < 0xE000]     # surrogates are no text
    edges = [ch for ch, hit in zip(bmp, _hits(bmp, f"^{_PLAIN_EDGE}$")) if hit]
    assert {" ", "\t", "\n", ",", "+", "\u00a0", "\u3000", "\u3001", "\uff0c"} <= set(edges)
    assert not {"a", "Z", "0", "_", "é", "\u0301", "ー", "ロ", "\u200b", "ⓐ"} & set(edges)
    for kind, element in _OF_KIND.items():
        values = [f"{edge}{element}{edge}" for edge in edges]
        assert all(_hits(values, phrase_pattern([element], {element: (kind, kind)}))), kind
        assert all(_hits(values, plain_word_pattern([element]))), kind
    assert set(_GUARDS) == set(_OF_KIND)


@pytest.mark.parametrize("seed", range(40))
def test_the_result_is_each_element_on_each_value(seed):
    """Random lists over a hostile alphabet (ASCII punctuation and spaces, the plain edges, look-alikes, Katakana,
    Hangul, Han, marks, emoji) and values made of them, as typed and with random kinds: exactly one by one."""
    rng = random.Random(seed)
    letters = ["a", "b", "ab", "ba", "A", "ß", "ſ", "K", "İ", "ς", "e\u0301", "\u0301", "ロ", "リ", "ロリ", "ー", "섹",
               "스", "裸", "🍆", "+", ".", "-", "_", "*", "(", "1", "\u200b"]
    edges = [" ", ",", "\u3001", "\u00a0", "\u3000", "x", "ー", "🍆", ""]
    elements = sorted({"".join(rng.choices(letters, k=rng.randint(1, 3))).strip() or "a"
                       for _ in range(rng.randint(2, 30))})
    values = sorted({"".join(rng.choice(edges) + rng.choice(elements + letters) for _ in range(rng.randint(1, 12)))
                     + rng.choice(edges) for _ in range(rng.randint(3, 12))})
    kinds = None
    if seed % 2:
        kinds = {element: (rng.choice(list(_GUARDS)), rng.choice(list(_GUARDS))) for element in elements}
    found = decisions._phrase_values(duckdb.connect(), values, elements, kinds)
    assert {k: sorted(v) for k, v in found.items()} == _one_by_one(values, elements, kinds)


@pytest.mark.parametrize("separator", [" ", ", ", "\n", "\u3001", "\u00a0"])
def test_a_pasted_list_costs_only_the_part(separator, monkeypatch):
    """Every listed phrase there as a word: each half is known to hold one from its plain words, so only the part's
    own guarded pattern is built (127 at 64 phrases with fix37g, 65 before it)."""
    phrases = _six_letter_phrases(38, 64)
    prompt = separator.join(phrases)
    found, built = _counted(monkeypatch, [prompt, "nothing"], phrases)
    assert found == {phrase: [prompt] for phrase in phrases}
    assert built == 1


def test_a_list_pasted_between_other_characters_costs_at_most_fix37g(monkeypatch):
    """Glued by an emoji (no plain edge, a boundary for the guards): the guarded patterns decide, at most two a split
    as with fix37g; the result is the same."""
    phrases = _six_letter_phrases(38, 16)
    prompt = "🍆".join(phrases)
    found, built = _counted(monkeypatch, [prompt], phrases)
    assert found == {phrase: [prompt] for phrase in phrases}
    assert built <= 1 + 2 * (len(phrases) - 1)


def test_stuffed_prompts_keep_fix37g_savings_with_several_phrases_present(monkeypatch):
    """Two phrases there as words, one in each half, and every listed phrase stuffed inside longer words: the halves
    holding a word are known from it, only their stuffed siblings cost a guarded pattern, about one a level for each
    phrase present (fix37g: 39 at 1,000 phrases; a rule that stopped checking where a check pruned nothing would
    have cost one a phrase here)."""
    phrases = _six_letter_phrases(38, 256)
    present = [phrases[5], phrases[200]]
    prompt = " ".join(present) + " " + "".join(f"x{body}x" for body in phrases)
    found, built = _counted(monkeypatch, [prompt], phrases)
    assert found == {phrase: [prompt] for phrase in present}
    assert built <= 1 + len(present) * 8, built                     # 8 levels of 256


def test_half_pasted_half_stuffed_costs_a_guarded_pattern_for_each_stuffed_phrase_at_most(monkeypatch):
    phrases = _six_letter_phrases(38, 64)
    words, stuffed = phrases[::2], phrases[1::2]
    prompt = " ".join(words) + " " + "".join(f"x{body}x" for body in stuffed)
    found, built = _counted(monkeypatch, [prompt], phrases)
    assert found == {phrase: [prompt] for phrase in words}
    assert built <= 1 + len(stuffed), built                         # 127 with fix37g


def test_a_plain_word_of_one_value_does_not_decide_another(monkeypatch):
    """Two values holding both halves' bodies: one as plain words, one with a half only stuffed; each is decided on
    its own."""
    phrases = _six_letter_phrases(38, 8)
    pasted = " ".join(phrases)
    mixed = f"{phrases[0]} " + "".join(f"x{body}x" for body in phrases[1:])
    found, _ = _counted(monkeypatch, [pasted, mixed], phrases)
    assert {k: sorted(v) for k, v in found.items()} == {phrases[0]: sorted([pasted, mixed]),
                                                         **{phrase: [pasted] for phrase in phrases[1:]}}
