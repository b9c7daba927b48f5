"""Hostile review rev28b: curation over a year of nightly builds (duplicate clusters, the policy decisions, the
pseudonyms) and how its outcome reaches the pairs, the contracts and the published version.

Reviewed: ``pipelines/curation/`` (dedup.py, decisions.py, pseudonym.py), ``sql/dedup_*``, ``sql/curation_*``,
``data_contracts/decisions.yaml`` / ``pairs.yaml`` and the publish's data card. Each defect was confirmed by running the
real components (``build_clusters``, ``build_decisions``, ``build_pairs``, the contract engine, the
``python -m pipelines.curation.decisions`` command) on small literal-row homes (``curation_fixtures.HomeBuilder``);
each test states the correct behaviour (strict xfails when filed; all six fixed the same day by fix28b,
``tests/unit/test_fix28b.py``, and the tests now pass as plain tests).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all, phash_of

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from pipelines.curation.decisions import CurationConfig, build_decisions, build_pairs
from pipelines.curation.dedup import DedupConfig, build_clusters
from pipelines.sqlrun import connect
from tests.conftest import copy_home

DAY1, DAY2 = "2023-03-01", "2023-03-02"

# Two pHashes 4 bits apart, one bit in each of the four pHash bands (63 informative bits in bands of 16, 16, 16, 15):
# no pHash band is shared, so only the dHash bands can propose the pair, which is what they are there for
# (README section 4: "the dHash bands recover the rest of the distance-4..6 pairs").
P_X = phash_of(1)
P_Y = P_X ^ (1 << 3) ^ (1 << 20) ^ (1 << 40) ^ (1 << 55)
SHARED_DHASH = phash_of(99)


def _near_pair(hb: HomeBuilder, *, x_nsfw: bool = False) -> None:
    """Image ``b-x`` and its near duplicate ``c-y`` (pHash distance 4, same dHash), both of day 1."""
    hb.image("b-x", phash=P_X, user=2, prompt="x", nsfw={"FEMALE_GENITALIA_EXPOSED": 0.9} if x_nsfw else None)
    hb.image("c-y", phash=P_Y)
    for row in hb.features[DAY1]:
        if row["image_uid"] in ("b-x", "c-y"):
            row["dhash"] = SHARED_DHASH


def _clusters(home) -> dict[str, str]:
    return {r["image_uid"]: r["cluster_id"] for r in pq.read_table(home.table_file("duplicate_clusters")).to_pylist()}


# --- 1. one new image splits an old near-duplicate cluster (the dHash of a pHash group is its smallest uid's) -------

def test_a_near_duplicate_of_an_nsfw_image_stays_dropped_when_a_later_night_adds_a_phash_twin(tmp_path):
    hb = HomeBuilder(tmp_path)
    _near_pair(hb, x_nsfw=True)
    hb.image("d-o")
    hb.ranking(1, ["c-y", "d-o"], "c-y")
    hb.image("a-z", phash=P_X, user=3, prompt="z", day=DAY2)
    home = hb.write()
    build_all(home)
    decisions = {(d["subject_id"], d["reason"]) for d in pq.read_table(home.table_file("decisions")).to_pylist()}
    pairs = pq.read_table(home.table_file("pairs")).column("pair_id").to_pylist()
    assert ("c-y", "nsfw_cluster") in decisions
    assert pairs == []
    assert len(set(_clusters(home).values()) - {_clusters(home)["d-o"]}) == 1


# --- 2. nsfw_cluster evidence is quadratic in the cluster ------------------------------------------------------------

def test_the_evidence_of_a_large_flagged_cluster_grows_linearly(tmp_path):
    n = 2000
    hb = HomeBuilder(tmp_path)
    for i in range(n):   # one pHash: a cluster of n; NudeNet flags every other one
        hb.image(f"img{i:06d}", phash=phash_of(5), nsfw={"FEMALE_BREAST_EXPOSED": 0.9} if i % 2 else None)
    home = hb.write()
    build_clusters(home, DedupConfig())
    build_decisions(home, CurationConfig())
    evidence = [d["evidence"] for d in pq.read_table(home.table_file("decisions")).to_pylist()
                if d["reason"] == "nsfw_cluster"]
    assert len(evidence) == n // 2
    assert max(len(e) for e in evidence) <= 4096
    assert sum(len(e) for e in evidence) <= 1000 * n


# --- 3. a banned user id past int64 is a traceback ------------------------------------------------------------------

def test_a_banned_user_id_out_of_range_is_an_error_naming_the_file_and_line(tmp_path):
    hb = HomeBuilder(tmp_path)
    hb.pair(1, user=5)
    hb.banned = ["99999999999999999999"]          # line 2 of the file (line 1 is '# banned')
    home = hb.write()
    build_clusters(home, DedupConfig())
    with pytest.raises(ValueError, match=r"banned_users\.txt:2"):
        build_decisions(home, CurationConfig())


# --- 4. the banned-user contract rule cannot fail -------------------------------------------------------------------

def test_a_banned_users_ranking_without_a_drop_decision_fails_a_contract_rule(tmp_path):
    hb = HomeBuilder(tmp_path)
    hb.pair(1, user=5)
    hb.pair(2, user=5)
    hb.pair(3, user=6)
    hb.banned = [5]
    home = hb.write()
    build_all(home)
    # a regression that loses one ranking's banned_user decision (the user's own decision stays)
    table = pq.read_table(home.table_file("decisions"))
    kept = [d for d in table.to_pylist() if not (d["subject"] == "ranking" and d["subject_id"] == "2")]
    assert len(kept) < table.num_rows
    write_parquet_atomic(pa.Table.from_pylist(kept, schema=table.schema), home.table_file("decisions"))
    build_pairs(home, CurationConfig())
    assert 2 in pq.read_table(home.table_file("pairs")).column("ranking_id").to_pylist()   # the leak is real
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    failed = [r.rule.name for dataset in ("decisions", "pairs") for r in evaluate(load_contract(dataset), con)
              if not r.passed]
    con.close()
    assert failed, json.dumps(failed)


# --- 5. the published card states the default policy, not the one the version was built with -----------------------

def test_the_data_card_states_the_nsfw_threshold_and_k_the_version_was_built_with(built_home, fast_tmp):
    from dagster_project.cli import main

    home = copy_home(built_home, fast_tmp / "home")
    before = (home.root / "datasets" / "pickapic" / "latest").resolve().name
    assert main(["build", "--home", str(home.root), "--set", "curation.nsfw_threshold=0.8", "--set", "dedup.k=2"]) == 0
    latest = (home.root / "datasets" / "pickapic" / "latest").resolve()
    assert latest.name != before                                  # a new version, curated under the new settings
    card = (latest / "README.md").read_text(encoding="utf-8")
    assert "score >= 0.5" not in card and "0.8" in card
    assert "distance <= 6" not in card and "distance <= 2" in card


# --- 6. a version published under the public default secret: reversible pseudonyms, said nowhere -------------------

def test_a_version_published_under_the_public_default_secret_says_so(built_home):
    from pipelines.curation.pseudonym import DEFAULT_SECRET, pseudonymize

    latest = (built_home.root / "datasets" / "pickapic" / "latest").resolve()
    sidecars = [p for p in (latest / "train").glob("*.parquet") if p.name != "prompt_counts.parquet"]
    users = set()
    for sidecar in sidecars:
        users |= set(pq.read_table(sidecar, columns=["user_id"]).column("user_id").to_pylist())
    reverse = {pseudonymize(raw, DEFAULT_SECRET): raw for raw in range(10_000)}
    assert users and users <= set(reverse)                         # every published pseudonym reverses to a raw id
    card = (latest / "README.md").read_text(encoding="utf-8").lower()
    manifest = (latest / "manifest.json").read_text(encoding="utf-8").lower()
    lines = card.splitlines() + manifest.splitlines()
    assert any("secret" in line and ("default" in line or "public" in line) for line in lines)
