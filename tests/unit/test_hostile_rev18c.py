"""Hostile review rev18c (December 5, 2026): the sub-band search of dedup buckets past the pair budget
(``pipelines.curation.dedup._link_subbands``) and moderation phrase matching by group testing
(``pipelines.curation.decisions._phrase_values``). Each test was a confirmed
defect (a strict xfail), fixed the same day; the two timing tests of phrase matching were turned into query counts and a check of the SQL once fixed (timings belong in benchmarks)."""
from __future__ import annotations

import random

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.curation import decisions
from pipelines.curation.dedup import DedupConfig, _Components, _link_subbands, band_table, near_links

# --- Change 1: sub-band search of buckets past EXACT_PAIR_BUDGET -------------------------------------------------

def _flood_bucket():
    """Three distinct pHashes sharing band 0 (bits 0-15) and varying in only two bits (40, 41): within k = 6."""
    centre = 0x1234_5678_9ABC_0042
    phash = np.array([centre, centre ^ (1 << 40), centre ^ (1 << 41)], dtype=np.uint64)
    nodes = pa.table({"rid": pa.array([1, 2, 3], pa.int64()), "phash": phash,
                      "dhash": np.array([1, 2 << 20, 3 << 40], dtype=np.uint64)})
    giant = pa.table({"band": pa.array([0], pa.int32()), "value": pa.array([0x0042], pa.uint64())})
    return nodes, phash, giant


def test_a_zero_subband_budget_does_no_subband_search():
    nodes, phash, giant = _flood_bucket()
    # the contract: "return the comparisons it cost, or None (nothing done) past the budget"
    links = _Components(len(phash), 16)
    assert _link_subbands(np.arange(3), phash, 6, links, budget=0) is None
    # near_links: "0 and 0 skip them" (representatives, window), and subband_budget=0 turns the sub-band search off
    # (tests/unit/test_dedup_clusters.py relies on it for its exact-scan oracle)
    sampled: dict = {}
    near_links(nodes, band_table(DedupConfig(dhash_bands=False)), giant, 6,
               representatives=0, window=0, subband_budget=0, sampled=sampled)
    assert {key: sampled[key] for key in ("nodes", "unchecked", "subbands")} == {"nodes": 3, "unchecked": 3, "subbands": 0}
    assert list(sampled["linked_by"].values()) == ["none"]


# --- Change 2: phrase matching by group testing -------------------------------------------------------------------

_WORDS = ["statue", "painting", "mountain", "station", "heather", "other", "thinking", "landscape", "portrait", "sunset"]


def _rankings(prompts: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return con


def test_phrases_found_only_inside_words_cost_one_query_a_part_pair(monkeypatch):
    """rev18c (fixed): 46 three-letter phrases cut from inside common words, none a whole word, made group testing
    ~3x slower than the per-phrase algorithm it replaced (2.3-2.6 s vs 0.83-0.88 s; 184 split queries): every
    phrase whose body occurred cost tree queries and a guarded query per form. Each part is now tested first by
    its guarded pattern, so such a list costs one query a pair of parts and form, and finds what the per-phrase
    algorithm finds (nothing)."""
    from benchmarks.moderation import per_phrase_baseline

    phrases = sorted({w[i:i + 3] for w in _WORDS for i in range(len(w) - 2)} - set(_WORDS))   # 46: 'tat', 'ain', ...
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) + f" {i}" for i in range(200)]
    queries = []
    real = decisions.run_sql
    monkeypatch.setattr(decisions, "run_sql", lambda con, name, params=None: (queries.append(name), real(con, name, params))[1])
    got = decisions.phrase_matches(_rankings(prompts), phrases)
    assert got.num_rows == len(per_phrase_baseline(_rankings(prompts), phrases)) == 0
    assert queries.count("curation_phrase_split") == 2          # one part, as typed and by key


def test_the_split_query_names_each_pattern_once():
    """rev18c (fixed): curation_phrase_split.sql named $left and $right in both its SELECT list and its WHERE
    clause, so a guarded RE2 (~7 ms to compile) was compiled for each (~31 ms a query against ~8 ms for one
    call). Each is now named once, computed in a materialized CTE; the query still returns the values matching
    either pattern, with which."""
    from pipelines.sqlrun import run_sql, sql_text

    text = "\n".join(line for line in sql_text("curation_phrase_split").splitlines() if not line.startswith("--"))
    assert text.count("$left") == 1 and text.count("$right") == 1 and "MATERIALIZED" in text
    con = duckdb.connect()
    con.register("phrase_values", pa.table({"value": pa.array(["a statue", "a tattoo", "tat", None, "x"])}))
    rows = run_sql(con, "curation_phrase_split", {"left": decisions.phrase_pattern(["tat"]),
                                                  "right": decisions.body_pattern(["tat"])}).to_pylist()
    assert sorted((r["value"], r["left"], r["right"]) for r in rows) == [
        ("a statue", False, True), ("a tattoo", False, True), ("tat", True, True)]
