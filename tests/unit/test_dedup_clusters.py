"""Duplicate clusters: precision/recall on planted duplicates, banding, capping, components, determinism."""
from __future__ import annotations

import collections
import datetime
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dedup_fixtures import planted_features

from formats.home import DataHome
from pipelines.curation.dedup import DedupConfig, band_table, build_clusters, cluster_features
from pipelines.sqlrun import connect

DC = 1 << 63


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    features, truth = planted_features(140, seed=3, size=128)
    home = DataHome(tmp_path_factory.mktemp("dedup_home"))
    target = home.partition_file("image_features", "2023-03-01")
    target.parent.mkdir(parents=True)
    pq.write_table(features, target)
    home.ground_truth.mkdir(parents=True)
    pq.write_table(truth, home.ground_truth / "duplicates.parquet")
    return home, truth


def test_precision_and_recall_on_planted_duplicates(planted):
    home, truth = planted
    report = build_clusters(home, DedupConfig(), truth=home.ground_truth / "duplicates.parquet")
    t = report.truth
    assert t["planted_exact"] > 0 and t["planted_near"] == 140
    assert t["recall_exact"] == 1.0
    assert t["recall_near"] >= 0.99, t
    assert t["precision"] >= 0.99 and t["precision_near"] >= 0.99, t
    meta = report.metadata()
    assert meta["truth_recall_near"] == t["recall_near"] and "| cluster size |" in meta["cluster_size_histogram"]


def test_truth_is_only_what_the_caller_passes(planted):
    home, truth = planted
    assert home.ground_truth.is_dir()  # present in the home, but not passed: not read
    report = build_clusters(home, DedupConfig())
    assert report.truth is None and not any(k.startswith("truth_") for k in report.metadata())
    assert build_clusters(home, DedupConfig(), truth=truth).truth["recall_exact"] == 1.0


def test_rebuild_is_byte_identical(planted):
    home, truth = planted
    build_clusters(home)
    first = home.table_file("duplicate_clusters").read_bytes()
    build_clusters(home, truth=truth)
    assert home.table_file("duplicate_clusters").read_bytes() == first


def _features(rows):
    return pa.table({
        "image_uid": [r[0] for r in rows], "sha256": [r[1] for r in rows],
        "phash": pa.array([r[2] for r in rows], pa.uint64()), "dhash": pa.array([r[3] for r in rows], pa.uint64()),
        "dt": pa.array([datetime.date(2023, 3, 1)] * len(rows), pa.date32()),
        "blob_path": [f"raw/images/{r[0]}.png" for r in rows],
    })


def _sha(uid):
    return hashlib.sha256(uid.encode()).hexdigest()


def test_chain_is_one_component_with_smallest_uid_canonical():
    base = 0x0F0F_0F0F_0F0F_0F0F | DC
    # c differs from b by 4 bits, b from a by 4 bits, a from c by 8 > k: one cluster through b
    a, b, c = base, base ^ 0b1111, base ^ 0b1111 ^ (0b1111 << 20)
    far = base ^ ((1 << 40) - 1)
    rows = [("m-c", _sha("c"), c, 1), ("m-a", _sha("a"), a, 2), ("m-b", _sha("b"), b, 3),
            ("z-far", _sha("far"), far, 4), ("y-copy", _sha("a"), far ^ 0xFFFF, 5)]
    con = connect({"image_features": _features(rows)})
    clusters, report = cluster_features(con, DedupConfig(k=4, dhash_bands=False))
    got = {r["image_uid"]: r for r in clusters.to_pylist()}
    assert {got[u]["cluster_id"] for u in ("m-a", "m-b", "m-c")} == {"m-a"}
    # y-copy is byte-identical to m-a (same sha256) although its hash is far: exact edge joins it
    assert got["y-copy"]["cluster_id"] == "m-a" and got["m-a"]["cluster_size"] == 4
    assert got["z-far"]["cluster_id"] == "z-far" and got["z-far"]["cluster_size"] == 1
    assert sorted(u for u, r in got.items() if r["is_canonical"]) == ["m-a", "z-far"]
    assert report.near_edges == 2 and report.exact_duplicate_images == 1


