"""Fix33u (review rev33u): an uninformative pHash (flat or smoothly shaded image) clusters by sha256 only.

Beyond the review's tests: the threshold's edge (15 vs 16 set bits besides the DC bit), exact copies of a flat image
still one cluster, the DC bit never counted (``mask_dc_bit=False`` too), an informative hash near an uninformative
one not joined through it, textured images' near duplicates (real Pillow, real imagehash) still found, the
documented price (a flat image's re-encode is not clustered with it), the report's count, and a flood of flat images
staying linear with no giant bucket.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import time

import pyarrow as pa
from dedup_fixtures import TRANSFORMS, shapes_image
from PIL import Image

from pipelines.curation.dedup import MIN_PHASH_BITS, PHASH_DC_BIT, DedupConfig, cluster_features
from pipelines.features.derive import perceptual_hashes
from pipelines.sqlrun import connect

DC = PHASH_DC_BIT


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _features(rows):
    """rows: (image_uid, sha256, phash, dhash)."""
    return pa.table({
        "image_uid": [r[0] for r in rows], "sha256": [r[1] for r in rows],
        "phash": pa.array([r[2] for r in rows], pa.uint64()), "dhash": pa.array([r[3] for r in rows], pa.uint64()),
        "dt": pa.array([datetime.date(2023, 3, 1)] * len(rows), pa.date32()),
        "blob_path": [f"raw/images/{r[0]}.png" for r in rows],
    })


def _cluster(rows, config: DedupConfig = DedupConfig()):
    clusters, report = cluster_features(connect({"image_features": _features(rows)}), config)
    return {r["image_uid"]: r["cluster_id"] for r in clusters.to_pylist()}, report


def _bits(n: int) -> int:
    """A hash with the DC bit and ``n`` low bits set."""
    return DC | ((1 << n) - 1)


def test_threshold_edge_equal_hashes_cluster_from_sixteen_bits_on():
    assert MIN_PHASH_BITS == 16
    rows = [("a15", _sha("a15"), _bits(15), 1), ("b15", _sha("b15"), _bits(15), 2),
            ("a16", _sha("a16"), _bits(16), 3), ("b16", _sha("b16"), _bits(16), 4),
            ("c16", _sha("c16"), _bits(16) ^ (0b11 << 40), 5)]          # 18 bits, 2 from a16: a near duplicate
    got, report = _cluster(rows)
    assert got["a15"] == "a15" and got["b15"] == "b15"              # 15 bits: uninformative, distinct bytes
    assert got["a16"] == got["b16"] == got["c16"] == "a16"          # 16 bits and more: equal and near hashes join
    assert report.low_information_images == 2 and report.metadata()["low_information_images"] == 2


def test_byte_identical_flat_images_are_still_one_cluster():
    white, _ = perceptual_hashes(Image.new("RGB", (64, 64), (255, 255, 255)))
    rows = [("w1", _sha("white"), white, 0), ("w2", _sha("white"), white, 0), ("w3", _sha("white-2"), white, 0),
            ("red", _sha("red"), white, 0)]
    got, report = _cluster(rows)
    assert got["w1"] == got["w2"] == "w1"                           # same bytes: one cluster, as before
    assert got["w3"] == "w3" and got["red"] == "red"                # same (empty) pHash, other bytes: apart
    assert report.exact_duplicate_images == 1 and report.same_hash_images == 0


def test_dc_bit_is_never_counted_even_unmasked():
    rows = [("a", _sha("a"), DC, 0), ("b", _sha("b"), DC, 0), ("c", _sha("c"), 0, 0)]
    got, report = _cluster(rows, DedupConfig(mask_dc_bit=False))
    assert set(got.values()) == {"a", "b", "c"} and report.low_information_images == 3


def test_an_informative_hash_is_not_joined_through_an_uninformative_neighbour():
    low = _bits(14)                          # 14 bits: uninformative
    x = low | (0b111 << 40)                  # 17 bits, 3 from low
    y = low | (0b1111 << 50)                 # 18 bits, 4 from low, 7 from x (> k): joined only through low before
    rows = [("a-low", _sha("l"), low, 1), ("b-x", _sha("x"), x, 2), ("c-y", _sha("y"), y, 3),
            ("d-x2", _sha("x2"), x ^ (1 << 60), 4)]                  # 1 bit from x: a near duplicate
    got, _ = _cluster(rows, DedupConfig(dhash_bands=False))
    assert got["a-low"] == "a-low" and got["c-y"] == "c-y"
    assert got["b-x"] == got["d-x2"] == "b-x"


def _hashes_of(img: Image.Image) -> tuple[int, int]:
    return perceptual_hashes(img)


def _jpeg(img: Image.Image, quality: int = 85) -> Image.Image:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_textured_images_near_duplicates_still_cluster_and_flat_ones_by_bytes_only():
    rows = []
    for i, name in enumerate(sorted(TRANSFORMS)):
        source = shapes_image(1000 + i, 256)
        for uid, img in ((f"s{i}-a", source), (f"s{i}-b", TRANSFORMS[name](source))):
            rows.append((uid, _sha(uid), *_hashes_of(img)))
    flat = Image.new("RGB", (256, 256), (40, 90, 200))
    rows += [("z-flat", _sha("z-flat"), *_hashes_of(flat)), ("z-flat-jpeg", _sha("z-flat-jpeg"), *_hashes_of(_jpeg(flat)))]
    got, report = _cluster(rows)
    for i in range(len(TRANSFORMS)):
        assert got[f"s{i}-a"] == got[f"s{i}-b"], sorted(TRANSFORMS)[i]      # recall on textured images kept
    assert len({got[f"s{i}-a"] for i in range(len(TRANSFORMS))}) == len(TRANSFORMS)
    # the documented price: a flat image's re-encode is not clustered with it (nothing in the hashes tells it
    # from a flat image of another colour)
    assert got["z-flat"] == "z-flat" and got["z-flat-jpeg"] == "z-flat-jpeg"
    assert report.low_information_images == 2


def test_a_flood_of_flat_images_stays_singletons_with_no_giant_bucket():
    n = 20_000
    rows = [(f"f{i:06d}", _sha(f"f{i}"), DC, 0) for i in range(n)] + [("g-copy", _sha("f7"), DC, 0)]
    started = time.perf_counter()
    got, report = _cluster(rows)
    assert time.perf_counter() - started < 20
    assert got["g-copy"] == "f000007" and len(set(got.values())) == n
    assert report.giant_buckets == [] and report.near_edges == 0 and report.low_information_images == n + 1
