"""Fix34b (review rev34b): a mirror-symmetric pHash is not informative on its own; an image whose pHash is not
informative but whose dHash is textured clusters by pHash <= k AND dHash <= ``DHASH_K`` (``dhash_keyed_links``).

Beyond the review's tests: the DCT bit layout the symmetry test relies on (real imagehash on real Pillow images), a
symmetric image over 16 bits still clustered with its re-encode, vignettes of different colours (equal pHash and
dHash, every dHash row alike) never one cluster, the AND of the two distances at its edges, a pair across the two
searches (a symmetric source and a re-encode that is no longer quite symmetric), the keyed search's giant buckets
(reported; exact, sub-band and sampled searches all checking the dHash), the report's counts, and the clusters
independent of the rows' order.
"""
from __future__ import annotations

import datetime
import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
from dedup_fixtures import shapes_image
from PIL import Image, ImageOps

from pipelines.curation.dedup import (
    DHASH_K,
    MIN_PHASH_BITS,
    PHASH_DC_BIT,
    PHASH_ODD_U_BITS,
    PHASH_ODD_V_BITS,
    DedupConfig,
    cluster_features,
    keyed_band_table,
    near_links,
)
from pipelines.features.derive import perceptual_hashes
from pipelines.sqlrun import connect

DC = PHASH_DC_BIT
TEXTURED = 0x0123456789ABCDEF          # a dHash with 8 distinct rows
LOW = DC | 0b1011_0110_1001            # an uninformative pHash (7 bits besides the DC bit)


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
    return {r["image_uid"]: r["cluster_id"] for r in clusters.to_pylist()}, report, clusters


def _flip(value: int, n: int, start: int = 0) -> int:
    """``value`` with ``n`` bits flipped, from bit ``start`` on (every other bit, so they stay apart)."""
    for i in range(n):
        value ^= 1 << (start + 2 * i)
    return value


