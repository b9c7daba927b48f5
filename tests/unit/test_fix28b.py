"""Fixes of hostile review rev28b (tests/unit/test_hostile_rev28b.py): curation's near-duplicate clusters, the
nsfw_cluster evidence, the banned-users list, the banned-user contract rules, and what the published data card and
manifest say of how a version was curated (NSFW threshold and classes, k, the public default pseudonym secret)."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all, phash_of

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from pipelines.curation.decisions import (
    POLICY_METADATA,
    SHOWN_FLAGGED,
    CurationConfig,
    build_decisions,
    build_pairs,
    read_id_list,
    read_policy,
)
from pipelines.curation.dedup import DEDUP_METADATA, DedupConfig, band_table, build_clusters, cluster_features
from pipelines.curation.pseudonym import DEFAULT_SECRET, KEY_CHECK_METADATA, key_check
from pipelines.sqlrun import connect

DC = 1 << 63


def _features(rows: list[tuple[str, int, int]]) -> pa.Table:
    """image_features rows (uid, phash, dhash) as cluster_features reads them (every sha256 distinct)."""
    return pa.table({
        "image_uid": [r[0] for r in rows], "sha256": [hashlib.sha256(r[0].encode()).hexdigest() for r in rows],
        "phash": pa.array([r[1] for r in rows], pa.uint64()), "dhash": pa.array([r[2] for r in rows], pa.uint64()),
        "dt": pa.array([dt.date(2023, 3, 1)] * len(rows), pa.date32()),
        "blob_path": [f"raw/images/{r[0]}.png" for r in rows],
    })


def _partition(rows: list[tuple[str, int, int]], config: DedupConfig, names: dict[str, str]) -> set[frozenset]:
    """The clusters of ``rows`` as sets of the images' names (``names``: uid -> name), whatever the uids."""
    clusters, _ = cluster_features(connect({"image_features": _features(rows)}), config)
    groups: dict[str, set] = {}
    for row in clusters.to_pylist():
        groups.setdefault(row["cluster_id"], set()).add(names[row["image_uid"]])
    return {frozenset(g) for g in groups.values()}


def _oracle(items: dict[str, tuple[int, int]], config: DedupConfig) -> set[frozenset]:
    """Brute force of the documented rule: images with one pHash are one group; two groups are linked when their
    pHashes are within k and they share a pHash band value or a dHash band value of any of their images' dHashes
    (no bucket is over the cap here); clusters are the connected components."""
    bands = band_table(config).to_pylist()
    groups: dict[int, set[int]] = {}
    for phash, dhash in items.values():
        groups.setdefault(phash & ~DC, set()).add(dhash)

    def keys(phash: int) -> set[tuple[int, int]]:
        out = set()
        for band in bands:
            values = [phash] if band["hash_kind"] == "phash" else sorted(groups[phash])
            out |= {(band["band"], (v >> band["shift"]) & band["mask"]) for v in values}
        return out

    parent = {p: p for p in groups}

    def root(p: int) -> int:
        while parent[p] != p:
            p = parent[p]
        return p

    for a, b in itertools.combinations(sorted(groups), 2):
        if (a ^ b).bit_count() <= config.k and keys(a) & keys(b):
            parent[root(a)] = root(b)
    out: dict[int, set] = {}
    for name, (phash, _) in items.items():
        out.setdefault(root(phash & ~DC), set()).add(name)
    return {frozenset(g) for g in out.values()}


def _twin_case(seed: int) -> dict[str, tuple[int, int]]:
    """Named images (phash, dhash): pHash groups of 1-3 images with their own dHashes, near pHashes differing in
    one bit of each pHash band (no pHash band shared: only the dHash bands propose them), sharing a dHash with one
    member of a group, plus far images."""
    rng = random.Random(seed)
    items: dict[str, tuple[int, int]] = {}
    for g in range(6):
        centre = phash_of(1000 * seed + g)
        dhashes = [phash_of(5000 + 1000 * seed + 10 * g + i) for i in range(3)]
        for i in range(rng.randint(1, 3)):                       # the pHash group: one pHash, its own dHashes
            items[f"g{g}-twin{i}"] = (centre, dhashes[i])
        near = centre ^ (1 << rng.randrange(0, 16)) ^ (1 << rng.randrange(16, 32)) ^ (1 << rng.randrange(32, 48)) \
            ^ (1 << rng.randrange(48, 63))
        items[f"g{g}-near"] = (near, dhashes[rng.randrange(0, sum(1 for n in items if n.startswith(f"g{g}-twin")))])
        items[f"g{g}-far"] = (phash_of(9000 + 1000 * seed + g), phash_of(7000 + 1000 * seed + g))
    return items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clusters_do_not_depend_on_which_image_has_the_smallest_uid(seed):
    """rev28b #1: the same images under six orders of their uids give the same clusters, those of the documented
    rule (every dHash of a pHash group banded), and every near image joins its group."""
    items = _twin_case(seed)
    config = DedupConfig()
    want = _oracle(items, config)
    assert all(any({f"g{g}-near", f"g{g}-twin0"} <= c for c in want) for g in range(6))
    names = sorted(items)
    rng = random.Random(seed)
    for _ in range(6):
        uids = [f"u{i:03d}" for i in range(len(names))]
        rng.shuffle(uids)
        by_uid = dict(zip(uids, names))
        rows = [(uid, *items[name]) for uid, name in by_uid.items()]
        assert _partition(rows, config, by_uid) == want


