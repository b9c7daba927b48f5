"""The rev24d fixes beyond the review's own tests (``test_hostile_rev24d.py``): the extension check and the
formats Pillow is given, the JPEG marker walk (``decode.scan_jpeg``), the training-JPEG store
(``blobs.write_blob_atomic``) and reuse that checks the JPEG it names."""
from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from PIL import Image, TiffImagePlugin
from test_features_fixtures import encode, fake_detector, natural_image, png, write_day

from formats.home import DataHome
from pipelines.features import decode, transforms
from pipelines.features.blobs import train_jpg_key, training_jpeg_ok, write_blob_atomic
from pipelines.features.config import FeaturesConfig
from pipelines.features.reuse import earlier_partitions, known_digests, known_jpeg_bytes
from pipelines.features.stage import build_features

LIMITS = FeaturesConfig().decode_limits()
CONFIG = FeaturesConfig(workers=0)
DAY1, DAY2 = "2023-03-01", "2023-03-02"


def jpeg(image: Image.Image | None = None, **params) -> bytes:
    return encode(image or natural_image(3, (96, 80)), "JPEG", **params)


def outcome(data: bytes, relpath: str = "raw/images/x.jpg") -> str:
    try:
        decode.decode_image(data, relpath, **LIMITS)
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


# ---------------------------------------------------------------------------------- formats and extensions

@pytest.mark.parametrize("prefix", TiffImagePlugin.PREFIXES)
def test_every_tiff_prefix_pillow_accepts_is_sniffed_as_tiff(prefix: bytes) -> None:
    data = prefix + b"\x00" * 60
    assert decode.sniff_format(data) == "TIFF" and data.startswith(decode.SIGNATURES)
    for extension in (".png", ".jpg", ".webp"):
        assert outcome(data, f"raw/images/t{extension}") == "extension_mismatch"


def test_every_format_pillow_can_open_here_is_sniffed_first() -> None:
    """What each probed format's plugin accepts (its ``_accept``) is what sniff_format names, so a blob's format is
    judged before any plugin parses it: real files of each format, through Pillow's own accept functions."""
    from PIL import Image as PILImage

    PILImage.init()
    samples = {"PNG": encode(natural_image(1), "PNG"), "JPEG": jpeg(), "WEBP": encode(natural_image(1), "WEBP"),
               "GIF": encode(natural_image(1), "GIF"), "BMP": encode(natural_image(1), "BMP"),
               "TIFF": encode(natural_image(1), "TIFF")}
    for name, data in samples.items():
        assert decode.sniff_format(data) == name
        accepting = [fmt for fmt in decode.PROBED_FORMATS if PILImage.OPEN[fmt][1] is None or PILImage.OPEN[fmt][1](data[:16])]
        assert accepting == [name], (name, accepting)


def test_pillow_is_given_only_the_formats_of_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """No other reader is ever tried: ``Image.open`` gets the extension's formats (it got all six)."""
    seen = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        seen.append(tuple(formats))
        return real_open(fp, mode, formats)

    monkeypatch.setattr(decode.Image, "open", spy)
    assert outcome(png(1), "raw/images/a.png") == "accepted"
    assert outcome(jpeg(), "raw/images/a.jpeg") == "accepted"
    assert outcome(encode(natural_image(1), "WEBP"), "raw/images/a.webp") == "accepted"
    assert outcome(b"not an image at all", "raw/images/a.png") == "not_an_image"
    # a .jpeg is opened as JPEG only (MPO files open through JPEG's factory; naming MPO raised KeyError, rev24h)
    assert seen == [("PNG",), ("JPEG",), ("WEBP",), ("PNG",)]


def test_a_gif_bmp_or_tiff_in_a_png_blob_is_an_extension_mismatch_without_a_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode.Image, "open", lambda *args, **kwargs: pytest.fail("Pillow parsed it"))
    for fmt in ("GIF", "BMP", "TIFF", "JPEG", "WEBP"):
        assert outcome(encode(natural_image(1), fmt), "raw/images/a.png") == "extension_mismatch", fmt


# ------------------------------------------------------------------------------------------ the JPEG walk

def _segment(marker: int, body: bytes = b"") -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


@pytest.mark.parametrize("params", [{}, {"progressive": True}, {"quality": 100, "subsampling": 0},
                                    {"comment": b"made here", "exif": b"Exif\x00\x00" + b"\x00" * 200,
                                     "icc_profile": os.urandom(200_000)}],
                         ids=["baseline", "progressive", "q100", "com_exif_icc_in_4_app2"])
