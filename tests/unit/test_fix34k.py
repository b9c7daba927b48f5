"""fix34k (review rev34k): a textured dHash that is a mirror's makes the pHash not informative (its odd DCT bits are
tie-breaks); a mirror both ways is clustered by bytes only. Edge cases beside the review's tests."""
from __future__ import annotations

import hashlib

from dedup_fixtures import TRANSFORMS, shapes_image
from PIL import ImageDraw
from test_hostile_rev34k import _cluster, _features, _kaleidoscope, _mirrored

from pipelines.curation.dedup import DedupConfig, cluster_features
from pipelines.sqlrun import connect, run_sql


def _hashes(rows):
    con = connect({"image_features": _features(rows)})
    return {r["image_uid"]: r for r in run_sql(con, "dedup_hashes", _params()).to_pylist()}


def _params():
    import pipelines.curation.dedup as d
    return {"constant_mask": d.PHASH_DC_BIT, "dc_bit": d.PHASH_DC_BIT, "min_bits": d.MIN_PHASH_BITS,
            "odd_u": d.PHASH_ODD_U_BITS, "odd_v": d.PHASH_ODD_V_BITS, "k": 6, "m": d._ROW_LOW_BITS,
            "max_lr": d.MIRROR_LR_BITS, "max_tb": d.MIRROR_TB_BITS, "min_mirror_rows": d.MIN_MIRROR_ROWS,
            "dhash_k": d.DHASH_K}


def _sha(uid):
    return hashlib.sha256(uid.encode()).hexdigest()


def test_a_sparse_dhash_is_no_mirror_evidence_and_a_full_mirror_both_ways_is_bytes_only():
    informative = 0x0F0F_0F0F_0F0F_0F0F | (1 << 63)
    rows = [("sparse", _sha("s"), informative, 0x13),                       # 1 row: no evidence, pHash decides
            ("lr", _sha("l"), informative, 0x0E04_0602_0703_0F01),   # rows of a left-right mirror, not top-bottom
            ("both", _sha("b"), informative, 0x0810_2200_0022_1008)]          # rows r and 7 - r equal, left-right too
    h = _hashes(rows)
    assert h["sparse"]["informative"] and not h["sparse"]["dhash_keyed"]
    assert not h["lr"]["informative"] and h["lr"]["dhash_keyed"]
    assert not h["both"]["informative"] and not h["both"]["dhash_keyed"]


def test_a_textured_non_mirror_image_stays_informative_and_its_reencodes_cluster():
    src = shapes_image(11, 256)
    images = {"a": src, "b": TRANSFORMS["jpeg_q85"](src), "c": TRANSFORMS["resize384"](src)}
    clusters, report = _cluster(images)
    assert report.dhash_keyed_images == 0 and len(set(clusters.values())) == 1


def test_a_mirror_with_a_signature_is_keyed_and_still_clusters_with_its_reencode():
    img = _mirrored(7, 512)
    ImageDraw.Draw(img).rectangle([432, 492, 502, 502], fill=(0, 0, 0))
    clusters, report = _cluster({"a": img, "b": TRANSFORMS["jpeg_q85"](img)})
    assert report.dhash_keyed_images == 2 and clusters["a"] == clusters["b"]


def test_a_kaleidoscope_and_its_reencode_are_bytes_only_and_byte_copies_still_cluster():
    img = _kaleidoscope(3)
    rows_images = {"a": img, "b": TRANSFORMS["jpeg_q60"](img)}
    clusters, report = _cluster(rows_images)
    assert report.low_information_images == 2 and clusters["a"] != clusters["b"]


def test_an_informative_image_one_dhash_bit_from_a_mirror_is_in_both_searches_and_joins_the_mirror():
    """A crop of a source whose dHash reads as a mirror's flips one pair bit: it stays informative, but is keyed too
    (a dHash within DHASH_K of a mirror's), so the pair (pHash 4 apart, dHash 1) is found (measured on the planted
    duplicates: lost before)."""
    phash = 0x0F0F_0F0F_0F0F_0F0F | (1 << 63)
    mirror = 0x0E04_0602_0703_0F01
    near = mirror | 0x80                 # bit 7 of row 0 beside bit 0: one left-right pair both set
    rows = [("a-mirror", _sha("a"), phash, mirror), ("b-crop", _sha("b"), phash ^ 0b1111, near)]
    h = _hashes(rows)
    assert not h["a-mirror"]["informative"] and h["b-crop"]["informative"] and h["b-crop"]["dhash_keyed"]
    clusters, _ = cluster_features(connect({"image_features": _features(rows)}), DedupConfig())
    assert len(set(clusters.column("cluster_id").to_pylist())) == 1
