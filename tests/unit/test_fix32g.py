"""Fixes of hostile review rev32g (tests/unit/test_hostile_rev32g.py), beyond the review's own tests: the identity of
its inputs that ``decisions`` records and ``build_pairs`` checks (which changes refuse, which do not, the message,
nothing written on a refusal, copies of a home), a day's partition repeating a key refused, the
``pairs_candidate_pairs_reconciled`` rule on ties, pair decisions, an extra or a lost pair decision, and the pairs
report's ``four_image_pairs`` and ``exports_unaccounted``."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from curation_fixtures import DREAM, SD21, HomeBuilder, build_all

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.decisions import (
    INPUTS_METADATA,
    CurationConfig,
    DecisionsOutOfDate,
    IngestNotReconciled,
    build_decisions,
    build_pairs,
    read_inputs,
)
from pipelines.curation.dedup import DedupConfig, build_clusters
from pipelines.sqlrun import connect
from schemas import get_schema

RULE = "pairs_candidate_pairs_reconciled"


def _failures(home, *datasets):
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    try:
        return {r.rule.name: r.value for ds in datasets for r in evaluate(load_contract(ds), con) if not r.passed}
    finally:
        con.close()


def _small(root) -> tuple[HomeBuilder, DataHome]:
    b = HomeBuilder(root)
    b.pair(1)
    b.pair(2, user=5)
    home = b.write()
    build_all(home)
    return b, home


# --- 1. decisions record their inputs; pairs refuse decisions of other inputs --------------------------------------------

def test_decisions_record_each_input_and_a_rebuild_over_the_same_inputs_passes(fast_tmp):
    _, home = _small(fast_tmp)
    recorded = read_inputs(pq.read_schema(home.table_file("decisions")).metadata)
    assert sorted(recorded) == ["duplicate_clusters", "image_features", "image_rejects", "images",
                                "moderation_lists", "policy", "rankings"]
    assert CurationConfig().pseudonym_secret not in str(recorded)
    build_pairs(home, CurationConfig(threads=1))          # threads change no output: not refused
    assert read_inputs({INPUTS_METADATA: b"not json"}) == {} and read_inputs(None) == {}


def test_pairs_refuse_decisions_built_before_a_change_naming_it_and_write_nothing(fast_tmp):
    _, home = _small(fast_tmp)
    before = home.table_file("pairs").read_bytes()
    features = home.partition_file("image_features", "2023-03-01")
    original = features.read_bytes()
    rows = pq.read_table(features).to_pylist()
    rows[0]["nsfw_detections"] = [{"class": "BUTTOCKS_EXPOSED", "score": 0.9, "box": [0, 0, 1, 1]}]

    def refused(config: CurationConfig, named: str) -> None:
        with pytest.raises(DecisionsOutOfDate) as caught:
            build_pairs(home, config)
        message = str(caught.value)
        assert f"its inputs changed since it was built: {named}; build decisions again" in message, message
        assert "another secret" not in message and "\n" not in message
        assert home.table_file("pairs").read_bytes() == before

    for config in (CurationConfig(four_image_ties="drop"), CurationConfig(pseudonym_secret="another secret"),
                   CurationConfig(nsfw_threshold=0.7), CurationConfig(nsfw_classes=("BUTTOCKS_EXPOSED",))):
        refused(config, "policy")
    for listed, text in ((home.banned_users_file, "5\n"), (home.nsfw_phrases_file, "cat\n")):
        kept = listed.read_bytes()
        listed.write_text(text)
        refused(CurationConfig(), "moderation_lists")
        listed.write_bytes(kept)
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=get_schema("image_features")), features)
    refused(CurationConfig(), "image_features")
    features.write_bytes(original)
    build_pairs(home, CurationConfig())                   # all put back: the same inputs again
    assert home.table_file("pairs").read_bytes() == before


def test_a_new_days_rankings_are_decided_once_decisions_are_rebuilt(fast_tmp):
    b, home = _small(fast_tmp)
    b.image("late_nsfw", day="2023-03-02", nsfw={"FEMALE_GENITALIA_EXPOSED": 0.95})
    b.image("late_other", day="2023-03-02", model=DREAM)
    b.ranking(3, ["late_nsfw", "late_other"], "late_nsfw", day="2023-03-02")
    home = b.write()
    build_clusters(home, DedupConfig())
    with pytest.raises(DecisionsOutOfDate, match="rankings"):
        build_pairs(home, CurationConfig())
    build_decisions(home, CurationConfig())
    build_pairs(home, CurationConfig())
    assert pq.read_table(home.table_file("pairs"))["pair_id"].to_pylist() == ["1_0", "2_0"]
    assert _failures(home, "pairs", "decisions") == {}


def test_decisions_without_a_record_are_refused_and_a_hand_edit_keeping_it_is_not(fast_tmp):
    _, home = _small(fast_tmp)
    table = pq.read_table(home.table_file("decisions"))
    write_parquet_atomic(table, home.table_file("decisions"))       # schema metadata kept: accepted
    build_pairs(home, CurationConfig())
    write_parquet_atomic(table.replace_schema_metadata({}), home.table_file("decisions"))
    with pytest.raises(DecisionsOutOfDate, match="records none of its inputs"):
        build_pairs(home, CurationConfig())


def test_a_copy_of_the_home_records_the_same_inputs_byte_for_byte(fast_tmp):
    _, home = _small(fast_tmp / "a")
    shutil.copytree(home.root, fast_tmp / "b", symlinks=True)
    copy = DataHome(fast_tmp / "b")
    build_decisions(copy, CurationConfig())
    build_pairs(copy, CurationConfig())
    for table in ("decisions", "pairs"):
        assert copy.table_file(table).read_bytes() == home.table_file(table).read_bytes()


# --- 3. a key repeated in a day's partition ---------------------------------------------------------------------------

def test_an_images_partition_repeating_an_image_with_the_accepted_count_is_refused(fast_tmp):
    _, home = _small(fast_tmp)
    part = home.partition_file("images", "2023-03-01")
    rows = pq.read_table(part).to_pylist()
    write_parquet_atomic(pa.Table.from_pylist([rows[0]] + rows[:-1], schema=get_schema("images")), part)
    with pytest.raises(IngestNotReconciled) as caught:
        build_decisions(home, CurationConfig())
    message = str(caught.value)
    assert "images 2023-03-01: 4 rows, its ingest accepted 4, 1 of them repeats another row's image_uid" in message
    with pytest.raises(IngestNotReconciled):
        build_pairs(home, CurationConfig())


def test_a_ranking_re_exported_on_another_day_is_no_repeat(fast_tmp):
    b = HomeBuilder(fast_tmp)
    b.pair(1)
    b.ranking(1, ["r1a", "r1b"], "r1a", day="2023-03-02")              # an identical re-export, one day later
    home = b.write()
    _, decisions, report = build_all(home)
    assert decisions.ranking_exports == 2 and report.pairs == 1 and report.exports_unaccounted == 0


# --- 2. every candidate pair of a ranking in pairs is accounted for ------------------------------------------------------

def _four_image_home(root, **curation):
    b = HomeBuilder(root)
    for u in "abcd":
        b.image(f"t{u}", model=SD21 if u in "ac" else DREAM)
    b.ranking(1, ["ta", "tb", "tc", "td"], None)                         # a 4-image tie: 6 pairs
    for u in "efgh":
        b.image(f"t{u}", phash=1 << 63 if u in "gh" else None, sha="same" if u in "gh" else None)
    b.ranking(2, ["te", "tf", "tg", "th"], "tg")                         # tg ~ th: 2_2 same_cluster
    b.pair(3)
    home = b.write()
    reports = build_all(home, **curation)
    return home, reports


def test_the_rule_passes_ties_and_pair_decisions_and_catches_a_lost_tie_pair(fast_tmp):
    home, (_, _, report) = _four_image_home(fast_tmp)
    pairs = pq.read_table(home.table_file("pairs"))
    assert pairs["pair_id"].to_pylist() == ["1_0", "1_1", "1_2", "1_3", "1_4", "1_5", "2_0", "2_1", "3_0"]
    assert _failures(home, "pairs", "decisions") == {}
    assert report.metadata()["four_image_pairs"] == 8
    pq.write_table(pairs.filter(pc.field("pair_id") != "1_5"), home.table_file("pairs"))
    assert _failures(home, "pairs", "decisions") == {RULE: 1}


def test_the_rule_catches_a_lost_pair_decision_and_an_extra_pair(fast_tmp):
    home, _ = _four_image_home(fast_tmp)
    decisions = pq.read_table(home.table_file("decisions"))
    assert ("pair", "2_2", "same_cluster") in {(d["subject"], d["subject_id"], d["reason"]) for d in decisions.to_pylist()}
    pq.write_table(decisions.filter(pc.field("subject_id") != "2_2"), home.table_file("decisions"))
    assert _failures(home, "pairs", "decisions") == {RULE: 1}
    pq.write_table(decisions, home.table_file("decisions"))
    pairs = pq.read_table(home.table_file("pairs"))
    extra = pairs.slice(8, 1).to_pylist()[0] | {"pair_id": "3_1", "pair_index": 1}     # a pair ranking 3 never had
    pq.write_table(pa.concat_tables([pairs, pa.Table.from_pylist([extra], schema=pairs.schema)]),
                   home.table_file("pairs"))
    assert _failures(home, "pairs", "decisions") == {RULE: 1}


def test_the_rule_passes_with_four_image_ties_dropped(fast_tmp):
    home, (_, _, report) = _four_image_home(fast_tmp, four_image_ties="drop")
    assert pq.read_table(home.table_file("pairs"))["pair_id"].to_pylist() == ["2_0", "2_1", "3_0"]
    assert _failures(home, "pairs", "decisions") == {}
    assert report.metadata()["four_image_pairs"] == 2


# --- the pairs report: an unaccounted export in the reconciliation table -------------------------------------------------

def test_the_report_counts_an_export_without_its_decision(fast_tmp):
    b = HomeBuilder(fast_tmp)
    b.pair(1)
    b.ranking(1, ["r1a", "r1b"], "r1a", day="2023-03-02")
    home = b.write()
    _, _, report = build_all(home)
    assert report.metadata()["exports_unaccounted"] == 0
    assert "| unaccounted exports |" in report.metadata()["reconciliation"]
    decisions = pq.read_table(home.table_file("decisions"))
    write_parquet_atomic(decisions.filter(pc.field("subject") != "ranking_export"), home.table_file("decisions"))
    meta = build_pairs(home, CurationConfig()).metadata()
    assert meta["exports_unaccounted"] == 1 and meta["rankings_unaccounted"] == 0
    assert meta["reconciliation"].splitlines()[-1] == "| 1 | 1 | 0 | 0 | 1 |"
    assert set(_failures(home, "pairs")) == {"pairs_exports_reconciled"}