def test_encoder_jpegs_pass_the_walk_and_decode(params: dict) -> None:
    for mode in ("L", "RGB"):
        data = jpeg(natural_image(5, (400, 300)).convert(mode), **params)
        assert decode.scan_jpeg(data) is None
        assert outcome(data) == "accepted"
    cmyk = jpeg(natural_image(5, (40, 30)).convert("CMYK"), **params)
    assert decode.scan_jpeg(cmyk) is None and outcome(cmyk) == "unsupported_mode"


def test_a_restart_marker_every_mcu_is_no_marker_flood() -> None:
    """RSTn markers in the image data (libjpeg reads them inside a scan) are not counted: 90,000 of them pass."""
    out = io.BytesIO()
    Image.new("RGB", (2400, 2400), (40, 90, 200)).save(out, "JPEG", restart_marker_blocks=1, subsampling=0)
    data = out.getvalue()
    assert sum(data.count(bytes([0xFF, marker])) for marker in range(0xD0, 0xD8)) > decode.MAX_JPEG_MARKERS
    assert decode.scan_jpeg(data) is None and outcome(data) == "accepted"


def test_header_segments_fill_and_junk_are_capped_before_the_first_scan() -> None:
    good = jpeg()
    within = good[:2] + _segment(0xFE, b"note") * 900 + good[2:]
    assert outcome(within) == "accepted"
    assert "marker segments" in decode.scan_jpeg(good[:2] + _segment(0xE5, b"x") * 1_100 + good[2:])
    assert outcome(good[:2] + b"\xff" * 1_000 + good[2:]) == "accepted"          # fill bytes an encoder may pad with
    for stray in (b"\xff" * 1_100, b"\x00" * 5_000, b"\xff\x00" * 1_100):          # fill, junk, stuffed zeros
        flood = good[:2] + _segment(0xFE) + stray + good[2:]
        assert "stray bytes" in decode.scan_jpeg(flood)
        assert outcome(flood) == "decompression_bomb"


def test_a_flood_of_markers_after_the_first_scan_is_a_bomb() -> None:
    good = jpeg()
    eoi = good.rindex(b"\xff\xd9")
    flood = good[:eoi] + _segment(0xFE) * 70_000 + good[eoi:]
    assert decode.scan_jpeg(flood) == f"more than {decode.MAX_JPEG_MARKERS} markers"
    assert outcome(flood) == "decompression_bomb"


def test_scans_up_to_the_cap_decode_and_more_are_refused() -> None:
    from test_hostile_rev24d import scan_flood_jpeg

    assert outcome(scan_flood_jpeg(64, decode.MAX_JPEG_SCANS - 20)) == "accepted"
    refused = scan_flood_jpeg(64, decode.MAX_JPEG_SCANS)
    assert "scans" in decode.scan_jpeg(refused) and outcome(refused) == "decompression_bomb"


def test_a_truncated_or_malformed_jpeg_keeps_the_decoders_verdict() -> None:
    good = jpeg()
    assert decode.scan_jpeg(good[:40]) is None and outcome(good[:40]) == "truncated_image"
    assert decode.scan_jpeg(good[:-300]) is None
    assert decode.scan_jpeg(good[:2] + b"\xff\x02" + good[2:]) is None          # Pillow: "no marker found"
    assert decode.scan_jpeg(good[:2] + b"\xff\xfe\x00\x00" * 3 + good[2:]) is None   # lengths under 2 move on


# -------------------------------------------------------------------------------- the training-JPEG store

KEY = "blobs/train/s512q90/ab/" + "ab" * 32 + ".jpg"
DATA = b"\xff\xd8" + bytes(range(256)) * 40 + b"\xff\xd9"


def test_a_file_of_other_bytes_at_the_key_is_replaced_and_the_right_one_kept(tmp_path: Path) -> None:
    key = tmp_path / KEY
    key.parent.mkdir(parents=True)
    key.write_bytes(DATA[::-1])                        # the right size, other bytes
    write_blob_atomic(str(tmp_path), KEY, DATA)
    assert key.read_bytes() == DATA and stat.S_IMODE(key.stat().st_mode) == 0o666 & ~_umask()
    inode = key.stat().st_ino
    write_blob_atomic(str(tmp_path), KEY, DATA)        # already right: kept, not rewritten
    assert key.stat().st_ino == inode
    assert [p.name for p in key.parent.iterdir()] == [key.name]      # no temporary file left


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_link_at_the_key_is_replaced_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"not the tool's")
    key = tmp_path / "home" / KEY
    key.parent.mkdir(parents=True)
    key.symlink_to(outside)
    write_blob_atomic(str(tmp_path / "home"), KEY, DATA)
    assert not key.is_symlink() and key.read_bytes() == DATA
    assert outside.read_bytes() == b"not the tool's"
    right = tmp_path / "right.jpg"                     # a link even to the right bytes is no regular file
    right.write_bytes(DATA)
    key.unlink()
    key.symlink_to(right)
    assert not training_jpeg_ok(str(tmp_path / "home"), KEY, len(DATA))
    write_blob_atomic(str(tmp_path / "home"), KEY, DATA)
    assert not key.is_symlink() and training_jpeg_ok(str(tmp_path / "home"), KEY, len(DATA))


