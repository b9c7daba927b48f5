"""Fixes of hostile review rev28d (tests/unit/test_hostile_rev28d.py): the data card of a version curated with no NSFW
class, the threshold the card states, NudeNet's float32 scores compared with the threshold, and the banned-user
contract rules."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all
from test_fix28b import _banned_home

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from pipelines.curation.decisions import CurationConfig, build_pairs
from pipelines.sqlrun import connect

# --- the data card: no NSFW class, and the threshold as recorded -------------------------------------------------------


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A published version (its meta tables) and its splits, to render cards of other policies from."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.samples import splits_in
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("card28d") / "home", num_rankings=40, seed=7)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return report.path, splits_in(pq.read_table(home.table_file("split_pairs")))


def _card(version, policy: dict) -> str:
    from pipelines.publish.datacard import PRIVATE, CardSources, render

    path, splits = version
    return render(path, "v", splits, CardSources(days=["2023-03-01"], policy=policy, pseudonym_secret=PRIVATE))


def test_a_card_of_no_nsfw_class_says_no_nsfw_filter_was_applied(version):
    card = _card(version, {"nsfw_classes": [], "nsfw_threshold": 0.5, "dedup": {"k": 6}})
    assert "score >=" not in card and "NudeNet classes  at" not in card and "fixed threshold" not in card
    reasons = next(line for line in card.splitlines() if line.startswith("Reasons:"))
    assert "`nsfw` and `nsfw_cluster`: none, no NSFW filter was applied" in reasons
    limits = card[card.index("## Known limits"):]
    assert "- **No NSFW filter was applied** (`curation.nsfw_classes` was empty)" in limits
    assert "pHash Hamming distance <= 6" in limits                 # the other limits stay


def test_the_default_policy_card_text_is_unchanged(version):
    card = _card(version, {"nsfw_classes": ["ANUS_EXPOSED"], "nsfw_threshold": 0.5, "dedup": {"k": 6}})
    assert ("Reasons: `nsfw` (NudeNet classes `ANUS_EXPOSED` at score >= 0.5) and `nsfw_cluster` (an exact or near\n"
            "duplicate of one, near meaning pHash Hamming distance <= 6), `content_filtered`") in card
    assert ("- The NSFW filter is a classifier at a fixed threshold (score >= 0.5); it misses some images and drops "
            "some safe ones.\n") in card
    assert "No NSFW filter" not in card


@pytest.mark.parametrize("threshold", [0.4999999, 0.7, 0.123456789, 1.0, 1])
def test_the_card_states_the_threshold_as_the_manifest_records_it(version, threshold):
    card = _card(version, {"nsfw_classes": ["ANUS_EXPOSED"], "nsfw_threshold": threshold})
    stated = json.dumps(float(threshold))                          # what manifest.json says
    assert f"`ANUS_EXPOSED` at score >= {stated})" in card and f"(score >= {stated});" in card
    assert card.count("score >=") == 2


def test_an_unrecorded_class_list_still_names_a_filter(version):
    card = _card(version, {"nsfw_threshold": 0.5})                 # classes not recorded: not "no filter"
    assert "No NSFW filter" not in card and "exposed-nudity classes at score >= 0.5" in card


# --- NudeNet's float32 scores against the threshold --------------------------------------------------------------------

def _below(value: float) -> float:
    """The float32 just below ``value``'s float32."""
    return float(np.nextafter(np.float32(value), np.float32(0)))


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.3333333333])
def test_a_score_stored_as_the_threshold_is_flagged_and_the_one_below_is_not(tmp_path, threshold):
    hb = HomeBuilder(tmp_path)
    hb.image("at", nsfw={"FEMALE_BREAST_EXPOSED": threshold})                  # stored as float32(threshold)
    hb.image("below", nsfw={"FEMALE_BREAST_EXPOSED": _below(threshold)})
    hb.image("other-class", nsfw={"FACE_FEMALE": 0.99})
    hb.ranking(1, ["at", "below"], "at")
    hb.ranking(2, ["below", "other-class"], "below")
    home = hb.write()
    build_all(home, nsfw_threshold=threshold)
    rows = pq.read_table(home.table_file("decisions")).to_pylist()
    nsfw = {d["subject_id"]: json.loads(d["evidence"]) for d in rows if d["reason"] == "nsfw"}
    assert set(nsfw) == {"at"}
    assert nsfw["at"]["threshold"] == threshold                                # the threshold as configured
    assert nsfw["at"]["detections"] == [{"class": "FEMALE_BREAST_EXPOSED", "score": round(threshold, 4)}]
    assert pq.read_table(home.table_file("pairs")).column("ranking_id").to_pylist() == [2]


# --- the banned-user contract rules ------------------------------------------------------------------------------------

RULES = ("decisions_banned_user_rankings_dropped", "pairs_no_banned_user")


def _rule_values(home) -> dict[str, float]:
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects",
                                                      "ingest_files")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    try:
        return {r.rule.name: r.value for dataset in ("decisions", "pairs")
                for r in evaluate(load_contract(dataset), con) if r.rule.name in RULES}
    finally:
        con.close()


@pytest.mark.parametrize(("kept", "expected"), [
    ({"ranking"}, {"decisions_banned_user_rankings_dropped": 1, "pairs_no_banned_user": 2}),
    ({"user", "ranking"}, {"decisions_banned_user_rankings_dropped": 1, "pairs_no_banned_user": 2}),
    ({"user"}, {"decisions_banned_user_rankings_dropped": 0, "pairs_no_banned_user": 0}),   # rankings still dropped
    (set(), {"decisions_banned_user_rankings_dropped": 0, "pairs_no_banned_user": 0}),       # as built
])
def test_the_banned_user_rules_count_only_drops_and_find_the_user_whatever_its_keep(tmp_path, kept, expected):
    home = _banned_home(tmp_path)
    table = pq.read_table(home.table_file("decisions"))
    rows = table.to_pylist()
    for row in rows:
        if row["reason"] == "banned_user" and row["subject"] in kept:
            row["keep"] = True
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=table.schema), home.table_file("decisions"))
    build_pairs(home, CurationConfig())
    assert _rule_values(home) == expected
    rules = {r.name: r for dataset in ("decisions", "pairs") for r in load_contract(dataset).rules}
    assert all(rules[name].blocking for name in RULES)
