"""Safe decode policies and blob-path checks (pipelines/features/decode.py), one reason at a time."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_features_fixtures import bad_blobs, bomb_png, encode, natural_image, png, text_bomb_png, thin_png

from pipelines.features import decode as imagedecode
from pipelines.features.config import FeaturesConfig
from pipelines.features.decode import ImageRejected, check_blob_path, check_local_target, decode_image, read_capped

LIMITS = FeaturesConfig().decode_limits()


@pytest.mark.parametrize("reason", sorted(bad_blobs()))
def test_every_planted_blob_gets_its_reason(reason: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(bad_blobs()[reason], f"raw/images/{reason}.png", **LIMITS)
    assert caught.value.reason == reason
    assert reason in str(caught.value) and f"{reason}.png" in caught.value.detail


def test_real_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(bomb_png(), "raw/images/bomb.png", **LIMITS)
    assert caught.value.reason == "decompression_bomb" and "25000000" in caught.value.detail


def test_compressed_text_bomb_is_a_bomb() -> None:
    data = text_bomb_png()
    assert len(data) < 10_000
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, "raw/images/t.png", **LIMITS)
    assert caught.value.reason == "decompression_bomb"


def test_good_png_decodes_to_rgb_with_header_facts() -> None:
    decoded = decode_image(png(1, (90, 70)), "raw/images/a.png", **LIMITS)
    assert (decoded.width, decoded.height, decoded.mode, decoded.format) == (90, 70, "RGB", "PNG")
    assert decoded.rgb.mode == "RGB" and decoded.rgb.size == (90, 70)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1"])
def test_eight_bit_modes_are_converted_not_rejected(mode: str) -> None:
    image = natural_image(4, (40, 30)).convert(mode)
    decoded = decode_image(encode(image), "raw/images/m.png", **LIMITS)
    assert decoded.mode == mode and decoded.rgb.mode == "RGB"
    assert decoded.rgb.tobytes() == image.convert("RGB").tobytes()


def test_cmyk_jpeg_is_unsupported_mode_and_jpeg_extension_is_accepted() -> None:
    cmyk = encode(natural_image(5, (40, 30)).convert("CMYK"), "JPEG")
    with pytest.raises(ImageRejected) as caught:
        decode_image(cmyk, "raw/images/c.jpg", **LIMITS)
    assert caught.value.reason == "unsupported_mode"
    assert decode_image(encode(natural_image(5, (40, 30)), "JPEG"), "raw/images/c.jpeg", **LIMITS).format == "JPEG"


def test_unknown_extension_and_header_only_truncation() -> None:
    with pytest.raises(ImageRejected, match="extension_mismatch"):
        decode_image(png(1), "raw/images/a.gif", **LIMITS)
    with pytest.raises(ImageRejected) as caught:
        decode_image(png(1)[:20], "raw/images/a.png", **LIMITS)
    assert caught.value.reason == "truncated_image"


def test_limits_are_configurable() -> None:
    data = png(2, (64, 64))
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        decode_image(data, "raw/images/a.png", **LIMITS | {"max_pixels": 64 * 63})
    with pytest.raises(ImageRejected, match="too_small"):
        decode_image(data, "raw/images/a.png", **LIMITS | {"min_side": 65})
    with pytest.raises(ImageRejected, match="bad_dimensions"):
        decode_image(data, "raw/images/a.png", **LIMITS | {"max_side": 63})


@pytest.mark.parametrize("size", [(70000, 8), (8, 70000), (30000, 8), (8, 30000), (4097, 1100), (1100, 4097),
                                  (2000, 499), (499, 2000)])
def test_extreme_shapes_are_bad_dimensions_before_any_pixel_is_decoded(size: tuple[int, int]) -> None:
    """A 70000x8 PNG is under max_pixels, yet it pads to 14 GB for NudeNet and breaks the JPEG encoder."""
    data = thin_png(*size)
    assert Image.open(io.BytesIO(data)).size == size and len(data) < 200_000
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, "raw/images/thin.png", **LIMITS)
    assert caught.value.reason == "bad_dimensions"
    assert f"{size[0]}x{size[1]}" in caught.value.detail and "thin.png" in caught.value.detail


@pytest.mark.parametrize("size", [(4096, 1024), (1024, 4096), (64, 16), (16, 64)])
def test_shapes_at_the_limits_decode(size: tuple[int, int]) -> None:
    decoded = decode_image(thin_png(*size), "raw/images/ok.png", **LIMITS)
    assert (decoded.width, decoded.height) == size


def test_contract_lists_exactly_the_reject_reasons() -> None:
    """The image_rejects contract's reason rule and its no-bytes exemption name the reasons of imagedecode."""
    import re

    import yaml

    contract = yaml.safe_load((Path(__file__).resolve().parents[2] / "data_contracts" / "image_rejects.yaml").read_text())
    rules = {rule["name"]: rule["query"] for rule in contract["schema"][0]["quality"]}
    assert set(re.findall(r"'([a-z_]+)'", rules["image_rejects_known_reason"])) == set(imagedecode.REJECT_REASONS)
    assert set(re.findall(r"'([a-z_]+)'", rules["image_rejects_bytes_when_read"])) == set(imagedecode.UNREAD_REASONS)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "raw/images/../../etc/passwd.png", "raw/./a.png", "raw//a.png",
                                  "raw\\images\\a.png", "raw/images/a\x00.png", "raw/images/a\n.png", "gs://b/raw/a.png",
                                  "ground_truth/x.png", "raw", "C:/raw/a.png", None, 5])
