"""What one decode yields besides the NSFW input: perceptual hashes and the training JPEG."""
from __future__ import annotations

import io

HASH_FLOOR = 128


def perceptual_hashes(rgb) -> tuple[int, int]:
    """(pHash, dHash) as unsigned 64-bit integers of the hash input (README section 3, "Decisions")."""
    import imagehash

    gray = rgb.convert("L")
    factor = min(gray.size) // HASH_FLOOR
    if factor >= 2:
        gray = gray.reduce(factor)
    return _hash_int(imagehash.phash(gray)), _hash_int(imagehash.dhash(gray))


def _hash_int(value) -> int:
    """The hash's bits, first bit most significant, as one integer."""
    import numpy as np

    return int.from_bytes(np.packbits(value.hash.flatten()).tobytes(), "big")


def train_size_of(width: int, height: int, train_size: int) -> tuple[int, int]:
    """Size with shortest side ``train_size`` (rounded half up), or the original size if already smaller."""
    if min(width, height) <= train_size:
        return width, height
    if width <= height:
        return train_size, (height * train_size + width // 2) // width
    return (width * train_size + height // 2) // height, train_size


def encode_train_jpeg(rgb, train_size: int, quality: int) -> tuple[bytes, int, int]:
    """Training JPEG bytes and their size: bicubic downscale (never up), baseline JPEG at ``quality``."""
    from PIL import Image

    width, height = train_size_of(rgb.width, rgb.height, train_size)
    image = rgb if (width, height) == rgb.size else rgb.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue(), width, height
