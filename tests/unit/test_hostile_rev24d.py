"""Hostile review rev24d of the image fingerprint stage (``pipelines/features/``: ``stage.py``, ``transforms.py``,
``decode.py``, ``nsfw.py``) and the blob store it reads and writes (README section 3), with hostile image bytes.

Driven through the real stage (``build_features``: Beam's FnApiRunner as the DirectRunner builds it, in-process),
the real NudeNet 320n model from the ``nudenet`` wheel (``detector_factory=None``: the stage's own
``DetectorFactory``), real imagehash and Pillow / libspng, or through ``decode.decode_image`` where only the
decode is at stake.

Tried and found sound (no test here): PNG/JPEG/WebP decompression-bomb headers (100000 x 100000 PNG, a
16383 x 16383 WebP canvas), truncated JPEG/WebP/PNG, CMYK JPEG and 16-bit grey PNG (``unsupported_mode``),
palette + tRNS (bytes and index forms, 1/2/4/8 bits), tRNS on RGB and grey, gAMA/sBIT/bKGD (libspng equals
Pillow pixel for pixel), an animated WebP and GIF, zero-byte, text and HTML-appended (polyglot) blobs, a FIFO,
a link to ``/dev/zero``, a link inside the zone, identical pixels in different bytes (equal pHash, different
sha256), six byte-identical duplicates on one day, palette indices past the palette (same on both decoders):
every image lands in ``image_features`` or ``image_rejects`` with its reason, counts reconcile, the tables
are byte-identical in-process and on 2 worker processes, and a rerun reuses every row and rewrites the
same bytes.

Each test below reproduced one confirmed defect as a strict xfail; all six were fixed the same day (markers removed).
"""
from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_features_fixtures import png, write_day

from formats.home import DataHome
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

DAY1, DAY2 = "2023-03-01", "2023-03-02"
CONFIG = FeaturesConfig(workers=0)   # the stage in this process (Beam's FnApiRunner), the real NudeNet model
LIMITS = CONFIG.decode_limits()


def _build(home: DataHome, day: str) -> dict[str, dict]:
    """Run the real stage (real Beam, real NudeNet) and return {uid: row} of image_features and image_rejects."""
    build_features(home, day, CONFIG)
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, day)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


def _day(home: DataHome, day: str, blobs: dict[str, tuple[str, bytes]]) -> None:
    """Write each uid's bytes at its own blob path and the day's images partition naming those paths."""
    home.raw_images.mkdir(parents=True, exist_ok=True)
    for relpath, data in blobs.values():
        (home.root / relpath).write_bytes(data)
    write_day(home, day, {}, {uid: relpath for uid, (relpath, _) in blobs.items()})


def _peak_bytes(data: bytes, relpath: str) -> tuple[str | None, int]:
    """(reject reason or None, peak bytes Python allocated) of one decode_image call."""
    tracemalloc.start()
    try:
        decode.decode_image(data, relpath, **LIMITS)
        reason = None
    except decode.ImageRejected as rejected:
        reason = rejected.reason
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return reason, peak


# --------------------------------------------------------------------------------------------- TIFF in .png

def _tiff_shared_region(tags: int, region: int) -> bytes:
    """A TIFF with Pillow's accepted "invalid" little-endian header ``II\\x00\\x2a`` (not in decode.sniff_format's
    signatures): ``tags`` distinct BYTE tags whose ``region``-byte values all point at the same bytes."""
    entries = [struct.pack("<HHL4s", 256, 4, 1, struct.pack("<L", 64)), struct.pack("<HHL4s", 257, 4, 1, struct.pack("<L", 64))]
    entries += [struct.pack("<HHLL", 40000 + i, 1, region, 8) for i in range(tags)]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<L", 0)
    return b"II\x00\x2a" + struct.pack("<L", 8 + region) + b"\x01" * region + ifd


