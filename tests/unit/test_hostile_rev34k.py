"""Hostile review rev34k: second pass over fix34b's duplicate clusters (README section 4 "Duplicate clusters", section 9
the rev34b bullet; ``pipelines/curation/dedup.py``'s informative pHash, ``PHASH_ODD_U_BITS`` / ``PHASH_ODD_V_BITS``,
``dhash_keyed_links``; ``sql/dedup_hashes.sql``, ``sql/dedup_exact_edges.sql``, ``sql/dedup_keyed_nodes.sql``), attacked
for FALSE MERGES of distinct images.

Driven by real components: real Pillow images (random-shapes compositions mirrored left-right, the same with a small
black signature bar / white dot / "AI art" text in a corner, 4-fold kaleidoscopes of a quadrant, minimalist centred
emblems - an ellipse, rectangle or diamond of random colour and size on a plain ground of another colour), hashed
by the real ``perceptual_hashes`` (real ``imagehash``), clustered by the real ``cluster_features`` (DuckDB, numpy,
scipy) and, for the end-to-end case, ``build_clusters`` / ``build_decisions`` / ``build_pairs`` on a small
literal-row home (``curation_fixtures.HomeBuilder``).

Measured (512 px): 120 exact left-right mirrors: 0 informative (116 keyed, 4 bytes only), 23 pairs within 6 on the
pHash, none clustered (the fix holds). The same 120 with a small corner mark: all 120 informative (31 bits: the mark's tiny odd DCT terms are
tie-breaks), pairs within 6 on the pHash alone - dot 32, "AI art" text 19, a 70x10 black bar 57 - whose dHashes are
0-31 apart (all but 11 of the 108 more than 3); 120 with the bar: clusters of 12, 3 and 11 pairs (two of them equal pHashes, grouped directly);
300: clusters of 53, 4, 4, 4, 4, 3 ... (keyed: 0). 300 centred emblems: 133 in
duplicate clusters, the largest 23, though every one differs in colour, shape or size (their pHashes all carry
imagehash's near-fixed tie-break pattern, 0x99666699...: 31 bits, 16 odd). 400 4-fold kaleidoscopes: 309 keyed, 20
keyed pairs within 6 AND 3 (most at pHash 0, dHash 0-2: a 4-fold symmetric dHash has ~16 free bits, each counted
2-4 times), largest cluster 6.

Held (no test): exact left-right mirrors of textured images are no longer clustered on the pHash; keyed links need
both distances; clusters do not depend on row order (fix34b's tests). Hand-drawn centred logos of large size (a red
circle on navy, a yellow diamond on green, a white square on black, ...) stay 14-50 bits apart.

Noticed, not filed: the root cause of tests 1 and 2 is one: ``informative`` trusts odd DCT bits that a tiny
asymmetry (a signature, a 1-pixel rounding of a centred shape) sets as tie-breaks, so the pHash alone decides while
the dHash (more than 3 bits apart in 97 of 108 false signed pairs, 17 of 20 emblem pairs) is never consulted for an
informative pair; a second check
on the dHash for pHash-near pairs would separate most of them, not all (5 of the 57 signed-bar pairs are within 3 on
the dHash too: the dHash of a near-symmetric image is half determined as well), at a recall cost to be measured. Time/memory at 1M hashes held:
``cluster_features`` on 1M random hashes (2 threads) 4.2 s, peak RSS 1.2 GB (mostly the input table); with 30% of them
symmetric-like (keyed: 300,013) 3.4 s, 1.2 GB; not compared against pre-fix34b code (no ``--quick`` in
``benchmarks/dedup.py``; the machine is shared).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Tests 1 and 3 were fixed the same day (fix34k, ``tests/unit/test_fix34k.py``) and their
markers removed: a textured dHash that is a left-right or top-bottom mirror's (``MIRROR_LR_BITS``,
``MIRROR_TB_BITS``) makes the pHash not informative (keyed: pHash AND dHash), a mirror both ways is clustered by
bytes only; test 3's keyed count was changed to that (0 keyed, 4 bytes-only). Test 2 keeps its marker: 8 of the 120
signed renders (a pair, a chain of 6) are within k on the pHash AND within DHASH_K on the dHash; no threshold on these
two hashes separates them without losing real re-encodes.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import io
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all
from dedup_fixtures import shapes_image
from PIL import Image, ImageDraw, ImageOps

from pipelines.curation.dedup import DedupConfig, cluster_features
from pipelines.features.derive import perceptual_hashes
from pipelines.sqlrun import connect


def _bits(value: int) -> int:
    return bin(value).count("1")


def _features(rows):
    """rows: (image_uid, sha256, phash, dhash)."""
    return pa.table({
        "image_uid": [r[0] for r in rows], "sha256": [r[1] for r in rows],
        "phash": pa.array([r[2] for r in rows], pa.uint64()), "dhash": pa.array([r[3] for r in rows], pa.uint64()),
        "dt": pa.array([datetime.date(2023, 3, 1)] * len(rows), pa.date32()),
        "blob_path": [f"raw/images/{r[0]}.png" for r in rows],
    })


def _cluster(images: dict[str, Image.Image]):
    rows = [(uid, hashlib.sha256(uid.encode()).hexdigest(), *perceptual_hashes(img)) for uid, img in images.items()]
    clusters, report = cluster_features(connect({"image_features": _features(rows)}), DedupConfig())
    return {r["image_uid"]: r["cluster_id"] for r in clusters.to_pylist()}, report


def _encoded(img: Image.Image) -> tuple[Image.Image, str]:
    out = io.BytesIO()
    img.save(out, "PNG")
    data = out.getvalue()
    return Image.open(io.BytesIO(data)).convert("RGB"), hashlib.sha256(data).hexdigest()


def _logo(ground, colour, shape: str, w: int, h: int, size: int = 512) -> Image.Image:
    """A minimalist centred emblem: one shape of half-size ``w`` x ``h`` on a plain ground."""
    img = Image.new("RGB", (size, size), ground)
    draw, c = ImageDraw.Draw(img), size // 2
    if shape == "ellipse":
        draw.ellipse([c - w, c - h, c + w, c + h], fill=colour)
    elif shape == "rect":
        draw.rectangle([c - w, c - h, c + w, c + h], fill=colour)
    else:
        draw.polygon([(c, c - h), (c + w, c), (c, c + h), (c - w, c)], fill=colour)
    return img


def _random_logo(seed: int) -> Image.Image:
    r = random.Random(seed)
    ground = tuple(r.randrange(256) for _ in range(3))
    w, h = r.randint(20, 200), r.randint(20, 200)
    colour = tuple(r.randrange(256) for _ in range(3))
    return _logo(ground, colour, ("ellipse", "rect", "diamond")[r.randrange(3)], w, h)


def _mirrored(seed: int, size: int = 512) -> Image.Image:
    im = shapes_image(seed, size)
    left = im.crop((0, 0, size // 2, size))
    out = Image.new("RGB", (size, size))
    out.paste(left, (0, 0))
    out.paste(ImageOps.mirror(left), (size // 2, 0))
    return out


def _signed(img: Image.Image) -> Image.Image:
    """The image with a small black signature bar in its bottom-right corner (70 x 10 px of 512)."""
    img = img.copy()
    ImageDraw.Draw(img).rectangle([img.width - 80, img.height - 20, img.width - 10, img.height - 10], fill=(0, 0, 0))
    return img


def _kaleidoscope(seed: int, size: int = 512) -> Image.Image:
    """A 4-fold symmetric image: the top-left quadrant of a random-shapes image mirrored both ways."""
    q = shapes_image(seed, size).crop((0, 0, size // 2, size // 2))
    out = Image.new("RGB", (size, size))
    out.paste(q, (0, 0))
    out.paste(ImageOps.mirror(q), (size // 2, 0))
    out.paste(ImageOps.flip(q), (0, size // 2))
    out.paste(ImageOps.flip(ImageOps.mirror(q)), (size // 2, size // 2))
    return out


# --- 1. two different minimalist logos on plain grounds are one cluster: a user's real preference is dropped -------

def test_two_different_centred_logos_are_not_one_cluster_and_their_pair_is_kept(tmp_path):
    a, a_sha = _encoded(_logo((148, 15, 107), (203, 192, 68), "ellipse", 85, 32))    # yellow ellipse on magenta
    b, b_sha = _encoded(_logo((100, 105, 102), (230, 207, 180), "rect", 30, 69))      # cream upright bar on grey
    (pa_, da), (pb_, db) = perceptual_hashes(a), perceptual_hashes(b)
    # measured: pHash 2 bits apart (both 31 bits, informative), dHash 20 apart: nothing alike but the centring
    assert _bits(pa_ ^ pb_) <= 6 and _bits(da ^ db) >= 16
    hb = HomeBuilder(tmp_path)
    prompt = "a minimalist flat logo, centred"
    for uid, img, sha in (("a-logo", a, a_sha), ("b-logo", b, b_sha)):
        phash, dhash = perceptual_hashes(img)
        hb.image(uid, phash=phash, sha=sha, user=1, prompt=prompt)
        for row in hb.features["2023-03-01"]:
            if row["image_uid"] == uid:
                row["dhash"] = dhash
    hb.ranking(1, ["a-logo", "b-logo"], "a-logo", user=1, prompt=prompt)
    home = hb.write()
    build_all(home)
    clusters = {r["image_uid"]: r["cluster_id"] for r in pq.read_table(home.table_file("duplicate_clusters")).to_pylist()}
    reasons = {d["reason"] for d in pq.read_table(home.table_file("decisions")).to_pylist()}
    assert clusters["a-logo"] != clusters["b-logo"]                  # measured: one cluster 'a-logo'
    assert "same_cluster" not in reasons
    assert pq.read_table(home.table_file("pairs")).num_rows == 1      # measured: 0, the preference dropped

    # and at scale: 60 random centred emblems (each differs in ground colour, shape colour, shape or size)
    clusters, report = _cluster({f"e{seed:03d}": _random_logo(seed) for seed in range(60)})
    assert report.largest_cluster == 1, report.size_histogram        # measured: clusters of 5, 4, 4, 2, 2


# --- 2. symmetric renders with a small corner signature chain into one big cluster ----------------------------------

@pytest.mark.xfail(strict=True, reason="rev34k, after fix34k: the signed renders are told mirrors by their dHash "
                   "and need pHash within k AND dHash within DHASH_K; 8 of 120 (a pair and a chain of 6) are close on "
                   "both and still clustered (and keyed, not informative): unattainable with these two hashes")
def test_symmetric_renders_with_a_corner_signature_do_not_chain_into_one_cluster():
    images = {f"s{seed:03d}": _signed(_mirrored(seed)) for seed in range(120)}
    clusters, report = _cluster(images)
    sizes = collections.Counter(collections.Counter(clusters.values()).values())
    assert report.dhash_keyed_images == 0                            # measured: all informative, none keyed
    # correct: distinct renders are not near duplicates (without the bar none of them is clustered, fix34b)
    assert report.largest_cluster == 1, sorted(sizes.items())     # measured: 12, 3 and 11 pairs (two at pHash 0)


# --- 3. the keyed search merges distinct 4-fold symmetric emblems (pHash 0 apart, dHash 0-2) ------------------------

def test_distinct_kaleidoscope_emblems_are_not_near_duplicates_in_the_keyed_search():
    pairs = [(57, 168), (86, 258)]     # a faint green bow-tie on green / a pink lens on teal; a pale double lens on
    #                                    green / a cyan lens on blue (different colours and shapes)
    images = {f"k{seed:03d}": _kaleidoscope(seed) for pair in pairs for seed in pair}
    hashes = {uid: perceptual_hashes(img) for uid, img in images.items()}
    for a, b in pairs:
        (pa_, da), (pb_, db) = hashes[f"k{a:03d}"], hashes[f"k{b:03d}"]
        assert _bits(pa_ ^ pb_) == 0 and _bits(da ^ db) <= 2          # measured: 0 and 2, 0 and 0
    clusters, report = _cluster(images)
    # fix34k: was ``dhash_keyed_images == 4`` (the path they took when filed, not the correct behaviour): their dHash
    # is a mirror's both ways, so they are clustered by bytes only, as flat images are (no hash tells them apart)
    assert report.dhash_keyed_images == 0 and report.low_information_images == 4
    for a, b in pairs:
        assert clusters[f"k{a:03d}"] != clusters[f"k{b:03d}"]         # measured: one cluster each pair
