"""Seeded synthetic images with planted exact and near duplicates, hashed like the feature stage."""
from __future__ import annotations

import io
import random

import imagehash
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

# Near-duplicate transforms a re-upload or a re-render plausibly applies.
TRANSFORMS = {
    "jpeg_q85": lambda im: _reencode(im, "JPEG", quality=85),
    "jpeg_q60": lambda im: _reencode(im, "JPEG", quality=60),
    "resize256_jpeg_q75": lambda im: _reencode(im.resize((256, 256), Image.BICUBIC), "JPEG", quality=75),
    "resize384": lambda im: _reencode(im.resize((384, 384), Image.LANCZOS), "PNG"),
    "blur1": lambda im: _reencode(im.filter(ImageFilter.GaussianBlur(1)), "PNG"),
    "brighter5": lambda im: _reencode(im.point(lambda v: min(255, int(v * 1.05))), "PNG"),
    "crop2": lambda im: _reencode(im.crop((im.width // 50, im.height // 50, im.width - im.width // 50, im.height - im.height // 50)).resize(im.size), "PNG"),
}


def _reencode(img: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def shapes_image(seed: int, size: int = 256) -> Image.Image:
    """A random composition of coloured ellipses, rectangles and triangles."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randint(size // 16, size // 2), y0 + rng.randint(size // 16, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.randrange(3)
        if shape == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(rng.randrange(size), rng.randrange(size)) for _ in range(3)], fill=colour)
    return img


def hash_image(img: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) as unsigned 64-bit ints of imagehash's hex strings, as the feature stage stores them."""
    return int(str(imagehash.phash(img)), 16), int(str(imagehash.dhash(img)), 16)


def planted_features(n_sources: int, seed: int = 0, exact_every: int = 5, size: int = 256) -> tuple[pa.Table, pa.Table]:
    """(feature rows: image_uid, sha256, phash, dhash, dt, blob_path; truth rows) with planted duplicates.

    Every source gets one near duplicate per transform in rotation, every ``exact_every``-th
    source also a byte-identical copy.
    """
    import datetime as dt
    import hashlib

    rng = random.Random(seed)
    names = sorted(TRANSFORMS)
    rows, truth = [], []
    for i in range(n_sources):
        source = shapes_image(seed * 1_000_003 + i, size)
        png = io.BytesIO()
        source.save(png, "PNG")
        decoded = Image.open(io.BytesIO(png.getvalue())).convert("RGB")
        src_uid = f"img-{i:05d}-s"
        sha = hashlib.sha256(png.getvalue()).hexdigest()
        rows.append((src_uid, sha, *hash_image(decoded)))
        truth.append((f"g{i}", src_uid, "source", "none", src_uid))
        transform = names[rng.randrange(len(names))]
        near = TRANSFORMS[transform](decoded)
        near_uid = f"img-{i:05d}-n"
        rows.append((near_uid, hashlib.sha256(near.tobytes()).hexdigest(), *hash_image(near)))
        truth.append((f"g{i}", near_uid, "near", transform, src_uid))
        if i % exact_every == 0:
            exact_uid = f"img-{i:05d}-x"
            rows.append((exact_uid, sha, *hash_image(decoded)))
            truth.append((f"g{i}", exact_uid, "exact", "copy", src_uid))
    day = dt.date(2023, 3, 1)
    features = pa.table({
        "image_uid": [r[0] for r in rows],
        "sha256": [r[1] for r in rows],
        "phash": pa.array([r[2] for r in rows], pa.uint64()),
        "dhash": pa.array([r[3] for r in rows], pa.uint64()),
        "dt": pa.array([day] * len(rows), pa.date32()),
        "blob_path": [f"raw/images/{r[0]}.png" for r in rows],
    })
    truth_table = pa.table({
        "group_id": [t[0] for t in truth], "image_uid": [t[1] for t in truth], "kind": [t[2] for t in truth],
        "transform": [t[3] for t in truth], "source_uid": [t[4] for t in truth],
    })
    return features, truth_table