def test_a_long_chain_of_near_duplicates_with_random_uids_is_one_cluster():
    """A morph of 600 images, each 4 pHash bits from the one before (and farther from every other),
    under random uids: min-label propagation needed ~1 round per 3 images here and failed the build
    at its 64-round cap; connected components take one pass."""
    import numpy as np

    rng = np.random.default_rng(1)
    h = int(rng.integers(0, 2 ** 63)) | DC
    hashes, recent = [h], []
    for _ in range(599):
        band = int(rng.integers(0, 4))
        bits = rng.choice([b for b in range(band * 15, band * 15 + 15) if b not in recent], 4, replace=False)
        recent = (recent + [int(b) for b in bits])[-8:]
        for b in bits:
            h ^= 1 << int(b)
        hashes.append(h)
    uids = [hashlib.sha256(f"u{i}".encode()).hexdigest()[:32] for i in range(len(hashes))]   # random order
    rows = [(uid, _sha(uid), ph, i) for i, (uid, ph) in enumerate(zip(uids, hashes))]
    con = connect({"image_features": _features(rows)})
    clusters, report = cluster_features(con, DedupConfig(dhash_bands=False))
    assert report.largest_cluster == 600 and report.clusters_with_duplicates == 1
    assert set(clusters.column("cluster_id").to_pylist()) == {min(uids)}
    assert report.near_edges + report.same_hash_images == 599   # a spanning tree of the 600 images


def test_component_labels_match_a_union_find_on_random_graphs():
    import numpy as np

    from pipelines.curation.dedup import component_labels

    rng = np.random.default_rng(7)
    for nodes, edges in ((1, 1), (50, 30), (400, 380), (2000, 1500)):
        r0, r1 = rng.integers(0, nodes * 3, edges), rng.integers(0, nodes * 3, edges)   # sparse ids, self loops
        parent = {}

        def find(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in zip(r0.tolist(), r1.tolist()):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        got = component_labels(r0, r1).to_pylist()
        assert [g["rid"] for g in got] == sorted(set(r0.tolist()) | set(r1.tolist()))
        members: dict[int, list[int]] = {}
        for x in parent:
            members.setdefault(find(x), []).append(x)
        expected = {x: min(group) for group in members.values() for x in group}
        assert {g["rid"]: g["label"] for g in got} == expected
    assert component_labels(np.array([], np.int64), np.array([], np.int64)).num_rows == 0


def test_the_removed_round_limit_setting_is_refused_with_its_reason():
    from formats.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="dedup.max_iterations.*was removed: duplicate clusters are now"):
        Settings().with_values({"dedup.max_iterations": 64}, "pickapic.toml")


def test_dc_bit_masked_and_bands_cover_63_bits():
    bands = band_table(DedupConfig(bands=4, dhash_bands=False)).to_pylist()
    widths = [bin(b["mask"]).count("1") for b in bands]
    assert sum(widths) == 63 and max(widths) - min(widths) <= 1
    assert bands[-1]["shift"] + widths[-1] == 63  # bit 63 (the DC term) is in no band


def test_giant_bucket_is_capped_and_reported():
    blank = 0x5555_5555_5555_5555 | DC
    rows = [(f"blank-{i:03d}", _sha(f"blank{i}"), blank ^ (1 << (i % 60)) if i % 2 else blank, 7) for i in range(30)]
    rows += [("p-1", _sha("p1"), 0x1234_5678_9ABC_DEF0 | DC, 11), ("p-2", _sha("p2"), (0x1234_5678_9ABC_DEF0 | DC) ^ 0b11, 12)]
    con = connect({"image_features": _features(rows)})
    clusters, report = cluster_features(con, DedupConfig(k=4, min_bucket_cap=10, dhash_bands=False))
    assert report.giant_buckets and all(b["size"] > 10 for b in report.giant_buckets)
    got = {r["image_uid"]: r["cluster_id"] for r in clusters.to_pylist()}
    assert got["p-2"] == "p-1"  # small buckets still join
    assert "giant_bucket_table" in report.metadata()


