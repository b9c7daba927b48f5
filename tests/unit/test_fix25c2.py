"""Fixes of review rev25c in curation and the named queries: a ranking showing an image of another prompt or user
(``mismatched_image``), an image re-exported with other content (``conflicting_image``), curation refusing
partitions that no longer hold what their ingest accepted (``IngestNotReconciled``), and ``quarantine_reasons``
counting no line for a file-level row."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import DREAM, SD21, HomeBuilder, build_all

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from pipelines.curation.decisions import CurationConfig, IngestNotReconciled, build_decisions, build_pairs
from pipelines.curation.dedup import DedupConfig, build_clusters
from pipelines.curation.pseudonym import DEFAULT_SECRET, pseudonymize
from pipelines.sqlrun import connect, run_sql

DAY, DAY2 = "2023-03-01", "2023-03-02"


def _run(builder: HomeBuilder):
    home = builder.write()
    build_all(home)
    return (home, pq.read_table(home.table_file("decisions")).to_pylist(),
            pq.read_table(home.table_file("pairs")).to_pylist())


def _decided(decisions, subject, subject_id):
    return {d["reason"]: json.loads(d["evidence"]) for d in decisions
            if d["subject"] == subject and d["subject_id"] == subject_id and not d["keep"]}


def _contract_failures(home, dataset):
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    try:
        return [(r.rule.name, r.value, r.error) for r in evaluate(load_contract(dataset), con) if not r.passed]
    finally:
        con.close()


# ----------------------------------------------------------------------------------- mismatched_image

def test_a_ranking_showing_an_image_of_another_prompt_or_user_is_dropped_with_its_evidence(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1)                                                        # images of its own prompt and user: kept
    b.image("dog", prompt="a dog")                                   # same user, another prompt
    b.image("cat1", prompt="a cat")
    b.ranking(2, ["cat1", "dog"], "dog")
    b.image("theirs", user=7, prompt="a cat")                        # same prompt, another user
    b.image("cat2", prompt="a cat")
    b.ranking(3, ["theirs", "cat2"], None)
    home, decisions, pairs = _run(b)
    assert [p["ranking_id"] for p in pairs] == [1]
    # a pair decision (review rev25f): the pairs with the mismatched image go, here every pair of the ranking
    assert _decided(decisions, "pair", "2_0") == {"mismatched_image": {"images": [
        {"image_uid": "dog", "prompt_differs": True, "user_differs": False}]}}
    assert _decided(decisions, "pair", "3_0") == {"mismatched_image": {"images": [
        {"image_uid": "theirs", "prompt_differs": False, "user_differs": True}]}}
    assert set(_decided(decisions, "ranking", "2")) == set(_decided(decisions, "ranking", "3")) == {"all_pairs_dropped"}
    assert _decided(decisions, "ranking", "2")["all_pairs_dropped"]["pair_reasons"] == ["mismatched_image"]
    # the evidence never names a user id (decisions are published)
    assert not [d for d in decisions if "7" in d["evidence"] or pseudonymize(7, DEFAULT_SECRET) in d["evidence"]]
    assert _contract_failures(home, "pairs") == [] and _contract_failures(home, "decisions") == []


def test_one_mismatched_image_of_four_drops_only_its_pairs(tmp_path):
    """Review rev25f: the app's control image (another prompt and user, ~10% of rankings) costs the pairs with it,
    not the ranking's pairs between its matching images (fix25c2 dropped the whole ranking)."""
    b = HomeBuilder(tmp_path)
    for uid, prompt in (("q0", "a cat"), ("q1", "a cat"), ("q2", "a cat"), ("q3", "a dog")):
        b.image(uid, prompt=prompt)
    b.ranking(10, ["q0", "q1", "q2", "q3"], "q0")
    home, decisions, pairs = _run(b)
    assert sorted((p["image_0_uid"], p["image_1_uid"]) for p in pairs) == [("q0", "q1"), ("q0", "q2")]
    assert _decided(decisions, "ranking", "10") == {}                # the ranking stays
    dropped = {d["subject_id"]: json.loads(d["evidence"]) for d in decisions if d["subject"] == "pair"}
    assert list(dropped.values()) == [{"images": [{"image_uid": "q3", "prompt_differs": True, "user_differs": False}]}]
    assert _contract_failures(home, "pairs") == [] and _contract_failures(home, "decisions") == []


def test_the_caption_is_compared_as_ingested(tmp_path):
    """Case and spacing are part of the prompt: the ingest cleans images and rankings alike, so a matching pair
    of rows holds the same text; 'A cat' is not 'a cat'."""
    b = HomeBuilder(tmp_path)
    b.pair(1, prompt="A  cat, [ugly]")
    b.image("x0", prompt="A cat")
    b.image("x1", prompt="A cat")
    b.ranking(2, ["x0", "x1"], "x0", prompt="a cat")
    _, decisions, pairs = _run(b)
    assert [p["ranking_id"] for p in pairs] == [1]
    assert set(_decided(decisions, "pair", "2_0")) == {"mismatched_image"}
    assert set(_decided(decisions, "ranking", "2")) == {"all_pairs_dropped"}


# ---------------------------------------------------------------------------------- conflicting_image

