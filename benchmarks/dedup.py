"""Near-duplicate search at Pick-a-Pic scale: the banded DuckDB build vs numpy brute force.

``python -m benchmarks.dedup [--n 1000000] [--brute-n 50000]``: builds ``n`` synthetic 64-bit pHashes
(uniform 63 informative bits + the constant DC bit, planted near duplicates at distance <= 6, byte-identical
copies and one blank-image bucket), runs the full cluster build (``pipelines.curation.dedup.cluster_features``:
banding, capping, verification, components) and times a tiled numpy brute force on a ``brute_n`` subsample,
extrapolated to ``n`` by (n / brute_n)^2. On the subsample it also checks that the banded search finds
every pair the brute force finds within distance ``bands - 1`` (the pigeonhole guarantee). Writes
``benchmarks/results/dedup.json`` and prints it.

``python -m benchmarks.dedup --flood 2000,5000,10000,20000``: instead, the cluster build on floods of
distinct hashes within 3 and within 6 bits of one centre (every pair of the first within ``k``), with
and without the bucket cap: seconds, peak numpy memory (tracemalloc) and clusters; writes
``benchmarks/results/dedup_flood.json``.

``python -m benchmarks.dedup --bucket 20000,65000``: the cost of one band bucket over the cap holding
that many far-apart hashes (sharing 16 bits, random otherwise) plus a flood of 3,000 hashes within 3
bits of one of them: the near search verifying every pair (within ``EXACT_PAIR_BUDGET``), searching the
bucket by sub-bands (past it) and linking it through representatives (past both budgets), each compared
with the first (``same_links_as_exact``); writes ``benchmarks/results/dedup_bucket.json``.
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.curation import dedup
from pipelines.curation.dedup import PHASH_DC_BIT, DedupConfig, cluster_features
from pipelines.sqlrun import connect

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"
FLOOD_RESULTS = RESULTS.with_name("dedup_flood.json")
BUCKET_RESULTS = RESULTS.with_name("dedup_bucket.json")


def synthetic_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phash, dhash, sha_group) arrays: uniform hashes with planted near/exact duplicates and a blank bucket."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 1 << 63, n, dtype=np.uint64) | np.uint64(PHASH_DC_BIT)
    dhash = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    sha_group = np.arange(n, dtype=np.int64)
    near = rng.choice(n, size=(n // 100, 2), replace=False)          # 1% near duplicates
    flips = rng.integers(0, 4, near.shape[0]) * 2                     # 0, 2, 4 or 6 bits (pHash distances are even)
    for (src, dst), k in zip(near, flips):
        bits = rng.choice(63, size=k, replace=False)
        mask = np.uint64(sum(1 << int(b) for b in bits))
        phash[dst] = phash[src] ^ mask
        dhash[dst] = dhash[src] ^ np.uint64(1 << int(rng.integers(0, 64))) if k else dhash[src]
    exact = rng.choice(n, size=(n // 200, 2), replace=False)         # 0.5% byte-identical copies
    phash[exact[:, 1]] = phash[exact[:, 0]]
    dhash[exact[:, 1]] = dhash[exact[:, 0]]
    sha_group[exact[:, 1]] = sha_group[exact[:, 0]]
    blank = rng.choice(n, size=min(n // 200, 5000), replace=False)   # blank images: one identical hash, distinct bytes
    phash[blank] = np.uint64(PHASH_DC_BIT | 0x5555_5555_5555_5555)
    return phash, dhash, sha_group


def features_table(phash: np.ndarray, dhash: np.ndarray, sha_group: np.ndarray) -> pa.Table:
    """The ``image_features`` columns the dedup SQL reads."""
    n = len(phash)
    uids = pa.array([f"{i:08x}" for i in range(n)])
    return pa.table({
        "image_uid": uids, "sha256": pa.array([f"{g:064x}" for g in sha_group]),
        "phash": pa.array(phash, pa.uint64()), "dhash": pa.array(dhash, pa.uint64()),
        "dt": pa.array(np.zeros(n, dtype="datetime64[D]"), pa.date32()), "blob_path": uids,
    })


def brute_force_pairs(phash: np.ndarray, k: int, tile: int = 256) -> tuple[set[tuple[int, int]], float]:
    """Every pair (i < j) within pHash distance ``k`` by tiled XOR + popcount; returns (pairs, seconds)."""
    masked = phash & np.uint64(~PHASH_DC_BIT & ((1 << 64) - 1))
    started = time.perf_counter()
    found = set()
    for i in range(0, len(masked), tile):
        distance = np.bitwise_count(masked[i:i + tile, None] ^ masked[None, i:])
        rows, cols = np.nonzero(distance <= k)
        found.update((i + r, i + c) for r, c in zip(rows.tolist(), cols.tolist()) if r < c)
    return found, time.perf_counter() - started


def run(n: int, brute_n: int, config: DedupConfig) -> dict:
    """Time the banded build on ``n`` hashes and brute force on ``brute_n``; return the numbers."""
    phash, dhash, sha_group = synthetic_hashes(n)
    con = connect({"image_features": features_table(phash, dhash, sha_group)})
    started = time.perf_counter()
    _, report = cluster_features(con, config)
    banded_s = time.perf_counter() - started

    sub_con = connect({"image_features": features_table(phash[:brute_n], dhash[:brute_n], sha_group[:brute_n])})
    started = time.perf_counter()
    sub_clusters, _ = cluster_features(sub_con, config)
    banded_sub_s = time.perf_counter() - started
    guaranteed, brute_s = brute_force_pairs(phash[:brute_n], config.bands - 1)
    label = dict(zip(sub_clusters.column("image_uid").to_pylist(), sub_clusters.column("cluster_id").to_pylist()))
    blank_value = PHASH_DC_BIT | 0x5555_5555_5555_5555
    missed = [(i, j) for i, j in guaranteed
              if label[f"{i:08x}"] != label[f"{j:08x}"] and int(phash[i]) != blank_value]
    brute_full_s = brute_s * (n / brute_n) ** 2
    return {
        "n": n, "config": {"k": config.k, "bands": config.bands, "dhash_bands": config.dhash_bands},
        "banded_seconds": round(banded_s, 3),
        "banded_near_edges": report.near_edges, "giant_buckets": len(report.giant_buckets),
        "sampled_buckets": report.sampled_buckets,
        "clusters_with_duplicates": report.clusters_with_duplicates, "largest_cluster": report.largest_cluster,
        "brute_n": brute_n, "brute_seconds_subsample": round(brute_s, 3),
        "banded_seconds_subsample": round(banded_sub_s, 3),
        "brute_seconds_extrapolated": round(brute_full_s, 1),
        "speedup_vs_brute_force": round(brute_full_s / banded_s, 1),
        "subsample_pairs_within_guarantee": len(guaranteed),
        "subsample_pairs_missed_outside_capped_buckets": len(missed),
    }


def flood_hashes(n: int, radius: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct pHashes (DC bit set) within ``radius`` bits of one random centre, in random order."""
    rng = np.random.default_rng(seed)
    centre = np.uint64(int(rng.integers(0, 1 << 63)))
    flips = np.uint64(1) << rng.integers(0, 63, (8 * n, radius)).astype(np.uint64)
    used = np.arange(radius) < rng.integers(1, radius + 1, 8 * n)[:, None]
    hashes = np.unique(centre ^ np.bitwise_or.reduce(np.where(used, flips, np.uint64(0)), axis=1))
    if len(hashes) < n:
        raise ValueError(f"only {len(hashes)} distinct hashes within {radius} bits were drawn for {n}")
    return hashes[rng.permutation(len(hashes))[:n]] | np.uint64(PHASH_DC_BIT)


