"""Hostile review rev24h of commit 6e7a091, the fix of review rev24d in ``pipelines/features/``: ``decode.sniff_format``
with every TIFF signature and ``Image.open(..., formats=<the extension's>)``, the bounded JPEG pre-scan
``decode.scan_jpeg``, ``blobs.write_blob_atomic`` replacing a damaged entry at a training JPEG's key, reused rows (by
uid and by sha256) checking that their training JPEG is there at the recorded size, and ``decode.check_extension`` on
sha256 reuse.

Driven through the real stage (``build_features``: Beam's DirectRunner/FnApiRunner in-process, the real NudeNet
320n model from the ``nudenet`` wheel, real imagehash, Pillow 12.3 with libjpeg-turbo), or through
``decode.decode_image`` / ``blobs.write_blob_atomic`` where only that step is at stake. Each test was a strict
xfail; all seven were fixed the same day (markers removed).

Tried and found sound (no test here): encoder JPEGs Pillow writes (progressive, optimized, a restart marker every
MCU, progressive with restarts, 4:4:4 quality 100, a 60 KB EXIF, a 600 KB ICC profile over ten APP2 segments, a
60 KB comment) all decode; a non-empty folder at a key fails the stage with a one-line error naming it; a JPEG
lost, cut short, linked or replaced by an empty folder is written again (by uid and by sha256); every training JPEG
of three days deleted and the days rerun newest first (reuse by uid from earlier days and the day's own partition,
by sha256): tables and JPEGs byte-identical to before and to a build from scratch; the same shared-block EXIF in a
PNG eXIf chunk or a WebP EXIF chunk is not parsed by Pillow at open (little memory).

Noticed, not filed: every reused row costs one ``lstat`` (a metadata call in a bucket) on every run, as the README
documents; a worker killed between ``create_temp`` and ``os.replace`` leaves a hidden ``.KEY.<hex>.tmp`` in the store
that no run removes (as before the fix); with a blob base given as a URL that a plugin maps onto the local disk
(``file://``, which the config checks as a path) ``write_blob_atomic`` and ``training_jpeg_ok`` take the object-store
branch, which follows a link at a key (LocalFileSystem.create / metadata), not tried end to end.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tracemalloc
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_features_fixtures import png, write_day

from formats.home import DataHome
from pipelines.features import blobs, decode
from pipelines.features.blobs import train_jpg_key, write_blob_atomic
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

DAY1, DAY2 = "2023-03-01", "2023-03-02"
CONFIG = FeaturesConfig(workers=0)   # the stage in this process (Beam's FnApiRunner), the real NudeNet model
LIMITS = CONFIG.decode_limits()


def _rows(home: DataHome, day: str) -> dict[str, dict]:
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, day)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


def _build(home: DataHome, day: str) -> dict[str, dict]:
    """Run the real stage (real Beam, real NudeNet) and return {uid: row} of image_features and image_rejects."""
    build_features(home, day, CONFIG)
    return _rows(home, day)


def _peak_bytes(data: bytes, relpath: str) -> tuple[str | None, int]:
    """(reject reason or None, peak bytes Python allocated) of one decode_image call."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decode.decode_image(data, relpath, **LIMITS)
        reason = None
    except decode.ImageRejected as rejected:
        reason = rejected.reason
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return reason, peak