def test_an_image_re_exported_with_other_content_is_dropped_and_so_are_its_pairs(tmp_path):
    b = HomeBuilder(tmp_path)
    b.image("a", day=DAY)
    b.image("b", day=DAY)
    b.ranking(1, ["a", "b"], "a", day=DAY)
    b.image("a", day=DAY2, model="CONTENT_FILTERED", features=False)    # the same uid, another model
    b.pair(2, day=DAY)
    home, decisions, pairs = _run(b)
    assert _decided(decisions, "image", "a") == {
        "conflicting_image": {"export_days": [DAY, DAY2], "variants": 2}}
    assert "image_dropped" in _decided(decisions, "pair", "1_0")
    assert set(_decided(decisions, "ranking", "1")) == {"all_pairs_dropped"}   # no mismatch guessed either
    assert [p["ranking_id"] for p in pairs] == [2]
    assert _contract_failures(home, "pairs") == [] and _contract_failures(home, "decisions") == []


@pytest.mark.parametrize("column,value", [("user_id", 2), ("prompt", "a dog"), ("image_id", 999),
                                          ("seed", 5), ("negative_prompt", "blurry")])
def test_any_exported_column_that_differs_is_a_conflict(tmp_path, column, value):
    b = HomeBuilder(tmp_path)
    b.pair(1, uids=("a", "b"))
    b.image("a", day=DAY2, features=False)
    b.images[DAY2][-1][column] = value
    _, decisions, pairs = _run(b)
    assert set(_decided(decisions, "image", "a")) == {"conflicting_image"}
    assert pairs == []


def test_an_identical_re_export_is_one_image(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1, uids=("a", "b"), models=(SD21, DREAM))
    b.image("a", day=DAY2, model=SD21, features=False)              # the same row again on day 2
    _, decisions, pairs = _run(b)
    assert decisions == []
    assert [(p["ranking_id"], p["model_0"]) for p in pairs] == [(1, "sd-2.1")]


# --------------------------------------------------------------------------- ingest reconciliation

def _reconciled_home(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1, day=DAY)
    b.pair(2, day=DAY)
    b.pair(3, day=DAY2)
    home = b.write()
    build_clusters(home, DedupConfig())
    return b, home


def _refusal(home) -> str:
    with pytest.raises(IngestNotReconciled) as caught:
        build_decisions(home, CurationConfig())
    return str(caught.value)


def test_a_clean_home_is_curated_and_a_ranking_lost_afterwards_is_refused(tmp_path):
    _, home = _reconciled_home(tmp_path)
    build_decisions(home, CurationConfig())
    build_pairs(home, CurationConfig())
    before = home.table_file("decisions").read_bytes()
    partition = home.partition_file("rankings", DAY)
    write_parquet_atomic(pq.read_table(partition).slice(1), partition)
    message = _refusal(home)
    assert "rankings 2023-03-01: 1 rows, its ingest accepted 2" in message
    assert "pickapic build --force --from 2023-03-01 --to 2023-03-01" in message and "\n" not in message
    assert home.table_file("decisions").read_bytes() == before      # nothing written
    with pytest.raises(IngestNotReconciled):
        build_pairs(home, CurationConfig())


def test_a_removed_partition_a_stray_file_or_a_partition_without_its_record_is_refused(tmp_path):
    _, home = _reconciled_home(tmp_path)
    stray = home.partition_file("images", DAY).with_name("part-1.parquet")
    write_parquet_atomic(pq.read_table(home.partition_file("images", DAY)).slice(0, 1), stray)
    assert "images 2023-03-01: 5 rows, its ingest accepted 4" in _refusal(home)
    stray.unlink()
    home.partition_file("rankings", DAY2).unlink()
    assert "rankings 2023-03-02: 0 rows, its ingest accepted 1" in _refusal(home)


def test_a_day_without_an_ingest_record_is_refused(tmp_path):
    b, home = _reconciled_home(tmp_path)
    home.partition_file("ingest_files", DAY2).unlink()
    message = _refusal(home)
    assert "images 2023-03-02: 2 rows, it has no ingest_files record" in message
    assert "rankings 2023-03-02: 1 rows, it has no ingest_files record" in message
    b.write_ingest_files(DAY2)
    build_decisions(home, CurationConfig())


def test_decisions_are_byte_identical_when_built_again(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1)
    b.image("dog", prompt="a dog")
    b.image("cat", prompt="a cat")
    b.ranking(2, ["cat", "dog"], "cat")
    b.image("r1a", day=DAY2, model=DREAM, features=False)
    home, _, _ = _run(b)
    first = home.table_file("decisions").read_bytes(), home.table_file("pairs").read_bytes()
    build_all(home)
    assert (home.table_file("decisions").read_bytes(), home.table_file("pairs").read_bytes()) == first


# -------------------------------------------------------------------------------- quarantine_reasons

def test_quarantine_reasons_counts_lines_of_line_level_rows_only():
    rows = [("users", 0, 1, "missing_file"), ("images", 0, 1, "unreadable_file"),
            ("rankings", 3, 2000, "duplicate_row"), ("rankings", 9, 1, "malformed_json"),
            ("rankings", 12, 4, "malformed_json")]
    quarantine = pa.table({
        "table": [r[0] for r in rows], "dt": [dt.date(2023, 3, 1)] * len(rows),
        "line_number": pa.array([r[1] for r in rows], pa.int64()),
        "line_count": pa.array([r[2] for r in rows], pa.int64()), "reason": [r[3] for r in rows]})
    con = connect({"quarantine": quarantine})
    try:
        got = {(r["table"], r["reason"]): (int(r["lines"]), r["rows"])
               for r in run_sql(con, "queries/quarantine_reasons").to_pylist()}
    finally:
        con.close()
    assert got == {("users", "missing_file"): (0, 1), ("images", "unreadable_file"): (0, 1),
                   ("rankings", "duplicate_row"): (2000, 1), ("rankings", "malformed_json"): (5, 2)}