def run_flood(sizes: list[int]) -> list[dict]:
    """The cluster build on each flood size and kind, capped (the defaults) and uncapped."""
    results = []
    for n in sizes:
        for radius in (3, 6):
            phash = flood_hashes(n, radius)
            dhash = np.random.default_rng(1).integers(0, 1 << 63, n, dtype=np.uint64)
            for capped in (True, False):
                config = DedupConfig() if capped else DedupConfig(min_bucket_cap=n)
                con = connect({"image_features": features_table(phash, dhash, np.arange(n))})
                tracemalloc.start()
                started = time.perf_counter()
                _, report = cluster_features(con, config)
                seconds = time.perf_counter() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                results.append({"n": n, "radius": radius, "capped": capped, "seconds": round(seconds, 2),
                                "peak_numpy_mb": round(peak / 2**20, 1), "near_edges": report.near_edges,
                                "giant_buckets": len(report.giant_buckets), "sampled_buckets": report.sampled_buckets,
                                "largest_cluster": report.largest_cluster})
                print(json.dumps(results[-1]), flush=True)
    return results


def run_bucket(sizes: list[int], flood: int = 3000) -> list[dict]:
    """One bucket of ``size`` hashes sharing their low 16 bits, ``flood`` of them within 3 bits of one
    centre and the rest random: ``near_links`` verifying it pair by pair, searching it by sub-bands (as a
    bucket past the pair budget is), and sampling it (as one past both budgets is)."""
    from pipelines.curation.dedup import band_table, component_labels, near_links

    bands = band_table(DedupConfig())
    results = []
    for size in sizes:
        rng = np.random.default_rng(size)
        phash = (rng.integers(0, 1 << 63, size, dtype=np.uint64) & ~np.uint64(0xFFFF)) | np.uint64(0x1234)
        flips = np.uint64(1) << rng.integers(16, 63, (flood, 3)).astype(np.uint64)
        phash[:flood] = phash[0] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]
        phash = np.unique(phash)
        nodes = pa.table({"rid": np.arange(len(phash), dtype=np.int64), "phash": phash,
                          "dhash": rng.integers(0, 1 << 63, len(phash), dtype=np.uint64)})
        exact_links = None
        for method in ("exact", "subbands", "sampled"):
            giant = pa.table({"band": pa.array([] if method == "exact" else [0], pa.int32()),
                              "value": pa.array([] if method == "exact" else [0x1234], pa.uint64())})
            tracemalloc.start()
            started = time.perf_counter()
            links = near_links(nodes, bands, giant, DedupConfig().k, subband_budget=0 if method == "sampled" else None)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            labels = component_labels(links.column("r0").to_numpy(), links.column("r1").to_numpy())
            largest = int(np.unique(labels.column("label").to_numpy(), return_counts=True)[1].max(initial=0))
            pairs = len(phash) * (len(phash) - 1) // 2
            results.append({"bucket": len(phash), "method": method, "pairs": pairs,
                            "within_budget": pairs <= dedup.EXACT_PAIR_BUDGET, "seconds": round(seconds, 2),
                            "ns_per_pair": round(seconds / pairs * 1e9, 2), "peak_numpy_mb": round(peak / 2**20, 1),
                            "largest_cluster": largest})
            exact_links = links if method == "exact" else exact_links
            results[-1]["same_links_as_exact"] = links.equals(exact_links)
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write benchmarks/results/dedup.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--brute-n", type=int, default=50_000)
    parser.add_argument("--flood", default=None, help="comma-separated flood sizes: run the flood benchmark instead")
    parser.add_argument("--bucket", default=None, help="comma-separated bucket sizes: run the bucket benchmark instead")
    args = parser.parse_args(argv)
    if args.bucket:
        bucket = run_bucket([int(n) for n in args.bucket.split(",")])
        BUCKET_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        BUCKET_RESULTS.write_text(json.dumps(bucket, indent=2) + "\n")
        return
    if args.flood:
        flood = run_flood([int(n) for n in args.flood.split(",")])
        FLOOD_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        FLOOD_RESULTS.write_text(json.dumps(flood, indent=2) + "\n")
        return
    result = run(args.n, args.brute_n, DedupConfig())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
