"""Hostile review rev28d of fix 27efde6 ("Fix review rev28b (curation)").

Reviewed: the near-duplicate search that bands every distinct dHash of a pHash group
(``pipelines/curation/dedup.py`` ``near_links``, ``sql/dedup_nodes.sql``, ``sql/dedup_band_buckets.sql``, dedup
code version 4), the bounded ``nsfw_cluster`` evidence (decisions 9), the banned-id int64 check, the banned-user
contract rules (``decisions_banned_user_rankings_dropped``, ``pairs_no_banned_user``), the policy recorded in the
Parquet metadata of ``duplicate_clusters`` / ``decisions`` and stated on the data card and in the manifest's
``curation`` block (publish 7), and the public-default pseudonym secret stated there (splits 11).

What held, run for real: clusters equal to a brute-force oracle of the documented rule over 60 random homes (three
configs, giant buckets forced), whatever the uid order; one pHash with 50,000 dHashes clusters in 0.7 s; a home
built night by night gives byte-identical duplicate_clusters / decisions / pairs / split_pairs / split_ledger to one
built at once; a home built by the previous code upgrades with one rebuild, then "up to date"; banning then
unbanning a user returns to the same version; a private secret (settings file, ledger re-keyed through
``PICKAPIC_OLD_PSEUDONYM_SECRET``) gives ``private`` on the card; neither the secret nor its key check reaches the
published version or Dagster's storage.

Each defect below was confirmed by running the real components (``pickapic build --set`` on a copy of the shared
demo home, ``build_clusters`` / ``build_decisions`` / ``build_pairs`` on literal-row homes, the contract engine);
each test states the correct behaviour (strict xfails when filed; all four fixed the same day by fix28d,
``tests/unit/test_fix28d.py``, and the tests now pass as plain tests).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from curation_fixtures import HomeBuilder, build_all

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from pipelines.curation.decisions import CurationConfig, build_pairs
from pipelines.sqlrun import connect
from tests.conftest import copy_home


def _build_latest(built_home, folder, *assignments: str):
    """A copy of the demo home built again with ``--set`` ``assignments``: (card text, manifest) of its latest."""
    from dagster_project.cli import main

    home = copy_home(built_home, folder / "home")
    before = (home.root / "datasets" / "pickapic" / "latest").resolve().name
    args = ["build", "--home", str(home.root)]
    for assignment in assignments:
        args += ["--set", assignment]
    assert main(args) == 0
    latest = (home.root / "datasets" / "pickapic" / "latest").resolve()
    assert latest.name != before                      # a new version, curated under the new settings
    return (latest / "README.md").read_text(encoding="utf-8"), json.loads((latest / "manifest.json").read_text())


# --- 1. a version curated with no NSFW class claims an NSFW filter at a threshold ------------------------------------

def test_a_version_curated_with_no_nsfw_class_does_not_claim_an_nsfw_filter(built_home, fast_tmp):
    card, manifest = _build_latest(built_home, fast_tmp, "curation.nsfw_classes=")
    assert manifest["curation"]["nsfw_classes"] == []            # what the version was really curated with
    assert "NudeNet classes  at" not in card                      # an empty class list rendered as a rule
    assert "score >=" not in card                                 # no threshold of a filter that flagged nothing


# --- 2. the card rounds the threshold it states ----------------------------------------------------------------------

def test_the_card_states_the_recorded_threshold_not_a_rounded_one(built_home, fast_tmp):
    card, manifest = _build_latest(built_home, fast_tmp, "curation.nsfw_threshold=0.4999999")
    assert manifest["curation"]["nsfw_threshold"] == 0.4999999
    assert "score >= 0.5)" not in card and "score >= 0.5;" not in card
    assert "score >= 0.4999999" in card


# --- 3. an image scored at the stated threshold is not flagged -------------------------------------------------------

def test_an_image_scored_at_the_threshold_is_flagged(tmp_path):
    hb = HomeBuilder(tmp_path)
    hb.image("at-threshold", nsfw={"FEMALE_BREAST_EXPOSED": 0.7})
    hb.image("safe")
    hb.ranking(1, ["at-threshold", "safe"], "at-threshold")
    home = hb.write()
    build_all(home, nsfw_threshold=0.7)
    stored = pq.read_table(home.partition_file("image_features", "2023-03-01")).to_pylist()
    assert {r["image_uid"]: [round(d["score"], 4) for d in r["nsfw_detections"]] for r in stored}["at-threshold"] == [0.7]
    decisions = {(d["subject_id"], d["reason"]) for d in pq.read_table(home.table_file("decisions")).to_pylist()}
    assert ("at-threshold", "nsfw") in decisions
    assert pq.read_table(home.table_file("pairs")).num_rows == 0


# --- 4. the blocking banned-user rules pass a decisions file that keeps the banned user's rankings -------------------

def test_the_banned_user_rules_fail_when_the_banned_users_rankings_are_kept(tmp_path):
    hb = HomeBuilder(tmp_path)
    hb.pair(1, user=5)
    hb.pair(2, user=5)
    hb.pair(3, user=6)
    hb.banned = [5]
    home = hb.write()
    build_all(home)
    table = pq.read_table(home.table_file("decisions"))
    rows = table.to_pylist()
    assert sum(1 for d in rows if d["reason"] == "banned_user") == 3   # the user's row and its two rankings'
    for row in rows:
        if row["reason"] == "banned_user":
            row["keep"] = True                                          # a regression: the ban recorded, not applied
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=table.schema), home.table_file("decisions"))
    build_pairs(home, CurationConfig())
    assert {1, 2} <= set(pq.read_table(home.table_file("pairs")).column("ranking_id").to_pylist())   # the leak
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects",
                                                      "ingest_files")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    try:
        failed = [r.rule.name for dataset in ("decisions", "pairs") for r in evaluate(load_contract(dataset), con)
                  if r.rule.blocking and not r.passed]
    finally:
        con.close()
    assert failed
