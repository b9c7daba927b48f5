"""Hostile review rev17d: curation (moderation phrases, duplicate clusters) and the splits' prompt key, attacked as
hostile users of the app would.

Each test reproduces a defect on main and is marked ``xfail(strict=True)`` until it is fixed; each asserts the
violated property directly.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from splits_fixtures import pair_row, users_by_home, write_pairs  # noqa: E402

from formats.home import DataHome  # noqa: E402
from pipelines.curation.decisions import phrase_matches  # noqa: E402
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt  # noqa: E402


def _matches(prompts: list[str], phrases: list[str]) -> set[tuple[int, str]]:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return {(row["ranking_id"], row["phrase"]) for row in phrase_matches(con, phrases).to_pylist()}


# --- 1. an emoji moderation phrase glued to the word before it is not matched ----------------------------------------

def test_an_emoji_phrase_glued_to_a_word_is_matched():
    # an emoji is never part of a word: typing it right after a word (no space) is how it is usually typed
    prompts = ["a big🍆 please", "peach🍑 on a table", "a big 🍆 please"]
    got = _matches(prompts, ["🍆", "🍑"])
    assert got == {(0, "🍆"), (1, "🍑"), (2, "🍆")}


# --- 2. "fancy text" made of combining marks (underline, strikethrough, enclosing circle) ----------------------------

def _marked(text: str, mark: str) -> str:
    return "".join(c + mark if c != " " else c for c in text)


# U+0332 COMBINING LOW LINE (underline), U+0336 COMBINING LONG STROKE OVERLAY (strikethrough), U+20DD COMBINING
# ENCLOSING CIRCLE: the staples of online "fancy text" generators; none of them is part of a letter in any orthography.
FANCY_MARKS = ["\u0332", "\u0336", "\u20dd"]


@pytest.mark.parametrize("mark", FANCY_MARKS)
def test_a_moderation_phrase_in_underlined_or_struck_through_letters_is_matched(mark):
    prompts = [f"a {_marked('nude', mark)} statue"]          # renders as 'a nude statue', underlined / struck through
    assert _matches(prompts, ["nude"]) == {(0, "nude")}


CFG = SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0)  # pure held-out fraction: no filling
USERS = users_by_home(CFG.salt, CFG.heldout_fraction, {"train": 2, "validation": 1, "test": 1})
PLAIN = "a red fox in the snow"


@pytest.mark.parametrize("mark", FANCY_MARKS)
def test_a_prompt_in_underlined_or_struck_through_letters_is_not_kept_in_train(tmp_path, mark):
    home = DataHome(tmp_path)
    fancy = _marked(PLAIN, mark)
    write_pairs(home, [pair_row(1, USERS["test"][0], PLAIN, "k1", "k2", day=0),
                       pair_row(2, USERS["train"][0], fancy, "k3", "k4", day=1)])
    build_splits(home, CFG)
    rows = [r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if not r["split"].endswith("_unique")]
    by_split = collections.defaultdict(set)
    for r in rows:                     # the prompt as a reader sees it: the marks drawn on its letters taken off
        by_split[r["split"]].add(normalize_prompt(r["caption"].replace(mark, "")))
    assert by_split["test"] == {normalize_prompt(PLAIN)}
    assert not by_split["train"] & by_split["test"], "the test prompt is in train, typed as fancy text"
    assert normalize_prompt(fancy) == normalize_prompt(PLAIN)


# --- 3. a phrase reversed behind a right-to-left override ------------------------------------------------------------

def test_a_moderation_phrase_reversed_behind_a_right_to_left_override_is_matched():
    # U+202E RIGHT-TO-LEFT OVERRIDE ... U+202C POP DIRECTIONAL FORMATTING: every viewer of the caption reads
    # 'a nude statue'
    prompts = ["a \u202eedun\u202c statue", "a \u202eeutats edun"]
    assert _matches(prompts, ["nude"]) == {(0, "nude"), (1, "nude")}


# --- 4. a flood of near-identical images is split into many clusters by the bucket cap -------------------------------

def test_a_flood_of_near_identical_images_is_one_cluster():
    from test_dedup_clusters import _features, _flood, _flood_rows

    from pipelines.curation.dedup import DedupConfig, cluster_features
    from pipelines.sqlrun import connect

    # 3,000 distinct pHashes within 3 bits of one centre (a generator stuck on one image, a hostile uploader):
    # every pair is within 6 = k bits, so every image is a near duplicate of every other
    rows = _flood_rows(_flood(3000, 3, seed=2), "flood-")
    con = connect({"image_features": _features(rows)})
    clusters, report = cluster_features(con, DedupConfig())
    ids = collections.Counter(clusters.column("cluster_id").to_pylist())
    assert len(ids) == 1, f"{len(ids)} clusters for 3,000 mutual near duplicates (largest {report.largest_cluster})"


# --- 5. moderation phrases inside Chinese / Japanese text, which has no spaces between words --------------------------

def test_a_moderation_phrase_inside_unspaced_cjk_text_is_matched():
    prompts = ["一个裸体女人",          # 'a nude woman' (Chinese: no spaces between words)
               "全裸の女性",            # 'a fully naked woman' (Japanese)
               "一个nude女人"]          # a Latin phrase between ideographs: a word boundary by UAX #29
    got = _matches(prompts, ["裸体", "全裸", "nude"])
    assert got == {(0, "裸体"), (1, "全裸"), (2, "nude")}


# --- 6. the fallback key of a prompt of emoji / punctuation only ----------------------------------------------------

@pytest.mark.parametrize("typed_first, retyped", [
    ("🦊🦊", "🦊 🦊"),          # whitespace only
    ("🦊", "🦊!"),             # trailing punctuation only (the main key drops it: 'a red fox!' is 'a red fox')
    ("👍", "👍🏻"),             # a skin-tone modifier (a separator in the main key)
])
def test_an_emoji_prompt_retyped_with_spaces_or_punctuation_is_not_kept_in_train(tmp_path, typed_first, retyped):
    home = DataHome(tmp_path)
    write_pairs(home, [pair_row(1, USERS["test"][0], typed_first, "k1", "k2", day=0),
                       pair_row(2, USERS["train"][0], retyped, "k3", "k4", day=1)])
    build_splits(home, CFG)
    rows = [r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if not r["split"].endswith("_unique")]
    kept = {r["split"] for r in rows}
    assert kept == {"test"}, f"{typed_first!r} kept in test and {retyped!r} in train: {sorted(kept)}"
