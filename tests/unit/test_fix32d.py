"""fix32d: review rev32d's decoder and prompt-key defects fixed (``tests/unit/test_hostile_rev32d.py``; README
sections 3 and 5).

JPEG (``pipelines/features/decode.py``): ``jpeg_layout`` no longer gives up where the bytes end before an end marker
(a cut followed by a COM, an RSTn, an APP1 holding a thumbnail, a segment length past the end): the layout ends at
the file's end and the filler goes before the marker that stopped the scan; ``jpeg_with_filler`` numbers a first
pass scan's restart markers as libjpeg expects them, so a scan missing whole intervals (or with a marker's number one
or two off, which libjpeg resyncs on with grey intervals) decodes otherwise with the filler. These tests pin the
edges: whole files without an end marker stay accepted, a marker's number libjpeg takes as the expected one (data
whole) stays accepted, refining scans stay by design, and both the decode and the reuse path agree.

Key (``pipelines/splits/assign.py``, key version 12): ICU's skeleton of a letter or digit loses the decorative marks
the key removes where typed (``ø`` keys as ``o``, as ``o̸`` does); a keycap reads on any character NFKC reads as a
digit, ``#`` or ``*``, invisibles and decorative marks between allowed; the moderation key and text follow (the
real curation stage below).
"""
from __future__ import annotations

import io
import re
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder
from PIL import Image
from test_features_fixtures import natural_image

from dagster_project.versions import CODE_VERSIONS
from pipelines.curation.decisions import CurationConfig, build_decisions
from pipelines.curation.dedup import DedupConfig, build_clusters
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.splits import assign
from pipelines.splits.assign import moderation_key, moderation_text, normalize_prompt

LIMITS = FeaturesConfig().decode_limits()
COM = b"\xff\xfe\x00\x0bapp 1.2.3"


def verdicts(data: bytes) -> tuple[str, str]:
    """(decode_image's outcome, refuse_jpeg_data_ran_out's outcome)."""
    out = []
    for check in (lambda: decode.decode_image(data, "raw/images/x.jpg", **LIMITS),
                  lambda: decode.refuse_jpeg_data_ran_out(data, "raw/images/x.jpg")):
        try:
            check()
        except decode.ImageRejected as rejected:
            out.append(rejected.reason)
        else:
            out.append("accepted")
    return out[0], out[1]