def test_an_image_added_later_never_splits_a_cluster():
    """rev28b #1: adding images (any order, any uid) only merges clusters: every pair clustered together on the
    images of the first nights is together once the later ones arrive."""
    items = _twin_case(7)
    names = sorted(items)
    rng = random.Random(7)
    config = DedupConfig()
    for _ in range(4):
        rng.shuffle(names)
        uids = {name: f"{rng.getrandbits(32):08x}" for name in names}
        by_uid = {uid: name for name, uid in uids.items()}
        previous: set[frozenset] = set()
        for night in range(1, len(names) + 1, 5):
            present = names[:night]
            now = _partition([(uids[n], *items[n]) for n in present], config, by_uid)
            for cluster in previous:
                assert any(cluster <= c for c in now), (cluster, now)
            previous = now


def _textured_dhash(i: int) -> int:
    """A distinct dHash for each ``i`` (< 2**24) that is far from any mirror's (fix34k: a dHash within DHASH_K of a
    left-right or top-bottom mirror's sends its image to the stricter search; a random one is that about 1 time in
    30): bits 0 and 7 of every row set (8 left-right pairs), bits 1-3 set in rows 0-3 only (12 bits between rows r
    and 7 - r); bits 4-6 of the rows hold ``i``."""
    value = 0
    for row in range(8):
        byte = 0b1000_0001 | (0b0000_1110 if row < 4 else 0) | (((i >> (3 * row)) & 0b111) << 4)
        value |= byte << (8 * row)
    return value


def test_a_flood_of_one_phash_with_distinct_dhashes_is_one_node():
    """rev28b #1 at scale: 20,000 images with one pHash and 20,000 dHashes are one node, in each dHash bucket once
    (no bucket over the cap, no pair scanned within the group); a near image sharing the last one's dHash joins.
    (Since fix34k the dHashes are textured ones, :func:`_textured_dhash`: a random dHash that reads as a mirror's
    makes its image's pHash uninformative, and one of 20,000 random ones did.)"""
    centre = phash_of(3)
    rows = [(f"img{i:06d}", centre, _textured_dhash(i)) for i in range(20_000)]
    rows.append(("zz-near", centre ^ 1 ^ (1 << 20) ^ (1 << 40) ^ (1 << 55), rows[-1][2]))
    clusters, report = cluster_features(connect({"image_features": _features(rows)}), DedupConfig())
    assert set(clusters.column("cluster_id").to_pylist()) == {"img000000"}
    assert report.giant_buckets == [] and report.near_edges == 1


def test_giant_bucket_sizes_count_nodes_not_rows():
    """A dHash bucket's size counts pHash groups (nodes), each once whatever number of its images share the value:
    1,200 far-apart pHashes of two images each, every image with the same low dHash bits, make one bucket of
    1,200 in each band the value fills (over the cap of 1,000), not 2,400."""
    rows = []
    for g in range(1200):
        for i in range(2):
            rows.append((f"g{g:05d}-{i}", phash_of(g), (phash_of(50_000 + 2 * g + i) & ~0xFFFF) | 0x1234))
    _, report = cluster_features(connect({"image_features": _features(rows)}), DedupConfig())
    assert [(b["hash_kind"], b["size"]) for b in report.giant_buckets] == [("dhash", 1200)]


