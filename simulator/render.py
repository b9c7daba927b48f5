"""Image rendering: shapes on a textured background, degraded per generator model, as PNG bytes.

Every image is a pure function of its ``ImageSpec`` and the image size, so exact duplicates are
re-renders of one spec and near duplicates are one spec plus a small, verified transform.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from simulator.world import COLOUR_RGB

PNG_COMPRESS_LEVEL = 1
NEAR_DUPLICATE_MAX_DISTANCE = 4
NEAR_TRANSFORMS = ("rerender", "jpeg_reencode", "resize", "crop")


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one rendered image."""

    colour: int
    shape: int
    count: int
    background: int
    style: int
    blur: float
    noise: float
    artefacts: int
    layout_seed: int
    blank: bool = False           # CONTENT_FILTERED: the provider returned a black image


def _polygon(shape: int, cx: float, cy: float, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Outline(s) of one object; a ring is two circles (outer, inner)."""
    def circle(radius: float, points: int = 48) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(2 * math.pi * k / points), cy + radius * math.sin(2 * math.pi * k / points))
                for k in range(points)]

    def rotated(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]

    if shape == 0:  # circle
        return [circle(r)]
    if shape == 1:  # square
        h = r * 0.85
        return [rotated([(-h, -h), (h, -h), (h, h), (-h, h)])]
    if shape == 2:  # triangle
        return [rotated([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])]
    if shape == 3:  # star
        pts = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((radius * math.cos(a), radius * math.sin(a)))
        return [rotated(pts)]
    if shape == 4:  # hexagon
        return [rotated([(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)])]
    if shape == 5:  # ring
        return [circle(r), circle(r * 0.55)]
    if shape == 6:  # cross
        a, b = r, r * 0.33
        return [rotated([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                         (-a, -b), (-b, -b)])]
    if shape == 7:  # diamond
        return [rotated([(0, -r), (r * 0.62, 0), (0, r), (-r * 0.62, 0)])]
    raise ValueError(f"unknown shape index {shape}")


_SLOTS = {
    1: [(0.5, 0.5)],
    2: [(0.3, 0.5), (0.7, 0.5)],
    3: [(0.28, 0.33), (0.72, 0.33), (0.5, 0.72)],
    4: [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)],
}


def render_array(spec: ImageSpec, size: int, tweak: float = 0.0, noise_stream: int = 0) -> np.ndarray:
    """Render ``spec`` as an (size, size, 3) uint8 array.

    ``tweak`` (near-duplicate re-render) grows every object by that fraction and shifts it a little;
    ``noise_stream`` picks a different pixel-noise draw for the same layout.
    """
    if spec.blank:
        return np.zeros((size, size, 3), dtype=np.uint8)
    rng = np.random.default_rng([spec.layout_seed, 0])
    # low-frequency luminance field: makes distinct images' perceptual hashes far apart
    field = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    field_img = Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    canvas = COLOUR_RGB[spec.background][None, None, :] + 38.0 * np.asarray(field_img)[:, :, None]

    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    offset = rng.uniform(-0.06, 0.06, 2)
    shrink = {1: 1.0, 2: 0.72, 3: 0.6, 4: 0.58}[spec.count]
    outline_width = max(1, size // 40)
    for sx, sy in _SLOTS[spec.count]:
        jitter = rng.uniform(-0.07, 0.07, 2)
        radius = size * rng.uniform(0.15, 0.25) * shrink * (1.0 + tweak)
        angle = rng.uniform(0.0, 2 * math.pi)
        cx = size * (sx + offset[0] + jitter[0] + tweak * 0.5)
        cy = size * (sy + offset[1] + jitter[1])
        outlines = _polygon(spec.shape, cx, cy, radius, angle)
        if spec.style == 1:  # outlined
            for outline in outlines:
                draw.polygon(outline, outline=255, width=outline_width)
        else:
            draw.polygon(outlines[0], fill=255)
            if len(outlines) > 1:
                draw.polygon(outlines[1], fill=0)
    mask = np.asarray(mask_img, dtype=np.float32)[:, :, None] / 255.0

    colour = COLOUR_RGB[spec.colour][None, None, :]
    if spec.style == 2:  # gradient: dark to light along a random direction
        direction = rng.uniform(0.0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        ramp = (np.cos(direction) * xs + np.sin(direction) * ys)
        ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
        fill = colour * (0.55 + 0.45 * ramp[:, :, None]) + 70.0 * ramp[:, :, None]
    elif spec.style == 3:  # textured: stripes at a random angle
        direction = rng.uniform(0.0, math.pi)
        period = size / rng.uniform(10.0, 16.0)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        stripes = (np.sin((np.cos(direction) * xs + np.sin(direction) * ys) * 2 * math.pi / period) > 0)
        fill = colour * (0.65 + 0.35 * stripes[:, :, None])
    else:
        fill = np.broadcast_to(colour, canvas.shape)
    canvas = canvas * (1.0 - mask) + fill * mask

    if spec.artefacts:
        art = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        art_draw = ImageDraw.Draw(art)
        for _ in range(spec.artefacts):
            cx, cy = rng.uniform(0, size, 2)
            rx, ry = size * rng.uniform(0.02, 0.06, 2)
            tint = tuple(int(v) for v in rng.integers(0, 256, 3))
            art_draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tint)
        canvas = np.asarray(art, dtype=np.float32)

    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if spec.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(radius=spec.blur * size * 0.012))
    out = np.asarray(image, dtype=np.float32)
    if spec.noise > 0:
        noise_rng = np.random.default_rng([spec.layout_seed, 1 + noise_stream])
        grain = noise_rng.normal(0.0, spec.noise * 30.0, (size, size, 1)).astype(np.float32)
        out = out + grain
    return np.clip(out, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an RGB array as PNG (deterministic bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def phash_of(array: np.ndarray) -> imagehash.ImageHash:
    """imagehash pHash of an RGB array."""
    return imagehash.phash(Image.fromarray(array))


def _apply(transform: str, strength: int, spec: ImageSpec, source: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """One near-duplicate transform at strength level 0 (strongest) .. 3 (mildest)."""
    if transform == "rerender":
        tweak = (0.012, 0.006, 0.003, 0.0)[strength]
        return render_array(spec, size, tweak=tweak, noise_stream=1), f"tweak={tweak}"
    if transform == "jpeg_reencode":
        quality = (70, 80, 90, 97)[strength]
        buffer = io.BytesIO()
        Image.fromarray(source).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return np.asarray(Image.open(buffer).convert("RGB")), f"quality={quality}"
    if transform == "resize":
        factor = (0.75, 0.8, 0.875, 0.9375)[strength]
        side = max(16, int(round(size * factor)))
        return np.asarray(Image.fromarray(source).resize((side, side), Image.Resampling.LANCZOS)), f"side={side}"
    if transform == "crop":
        fraction = (0.03, 0.02, 0.01, 0.0)[strength]
        cut = max(1 if fraction else 0, int(round(size * fraction)))
        cropped = Image.fromarray(source).crop((cut, cut, size - cut, size - cut))
        return np.asarray(cropped.resize((size, size), Image.Resampling.LANCZOS)), f"cut={cut}px"
    raise ValueError(f"unknown near-duplicate transform {transform!r}")


def near_duplicate(transform: str, spec: ImageSpec, source: np.ndarray, size: int) -> tuple[np.ndarray, str, int]:
    """Apply ``transform`` at the strongest strength that keeps pHash within the near-duplicate radius.

    Returns (array, detail, phash distance). Falls back to a one-pixel edit, which always qualifies.
    """
    reference = phash_of(source)
    for strength in range(4):
        array, detail = _apply(transform, strength, spec, source, size)
        distance = int(reference - phash_of(array))
        if distance <= NEAR_DUPLICATE_MAX_DISTANCE and not np.array_equal(array, source):
            return array, detail, distance
    array = source.copy()
    array[0, 0] = 255 - array[0, 0]
    return array, "one_pixel", int(reference - phash_of(array))
