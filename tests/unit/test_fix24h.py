"""The rev24h fixes beyond the review's own tests (``test_hostile_rev24h.py``): EXIF and MPF TIFF directories bounded
in the JPEG pre-scan (``decode.scan_jpeg`` / ``decode.tiff_tag_data``), the scan cap scaled by the frame's size,
reused rows judged again from their bytes, the training-JPEG check on reuse, and glob characters in a staging path.
The stage runs for real (Beam's in-process runner, the real NudeNet model), as in the review's tests."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_features_fixtures import encode, natural_image, png, write_day
from test_hostile_rev24d import scan_flood_jpeg
from test_hostile_rev24h import _shared_region_ifd, exif_bomb_jpeg

from formats.home import DataHome
from pipelines.features import decode, staging, transforms
from pipelines.features.blobs import training_jpeg_ok, write_blob_atomic
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

LIMITS = FeaturesConfig().decode_limits()
CONFIG = FeaturesConfig(workers=0)
DAY1, DAY2 = "2023-03-01", "2023-03-02"


def outcome(data: bytes, relpath: str = "raw/images/x.jpg") -> str:
    try:
        decode.decode_image(data, relpath, **LIMITS)
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


def _rows(home: DataHome, day: str) -> dict[str, dict]:
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, day)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


def _build(home: DataHome, day: str) -> dict[str, dict]:
    build_features(home, day, CONFIG)
    return _rows(home, day)


def _with_app(data: bytes, marker: int, body: bytes) -> bytes:
    return data[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body + data[2:]


# ------------------------------------------------------------------------------------- EXIF and MPF directories

def test_a_cameras_exif_and_an_mpo_pass_the_pre_scan() -> None:
    """Real metadata: Pillow's own EXIF writer (several tags, a sub-IFD, a 30 KB maker note) and an MPO Pillow
    writes (its MP index read by Pillow, JPEG's factory making it an MPO: two frames, animated_image)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x011A], exif[0x0128] = "Camera", "Model 9", 72.0, 2
    exif.get_ifd(0x8769)[0x927C] = b"\x01" * 30_000              # MakerNote in the Exif sub-IFD
    data = encode(natural_image(2), "JPEG", exif=exif.tobytes())
    assert decode.scan_jpeg(data) is None and outcome(data) == "accepted"
    out = io.BytesIO()
    natural_image(1, (64, 64)).save(out, "MPO", save_all=True, append_images=[natural_image(2, (64, 64))])
    assert b"MPF\x00" in out.getvalue() and decode.scan_jpeg(out.getvalue()) is None
    assert Image.open(io.BytesIO(out.getvalue()), formats=["JPEG"]).format == "MPO"
    assert outcome(out.getvalue()) == "animated_image"             # an MPO, judged as ever (two frames)


def test_an_exif_split_over_several_segments_is_judged_whole() -> None:
    bomb = exif_bomb_jpeg(3000, 120_000)                          # three APP1 segments, joined as Pillow joins them
    assert bomb.count(b"Exif\x00\x00") == 3
    assert "EXIF TIFF directory" in decode.scan_jpeg(bomb) and outcome(bomb) == "decompression_bomb"


def test_the_exif_sub_directories_are_bounded_too() -> None:
    """The shared-block tags in the Exif sub-IFD (which Pillow reads when asked for it), not in IFD0."""
    inner = _shared_region_ifd(500, 20_000, 7, 1)                 # a TIFF: header, IFD at 8, data
    ifd0_at, sub_at = 8, 8 + 2 + 12 + 4
    shift = sub_at - 8
    sub = bytearray(inner[8:])                                    # that IFD and its data, moved to sub_at
    entries = struct.unpack_from("<H", sub)[0]
    for index in range(entries):
        at = 2 + 12 * index + 8
        struct.pack_into("<L", sub, at, struct.unpack_from("<L", sub, at)[0] + shift)
    tiff = (b"II*\x00" + struct.pack("<L", ifd0_at) + struct.pack("<H", 1)
            + struct.pack("<HHLL", 0x8769, 4, 1, sub_at) + b"\x00" * 4 + bytes(sub))
    assert decode.tiff_tag_data(tiff, follow=False) == 0
    assert decode.tiff_tag_data(tiff, follow=True) == 500 * 20_000
    data = _with_app(encode(natural_image(1), "JPEG"), 0xE1, b"Exif\x00\x00" + tiff)
    assert outcome(data) == "decompression_bomb"


def test_more_than_4_mib_of_exif_segments_is_a_bomb() -> None:
    body = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00\x00\x00" + b"\x00" * 65_000
    good = encode(natural_image(1), "JPEG")
    many = good[:2] + (b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body) * 66 + good[2:]
    assert "bytes of EXIF segments" in decode.scan_jpeg(many) and outcome(many) == "decompression_bomb"
    few = good[:2] + (b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body) * 3 + good[2:]
    assert decode.scan_jpeg(few) is None


def test_tiff_tag_data_counts_only_what_pillow_would_copy() -> None:
    tiff = _shared_region_ifd(10, 1000, 7, 1)
    assert decode.tiff_tag_data(tiff, False) == 10 * 1000
    assert decode.tiff_tag_data(b"II+\x00" + tiff[4:], False) == 0      # BigTIFF: Pillow cannot read it from 8 bytes
    assert decode.tiff_tag_data(b"XX*\x00" + tiff[4:], False) == 0      # not a TIFF header
    short = bytearray(tiff)
    struct.pack_into("<HHLL", short, 10, 0x8000, 7, 50_000, len(tiff) - 100)   # declared past the end: clipped
    assert decode.tiff_tag_data(bytes(short), False) == 9 * 1000 + 100
    inline = b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 1) + struct.pack("<HHL4s", 1, 3, 2, b"\x01\x00\x02\x00")
    assert decode.tiff_tag_data(inline + b"\x00" * 4, False) == 0      # data inside the entry: nothing copied