def test_the_clusters_record_their_settings_and_the_decisions_their_policy(tmp_path):
    """rev28b #5: duplicate_clusters records the settings it was clustered with, decisions the policy (and the
    clusters' settings), never the secret; the same inputs give the same bytes."""
    hb = HomeBuilder(tmp_path)
    hb.pair(1, user=5)
    home = hb.write()
    build_clusters(home, DedupConfig(k=2))
    recorded = json.loads(pq.read_schema(home.table_file("duplicate_clusters")).metadata[DEDUP_METADATA])
    assert recorded["k"] == 2 and "threads" not in recorded
    config = CurationConfig(nsfw_threshold=0.8, pseudonym_secret="a private one")
    build_decisions(home, config)
    first = home.table_file("decisions").read_bytes()
    metadata = pq.read_schema(home.table_file("decisions")).metadata
    policy = read_policy(metadata)
    assert policy["nsfw_threshold"] == 0.8 and policy["dedup"]["k"] == 2
    assert list(policy["nsfw_classes"]) == list(config.nsfw_classes)
    assert b"a private one" not in metadata[POLICY_METADATA]
    build_decisions(home, config)
    assert home.table_file("decisions").read_bytes() == first
    assert read_policy(None) == {} and read_policy({POLICY_METADATA: b"[1]"}) == {}


# --- 2. nsfw_cluster evidence ----------------------------------------------------------------------------------------

def test_nsfw_cluster_evidence_names_the_first_flagged_members_and_counts_them(tmp_path):
    hb = HomeBuilder(tmp_path)
    for i in range(40):   # one cluster of 40; every third image flagged (14 flagged)
        hb.image(f"img{i:03d}", phash=phash_of(5), nsfw={"FEMALE_BREAST_EXPOSED": 0.9} if i % 3 == 0 else None)
    hb.image("small-a", phash=phash_of(6), nsfw={"FEMALE_BREAST_EXPOSED": 0.9})
    hb.image("small-b", phash=phash_of(6))
    home = hb.write()
    build_clusters(home, DedupConfig())
    build_decisions(home, CurationConfig())
    evidence = {d["subject_id"]: json.loads(d["evidence"]) for d in pq.read_table(home.table_file("decisions")).to_pylist()
                if d["reason"] == "nsfw_cluster"}
    flagged = [f"img{i:03d}" for i in range(0, 40, 3)]
    assert len(evidence) == 40 - len(flagged) + 1
    big = evidence["img001"]
    assert big == {"cluster_id": "img000", "flagged_count": len(flagged), "flagged_members": flagged[:SHOWN_FLAGGED]}
    assert all(evidence[uid] == big for uid in evidence if uid.startswith("img"))
    assert evidence["small-b"] == {"cluster_id": "small-a", "flagged_count": 1, "flagged_members": ["small-a"]}


# --- 3. banned user ids past int64 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["9223372036854775808", "-9223372036854775809", "1" * 40])
def test_an_id_past_int64_names_the_file_and_line(tmp_path, text):
    path = tmp_path / "banned_users.txt"
    path.write_text(f"# banned\n7\n{text}  # pasted\n")
    with pytest.raises(ValueError, match=rf"banned_users\.txt:3: '{text}' is not a user id: past the 64-bit"):
        read_id_list(path)


def test_the_int64_limits_are_user_ids(tmp_path):
    path = tmp_path / "banned_users.txt"
    path.write_text("9223372036854775807\n-9223372036854775808\n")
    assert read_id_list(path) == [-(1 << 63), (1 << 63) - 1]