def _mirrored(seed: int, size: int = 512, top_bottom: bool = False) -> Image.Image:
    im = shapes_image(seed, size)
    out = Image.new("RGB", (size, size))
    if top_bottom:
        half = im.crop((0, 0, size, size // 2))
        out.paste(half, (0, 0))
        out.paste(ImageOps.flip(half), (0, size // 2))
    else:
        half = im.crop((0, 0, size // 2, size))
        out.paste(half, (0, 0))
        out.paste(ImageOps.mirror(half), (size // 2, 0))
    return out


def _decoded(img: Image.Image, fmt: str, **kwargs) -> Image.Image:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_the_odd_term_bits_are_zero_exactly_for_mirror_symmetric_images():
    for seed in range(4):
        lr, _ = perceptual_hashes(_decoded(_mirrored(seed), "PNG"))
        tb, _ = perceptual_hashes(_decoded(_mirrored(seed, top_bottom=True), "PNG"))
        plain, _ = perceptual_hashes(_decoded(shapes_image(seed, 512), "PNG"))
        assert lr & PHASH_ODD_U_BITS == 0 and lr & PHASH_ODD_V_BITS != 0
        assert tb & PHASH_ODD_V_BITS == 0 and tb & PHASH_ODD_U_BITS != 0
        assert plain & PHASH_ODD_U_BITS != 0 and plain & PHASH_ODD_V_BITS != 0
    assert PHASH_ODD_U_BITS & PHASH_ODD_V_BITS != 0 and not (PHASH_ODD_U_BITS | PHASH_ODD_V_BITS) & DC
    assert bin(PHASH_ODD_U_BITS).count("1") == bin(PHASH_ODD_V_BITS).count("1") == 32


def test_a_symmetric_image_over_sixteen_bits_is_still_clustered_with_its_reencodes():
    source = _mirrored(12)                         # 18 bits, all odd horizontal terms 0
    png = perceptual_hashes(_decoded(source, "PNG"))
    assert bin(png[0] & ~DC).count("1") >= MIN_PHASH_BITS and png[0] & PHASH_ODD_U_BITS == 0
    variants = {"jpeg": _decoded(source, "JPEG", quality=85),
                "small": _decoded(source.resize((256, 256), Image.BICUBIC), "PNG")}
    rows = [("a-src", _sha("a"), *png)] + [(f"b-{name}", _sha(name), *perceptual_hashes(img))
                                          for name, img in variants.items()]
    rows.append(("c-other", _sha("c"), *perceptual_hashes(_decoded(_mirrored(24), "PNG"))))
    got, report, _ = _cluster(rows)
    assert got["a-src"] == got["b-jpeg"] == got["b-small"] == "a-src"
    assert got["c-other"] == "c-other"
    assert report.dhash_keyed_images >= 2 and report.low_information_images == 0


def _vignette(colour) -> Image.Image:
    y, x = np.mgrid[0:512, 0:512] / 511.0
    r = np.sqrt((x - .5) ** 2 + (y - .5) ** 2)
    return Image.fromarray(np.stack([np.clip((200 - 250 * r) * c, 0, 255) for c in colour], -1).astype(np.uint8))


def test_vignettes_flats_and_ramps_of_different_colours_stay_apart_though_both_hashes_are_equal():
    images = {"grey": _vignette((1, 1, 1)), "blue": _vignette((0.3, 0.5, 1)), "amber": _vignette((1, 0.6, 0.2)),
              "white": Image.new("RGB", (512, 512), "white"), "red": Image.new("RGB", (512, 512), "red"),
              "ramp": Image.fromarray(np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1)))}
    rows = [(name, _sha(name), *perceptual_hashes(_decoded(img, "PNG"))) for name, img in images.items()]
    rows += [("grey-jpeg", _sha("grey-jpeg"), *perceptual_hashes(_decoded(images["grey"], "JPEG", quality=85)))]
    hashes = {r[0]: r[2:] for r in rows}
    assert hashes["grey"] == hashes["blue"] == hashes["grey-jpeg"]       # equal pHash and dHash, every dHash row alike
    got, report, _ = _cluster(rows)
    assert got == {name: name for name in got}                           # by bytes only: the documented price
    assert report.dhash_keyed_images == 0 and report.low_information_images == len(rows)


@pytest.mark.parametrize("phash_flips, dhash_flips, joined", [
    (0, 0, True), (0, DHASH_K, True), (6, DHASH_K, True), (0, DHASH_K + 1, False), (8, 0, False), (7, 1, False)])
def test_keyed_images_need_both_distances(phash_flips, dhash_flips, joined):
    other = (_flip(LOW, phash_flips, 20), _flip(TEXTURED, dhash_flips, 1))
    got, report, _ = _cluster([("a", _sha("a"), LOW, TEXTURED), ("b", _sha("b"), *other)])
    assert (got["b"] == "a") is joined
    assert report.dhash_keyed_images == 2


def test_equal_keyed_pairs_are_one_group_and_a_dhash_without_texture_is_bytes_only():
    flat_rows = 0x0F0F0F0F0F0F0F0F                 # every row alike (a vignette's, a ramp's shape)
    two_rows = 0x0F0F0F0FF0F0F0F0                  # two distinct rows (quadrants)
    rows = [("a", _sha("a"), LOW, TEXTURED), ("b", _sha("b"), LOW, TEXTURED), ("c", _sha("c"), LOW, TEXTURED),
            ("d", _sha("d"), LOW, flat_rows), ("e", _sha("e"), LOW, flat_rows),
            ("f", _sha("f"), LOW, two_rows), ("g", _sha("g"), LOW, two_rows), ("h", _sha("d"), LOW, flat_rows)]
    got, report, clusters = _cluster(rows)
    assert got["a"] == got["b"] == got["c"] == "a"
    assert got["d"] == got["h"] == "d" and got["e"] == "e" and got["f"] == "f" and got["g"] == "g"
    assert report.same_hash_images == 2 and report.exact_duplicate_images == 1
    assert report.dhash_keyed_images == 3 and report.low_information_images == 5
    meta = report.metadata()
    assert meta["dhash_keyed_images"] == 3 and meta["low_information_images"] == 5


def test_a_pair_across_the_searches_is_joined_only_when_close_on_both():
    sym = DC | sum(1 << (63 - (8 * v + u)) for v in range(1, 8, 2) for u in range(0, 8, 2))   # odd u all 0
    assert sym & PHASH_ODD_U_BITS == 0 and bin(sym & ~DC).count("1") >= MIN_PHASH_BITS
    odd = 1 << (63 - 1)                                                                       # term (0, 1)
    nearly = sym | odd                             # one odd term set: informative, 1 bit from sym
    rows = [("a-sym", _sha("a"), sym, TEXTURED), ("b-jpeg", _sha("b"), nearly, _flip(TEXTURED, 2, 5)),
            ("c-far-dhash", _sha("c"), nearly ^ (1 << 3), TEXTURED ^ 0xFF00FF)]
    got, report, _ = _cluster(rows)
    assert got["a-sym"] == got["b-jpeg"] == "a-sym"
    # c is 1 pHash bit from b (informative pair: joined by the pHash alone, as before the fix) ...
    assert got["c-far-dhash"] == "a-sym"
    # ... but not through a-sym when b is absent (a-sym's pHash says too little: the dHash must match too)
    got, _, _ = _cluster([rows[0], rows[2]])
    assert got["c-far-dhash"] == "c-far-dhash"
    # an informative pHash with many odd terms set is in the pHash search only
    textured = DC | 0x5A5A5A5A5A5A5A5A & ~DC
    assert bin(textured & PHASH_ODD_U_BITS).count("1") > 6 and bin(textured & PHASH_ODD_V_BITS).count("1") > 6
    _, report, _ = _cluster([("t", _sha("t"), textured, TEXTURED)])
    assert report.dhash_keyed_images == 0 and report.low_information_images == 0


def test_the_report_counts_keyed_links_apart_and_informative_groups_once():
    sym = DC | sum(1 << (63 - (8 * v + u)) for v in range(1, 8, 2) for u in range(0, 8, 2))
    nearly = sym | 1 << 62                         # informative, and keyed (one odd term set)
    rows = [("a", _sha("a"), LOW, TEXTURED), ("b", _sha("b"), _flip(LOW, 2, 30), _flip(TEXTURED, 1, 3)),
            ("c", _sha("c"), nearly, TEXTURED), ("d", _sha("d"), nearly, TEXTURED ^ 1 << 9),
            ("e", _sha("e"), nearly, TEXTURED ^ 0xFFFF << 20)]          # c, d, e: one pHash group (3 dHashes)
    got, report, _ = _cluster(rows)
    assert got["b"] == "a" and got["d"] == got["e"] == "c"
    assert report.same_hash_images == 2                                  # d and e to c, once each
    assert report.near_edges == 0 and report.dhash_keyed_edges >= 1
    assert report.metadata()["dhash_keyed_edges"] == report.dhash_keyed_edges
    assert report.dhash_keyed_images == 2 and report.low_information_images == 0


def _keyed_nodes(phash, dhash):
    return pa.table({"rid": pa.array(np.arange(1, len(phash) + 1), pa.int64()),
                     "phash": pa.array(phash, pa.uint64()), "dhash": pa.array(dhash, pa.uint64())})


def _pairs(links: pa.Table) -> list[tuple[int, int]]:
    return list(zip(links.column("r0").to_pylist(), links.column("r1").to_pylist()))


def test_a_keyed_bucket_past_the_budget_checks_the_dhash_by_sub_bands_and_by_representatives():
    rng = np.random.default_rng(5)
    n = 60
    # one dHash band value shared by all (bits 0-15), the other dHash bits random: most pairs far on the dHash;
    # every third node's dHash a copy of its predecessor's with 2 bits flipped (a near duplicate)
    dhash = (rng.integers(0, 1 << 62, n, dtype=np.int64).astype(np.uint64) << np.uint64(16)) | np.uint64(0xBEEF)
    for i in range(2, n, 3):
        dhash[i] = dhash[i - 1] ^ np.uint64(0b101 << 20)
    for same_phash in (True, False):
        phash = np.full(n, LOW, dtype=np.uint64)
        if not same_phash:                         # pHashes 0-2 bits from LOW: at most k = 6 bits vary per pair
            phash ^= (rng.integers(0, 2, n).astype(np.uint64) << np.uint64(30))
        nodes = _keyed_nodes(phash, dhash)
        bands = keyed_band_table()
        none = pa.table({"band": pa.array([], pa.int32()), "value": pa.array([], pa.uint64())})
        band = bands.column("band")[0].as_py()
        giant = pa.table({"band": pa.array([band], pa.int32()), "value": pa.array([0xBEEF], pa.uint64())})
        want = _pairs(near_links(nodes, bands, none, 6, dhash_k=DHASH_K))
        assert want == [(i, i + 1) for i in range(2, n, 3)]          # rids: node index + 1
        sampled: dict = {}
        assert _pairs(near_links(nodes, bands, giant, 6, dhash_k=DHASH_K, sampled=sampled)) == want
        assert sampled["subbands"] == 1
        assert _pairs(near_links(nodes, bands, giant, 6, dhash_k=DHASH_K, subband_budget=0)) == want
        # without the dHash check every node is one component (pHashes within k): what the check prevents
        assert len(_pairs(near_links(nodes, bands, none, 6))) == n - 1


def test_keyed_buckets_over_the_cap_are_reported_and_clusters_do_not_depend_on_row_order():
    rows = [(f"i{i:03d}", _sha(f"i{i}"), _flip(LOW, i % 3, 30), (i * 0x9E3779B97F4A7C15 & ((1 << 48) - 1)) << 16 | 0x1234)
            for i in range(40)]
    rows += [(f"j{i:03d}", _sha(f"j{i}"), LOW, rows[i][3] ^ (1 << 40)) for i in range(0, 40, 4)]   # near copies
    config = DedupConfig(min_bucket_cap=8)
    got, report, clusters = _cluster(rows, config)
    keyed = [b for b in report.giant_buckets if b["hash_kind"] == "dhash-keyed"]
    assert keyed and keyed[0]["value"] == 0x1234 and keyed[0]["size"] == 50
    assert keyed[0]["method"] == "exact" and keyed[0]["linked_by"] == "pair scan"
    for i in range(0, 40, 4):
        assert got[f"j{i:03d}"] == f"i{i:03d}"
    assert len(set(got.values())) == 40
    _, _, again = _cluster(rows[::-1], config)
    assert again.equals(clusters)


def test_near_links_refuses_the_dhash_check_on_nodes_with_several_dhashes():
    nodes = pa.table({"rid": pa.array([1, 1], pa.int64()), "phash": pa.array([LOW, LOW], pa.uint64()),
                      "dhash": pa.array([1, 2], pa.uint64())})
    none = pa.table({"band": pa.array([], pa.int32()), "value": pa.array([], pa.uint64())})
    with pytest.raises(ValueError, match="dhash_k"):
        near_links(nodes, keyed_band_table(), none, 6, dhash_k=DHASH_K)
