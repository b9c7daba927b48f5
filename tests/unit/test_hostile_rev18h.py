"""Hostile review rev18h: the rev18d fix round of the PNG chunk scan (decode.scan_png / _compressed_part /
png_problem, README section 3).

Invariant under attack: every PNG gets one outcome whichever decoder runs (libspng when its image data is last,
Pillow when a chunk follows it), and the scan's documented bomb limits count what Pillow inflates ("each zTXt, iTXt
and iCCP is read exactly as Pillow reads it, so what Pillow inflates is what is counted"). Each test is a
confirmed defect, filed as a strict xfail and fixed the same day (December 5, 2026)."""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_hostile_rev17_input import _rgb_rows
from test_hostile_rev18b import IEND, SIG, TEXT_AFTER, _chunk, _ihdr, _outcome

from pipelines.features import decode as imagedecode

CORRUPT_STREAM = b"\x78\x9c\xff\xff\xff\xff"   # a zlib header, then an invalid deflate block type: zlib.error at once


def test_corrupt_compressed_text_chunks_are_not_counted_as_a_megabyte_each() -> None:
    """Nine zTXt chunks of 20 bytes each whose zlib stream is corrupt from its third byte: Pillow's chunk_zTXt
    catches the zlib.error after inflating nothing and keeps b"" (PngImagePlugin 12.3, lines 612-620); libspng
    decodes the image too (both layouts accept it with one such chunk). scan_png counts each as
    PngImagePlugin.MAX_TEXT_CHUNK (1 MiB) inflated ("the work done is unknown"), so nine of them pass the 8 MiB
    metadata cap and the image is a decompression_bomb whose detail says more than 8 MiB of text was inflated:
    a wrong reason with a false detail for 180 bytes of metadata (README 3: 'compressed ones counted inflated',
    'what Pillow inflates is what is counted'). The same holds for iTXt and for a corrupt iCCP profile."""
    chunks = b"".join(_chunk(b"zTXt", b"k%d\x00\x00" % i + CORRUPT_STREAM) for i in range(9))
    head = SIG + _ihdr()
    idat = _chunk(b"IDAT", zlib.compress(_rgb_rows()))
    assert _outcome(head + chunks[:len(chunks) // 9] + idat + IEND) == "accepted"   # one such chunk: accepted
    scan = imagedecode.scan_png(head + chunks + idat + IEND)
    assert scan.bomb is None, scan.bomb
    assert _outcome(head + chunks + idat + IEND) == "accepted"
    assert _outcome(head + chunks + idat + TEXT_AFTER + IEND) == "accepted"


ONE_MIB_PROFILE = zlib.compress(bytes(1 << 20), 9)   # 1 KB that inflates to exactly Pillow's MAX_TEXT_CHUNK


@pytest.mark.parametrize("kind", [b"ab1d", b"ab_d"])
def test_a_chunk_type_pillow_reads_past_does_not_hide_a_bomb_from_the_scan(monkeypatch, kind: bytes) -> None:
    """scan_png returns at the first chunk type that is not four ASCII letters ('Pillow stops reading chunks at
    any other'). But Pillow 12.3's ChunkStream.read only checks ``is_cid = re.compile(rb"\\w\\w\\w\\w").match``:
    digits and '_' pass, so Image.open (run because the scan found no bomb) reads on past such a chunk and
    inflates every chunk behind it that the scan never counted. 100 iCCP chunks of 1 KB, each inflating to
    1 MiB, behind a b"ab1d" chunk: the scan reports only the chunk type (truncated_image, so no bomb), and
    Pillow's header parse inflates all 100 (100 MiB of inflate for a 106 KB file; 300 of them: 1.24 s, where
    the same file without the odd chunk is refused as a decompression_bomb in 0.00 s; linear, so a 64 MiB
    file of them is ~60 GB of inflate). The same hole lets a chunk flood through: 400,000 empty chunks behind
    b"ab1d" cost 2.25 s against 0.09 s (README 3: 'the bombs are refused there', before Pillow's parse)."""
    calls = []
    real = imagedecode.PngImagePlugin._safe_zlib_decompress
    monkeypatch.setattr(imagedecode.PngImagePlugin, "_safe_zlib_decompress",
                        lambda s: calls.append(len(s)) or real(s))
    flood = b"".join(_chunk(b"iCCP", b"p%d\x00\x00" % i + ONE_MIB_PROFILE) for i in range(100))
    data = SIG + _ihdr() + _chunk(kind, b"") + flood + _chunk(b"IDAT", zlib.compress(_rgb_rows())) + IEND
    assert _outcome(SIG + _ihdr() + flood + _chunk(b"IDAT", zlib.compress(_rgb_rows())) + IEND) == "decompression_bomb"
    calls.clear()
    outcome = _outcome(data)
    assert outcome != "accepted"
    assert len(calls) <= 1, f"Pillow inflated {len(calls)} iCCP profiles of 1 MiB before the outcome {outcome}"
