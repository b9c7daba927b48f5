"""decode.png_problem's IHDR, ancillary-chunk and metadata rules (review rev18b): a PNG gets the same outcome
whether its image data is last (libspng's path) or a text chunk follows it (Pillow's path)."""
from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest
from PIL import PngImagePlugin

sys.path.insert(0, str(Path(__file__).parent))
from test_hostile_rev18b import IEND, SIG, TEXT_AFTER, _chunk, _idat, _ihdr, _outcome

from pipelines.features import decode as imagedecode

PLTE = _chunk(b"PLTE", bytes(range(48)))
INDEXED_IDAT = _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes(32) for _ in range(32))))


def _both(head: bytes, chunks: bytes, idat: bytes | None = None) -> tuple[str, str]:
    """Outcome with ``chunks`` before the image data and it last, and with a tEXt after the image data."""
    idat = _idat() if idat is None else idat
    return _outcome(SIG + head + chunks + idat + IEND), _outcome(SIG + head + chunks + idat + TEXT_AFTER + IEND)


def _ztxt(size: int) -> bytes:
    return _chunk(b"zTXt", b"c\x00\x00" + zlib.compress(b"\x00" * size, 9))


@pytest.mark.parametrize("ihdr", [dict(bits=4), dict(filter_method=1), dict(interlace=2), dict(width=0),
                                  dict(colour=3, bits=16), dict(compression=1), dict(extra=b"\x00")])
def test_an_invalid_ihdr_is_truncated_image_in_either_layout(ihdr: dict) -> None:
    assert _both(_ihdr(**ihdr), b"") == ("truncated_image", "truncated_image")


@pytest.mark.parametrize("chunks", [_chunk(b"gAMA", struct.pack(">I", 45455)) * 2,
                                    _chunk(b"tIME", b"\x07\xea\x0c\x05\x00\x00\x00") * 2,
                                    _chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)) * 2])
def test_a_repeated_once_only_chunk_is_truncated_image_in_either_layout(chunks: bytes) -> None:
    assert _both(_ihdr(), chunks) == ("truncated_image", "truncated_image")
    assert _both(_ihdr(), chunks[:len(chunks) // 2]) == ("accepted", "accepted")


def test_the_chunks_tied_to_the_palette_must_sit_on_their_side_of_it() -> None:
    trns, gama = _chunk(b"tRNS", b"\x00"), _chunk(b"gAMA", struct.pack(">I", 45455))
    head = _ihdr(colour=3)
    assert _both(head, PLTE + trns, INDEXED_IDAT) == ("accepted", "accepted")
    assert _both(head, trns + PLTE, INDEXED_IDAT) == ("truncated_image", "truncated_image")   # libspng: fatal
    assert _both(head, gama + PLTE, INDEXED_IDAT) == ("accepted", "accepted")
    assert _both(head, PLTE + gama, INDEXED_IDAT) == ("truncated_image", "truncated_image")
    after_image_data = SIG + _ihdr() + _idat() + _chunk(b"pHYs", struct.pack(">IIB", 1, 1, 1)) + IEND
    assert _outcome(after_image_data) == "truncated_image"


def test_a_non_empty_iend_is_truncated_image_in_either_layout() -> None:
    iend = _chunk(b"IEND", b"x")
    assert _outcome(SIG + _ihdr() + _idat() + iend) == _outcome(SIG + _ihdr() + _idat() + TEXT_AFTER + iend) == "truncated_image"


def test_libspngs_text_chunk_limit_applies_to_the_whole_file() -> None:
    texts = [_chunk(b"tEXt", b"k%d\x00v" % i) for i in range(imagedecode.MAX_PNG_KEPT_CHUNKS)]
    assert _outcome(SIG + _ihdr() + b"".join(texts) + _idat() + IEND) == "accepted"       # 1,000: libspng's most
    assert _outcome(SIG + _ihdr() + b"".join(texts[1:]) + _idat() + TEXT_AFTER + IEND) == "accepted"
    assert _outcome(SIG + _ihdr() + b"".join(texts[:500]) + _idat() + b"".join(texts[500:]) + TEXT_AFTER + IEND) \
        == "decompression_bomb"


def test_compressed_metadata_is_bounded_per_chunk_and_in_all() -> None:
    cap = PngImagePlugin.MAX_TEXT_CHUNK
    assert _both(_ihdr(), _ztxt(cap - 10)) == ("accepted", "accepted")
    assert _both(_ihdr(), _ztxt(cap + 10)) == ("decompression_bomb", "decompression_bomb")
    fits = imagedecode.MAX_PNG_METADATA // cap - 1
    assert _both(_ihdr(), _ztxt(cap - 10) * fits) == ("accepted", "accepted")
    assert _both(_ihdr(), _ztxt(cap - 10) * (fits + 3)) == ("decompression_bomb", "decompression_bomb")
    itxt = _chunk(b"iTXt", b"c\x00\x01\x00\x00\x00" + zlib.compress(b"\x00" * (cap + 10), 9))
    assert _both(_ihdr(), itxt) == ("decompression_bomb", "decompression_bomb")


def test_png_problem_names_its_reason() -> None:
    good = SIG + _ihdr() + _idat() + IEND
    assert imagedecode.png_problem(good) is None
    reason, detail = imagedecode.png_problem(SIG + _ihdr() + _chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"x")) * 2
                                              + _idat() + IEND)
    assert reason == "decompression_bomb" and "iCCP" in detail
    assert imagedecode.png_problem(SIG + _ihdr(compression=1) + _idat() + IEND)[0] == "truncated_image"