def _bigtiff_header(width: int, height: int) -> bytes:
    """A BigTIFF (``II\\x2b\\x00``, not in decode.sniff_format's signatures) whose first IFD declares ``width`` x ``height``."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 1)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *entry) for entry in entries) + struct.pack("<Q", 0)
    return b"II\x2b\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) + ifd


def test_tiff_variants_in_a_png_blob_are_never_parsed_as_tiff(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    shared = _tiff_shared_region(300, 200_000)          # 200 KB blob
    _day(home, DAY1, {"bigtiff": ("raw/images/bigtiff.png", _bigtiff_header(100_000, 100_000)),
                      "tiffvariant": ("raw/images/tiffvariant.png", shared),
                      "good": ("raw/images/good.png", png(1, (96, 80)))})
    rows = _build(home, DAY1)
    assert sorted(rows) == ["bigtiff", "good", "tiffvariant"]        # counts reconcile (they do)
    assert rows["good"]["_table"] == "image_features"
    for uid in ("bigtiff", "tiffvariant"):
        assert rows[uid]["_table"] == "image_rejects"
        assert rows[uid]["reason"] in ("extension_mismatch", "not_an_image"), (uid, rows[uid]["reason"], rows[uid]["detail"])
    reason, peak = _peak_bytes(shared, "raw/images/tiffvariant.png")
    assert reason in ("extension_mismatch", "not_an_image")
    assert peak < 16 * 2**20, f"decoding a {len(shared)} byte .png blob allocated {peak} bytes"


# ------------------------------------------------------------------------------------- the training JPEG store

def test_a_damaged_training_jpeg_at_the_key_is_replaced_not_kept(tmp_path: Path) -> None:
    data = png(7, (600, 600))
    fresh = DataHome(tmp_path / "fresh")
    _day(fresh, DAY1, {"a": ("raw/images/a.png", data)})
    expected = _build(fresh, DAY1)["a"]
    expected_jpeg = (fresh.root / expected["train_jpg_key"]).read_bytes()
    assert len(expected_jpeg) == expected["train_jpg_bytes"]

    home = DataHome(tmp_path / "home")
    _day(home, DAY1, {"a": ("raw/images/a.png", data)})
    key = home.root / CONFIG.train_prefix / expected["sha256"][:2] / f"{expected['sha256']}.jpg"
    assert expected["train_jpg_key"] == str(key.relative_to(home.root))
    key.parent.mkdir(parents=True)
    key.write_bytes(expected_jpeg[: len(expected_jpeg) // 3])     # what an interrupted copy leaves
    row = _build(home, DAY1)["a"]
    assert row["_table"] == "image_features" and row["train_jpg_key"] == expected["train_jpg_key"]
    assert key.stat().st_size == row["train_jpg_bytes"]
    assert key.read_bytes() == expected_jpeg
    Image.open(key).load()


def test_a_rerun_restores_a_training_jpeg_that_went_missing(tmp_path: Path) -> None:
    data = png(7, (64, 64))
    home = DataHome(tmp_path / "home")
    _day(home, DAY1, {"a": ("raw/images/a.png", data)})
    _day(home, DAY2, {"b": ("raw/images/b.png", data)})        # the same bytes on the next day: reused by sha256
    row = _build(home, DAY1)["a"]
    key = home.root / row["train_jpg_key"]
    jpeg = key.read_bytes()
    key.unlink()
    again = _build(home, DAY1)["a"]
    assert again == row                                          # the rerun's table is the same (it is)
    assert key.is_file() and key.read_bytes() == jpeg
    key.unlink()
    later = _build(home, DAY2)["b"]
    assert later["reused_from"] == "a" and later["train_jpg_key"] == row["train_jpg_key"]
    assert key.is_file() and key.read_bytes() == jpeg


# ------------------------------------------------------------------------------------------ JPEG marker flood

def test_a_flood_of_jpeg_markers_is_refused_before_pillow_walks_and_keeps_them() -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(out, "JPEG")
    good = out.getvalue()
    flood = good[:2] + b"\xff\xfe\x00\x02" * 500_000 + good[2:]   # SOI, then empty COM segments, then the JPEG
    reason, peak = _peak_bytes(flood, "raw/images/flood.jpg")
    assert reason == "decompression_bomb"
    assert peak < 8 * 2**20, f"decoding a {len(flood)} byte JPEG allocated {peak} bytes"


# -------------------------------------------------------------------------------------- progressive scan flood

def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG; an SOS segment runs to the end of its entropy-coded data."""
    position, segments = 2, []
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, position, position + 2))
            break
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        segments.append((marker, position, end))
        position = end
    return segments


def scan_flood_jpeg(side: int, repeats: int) -> bytes:
    """A valid progressive grey JPEG of ``side`` x ``side`` whose last scan is repeated ``repeats`` more times."""
    out = io.BytesIO()
    Image.new("L", (side, side), 128).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    segments = _jpeg_segments(data)
    _, start, end = [segment for segment in segments if segment[0] == 0xDA][-1]
    return data[:segments[-1][1]] + data[start:end] * (1 + repeats) + b"\xff\xd9"


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused() -> None:
    flood = scan_flood_jpeg(256, 3000)
    assert sum(1 for marker, _, _ in _jpeg_segments(flood) if marker == 0xDA) > 3000
    with pytest.raises(decode.ImageRejected) as rejected:
        decode.decode_image(flood, "raw/images/scans.jpg", **LIMITS)
    assert rejected.value.reason == "decompression_bomb"


# ----------------------------------------------------------------------- reuse by sha256 skips the extension

def test_reuse_by_sha256_applies_the_extension_rule(tmp_path: Path) -> None:
    data = png(7, (64, 64))
    scratch = DataHome(tmp_path / "scratch")
    _day(scratch, DAY2, {"b": ("raw/images/b.jpg", data), "c": ("raw/images/c.gif", data)})
    alone = _build(scratch, DAY2)
    assert {uid: row["reason"] for uid, row in alone.items()} == {"b": "extension_mismatch", "c": "extension_mismatch"}

    home = DataHome(tmp_path / "home")
    _day(home, DAY1, {"a": ("raw/images/a.png", data)})
    _day(home, DAY2, {"b": ("raw/images/b.jpg", data), "c": ("raw/images/c.gif", data)})
    assert _build(home, DAY1)["a"]["_table"] == "image_features"
    after = _build(home, DAY2)
    assert {uid: (row["_table"], row.get("reason")) for uid, row in after.items()} == {
        "b": ("image_rejects", "extension_mismatch"), "c": ("image_rejects", "extension_mismatch")}
