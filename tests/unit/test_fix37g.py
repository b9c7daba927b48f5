"""fix37g (review rev37g): phrases whose bodies are stuffed inside longer words no longer cost a guarded query each.

``decisions._phrase_values`` cut a part that matched (guarded) into halves tested by their unguarded bodies, down to
single phrases, each then tested by its own guarded RE2: a prompt that holds one phrase as a word and packs the
letters of every other listed phrase inside longer words made every listed phrase cost a guarded compile and scan.
Now, where both halves' bodies occur in a value, the two halves' guarded patterns are tested on those values and
each half goes on with what its guarded pattern matched there (and the values only its body occurs in), so the
guarded patterns follow the phrases present as words. These tests check the result is still exactly the
per-phrase definition (as typed, by key, by text; stuffed, present, and both), that the guarded patterns stay
bounded by the phrases present, and that ordinary prompts cost what they did (no guarded pattern more).
"""
from __future__ import annotations

import math
import random
import string

import pytest
from test_phrase_group_testing import _connect, _one_by_one

import pipelines.curation.decisions as decisions
from pipelines.curation.decisions import phrase_matches


def _run(prompts: list[str | None], phrases: list[str], monkeypatch) -> tuple[set[tuple[int, str]], list[int]]:
    """The (ranking_id, phrase) set of the real ``phrase_matches`` and the size of each guarded pattern it built."""
    built: list[int] = []
    real = decisions.phrase_pattern
    monkeypatch.setattr(decisions, "phrase_pattern",
                        lambda group, kinds=None: (built.append(len(group)), real(group, kinds))[1])
    got = {(r["ranking_id"], r["phrase"]) for r in phrase_matches(_connect(prompts), phrases).to_pylist()}
    monkeypatch.setattr(decisions, "phrase_pattern", real)
    return got, built


def _six_letter_phrases(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(count)})


@pytest.mark.parametrize("seed", range(2))
def test_stuffed_and_present_phrases_are_found_exactly_as_one_by_one(seed, monkeypatch):
    """Several phrases present as words (as typed, in look-alike letters for the key, with punctuation for the
    text), every other one stuffed inside longer words, some present and stuffed at once: exactly the per-phrase
    result."""
    rng = random.Random(seed)
    words = _six_letter_phrases(seed, 12)
    phrases = sorted(set(words) | {"18+", "ass", "class", "🍆"})
    present = rng.sample(words, 3)
    prompts = []
    for i in range(6):
        stuffed = "".join(f"x{body}x" for body in rng.sample(words, 10))
        shown = present[i % 3]
        if i % 4 == 1:
            shown = shown.replace("a", "\u0430").replace("e", "\u0435").replace("o", "\u043e")   # Cyrillic look-alikes
        prompts.append(f"{shown} {i} {stuffed} x18+2 a class{i % 2 and ' 18+' or ''} big🍆")
    prompts += [None, "grass classy 118+1"]
    got, _ = _run(prompts, phrases, monkeypatch)
    assert got == _one_by_one(prompts, phrases)
    assert {phrase for _, phrase in got} >= set(present) | {"class", "🍆", "18+"}
    assert "ass" not in {phrase for _, phrase in got}


def test_guarded_patterns_follow_the_phrases_present_not_the_phrases_stuffed(monkeypatch):
    """Three phrases present as words among 64, all others stuffed in every prompt: at most one guarded pattern a
    level for each present phrase (its stuffed sibling half: the half holding it is known from its plain word since
    fix38j; two a level before), plus the part, per form (as typed, by key); one per stuffed phrase before fix37g."""
    phrases = _six_letter_phrases(7, 64)
    rng = random.Random(1)
    present = [phrases[3], phrases[30], phrases[60]]
    prompts = [f"{present[i % 3]} {i} " + "".join(f"x{body}x" for body in rng.sample(phrases, 60)) for i in range(12)]
    got, built = _run(prompts, phrases, monkeypatch)
    assert got == {(i, present[i % 3]) for i in range(12)}
    levels = math.ceil(math.log2(len(phrases)))
    assert len(built) <= 2 * (1 + len(present) * levels) < len(phrases), built


def test_only_stuffed_phrases_cost_one_guarded_pattern_a_part(monkeypatch):
    """None present as a word: the part's guarded pattern decides (review rev18c's promise kept), nothing found."""
    phrases = _six_letter_phrases(3, 40)
    prompts = ["".join(f"x{body}x" for body in phrases) + f" {i}" for i in range(10)]
    got, built = _run(prompts, phrases, monkeypatch)
    assert got == set()
    assert built == [len(phrases), len(phrases)]          # one part, as typed and by key


def test_ordinary_prompts_cost_what_they_did(monkeypatch):
    """One phrase present, no other body anywhere: the part, then bodies down to it and its own guarded pattern, per
    form; the halves are never tested by guarded patterns when only one side's bodies occur."""
    phrases = _six_letter_phrases(5, 40)
    prompts = [f"a photo of a red house {phrases[9]} {i}" for i in range(10)] + ["a dog"]
    got, built = _run(prompts, phrases, monkeypatch)
    assert got == {(i, phrases[9]) for i in range(10)}
    assert built == [len(phrases), 1, len(phrases), 1]


def test_a_phrase_whose_body_hides_in_another_present_phrase(monkeypatch):
    """``ass`` inside the present word ``class``, ``nude`` inside ``nudes``: both sides' bodies occur, the guarded
    halves tell which phrase is there; same result as one by one, for prompts that hold either, both or neither."""
    phrases = ["ass", "class", "nude", "nudes", "statue"]
    prompts = ["a class", "an ass", "class ass", "nudes", "a nude", "grass nudes classy", "statues", "x"]
    got, _ = _run(prompts, phrases, monkeypatch)
    assert got == _one_by_one(prompts, phrases)
    assert got == {(0, "class"), (1, "ass"), (2, "class"), (2, "ass"), (3, "nudes"), (4, "nude"), (5, "nudes")}
