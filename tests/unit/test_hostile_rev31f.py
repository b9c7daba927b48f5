"""Hostile review rev31f of the per-image feature stage (README section 3; ``pipelines/features/``: ``stage.py``,
``transforms.py``, ``decode.py``, ``derive.py``, ``nsfw.py``, the training-JPEG store and ``image_rejects``) with the
images a hostile export would hold.

How: the real stage (``build_features``: Beam's FnApiRunner as the DirectRunner builds it, in-process, and Beam's
``multi_processing`` on 2 worker processes), the real NudeNet 320n model from the ``nudenet`` wheel (the stage's own
``DetectorFactory``), real Pillow / libspng / libwebp / imagehash; ``decode.decode_image`` alone where only the
decode is at stake, plus a 20,000-case mutation fuzz of small JPEG / PNG / WebP files through ``decode_image`` and
the reuse checks (``check_extension`` + ``refuse_structure_bomb``).

Held (tried, no test here): a day of ten hostile blobs (a cut JPEG, a header-only JPEG, an EXIF-rotated JPEG, the
same PNG bytes under two uids, a RIFF/WAV at ``.webp``, palette + tRNS, CMYK JPEG, a zero-byte blob, a WebP) gave
byte-identical ``image_features``, ``image_rejects`` and training JPEGs in-process and on 2 worker processes, and
every input landed in one of the two tables; the EXIF orientation is ignored consistently (width/height, hashes,
NudeNet input and the training JPEG are all of the stored pixels, and the training JPEG carries no EXIF or ICC,
so no reader rotates it; as documented); WebP cut inside its VP8 / VP8L payload with the RIFF and chunk sizes made
consistent is refused (``truncated_image``) at 30/60/90%; a VP8X canvas bigger than its bitstream is refused; an
APNG whose first ``fcTL`` does not match IHDR is refused, one that matches decodes as the still image; CMYK JPEG and
16-bit grey PNG are ``unsupported_mode``; the fuzz raised nothing but ``ImageRejected`` (no day can fail on one image
there, nor on the reuse path's checks).

Measured: one 4096 x 4096 image (the largest accepted), decoded, hashed, encoded and prepared for NudeNet: peak RSS
125 -> 252 MB, 0.6 CPU-s, for a 49 KB PNG and for a 625-byte JPEG alike (below); the 10-image day: 5.0 s in-process,
16.8 s on 2 workers (start-up), peak RSS of the test process 362 MB.

Noticed, not filed: a progressive JPEG cut after its DC scan with an EOI appended is accepted as a blurred image
(libjpeg gives no warning there; an encoder may legitimately stop early, so it is not clearly a defect); a blob
whose first bytes are ``BM`` or ``MM\\x00*`` (a text file) is ``extension_mismatch`` "holds BMP/TIFF bytes", Pillow's
own signature test (documented); a JPEG whose frame header says 12-bit precision is ``truncated_image`` ("header
does not parse") rather than ``unsupported_mode``; Pillow's "Corrupt EXIF data" ``UserWarning`` prints one stderr line
per such JPEG (``decode_image``'s ``catch_warnings`` resets the once-per-location registry, so it is not bounded by
location; memory is not affected).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both were fixed the same day (fix31f, ``tests/unit/test_fix31f.py``) and their markers
removed; the first test's demonstration of the grey fill now decodes with Pillow directly (the stage's decoder
refuses those bytes since the fix). The 12-bit / 2-component JPEG noticed above is ``unsupported_mode`` since then.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_features_fixtures import natural_image, write_day

from formats.home import DataHome
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

DAY = "2023-03-01"
CONFIG = FeaturesConfig(workers=0)   # the stage in this process (Beam's FnApiRunner), the real NudeNet model
LIMITS = CONFIG.decode_limits()


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _scan_start(data: bytes) -> int:
    """The offset of the first byte of entropy-coded data (just past the SOS segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _build(home: DataHome, blobs: dict[str, tuple[str, bytes]]) -> dict[str, dict]:
    """Write the blobs and the day's images partition, run the real stage, return {uid: row} of both tables."""
    home.raw_images.mkdir(parents=True, exist_ok=True)
    for relpath, data in blobs.values():
        (home.root / relpath).write_bytes(data)
    write_day(home, DAY, {}, {uid: relpath for uid, (relpath, _) in blobs.items()})
    build_features(home, DAY, CONFIG)
    rows = {}
    for table in ("image_features", "image_rejects"):
        for row in pq.read_table(home.partition_file(table, DAY)).to_pylist():
            rows[row["image_uid"]] = row | {"_table": table}
    return rows


# ------------------------------------------------------------------------------ 1. JPEG data that ends early

def test_a_jpeg_whose_image_data_ends_early_is_truncated_not_grey_filled(fast_tmp: Path) -> None:
    """A truncated upload that kept (or was given) its end marker, and a header-only JPEG declaring a large image,
    are what the PNG rule already refuses ("Pillow filled missing rows with black", now ``truncated_image``), and
    what the stage refuses for a WebP cut inside its bitstream or a JPEG cut without its EOI. Today both land in
    ``image_features`` with a mostly grey training JPEG that goes on to curation, splits and the published shards.
    (fix31f: the grey fill is now shown by Pillow itself, as ``decode_image`` rightly refuses the cut bytes.)"""
    photo = _jpeg(natural_image(3, (300, 240)))
    cut = photo[: len(photo) // 2] + b"\xff\xd9"                # half of the scan data, then the end marker
    big = _jpeg(Image.new("RGB", (2048, 2048), (200, 10, 10)))
    header_only = big[: _scan_start(big)] + b"\xff\xd9"         # every header, no scan data at all
    assert len(header_only) < 700

    # Pillow shows what libjpeg made of it: the missing blocks are flat grey (was the stage's own decoder, which
    # returned these pixels before fix31f and now refuses the bytes, so the demonstration uses Pillow directly)
    grey = np.asarray(Image.open(io.BytesIO(cut)).convert("RGB"))
    assert (grey.reshape(-1, 3) == 128).all(axis=1).mean() > 0.3      # the image is a third grey

    rows = _build(DataHome(fast_tmp / "home"), {
        "cut": ("raw/images/cut.jpg", cut),
        "headeronly": ("raw/images/headeronly.jpg", header_only),
        "whole": ("raw/images/whole.jpg", photo),
        "cutnoeoi": ("raw/images/cutnoeoi.jpg", photo[: len(photo) // 2]),
    })
    assert rows["whole"]["_table"] == "image_features"
    assert (rows["cutnoeoi"]["_table"], rows["cutnoeoi"]["reason"]) == ("image_rejects", "truncated_image")
    # the correct behaviour: the same bytes less their end marker are truncated_image, so are these
    for uid in ("cut", "headeronly"):
        assert rows[uid]["_table"] == "image_rejects", (uid, rows[uid].get("width"), rows[uid].get("train_jpg_key"))
        assert rows[uid]["reason"] == "truncated_image"


# ------------------------------------------------------------------------------ 2. a RIFF file that is no WebP

def _wav() -> bytes:
    """A valid 8-sample PCM WAV file: a RIFF container whose form type is WAVE, not WEBP."""
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 16) + b"\0" * 16
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_a_riff_file_that_is_not_webp_is_not_an_image() -> None:
    """``not_an_image``: "bytes the extension's decoder does not recognise and whose leading bytes name none of PNG,
    JPEG, WEBP, GIF, BMP, TIFF" (decode's policy table). A WAV names none of them (``sniff_format`` says None, and
    ``RIFF....WAVE`` is no WebP to Pillow either), yet the reject counters and the row say it is a truncated image,
    which points an operator at a damaged transfer rather than at an export that put audio where images belong."""
    wav = _wav()
    assert decode.sniff_format(wav) is None                    # holds today: no image format named
    for relpath in ("raw/images/a.webp", "raw/images/a.png", "raw/images/a.jpg"):
        with pytest.raises(decode.ImageRejected) as caught:
            decode.decode_image(wav, relpath, **LIMITS)
        assert caught.value.reason == "not_an_image", (relpath, caught.value.detail)
    # a text or HTML file at the same paths is already not_an_image (the rule the RIFF case should follow)
    with pytest.raises(decode.ImageRejected) as caught:
        decode.decode_image(b"<html>" + b"x" * 100, "raw/images/a.webp", **LIMITS)
    assert caught.value.reason == "not_an_image"