def _plain_jpeg(side: int = 64) -> bytes:
    """A baseline JPEG without its JFIF APP0 segment (so Pillow takes the dpi from EXIF, as for camera files)."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(out, "JPEG")
    data = out.getvalue()
    assert data[2:4] == b"\xff\xe0"
    return data[:2] + data[4 + int.from_bytes(data[4:6], "big"):]


def _shared_region_ifd(entries: int, region: int, typ: int, unit: int) -> bytes:
    """A little-endian TIFF whose one IFD has ``entries`` distinct tags of type ``typ``, every one pointing at the
    same ``region``-byte block (the rev24d TIFF bomb, now inside a JPEG's metadata)."""
    region_at = 8 + 2 + 12 * entries + 4
    tiff = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries))
    for tag in range(entries):
        tiff += struct.pack("<HHLL", 0x8000 + tag, typ, region // unit, region_at)
    return bytes(tiff + b"\x00\x00\x00\x00" + b"\x01" * region)


def exif_bomb_jpeg(entries: int, region: int) -> bytes:
    """A valid 64 x 64 JPEG whose EXIF (APP1 ``Exif`` segments, which Pillow concatenates) is that TIFF."""
    tiff, segments = _shared_region_ifd(entries, region, 7, 1), b""
    for start in range(0, len(tiff), 65000):
        body = b"Exif\x00\x00" + tiff[start:start + 65000]
        segments += b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    plain = _plain_jpeg()
    return plain[:2] + segments + plain[2:]


def mpf_bomb_jpeg(entries: int) -> bytes:
    """A valid 64 x 64 JPEG with one APP2 ``MPF`` segment (under 64 KB) holding that TIFF with SHORT tags."""
    region = (65533 - 2 - 4 - (8 + 2 + 12 * entries + 4)) // 2 * 2
    body = b"MPF\x00" + _shared_region_ifd(entries, region, 3, 2)
    plain = _plain_jpeg()
    return plain[:2] + b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body + plain[2:]


# ----------------------------------------------------------------- TIFF IFDs inside a JPEG: the bomb rev24d fixed

def test_an_exif_ifd_whose_tags_share_one_block_is_refused_before_pillow_reads_it(tmp_path: Path) -> None:
    bomb = exif_bomb_jpeg(2000, 30000)
    assert len(bomb) < 60_000
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"bomb": bomb, "good": png(3)}, {"bomb": "raw/images/bomb.jpg"})
    rows = _build(home, DAY1)
    assert sorted(rows) == ["bomb", "good"] and rows["good"]["_table"] == "image_features"
    assert rows["bomb"]["_table"] == "image_rejects", "the EXIF bomb was accepted"
    assert rows["bomb"]["reason"] == "decompression_bomb"
    reason, peak = _peak_bytes(bomb, "raw/images/bomb.jpg")
    assert reason == "decompression_bomb"
    assert peak < 16 * 2**20, f"decoding a {len(bomb)} byte .jpg allocated {peak} bytes"


def test_an_mpf_segment_whose_tags_share_one_block_is_refused_before_pillow_decodes_it() -> None:
    bomb = mpf_bomb_jpeg(60)
    assert len(bomb) < 70_000
    reason, peak = _peak_bytes(bomb, "raw/images/mpf.jpg")
    assert reason == "decompression_bomb"
    assert peak < 16 * 2**20, f"decoding a {len(bomb)} byte .jpg allocated {peak} bytes"


# ---------------------------------------------------------------------------------------- the scan cap

