"""Moderation phrase matching: group testing (``decisions.phrase_matches``) vs one query per phrase.

``python -m benchmarks.moderation [--rankings 100000] [--distinct 50000] [--phrases 200,1000] [--hit-rate 0.9]``:
builds ``rankings`` synthetic prompts (``distinct`` of them distinct; a share ``hit-rate`` of them holds
``nude``, a few hold one listed phrase) and lists of random multi-word phrases, then times, on the same DuckDB
connection and in the same run:

- ``phrase_matches`` as the curation stage runs it (each part of the list tested once on every distinct prompt,
  key and text; halves of a part that hit tested on the values it matched);
- the baseline, the stage's algorithm before December 5, 2026: the combined parts over every ranking, then one
  query per phrase (three guarded RE2s each) over every ranking that hit.

Both must give the same (ranking_id, phrase) set; the benchmark fails otherwise. Prints seconds, the ratio
baseline / group testing and peak RSS (``ru_maxrss`` of this process, which only grows: the group testing runs
first); writes ``benchmarks/results/moderation.json``. The baseline is skipped above ``--baseline-max``
phrases (its cost is about 40 ms a phrase plus the scans).

``python -m benchmarks.moderation --stuffed [--distinct 500] [--phrases 1000]``: the hostile prompts of review rev37g
instead, timed against ordinary prompts in the same run: ``distinct`` prompts of 2,000 characters each holding one
listed phrase (random six-letter words) as a word, then either the letters of the other listed phrases packed
inside longer words (``xabcdefx``, which match no phrase) or ordinary words. Both must give one match a prompt.
Prints seconds for each, the ratio stuffed / ordinary and peak RSS; writes ``benchmarks/results/moderation_stuffed.json``.
Before fix37g each stuffed phrase cost its own guarded RE2 on every such prompt: 104 s against 1.0 s at 1,000
phrases and 500 prompts (2 vCPUs).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from formats.duck import offline_connection
from pipelines.curation.decisions import _is_words, edge_kinds, phrase_matches, phrase_pattern, phrase_patterns
from pipelines.splits.assign import moderation_key, moderation_text

RESULTS = Path(__file__).resolve().parent / "results" / "moderation.json"
STUFFED_RESULTS = RESULTS.with_name("moderation_stuffed.json")

_HITS = """SELECT r.ranking_id, r.prompt, k.moderation_key, k.moderation_text
FROM ranking_base r LEFT JOIN prompt_moderation_keys k ON k.prompt = r.prompt
WHERE regexp_matches(r.prompt, $phrase_regex) OR regexp_matches(k.moderation_key, $key_regex)
   OR regexp_matches(k.moderation_text, $text_regex)"""
_ONE = """SELECT ranking_id, $phrase::VARCHAR AS phrase FROM phrase_hits
WHERE regexp_matches(prompt, $pattern) OR regexp_matches(moderation_key, $key_pattern)
   OR regexp_matches(moderation_text, $text_pattern)"""


def per_phrase_baseline(con: duckdb.DuckDBPyConnection, phrases: list[str]) -> set[tuple[int, str]]:
    """The algorithm ``phrase_matches`` had until December 5, 2026 (same patterns, same result)."""
    keys = {phrase: moderation_key(phrase) if _is_words(phrase) else "" for phrase in phrases}
    texts = {phrase: moderation_text(phrase) for phrase in phrases if not _is_words(phrase)}
    prompts = [row[0] for row in con.sql("SELECT DISTINCT prompt FROM ranking_base WHERE prompt IS NOT NULL").fetchall()]
    con.register("prompt_moderation_keys", pa.table({
        "prompt": pa.array(prompts, pa.string()),
        "moderation_key": pa.array([moderation_key(p) for p in prompts], pa.string()),
        "moderation_text": pa.array([moderation_text(p) if texts else None for p in prompts], pa.string())}))
    key_kinds = {key: edge_kinds(phrase) for phrase, key in sorted(keys.items(), reverse=True) if key}
    text_kinds = {text: edge_kinds(phrase) for phrase, text in sorted(texts.items(), reverse=True) if text}
    never = phrase_pattern([])
    regexes = [phrase_patterns(phrases), phrase_patterns(sorted(key_kinds), key_kinds),
               phrase_patterns(sorted(text_kinds), text_kinds)]
    hits = [con.sql(_HITS, params={
        "phrase_regex": regexes[0][i] if i < len(regexes[0]) else never,
        "key_regex": regexes[1][i] if i < len(regexes[1]) else never,
        "text_regex": regexes[2][i] if i < len(regexes[2]) else never}).to_arrow_table()
        for i in range(max(len(r) for r in regexes))]
    con.register("phrase_hits_parts", pa.concat_tables(hits))
    con.register("phrase_hits", con.sql("SELECT DISTINCT * FROM phrase_hits_parts").to_arrow_table())
    found = set()
    for phrase in phrases:
        rows = con.sql(_ONE, params={
            "phrase": phrase, "pattern": phrase_pattern([phrase]),
            "key_pattern": phrase_pattern([keys[phrase]] if keys[phrase] else [], key_kinds),
            "text_pattern": phrase_pattern([texts[phrase]] if texts.get(phrase) else [], text_kinds)}).fetchall()
        found.update((int(rid), p) for rid, p in rows)
    return found


def workload(rankings: int, distinct: int, n_phrases: int, hit_rate: float, seed: int = 0):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    phrases = sorted({" ".join("".join(rng.choice(letters) for _ in range(rng.randint(5, 8)))
                               for _ in range(rng.randint(1, 3))) for _ in range(n_phrases)} | {"nude", "18+", "🍆"})
    words = ["a", "cat", "on", "the", "mat", "statue", "dog", "city", "at", "night", "painting", "of"]
    base = []
    for i in range(distinct):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        if rng.random() < hit_rate:
            text += " nude"
        if i % 997 == 0:
            text += f" {rng.choice(phrases)}"
        base.append(f"{text} {i}")
    prompts = [base[i % distinct] for i in range(rankings)]
    return phrases, prompts


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--phrases", default="200,1000")
    parser.add_argument("--hit-rate", type=float, default=0.9)
    parser.add_argument("--baseline-max", type=int, default=1000)
    parser.add_argument("--stuffed", action="store_true",
                        help="time prompts stuffing the listed phrases inside longer words against ordinary ones")
    args = parser.parse_args(argv)
    if args.stuffed:
        return stuffed(argv)
    rows = []
    for n in (int(x) for x in args.phrases.split(",")):
        phrases, prompts = workload(args.rankings, args.distinct, n, args.hit_rate)
        con = offline_connection()
        con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                               "prompt": pa.array(prompts, pa.string())}))
        start = time.perf_counter()
        got = {(r["ranking_id"], r["phrase"]) for r in phrase_matches(con, phrases).to_pylist()}
        group_s = time.perf_counter() - start
        row = {"phrases": len(phrases), "rankings": args.rankings, "distinct_prompts": args.distinct,
               "matches": len(got), "group_testing_s": round(group_s, 2), "peak_rss_mb_after_group": round(_peak_mb())}
        if len(phrases) <= args.baseline_max:
            start = time.perf_counter()
            want = per_phrase_baseline(con, phrases)
            base_s = time.perf_counter() - start
            if want != got:
                raise SystemExit(f"group testing and the per-phrase baseline disagree on {len(want ^ got)} matches")
            row.update(per_phrase_s=round(base_s, 2), ratio_per_phrase_vs_group=round(base_s / group_s, 2),
                       peak_rss_mb_after_baseline=round(_peak_mb()))
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


def stuffed_workload(distinct: int, n_phrases: int, seed: int = 37) -> tuple[list[str], list[str], list[str]]:
    """(phrases, stuffed prompts, ordinary prompts): each prompt 2,000 characters holding ``phrases[0]`` as a word."""
    import string

    rng = random.Random(seed)
    phrases = sorted({"".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(n_phrases)})
    hostile, plain = [], []
    for i in range(distinct):
        bodies = rng.sample(phrases[1:], min(len(phrases) - 1, 250))
        hostile.append(f"{phrases[0]} {i} {''.join(f'x{body}x' for body in bodies)}"[:2000])
        filler = " ".join(rng.choices(["cat", "dog", "house", "red", "photo", "sunset"], k=400))
        plain.append(f"{phrases[0]} {i} {filler}"[:2000])
    return phrases, hostile, plain


def stuffed(argv: list[str] | None = None) -> None:
    """``--stuffed``: the rev37g comparison (see the module's docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--stuffed", action="store_true")
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--phrases", default="1000")
    args, _ = parser.parse_known_args(argv)
    rows = []
    for n in (int(x) for x in args.phrases.split(",")):
        phrases, hostile, plain = stuffed_workload(args.distinct, n)
        row: dict[str, object] = {"phrases": len(phrases), "prompts": args.distinct}
        for name, prompts in (("ordinary", plain), ("stuffed", hostile)):
            con = offline_connection()
            con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                                   "prompt": pa.array(prompts, pa.string())}))
            start = time.perf_counter()
            matches = phrase_matches(con, phrases).num_rows
            row[f"{name}_s"] = round(time.perf_counter() - start, 2)
            row[f"peak_rss_mb_after_{name}"] = round(_peak_mb())
            con.close()
            if matches != len(prompts):
                raise SystemExit(f"{name}: {matches} matches for {len(prompts)} prompts holding one phrase each")
        row["ratio_stuffed_vs_ordinary"] = round(row["stuffed_s"] / max(row["ordinary_s"], 0.01), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    STUFFED_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    STUFFED_RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