def _jpeg(seed: int = 4, size: tuple[int, int] = (160, 128), **options) -> bytes:
    out = io.BytesIO()
    natural_image(seed, size).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _scan_data_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _restarts(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", data)]


def _thumbnail_app1() -> bytes:
    thumbnail = io.BytesIO()
    natural_image(8, (32, 24)).save(thumbnail, "JPEG", quality=50)
    body = b"Exif\x00\x00" + thumbnail.getvalue()
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


# --- JPEG: no end marker ---------------------------------------------------------------------------------------------

def test_a_whole_jpeg_whose_end_marker_is_replaced_by_a_segment_stays_accepted() -> None:
    """Every block's data present, then a COM, a thumbnail's APP1 or a stray RST0 instead of the end marker: the
    filler before that marker is skipped as junk (the scan is whole), so nothing changes."""
    for options in ({}, {"restart_marker_rows": 1}, {"restart_marker_blocks": 3}):
        whole = _jpeg(**options)
        for tail in (COM, _thumbnail_app1(), b"\xff\xd0", b"\xff\xe1\xff\xff" + b"\x00" * 16):
            assert verdicts(whole[:-2] + tail) == ("accepted", "accepted"), (options, tail[:4])


def test_cuts_ended_by_another_marker_are_truncated_in_every_layout() -> None:
    for options in ({}, {"restart_marker_rows": 1}, {"restart_marker_blocks": 3}, {"progressive": True}):
        whole = _jpeg(**options)
        start = _scan_data_start(whole)
        cut = whole[:start + (len(whole) - start) // 3]
        cut = cut.rstrip(b"\xff")          # not inside a marker
        for tail in (COM, _thumbnail_app1(), b"\xff\xe1\xff\xff" + b"\x00" * 16):
            assert verdicts(cut + tail)[0] == "truncated_image", (options, tail[:4])
            assert verdicts(cut + tail)[1] in ("truncated_image", "accepted")   # no Pillow decode: no verdict
            if verdicts(cut + tail)[1] == "accepted":
                with pytest.raises(Exception):                                  # the decode itself failed
                    Image.open(io.BytesIO(cut + tail)).load()


def test_the_layout_without_an_end_marker_ends_at_the_files_end() -> None:
    whole = _jpeg()
    start = _scan_data_start(whole)
    cut = whole[:start + 900].rstrip(b"\xff")
    layout = decode.jpeg_layout(cut + COM)
    assert layout.end == len(cut + COM) and layout.scans[0].end == len(cut)         # filler before the COM
    layout = decode.jpeg_layout(cut + b"\xff\xe1\xff\xff")                          # a length past the end
    assert layout.end == len(cut) + 4 and layout.scans[0].end == len(cut)
    layout = decode.jpeg_layout(cut + b"\xff\xe1")                                  # a marker with no length
    assert layout.end == len(cut) + 2 and layout.scans[0].end == len(cut)
    layout = decode.jpeg_layout(cut)                                                # a plain cut: to the end
    assert layout.end == layout.scans[0].end == len(cut)
    layout = decode.jpeg_layout(cut + b"\xff\xd0")                                  # a stray RST0 last
    assert layout.scans[0].restarts == (len(cut),) and layout.scans[0].end == len(cut) + 2
    filled = decode.jpeg_with_filler(cut + COM, decode.jpeg_layout(cut + COM))
    assert filled == cut + decode.JPEG_FILLER + COM
    assert decode.jpeg_layout(b"\xff\xd8\xff\xd9") is None                          # still: no scan, no verdict


# --- JPEG: restart markers numbered as libjpeg expects ----------------------------------------------------------------

def test_a_restart_markers_number_libjpeg_takes_as_expected_stays_accepted_others_not() -> None:
    """libjpeg (``jpeg_resync_to_restart``) reads a marker one or two ahead as intervals lost (grey), one or two
    behind as an interval to skip; any other number as the marker it expected, the data whole: those pixels are
    the image's, kept."""
    whole = _jpeg(size=(192, 160), restart_marker_rows=1)
    reference = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB")).astype(int)
    k = len(_restarts(whole)) // 2
    at = _restarts(whole)[k]
    for delta in range(1, 8):
        wrong = bytearray(whole)
        wrong[at + 1] = 0xD0 + (wrong[at + 1] - 0xD0 + delta) % 8
        pixels = np.asarray(Image.open(io.BytesIO(bytes(wrong))).convert("RGB")).astype(int)
        damaged = bool((np.abs(pixels - reference) > 16).any())
        assert damaged == (delta in (1, 2, 6, 7)), delta
        expected = "truncated_image" if damaged else "accepted"
        assert verdicts(bytes(wrong)) == (expected, expected), delta


def test_intervals_gone_in_any_number_are_truncated() -> None:
    whole = _jpeg(size=(192, 160), restart_marker_blocks=4)
    restarts = _restarts(whole)
    k = len(restarts) // 3
    for gone in (1, 2, 3, 8, 9):       # 8: the numbering agrees again, the scan ends short (the end filler)
        assert verdicts(whole[:restarts[k]] + whole[restarts[k + gone]:]) == ("truncated_image",) * 2, gone
    assert verdicts(whole[:restarts[0]] + whole[restarts[1]:]) == ("truncated_image",) * 2     # the first
    assert verdicts(whole[:restarts[-2]] + whole[restarts[-1]:]) == ("truncated_image",) * 2   # the last


def test_a_progressive_restart_jpeg_missing_an_interval_of_a_refining_scan_stays_by_design() -> None:
    data = _jpeg(size=(192, 160), progressive=True, restart_marker_rows=1)
    scans = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    outcomes = []
    for i, sos in enumerate(scans[:3]):
        inside = [r for r in _restarts(data) if sos < r < scans[i + 1]]
        outcomes.append(verdicts(data[:inside[1]] + data[inside[2]:]))
    assert outcomes[0] == ("truncated_image",) * 2        # the DC first scan: its blocks grey
    assert outcomes[1:] == [("accepted",) * 2] * 2        # AC scans: a coarser image (kept, README section 3)


def test_the_filler_numbers_restart_markers_and_changes_nothing_of_a_whole_jpeg() -> None:
    whole = _jpeg(restart_marker_blocks=2)
    wrong = bytearray(whole)
    for at in _restarts(whole)[3:]:
        wrong[at + 1] = 0xD0 + (wrong[at + 1] - 0xD0 + 1) % 8
    layout = decode.jpeg_layout(bytes(wrong))
    filled = decode.jpeg_with_filler(bytes(wrong), layout)
    numbers = [filled[at + 1] - 0xD0 for at in _restarts(filled)]
    assert numbers == [i % 8 for i in range(len(numbers))] and len(numbers) == len(_restarts(whole)) + 1
    image = Image.open(io.BytesIO(whole))
    image.load()
    assert decode.jpeg_data_ran_out(whole, image) is None
    assert verdicts(bytes(wrong)) == ("truncated_image",) * 2


def test_a_plain_jpeg_is_still_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(size=(200, 152))           # off the 16-pixel grid
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    decode.decode_image(data, "raw/images/x.jpg", **LIMITS)
    assert len(opened) == 1


# --- the key: ICU's skeleton without decorative marks -----------------------------------------------------------------

def test_no_letter_or_digit_folds_to_a_decorative_mark() -> None:
    marks = assign._decorative_marks()
    held = [hex(cp) for cp in range(0x20000) if unicodedata.category(chr(cp))[0] in "LN"
            and marks.search(assign._caseless_prototype(chr(cp)))]
    assert not held


def test_capital_and_accented_stroked_letters_key_as_typed_with_the_overlay() -> None:
    pairs = {"Ø": "O\u0338", "Đ": "D\u0335", "Ł": "L\u0338", "Ħ": "H\u0335", "Ƶ": "Z\u0335", "ǿ": "\u00f3\u0338",
             "Ǿ": "\u00d3\u0338", "ɨ": "i\u0335"}
    for letter, look in pairs.items():
        assert normalize_prompt(f"x{letter}x") == normalize_prompt(f"x{look}x"), letter
        assert moderation_key(f"a {letter}") == moderation_key(f"a {look}"), letter
        assert moderation_text(f"a {letter}!") == moderation_text(f"a {look}!"), letter
    assert moderation_key("łódź") == moderation_key("l\u0338ódź") == "lódź"


def test_a_symbol_drawn_with_an_overlay_keeps_its_meaning_in_the_moderation_text() -> None:
    """Only a letter's or digit's skeleton loses the marks: ``≠`` (ICU: ``=`` + U+0338) is not ``=``."""
    assert moderation_text("a ≠ b") != moderation_text("a = b")
    assert normalize_prompt("ø ≠ o") == "o o"


# --- the key: keycaps on any form of a digit, # or * -----------------------------------------------------------------

def test_keycaps_read_on_every_form_of_a_digit_hash_or_star() -> None:
    assert normalize_prompt("\uff03\u20e3 \uff0a\u20e3 tag") == normalize_prompt("#\ufe0f\u20e3 *\u20e3 tag") == "tag"
    assert normalize_prompt("\u00b9\u20e3\u2082\u20e3 cats") == "12 cats"                   # superscript, subscript
    assert normalize_prompt("1\u0332\u20e32\u0332\ufe0f\u20e3 cats") == "12 cats"          # decorative marks between
    assert normalize_prompt("\U0001d7ec\u20e3 cats") == "0 cats"                           # sans-serif bold zero
    assert normalize_prompt("\uff11\u20e3") == normalize_prompt("1\ufe0f\u20e3")           # a symbol-only key
    assert normalize_prompt("a\u0301\u20e3 cat") != "a cat" and "\u20e3" in normalize_prompt("x\u20e3 cat")
    assert "\u20e3" in normalize_prompt("\u0663\u20e3 cats")        # Arabic-Indic 3: NFKC keeps it, so its keycap


def test_the_moderation_text_reads_keycaps_on_fullwidth_digits() -> None:
    for typed in ("\uff11\u20e3\uff18\u20e3+", "\U0001d7cf\u20e3\U0001d7d6\u20e3+", "1\u0332\u20e38\u20e3+"):
        assert moderation_text(f"only {typed}") == "only 18+", typed


def test_the_moderation_stage_catches_the_phrases_behind_keycaps_and_overlays(tmp_path) -> None:
    builder = HomeBuilder(tmp_path / "moderation")
    builder.phrases = ["18+", "łódź", "smørrebrød"]
    builder.pair(1, user=1, prompt="a \uff11\u20e3\uff18\u20e3+ picture")
    builder.pair(2, user=2, prompt="a 1\u0332\u20e38\u20e3+ picture")
    builder.pair(3, user=3, prompt="a l\u0338ódź street")
    builder.pair(4, user=4, prompt="a plate of smo\u0338rrebro\u0338d")
    builder.pair(5, user=5, prompt="18 cats on a sofa")                     # no phrase
    home = builder.write()
    build_clusters(home, DedupConfig())
    build_decisions(home, CurationConfig())
    dropped = {r["subject_id"] for r in pq.read_table(home.table_file("decisions")).to_pylist()
               if r["subject"] == "ranking" and r["reason"] == "prompt_phrase"}
    assert dropped == {"1", "2", "3", "4"}


def test_the_versions_were_bumped() -> None:
    assert int(assign.KEY_VERSION) >= 12          # at least (fix33c bumped them again: 13, features 11, splits 17)
    assert int(CODE_VERSIONS["features"]) >= 10 and int(CODE_VERSIONS["splits"]) >= 16
    assert int(CODE_VERSIONS["decisions"]) >= 12
