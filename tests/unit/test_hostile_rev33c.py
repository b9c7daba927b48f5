"""Hostile review rev33c of the JPEG decoder checks and the prompt key after fix31f, fix31j and fix32d: the ran-out
check (``decode.jpeg_layout``, ``jpeg_with_filler``, restart-marker numbering, the grey last pixel, the component
rule) and the structure pre-scan in ``pipelines/features/decode.py``, and ``normalize_prompt`` (confusables, NFKC
digits, keycaps, stroked letters) in ``pipelines/splits/assign.py``; README section 3 ("A JPEG whose image data ends
early is truncated_image") and section 5 (the prompt key), section 9's rev31f / rev31j / rev32d bullets.

How: real Pillow 12.3 / libjpeg-turbo decodes through ``decode.decode_image`` (what the feature stage's Beam DoFn
runs on every blob) and ``decode.refuse_jpeg_data_ran_out`` (the reuse path), on JPEGs written by Pillow and by
OpenCV 4 (``cv2.imencode``) and edited byte by byte; the real ``normalize_prompt`` (ICU ``SpoofChecker``, ``regex``,
``unicodedata``) over every Latin, Cyrillic and Greek letter "with stroke / bar / slash / middle tilde" of planes 0
and 1; the real splits stage (``build_splits``: its DuckDB SQL and split ledger) on literal ``pairs`` rows.

Held up (false rejects: every one accepted, no test): 6 sizes (8 x 8 to 512 x 384, on and off the 16-pixel grid) x
subsampling 4:4:4 / 4:2:2 / 4:2:0 x baseline / progressive x ``optimize`` x ``restart_marker_blocks`` 1, 2, 3, 7 and
``restart_marker_rows`` 1, 2 (Pillow); greyscale (also progressive with restarts); quality 1 and 100; 16-bit
quantisation tables (SOF1); an ICC profile of 256 KB split over 5 APP2 segments; XMP; a COM holding ``FF D9``; EXIF
with an IFD1 JPEG thumbnail (its own ``FF D8`` / ``FF D9``), also progressive with restarts; a JFXX APP0 thumbnail;
OpenCV's baseline, progressive, optimised, restart-interval 1 and 3 and quality-1 JPEGs; trailing bytes after EOI
(zeros, ``FF FF FF``, a second JPEG); fill bytes before SOS, before EOI and before every RSTn; a COM or an APP1
between the last scan and EOI; a DRI of 0 or larger than the MCU count; an extra trailing RSTn before EOI (in order,
or RST0: some hardware encoders write one); flat images of exactly mid-grey 128 (and 127, 0) in every layout, and
images whose bottom half is mid-grey. (A JPEG lacking only its end marker is ``truncated_image``: Pillow's own "image
file is truncated", not the new check.) False accepts that held: every cut ended by EOI, COM, RSTn or an APP1 of
baseline, progressive (DC scan) and restart JPEGs tried at 30/60/90 % is ``truncated_image``.
The key: ``ø o̸ o̷``, ``ł l̸ l̷ l̵ l̶ ƚ ɫ``, ``đ d̵``, ``ħ``, ``ƀ ƶ ǥ ɇ ɨ ʉ ŧ`` and their overlays key alike; ``ǿ ó̸ ǿ``
alike; fullwidth, mathematical, superscript, subscript, circled and keycap digits key as the digit; ``½ 1⁄2 1/2``;
``ı ı̇ i̇ İ``.

Measured: a 200 x 152 baseline JPEG with 64 bytes of its scan data zeroed at 60 % (a bad sector, a failed copy),
accepted with 13,025 of its 30,400 pixels off by more than 16 levels; cut at 90 % and padded with 4,096 zero bytes
and an end marker (a truncated upload the client padded), accepted with 3,120 pixels off; progressive ones the same.
A 512 x 385 baseline 4:2:0 JPEG (height 16k + 1) losing its whole last MCU row (up to 984 bytes) is accepted: the
bottom pixel row, all 512 pixels, decodes wrong (mean 43 levels off) and its last pixel is not mid-grey (256 x 193:
up to 513 bytes, 615 pixels more than 16 levels off).

Noticed, not filed: ``৪`` (Bengali four) keys as ``8`` and the Arabic-Indic ``٤`` as itself, not as ``4`` (the README
keeps look-alike digit folds and Arabic-Indic digits on purpose); ``🔟 cats`` keys as ``cats`` (an emoji symbol, read
as a space like ``💯``), ``№1`` as ``1`` (a symbol NFKC spells in letters is a separator, documented for ``™``);
Cyrillic ``ҝ ҹ`` (vertical stroke) are letters of their own. A corrupt or truncated-and-padded PNG is caught by its
CRCs; JPEG has none, so test 1's fix must come from libjpeg's own warnings or the data's exact consumption.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All three were fixed the same day (fix33c, ``tests/unit/test_fix33c.py``) and their
markers removed: every JPEG Pillow decodes is decoded again at 1/8 scale by libjpeg-turbo with its warnings as
errors (simplejpeg's strict decode, pinned) and a corrupt-data warning (extraneous bytes before a marker, premature
end of data segment, a bad Huffman / arithmetic code) is ``truncated_image`` (``decode.jpeg_corrupt_data``; a
progressive JPEG cut in a refining scan stays a coarser image, as documented); a letter ICU's confusable data leaves
whole that Unicode names as a base letter with an overlay (stroke, bar, slash, middle tilde) keys as that base
letter, as base + overlay mark does (``assign._overlaid_letters``; key version 13).
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from splits_fixtures import pair_row, users_by_home, write_pairs
from test_features_fixtures import natural_image

from formats.home import DataHome
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt

LIMITS = FeaturesConfig().decode_limits()
QUIET = {"log": lambda message: None}


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


def _jpeg(size: tuple[int, int], seed: int, **options) -> bytes:
    out = io.BytesIO()
    natural_image(seed, size).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("RGB")).astype(int)


def _scan_data_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


# --- 1. a JPEG whose scan data is zeroed (a bad block, a truncation padded with zeros) is accepted garbled ----------

def test_a_jpeg_whose_scan_data_is_zeroed_is_truncated() -> None:
    """``truncated_image`` is "a header that parses but pixel data that does not decode completely (truncated,
    corrupt stream, bad CRC)" (decode.py). A PNG's CRCs catch a zeroed block; a JPEG has none, and the ran-out check
    only sees data that ends before a marker. Zero bytes in the scan data are read as Huffman codes (libjpeg warns
    "corrupt JPEG data", which Pillow drops) and the decode finishes early or late without meeting a marker early:
    a 64-byte zeroed block (a bad sector, a failed copy, same file length), or a cut upload padded with zeros before
    its end marker, is accepted with a large part of the picture garbage, and its training JPEG written from it."""
    whole = _jpeg((200, 152), 7)
    start = _scan_data_start(whole)
    at_60, at_90 = (start + int((len(whole) - 2 - start) * f) for f in (0.6, 0.9))
    damaged = {
        "64 bytes zeroed at 60%": whole[:at_60] + b"\x00" * 64 + whole[at_60 + 64:],
        "cut at 90%, padded with 4096 zeros and an end marker": whole[:at_90] + b"\x00" * 4096 + b"\xff\xd9",
    }
    reference = _pixels(whole)
    for name, data in damaged.items():   # Pillow decodes each without an error, thousands of pixels wrong
        assert (np.abs(_pixels(data) - reference).max(axis=2) > 16).sum() > 2000, name
    verdicts = {name: outcome(data) for name, data in damaged.items()}
    assert verdicts == {name: "truncated_image" for name in damaged}


# --- 2. a 4:2:0 JPEG of height 16k + 1 cut before its last MCU row: accepted, its bottom row wrong -----------------

def test_a_jpeg_of_height_16k_plus_1_missing_its_last_mcu_row_is_truncated() -> None:
    """README section 3: "The second decode runs where the last pixel is exactly mid-grey, what a plain cut leaves";
    kept are only cuts "inside its last MCU after the luma block holding its last pixel". At height 16k + 1 the last
    MCU row holds one pixel row, and libjpeg's fancy (triangle) upsampling gives that row's chroma a quarter of the
    chroma row above it, in the MCU row before: cut anywhere in the last MCU row (before the luma block holding the
    last pixel too: that pixel's luma is 128), the last pixel is not grey, the plain layout gets no second decode,
    and the whole bottom row of the image is accepted wrong."""
    whole = _jpeg((256, 193), 11)                    # 4:2:0 (Pillow's default), one scan, no restart markers
    cut = whole[:len(whole) - 2 - 400] + b"\xff\xd9"   # 400 bytes of the last MCU row gone (it ends a row of 16)
    reference, decoded = _pixels(whole), _pixels(cut)
    assert not (decoded[-1, -1] == 128).all()                                  # the last pixel is not mid-grey
    luma = decoded[-1] @ np.array([0.299, 0.587, 0.114])
    assert (np.abs(luma - 128) <= 3).mean() > 0.8                              # ... yet the bottom row's luma went
    assert np.abs(decoded[-1] - reference[-1]).mean() > 20                     # the bottom row is wrong
    assert (outcome(cut), reuse_outcome(cut)) == ("truncated_image", "truncated_image")


# --- 3. a stroked letter ICU has no skeleton for keys apart from the same letter typed with the overlay -------------

def _splits_of(tmp_path, prompt: str, copies: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """User V (filled into validation) types ``prompt``; train user T then types each of ``copies``. Returns the
    kept rows (pair_id -> split) and pair_id -> caption of T's copies (as test_hostile_rev32d)."""
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "splits")
    rows = [pair_row(1, t, "a prompt of T", "c1a", "c1b", day=0),
            pair_row(2, v, prompt, "c2a", "c2b", day=1)]
    rows += [pair_row(10 + i, t, copy, f"c{10 + i}a", f"c{10 + i}b", day=2) for i, copy in enumerate(copies)]
    write_pairs(home, rows)
    build_splits(home, config, **QUIET)
    kept = {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
            if r["split"] in ("train", "validation", "test")}
    return kept, {f"{10 + i}_0": copy for i, copy in enumerate(copies)}