def _sos_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan (its SOS segment and entropy-coded data) of an encoder's JPEG."""
    position, scans = 2, []
    while data[position + 1] != 0xD9:
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if data[position + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            scans.append((position, end))
        position = end
    return scans


def test_hundreds_of_scans_over_a_maximum_size_image_are_a_bomb() -> None:
    out = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    scans = _sos_segments(data)
    start, end = scans[-1]
    flood = data[:end] + data[start:end] * 473 + b"\xff\xd9"
    assert len(_sos_segments(flood)) == len(scans) + 473 < decode.MAX_JPEG_SCANS and len(flood) < 100_000
    with pytest.raises(decode.ImageRejected) as rejected:
        decode.decode_image(flood, "raw/images/scans.jpg", **LIMITS)
    assert rejected.value.reason == "decompression_bomb"


# ------------------------------------------------------------------------- data homes built before the fix

class _DecodeBeforeTheFix:
    """``transforms.decode`` as 6e7a091's parent had it for reuse: no extension check on known bytes."""

    def __getattr__(self, name: str):
        return getattr(decode, name)

    @staticmethod
    def check_extension(data: bytes, relpath: str) -> None:
        return None


def test_rows_the_fix_refuses_do_not_survive_in_a_home_built_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_hostile_rev24d import scan_flood_jpeg

    from pipelines.features import transforms

    flood, picture = scan_flood_jpeg(256, 3000), png(7, (64, 64))
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": picture, "s": flood}, {"a": "raw/images/a.png", "s": "raw/images/s.jpg"})
    write_day(home, DAY2, {"b": picture, "t": flood}, {"b": "raw/images/b.jpg", "t": "raw/images/t.jpg"})
    with monkeypatch.context() as before_the_fix:
        before_the_fix.setattr(decode, "scan_jpeg", lambda data: None)
        before_the_fix.setattr(transforms, "decode", _DecodeBeforeTheFix())
        old1, old2 = _build(home, DAY1), _build(home, DAY2)
    assert {uid: row["_table"] for uid, row in (old1 | old2).items()} == dict.fromkeys("abst", "image_features")

    day1, day2 = _build(home, DAY1), _build(home, DAY2)       # the same inputs, the fixed code
    assert day1["a"]["_table"] == "image_features"
    assert (day1["s"]["_table"], day1["s"].get("reason")) == ("image_rejects", "decompression_bomb")
    assert (day2["b"]["_table"], day2["b"].get("reason")) == ("image_rejects", "extension_mismatch")
    assert (day2["t"]["_table"], day2["t"].get("reason")) == ("image_rejects", "decompression_bomb")


# ---------------------------------------------------------------------------------------- the JPEG store

def test_a_damaged_training_jpeg_of_the_recorded_size_is_written_again(tmp_path: Path) -> None:
    data = png(7, (200, 160))
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": data})
    write_day(home, DAY2, {"b": data})                       # the same bytes the next day: reused by sha256
    row = _build(home, DAY1)["a"]
    key = home.root / row["train_jpg_key"]
    good = key.read_bytes()
    assert len(good) == row["train_jpg_bytes"]

    key.write_bytes(bytes(len(good)))                        # same size, other bytes
    again = _build(home, DAY1)["a"]
    assert again == row                                      # the table is the same (it is)
    assert key.read_bytes() == good, "a rerun kept a damaged training JPEG of the recorded size"

    key.write_bytes(bytes(len(good)))
    later = _build(home, DAY2)["b"]
    assert later["reused_from"] == "a" and later["train_jpg_key"] == row["train_jpg_key"]
    assert key.read_bytes() == good, "reuse by sha256 kept a damaged training JPEG of the recorded size"
    Image.open(key).load()


def test_a_key_folder_swapped_for_a_link_mid_write_writes_nothing_outside_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    sha = hashlib.sha256(b"x").hexdigest()
    key = train_jpg_key("blobs/train/s512q90", sha)
    folder = base / os.path.dirname(key)
    folder.mkdir(parents=True)
    real_create_temp = blobs.create_temp
    swapped = []

    def swap_then_create(where, name, *args, **kwargs):
        if not swapped:
            swapped.append(where)
            folder.rename(folder.with_name(folder.name + ".moved"))
            folder.symlink_to(outside)                     # the swap, between the check and the create
        return real_create_temp(where, name, *args, **kwargs)

    monkeypatch.setattr(blobs, "create_temp", swap_then_create)
    try:
        write_blob_atomic(str(base), key, b"\xff\xd8\xff jpeg bytes")
    except OSError:
        pass                                               # refused: as good as a write in the checked folder
    assert swapped, "the write never reached create_temp"
    assert sorted(os.listdir(outside)) == [], "the training JPEG was written through the swapped-in link"


# ---------------------------------------------------------------------------------------- reject details

def test_a_jpeg_whose_header_does_not_parse_gets_pillows_reason_not_a_key_error() -> None:
    for data in (b"hello world, not an image at all", b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40):
        with pytest.raises(decode.ImageRejected) as rejected:
            decode.decode_image(data, "raw/images/x.jpg", **LIMITS)
        assert rejected.value.reason in ("not_an_image", "truncated_image")
        assert "KeyError" not in rejected.value.detail and "'MPO'" not in rejected.value.detail, rejected.value.detail
