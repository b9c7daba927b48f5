"""Hostile review rev33n of fix33c: libjpeg-turbo's strict 1/8-scale decode of every JPEG
(``decode.libjpeg_warning`` / ``decode.jpeg_corrupt_data``, simplejpeg 1.9.0, its bundled libjpeg-turbo 3.1.2) and
``assign._overlaid_letters``; README section 3 ("Broken images", libjpeg's corrupt-data warnings), section 5 (the
prompt key) and section 9's rev33c bullet. Main attack: false rejects (valid images lost as ``truncated_image``).

How: real Pillow 12.3 and simplejpeg decodes through ``decode.decode_image`` (what the feature stage's Beam DoFn runs
on every blob) and ``decode.refuse_jpeg_data_ran_out`` (the reuse path), on JPEGs written by Pillow and OpenCV 5
(``cv2.imencode``) and edited byte by byte, each compared pixel for pixel with Pillow's decode of the unedited file;
4,000 one-to-four-byte mutants of baseline / progressive / greyscale JPEGs run through simplejpeg's strict decode to
collect the exceptions and warnings it gives; the real ``normalize_prompt`` (ICU ``SpoofChecker``).

Held up (no test): Pillow and OpenCV baseline, progressive, 4:4:4 / 4:2:2 / 4:2:0 / 4:1:1 / 4:4:0, optimised and
restart-interval JPEGs, greyscale, 8 x 8, 9 x 9, 15 x 17 (1/8 scale of 1 px), trailing garbage or a second JPEG
after EOI (MPO-like), zero padding after EOI, ``FF`` fill before EOI, a COM between the scan and EOI, 1 or 2
extraneous bytes before EOI (libjpeg's read-ahead hides them), an Adobe APP14 transform-0 / ``R G B``-id JPEG (no
warning, and a zeroed one is refused), cut-and-zero-padded JPEGs without EOI (Pillow's "image file is truncated"):
no false reject. CMYK / YCCK, 12-bit, lossless and 2-component JPEGs never reach the check (``unsupported_mode``
first); a 2 x 2 / 2 x 2 / 2 x 2 sampled one neither (Pillow: "broken data stream"). simplejpeg raised only
``ValueError`` over the 4,000 mutants (no other exception can escape ``libjpeg_warning`` there), and allocates at
1/8 scale after Pillow's pixel limits, so a header bomb never reaches it. simplejpeg is in requirements-worker.txt
(the workers' list) pinned as in pyproject.toml. Measured: a 4096 x 4096 progressive JPEG of 4.9 MB, the strict
1/8 decode 0.32 s against Pillow's full decode 0.60 s (the check adds about half a decode on large progressive
files, not the 3 % README section 3 gives for a 512 px baseline photo). The key: ``Đ đ ø ł ħ ŧ`` key as ``d d o l
h t`` (``Đà Nẵng`` as ``dà nẵng``, ``søster`` as ``soster``), a merge of letters some languages keep apart, but one
ICU's own confusable data makes (ø as o + U+0338, đ as d + U+0335) and rev32d adopted; fix33c only extended it to
the letters ICU leaves whole. Not filed: a first warning of another kind (unknown JFIF revision, "Invalid SOS
parameters for sequential JPEG", seen in 13 of 3,000 header mutants Pillow accepted) hides corrupt data after it:
README section 3 documents that limit. Arithmetic-coded JPEGs were not tried (no encoder here).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both were fixed the same day (fix33n, ``tests/unit/test_fix33n.py``) and their markers
removed: stray bytes between header segments before the first scan are dropped before the strict decode
(``decode.jpeg_without_header_gaps``: never image data), and "extraneous bytes before marker" passes where the bytes
are a run of zeros whose removal leaves data libjpeg decodes without a corrupt-data warning
(``decode.jpeg_without_zero_padding``): padding after whole data; a cut padded with zeros (read as its missing
blocks, and ending early without them) and zeroed bytes inside the scan stay refused, so rev33c's tests hold as they
were. README section 3 gives the measured cost on a large progressive JPEG. Features code version 12.
"""
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


def _jpeg(**options) -> bytes:
    out = io.BytesIO()
    natural_image(7, (200, 152)).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _segment_end(data: bytes, marker: bytes) -> int:
    at = data.index(marker)
    return at + 2 + int.from_bytes(data[at + 2:at + 4], "big")


# --- 1. padding between header segments (no image data at all) is "image data does not decode" -------------------

def test_padding_between_header_segments_does_not_reject_a_whole_jpeg() -> None:
    """Zero bytes between metadata / table segments (a metadata editor that wrote an APPn length short, or padded
    after it) are outside the entropy-coded data: Pillow skips them, the decoded pixels are exactly the unpadded
    file's, and libjpeg's warning says nothing of the image data. Yet one byte after the JFIF APP0, after the DQT or
    before the SOS makes the image ``truncated_image`` "its image data does not decode as written" (wrong and
    misleading), from scratch and on reuse."""
    whole = _jpeg()
    assert outcome(whole) == "accepted"
    places = {"after APP0": _segment_end(whole, b"\xff\xe0"), "after DQT": _segment_end(whole, b"\xff\xdb"),
              "before SOS": whole.index(b"\xff\xda")}
    verdicts = {}
    for where, at in places.items():
        for count in (1, 4):
            padded = whole[:at] + b"\x00" * count + whole[at:]
            assert np.array_equal(_pixels(padded), _pixels(whole))          # the same image, pixel for pixel
            verdicts[where, count] = (outcome(padded), reuse_outcome(padded))
    assert verdicts == {key: ("accepted", "accepted") for key in verdicts}


# --- 2. whole scan data followed by a few extraneous bytes is "truncated" -----------------------------------------

def test_whole_scan_data_followed_by_extraneous_bytes_is_not_truncated() -> None:
    """libjpeg's 'Corrupt JPEG data: N extraneous bytes before marker 0xd9' is among the commonest warnings of
    real-world JPEGs that display fine (encoders and phones that pad after the last block). README section 3 refuses
    zeroed data and "a cut upload padded with zeros" - data that decodes to other pixels; here the data covers every
    block (the ran-out check's own criterion: the same pixels as without the bytes) and the image is whole, in a
    baseline JPEG (before EOI), an OpenCV restart-interval JPEG (before an RSTn) and a progressive one (after its
    DC first scan). All three are ``truncated_image`` today."""
    baseline = _jpeg()
    restart = cv2.imencode(".jpg", np.asarray(natural_image(7, (200, 152)))[:, :, ::-1],
                           [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes()
    progressive = _jpeg(progressive=True)
    cases = {
        "baseline, before EOI": (baseline, len(baseline) - 2),
        "restart interval, before RST0": (restart, restart.index(b"\xff\xd0", restart.index(b"\xff\xda"))),
        "progressive, after the DC scan": (progressive, decode.jpeg_layout(progressive).scans[0].end),
    }
    verdicts = {}
    for name, (whole, at) in cases.items():
        assert outcome(whole) == "accepted"
        padded = whole[:at] + b"\x00" * 8 + whole[at:]
        assert np.array_equal(_pixels(padded), _pixels(whole))              # every block decoded as written
        verdicts[name] = (outcome(padded), reuse_outcome(padded))
    assert verdicts == {name: ("accepted", "accepted") for name in verdicts}