# ------------------------------------------------------------------------------------------------ scan cap

def test_the_scan_cap_falls_with_the_image_size() -> None:
    assert decode.jpeg_scan_cap(0, 0) == decode.MAX_JPEG_SCANS
    assert decode.jpeg_scan_cap(1024, 1024) == decode.MAX_JPEG_SCANS
    assert decode.jpeg_scan_cap(4096, 4096) == 64
    assert decode.jpeg_scan_cap(2048, 2048) == 256
    assert decode.jpeg_scan_cap(65535, 65535) == decode.MIN_JPEG_SCANS


def test_encoder_progressive_jpegs_of_the_largest_size_pass_and_a_few_scans_more_do_not() -> None:
    for mode in ("RGB", "L"):
        out = io.BytesIO()
        Image.new(mode, (4096, 4096), 90).save(out, "JPEG", progressive=True, quality=95)
        assert decode.scan_jpeg(out.getvalue()) is None
    out = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last = data.rindex(b"\xff\xda")
    tail = data[last:-2]
    assert data.count(b"\xff\xda") == 6
    assert decode.scan_jpeg(data[:-2] + tail * 58 + b"\xff\xd9") is None                  # 64 scans
    assert "more than 64 scans" in decode.scan_jpeg(data[:-2] + tail * 59 + b"\xff\xd9")  # 65
    assert decode.scan_jpeg(scan_flood_jpeg(64, 400)) is None                             # small: up to 500


# --------------------------------------------------------------------------------- reuse judged again

def test_a_reused_jpeg_row_whose_bytes_pass_is_the_same_row_and_no_decode_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(natural_image(4, (120, 100)), "JPEG")
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"j": data, "p": png(5)}, {"j": "raw/images/j.jpg"})
    first = _build(home, DAY1)
    before = home.partition_file("image_features", DAY1).read_bytes()
    decodes = []
    real = decode.decode_image
    monkeypatch.setattr(decode, "decode_image", lambda *a, **k: decodes.append(a[1]) or real(*a, **k))
    again = _build(home, DAY1)
    assert again == first and decodes == []                      # read and pre-scanned, never decoded
    assert home.partition_file("image_features", DAY1).read_bytes() == before