def test_compressed_chunks_are_read_as_pillow_reads_them() -> None:
    """Review rev18d: the scan inflates exactly what Pillow's chunk_zTXt / chunk_iTXt / chunk_iCCP inflate."""
    part = imagedecode._compressed_part
    stream = zlib.compress(b"x" * 100)
    long_keyword = b"k" * 85
    assert part(b"zTXt", long_keyword + b"\x00\x00" + stream) == stream          # first NUL, however far
    assert part(b"iCCP", long_keyword + b"\x00\x00" + stream) == stream
    assert part(b"iTXt", long_keyword + b"\x00\x01\x00en\x00t\x00" + stream) == stream
    assert part(b"iTXt", b"k\x00\x02\x00\x00\x00" + stream) == stream           # any non-zero flag
    assert part(b"iTXt", b"k\x00\x01\x01\x00\x00" + stream) is None             # method 1: Pillow keeps it as is
    assert part(b"iTXt", b"k\x00\x00\x00\x00\x00" + stream) is None             # not compressed
    assert part(b"zTXt", b"k\x00\x01" + stream) is None                         # method 1: Pillow refuses it
    assert part(b"iCCP", b"p\x00\x01" + stream) is None
    assert part(b"iCCP", b"\x00\x00" + stream) == stream                        # an empty name, as Pillow
    assert part(b"iCCP", b"\x00" + stream) is None                             # method 0x78: SyntaxError
    assert part(b"iCCP", b"p") is None and part(b"zTXt", b"k") is None        # no NUL: nothing inflated


def test_an_iccp_profile_with_a_long_name_counts_towards_the_metadata_cap() -> None:
    size = 1_000_000
    iccp = _chunk(b"iCCP", b"p" * 85 + b"\x00\x00" + zlib.compress(b"\x00" * size, 9))
    texts = b"".join(_chunk(b"zTXt", b"c%d\x00\x00" % i + zlib.compress(b"\x00" * size, 9)) for i in range(8))
    assert 8 * size <= imagedecode.MAX_PNG_METADATA < 9 * size
    assert _outcome(SIG + _ihdr() + texts + _idat() + IEND) == "accepted"
    assert _outcome(SIG + _ihdr() + iccp + texts + _idat() + IEND) == "decompression_bomb"


def test_chunks_pillow_never_inflates_are_counted_at_their_size() -> None:
    big = zlib.compress(b"\x00" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), 9)
    kept = _chunk(b"iTXt", b"c\x00\x01\x01\x00\x00" + big)        # compression method 1: Pillow keeps the bytes
    assert _both(_ihdr(), kept) == ("accepted", "accepted")
    refused = _chunk(b"zTXt", b"c\x00\x01" + big)                 # method 1: Pillow's SyntaxError, not a bomb
    assert _both(_ihdr(), refused) == ("truncated_image", "truncated_image")


@pytest.mark.parametrize("kind", [b"ab d", b"a\xffCd", b"ab1d", b"ab_d"])
def test_a_chunk_type_must_be_four_ascii_letters(kind: bytes) -> None:
    assert imagedecode.png_problem(SIG + _ihdr() + _idat() + _chunk(kind, b"x") + IEND)[0] == "truncated_image"
    assert _both(_ihdr(), _chunk(kind, b"x")) == ("truncated_image", "truncated_image")
