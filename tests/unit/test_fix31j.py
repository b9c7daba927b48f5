"""The rev31j fixes beyond the review's own tests (``test_hostile_rev31j.py``): where a JPEG's image data ran out is
judged from its layout (``decode.jpeg_layout``: every scan, its restart markers and the marker it ends at): filler
before every marker that ends a first pass scan's data (``decode.jpeg_with_filler``), and every frame component
given a first pass scan (``decode.jpeg_missing_component``). Here: a progressive JPEG whose DC first scans are one
a component, cut in or before a later one; a restart-interval JPEG with an interval short of data in the middle
(its last pixel whole); every cut of a restart JPEG, in its last MCU too (the chroma blocks zero bits decode as, the
old filler's leading zero byte); fill bytes before markers; genuine JPEGs of every Pillow layout accepted with
their pixels; the second decode only where a cut leaves no mark on the last pixel; the filler's size bounded."""
from __future__ import annotations

import io
import re
import struct

import numpy as np
import pytest
from PIL import Image
from test_features_fixtures import natural_image

from pipelines.features import decode
from pipelines.features.config import FeaturesConfig

LIMITS = FeaturesConfig().decode_limits()


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


def reuse_outcome(data: bytes) -> str:
    try:
        decode.refuse_jpeg_data_ran_out(data, "raw/images/x.jpg")
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


def _pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("RGB")).astype(int)


def _scan_data_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


# ------------------------------------------------------------- a progressive JPEG, one DC first scan a component

def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def _dc_scan(levels: list[int]) -> bytes:
    """A progressive DC first scan's data (no AC codes): 8x8 blocks flat at ``levels`` (quantisation 1)."""
    bits, previous = [], 0
    for level in levels:
        dc = (level - 128) * 8
        diff, previous = dc - previous, dc
        size = abs(diff).bit_length()
        bits.append(format(size, "04b") + (format(diff if diff > 0 else diff + (1 << size) - 1, f"0{size}b")
                                          if size else ""))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    out = bytearray()
    for i in range(0, len(stream), 8):
        out.append(int(stream[i:i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)
    return bytes(out)


def _progressive_dc_per_component() -> tuple[bytes, list[bytes]]:
    """A valid progressive (SOF2) 64 x 64 YCbCr JPEG of DC scans alone, one per component (non-interleaved, as
    a ``jpegtran -scans`` script may write): its headers and its three scans."""
    rows, columns = np.mgrid[0:8, 0:8]
    planes = [60 + 15 * rows + 5 * columns, 90 + 8 * columns, 170 + 6 * rows]
    head = b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64))
    head += _segment(0xC2, struct.pack(">BHHB", 8, 64, 64, 3) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3)))
    head += _segment(0xC4, b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12)))
    scans = [_segment(0xDA, bytes([1, c, 0x00, 0, 0, 0])) + _dc_scan([int(v) for v in plane.ravel()])
             for c, plane in zip((1, 2, 3), planes)]
    return head, scans