def test_a_flood_known_by_sha256_from_a_home_built_before_the_fix_is_not_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Day 1 built before the fix kept a scan flood; day 2 (first built now) has the same bytes at a new uid."""
    flood = scan_flood_jpeg(256, 3000)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"s": flood, "a": png(3)}, {"s": "raw/images/s.jpg"})
    write_day(home, DAY2, {"t": flood}, {"t": "raw/images/t.jpg"})
    with monkeypatch.context() as before_the_fix:
        before_the_fix.setattr(decode, "scan_jpeg", lambda data: None)
        assert _build(home, DAY1)["s"]["_table"] == "image_features"
    day2 = _build(home, DAY2)
    assert (day2["t"]["_table"], day2["t"]["reason"]) == ("image_rejects", "decompression_bomb")
    assert "scans" in day2["t"]["detail"]


def test_a_reused_jpeg_whose_blob_changed_under_its_uid_is_computed_afresh(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"j": encode(natural_image(4), "JPEG")}, {"j": "raw/images/j.jpg"})
    first = _build(home, DAY1)["j"]
    other = encode(natural_image(9), "JPEG")
    (home.root / "raw/images/j.jpg").write_bytes(other)
    again = _build(home, DAY1)["j"]
    scratch = DataHome(tmp_path / "scratch")
    write_day(scratch, DAY1, {"j": other}, {"j": "raw/images/j.jpg"})
    assert again["sha256"] != first["sha256"] and again == _build(scratch, DAY1)["j"]


# --------------------------------------------------------------------------------- the training JPEG check

def test_training_jpeg_ok_needs_both_jpeg_markers(tmp_path: Path) -> None:
    key = "blobs/train/s512q90/ab/" + "ab" * 32 + ".jpg"
    data = encode(natural_image(1), "JPEG")
    write_blob_atomic(str(tmp_path), key, data)
    path = tmp_path / key
    assert training_jpeg_ok(str(tmp_path), key, len(data))
    path.write_bytes(data[:len(data) // 2] + bytes(len(data) - len(data) // 2))   # a preallocated copy cut short
    assert not training_jpeg_ok(str(tmp_path), key, len(data))
    path.write_bytes(bytes(len(data)))                                           # zeros
    assert not training_jpeg_ok(str(tmp_path), key, len(data))
    assert not training_jpeg_ok(str(tmp_path), key, 2)
    write_blob_atomic(str(tmp_path), key, data)
    assert path.read_bytes() == data and training_jpeg_ok(str(tmp_path), key, len(data))


def test_a_reused_rows_zero_tailed_jpeg_is_written_again_and_the_store_matches_a_build_from_scratch(
        tmp_path: Path) -> None:
    data = png(7, (200, 160))
    home, scratch = DataHome(tmp_path / "home"), DataHome(tmp_path / "scratch")
    for target in (home, scratch):
        write_day(target, DAY1, {"a": data})
        write_day(target, DAY2, {"b": data})
    row = _build(home, DAY1)["a"]
    key = home.root / row["train_jpg_key"]
    good = key.read_bytes()
    key.write_bytes(good[:100] + bytes(len(good) - 100))
    assert _build(home, DAY2)["b"]["reused_from"] == "a" and key.read_bytes() == good
    _build(scratch, DAY1)
    _build(scratch, DAY2)
    assert (scratch.root / row["train_jpg_key"]).read_bytes() == good
    for day in (DAY1, DAY2):
        assert (home.partition_file("image_features", day).read_bytes()
                == scratch.partition_file("image_features", day).read_bytes())


# ------------------------------------------------------------------------------ glob characters in paths

def test_a_home_whose_path_holds_glob_characters_builds_and_reads_only_its_own_staging(tmp_path: Path) -> None:
    decoy = DataHome(tmp_path / "homes1" / "home")                # what "homes[1]" matches as a character class
    home = DataHome(tmp_path / "homes[1]" / "home")
    write_day(decoy, DAY1, {"x": png(1), "y": png(2)})
    write_day(home, DAY1, {"a": png(3), "b": encode(natural_image(4), "JPEG")}, {"b": "raw/images/b.jpg"})
    decoy_out = decoy.root / ".staging/features/dt=2023-03-01/out"
    decoy_out.mkdir(parents=True)
    (decoy_out / "part-00000-of-00001.parquet").write_bytes(b"not a parquet file")
    rows = _build(home, DAY1)
    assert {uid: row["_table"] for uid, row in rows.items()} == {"a": "image_features", "b": "image_features"}
    assert (decoy_out / "part-00000-of-00001.parquet").read_bytes() == b"not a parquet file"


def test_glob_literal_escapes_paths_and_urls() -> None:
    assert staging.glob_literal("/data/homes[1]/a*b?") == "/data/homes[[]1]/a[*]b[?]"
    assert staging.glob_literal("gs://bucket/homes[1]/x") == "gs://bucket/homes[[]1]/x"
    assert staging.glob_literal("/plain/path") == "/plain/path"


def test_the_decoder_opens_jpegs_as_jpeg_only() -> None:
    assert decode.OPEN_FORMATS[".jpg"] == decode.OPEN_FORMATS[".jpeg"] == ("JPEG",)
    assert decode.EXTENSION_FORMATS[".jpg"] == ("JPEG", "MPO")     # an MPO (JPEG's factory) is still accepted
    assert transforms.decode is decode


def test_a_staging_path_with_glob_characters_reaches_beam_through_a_private_alias(tmp_path: Path) -> None:
    folder = tmp_path / "stage[1]"
    folder.mkdir()
    (folder / "todo.parquet").write_bytes(b"x")
    with staging.beam_visible(str(folder)) as visible:
        assert visible != str(folder) and not any(ch in visible for ch in "[]*?")
        assert Path(visible, "todo.parquet").read_bytes() == b"x"
    assert not Path(visible).exists() and not Path(visible).parent.exists()
    with staging.beam_visible(str(tmp_path / "plain")) as visible:
        assert visible == str(tmp_path / "plain")
    with pytest.raises(staging.StagingRefused, match="glob character"), staging.beam_visible("gs://bucket/a[1]"):
        pass
