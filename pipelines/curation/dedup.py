"""Duplicate clusters: exact (sha256) and near (pHash Hamming distance) duplicates, across all days.

How it works (every step is a ``sql/dedup_*.sql`` file, except the bucket scan of step 2-4, which
is ``near_links`` in numpy):
1. ``dedup_hashes``: one row per image from ``image_features`` with a dense ``rid`` ordered by
   ``image_uid``; the pHash DC bit (always 1: the DCT's DC term is above the median) is masked off, leaving 63 informative bits.
   A pHash with fewer than ``MIN_PHASH_BITS`` (16) of those set is uninformative: an image whose DCT terms tie
   at the median (flat, or smoothly shaded: a gradient, a clear sky, two flat halves) has a pHash of 0-10 bits
   whatever its colour or brightness (black, white, red and a grey ramp are all 0). So is a mirror-symmetric
   image's (a kaleidoscope, a mandala, a symmetric logo), whatever its texture: the DCT terms of odd frequency across
   its axis are exactly 0 and tie (``PHASH_ODD_U_BITS`` / ``PHASH_ODD_V_BITS`` all 0), leaving it 10-18 bits of 32
   that can vary, so distinct symmetric images were a few bits apart and one cluster (review rev34b). A mirror
   with a small asymmetry (a corner signature or watermark, a centred emblem's 1-px rounding) has its odd terms
   set as tie-breaks, the same ones in every such image, so its pHash is not informative either when its dHash
   is a mirror's (``MIRROR_LR_BITS`` / ``MIRROR_TB_BITS``, with ``MIN_MIRROR_ROWS`` rows of evidence; review
   rev34k: distinct signed renders chained into clusters of 12, distinct emblems of 5). Such an image
   is no node of the pHash search and forms no equal-pHash group. If its dHash is textured (``MIN_DHASH_ROWS`` or
   more distinct rows: a symmetric render's is, a flat image's, a ramp's, a sky's or a vignette's is not) it is
   *dHash-keyed*: a near duplicate of another keyed image within ``k`` on the pHash AND within ``DHASH_K`` on the
   dHash (``dhash_keyed_links``, the same bucket search over the dHash's bands; images equal on both are a
   group). Otherwise, and when its dHash is a mirror's both ways (a kaleidoscope, a centred emblem: its dHash has
   ~16 free bits, each counted 2-4 times, and distinct ones are 0 apart on the pHash and 0-2 on the dHash), it
   joins a cluster by its bytes (sha256) only. (Clustered on its pHash, every flat image of
   every user was one cluster, owned by one split: the other users' pairs went to split_rejects, review rev33u.)
   The price: a re-encode or resize of a flat or gradient image is not clustered with its source (the hashes hold
   no colour to tell a re-encode from another colour); ``low_information_images`` counts them,
   ``dhash_keyed_images`` the keyed ones. An informative pHash within ``k`` of a keyed one (at most ``k`` odd bits
   or fewer than ``MIN_PHASH_BITS + k`` bits: a re-encode that is not quite symmetric) is keyed too, so the pair
   is found. A re-encode whose pHash jumps by 12-15 bits (JPEG blocks are not mirror-exact: a quarter of q85
   re-encodes) is not found, as pHash's tie-breaks lose other smooth images' re-encodes.
2. Banding: the 63 bits are cut into ``bands`` bands. Two hashes within distance ``k`` share at least
   one identical band whenever ``bands >= k + 1`` (pigeonhole), so comparing only hashes that share
   a (band, value) bucket finds every candidate without comparing all pairs. ``near_links``
   sorts each band's values (a radix sort) and scans the buckets as runs of the sorted array, on
   contiguous slices (2.8 s at 2M random hashes, where DuckDB's hash self-join of the same buckets
   took 12.7 s: ~268M pairs share a 16-bit band value at that size). The dHash is banded too (second opinion: a
   candidate found only by its dHash bands still has to pass the pHash check), which recovers
   pairs whose pHash changed in more bands than the pigeonhole guarantees. Every distinct dHash of a pHash
   group is banded (each bucket holds the group's node once): banding only its smallest uid's dHash lost such a
   pair as soon as a pHash twin with a smaller uid arrived, splitting a cluster (review rev28b). The rows
   banded are at most one per image, so a flood of images with one pHash and many dHashes stays linear.
3. Images with an equal informative pHash (distance 0: lossless re-encodes) are linked to their group's
   smallest member directly, so the join runs on distinct hash values only and a one-pHash group
   costs O(n), not O(n^2). Buckets still holding more than ``max(min_bucket_cap,
   max_bucket_fraction * N)`` distinct values are reported (``giant_buckets``, with their ``method``) and
   still verified pair by pair, smallest first, while their pairs add up to at most ``EXACT_PAIR_BUDGET``
   (2^31, ~6.5 s here: one bucket of ~65,000). A bucket past that budget is not dropped either: it is
   linked through greedy representatives and a pHash-order window (``_link_sampled``), which joins a
   flood of hashes within ``k`` of one another into one component; the report counts these buckets and
   their nodes. (Skipping every bucket over the cap, as before, split a flood of 3,000 near-identical
   images into 144 clusters.)
4. Candidates are verified on the full pHash distance (``<= k``) and merged into connected components
   ``PAIR_CHUNK`` pairs at a time, never all held, and a bucket of more than ``SETTLE_BUCKET``
   nodes leaves the scan once it is one component: a flood of distinct hashes within ``k`` of each
   other (a hostile uploader, a generator stuck on one image) has a quadratic number of verified
   pairs: held in full they took 4 GB at 10,000 such images and ran out of memory at 20,000, though
   all but a spanning tree of them join nothing. What is kept is one link per node to its
   component's smallest rid (``near_edges`` counts these). Memory is O(nodes + PAIR_CHUNK); time is
   still the candidate comparisons of buckets that never become one component (far-apart images
   sharing a band value), bounded by ``EXACT_PAIR_BUDGET`` for the buckets over the cap. Exact groups (same sha256) add edges
   to their smallest member.
5. Connected components of the links and exact edges (``scipy.sparse.csgraph.connected_components``: one pass,
   O(images + edges), whatever the components' shape; only nodes that have an edge); the canonical
   member of a cluster is its smallest ``image_uid``. (Iterated min-label propagation, used before,
   needs about as many rounds as a chain of near duplicates is long when ids are random: a morph
   of a few hundred images failed the build at its 64-round cap.)

Choice of ``k``: pHash of a 64-value DCT block thresholded at its median has exactly 32 set bits,
so distances are even. Measured on generated images (``tests/unit/test_dedup_clusters.py`` and
``benchmarks/dedup.py``): re-encoding, resizing and blurring move a pHash by 0-2 bits, q60 JPEG
and +-5% brightness by up to 4, a 2% crop by up to 6, while distinct images stay >= 12 apart
(~16 on real photographs). ``k = 6`` recovers all of these with no false merges among informative hashes
(flat and smoothly shaded images, whose pHashes are 0-10 bits apart whatever their colours, cluster by bytes
only; symmetric images need the dHash too, step 1: of 180 distinct symmetric images 39 pairs were within 6 on the
pHash, none is clustered now); 4 bands
(16 bits each) keep the scan at ~1 s per million hashes, are exact up to distance 3, and the
dHash bands recover the rest of the distance-4..6 pairs (recall measured >= 99%).

Full recompute, not incremental: clusters are transitive, so one new image can merge two old
clusters (and change a canonical member); the full global build takes seconds at 1M images, so
an incremental merge would add state and failure modes for no measurable gain.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import cast_to_schema, write_parquet_atomic
from formats.home import DataHome
from formats.settings import MAX_THREADS, add_flags, check_fields, knob, output_fields, public_fields, stage_config
from pipelines.curation.writing import writing_table
from pipelines.sqlrun import connect, run_sql
from schemas import get_schema

PHASH_DC_BIT = 1 << 63  # imagehash puts the DCT's [0, 0] term in the most significant bit
# A pHash with fewer set bits than this besides the DC bit is uninformative (flat or smoothly shaded image: its DCT
# terms tie at the median): clustered by sha256 only. Distinct DCT terms give 31 (32 with the DC bit); measured:
# flat images and linear ramps 0, two flat halves 2, a clear sky 2, a horizon 4, quadrants 8, a radial gradient 10.
MIN_PHASH_BITS = 16


def _dct_bit(v: int, u: int) -> int:
    """The pHash bit of the DCT term of vertical frequency ``v`` and horizontal frequency ``u`` (imagehash flattens
    the 8x8 low-frequency block row by row, first bit most significant: [0, 0] is the DC bit)."""
    return 1 << (63 - (8 * v + u))


# The bits of the odd horizontal / vertical frequencies: all 0 in the pHash of a left-right / top-bottom
# mirror-symmetric image (those DCT terms are exactly 0 and tie at the median), whatever its texture; some are set in
# any other image with 16 bits or more. Such a pHash holds half the information of another (distinct symmetric images
# are a few bits apart: review rev34b), so it is not informative on its own.
PHASH_ODD_U_BITS = sum(_dct_bit(v, u) for v in range(8) for u in range(1, 8, 2))
PHASH_ODD_V_BITS = sum(_dct_bit(v, u) for v in range(1, 8, 2) for u in range(8))
# An image whose pHash is not informative is still a near-duplicate candidate if its dHash has at least this many
# distinct rows (of 8 comparisons each): texture that varies down the image. Then the pHash AND the dHash must match:
# pHash within k and dHash within DHASH_K (``dhash_keyed_links``). Measured on 512-px images: a flat image of any
# colour, a ramp, a sky, a night gradient, a horizon, a vignette, a radial gradient have 1 distinct row, quadrants 2;
# 172 of 180 textured mirror-symmetric images have 3 to 8. Re-encodes, resizes and blurs of those move the dHash by
# 0-3 bits (q60 and a 384 resize at q75 one of 180 by 4-7); DHASH_K + 1 dHash bands of 16 bits find every pair
# within DHASH_K (pigeonhole).
# A dHash with at most MIRROR_LR_BITS row bit pairs (j, 7 - j) both set (a left-right mirror has none) is a left-right
# mirror's, with at most MIRROR_TB_BITS bits differing between rows r and 7 - r (a top-bottom mirror: none) a top-bottom
# mirror's (review rev34k): its pHash's odd terms are tie-breaks (a signature, a 1-px rounding), so the pHash alone is
# not informative; a mirror both ways is not even keyed (its dHash has ~16 free bits, each counted 2-4 times).
MIRROR_LR_BITS = 0
MIRROR_TB_BITS = 2
MIN_MIRROR_ROWS = 3   # dHash rows with a set bit a mirror test needs as evidence (a sparse one passes by chance)
_ROW_LOW_BITS = 0x0101010101010101
MIN_DHASH_ROWS = 3   # sql/dedup_hashes.sql tests for three with scalar comparisons (no lists: 4x faster)
DHASH_K = 3
# Parquet key-value metadata of duplicate_clusters: the settings it was clustered with (JSON, the output fields of
# DedupConfig), which the decisions carry on to the published data card (its "Hamming distance <= k")
DEDUP_METADATA = b"pickapic.dedup_config"


@dataclass(frozen=True)
class DedupConfig:
    """Knobs of the duplicate-cluster build (field help is shown as Dagster run-config descriptions)."""

    k: int = knob(6, "Maximum pHash Hamming distance for two images to be near duplicates.", min=0, max=63)
    bands: int = knob(4, "Bands per hash in the candidate join; exact for distances <= bands - 1.", min=1, max=16)
    dhash_bands: bool = knob(True, "Also band the dHash to find candidates (still verified on pHash).")
    mask_dc_bit: bool = knob(True, "Mask the pHash DC bit (always 1) so bands cover the 63 informative bits.")
    max_bucket_fraction: float = knob(0.01, "Band buckets larger than this fraction of all images are giant: "
                                            "checked pair by pair within a budget, sampled beyond it.",
                                      min=0, min_exclusive=True, max=1)
    min_bucket_cap: int = knob(1000, "A bucket at or below this size is never giant (small homes).", min=1)
    threads: int = knob(0, "DuckDB threads (0: one per core).", min=0, max=MAX_THREADS, output=False)

    def __post_init__(self) -> None:
        check_fields(self)

    def output_fields(self) -> dict:
        """The settings that change the clusters (recorded in duplicate_clusters' metadata, ``DEDUP_METADATA``)."""
        return output_fields(self)

    @property
    def constant_mask(self) -> int:
        """pHash bits masked off before banding."""
        return PHASH_DC_BIT if self.mask_dc_bit else 0


@dataclass
class DedupReport:
    """Counts of one cluster build; ``metadata()`` is what the asset reports."""

    images: int
    exact_duplicate_images: int
    same_hash_images: int
    near_edges: int
    clusters_with_duplicates: int
    images_in_duplicate_clusters: int
    largest_cluster: int
    size_histogram: dict[str, int]
    giant_buckets: list[dict]
    truth: dict | None = None
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    sampled_bucket_nodes: int = 0      # distinct hashes in buckets past EXACT_PAIR_BUDGET
    sampled_unchecked_nodes: int = 0   # of those, within k of no representative (buckets past both budgets)
    subband_buckets: int = 0           # buckets past EXACT_PAIR_BUDGET searched exactly by sub-bands
    low_information_images: int = 0    # images whose pHash is uninformative and dHash is not keyed: by sha256 only
    dhash_keyed_images: int = 0        # images whose pHash is uninformative but dHash textured: pHash and dHash match
    dhash_keyed_edges: int = 0         # links of the dHash-keyed search (``dhash_keyed_links``; near_edges: the pHash's)

    @property
    def sampled_buckets(self) -> int:
        return sum(1 for b in self.giant_buckets if b.get("method") == "sampled")

    def metadata(self) -> dict:
        """JSON-able values and markdown tables for the asset."""
        hist = "\n".join(f"| {size} | {count} |" for size, count in self.size_histogram.items())
        buckets = "\n".join(f"| {b['band']} | {b['hash_kind']} | {b['value']} | {b['size']} | {b.get('method', '')} "
                            f"| {b.get('linked_by', '')} |" for b in self.giant_buckets)
        meta = {
            "images": self.images,
            "exact_duplicate_images": self.exact_duplicate_images,
            "same_hash_images": self.same_hash_images,
            "near_edges": self.near_edges,
            "clusters_with_duplicates": self.clusters_with_duplicates,
            "images_in_duplicate_clusters": self.images_in_duplicate_clusters,
            "largest_cluster": self.largest_cluster,
            "giant_buckets": len(self.giant_buckets),
            "sampled_buckets": self.sampled_buckets,
            "sampled_bucket_nodes": self.sampled_bucket_nodes,
            "sampled_unchecked_nodes": self.sampled_unchecked_nodes,
            "subband_buckets": self.subband_buckets,
            "low_information_images": self.low_information_images,
            "dhash_keyed_images": self.dhash_keyed_images,
            "dhash_keyed_edges": self.dhash_keyed_edges,
            "seconds": round(self.seconds, 3),
            "config": json.dumps(self.config, sort_keys=True),
            "cluster_size_histogram": "| cluster size | clusters |\n|---:|---:|\n" + hist,
            "giant_bucket_table": "| band | hash | value | size | method | linked by |\n|---:|---|---:|---:|---|---|\n"
                                  + buckets,
        }
        if self.truth is not None:
            meta.update({f"truth_{key}": value for key, value in self.truth.items()})
        return meta


def band_table(config: DedupConfig) -> pa.Table:
    """The (band, hash_kind, shift, mask) rows that cut the informative bits into ``config.bands`` bands."""
    rows = []
    kinds = [("phash", 63 if config.mask_dc_bit else 64)]
    if config.dhash_bands:
        kinds.append(("dhash", 64))
    for kind, bits in kinds:
        widths = [bits // config.bands + (1 if i < bits % config.bands else 0) for i in range(config.bands)]
        shift = 0
        for width in widths:
            rows.append({"band": len(rows), "hash_kind": kind, "shift": shift, "mask": (1 << width) - 1})
            shift += width
    return pa.table({
        "band": pa.array([r["band"] for r in rows], pa.int32()),
        "hash_kind": pa.array([r["hash_kind"] for r in rows], pa.string()),
        "shift": pa.array([r["shift"] for r in rows], pa.uint8()),
        "mask": pa.array([r["mask"] for r in rows], pa.uint64()),
    })


PAIR_CHUNK = 1 << 18  # verified pairs held (16 bytes each) before they are merged into the components
SETTLE_BUCKET = 64    # buckets above this size are dropped from the scan once they are one component
# Buckets over the cap are still verified pair by pair, smallest first, while their pairs add up to at most
# this many: ~3 ns a pair on 2 cores once a bucket holds tens of thousands of far-apart hashes (3.1 s for one
# of 40,000, 6.4 s for 65,000: ``python -m benchmarks.dedup --bucket``); a flood of close hashes costs far less,
# being one component after a few rounds. A bucket past the budget is linked through representatives
# instead (``_link_sampled``) and reported.
EXACT_PAIR_BUDGET = 1 << 31
# A bucket past the budget is first searched by sub-bands (``_link_subbands``): its members' varying pHash bits cut
# into k + 1 parts, every pair of a sub-bucket verified; exact, and cheap for far-apart hashes (66,000 of them:
# ~150M comparisons). The sub-band comparisons of all such buckets add up to at most this many; a bucket whose
# sub-buckets would pass it (an adversarial set agreeing on most bits) is linked through representatives.
SUBBAND_PAIR_BUDGET = 1 << 31
REPRESENTATIVES = 256  # most greedy representatives of a bucket past both budgets
SAMPLED_WINDOW = 16    # and its members are compared with this many neighbours in pHash order


class _Components:
    """Connected components of nodes ``0..n-1``, fed verified pairs in batches.

    ``root[i]`` is the smallest node of i's component as far as merged (a star: a root is its own root).
    Pairs are held until ``max(chunk, n)`` of them (so a merge's O(n) relabel is paid for by at least n
    pairs) and then reduced to their components: memory is O(n + chunk), whatever the number of pairs.
    """

    def __init__(self, n: int, chunk: int):
        self.root = np.arange(n, dtype=np.int64)
        self.limit = max(chunk, n)
        self.held: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self.held.append((a, b))
            self.size += len(a)
            if self.size >= self.limit:
                self.merge()

    def merge(self) -> None:
        if not self.held:
            return
        a = self.root[np.concatenate([pair[0] for pair in self.held])]
        b = self.root[np.concatenate([pair[1] for pair in self.held])]
        self.held, self.size = [], 0
        cross = a != b
        if cross.any():
            merged = component_labels(a[cross], b[cross])
            relabel = np.arange(len(self.root), dtype=np.int64)
            relabel[merged.column("rid").to_numpy()] = merged.column("label").to_numpy()
            self.root = relabel[self.root]


def _open_buckets(sorted_values: np.ndarray, roots: np.ndarray, d: int) -> np.ndarray:
    """Mask of the positions whose bucket (run of equal ``sorted_values``) still has pairs more than
    ``d`` apart and is not yet one component: the rest of a finished bucket can join nothing new."""
    if not len(sorted_values):
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_values)])
    spread = np.minimum.reduceat(roots, starts) != np.maximum.reduceat(roots, starts)
    return np.repeat((sizes > d) & spread, sizes)


