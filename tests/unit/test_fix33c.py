"""fix33c: review rev33c's defects fixed, and their neighbours.

JPEG: every JPEG Pillow decodes is decoded again at 1/8 scale by libjpeg-turbo with its warnings as errors
(``decode.libjpeg_warning``: simplejpeg's strict decode) and a corrupt-data warning is ``truncated_image``
(``decode.jpeg_corrupt_data``), in every layout and on the reuse path; whole JPEGs of the layouts review rev33c held
up stay accepted; a progressive JPEG cut in a refining scan stays a coarser image (README section 3).

The prompt key: a letter ICU's confusable data leaves whole that Unicode names as a base letter with an overlay
(stroke, bar, slash, middle tilde) keys as that base letter, as the base letter typed with an overlay mark does
(``assign._overlaid_letters``), in prompt keys and moderation keys / texts; key version 13.
"""
from __future__ import annotations

import io
import unicodedata

import cv2
import numpy as np
from PIL import Image
from test_features_fixtures import natural_image

from dagster_project.versions import CODE_VERSIONS
from pipelines.features import decode
from pipelines.features.config import FeaturesConfig
from pipelines.splits import assign
from pipelines.splits.assign import moderation_key, moderation_text, normalize_prompt

LIMITS = FeaturesConfig().decode_limits()
OVERLAYS = "\u0334\u0335\u0336\u0337\u0338"   # tilde, short and long stroke, short and long solidus overlays


def verdicts(data: bytes) -> tuple[str, str]:
    """(decode_image's outcome, refuse_jpeg_data_ran_out's: the reuse path)."""
    outcomes = []
    for check in (lambda: decode.decode_image(data, "raw/images/x.jpg", **LIMITS),
                  lambda: decode.refuse_jpeg_data_ran_out(data, "raw/images/x.jpg")):
        try:
            check()
            outcomes.append("accepted")
        except decode.ImageRejected as rejected:
            outcomes.append(rejected.reason)
    return outcomes[0], outcomes[1]


def _jpeg(size=(200, 152), seed=7, grey=False, **options) -> bytes:
    out = io.BytesIO()
    image = natural_image(seed, size)
    (image.convert("L") if grey else image).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _zeroed(data: bytes, scan: decode.JpegScan, fraction: float, count: int = 64) -> bytes:
    at = scan.data + int((scan.end - scan.data) * fraction)
    return data[:at] + b"\x00" * count + data[at + count:]


# --- JPEG: corrupt scan data ----------------------------------------------------------------------------------------

def test_zeroed_scan_data_is_truncated_in_every_layout_and_on_the_reuse_path() -> None:
    """Offsets where libjpeg warns: not every damage does (a resynchronised decode ending within the bytes libjpeg
    reads ahead of the marker, with the right number of blocks, warns nothing: 4:4:4 zeroed at 40 % or 50 %)."""
    cases = {"4:2:0 at 60%": (_jpeg(), 0.6), "greyscale": (_jpeg(grey=True), 0.6),
             "restart every 3 MCUs": (_jpeg(restart_marker_blocks=3), 0.6), "4:4:4": (_jpeg(subsampling=0), 0.2),
             "progressive DC scan": (_jpeg(progressive=True), 0.6)}
    for name, (data, fraction) in cases.items():
        damaged = _zeroed(data, decode.jpeg_layout(data).scans[0], fraction)
        assert decode.jpeg_corrupt_data(damaged, decode.jpeg_layout(damaged)), name
        assert verdicts(damaged) == ("truncated_image",) * 2, name


