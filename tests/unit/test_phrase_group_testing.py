"""Moderation phrases are found by group testing over distinct prompts, keys and texts (December 5, 2026).

``phrase_matches`` used to run one query per phrase over every hit ranking (each query compiling three guarded
RE2s, ~40 ms): a list of 1,000 phrases took 96 s over 100k rankings. It now tests each part of the list on each
distinct value, then halves of a part that matched only on the values the part matched. These tests check that
the result is exactly the per-phrase result, and that a long list with few hits costs few queries.
"""
from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

import pipelines.curation.decisions as decisions
from pipelines.curation.decisions import _is_words, edge_kinds, phrase_matches, phrase_pattern
from pipelines.splits.assign import moderation_key, moderation_text

PIECES = ["nude", "nüde", "n\u200bude", "ｎｕｄｅ", "nud", "e", "18+", "18", "🍆", "🍆🍆", " ", "  ", "-", ".",
          "ロリ", "カロリー", "一个", "裸体", "sexy", "SEXY", "s e x y", "é", "e\u0301", "\u202e", "edun", "#️⃣", "*",
          "x", "ñ", "\u0435", "Ⓝude", "nude statue", "statue"]


def _connect(prompts: list[str | None]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return con


def _one_by_one(prompts: list[str | None], phrases: list[str]) -> set[tuple[int, str]]:
    """The definition: each phrase's own pattern on each prompt as typed, on its key (a phrase of words) or on its
    text (any other phrase), each key or text bounded as its first phrase in reverse order is."""
    con = duckdb.connect()
    keys = {p: moderation_key(p) for p in phrases if _is_words(p)}
    texts = {p: moderation_text(p) for p in phrases if not _is_words(p)}
    key_kinds = {k: edge_kinds(p) for p, k in sorted(keys.items(), reverse=True) if k}
    text_kinds = {t: edge_kinds(p) for p, t in sorted(texts.items(), reverse=True) if t}

    def hit(value: str, pattern: str) -> bool:
        return con.execute("SELECT regexp_matches(?, ?)", [value, pattern]).fetchone()[0]

    out = set()
    for rid, prompt in enumerate(prompts):
        if prompt is None:
            continue
        for phrase in phrases:
            if (hit(prompt, phrase_pattern([phrase]))
                    or (keys.get(phrase) and hit(moderation_key(prompt), phrase_pattern([keys[phrase]], key_kinds)))
                    or (texts.get(phrase) and hit(moderation_text(prompt), phrase_pattern([texts[phrase]], text_kinds)))):
                out.add((rid, phrase))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_group_testing_finds_exactly_what_each_phrase_alone_finds(seed):
    rng = random.Random(seed)
    phrases = sorted({"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 3))).strip() or "x"
                      for _ in range(rng.randint(2, 12))})
    prompts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(5, 25))]
    prompts += [None, prompts[0]] + [f"a {phrase} b" for phrase in phrases]   # NULL, a prompt of two rankings
    got = {(r["ranking_id"], r["phrase"]) for r in phrase_matches(_connect(prompts), phrases).to_pylist()}
    assert got == _one_by_one(prompts, phrases)
    assert len({phrase for _, phrase in got}) > len(phrases) // 2


def test_a_long_list_with_few_hits_costs_few_queries(monkeypatch):
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    phrases = sorted({" ".join("".join(rng.choice(letters) for _ in range(rng.randint(5, 8)))
                               for _ in range(rng.randint(1, 3))) for _ in range(4000)} | {"nude", "🍆"})
    prompts = ["a nude statue", "a cat 🍆", f"x {phrases[1234]} y", "a dog"] * 50
    queries = []
    real = decisions.run_sql

    def counting(con, name, params=None):
        queries.append(name)
        return real(con, name, params)

    monkeypatch.setattr(decisions, "run_sql", counting)
    got = {(r["ranking_id"] % 4, r["phrase"]) for r in phrase_matches(_connect(prompts), phrases).to_pylist()}
    assert got == {(0, "nude"), (1, "🍆"), (2, phrases[1234])}
    # three forms, each a few parts of <= 32 kB, then two halves a level for each hit: ~12 levels of 4,000 phrases
    splits = queries.count("curation_phrase_split")
    assert splits <= 3 * 12 + 3 * 13, splits      # one query a phrase before: 4,002 of them
    assert len(phrase_matches(_connect(["nothing here"]), phrases)) == 0


def test_a_korean_phrase_is_matched_with_its_particles_and_a_latin_one_before_hangul():
    """Korean writes its particles onto the word, also onto a Latin one (``sexy한 여자``): a phrase ending in Hangul
    is free at its end, and Hangul next to a word of another script is a boundary; a Hangul word before a Hangul
    phrase still hides it (``음란섹스`` is one word), and a longer Latin word still hides a Latin phrase."""
    from test_hostile_rev17d import _matches

    prompts = ["섹스를 하는 사람", "누드가 있는 그림", "a 섹스 scene", "음란섹스", "sexy한 여자", "nude사진",
               "사진nude", "nudes한 사진", "섹\u200b스를"]
    got = _matches(prompts, ["섹스", "누드", "sexy", "nude"])
    assert got == {(0, "섹스"), (1, "누드"), (2, "섹스"), (4, "sexy"), (5, "nude"), (6, "nude"), (8, "섹스")}