def test_a_progressive_jpeg_cut_in_or_before_a_later_dc_first_scan_is_truncated() -> None:
    head, scans = _progressive_dc_per_component()
    whole = head + b"".join(scans) + b"\xff\xd9"
    assert outcome(whole) == "accepted"
    last = scans[2]
    for cut in (head + scans[0] + scans[1] + last[:10 + (len(last) - 10) // 2] + b"\xff\xd9",   # in Cr's DC scan
                head + scans[0] + scans[1] + b"\xff\xd9",                                    # before it
                head + scans[0] + b"\xff\xd9"):
        assert np.abs(_pixels(cut) - _pixels(whole)).max() > 10
        assert outcome(cut) == reuse_outcome(cut) == "truncated_image"
    with pytest.raises(decode.ImageRejected, match="component 3 of its frame has no DC first scan"):
        decode.decode_image(head + scans[0] + scans[1] + b"\xff\xd9", "raw/images/x.jpg", **LIMITS)


def test_a_progressive_jpeg_missing_or_cut_refining_scans_is_still_kept() -> None:
    """A refining scan (AC, successive approximation) cut or missing is a coarser image, as documented (fix31f)."""
    whole = _jpeg(natural_image(9, (160, 120)), progressive=True)
    layout = decode.jpeg_layout(whole)
    assert layout is not None and layout.frame == 0xC2 and layout.scans[0].first_pass
    assert not any(scan.first_pass for scan in layout.scans[1:])
    for scan in layout.scans[1:4]:
        assert outcome(whole[:(scan.data + scan.end) // 2] + b"\xff\xd9") == "accepted"
        assert outcome(whole[:scan.end] + b"\xff\xd9") == "accepted"
    first = layout.scans[0]
    assert outcome(whole[:(first.data + first.end) // 2] + b"\xff\xd9") == "truncated_image"


# ------------------------------------------------------------------------------------------ restart intervals

def test_every_cut_of_a_restart_jpeg_is_truncated_its_last_mcu_too() -> None:
    whole = _jpeg(natural_image(3, (200, 152)), restart_marker_blocks=4)
    start = _scan_data_start(whole)
    cuts = list(range(start, len(whole) - 2, 97)) + list(range(len(whole) - 40, len(whole) - 2))
    assert {outcome(whole[:at] + b"\xff\xd9") for at in cuts} == {"truncated_image"}


def test_a_cut_in_the_last_mcus_chroma_is_truncated() -> None:
    """The old filler began with a zero byte: zero bits are what libjpeg pads with, and a chrominance table reads
    them as DC 0 and end of block, so a cut in the last MCU's chroma decoded the same with the filler."""
    whole = _jpeg(natural_image(3, (200, 152)), restart_marker_blocks=4)
    assert outcome(whole[:len(whole) - 13] + b"\xff\xd9") == "truncated_image"
    assert decode.JPEG_FILLER[0] >> 4 != 0 and decode.RESTART_FILLER == decode.JPEG_FILLER[:64]


def test_an_interval_short_of_data_in_the_middle_is_truncated() -> None:
    """Bytes lost inside one restart interval (its marker kept): libjpeg grey-fills the rest of that interval and
    resumes at the marker; the last pixel is whole, the filler before each restart marker reads as the lost data."""
    whole = _jpeg(natural_image(4, (200, 152)), restart_marker_blocks=4)
    restarts = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", whole)]
    begin, end = restarts[10] + 2, restarts[11]
    short = whole[:begin + (end - begin) // 3] + whole[end:]
    assert np.array_equal(_pixels(short)[-1], _pixels(whole)[-1])           # the last row is whole
    assert outcome(short) == reuse_outcome(short) == "truncated_image"
    stray = whole[:begin + (end - begin) // 3] + b"\xff\xd3" + whole[begin + (end - begin) // 3:]   # a stray RSTn
    assert outcome(stray) == "truncated_image"


def test_fill_bytes_before_markers_keep_a_genuine_jpeg_and_a_cut_one_truncated() -> None:
    whole = _jpeg(natural_image(5, (120, 96)), restart_marker_blocks=3)
    padded = re.sub(rb"(\xff[\xd0-\xd7])", lambda m: b"\xff\xff" + m.group(1), whole)             # fill bytes before each RSTn
    padded = padded[:-2] + b"\xff\xff\xff\xd9"
    assert padded != whole and np.array_equal(_pixels(padded), _pixels(whole))
    assert outcome(padded) == "accepted"
    restarts = [m.start() for m in re.finditer(rb"\xff\xff\xff[\xd0-\xd7]", padded)]
    assert outcome(padded[:restarts[len(restarts) // 2] + 2] + b"\xff\xd9") == "truncated_image"   # cut after fill


# --------------------------------------------------------------------------------------- genuine and the cost

@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"progressive": True}, {"restart_marker_blocks": 1},
                                     {"restart_marker_rows": 1}, {"progressive": True, "restart_marker_blocks": 3},
                                     {"subsampling": 0}, {"subsampling": 1}, {"quality": 10}, {"quality": 100}])
def test_genuine_jpegs_of_every_layout_are_accepted_with_pillows_pixels(options: dict) -> None:
    for seed, size in ((1, (64, 64)), (2, (67, 45)), (3, (33, 129))):
        for mode in ("RGB", "L"):
            data = _jpeg(natural_image(seed, size).convert(mode), **options)
            for bytes_ in (data, data + b"junk\xff\xd9", data[:-2] + b"\xff\xfe\x00\x04hi\xff\xd9"):   # COM after
                decoded = decode.decode_image(bytes_, "raw/images/x.jpg", **LIMITS)
                assert np.array_equal(decoded.pixels, _pixels(data))
                assert reuse_outcome(bytes_) == "accepted"


def test_the_second_decode_runs_only_where_a_cut_leaves_no_mark_on_the_last_pixel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    image = natural_image(5, (120, 96))
    for options, opens in (({}, 1), ({"optimize": True}, 1), ({"progressive": True}, 2),
                           ({"restart_marker_blocks": 4}, 2)):
        opened.clear()
        decode.decode_image(_jpeg(image, **options), "raw/images/x.jpg", **LIMITS)
        assert (options, len(opened)) == (options, opens)
    opened.clear()
    decode.decode_image(_jpeg(image)[:-2] + b"\xff\xfe\x00\x04hi\xff\xd9", "raw/images/x.jpg", **LIMITS)
    assert len(opened) == 2                                               # a segment after the scan: checked


def test_the_filler_is_bounded_whatever_the_number_of_restart_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _jpeg(natural_image(6, (200, 152)), restart_marker_blocks=1)
    layout = decode.jpeg_layout(whole)
    assert layout is not None and len(layout.scans[0].restarts) > 100
    count = layout.scans[0].restart_count
    monkeypatch.setattr(decode, "MAX_JPEG_RESTART_FILLERS", 10)
    bounded = decode.jpeg_layout(whole)
    assert bounded.scans[0].restart_count == count and len(bounded.scans[0].restarts) == 10   # offsets kept: 10
    grown = len(decode.jpeg_with_filler(whole, bounded)) - len(whole)
    assert grown == 10 * len(decode.RESTART_FILLER) + 2 * len(decode.JPEG_FILLER) + 2
    assert outcome(whole) == "accepted"
    assert outcome(whole[:layout.scans[0].restarts[-3]] + b"\xff\xd9") == "truncated_image"   # the due RSTn
    flood = whole[:-2] + b"\xff\xd0" * 200_000 + b"\xff\xd9"         # stray RSTn after the scan: few offsets kept
    flooded = decode.jpeg_layout(flood)
    assert flooded.scans[0].restart_count == count + 200_000 and len(flooded.scans[0].restarts) == 10


def test_jpeg_layout_reads_scans_restarts_and_ends_at_the_files_end_without_an_end_marker() -> None:
    whole = _jpeg(natural_image(3, (96, 80)), restart_marker_blocks=2)
    layout = decode.jpeg_layout(whole)
    assert layout is not None and layout.end == len(whole) - 2 and layout.components == (1, 2, 3)
    (scan,) = layout.scans
    assert scan.components == (1, 2, 3) and scan.restart_interval == 2 and scan.end == layout.end
    assert list(scan.restarts) == [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", whole)]
    cut = decode.jpeg_layout(whole[:-2])        # fix32d: no end marker, the layout ends at the file's end
    assert cut.end == len(whole) - 2 and cut.scans[0].end == cut.end and cut.scans[0].restarts == scan.restarts
    assert decode.jpeg_layout(b"\xff\xd8\xff\xd9") is None
    head, scans = _progressive_dc_per_component()
    layout = decode.jpeg_layout(head + b"".join(scans) + b"\xff\xd9")
    assert [s.components for s in layout.scans] == [(1,), (2,), (3,)] and all(s.first_pass for s in layout.scans)
    assert decode.jpeg_missing_component(layout) is None
    arithmetic = decode.jpeg_layout((head + scans[0] + b"\xff\xd9").replace(b"\xff\xc2", b"\xff\xca", 1))
    assert arithmetic.frame == 0xCA and decode.jpeg_missing_component(arithmetic) == (2, "DC first")
