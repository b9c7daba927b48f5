"""The rev31f fixes beyond the review's own tests (``test_hostile_rev31f.py``): a JPEG whose image data runs out
(libjpeg's grey fill, ``decode.jpeg_data_ran_out``) is ``truncated_image`` whatever its layout (restart markers,
grayscale, fill bytes before the end marker, bytes after it), genuine JPEGs (a mid-grey one too, progressive,
optimized tables) are accepted with the pixels Pillow decodes; the same check on reuse (by uid and by sha256) for
rows a home holds from before the fix; a 12-bit or 2-component JPEG ``unsupported_mode`` after the size checks; a
RIFF file that is no WebP ``not_an_image``, a broken WebP still ``truncated_image``."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_features_fixtures import natural_image, png, write_day

from formats.home import DataHome
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

LIMITS = FeaturesConfig().decode_limits()
CONFIG = FeaturesConfig(workers=0)
DAY1, DAY2 = "2023-03-01", "2023-03-02"


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **({"quality": 90} | options))
    return out.getvalue()


def outcome(data: bytes, relpath: str = "raw/images/x.jpg") -> str:
    try:
        decode.decode_image(data, relpath, **LIMITS)
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


def _cut(data: bytes, fraction: float, end: bytes = b"\xff\xd9") -> bytes:
    """The first ``fraction`` of the scan data (never a dangling marker byte), then ``end``."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    return data[: start + int((len(data) - 2 - start) * fraction)] + end


# ----------------------------------------------------------------------------------------- data that runs out

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["baseline", "optimized", "grey", "restarts", "444"])
def test_a_jpeg_cut_anywhere_before_its_last_block_is_truncated(kind: str, fraction: float) -> None:
    image = natural_image(7, (200, 152))
    options = {"baseline": {}, "optimized": {"optimize": True}, "grey": {}, "restarts": {"restart_marker_blocks": 6},
               "444": {"subsampling": 0}}[kind]
    whole = _jpeg(image.convert("L") if kind == "grey" else image, **options)
    if kind == "restarts":
        assert b"\xff\xdd" in whole                                # a DRI segment: RSTn markers in the data
    assert outcome(whole) == "accepted"
    assert outcome(_cut(whole, fraction)) == "truncated_image"
    assert outcome(_cut(whole, fraction, b"\xff\xff\xff\xd9")) == "truncated_image"     # fill bytes before EOI
    assert outcome(_cut(whole, fraction) + b"trailing junk") == "truncated_image"        # bytes after its EOI
    assert outcome(whole + b"trailing junk") == "accepted"