def test_a_folder_or_fifo_at_the_key(tmp_path: Path) -> None:
    key = tmp_path / KEY
    key.mkdir(parents=True)
    write_blob_atomic(str(tmp_path), KEY, DATA)        # an empty folder: replaced
    assert key.read_bytes() == DATA
    key.unlink()
    os.mkfifo(key)                                     # a FIFO: replaced, never opened
    write_blob_atomic(str(tmp_path), KEY, DATA)
    assert key.read_bytes() == DATA
    key.unlink()
    (key / "someone's").mkdir(parents=True)            # a folder with something in it: refused, left as it is
    with pytest.raises(OSError, match="is not empty; remove it"):
        write_blob_atomic(str(tmp_path), KEY, DATA)
    assert (key / "someone's").is_dir()


def test_a_link_as_the_keys_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "home" / os.path.dirname(KEY)
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere)
    with pytest.raises(OSError, match="is a link or not a folder"):
        write_blob_atomic(str(tmp_path / "home"), KEY, DATA)
    assert list(elsewhere.iterdir()) == []
    folder.unlink()
    folder.symlink_to(tmp_path / "dangling")
    with pytest.raises(OSError, match="is a link or not a folder"):
        write_blob_atomic(str(tmp_path / "home"), KEY, DATA)
    assert not (tmp_path / "dangling").exists()


class _SchemeStore(LocalFileSystem):
    """Beam's local file system behind a URL scheme: the store's object-store branch on real files."""

    PREFIX = "pickapic-fix24d-store://"

    @classmethod
    def scheme(cls) -> str:
        return cls.PREFIX.split(":")[0]

    def metadata(self, path, *args, **kwargs):
        return super().metadata(path.removeprefix(self.PREFIX), *args, **kwargs)

    def create(self, path, *args, **kwargs):
        return super().create(path.removeprefix(self.PREFIX), *args, **kwargs)


def test_an_object_of_another_size_is_replaced_in_a_bucket(tmp_path: Path) -> None:
    base = _SchemeStore.PREFIX + str(tmp_path)
    key = tmp_path / KEY
    assert not training_jpeg_ok(base, KEY, len(DATA))
    write_blob_atomic(base, KEY, DATA)
    assert key.read_bytes() == DATA and training_jpeg_ok(base, KEY, len(DATA))
    key.write_bytes(DATA[:100])                        # an upload cut short
    assert not training_jpeg_ok(base, KEY, len(DATA))
    write_blob_atomic(base, KEY, DATA)
    assert key.read_bytes() == DATA


# ---------------------------------------------------------------------------------- reuse and its JPEG

def _rows(home: DataHome, day: str) -> dict[str, dict]:
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, day)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


def _build(home: DataHome, day: str, config: FeaturesConfig = CONFIG):
    return build_features(home, day, config, detector_factory=fake_detector)


def test_known_digests_carry_the_jpeg_size_of_the_row_a_reuse_copies(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"b": png(1), "a": png(2)})
    write_day(home, DAY2, {"c": png(1), "d": png(3)})
    _build(home, DAY1)
    _build(home, DAY2)
    day1, day2 = _rows(home, DAY1), _rows(home, DAY2)
    known = known_digests(earlier_partitions(home, DAY2))
    assert known.size == 3 and list(known["sha256"]) == sorted(known["sha256"])
    for row in (day1["a"], day1["b"], day2["d"]):
        assert known_jpeg_bytes(known, bytes.fromhex(row["sha256"])) == row["train_jpg_bytes"]
    assert known_jpeg_bytes(known, hashlib.sha256(b"other").digest()) is None
    assert known_digests([]).size == 0


@pytest.mark.parametrize("damage", ["cut", "link", "folder"])
def test_reuse_by_sha256_writes_a_damaged_jpeg_again(tmp_path: Path, damage: str) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(7, (200, 160))})
    write_day(home, DAY2, {"b": png(7, (200, 160))})
    _build(home, DAY1)
    row = _rows(home, DAY1)["a"]
    key = home.root / row["train_jpg_key"]
    good = key.read_bytes()
    key.unlink()
    if damage == "cut":
        key.write_bytes(good[:1000])
    elif damage == "link":
        (tmp_path / "elsewhere.jpg").write_bytes(good)
        key.symlink_to(tmp_path / "elsewhere.jpg")
    else:
        key.mkdir()
    report = _build(home, DAY2)
    later = _rows(home, DAY2)["b"]
    assert (report.processed, report.reused_by_sha256) == (0, 1)
    assert later["reused_from"] == "a" and later["train_jpg_key"] == row["train_jpg_key"]
    assert not key.is_symlink() and key.read_bytes() == good
    if damage == "link":
        assert (tmp_path / "elsewhere.jpg").read_bytes() == good     # the link replaced, its target untouched


