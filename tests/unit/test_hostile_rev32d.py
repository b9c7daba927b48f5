"""Hostile review rev32d of the thirty-first session's decoder and prompt-key changes: the JPEG ran-out check
(``decode.jpeg_layout`` / ``jpeg_with_filler`` / ``jpeg_data_ran_out`` / ``refuse_jpeg_data_ran_out``, fix31f and
fix31j), the RIFF check (fix31f) in ``pipelines/features/decode.py``, and the prompt key's decorative marks
(``assign._decorative_marks``, key version 11, fix31g) in ``pipelines/splits/assign.py``; README sections 3 and 5.

How: real Pillow / libjpeg(-turbo) and libwebp decodes through ``decode.decode_image`` (what the feature stage's
Beam DoFn runs on every blob: the in-process and Beam paths call the same function) and ``refuse_jpeg_data_ran_out``
(the reuse path), on JPEGs Pillow writes (baseline, progressive, restart intervals, sizes on and off the 16-pixel
MCU grid) edited byte by byte; the real ``normalize_prompt`` (real ICU ``SpoofChecker``, ``regex``,
``unicodedata``) on hand-made variants and on every letter of planes 0 and 1; the real splits stage
(``build_splits``: its DuckDB SQL and split ledger) on literal ``pairs`` rows (``tests/unit/splits_fixtures.py``).

Held up (tried, no test): two SOF headers (same, larger, smaller size; SOF2 after SOF0; a SOF after the scan):
libjpeg refuses the second, ``truncated_image`` whatever size Pillow's header walk kept; duplicate component ids
in the frame or scan; a valid JPEG followed by junk or by a second whole JPEG (the first is decoded, as libjpeg
does); a cut JPEG followed by a second whole one, by an SOI, a SOF or a DHT (libjpeg errors: ``truncated_image``);
every plain cut of a baseline, progressive and restart-interval JPEG without an end marker (Pillow's "image file is
truncated"); a cut followed by a DNL segment and an end marker; a restart interval repeated (same pixels). RIFF:
a WAV and an AVI under ``.webp``, ``.jpg``, ``.png`` are ``not_an_image``; every cut of a lossy and a lossless WebP, with the RIFF size left or rewritten to
the cut's length, is ``truncated_image``; a RIFF size past the end is ``truncated_image``; junk after a whole WebP
is accepted (as after a JPEG's end marker). The key: ZWJ emoji sequences and their unjoined emoji, VS15 / VS16,
``❤`` / ``❤️`` / ``♥`` between words, the rainbow flag, keycaps with and without VS16, ``#️⃣``, squared and
negative squared letters (with VS16 too), ``℃`` / ``°C``, ``½`` / ``1⁄2`` / ``1/2``, ``ǅ`` / ``Dž``, decorative
marks on digits (``1̲2̲``), a decorative mark between a letter and its accent (``é̲`` is ``é``), CGJ before an
accent, ``҉`` on a word: each group one key.

Measured: a 256 x 192 baseline JPEG cut at 40% of its scan data and ended by a COM segment, an RST0, an APP1 holding
a thumbnail's own end marker, or an APP1 whose length runs past the file's end (no end marker of its own): Pillow
decodes every one without an error, 58% of its rows mid-grey, and ``decode_image`` accepts it. A 256 x 192
restart-interval JPEG (an interval a row of MCUs) with one or two whole intervals gone decodes with 4,461 / 8,495
pixels more than 16 levels off (a 16 or 32-pixel grey stripe), one with a restart marker's number off by one with
3,402 pixels mid-grey: all accepted. (A progressive one with intervals gone from a refining scan is coarser, kept
by design; an interval dropped and every later marker renumbered shifts the rest, and the check sees it.) Of the letters of
planes 0 and 1, 171 key with a combining overlay mark the key otherwise removes (ICU's skeleton spells ``ø`` as
``o`` + U+0338, ``đ`` as ``d`` + U+0335, ``ł`` as ``l`` + U+0338, ``θ`` as ``o`` + U+0335, Cyrillic ``ћ`` ``ғ`` ...),
so each keys apart from the same letter typed as base + that mark (the decorative rule, which runs before the
confusable fold, removes it there). This predates fix31g: key version 10 already removed U+0335 and U+0338.

Noticed, not filed: a plain (one scan, no restart) 4:2:0 JPEG cut inside its last MCU but before its last block is
accepted wherever its last pixel is not mid-grey: sizes off the 16-pixel grid put the last pixel in the MCU's first
luma block (its other luma blocks are padding), so a cut losing the MCU's chroma leaves the pixel decoded (200 x 152:
a 47-byte cut, 81 pixels off by up to 133 levels; 256 x 160: the last MCU's chroma cut, 259 pixels off by more than
16). The README keeps "a plain one whose data runs out inside its very last block" on purpose, and the damage stays
within the last MCU and its upsampling neighbours, so it is left as that trade-off (the README's "the last pixel (in
the last block of every component)" is not true off the grid). A Taiwanese ``o͘`` keys as ``o`` (documented).
Moderation shares tests 2 and 4's root causes (not filed twice): ``moderation_key`` of ``łódź`` is ``l̸ódź`` but of
``l̸ódź`` is ``lódź``, and ``moderation_text`` of ``１⃣８⃣+`` is ``1⃣8⃣+``, so a listed ``18+`` is not found in it.
A decorative mark between a digit and its keycap (``1̲⃣``) also keeps the keycap in the key (test 4's root cause).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All four were fixed the same day (fix32d, ``tests/unit/test_fix32d.py``) and their
markers removed: ``jpeg_layout`` ends a layout with no end marker at the file's end (the filler goes before the
marker that stopped the scan); ``jpeg_with_filler`` numbers a first pass scan's restart markers as libjpeg expects
them; ICU's skeleton of a letter or digit loses the decorative marks (``ø`` keys as ``o``, as ``o̸`` does); a keycap
reads on any character NFKC reads as a digit, ``#`` or ``*``, decorative marks between allowed (key version 12).
The noticed moderation items (``łódź`` / ``l̸ódź``, ``１⃣８⃣+``) and ``1̲⃣`` share those roots and were fixed with them;
the README's last-pixel claim was corrected (behaviour kept).
"""
from __future__ import annotations