def _scan_buckets(order: np.ndarray, sorted_values: np.ndarray, phash: np.ndarray, k: int,
                  links: _Components, settle: bool, max_d: int | None = None,
                  second: tuple[np.ndarray, int] | None = None) -> None:
    """Add to ``links`` the pairs (i, i + d), d = 1, 2, ... (up to ``max_d`` if given), of ``order`` within
    runs of equal ``sorted_values`` whose pHashes are within ``k`` (and, with ``second`` = (hash of each node,
    k2), whose second hashes are within k2 too). With ``settle``, at d = 0, 1, 2, 4, ...
    the links are merged and the buckets that are one component (or have no pairs left) are dropped."""
    d = 0
    while max_d is None or d < max_d:
        if d == 0 or (settle and d & (d - 1) == 0):
            if settle:
                links.merge()
                kept = _open_buckets(sorted_values, links.root[order], d)
                order, sorted_values = order[kept], sorted_values[kept]
            n = len(order)
            if n < 2:
                return
            near = phash[order]
            near2 = None if second is None else second[0][order]
            starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
            # members after each position in its bucket
            after = (np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n])) - np.arange(n) - 1).astype(np.int32)
            pairing = np.cumsum(np.bincount(after)[::-1])[::-1]   # pairing[d]: positions with a mate d ahead
            active = None
        d += 1
        if d >= len(pairing):
            return
        if pairing[d] * 4 > n:   # most positions pair at this distance: contiguous slices, no gathers
            close = (after[:n - d] >= d) & (np.bitwise_count(near[:n - d] ^ near[d:]) <= k)
            if near2 is not None:
                close &= np.bitwise_count(near2[:n - d] ^ near2[d:]) <= second[1]
            left = np.flatnonzero(close)
            right = left + d
        else:
            active = np.flatnonzero(after >= d) if active is None else active[after[active] >= d]
            other = active + d
            close = np.bitwise_count(near[active] ^ near[other]) <= k
            if near2 is not None:
                close &= np.bitwise_count(near2[active] ^ near2[other]) <= second[1]
            left, right = active[close], other[close]
        links.add(order[left], order[right])