def test_near_links_have_the_components_of_a_brute_force_bucket_scan():
    """The links join exactly the components of every pair sharing a band value outside the skipped
    buckets within distance k: one link per joined node, to its component's smallest rid (the skipped
    bucket's sub-band search and sampling turned off: ``subband_budget=0, representatives=0, window=0``)."""
    import itertools

    import numpy as np
    import pyarrow as pa

    from pipelines.curation.dedup import DedupConfig, band_table, component_labels, near_links

    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    near = base[rng.integers(0, 60, 240)] ^ (np.uint64(1) << rng.integers(0, 63, 240).astype(np.uint64))
    near ^= (np.uint64(1) << rng.integers(0, 63, 240).astype(np.uint64))
    phash = np.unique(np.concatenate([base, near, base & np.uint64(0xFFFF)]))  # some shared low bands too
    dhash = rng.integers(0, 2**63, len(phash), dtype=np.uint64)
    rid = rng.permutation(len(phash)).astype(np.int64) + 1
    nodes = pa.table({"rid": rid, "phash": phash, "dhash": dhash})
    config = DedupConfig(k=4, bands=4)
    bands = band_table(config)
    skipped = {(0, int(phash[0] & np.uint64(0xFFFF)))}
    giant = pa.table({"band": pa.array([b for b, _ in skipped], pa.int32()),
                      "value": pa.array([v for _, v in skipped], pa.uint64())})
    rows = bands.to_pylist()

    def keys(i):
        return {(r["band"], int(((phash if r["hash_kind"] == "phash" else dhash)[i] >> np.uint64(r["shift"]))
                                & np.uint64(r["mask"]))) for r in rows}

    expected = set()
    for i, j in itertools.combinations(range(len(phash)), 2):
        shared = (keys(i) & keys(j)) - skipped
        if shared and bin(int(phash[i] ^ phash[j])).count("1") <= config.k:
            expected.add((min(rid[i], rid[j]), max(rid[i], rid[j])))
    want = component_labels(np.array([a for a, _ in expected]), np.array([b for _, b in expected])).to_pylist()
    want_links = sorted((r["label"], r["rid"]) for r in want if r["label"] != r["rid"])
    for chunk in (None, 1):   # 1: merged after every max(1, nodes) pairs
        got = near_links(nodes, bands, giant, config.k, chunk=chunk, representatives=0, window=0, subband_budget=0)
        assert list(zip(got.column("r0").to_pylist(), got.column("r1").to_pylist())) == want_links
    assert len(expected) > 100 and len(want_links) < len(expected)


DC64 = np.uint64(DC)