import io
import re
import struct

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


def _pillow_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("RGB")).astype(int)


def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def _scan_data_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


# --- 1. a cut JPEG ended by a marker that is not the end marker: accepted half grey -------------------------------

def test_a_cut_jpeg_ended_by_a_marker_that_is_not_its_end_marker_is_truncated() -> None:
    """README section 3 says "Cut without its end marker, a JPEG was already truncated_image (Pillow's 'image file
    is truncated')". That holds for a cut in the scan data (libjpeg waits for more bytes). But where any marker
    follows the cut, libjpeg stops reading the scan there (grey-filling the rest, a dropped warning) and needs no
    more bytes, while ``jpeg_layout`` finds no end marker and gives no verdict, so the check never runs."""
    out = io.BytesIO()
    natural_image(7, (256, 192)).save(out, "JPEG", quality=90)
    whole = out.getvalue()
    start = _scan_data_start(whole)
    cut = whole[:start + int((len(whole) - 2 - start) * 0.4)]
    thumbnail = io.BytesIO()
    natural_image(8, (32, 24)).save(thumbnail, "JPEG", quality=50)
    tails = {
        "COM": _segment(0xFE, b"uploaded with app 1.2"),
        "RST0": b"\xff\xd0",
        "APP1 holding a thumbnail (its own EOI)": _segment(0xE1, b"Exif\x00\x00" + thumbnail.getvalue()),
        "APP1 length past the end": b"\xff\xe1\xff\xff" + b"\x00" * 64,
    }
    assert outcome(cut + b"\xff\xd9") == "truncated_image"         # the same cut with an end marker (fix31f)
    for name, tail in tails.items():
        data = cut + tail
        assert (_pillow_pixels(data) == 128).all(axis=(1, 2)).mean() > 0.5, name   # decodes, half of it grey
    verdicts = {name: (outcome(cut + tail), reuse_outcome(cut + tail)) for name, tail in tails.items()}
    assert verdicts == {name: ("truncated_image", "truncated_image") for name in tails}


# --- 2. a letter with a stroke or slash keys apart from the same letter typed with the overlay mark ----------------