def test_a_validation_prompt_with_a_stroked_letter_without_a_skeleton_is_not_kept_in_train(tmp_path) -> None:
    """Since fix32d ``ø`` keys as ``o`` because ``o`` + U+0338 (typed, drawn alike) loses the overlay as decorative.
    19 Latin and 2 Cyrillic letters with a stroke, bar or middle tilde have no ICU skeleton of base + overlay and
    stay themselves in the key, while the same letter typed as base + U+0335..U+0338 keys as the bare base letter:
    ``ⱥ`` (SENĆOŦEN) and ``a̸``, ``ꞓ`` and ``c̵``, ``ꞹ`` and ``u̸``, ``ꝃ`` and ``k̸``, ``ӿ`` and ``х̵`` key apart,
    so a validation prompt is published in train, typed the other way."""
    pairs = {"ⱥ": "a\u0338", "ꞓ": "c\u0335", "ꞹ": "u\u0338", "ꝃ": "k\u0338", "ꝟ": "v\u0338", "ꝙ": "q\u0338",
             "ᵭ": "d\u0334", "ӿ": "\u0445\u0335"}
    apart = {letter: (normalize_prompt(f"x{letter}x"), normalize_prompt(f"x{look}x"))
             for letter, look in pairs.items()
             if normalize_prompt(f"x{letter}x") != normalize_prompt(f"x{look}x")}
    assert not apart, f"drawn alike, keyed apart: {apart}"
    prompt = "a saanich word ⱥ on a ꞓarved cedar sign"
    copy = prompt.replace("ⱥ", "a\u0338").replace("ꞓ", "c\u0335")
    kept, captions = _splits_of(tmp_path, prompt, [copy])
    assert kept["2_0"] == "validation"
    in_train = sorted(captions[p] for p, split in kept.items() if p in captions and split == "train")
    assert not in_train, f"the validation prompt {prompt!r} is published in train as {in_train}"