def _subband_masks(members: np.ndarray, phash: np.ndarray, k: int) -> list[int] | None:
    """The k + 1 masks that cut the pHash bits varying among ``members`` into contiguous runs (in bit order),
    or None when at most k bits vary (then every pair of members is within k)."""
    varying = int(np.bitwise_or.reduce(phash[members] ^ phash[members[0]]))
    bits = [bit for bit in range(64) if varying >> bit & 1]
    if len(bits) <= k:
        return None
    return [sum(1 << int(bit) for bit in part) for part in np.array_split(np.array(bits), k + 1)]


def _subband_pairs(members: np.ndarray, phash: np.ndarray, masks: list[int]) -> int:
    """Comparisons of the sub-band scan: the pairs within each sub-bucket, summed over the masks."""
    total = 0
    for mask in masks:
        _, counts = np.unique(phash[members] & np.uint64(mask), return_counts=True)
        counts = counts.astype(np.int64)
        total += int((counts * (counts - 1) // 2).sum())
    return total


def _link_subbands(members: np.ndarray, phash: np.ndarray, k: int, links: _Components, budget: int,
                   second: tuple[np.ndarray, int] | None = None) -> int | None:
    """Link every pair of ``members`` within ``k`` by multi-index search, if it costs at most ``budget``
    comparisons; return the comparisons it cost, or None (nothing done) past the budget.

    Two members differ only in the bits that vary among the members; cut into k + 1 parts, a pair within k
    differs in at most k of them, so it agrees exactly on one part (pigeonhole) and is compared in that part's
    sub-bucket. The result is that of verifying every pair of the bucket (the same verified pairs, the same
    components), so it does not depend on the rids, on other images or on which buckets are past a budget.
    With ``second`` (a second hash that must be within its k2 too) the pairs found are checked on it as well; when
    at most k pHash bits vary the bucket is then one sub-bucket, all of its pairs compared."""
    if len(members) < 2:                      # nothing to link (a bucket of copies of one image: one node)
        return 0
    masks = _subband_masks(members, phash, k)
    m = len(members)
    if masks is None:
        cost = m - 1 if second is None else m * (m - 1) // 2
    else:
        cost = _subband_pairs(members, phash, masks)
    if cost > budget:
        return None
    if masks is None and second is None:      # at most k bits vary: all members are one component
        links.add(members[1:], np.full(len(members) - 1, members[0], dtype=np.int64))
        return cost
    # on the bucket's own components (indices 0..m-1), so each settle step's merge costs O(m), not O(all nodes)
    local_phash = phash[members]
    local_second = None if second is None else (second[0][members], second[1])
    local = _Components(len(members), PAIR_CHUNK)
    for mask in ([0] if masks is None else masks):
        values = local_phash & np.uint64(mask)
        by_value = np.argsort(values, kind="stable")
        _scan_buckets(by_value.astype(np.int64), values[by_value], local_phash, k, local, settle=True,
                      second=local_second)
    local.merge()
    joined = np.flatnonzero(local.root != np.arange(len(members)))
    links.add(members[joined], members[local.root[joined]])
    return cost


def _link_sampled(members: np.ndarray, phash: np.ndarray, k: int, links: _Components,
                  representatives: int, window: int, second: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Link a bucket too large to verify pair by pair (``members``: its nodes, in rid order) without
    dropping it: greedy representatives (the first member, then the first member not within ``k`` of
    any representative so far, ..., at most ``representatives``) are compared with every member and
    joined to all those within ``k``, and each member is compared with its ``window`` neighbours in pHash
    order. A flood of images within ``k`` of one another is one component whenever one of its members
    is a representative, which it is unless ``representatives`` far-apart hashes come first. Time and
    memory are O(members * (representatives + window)), in blocks of ``PAIR_CHUNK`` comparisons.
    Returns the members within ``k`` of no representative (their other pairs outside the window are
    not compared). With ``second`` a link also needs the second hashes within their k2 (representatives are
    still chosen on the pHash)."""
    uncovered = members
    chosen = []
    while len(uncovered) and len(chosen) < representatives:
        chosen.append(uncovered[0])
        uncovered = uncovered[np.bitwise_count(phash[uncovered] ^ phash[uncovered[0]]) > k]
    if chosen:
        reps = np.array(chosen, dtype=np.int64)
        step = max(1, PAIR_CHUNK // len(reps))
        for start in range(0, len(members), step):
            block = members[start:start + step]
            close = np.bitwise_count(phash[block][:, None] ^ phash[reps][None, :]) <= k
            if second is not None:
                close &= np.bitwise_count(second[0][block][:, None] ^ second[0][reps][None, :]) <= second[1]
            i, j = np.nonzero(close)
            links.add(block[i], reps[j])
    if window:
        by_hash = members[np.argsort(phash[members], kind="stable")]
        _scan_buckets(by_hash, np.zeros(len(by_hash), dtype=np.uint8), phash, k, links, settle=False, max_d=window,
                      second=second)
    return uncovered


def _node_rows(nodes: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(rid, phash) of each node (distinct rids, ascending), the dHash of each row and the node of each row (None
    when there is one row per node, in rid order: the row's index is its node's). ``nodes`` may hold several
    rows per node (one per distinct dHash of a pHash group, ``sql/dedup_nodes.sql``), all with the node's pHash."""
    rid_rows = nodes.column("rid").to_numpy().astype(np.int64)
    phash_rows = nodes.column("phash").to_numpy().astype(np.uint64)
    dhash_rows = nodes.column("dhash").to_numpy().astype(np.uint64)
    if len(rid_rows) > 1 and not (rid_rows[1:] >= rid_rows[:-1]).all():
        by = np.argsort(rid_rows, kind="stable")
        rid_rows, phash_rows, dhash_rows = rid_rows[by], phash_rows[by], dhash_rows[by]
    first = np.r_[True, rid_rows[1:] != rid_rows[:-1]] if len(rid_rows) else np.zeros(0, dtype=bool)
    rid, phash = rid_rows[first], phash_rows[first]
    if first.all():
        return rid, phash, dhash_rows, None
    owner = np.cumsum(first) - 1
    if (phash_rows != phash[owner]).any():
        raise ValueError("near_links: rows of one node (rid) with different pHashes")
    return rid, phash, dhash_rows, owner


def near_links(nodes: pa.Table, bands: pa.Table, giant: pa.Table, k: int, chunk: int | None = None,
               representatives: int | None = None, window: int | None = None,
               sampled: dict | None = None, subband_budget: int | None = None,
               dhash_k: int | None = None) -> pa.Table:
    """Near-duplicate links (r0 < r1): the nodes joined by pairs that share a band value and are within
    pHash distance ``k``, as one link from each such node (r1) to its component's smallest rid (r0).

    ``nodes`` (rid, phash, dhash): a node per distinct pHash, with a row per distinct dHash of its images
    (``sql/dedup_nodes.sql``): a pHash band buckets each node by its pHash, a dHash band by every one of its
    dHashes (once per bucket), so the candidates of a pHash group do not depend on which of its images has the
    smallest uid nor on which images join it later (review rev28b). For each
    band the nodes are sorted by band value; a bucket is a run of equal values, and its pairs are
    visited as (i, i + d) for d = 1, 2, ... within runs, on contiguous arrays. Buckets listed in
    ``giant`` (band, value: those past ``EXACT_PAIR_BUDGET``) are left out of that scan and linked by
    ``_link_sampled`` instead (``representatives`` and ``window``, default ``REPRESENTATIVES`` and
    ``SAMPLED_WINDOW``; 0 and 0 skip them); ``sampled``, if given, is filled with the number of their
    distinct members (``nodes``) and of those within ``k`` of no representative (``unchecked``).
    The links have the components of all those pairs, but the
    pairs are never all held: they are merged into ``_Components`` ``chunk`` (default ``PAIR_CHUNK``) at a time, and a bucket
    of more than ``SETTLE_BUCKET`` nodes is dropped once it is one component (checked at d = 0, 1, 2,
    4, ...), since its remaining pairs cannot join anything. A flood of close hashes (thousands of
    distinct images within ``k`` of one another) made the full pair list, every pair of the flood,
    grow quadratically: 10,000 such hashes took 4 GB and 158 s, 20,000 ran out of memory.
    With ``dhash_k`` (the dHash-keyed search, ``dhash_keyed_links``: one row per node, its one dHash) a pair must
    also have dHashes within ``dhash_k``.
    Returns (r0, r1) ordered by (r0, r1).
    """
    rid, phash, dhash, owner = _node_rows(nodes)
    if dhash_k is not None and owner is not None:
        raise ValueError("near_links: dhash_k needs one row (one dHash) per node")
    second = None if dhash_k is None else (dhash, dhash_k)
    skip: dict[int, list[int]] = {}
    for band, value in zip(giant.column("band").to_pylist(), giant.column("value").to_pylist()):
        skip.setdefault(int(band), []).append(int(value))
    representatives = REPRESENTATIVES if representatives is None else representatives
    window = SAMPLED_WINDOW if window is None else window
    subband_budget = SUBBAND_PAIR_BUDGET if subband_budget is None else subband_budget
    by_subbands = 0
    linked_by: dict[tuple[int, int], str] = {}   # (band, value) of each bucket past the budget -> how it was linked
    links = _Components(len(rid), PAIR_CHUNK if chunk is None else chunk)
    in_sampled = np.zeros(len(rid) if skip else 0, dtype=bool)   # nodes of the sampled buckets
    unchecked = np.zeros(len(rid) if skip else 0, dtype=bool)    # and those within k of no representative
    for band, kind, shift, mask in zip(*(bands.column(c).to_pylist() for c in ("band", "hash_kind", "shift", "mask"))):
        # a pHash band: one value per node; a dHash band: one per (node, dHash) row, ``owners`` its node (None:
        # one row per node, the row's index is its node's)
        source, owners = (phash, None) if kind == "phash" else (dhash, owner)
        values = (source >> np.uint64(shift)) & np.uint64(mask)
        if mask < 1 << 16:
            values = values.astype(np.uint16)  # numpy's stable argsort is a radix sort up to 16 bits
        for value in skip.get(band, []):
            hit = np.flatnonzero(values == values.dtype.type(value))
            members = hit if owners is None else np.unique(owners[hit])   # nodes, in rid order
            in_sampled[members] = True
            cost = _link_subbands(members, phash, k, links, subband_budget, second)
            if cost is not None:
                subband_budget -= cost
                by_subbands += 1
                linked_by[(int(band), int(value))] = "sub-bands"
            elif representatives or window:
                unchecked[_link_sampled(members, phash, k, links, representatives, window, second)] = True
                linked_by[(int(band), int(value))] = "representatives"
            else:
                unchecked[members] = True
                linked_by[(int(band), int(value))] = "none"
        keep = ~np.isin(values, np.array(skip[band], dtype=values.dtype)) if band in skip else None
        members = np.flatnonzero(keep) if keep is not None else np.arange(len(values))
        order = members[np.argsort(values[members], kind="stable")]
        sorted_values = values[order]
        if owners is not None:
            # rows are in node order and the sort is stable, so a node's rows in one bucket are adjacent: one kept
            order = owners[order]
            again = np.r_[False, (sorted_values[1:] == sorted_values[:-1]) & (order[1:] == order[:-1])]
            order, sorted_values = order[~again], sorted_values[~again]
        if len(order) < 2:
            continue
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        big = np.repeat(sizes > SETTLE_BUCKET, sizes)
        # small buckets cost at most SETTLE_BUCKET / 2 comparisons a node: not worth the checks
        _scan_buckets(order[~big], sorted_values[~big], phash, k, links, settle=False, second=second)
        _scan_buckets(order[big], sorted_values[big], phash, k, links, settle=True, second=second)
    links.merge()
    if sampled is not None:
        sampled.update(nodes=int(in_sampled.sum()), unchecked=int(unchecked.sum()), subbands=by_subbands,
                       linked_by=linked_by)
    smallest = np.full(len(rid), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, links.root, rid)
    r0 = smallest[links.root]
    linked = np.flatnonzero(r0 != rid)
    r0, r1 = r0[linked], rid[linked]
    by = np.lexsort((r1, r0))
    return pa.table({"r0": pa.array(r0[by], pa.int64()), "r1": pa.array(r1[by], pa.int64())})


def cluster_features(con: duckdb.DuckDBPyConnection, config: DedupConfig) -> tuple[pa.Table, DedupReport]:
    """Cluster the ``image_features`` view of ``con``; returns the duplicate_clusters table and counts."""
    started = time.perf_counter()
    hashes, bands, large = _band_inputs(con, config)
    sampled: dict = {}
    near = near_links(run_sql(con, "dedup_nodes"), bands, _past_budget(large), config.k, sampled=sampled)
    keyed_sampled: dict = {}
    keyed, keyed_large = dhash_keyed_links(run_sql(con, "dedup_keyed_nodes"), hashes.num_rows, config, keyed_sampled)
    exact = run_sql(con, "dedup_exact_edges")
    edges = pa.concat_tables([near, keyed, exact.select(["r0", "r1"])])
    con.register("edges", edges)
    labels = component_labels(edges.column("r0").to_numpy(), edges.column("r1").to_numpy())
    con.register("labels", labels)
    clusters = cast_to_schema(run_sql(con, "dedup_clusters"), get_schema("duplicate_clusters"))
    report = _report(con, clusters, hashes.num_rows, exact, near, large, config)
    report.sampled_bucket_nodes = sampled["nodes"] + keyed_sampled["nodes"]
    report.sampled_unchecked_nodes = sampled["unchecked"] + keyed_sampled["unchecked"]
    report.subband_buckets = sampled["subbands"] + keyed_sampled["subbands"]
    uninformative = pc.invert(hashes.column("informative"))
    report.dhash_keyed_edges = keyed.num_rows
    report.dhash_keyed_images = pc.sum(pc.and_(uninformative, hashes.column("dhash_keyed"))).as_py() or 0
    report.low_information_images = (pc.sum(uninformative).as_py() or 0) - report.dhash_keyed_images
    for bucket in report.giant_buckets:
        bucket["linked_by"] = sampled["linked_by"].get((bucket["band"], bucket["value"]), "pair scan")
    for bucket in keyed_large:
        bucket["linked_by"] = keyed_sampled["linked_by"].get((bucket["band"], bucket["value"]), "pair scan")
    report.giant_buckets += keyed_large
    report.seconds = time.perf_counter() - started
    return clusters, report


def keyed_band_table() -> pa.Table:
    """The bands of the dHash-keyed search: the dHash cut into ``DHASH_K + 1`` bands (16 bits each), so every pair
    within ``DHASH_K`` on the dHash shares one (pigeonhole). Numbered from 64, apart from the main search's."""
    width = 64 // (DHASH_K + 1)
    return pa.table({
        "band": pa.array([64 + i for i in range(DHASH_K + 1)], pa.int32()),
        "hash_kind": pa.array(["dhash"] * (DHASH_K + 1), pa.string()),
        "shift": pa.array([width * i for i in range(DHASH_K + 1)], pa.uint8()),
        "mask": pa.array([(1 << width) - 1] * (DHASH_K + 1), pa.uint64()),
    })


def dhash_keyed_links(nodes: pa.Table, images: int, config: DedupConfig, sampled: dict) -> tuple[pa.Table, list[dict]]:
    """Near links among the dHash-keyed images (``sql/dedup_keyed_nodes.sql``: one node per distinct (pHash, dHash)
    of the images whose pHash is not informative but whose dHash has ``MIN_DHASH_ROWS`` distinct rows): a pair is
    linked when its pHashes are within ``config.k`` AND its dHashes within ``DHASH_K``. Candidates share one of the
    dHash bands (``keyed_band_table``), which finds every such pair. Buckets over the cap (as the main search's,
    ``max(min_bucket_cap, max_bucket_fraction * images)``) are reported (hash kind 'dhash-keyed', with their
    ``method``) and searched as the main search's are (pair by pair within ``EXACT_PAIR_BUDGET``, past it by
    sub-bands or representatives, with the dHash check too). Returns the links (r0, r1) and those buckets."""
    bands = keyed_band_table()
    dhash = nodes.column("dhash").to_numpy().astype(np.uint64)
    cap = max(config.min_bucket_cap, int(config.max_bucket_fraction * images))
    large = []
    for band, shift, mask in zip(*(bands.column(c).to_pylist() for c in ("band", "shift", "mask"))):
        values, counts = np.unique((dhash >> np.uint64(shift)) & np.uint64(mask), return_counts=True)
        large += [{"band": int(band), "hash_kind": "dhash-keyed", "value": int(value), "size": int(size)}
                  for value, size in zip(values[counts > cap].tolist(), counts[counts > cap].tolist())]
    large.sort(key=lambda b: (-b["size"], b["band"], b["value"]))
    for bucket, method in zip(large, _bucket_methods(np.array([b["size"] for b in large], dtype=np.int64))):
        bucket["method"] = method
    past = [b for b in large if b["method"] == "sampled"]
    giant = pa.table({"band": pa.array([b["band"] for b in past], pa.int32()),
                      "value": pa.array([b["value"] for b in past], pa.uint64())})
    links = near_links(nodes, bands, giant, config.k, sampled=sampled, dhash_k=DHASH_K)
    return links, large


def register_band_inputs(con: duckdb.DuckDBPyConnection, config: DedupConfig) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Compute and register in ``con`` what the near-duplicate search reads: the images' hashes
    (``hashes``), the bands (``bands``) and the buckets over the cap (``giant_buckets``, with their
    ``method``); returns the hashes, the bands and the buckets left out of the pair-by-pair scan
    (``method = 'sampled'``: past ``EXACT_PAIR_BUDGET``)."""
    hashes, bands, large = _band_inputs(con, config)
    return hashes, bands, _past_budget(large)


def _band_inputs(con: duckdb.DuckDBPyConnection, config: DedupConfig) -> tuple[pa.Table, pa.Table, pa.Table]:
    hashes = run_sql(con, "dedup_hashes", {"constant_mask": config.constant_mask, "dc_bit": PHASH_DC_BIT,
                                           "min_bits": MIN_PHASH_BITS, "odd_u": PHASH_ODD_U_BITS,
                                           "odd_v": PHASH_ODD_V_BITS, "k": config.k, "m": _ROW_LOW_BITS,
                                           "max_lr": MIRROR_LR_BITS, "max_tb": MIRROR_TB_BITS,
                                           "min_mirror_rows": MIN_MIRROR_ROWS, "dhash_k": DHASH_K})
    con.register("hashes", hashes)
    bands = band_table(config)
    con.register("bands", bands)
    cap = max(config.min_bucket_cap, int(config.max_bucket_fraction * hashes.num_rows))
    large = run_sql(con, "dedup_band_buckets", {"cap": cap})
    large = large.append_column("method", pa.array(_bucket_methods(large.column("size").to_numpy()), pa.string()))
    con.register("giant_buckets", large)
    return hashes, bands, large


def _bucket_methods(sizes: np.ndarray) -> list[str]:
    """'exact' for the buckets over the cap that are still verified pair by pair (smallest first, while their
    pairs add up to at most ``EXACT_PAIR_BUDGET``), 'sampled' for the rest. ``sizes`` is in the order of
    ``sql/dedup_band_buckets.sql`` (size descending, then band, value), so the choice is deterministic."""
    sizes = sizes.astype(np.int64)
    pairs = np.cumsum((sizes * (sizes - 1) // 2)[::-1])[::-1]     # pairs of this bucket and every smaller one
    return ["exact" if total <= EXACT_PAIR_BUDGET else "sampled" for total in pairs.tolist()]


def _past_budget(large: pa.Table) -> pa.Table:
    return large.filter(pc.equal(large.column("method"), "sampled"))


def component_labels(r0: np.ndarray, r1: np.ndarray) -> pa.Table:
    """``(rid, label)`` for every node of the undirected edges ``r0[i] - r1[i]``, sorted by rid:
    ``label`` is the smallest rid of the node's connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inverse = np.unique(np.concatenate([r0, r1]).astype(np.int64), return_inverse=True)
    if not len(nodes):
        return pa.table({"rid": pa.array([], pa.int64()), "label": pa.array([], pa.int64())})
    a, b = inverse[:len(r0)], inverse[len(r0):]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(nodes), len(nodes))).tocsr()
    _, component = connected_components(graph, directed=True, connection="weak")
    smallest = np.full(component.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, component, nodes)          # nodes are sorted: this is each component's minimum
    return pa.table({"rid": pa.array(nodes, pa.int64()), "label": pa.array(smallest[component], pa.int64())})


def _report(con, clusters, images, exact, near, giant, config) -> DedupReport:
    con.register("duplicate_clusters", clusters)
    sizes = con.execute(
        "SELECT cluster_size, count(*) // cluster_size FROM duplicate_clusters GROUP BY 1 ORDER BY 1"
    ).fetchall()
    dup = [(s, n) for s, n in sizes if s > 1]
    return DedupReport(
        images=images,
        exact_duplicate_images=sum(1 for kind in exact.column("kind").to_pylist() if kind == "sha256"),
        same_hash_images=sum(1 for kind in exact.column("kind").to_pylist() if kind == "same_hash"),
        near_edges=near.num_rows,
        clusters_with_duplicates=sum(n for _, n in dup),
        images_in_duplicate_clusters=sum(s * n for s, n in dup),
        largest_cluster=max((s for s, _ in sizes), default=0),
        size_histogram=_histogram(sizes),
        giant_buckets=[{k: (int(v) if not isinstance(v, str) else v) for k, v in row.items()} for row in giant.to_pylist()],
        config=public_fields(config),
    )


def _size_bin(size: int) -> str:
    for upper in (1, 2, 3, 4, 5, 10, 100, 1000):
        if size <= upper:
            return str(upper) if upper <= 5 else f"<={upper}"
    return ">1000"


def _histogram(sizes: list[tuple[int, int]]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for size, count in sizes:
        hist[_size_bin(size)] = hist.get(_size_bin(size), 0) + count
    return hist


def evaluate_truth(con: duckdb.DuckDBPyConnection, clusters: pa.Table, truth: pa.Table) -> dict:
    """Pairwise precision/recall of ``clusters`` against ground truth (byte-identical pairs count as true)."""
    con.register("duplicate_clusters", clusters)
    con.register("truth", truth)
    row = run_sql(con, "dedup_truth_eval").to_pylist()[0]
    predicted, exact_pairs = row["predicted_pairs"], row["predicted_exact_pairs"]
    same_group, same_group_exact = row["same_group_pairs"], row["same_group_exact_pairs"]
    correct = same_group + exact_pairs - same_group_exact
    near_predicted = predicted - exact_pairs
    near_correct = same_group - same_group_exact
    return {
        "predicted_pairs": predicted,
        "truth_pairs": row["truth_pairs"],
        "precision": _ratio(correct, predicted),
        "recall": _ratio(same_group, row["truth_pairs"]),
        "precision_near": _ratio(near_correct, near_predicted),
        "planted_exact": row["planted_exact"],
        "recall_exact": _ratio(row["recovered_exact"], row["planted_exact"]),
        "planted_near": row["planted_near"],
        "recall_near": _ratio(row["recovered_near"], row["planted_near"]),
    }


def _ratio(num: int, den: int) -> float:
    return round(num / den, 6) if den else 1.0


def build_clusters(home: DataHome, config: DedupConfig = DedupConfig(),
                   truth: pa.Table | Path | None = None) -> DedupReport:
    """Cluster every featurized image into ``duplicate_clusters`` (full global recompute).

    ``truth`` (a simulation's planted duplicates, a table or its ``duplicates.parquet``) adds precision and
    recall to the report; it is only ever given by the caller, never looked up in the home.
    """
    con = connect({"image_features": home.table_files("image_features")}, threads=config.threads or None)
    clusters, report = cluster_features(con, config)
    recorded = json.dumps(config.output_fields(), sort_keys=True).encode("utf-8")
    with writing_table(home, "duplicate_clusters") as final:   # under the curation lock (review rev29b)
        write_parquet_atomic(clusters.replace_schema_metadata({**(clusters.schema.metadata or {}),
                                                               DEDUP_METADATA: recorded}), final)
    if truth is not None:
        report.truth = evaluate_truth(con, clusters, truth if isinstance(truth, pa.Table) else pq.read_table(truth))
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.curation.dedup --home DIR [--k 6] [--truth FILE]``: build duplicate_clusters and print the report."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=None)
    parser.add_argument("--truth", type=Path, default=None,
                        help="a simulation's duplicates.parquet: report precision and recall against it")
    add_flags(parser, "dedup")
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    # everything is checked before the table is written: the home's image_features (so a folder of other files
    # or a mistyped path is never made into a home), the settings, and the --truth file
    from formats.outputs import check_home_dir

    if not home.table_files("image_features"):   # the files build_clusters reads
        check_home_dir(home)   # a file, a folder of other files, a folder inside a home: named as such
        raise FileNotFoundError(f"image_features not found under {home.table_dir('image_features')}: run the "
                                "feature stage first (python -m pipelines.features --home H --day D, or pickapic "
                                "build); nothing was written")
    config = stage_config(home.root, "dedup", args)
    truth = None if args.truth is None else _read_truth(args.truth)
    report = build_clusters(home, config, truth=truth)
    print(json.dumps(report.metadata(), indent=2, default=str))


TRUTH_COLUMNS = ("group_id", "image_uid", "kind", "source_uid")   # what sql/dedup_truth_eval.sql reads
# the types it reads them as (a simulation writes int64 and strings): the uids are joined to duplicate_clusters'
# string image_uid and kind compared with 'exact'/'near'; group_id is only grouped on (any integer or string)
_TRUTH_TYPES = {"group_id": ("an integer or a string", lambda t: pa.types.is_integer(t) or _is_text(t)),
                "image_uid": ("a string", lambda t: _is_text(t)),
                "kind": ("a string", lambda t: _is_text(t)),
                "source_uid": ("a string", lambda t: _is_text(t))}


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
        (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))


def _read_truth(path: Path) -> pa.Table:
    """``--truth``: a simulation's ``duplicates.parquet``, read whole before anything is written (one error naming
    --truth for a file that is missing, not Parquet, lacks a column the evaluation reads or has one of another
    type, or that the evaluation's SQL cannot run on: it is run once on an empty duplicate_clusters first,
    review rev25h)."""
    if not path.is_file():
        raise FileNotFoundError(f"--truth {path} is not a file (a simulated home has ground_truth/duplicates.parquet); "
                                "nothing was written")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"--truth {path} is not a readable Parquet table ({exc}); nothing was written") from None
    missing = [name for name in TRUTH_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"--truth {path} lacks the column(s) {', '.join(missing)} of a simulation's duplicates.parquet; "
                         "nothing was written")
    wrong = [f"{name} is {table.schema.field(name).type}, not {want}" for name, (want, fits) in _TRUTH_TYPES.items()
             if not fits(table.schema.field(name).type)]
    if wrong:
        raise ValueError(f"--truth {path} is not a simulation's duplicates.parquet: {'; '.join(wrong)}; nothing was "
                         "written")
    try:   # what else the evaluation needs: its SQL run once on an empty duplicate_clusters, before anything is written
        evaluate_truth(connect({}), get_schema("duplicate_clusters").empty_table(), table)
    except (duckdb.Error, pa.ArrowException, RuntimeError) as exc:
        raise ValueError(f"--truth {path} cannot be evaluated against duplicate_clusters ({exc}); nothing was "
                         "written") from None
    return table


if __name__ == "__main__":
    import sys

    from formats.commands import run_command

    sys.exit(run_command("python -m pipelines.curation.dedup", main))