def test_the_command_prints_one_line_for_an_id_past_int64(tmp_path, capsys):
    from formats.commands import run_command
    from pipelines.curation.decisions import main

    hb = HomeBuilder(tmp_path / "home")
    hb.pair(1, user=5)
    hb.banned = ["99999999999999999999"]
    home = hb.write()
    build_clusters(home, DedupConfig())
    assert run_command("python -m pipelines.curation.decisions", main, ["--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "banned_users.txt:2:" in err and "Traceback" not in err
    assert not home.table_file("decisions").exists()


# --- 4. the banned-user contract rules -------------------------------------------------------------------------------

def _banned_home(tmp_path):
    hb = HomeBuilder(tmp_path)
    hb.pair(1, user=5)
    hb.pair(2, user=5)
    hb.pair(3, user=6)
    hb.banned = [5]
    home = hb.write()
    build_all(home)
    return home


def _rule_values(home) -> dict[str, float]:
    views = {name: home.table_glob(name) for name in ("rankings", "images", "image_features", "image_rejects")}
    views |= {name: str(home.table_file(name)) for name in ("duplicate_clusters", "decisions", "pairs")}
    con = connect(views)
    try:
        return {r.rule.name: r.value for dataset in ("decisions", "pairs")
                for r in evaluate(load_contract(dataset), con)
                if r.rule.name in ("decisions_banned_user_rankings_dropped", "pairs_no_banned_user")}
    finally:
        con.close()


def test_the_banned_user_rules_pass_on_a_build_and_are_blocking(tmp_path):
    home = _banned_home(tmp_path)
    assert _rule_values(home) == {"decisions_banned_user_rankings_dropped": 0, "pairs_no_banned_user": 0}
    rules = {r.name: r for dataset in ("decisions", "pairs") for r in load_contract(dataset).rules}
    assert rules["decisions_banned_user_rankings_dropped"].blocking and rules["pairs_no_banned_user"].blocking


@pytest.mark.parametrize("lost", [["2"], ["1", "2"]])
def test_a_banned_users_lost_ranking_decision_fails_both_rules(tmp_path, lost):
    home = _banned_home(tmp_path)
    table = pq.read_table(home.table_file("decisions"))
    kept = [d for d in table.to_pylist() if not (d["subject"] == "ranking" and d["subject_id"] in lost)]
    write_parquet_atomic(pa.Table.from_pylist(kept, schema=table.schema), home.table_file("decisions"))
    build_pairs(home, CurationConfig())
    values = _rule_values(home)
    assert values["decisions_banned_user_rankings_dropped"] == 1
    assert values["pairs_no_banned_user"] == len(lost)


# --- 5 and 6. the data card and manifest ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A version published from split_pairs recording the public default secret's key check and decisions
    recording their policy (NSFW threshold 0.7, two classes, k 4)."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("card28b") / "home", num_rankings=40, seed=5)
    table = pq.read_table(home.table_file("split_pairs"))
    write_parquet_atomic(table.replace_schema_metadata({KEY_CHECK_METADATA: key_check(DEFAULT_SECRET).encode()}),
                         home.table_file("split_pairs"))
    decisions = pq.read_table(home.table_file("decisions"))
    policy = {"nsfw_classes": ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED"], "nsfw_threshold": 0.7, "four_image_ties": "drop",
              "dedup": {"k": 4, "bands": 4}}
    write_parquet_atomic(decisions.replace_schema_metadata({POLICY_METADATA: json.dumps(policy).encode()}),
                         home.table_file("decisions"))
    return home, publish_dataset(home, PublishConfig(workers=1, fsync=False))


def test_the_card_and_manifest_state_the_recorded_policy_and_the_public_secret(published):
    _, report = published
    card = (report.path / "README.md").read_text(encoding="utf-8")
    assert "NudeNet classes `ANUS_EXPOSED`, `BUTTOCKS_EXPOSED` at score >= 0.7" in card
    assert "classifier at a fixed threshold (score >= 0.7)" in card
    assert card.count("pHash Hamming distance <= 4") == 2 and "<= 6" not in card and "0.5)" not in card
    secret_lines = [line for line in card.splitlines() if "public default secret" in line]
    assert len(secret_lines) == 2 and "reversible" in secret_lines[0] and "pseudonym_secret" in secret_lines[1]
    assert "never the app's id" not in card
    manifest = json.loads((report.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["curation"] == {"nsfw_classes": ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED"], "nsfw_threshold": 0.7,
                                    "near_duplicate_max_distance": 4,
                                    "pseudonyms": {"secret": "public-default", "reversible": True}}


def test_a_private_secret_and_an_unrecorded_policy_claim_no_number_and_no_public_secret(published, tmp_path):
    """Another secret's key check: the card keeps 'never the app's id' and warns of nothing; decisions without a
    recorded policy (a file written before it was recorded): the card names no threshold and no k."""
    from pipelines.publish import datacard
    from pipelines.publish.meta import card_sources
    from pipelines.publish.samples import meta_sources, splits_in

    home, report = published
    table = pq.read_table(home.table_file("split_pairs"))
    plain = tmp_path / "warehouse" / "decisions" / "data.parquet"      # the home's decisions, no policy recorded
    write_parquet_atomic(pq.read_table(home.table_file("decisions")).replace_schema_metadata(None), plain)
    listed = dict(meta_sources(home), decisions=[plain])
    sources = card_sources(table, listed, None, key_check("a private one"))
    assert sources.pseudonym_secret == datacard.PRIVATE and sources.policy == {}
    card = datacard.render(report.path, "v", splits_in(table), sources)
    assert "never the app's id" in card and not any("secret" in line for line in card.lower().splitlines())
    assert "score >=" not in card and "distance <=" not in card and "not recorded in this version" in card
    assert sources.curation() == {"nsfw_classes": None, "nsfw_threshold": None, "near_duplicate_max_distance": None,
                                  "pseudonyms": {"secret": "private", "reversible": False}}
    unknown = card_sources(table, listed, None, None)
    assert unknown.pseudonym_secret is None and unknown.curation()["pseudonyms"] == {"secret": None, "reversible": None}
