"""Each policy rule on literal rows: decisions, pairs and their reconciliation."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from curation_fixtures import SD21, HomeBuilder, build_all, phash_of

from data_contracts.engine import evaluate, load_contract
from pipelines.curation.decisions import CurationConfig, phrase_pattern, read_id_list
from pipelines.curation.pseudonym import DEFAULT_SECRET, pseudonymize
from pipelines.sqlrun import connect


def _run(builder: HomeBuilder, **config):
    home = builder.write()
    reports = build_all(home, **config)
    decisions = pq.read_table(home.table_file("decisions")).to_pylist()
    pairs = pq.read_table(home.table_file("pairs")).to_pylist()
    return home, reports, decisions, pairs


def _reasons(decisions, subject, subject_id):
    return sorted(d["reason"] for d in decisions if d["subject"] == subject and d["subject_id"] == subject_id)


def _contract_failures(home, dataset):
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    return [(r.rule.name, r.value, r.error) for r in evaluate(load_contract(dataset), con) if not r.passed]


def test_two_image_choice_and_tie(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1)
    b.pair(2, tie=True)
    home, (_, _, pairs_report), decisions, pairs = _run(b)
    assert decisions == []
    by_id = {p["pair_id"]: p for p in pairs}
    assert (by_id["1_0"]["label_0"], by_id["1_0"]["label_1"], by_id["1_0"]["best_image_uid"]) == (1.0, 0.0, "r1a")
    assert (by_id["2_0"]["label_0"], by_id["2_0"]["label_1"], by_id["2_0"]["best_image_uid"]) == (0.5, 0.5, None)
    assert by_id["1_0"]["model_0"] == "sd-2.1" and by_id["1_0"]["model_1"] == "dreamlike-photoreal-2.0"
    assert by_id["1_0"]["are_different"] and by_id["1_0"]["has_label"]
    assert by_id["1_0"]["user_id"] == pseudonymize(1, DEFAULT_SECRET) != "1"
    assert by_id["1_0"]["jpg_0_key"] == "blobs/r1a.jpg" and by_id["1_0"]["cluster_0"] == "r1a"
    assert pairs_report.metadata()["tie_rate"] == 0.5
    assert _contract_failures(home, "pairs") == [] and _contract_failures(home, "decisions") == []


def test_four_image_choice_gives_chosen_against_each_other(tmp_path):
    b = HomeBuilder(tmp_path)
    for uid in ("q0", "q1", "q2", "q3"):
        b.image(uid)
    b.ranking(10, ["q0", "q1", "q2", "q3"], "q2")
    _, _, _, pairs = _run(b)
    got = [(p["pair_id"], p["image_0_uid"], p["image_1_uid"], p["label_0"], p["label_1"]) for p in pairs]
    assert got == [("10_0", "q0", "q2", 0.0, 1.0), ("10_1", "q1", "q2", 0.0, 1.0), ("10_2", "q2", "q3", 1.0, 0.0)]


@pytest.mark.parametrize("policy, expected", [("all_pairs", 6), ("drop", 0)])
def test_four_image_tie_policy(tmp_path, policy, expected):
    b = HomeBuilder(tmp_path)
    for uid in ("q0", "q1", "q2", "q3"):
        b.image(uid)
    b.ranking(11, ["q0", "q1", "q2", "q3"], None)
    home, _, decisions, pairs = _run(b, four_image_ties=policy)
    assert len(pairs) == expected and all(p["label_0"] == 0.5 for p in pairs)
    assert _reasons(decisions, "ranking", "11") == ([] if expected else ["four_image_tie"])
    assert _contract_failures(home, "pairs") == []


def test_banned_user_rankings_all_dropped(tmp_path):
    b = HomeBuilder(tmp_path)
    b.banned = [7]
    b.pair(1, user=7)
    b.pair(2, user=7, tie=True)
    b.pair(3, user=8)
    home, _, decisions, pairs = _run(b)
    assert [p["ranking_id"] for p in pairs] == [3]
    assert _reasons(decisions, "ranking", "1") == _reasons(decisions, "ranking", "2") == ["banned_user"]
    assert _reasons(decisions, "user", pseudonymize(7)) == ["banned_user"]
    assert not any(d["subject_id"] == "7" for d in decisions)  # never the raw id
    assert _contract_failures(home, "pairs") == []


def test_phrase_match_only_at_word_boundaries(tmp_path):
    b = HomeBuilder(tmp_path)
    b.phrases = ["nude", "hot  dog", "18+"]
    prompts = {1: "A NUDE statue", 2: "nudes of mountains", 3: "denuded forest", 4: "a hot dog, mustard",
               5: "hotdog stand", 6: "nude.", 7: "rated 18+ only", 8: "year 2018+1", 9: "(nude)"}
    for rid, prompt in prompts.items():
        b.pair(rid, prompt=prompt)
    _, _, decisions, pairs = _run(b)
    dropped = sorted(int(d["subject_id"]) for d in decisions if d["reason"] == "prompt_phrase")
    assert dropped == [1, 4, 6, 7, 9]
    evidence = json.loads(next(d["evidence"] for d in decisions if d["subject_id"] == "4" and d["subject"] == "ranking"))
    assert evidence == {"phrases": ["hot dog"]}
    assert sorted(p["ranking_id"] for p in pairs) == [2, 3, 5, 8]
    assert phrase_pattern([]) == r"[^\s\S]"


def test_phrases_are_not_hidden_by_invisible_look_alike_styled_or_spaced_characters(tmp_path):
    b = HomeBuilder(tmp_path)
    b.phrases = ["nude", "hot dog", "18+"]
    prompts = {1: "a nu\u200bde statue", 2: "a nu\xadde statue", 3: "a nud\u0435 statue",
               4: "\uff41 \uff4e\uff55\uff44\uff45 statue", 5: "a hot\xa0dog", 6: "a hot\u3000dog",
               7: "a \U0001d427\U0001d42e\U0001d41d\U0001d41e statue", 8: "nude_statue", 9: "a [nu\u200bde] statue",
               10: "hot-dog stand", 11: "NUD\u0415 art",
               # no hit: a phrase with a symbol is matched as typed only ("18" alone is not "18+"), and a
               # longer word still hides nothing it should not
               12: "rated 18 only", 13: "nud\u0435s of mountains", 14: "a hotdog"}
    for rid, prompt in prompts.items():
        b.pair(rid, prompt=prompt)
    _, _, decisions, pairs = _run(b)
    dropped = sorted(int(d["subject_id"]) for d in decisions if d["reason"] == "prompt_phrase")
    assert dropped == list(range(1, 12))
    evidence = {int(d["subject_id"]): json.loads(d["evidence"]) for d in decisions if d["reason"] == "prompt_phrase"}
    assert evidence[3] == {"phrases": ["nude"]} and evidence[6] == {"phrases": ["hot dog"]}
    assert sorted(p["ranking_id"] for p in pairs) == [12, 13, 14]


def test_small_capitals_hide_no_phrase_and_a_phrase_with_an_emoji_is_matched_as_typed(tmp_path):
    """The key folds small capitals and negative squared letters, and reads every symbol (an emoji too) as a space:
    so a phrase holding an emoji is not matched by key (its key 'peach' would drop every peach) but on the text with
    its symbols kept, which look-alike, fullwidth and invisible characters do not change."""
    b = HomeBuilder(tmp_path)
    b.phrases = ["nude", "peach \U0001f351"]
    prompts = {1: "a \u0274\u1d1c\u1d05\u1d07 statue", 2: "a \U0001f17d\U0001f184\U0001f173\U0001f174 statue",
               3: "a peach \U0001f351 tart", 4: "a peach tree", 5: "a nude\u2728 statue",
               6: "a \uff50\u0435ach\u200b \U0001f351\ufe0f tart", 7: "a peach\u2728 tart"}
    for rid, prompt in prompts.items():
        b.pair(rid, prompt=prompt)
    _, _, decisions, pairs = _run(b)
    dropped = sorted(int(d["subject_id"]) for d in decisions if d["reason"] == "prompt_phrase")
    assert dropped == [1, 2, 3, 5, 6]
    assert sorted(p["ranking_id"] for p in pairs) == [4, 7]


def test_a_phrase_list_saved_with_a_byte_order_mark_keeps_its_first_phrase(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1, prompt="a nude statue")
    b.pair(2, prompt="a hot dog")
    home = b.write()
    home.nsfw_phrases_file.write_text("\ufeffnude\nhot dog\n", encoding="utf-8")
    home.banned_users_file.write_text("\ufeff# banned\n", encoding="utf-8")     # a BOM before a comment
    build_all(home)
    decisions = pq.read_table(home.table_file("decisions")).to_pylist()
    assert sorted(int(d["subject_id"]) for d in decisions if d["reason"] == "prompt_phrase") == [1, 2]


def test_a_reject_of_an_earlier_day_does_not_drop_an_image_fingerprinted_later(tmp_path):
    """Day 1's blob was missing (a reject row); it landed, the image was re-exported on day 2 and
    fingerprinted then: the image has features, so the stale reject drops nothing."""
    b = HomeBuilder(tmp_path)
    b.image("late", day="2023-03-01", features=False)
    b.reject("late", reason="missing_blob", day="2023-03-01")
    b.image("late", day="2023-03-02")              # the re-export: an images row and a features row on day 2
    b.image("other", day="2023-03-02")
    b.reject("gone", reason="missing_blob", day="2023-03-02")
    b.image("gone", day="2023-03-02", features=False)
    b.ranking(1, ["late", "other"], "late", day="2023-03-02")
    b.ranking(2, ["gone", "other"], "other", day="2023-03-02")
    home, _, decisions, pairs = _run(b)
    assert _reasons(decisions, "image", "late") == []
    assert _reasons(decisions, "image", "gone") == ["feature_rejected"]      # no features on any day
    assert [p["ranking_id"] for p in pairs] == [1]
    assert _contract_failures(home, "pairs") == [] and _contract_failures(home, "decisions") == []


def test_nsfw_flag_propagates_through_duplicate_cluster(tmp_path):
    b = HomeBuilder(tmp_path)
    flagged = phash_of(99)
    b.image("n-src", phash=flagged, nsfw={"FEMALE_BREAST_EXPOSED": 0.8})
    b.image("n-near", phash=flagged ^ 0b1100)           # near duplicate, clean score
    b.image("n-covered", nsfw={"FEMALE_BREAST_COVERED": 0.9, "BUTTOCKS_EXPOSED": 0.3})  # not listed / below threshold
    b.image("ok-1")
    b.image("ok-2")
    b.ranking(1, ["n-near", "ok-1"], "n-near")
    b.ranking(2, ["n-covered", "ok-2"], "ok-2")
    _, _, decisions, pairs = _run(b)
    assert _reasons(decisions, "image", "n-src") == ["nsfw"]
    assert _reasons(decisions, "image", "n-near") == ["nsfw_cluster"]
    assert json.loads(next(d["evidence"] for d in decisions if d["subject_id"] == "n-near"))["flagged_members"] == ["n-src"]
    assert _reasons(decisions, "image", "n-covered") == []
    assert _reasons(decisions, "pair", "1_0") == ["image_dropped"]
    assert _reasons(decisions, "ranking", "1") == ["all_pairs_dropped"]
    assert [p["ranking_id"] for p in pairs] == [2]


def test_nsfw_threshold_and_classes_are_configurable(tmp_path):
    b = HomeBuilder(tmp_path)
    b.image("c-1", nsfw={"BUTTOCKS_EXPOSED": 0.3})
    b.image("c-2")
    b.ranking(1, ["c-1", "c-2"], "c-1")
    _, _, decisions, _ = _run(b, nsfw_threshold=0.25, nsfw_classes=("BUTTOCKS_EXPOSED",))
    assert _reasons(decisions, "image", "c-1") == ["nsfw"]


def test_same_cluster_pair_dropped_but_other_pairs_of_ranking_kept(tmp_path):
    b = HomeBuilder(tmp_path)
    h = phash_of(5)
    b.image("s0", phash=h)
    b.image("s1", phash=h ^ 0b11)      # near duplicate of s0
    b.image("s2")
    b.image("s3", sha=b.features["2023-03-01"][0]["sha256"])  # byte-identical to s0
    b.ranking(1, ["s0", "s1", "s2", "s3"], "s0")
    b.ranking(2, ["s0", "s1"], "s1")
    home, _, decisions, pairs = _run(b)
    assert _reasons(decisions, "pair", "1_0") == ["same_cluster"] and _reasons(decisions, "pair", "1_2") == ["same_cluster"]
    assert [p["pair_id"] for p in pairs] == ["1_1"]
    assert _reasons(decisions, "ranking", "2") == ["all_pairs_dropped"]
    assert _contract_failures(home, "pairs") == []


def test_broken_images_content_filter_and_missing_rows(tmp_path):
    b = HomeBuilder(tmp_path)
    b.image("cf", model="CONTENT_FILTERED")
    b.image("bad", features=False)
    b.reject("bad")
    b.image("nofeat", features=False)
    for uid in ("g1", "g2", "g3", "g4"):
        b.image(uid)
    b.ranking(1, ["cf", "g1"], "g1")
    b.ranking(2, ["bad", "g2"], None)
    b.ranking(3, ["nofeat", "g3"], "g3")
    b.ranking(4, ["ghost", "g4"], "g4")
    home, _, decisions, pairs = _run(b)
    assert _reasons(decisions, "image", "cf") == ["content_filtered"]
    assert _reasons(decisions, "image", "bad") == ["feature_rejected"]
    assert _reasons(decisions, "image", "nofeat") == ["missing_features"]
    assert _reasons(decisions, "image", "ghost") == ["missing_features", "missing_image_row"]
    assert pairs == []
    assert all(_reasons(decisions, "ranking", str(r)) == ["all_pairs_dropped"] for r in (1, 2, 3, 4))
    assert _contract_failures(home, "pairs") == []


def test_duplicate_and_conflicting_exports(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1, day="2023-03-01")
    b.ranking(1, ["r1a", "r1b"], "r1a", day="2023-03-02")      # identical re-export
    b.pair(2, day="2023-03-01")
    b.ranking(2, ["r2a", "r2b"], "r2b", day="2023-03-02")      # conflicting re-export
    b.ranking(3, ["r1a", "r2a"], "r2a", day="2023-03-02", created_at=b.rankings["2023-03-01"][0]["created_at"])
    home, (_, dec_report, pairs_report), decisions, pairs = _run(b)
    assert [(p["ranking_id"], str(p["dt"])) for p in pairs] == [(1, "2023-03-01"), (3, "2023-03-02")]
    assert _reasons(decisions, "ranking_export", "1@2023-03-02") == ["duplicate_ranking"]
    assert _reasons(decisions, "ranking", "2") == ["conflicting_ranking"]
    meta = pairs_report.metadata()
    assert meta["rankings"] == 3 and meta["rankings_unaccounted"] == 0
    assert dec_report.metadata()["decisions_by_reason"]["ranking/conflicting_ranking"] == 1
    assert _contract_failures(home, "pairs") == []


def test_reconciliation_rule_catches_a_lost_ranking(tmp_path):
    b = HomeBuilder(tmp_path)
    b.pair(1)
    b.pair(2)
    home, _, _, _ = _run(b)
    table = pq.read_table(home.table_file("pairs"))
    pq.write_table(table.slice(0, 1), home.table_file("pairs"))  # ranking 2 silently lost
    assert [name for name, _, _ in _contract_failures(home, "pairs")] == ["pairs_rankings_reconciled", "pairs_exports_reconciled"]


def test_decisions_and_pairs_rebuild_byte_identical(tmp_path):
    b = HomeBuilder(tmp_path)
    b.banned = [3]
    b.pair(1)
    b.pair(2, user=3)
    b.pair(4, tie=True)
    home = b.write()
    build_all(home)
    first = [home.table_file(d).read_bytes() for d in ("duplicate_clusters", "decisions", "pairs")]
    build_all(home)
    assert [home.table_file(d).read_bytes() for d in ("duplicate_clusters", "decisions", "pairs")] == first


def test_moderation_list_errors_name_the_line(tmp_path):
    path = tmp_path / "banned.txt"
    path.write_text("1\n# comment\n\n2  # trailing\nabc\n")
    with pytest.raises(ValueError, match=r"banned.txt:5: 'abc'"):
        read_id_list(path)
    with pytest.raises(ValueError, match="four_image_ties"):
        CurationConfig(four_image_ties="some")
    assert SD21.startswith("stabilityai/")


def test_the_pseudonym_secret_never_reaches_metadata_or_a_repr(tmp_path):
    # a hostile review found it in the decisions asset's "config" metadata (the Dagster run database, the UI)
    b = HomeBuilder(tmp_path)
    b.pair(1, user=7)
    secret = "release-secret-do-not-show"
    _, (_, decisions, _), _, _ = _run(b, pseudonym_secret=secret)
    metadata = decisions.metadata()
    assert secret not in json.dumps(metadata) and json.loads(metadata["config"])["pseudonym_secret"] == "***"
    assert json.loads(metadata["config"])["nsfw_threshold"] == CurationConfig().nsfw_threshold   # the rest stays
    assert secret not in repr(CurationConfig(pseudonym_secret=secret))


def test_every_sdxl_beta_engine_gets_the_same_kind_of_short_name(tmp_path):
    """``stable-diffusion-xl-beta-v2-2-4`` (the simulator's own engine) was published as it is while ``-v2-2-2``
    became ``sdxl-beta-v2.2.2``: the SQL and its Python mirror (``short_model_name``) shorten every engine alike."""
    from pipelines.curation.decisions import short_model_name

    b = HomeBuilder(tmp_path)
    b.pair(1, models=("stable-diffusion-xl-beta-v2-2-4", "stable-diffusion-xl-beta-v2-2-2"))
    b.pair(2, models=("stable-diffusion-xl-beta-v3", "org/some-model"))
    _, _, _, pairs = _run(b)
    by_id = {p["pair_id"]: p for p in pairs}
    assert (by_id["1_0"]["model_0"], by_id["1_0"]["model_1"]) == ("sdxl-beta-v2.2.4", "sdxl-beta-v2.2.2")
    assert (by_id["2_0"]["model_0"], by_id["2_0"]["model_1"]) == ("sdxl-beta-v3", "some-model")
    for model_id, short in [("stable-diffusion-xl-beta-v2-2-4", "sdxl-beta-v2.2.4"), ("stable-diffusion-xl-beta-v3",
                            "sdxl-beta-v3"), ("org/some-model", "some-model"), ("stable-diffusion-xl-beta-vx", "stable-diffusion-xl-beta-vx")]:
        assert short_model_name(model_id) == short