def test_unsafe_paths_are_refused(path: object) -> None:
    with pytest.raises(ImageRejected) as caught:
        check_blob_path(path)
    assert caught.value.reason == "unsafe_path"


def test_plain_path_passes() -> None:
    assert check_blob_path("raw/images/0a1b-2c.png") == "raw/images/0a1b-2c.png"


def test_symlinks_leaving_the_zone_are_refused_inside_allowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "raw" / "images").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(1))
    (home / "ground_truth").mkdir()
    (home / "ground_truth" / "g.png").write_bytes(png(2))
    (home / "raw" / "images" / "real.png").write_bytes(png(3))
    os.symlink(outside, home / "raw" / "images" / "out.png")
    os.symlink(home / "ground_truth" / "g.png", home / "raw" / "images" / "gt.png")
    os.symlink(home / "raw" / "images" / "real.png", home / "raw" / "images" / "in.png")
    os.symlink(tmp_path, home / "raw" / "escape")
    (home / "raw" / "images" / "dir.png").mkdir()
    for name in ("images/out.png", "images/gt.png", "escape/secret.png", "images/dir.png"):
        with pytest.raises(ImageRejected) as caught:
            check_local_target(str(home), f"raw/{name}")
        assert caught.value.reason == "unsafe_path", name
    assert check_local_target(str(home), "raw/images/in.png") == str(home / "raw" / "images" / "real.png")
    with pytest.raises(ImageRejected, match="missing_blob"):
        check_local_target(str(home), "raw/images/none.png")


def test_read_is_capped() -> None:
    assert read_capped(io.BytesIO(b"x" * 10), "p", 10) == b"x" * 10
    with pytest.raises(ImageRejected, match="file_too_large"):
        read_capped(io.BytesIO(b"x" * 11), "p", 10)
    with pytest.raises(ImageRejected, match="empty_file"):
        read_capped(io.BytesIO(b""), "p", 10)


def test_reasons_are_closed() -> None:
    with pytest.raises(ValueError):
        ImageRejected("bad_reason", "x")
    assert len(set(imagedecode.REJECT_REASONS)) == len(imagedecode.REJECT_REASONS) == 14
    assert set(imagedecode.UNREAD_REASONS) < set(imagedecode.REJECT_REASONS)