def _splits_of(tmp_path, prompt: str, copies: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """User V (filled into validation) types ``prompt``; train user T then types each of ``copies``. Returns the
    kept rows (pair_id -> split) and pair_id -> caption of T's copies."""
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


def test_a_validation_prompt_with_a_stroked_letter_is_not_kept_in_train_typed_with_the_overlay(tmp_path) -> None:
    """``ø`` and ``o`` + U+0338 (combining long solidus overlay) are drawn alike, as are ``đ`` and ``d`` + U+0335,
    ``ł`` and ``l`` + U+0338, ``ħ`` and ``h`` + U+0335: the key of the precomposed letter is its ICU skeleton, which
    is exactly that base + mark (``smørrebrød`` keys as ``smo̸rrebro̸d``), but the typed mark is removed as decorative
    before the fold (``smo̸rrebro̸d`` keys as ``smorrebrod``). 171 letters of planes 0 and 1 key so."""
    pairs = {"ø": "o\u0338", "đ": "d\u0335", "ł": "l\u0338", "ħ": "h\u0335", "θ": "o\u0335", "ƶ": "z\u0335"}
    apart = {letter: (normalize_prompt(f"x{letter}x"), normalize_prompt(f"x{look}x"))
             for letter, look in pairs.items()
             if normalize_prompt(f"x{letter}x") != normalize_prompt(f"x{look}x")}
    assert not apart, f"drawn alike, keyed apart: {apart}"
    prompt = "a bowl of smørrebrød on a łódź table"
    copy = prompt.replace("ø", "o\u0338").replace("ł", "l\u0338")
    kept, captions = _splits_of(tmp_path, prompt, [copy])
    assert kept["2_0"] == "validation"
    in_train = sorted(captions[p] for p, split in kept.items() if p in captions and split == "train")
    assert not in_train, f"the validation prompt {prompt!r} is published in train as {in_train}"


# --- 3. a restart-interval JPEG missing whole intervals: accepted with grey stripes ---------------------------------

def test_a_restart_jpeg_missing_whole_intervals_is_truncated() -> None:
    """README section 3: a JPEG "whose data ran out anywhere (a cut, an interval short of bytes in the middle, a
    stray RSTn)" decodes to other pixels with the filler. An interval short of all its bytes (its data and its
    marker gone: a lost block of a transfer), or one whose marker's number is off by one (one byte), is not
    seen: libjpeg takes the next marker as one or two intervals ahead, decodes the intervals between as grey and
    goes on at the right place, whatever filler is before the marker."""
    out = io.BytesIO()
    natural_image(4, (256, 192)).save(out, "JPEG", quality=90, restart_marker_rows=1)
    whole = out.getvalue()
    restarts = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", whole)]
    k = len(restarts) // 2
    wrong = bytearray(whole)
    wrong[restarts[k] + 1] = 0xD0 + (wrong[restarts[k] + 1] - 0xD0 + 1) % 8
    damaged = {"one interval gone": whole[:restarts[k]] + whole[restarts[k + 1]:],
               "two intervals gone": whole[:restarts[k]] + whole[restarts[k + 2]:],
               "a restart marker's number off by one": bytes(wrong)}
    reference = _pillow_pixels(whole)
    for name, data in damaged.items():      # Pillow decodes each, a stripe of 256 x 16 or 32 pixels wrong
        assert (np.abs(_pillow_pixels(data) - reference).max(axis=2) > 16).sum() > 3000, name
    verdicts = {name: (outcome(data), reuse_outcome(data)) for name, data in damaged.items()}
    assert verdicts == {name: ("truncated_image", "truncated_image") for name in damaged}


# --- 4. a keycap on a fullwidth or mathematical digit is not read as the digit ---------------------------------------

def test_a_validation_prompt_with_keycaps_on_fullwidth_digits_is_not_kept_in_train(tmp_path) -> None:
    prompt = "12 cats on a sofa"
    assert normalize_prompt("1\ufe0f\u20e32\ufe0f\u20e3 cats on a sofa") == prompt        # emoji keycaps (held)
    assert normalize_prompt("①② cats on a sofa") == prompt                               # circled digits (held)
    copies = ["\uff11\u20e3\uff12\u20e3 cats on a sofa",                       # fullwidth digits, keycap
              "\U0001d7cf\u20e3\U0001d7d0\u20e3 cats on a sofa"]               # mathematical bold digits, keycap
    apart = {copy: normalize_prompt(copy) for copy in copies if normalize_prompt(copy) != prompt}
    assert not apart, f"keyed apart from {prompt!r}: {apart}"
    kept, captions = _splits_of(tmp_path, prompt, copies)
    assert kept["2_0"] == "validation"
    in_train = sorted(captions[p] for p, split in kept.items() if p in captions and split == "train")
    assert not in_train, f"the validation prompt {prompt!r} is published in train as {in_train}"