def _collision_case(seed):
    """Random images whose hashes collide a lot: a few centres, flips from a few bit positions (bands
    shared, chains and cliques within k), repeated pHashes, shared sha256s, few dHash values."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(150, 400))
    centres = rng.integers(0, 2**63, int(rng.integers(1, 6)), dtype=np.uint64)
    positions = rng.choice(63, size=int(rng.integers(3, 24)), replace=False)
    dvalues = rng.integers(0, 2**63, int(rng.integers(1, 6)), dtype=np.uint64)
    rows = []
    for i in range(n):
        uid = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:16]
        h = int(centres[rng.integers(len(centres))])
        for b in rng.choice(positions, int(rng.integers(0, 6))):
            h ^= 1 << int(b)
        if rows and rng.random() < 0.1:
            h = rows[int(rng.integers(len(rows)))][2]          # the same pHash as another image
        sha = rows[int(rng.integers(len(rows)))][1] if rows and rng.random() < 0.05 else _sha(uid)
        d = int(dvalues[rng.integers(len(dvalues))]) if rng.random() < 0.5 else int(rng.integers(0, 2**63))
        rows.append((uid, sha, h | DC if rng.random() < 0.9 else h, d))
    config = DedupConfig(k=int(rng.choice([0, 2, 4, 6, 8])), bands=int(rng.choice([1, 2, 3, 4, 7])),
                         dhash_bands=bool(rng.random() < 0.5), mask_dc_bit=bool(rng.random() < 0.8),
                         min_bucket_cap=int(rng.choice([3, 30, 1000])))
    return rows, config


def _assert_same_as_reference(rows, config):
    """Clusters equal to the materialising build's; ``near_edges`` counts its components' links."""
    from dedup_reference import reference_clusters

    from pipelines.curation.dedup import component_labels

    clusters, report = cluster_features(connect({"image_features": _features(rows)}), config)
    want, pairs = reference_clusters(connect({"image_features": _features(rows)}), config)
    assert clusters.equals(want)
    labels = component_labels(pairs.column("r0").to_numpy(), pairs.column("r1").to_numpy())
    linked = sum(1 for r in labels.to_pylist() if r["rid"] != r["label"])
    assert report.near_edges == linked
    return clusters, report, pairs


def test_clusters_match_the_materialising_build_on_random_collisions(monkeypatch):
    """Property: on random inputs with many collisions (and every config knob) the streaming build gives
    the clusters of the build that held every pair; small chunks and settle sizes exercise the merges."""
    import pipelines.curation.dedup as dedup

    settled = 0
    for seed in range(36):
        if seed % 3:
            monkeypatch.setattr(dedup, "PAIR_CHUNK", 1)
            monkeypatch.setattr(dedup, "SETTLE_BUCKET", int(seed % 5))
        else:
            monkeypatch.undo()
        rows, config = _collision_case(seed)
        _, report, pairs = _assert_same_as_reference(rows, config)
        settled += pairs.num_rows > report.near_edges    # some pairs were redundant: cliques, triangles
    assert settled >= 15


def _flood(n, radius, seed=0):
    """``n`` distinct hashes within ``radius`` bits of one centre (every pair within 2 * radius)."""
    rng = np.random.default_rng(seed)
    centre = np.uint64(int(rng.integers(0, 2**63)))
    flips = np.uint64(1) << rng.integers(0, 63, (8 * n, radius)).astype(np.uint64)
    used = np.arange(radius) < rng.integers(1, radius + 1, 8 * n)[:, None]
    hashes = np.unique(centre ^ np.bitwise_or.reduce(np.where(used, flips, np.uint64(0)), axis=1))
    assert len(hashes) >= n
    return [int(h) | DC for h in hashes[rng.permutation(len(hashes))[:n]]]


def _flood_rows(hashes, tag):
    uids = [hashlib.sha256(f"{tag}{i}".encode()).hexdigest()[:16] for i in range(len(hashes))]   # random order
    return [(uid, _sha(uid), h, i) for i, (uid, h) in enumerate(zip(uids, hashes))]


def test_close_hash_floods_match_the_materialising_build():
    """Floods the old build can still hold (0.3-1M pairs): identical hashes, and distinct hashes within 3
    and 6 bits of one centre, mixed with ordinary images, capped and uncapped: the same clusters."""
    rng = np.random.default_rng(5)
    ordinary = [int(h) | DC for h in rng.integers(0, 2**63, 300, dtype=np.uint64)]
    for radius in (0, 3, 6):
        hashes = _flood(1500, radius) if radius else [_flood(1, 1)[0]] * 1500
        rows = _flood_rows(hashes + ordinary, f"r{radius}-")
        for cap in (1000, 10_000):
            clusters, report, pairs = _assert_same_as_reference(rows, DedupConfig(min_bucket_cap=cap))
            assert report.largest_cluster >= (1500 if cap > 1500 else 2)
    assert pairs.num_rows > 200_000 and report.near_edges < 1500


def test_a_flood_of_close_hashes_is_clustered_in_bounded_memory():
    """4,000 distinct hashes within 3 bits of one centre (every pair within k = 6, ~8M verified pairs),
    nothing capped: the build that held every pair peaked at 940 MB of numpy arrays (10 MB now): the pairs are
    now merged chunk by chunk and a bucket that is one component is dropped."""
    import tracemalloc

    rows = _flood_rows(_flood(4000, 3, seed=1), "flood-")
    con = connect({"image_features": _features(rows)})
    tracemalloc.start()
    try:
        clusters, report = cluster_features(con, DedupConfig(min_bucket_cap=10_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MB"
    assert report.largest_cluster == 4000 and report.clusters_with_duplicates == 1 and not report.giant_buckets
    assert set(clusters.column("cluster_id").to_pylist()) == {min(r[0] for r in rows)}
    assert report.near_edges == 3999


def test_buckets_over_the_cap_are_verified_pair_by_pair_and_reported():
    """Rev17d: every bucket over the cap was skipped, so a flood of 3,000 near-identical images gave 144
    clusters. Now a bucket over the cap is still verified pair by pair (within ``EXACT_PAIR_BUDGET``)."""
    rng = np.random.default_rng(7)
    ordinary = [int(h) | DC for h in rng.integers(0, 2**63, 200, dtype=np.uint64)]
    ordinary.append(ordinary[0] ^ 0b1010)                          # one ordinary near pair
    rows = _flood_rows(_flood(1500, 3, seed=4) + ordinary, "over-")
    clusters, report, _ = _assert_same_as_reference(rows, DedupConfig(min_bucket_cap=100))
    assert report.giant_buckets and {b["method"] for b in report.giant_buckets} == {"exact"}
    assert report.largest_cluster == 1500 and report.clusters_with_duplicates == 2
    meta = report.metadata()
    assert meta["sampled_buckets"] == 0 and meta["sampled_bucket_nodes"] == 0
    assert meta["giant_bucket_table"].splitlines()[0] == "| band | hash | value | size | method | linked by |"


def test_bucket_methods_verify_the_smallest_buckets_within_the_pair_budget(monkeypatch):
    import pipelines.curation.dedup as dedup

    monkeypatch.setattr(dedup, "EXACT_PAIR_BUDGET", 100 * 99 // 2 + 50 * 49 // 2 + 50 * 49 // 2)
    # sizes as sql/dedup_band_buckets.sql orders them: descending
    assert dedup._bucket_methods(np.array([101, 100, 50, 50])) == ["sampled", "exact", "exact", "exact"]
    monkeypatch.setattr(dedup, "EXACT_PAIR_BUDGET", 0)
    assert dedup._bucket_methods(np.array([3, 2])) == ["sampled", "sampled"]
    assert dedup._bucket_methods(np.array([], dtype=np.int64)) == []


def _partition(clusters):
    groups = {}
    for row in clusters.to_pylist():
        groups.setdefault(row["cluster_id"], set()).add(row["image_uid"])
    return {uid: frozenset(group) for group in groups.values() for uid in group}


def _refines(fine, coarse):
    """Every cluster of ``fine`` lies inside one cluster of ``coarse``."""
    return all(fine[uid] <= coarse[uid] for uid in fine)


def test_a_bucket_past_the_pair_budget_is_sampled_not_dropped(monkeypatch):
    """With no pair budget every bucket over the cap is linked through representatives and a pHash-order
    window: a flood of mutual near duplicates (with ordinary images in its buckets) is still one cluster,
    the buckets and their nodes are reported, and the build is deterministic."""
    import pipelines.curation.dedup as dedup

    rng = np.random.default_rng(8)
    ordinary = [int(h) | DC for h in rng.integers(0, 2**63, 300, dtype=np.uint64)]
    flood = _flood(2000, 3, seed=6)
    rows = _flood_rows(flood + ordinary, "sampled-")
    monkeypatch.setattr(dedup, "EXACT_PAIR_BUDGET", 0)
    config = DedupConfig(min_bucket_cap=100)
    clusters, report = cluster_features(connect({"image_features": _features(rows)}), config)
    again, _ = cluster_features(connect({"image_features": _features(rows)}), config)
    assert clusters.equals(again)
    assert report.sampled_buckets == len(report.giant_buckets) > 0
    assert {b["method"] for b in report.giant_buckets} == {"sampled"}
    assert 2000 <= report.sampled_bucket_nodes <= len(rows)
    meta = report.metadata()
    assert meta["sampled_buckets"] == report.sampled_buckets and "| sampled | sub-bands |" in meta["giant_bucket_table"]
    assert {b["linked_by"] for b in report.giant_buckets} == {"sub-bands"}
    assert report.subband_buckets == report.sampled_buckets
    flooded = {r[0] for r in rows[:2000]}
    ids = collections.Counter(row["cluster_id"] for row in clusters.to_pylist() if row["image_uid"] in flooded)
    assert len(ids) == 1 and report.largest_cluster >= 2000


def test_sampled_buckets_never_merge_more_than_the_exact_build(monkeypatch):
    """Property: sampling a bucket only adds verified pairs, so its clusters lie between those of the
    build that drops the bucket (the old cap) and those of the build that verifies every pair."""
    from dedup_reference import reference_clusters

    import pipelines.curation.dedup as dedup

    sampled_any = 0
    for seed in range(12):
        rows, config = _collision_case(seed)
        exact, _ = reference_clusters(connect({"image_features": _features(rows)}), config)
        monkeypatch.setattr(dedup, "EXACT_PAIR_BUDGET", 0)
        dropped, _ = reference_clusters(connect({"image_features": _features(rows)}), config)
        by_subbands, subband_report = cluster_features(connect({"image_features": _features(rows)}), config)
        monkeypatch.setattr(dedup, "SUBBAND_PAIR_BUDGET", 0)              # past both budgets: representatives
        monkeypatch.setattr(dedup, "REPRESENTATIVES", int(seed % 4))
        monkeypatch.setattr(dedup, "SAMPLED_WINDOW", int(seed % 3))
        got, report = cluster_features(connect({"image_features": _features(rows)}), config)
        monkeypatch.undo()
        got, exact, dropped = _partition(got), _partition(exact), _partition(dropped)
        assert _refines(dropped, got) and _refines(got, exact)
        sampled_any += report.sampled_buckets > 0 and got != dropped
        # past both budgets: representatives (or nothing, with none and no window); a bucket of one distinct pHash
        # (copies of one image) costs the sub-band search nothing, so it is within even a budget of 0
        assert {b["linked_by"] for b in report.giant_buckets if b["method"] == "sampled"} <= {
            "representatives" if seed % 4 or seed % 3 else "none", "sub-bands"}
        assert "representatives" in {b["linked_by"] for b in report.giant_buckets} or not (seed % 4 or seed % 3) \
            or report.sampled_buckets == report.subband_buckets
        # the sub-band search of a bucket past the pair budget is exact: the clusters of verifying every pair
        assert _partition(by_subbands) == exact
        assert subband_report.subband_buckets == subband_report.sampled_buckets
        assert subband_report.sampled_unchecked_nodes == 0
    assert sampled_any >= 3