def test_animated_webp_is_animated() -> None:
    frames = [natural_image(1, (32, 32)), natural_image(2, (32, 32))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(ImageRejected, match="animated_image"):
        decode_image(out.getvalue(), "raw/images/a.webp", **LIMITS)
    assert Image.open(io.BytesIO(out.getvalue())).n_frames == 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pngs_of_every_8_bit_colour_type() -> dict[str, bytes]:
    base = natural_image(12, (53, 37))
    alpha = Image.fromarray(np.dstack([np.asarray(base), np.asarray(natural_image(13, (53, 37)).convert("L"))]), "RGBA")
    return {"RGB": encode(base), "RGBA": encode(alpha), "L": encode(base.convert("L")), "LA": encode(alpha.convert("LA")),
            "P": encode(base.convert("P")), "P+tRNS": encode(base.convert("P"), transparency=3), "1": encode(base.convert("1")),
            "RGB+tRNS": encode(base, transparency=(10, 20, 30))}


@pytest.mark.parametrize("kind", sorted(_pngs_of_every_8_bit_colour_type()))
def test_libspng_decodes_exactly_what_pillow_decodes(kind: str) -> None:
    data = _pngs_of_every_8_bit_colour_type()[kind]
    assert imagedecode.libspng_decodes(data)
    decoded = decode_image(data, "raw/images/a.png", **LIMITS)
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (37, 53, 3)
    assert np.array_equal(decoded.pixels, np.asarray(expected)) and decoded.rgb.tobytes() == expected.tobytes()
    assert decoded.rgb.mode == "RGB" and decoded.mode == Image.open(io.BytesIO(data)).mode


def test_other_pngs_go_to_pillow_with_the_same_outcome() -> None:
    import zlib

    good = png(14, (40, 30))
    end = good.rindex(b"IEND") - 4
    text_after = good[:end] + _png_chunk(b"tEXt", b"Comment\x00hello") + good[end:]
    bomb_after = good[:end] + _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 4_000_000, 9)) + good[end:]
    assert imagedecode.libspng_decodes(good)
    for data in (text_after, bomb_after, good[: len(good) // 2], good[: end + 4]):
        assert not imagedecode.libspng_decodes(data)
    assert np.array_equal(decode_image(text_after, "raw/images/t.png", **LIMITS).pixels, np.asarray(Image.open(io.BytesIO(good))))
    with pytest.raises(ImageRejected) as caught:            # Pillow inflates text after the image data: a bomb
        decode_image(bomb_after, "raw/images/b.png", **LIMITS)
    assert caught.value.reason == "decompression_bomb"
    sixteen_bit = bytearray(good)
    sixteen_bit[24] = 16                                      # bit depth in IHDR: 16 bits are never libspng's
    assert not imagedecode.libspng_decodes(bytes(sixteen_bit))


def test_an_apng_gets_pillows_outcome_whatever_its_chunk_layout() -> None:
    """An APNG (acTL/fcTL) whose one frame does not fit the image: libspng ignores the frame chunks and
    accepted it when the IDAT came last, Pillow refuses it; the fast path must never change an outcome."""
    import struct

    from test_features_fixtures import _chunk, encode, natural_image

    from pipelines.features import decode as decode_module
    from pipelines.features.config import FeaturesConfig

    def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
        position, out = 8, []
        while position < len(data):
            length = int.from_bytes(data[position:position + 4], "big")
            out.append((data[position + 4:position + 8], data[position + 8:position + 8 + length]))
            position += 12 + length
        return out

    def build(parts: list[tuple[bytes, bytes]]) -> bytes:
        return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(kind, body) for kind, body in parts)

    parts = chunks(encode(natural_image(3, (64, 64))))
    actl = (b"acTL", struct.pack(">II", 1, 0))
    fctl = (b"fcTL", struct.pack(">IIIIIHHBB", 0, 32, 32, 0, 0, 1, 1, 0, 0))      # a 32x32 frame of a 64x64 image
    idat_last = build([parts[0], actl, fctl] + parts[1:])
    text_after = build([parts[0], actl, fctl] + parts[1:-1] + [(b"tEXt", b"a\x00b")] + parts[-1:])
    limits = FeaturesConfig().decode_limits()
    outcomes = []
    for data in (idat_last, text_after):
        assert not decode_module.libspng_decodes(data)
        with pytest.raises(decode_module.ImageRejected) as caught:
            decode_module.decode_image(data, "raw/images/x.png", **limits)
        outcomes.append(caught.value.reason)
    assert outcomes == ["truncated_image", "truncated_image"]
    assert decode_module.libspng_decodes(build(parts))        # a plain PNG keeps the fast path