@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"progressive": True}, {"restart_marker_blocks": 2},
                                     {"subsampling": 0}])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_genuine_mid_grey_jpeg_is_accepted_with_pillows_pixels(mode: str, options: dict) -> None:
    """Its last pixel is the mid-grey of a grey-filled decode: the second decode (filler before the end marker)
    is the same image, so it stays accepted; odd sizes put the last pixel inside a partial block."""
    for size in ((64, 64), (67, 45)):
        data = _jpeg(Image.new(mode, size, 128 if mode == "L" else (128, 128, 128)), **options)
        decoded = decode.decode_image(data, "raw/images/g.jpg", **LIMITS)
        assert (decoded.pixels == 128).all()
        assert np.array_equal(decoded.pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        half_grey = Image.new(mode, size, 128 if mode == "L" else (128, 128, 128))
        half_grey.paste(natural_image(2, (size[0], size[1] // 2)).convert(mode), (0, 0))
        assert outcome(_jpeg(half_grey, **options)) == "accepted"


def test_a_progressive_jpeg_whose_first_scan_ran_out_is_truncated_one_missing_later_scans_is_kept() -> None:
    whole = _jpeg(natural_image(9, (160, 120)), progressive=True)
    assert outcome(whole) == "accepted"
    assert outcome(_cut(whole, 0.0)) == "truncated_image"          # headers only: the DC scan has no data
    second_sos = whole.index(b"\xff\xda", whole.index(b"\xff\xda") + 2)
    # the first scan whole, the rest of the scans missing: a coarser image, as the format allows (documented)
    assert outcome(whole[:second_sos] + b"\xff\xd9") == "accepted"


def test_the_layout_ends_at_the_end_marker_libjpeg_stops_at() -> None:
    # fix31f's jpeg_scans_end, replaced by fix31j's jpeg_layout (its end)
    for options in ({}, {"progressive": True}, {"restart_marker_blocks": 1}):
        data = _jpeg(natural_image(3, (96, 80)), **options)
        assert decode.jpeg_layout(data).end == len(data) - 2
        assert decode.jpeg_layout(data + b"\xff\xd8\xff\xd9").end == len(data) - 2   # an appended image is not read
        assert decode.jpeg_layout(data[:-2]).end == len(data) - 2      # no end marker: the file's end (fix32d)
    assert decode.jpeg_layout(b"\xff\xd8\xff\xd9") is None                          # no scan at all
    assert b"\xff" not in decode.JPEG_FILLER     # fix31j: no leading zero byte (it goes before fill bytes instead)


def test_the_check_costs_nothing_unless_the_last_pixel_is_mid_grey(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(natural_image(5, (120, 96)))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    decode.decode_image(data, "raw/images/x.jpg", **LIMITS)
    assert len(opened) == 1                                        # the decode's own open, no second decode
    opened.clear()
    decode.decode_image(_jpeg(Image.new("RGB", (64, 64), (128, 128, 128))), "raw/images/x.jpg", **LIMITS)
    assert len(opened) == 2                                        # mid-grey last pixel: checked once more


def test_refuse_jpeg_data_ran_out_is_the_decodes_verdict_for_reused_bytes() -> None:
    whole = _jpeg(natural_image(6, (128, 96)))
    decode.refuse_jpeg_data_ran_out(whole, "raw/images/w.jpg")
    decode.refuse_jpeg_data_ran_out(png(1), "raw/images/p.png")            # not a JPEG: nothing to judge
    decode.refuse_jpeg_data_ran_out(whole[:100], "raw/images/w.jpg")       # does not decode: no verdict here
    with pytest.raises(decode.ImageRejected) as caught:
        decode.refuse_jpeg_data_ran_out(_cut(whole, 0.4), "raw/images/c.jpg")
    assert caught.value.reason == "truncated_image" and "premature end of data segment" in caught.value.detail


def _rows(home: DataHome, day: str) -> dict[str, dict]:
    build_features(home, day, CONFIG)
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, day)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


def test_grey_filled_rows_of_a_home_built_before_the_fix_are_refused_on_reuse(
        fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Day 1 built before the fix accepted a cut JPEG; day 2 (built now) holds the same bytes at a new uid (reuse
    by sha256), then day 1 is built again (reuse by uid): both refuse it, as a build from scratch does, and the
    whole JPEG's row is the one built before."""
    whole = _jpeg(natural_image(8, (120, 96)))
    cut = _cut(whole, 0.5)
    home = DataHome(fast_tmp / "home")
    write_day(home, DAY1, {"w": whole, "c": cut}, {"w": "raw/images/w.jpg", "c": "raw/images/c.jpg"})
    write_day(home, DAY2, {"d": cut}, {"d": "raw/images/d.jpg"})
    with monkeypatch.context() as before_the_fix:
        before_the_fix.setattr(decode, "jpeg_data_ran_out", lambda data, image: False)
        first = _rows(home, DAY1)
    assert first["c"]["_table"] == "image_features"
    day2 = _rows(home, DAY2)
    assert (day2["d"]["_table"], day2["d"]["reason"]) == ("image_rejects", "truncated_image")
    again = _rows(home, DAY1)
    assert (again["c"]["_table"], again["c"]["reason"]) == ("image_rejects", "truncated_image")
    assert again["w"] == first["w"]


# ----------------------------------------------------------------------------------- 12-bit, 2-component JPEGs

def _with_frame(data: bytes, precision: int | None = None, components: int | None = None) -> bytes:
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    if precision is not None:
        out[sof + 4] = precision
    if components is not None:
        out[sof + 9] = components
    return bytes(out)


@pytest.mark.parametrize("precision, components", [(12, 3), (12, 1), (16, 1), (8, 2), (8, 5)])
def test_a_jpeg_pillow_refuses_for_its_precision_or_components_is_unsupported_mode(precision: int,
                                                                                   components: int) -> None:
    data = _with_frame(_jpeg(natural_image(1, (64, 48))), precision, components)
    with pytest.raises(decode.ImageRejected) as caught:
        decode.decode_image(data, "raw/images/x.jpg", **LIMITS)
    assert caught.value.reason == "unsupported_mode", caught.value.detail
    assert f"{precision} bits" in caught.value.detail and f"{components} components" in caught.value.detail


def test_the_size_checks_come_first_and_a_broken_header_is_still_truncated() -> None:
    thin = _with_frame(_jpeg(Image.new("RGB", (64, 4), (9, 99, 199))), 12)
    assert outcome(thin) == "too_small"
    huge = bytearray(_with_frame(_jpeg(natural_image(1, (64, 48))), 12))
    sof = huge.index(b"\xff\xc0")
    huge[sof + 5:sof + 9] = struct.pack(">HH", 8000, 8000)         # 8000 x 8000 declared
    assert outcome(bytes(huge)) == "decompression_bomb"
    data = _jpeg(natural_image(1, (64, 48)))
    sof = data.index(b"\xff\xc0")
    assert outcome(data[:sof + 6]) == "truncated_image"            # the frame header itself cut: no verdict on it
    assert decode.jpeg_frame(data) == (8, 3, 64, 48)
    assert decode.jpeg_frame(data[:sof + 6]) is None


# ----------------------------------------------------------------------------------------------------- RIFF

@pytest.mark.parametrize("form", [b"WAVE", b"AVI ", b"RMID", b"WEBQ"])
@pytest.mark.parametrize("relpath", ["raw/images/a.webp", "raw/images/a.png", "raw/images/a.jpg"])
def test_a_riff_file_of_another_form_is_not_an_image_at_every_extension(form: bytes, relpath: str) -> None:
    data = b"RIFF" + struct.pack("<I", 36) + form + b"LIST" + struct.pack("<I", 28) + b"\x00" * 28
    assert decode.sniff_format(data) is None
    assert outcome(data, relpath) == "not_an_image"
    assert outcome(b"RIFF", relpath) == "not_an_image"             # too short to name a form


def test_a_webp_whose_header_does_not_parse_is_still_truncated() -> None:
    out = io.BytesIO()
    natural_image(2, (64, 48)).save(out, "WEBP", quality=80)
    webp = out.getvalue()
    assert outcome(webp, "raw/images/a.webp") == "accepted"
    broken = webp[:12] + b"VP8Z" + webp[16:]                       # an unknown first chunk
    assert decode.sniff_format(broken) == "WEBP"
    assert outcome(broken, "raw/images/a.webp") == "truncated_image"
    assert outcome(webp[:20], "raw/images/a.webp") == "truncated_image"
    assert outcome(webp, "raw/images/a.jpg") == "extension_mismatch"
    assert b"RIFF" not in decode.SIGNATURES
