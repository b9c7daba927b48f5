"""The duplicate-cluster build as it was before near-duplicate pairs were merged chunk by chunk (commit
be8b737): ``near_candidates`` materialised every verified candidate pair, which a flood of close hashes
grows quadratically. Kept only as the reference the streaming build must match, cluster for cluster."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from formats.files import cast_to_schema
from pipelines.curation.dedup import component_labels, register_band_inputs
from pipelines.sqlrun import run_sql
from schemas import get_schema


def near_candidates(nodes: pa.Table, bands: pa.Table, giant: pa.Table, k: int) -> pa.Table:
    """Near-duplicate edges (r0 < r1, distinct) between nodes sharing a band value, pHash distance <= ``k``.

    ``nodes`` (rid, phash, dhash): one row per distinct (pHash, dHash), the rid of its pHash's node
    (``sql/dedup_nodes.sql``). For each
    band the nodes are sorted by band value; a bucket is a run of equal values, and its pairs are
    visited as (i, i + d) for d = 1, 2, ... within runs, on contiguous arrays (no pair table is
    built: at 2M random hashes the buckets hold ~268M pairs, which a hash self-join materialises).
    Buckets listed in ``giant`` (band, value) are skipped. Returns (r0, r1, phash_distance,
    dhash_distance) ordered by (r0, r1).
    """
    rid = nodes.column("rid").to_numpy().astype(np.int64)
    hashes = {"phash": nodes.column("phash").to_numpy().astype(np.uint64),
              "dhash": nodes.column("dhash").to_numpy().astype(np.uint64)}
    skip: dict[int, list[int]] = {}
    for band, value in zip(giant.column("band").to_pylist(), giant.column("value").to_pylist()):
        skip.setdefault(int(band), []).append(int(value))
    found = []
    for band, kind, shift, mask in zip(*(bands.column(c).to_pylist() for c in ("band", "hash_kind", "shift", "mask"))):
        values = (hashes[kind] >> np.uint64(shift)) & np.uint64(mask)
        if mask < 1 << 16:
            values = values.astype(np.uint16)  # numpy's stable argsort is a radix sort up to 16 bits
        keep = ~np.isin(values, np.array(skip[band], dtype=values.dtype)) if band in skip else None
        members = np.flatnonzero(keep) if keep is not None else np.arange(len(values))
        order = members[np.argsort(values[members], kind="stable")]
        sorted_values, phash, node_rid = values[order], hashes["phash"][order], rid[order]
        n = len(order)
        if n < 2:
            continue
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        # members after each position in its bucket
        after = (np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n])) - np.arange(n) - 1).astype(np.int32)
        pairing = np.cumsum(np.bincount(after)[::-1])[::-1]   # pairing[d]: positions with a mate d ahead
        active = None
        for d in range(1, len(pairing)):
            if pairing[d] * 4 > n:   # most positions pair at this distance: contiguous slices, no gathers
                left = np.flatnonzero((after[:n - d] >= d) & (np.bitwise_count(phash[:n - d] ^ phash[d:]) <= k))
                right = left + d
            else:
                active = np.flatnonzero(after >= d) if active is None else active[after[active] >= d]
                other = active + d
                close = np.bitwise_count(phash[active] ^ phash[other]) <= k
                left, right = active[close], other[close]
            a, b = node_rid[left], node_rid[right]
            distinct = a != b       # two dHash rows of one node (sql/dedup_nodes.sql) in one bucket: no pair
            a, b = a[distinct], b[distinct]
            found.append((np.minimum(a, b).astype(np.uint64) << np.uint64(32)) | np.maximum(a, b).astype(np.uint64))
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)
    r0, r1 = (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    index = np.argsort(rid)
    at0, at1 = index[np.searchsorted(rid, r0, sorter=index)], index[np.searchsorted(rid, r1, sorter=index)]
    distance = {kind: np.bitwise_count(h[at0] ^ h[at1]).astype(np.int32) for kind, h in hashes.items()}
    return pa.table({"r0": pa.array(r0, pa.int64()), "r1": pa.array(r1, pa.int64()),
                     "phash_distance": pa.array(distance["phash"], pa.int32()),
                     "dhash_distance": pa.array(distance["dhash"], pa.int32())})



def reference_clusters(con, config) -> tuple[pa.Table, pa.Table]:
    """(duplicate_clusters, verified near pairs) of the ``image_features`` view of ``con``, built with
    ``near_candidates`` (the former ``cluster_features``; the inputs it reads are computed as the build
    computes them, by ``register_band_inputs``)."""
    _, bands, giant = register_band_inputs(con, config)
    near = near_candidates(run_sql(con, "dedup_nodes"), bands, giant, config.k)
    exact = run_sql(con, "dedup_exact_edges")
    edges = pa.concat_tables([near.select(["r0", "r1"]), exact.select(["r0", "r1"])])
    con.register("labels", component_labels(edges.column("r0").to_numpy(), edges.column("r1").to_numpy()))
    return cast_to_schema(run_sql(con, "dedup_clusters"), get_schema("duplicate_clusters")), near