def test_zeroed_data_in_a_refining_scan_is_truncated_but_a_cut_one_is_a_coarser_image() -> None:
    data = _jpeg(progressive=True)
    layout = decode.jpeg_layout(data)
    refining = layout.scans[1]
    assert not refining.first_pass
    damaged = _zeroed(data, refining, 0.6)
    assert "extraneous bytes" in decode.libjpeg_warning(damaged)
    assert verdicts(damaged) == ("truncated_image",) * 2
    cut = data[:(refining.data + refining.end) // 2] + b"\xff\xd9"       # libjpeg: premature end of data segment
    assert "premature end" in decode.libjpeg_warning(cut)
    assert verdicts(cut) == ("accepted",) * 2                            # README section 3: kept by design
    first = layout.scans[0]
    assert verdicts(data[:(first.data + first.end) // 2] + b"\xff\xd9") == ("truncated_image",) * 2


def test_a_cut_padded_with_zeros_or_ff_free_junk_before_the_end_marker_is_truncated() -> None:
    data = _jpeg()
    scan = decode.jpeg_layout(data).scans[0]
    for fraction in (0.5, 0.9):
        at = scan.data + int((scan.end - scan.data) * fraction)
        for pad in (b"\x00" * 4096, b"\x00" * 100, bytes(range(1, 255)) * 4):
            assert verdicts(data[:at] + pad + b"\xff\xd9") == ("truncated_image",) * 2, (fraction, len(pad))


def test_heights_one_past_the_mcu_grid_cut_in_the_last_mcu_row_are_truncated() -> None:
    for size, subsampling in (((256, 129), 2), ((256, 97), 2), ((256, 129), 1), ((200, 97), 2)):
        data = _jpeg(size, 11, subsampling=subsampling)
        for lost in (50, 300):
            cut = data[:len(data) - 2 - lost] + b"\xff\xd9"
            assert verdicts(cut) == ("truncated_image",) * 2, (size, subsampling, lost)


def test_the_detail_names_libjpegs_warning() -> None:
    data = _jpeg()
    scan = decode.jpeg_layout(data).scans[0]
    damaged = data[:scan.data + int((scan.end - scan.data) * 0.9)] + b"\x00" * 4096 + b"\xff\xd9"
    try:
        decode.decode_image(damaged, "raw/images/{x}.jpg", **LIMITS)
    except decode.ImageRejected as rejected:
        assert rejected.reason == "truncated_image"
        assert "raw/images/{x}.jpg" in rejected.detail and "Corrupt JPEG data" in rejected.detail
    else:
        raise AssertionError("accepted")


def test_whole_jpegs_of_every_layout_give_no_warning_and_stay_accepted() -> None:
    whole = _jpeg()
    pixels = np.asarray(natural_image(3, (160, 120)))
    opencv = [cv2.imencode(".jpg", pixels, params)[1].tobytes() for params in (
        [cv2.IMWRITE_JPEG_QUALITY, 1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1],
        [cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 3])]
    cases = [_jpeg(progressive=True), _jpeg(restart_marker_rows=1), _jpeg(grey=True, progressive=True),
             _jpeg((64, 64), subsampling=1), *opencv,
             whole + b"\x00" * 100, whole + b"\xff\xff\xff", whole + whole,               # bytes after the end marker
             whole[:-2] + b"\xff" * 5 + whole[-2:],                                       # fill bytes before it
             whole[:-2] + b"\xff\xd0" + whole[-2:],                                       # a trailing RST0
             whole[:-2] + b"\xff\xfe\x00\x04hi" + whole[-2:],                             # a COM after the scan
             _flat(128), _flat(127), _flat(0)]                                           # flat mid-grey
    for data in cases:
        assert decode.libjpeg_warning(data) is None
        assert verdicts(data) == ("accepted",) * 2


def _flat(level: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (level,) * 3).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_warning_that_is_not_corrupt_data_gives_no_verdict(monkeypatch) -> None:
    data = _jpeg()
    layout = decode.jpeg_layout(data)
    for warning in ("Corrupt JPEG data: found marker 0xd3 instead of RST2", "Premature end of JPEG file",
                    "Corrupt JPEG data: bad ICC marker", "Warning: unknown JFIF revision number 2.01"):
        monkeypatch.setattr(decode, "libjpeg_warning", lambda _data, w=warning: w)
        assert decode.jpeg_corrupt_data(data, layout) is None, warning
    monkeypatch.setattr(decode, "libjpeg_warning", lambda _data: "Corrupt JPEG data: bad Huffman code")
    assert "bad Huffman code" in decode.jpeg_corrupt_data(data, layout)


# --- the prompt key: letters with an overlay ------------------------------------------------------------------------

def test_every_overlaid_letter_icu_leaves_whole_keys_as_its_base_letter_with_any_overlay() -> None:
    checker = assign._spoof_checker()
    whole = {letter: base for letter, base in assign._overlaid_letters().items()
             if checker.getSkeleton(0, letter) == letter}
    assert {"ⱥ", "ꞓ", "ꞹ", "ꝃ", "ꝑ", "ꝗ", "ꝙ", "ꝟ", "ᵬ", "ᵭ", "ᵱ", "ӿ", "Ⱥ", "Ꞓ", "Ӿ"} <= set(whole)
    for letter, base in whole.items():
        key = normalize_prompt(f"x{letter}x")
        assert key == normalize_prompt(f"x{letter.swapcase()}x"), letter                  # case never changes it
        for overlay in OVERLAYS:
            assert key == normalize_prompt(f"x{unicodedata.normalize('NFKC', base)}{overlay}x"), (letter, overlay)


def test_overlaid_letters_are_named_by_unicode_and_the_others_stay_themselves() -> None:
    letters = assign._overlaid_letters()
    assert letters["ⱥ"] == "a" and letters["ӿ"] == "х" and letters["ꝅ"] == "k"      # stroke and diagonal stroke
    assert letters["\U0001df1a"] == "ᶖ"              # I WITH STROKE AND RETROFLEX HOOK keeps its hook
    assert normalize_prompt("xẜx") == normalize_prompt("xſ\u0338x") == "xsx"     # the base as NFKC reads it
    for letter in ("ҝ", "ҹ", "ƃ", "ƛ", "ʄ"):          # vertical stroke, top bar; no named base letter
        assert letter not in letters
    assert normalize_prompt("xҝx") == "xҝx"
    assert normalize_prompt("ⱥ ꞓ ӿ") == normalize_prompt("Ⱥ Ꞓ Ӿ") == "a c x"


def test_moderation_keys_and_texts_fold_overlaid_letters() -> None:
    assert moderation_key("ⱥ ꞓarved ꝃey") == moderation_key("a\u0338 c\u0335arved k\u0338ey") == "a carved key"
    assert moderation_text("ⱥ+ꞓ!") == moderation_text("a\u0338+c\u0335!") == "a+c!"


def test_the_versions_were_bumped() -> None:
    assert int(assign.KEY_VERSION) >= 13
    assert int(CODE_VERSIONS["features"]) >= 11 and int(CODE_VERSIONS["splits"]) >= 17
    assert int(CODE_VERSIONS["decisions"]) >= 14
