"""fix33n: review rev33n's false rejects fixed (``decode.jpeg_without_header_gaps``,
``decode.jpeg_without_zero_padding``, ``decode.jpeg_corrupt_data``): stray bytes between header segments are not
image data, and a run of zeros before a marker that ends whole scan data is padding; damage stays refused."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from test_features_fixtures import natural_image

from pipelines.features import decode
from pipelines.features.config import FeaturesConfig

LIMITS = FeaturesConfig().decode_limits()


def outcome(data: bytes) -> str:
    try:
        decode.decode_image(data, "raw/images/x.jpg", **LIMITS)
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


def reuse_outcome(data: bytes) -> str:
    try:
        decode.refuse_jpeg_data_ran_out(data, "raw/images/x.jpg")
    except decode.ImageRejected as rejected:
        return rejected.reason
    return "accepted"


def both(data: bytes) -> tuple[str, str]:
    return outcome(data), reuse_outcome(data)


def _jpeg(**options) -> bytes:
    out = io.BytesIO()
    natural_image(7, (200, 152)).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _restart_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.asarray(natural_image(7, (200, 152)))[:, :, ::-1],
                        [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes()


def _pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _pad_before(data: bytes, positions, pad: bytes) -> bytes:
    pieces, at = [], 0
    for position in sorted(positions):
        pieces += [data[at:position], pad]
        at = position
    return b"".join((*pieces, data[at:]))


def test_non_zero_stray_bytes_between_header_segments_are_not_image_data() -> None:
    """Any stray bytes (not only zeros) between segments before the first scan are dropped before the strict
    decode; a JPEG with no gap is passed on as the very same object (no copy)."""
    whole = _jpeg()
    assert decode.jpeg_without_header_gaps(whole) is whole
    dqt = whole.index(b"\xff\xdb")
    padded = whole[:dqt] + b"\x12\x34\x56" + whole[dqt:]
    assert decode.jpeg_without_header_gaps(padded) == whole
    assert np.array_equal(_pixels(padded), _pixels(whole))
    assert both(padded) == ("accepted", "accepted")


def test_header_gaps_do_not_hide_corrupt_scan_data() -> None:
    """A padded header does not hide zeroed scan data (rev33c's case) nor a cut padded with zeros."""
    whole = _jpeg()
    start = decode.jpeg_layout(whole).scans[0].data
    at_60, at_90 = (start + int((len(whole) - 2 - start) * f) for f in (0.6, 0.9))
    dqt = whole.index(b"\xff\xdb")
    for damaged in (whole[:at_60] + b"\x00" * 64 + whole[at_60 + 64:],
                    whole[:at_90] + b"\x00" * 4096 + b"\xff\xd9"):
        padded = damaged[:dqt] + b"\x00\x07" + damaged[dqt:]
        assert both(padded) == ("truncated_image", "truncated_image")


def test_cuts_padded_with_zeros_stay_refused_in_every_layout() -> None:
    """The zeros of a cut padded before a restart marker or a progressive DC scan's end are read as blocks (other
    pixels); without them the data ends early: refused, as rev33c's baseline case."""
    restart = _restart_jpeg()
    sos = restart.index(b"\xff\xda")
    rst = restart.index(b"\xff\xd3", sos)                   # the fourth interval's end: cut 40 bytes before it
    cut_restart = restart[:rst - 40] + b"\x00" * 200 + restart[rst:]
    progressive = _jpeg(progressive=True)
    dc_end = decode.jpeg_layout(progressive).scans[0].end
    dc_start = decode.jpeg_layout(progressive).scans[0].data
    cut_dc = progressive[:dc_start + (dc_end - dc_start) // 2] + b"\x00" * 1024 + progressive[dc_end:]
    for damaged, whole in ((cut_restart, restart), (cut_dc, progressive)):
        assert not np.array_equal(_pixels(damaged), _pixels(whole))
        assert both(damaged) == ("truncated_image", "truncated_image")


def test_non_zero_bytes_after_whole_scan_data_stay_refused() -> None:
    """Only zeros are taken for padding: other bytes left before the end marker are what a decode that went off
    leaves of real data (no honest signal tells them apart: JPEG has no checksum), refused."""
    whole = _jpeg()
    padded = whole[:-2] + b"\x5a" * 8 + whole[-2:]
    assert both(padded) == ("truncated_image", "truncated_image")


def test_zero_padding_before_every_restart_marker_and_after_refining_scans_is_accepted() -> None:
    """Padding of every interval of a restart-interval JPEG, and of every scan of a progressive JPEG (refining
    scans too), all at once: the same pixels, accepted."""
    restart = _restart_jpeg()
    scan = decode.jpeg_layout(restart).scans[0]
    assert len(scan.restarts) > 10
    padded = _pad_before(restart, (*scan.restarts, scan.end), b"\x00" * 5)
    assert np.array_equal(_pixels(padded), _pixels(restart))
    assert both(padded) == ("accepted", "accepted")
    progressive = _jpeg(progressive=True)
    scans = decode.jpeg_layout(progressive).scans
    assert any(not scan.first_pass for scan in scans)
    padded = _pad_before(progressive, [scan.end for scan in scans], b"\x00" * 16)
    assert np.array_equal(_pixels(padded), _pixels(progressive))
    assert both(padded) == ("accepted", "accepted")


def test_scan_data_ending_in_a_zero_byte_then_padded_is_accepted() -> None:
    """A flat bottom row ends the data with whole zero bytes (chroma blocks of no coefficients: DC and EOB codes
    ``00``): cutting the whole zero run would cut the data's own last byte (libjpeg: the data ended early), so
    the run is tried again with one zero kept."""
    rng = np.random.default_rng(10)
    height, width = 16 * int(rng.integers(1, 4)), 16 * int(rng.integers(1, 4))
    pixels = np.full((height, width, 3), rng.integers(0, 255, 3), np.uint8)
    pixels[: height // 2] = rng.integers(0, 255, (height // 2, width, 3))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=75)
    whole = out.getvalue()
    assert whole[-3] == 0 and whole[-4] != 0xFF                # the data's last byte is a zero of its own
    padded = whole[:-2] + b"\x00" * 8 + whole[-2:]
    layout = decode.jpeg_layout(padded)
    assert decode.jpeg_without_zero_padding(padded, layout, 1) == whole
    assert "premature end" in decode.libjpeg_warning(decode.jpeg_without_zero_padding(padded, layout, 0))
    assert both(whole) == both(padded) == ("accepted", "accepted")


def test_zero_padding_helper_keeps_stuffed_zeros_and_fill_bytes() -> None:
    """A zero after a data 0xFF is its stuffing byte (kept); 0xFF fill before the marker belongs to the marker; a
    run no longer than ``keep`` is left; nothing to cut gives None."""
    data = b"HDR" + b"\x12\xff\x00\x00\x00\xff\xff\xd9"
    layout = decode.JpegLayout(0xC0, (1,), (decode.JpegScan((1,), True, 3, 9, (), 0),), 9)
    assert decode.jpeg_without_zero_padding(data, layout) == b"HDR\x12\xff\x00\xff\xff\xd9"
    assert decode.jpeg_without_zero_padding(data, layout, 1) == b"HDR\x12\xff\x00\x00\xff\xff\xd9"
    assert decode.jpeg_without_zero_padding(data, layout, 2) is None
    assert decode.jpeg_without_zero_padding(b"HDR\x12\x34\xff\xd9", decode.JpegLayout(
        0xC0, (1,), (decode.JpegScan((1,), True, 3, 5, (), 0),), 5)) is None


def test_a_megabyte_of_zero_padding_is_accepted_and_read_back_in_slices() -> None:
    """A whole JPEG followed by 1 MiB of zeros before its end marker (a client padding to a block size): accepted
    from scratch and on reuse; the run is found by slices (no per-byte loop over a padded upload)."""
    whole = _jpeg()
    padded = whole[:-2] + bytes(1 << 20) + whole[-2:]
    layout = decode.jpeg_layout(padded)
    assert decode.jpeg_without_zero_padding(padded, layout) == whole
    assert both(padded) == ("accepted", "accepted")