def test_a_rerun_with_every_jpeg_there_reads_nothing(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2)})
    _build(home, DAY1)
    again = _build(home, DAY1)
    assert (again.processed, again.reused_by_uid, again.bytes_read, again.stage_seconds) == (0, 2, 0, 0.0)


def test_a_lost_jpeg_whose_blob_is_gone_too_is_a_missing_blob_as_from_scratch(tmp_path: Path) -> None:
    """Nothing can write the JPEG again: the image gets what a build from scratch gives it (it kept a row naming
    a JPEG that is not there, and publish failed for good); its neighbour is still reused."""
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2)})
    _build(home, DAY1)
    before = _rows(home, DAY1)
    (home.root / before["a"]["train_jpg_key"]).unlink()
    (home.root / before["a"]["blob_path"]).unlink()
    report = _build(home, DAY1)
    after = _rows(home, DAY1)
    assert after["a"]["_table"] == "image_rejects" and after["a"]["reason"] == "missing_blob"
    assert after["b"] == before["b"] and (report.reused_by_uid, report.rejected_total) == (1, 1)


def test_a_lost_jpeg_of_a_blob_now_holding_other_bytes_is_computed_afresh(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1)})
    _build(home, DAY1)
    before = _rows(home, DAY1)["a"]
    (home.root / before["train_jpg_key"]).unlink()
    (home.root / before["blob_path"]).write_bytes(png(5))
    report = _build(home, DAY1)
    after = _rows(home, DAY1)["a"]
    assert report.processed == 1 and after["sha256"] == hashlib.sha256(png(5)).hexdigest()
    assert (home.root / after["train_jpg_key"]).stat().st_size == after["train_jpg_bytes"]


def test_a_restored_jpeg_of_another_size_gives_a_computed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the JPEG written again is not the size the source row records (an encoder that changed), the
    row is computed, naming the file as it is, not a copy naming a size the file no longer has."""
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1)})
    write_day(home, DAY2, {"b": png(1)})
    _build(home, DAY1)
    source = _rows(home, DAY1)["a"]
    (home.root / source["train_jpg_key"]).unlink()
    real = transforms.encode_train_jpeg

    def longer(rgb, size, quality):
        data, width, height = real(rgb, size, quality)
        return data + b"\x00", width, height

    monkeypatch.setattr(transforms, "encode_train_jpeg", longer)
    report = _build(home, DAY2)
    row = _rows(home, DAY2)["b"]
    assert (report.processed, report.reused_by_sha256, row["reused_from"]) == (1, 0, None)
    assert row["train_jpg_bytes"] == source["train_jpg_bytes"] + 1
    assert (home.root / row["train_jpg_key"]).stat().st_size == row["train_jpg_bytes"]


def test_reuse_by_sha256_keeps_an_extension_of_the_same_format(tmp_path: Path) -> None:
    data = jpeg(natural_image(4, (120, 90)))
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": data}, {"a": "raw/images/a.jpg"})
    write_day(home, DAY2, {"b": data, "c": data}, {"b": "raw/images/b.JPEG", "c": "raw/images/c.webp"})
    _build(home, DAY1)
    report = _build(home, DAY2)
    rows = _rows(home, DAY2)
    assert (report.reused_by_sha256, rows["b"]["reused_from"]) == (1, "a")
    assert (rows["c"]["reason"], rows["c"]["sha256"], rows["c"]["num_bytes"]) == (
        "extension_mismatch", hashlib.sha256(data).hexdigest(), len(data))


def test_the_stage_writes_no_jpeg_through_a_link_at_a_key(tmp_path: Path) -> None:
    """End to end: a link planted at a new image's key (pointing outside the home) is replaced, its target kept."""
    home = DataHome(tmp_path / "home")
    data = png(3)
    write_day(home, DAY1, {"a": data})
    key = home.root / train_jpg_key(CONFIG.train_prefix, hashlib.sha256(data).hexdigest())
    key.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    key.symlink_to(victim)
    _build(home, DAY1)
    row = _rows(home, DAY1)["a"]
    assert victim.read_bytes() == b"precious" and not key.is_symlink()
    assert key.stat().st_size == row["train_jpg_bytes"]
    np.testing.assert_equal(np.asarray(Image.open(key)).shape[2], 3)
