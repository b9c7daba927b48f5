"""Seeded generators for feature-stage tests: image blobs, planted bad blobs, a tiny data home."""
from __future__ import annotations

import datetime as dt
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.features.nsfw import Detection, NsfwResult, PreparedImage
from schemas import get_schema
from schemas.features import NSFW_CLASSES


def natural_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A blurred noisy gradient with a few filled shapes (compresses like a real picture)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (seed % 7 + 1)) % 256, (y * (seed % 5 + 1)) % 256, ((x + y) * 3) % 256], -1)
    base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))], fill=colour)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    """Image bytes in ``fmt``."""
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """PNG bytes of :func:`natural_image`."""
    return encode(natural_image(seed, size))


def thin_png(width: int, height: int) -> bytes:
    """A real 8-bit RGB PNG of a gradient along its long side (a few KB even at 70000 px)."""
    ramp = (np.arange(max(width, height)) % 256).astype(np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None] if width >= height else ramp[:, None, None], (height, width, 3))
    return encode(Image.fromarray(np.ascontiguousarray(pixels)))


def face_image() -> Image.Image:
    """A real photograph with a face (matplotlib's sample Grace Hopper portrait, RGB)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(io.BytesIO(handle.read())).convert("RGB")


def face_variants() -> list[Image.Image]:
    """Crops, scales, flips and paddings of the face photo: several aspect ratios and box positions."""
    face = face_image()
    variants = [face, face.resize((256, 300)), face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((200, 234))]
    wide = Image.new("RGB", (700, 400), (30, 60, 90))
    wide.paste(face.resize((300, 351)), (350, 20))
    tall = Image.new("RGB", (300, 640), (200, 200, 180))
    tall.paste(face.resize((256, 300)), (20, 300))
    crop = face.crop((100, 80, 420, 420))
    return variants + [wide, tall, crop]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` but whose data is one tiny IDAT (bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def bad_blobs() -> dict[str, bytes]:
    """One planted bad blob per decode-time reject reason (keyed by the expected reason)."""
    good = png(99, (64, 48))
    animated = io.BytesIO()
    frames = [natural_image(1, (32, 32)), natural_image(2, (32, 32))]
    frames[0].save(animated, "PNG", save_all=True, append_images=frames[1:], duration=100)
    sixteen = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    return {
        "empty_file": b"",
        "not_an_image": np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "truncated_image": good[: len(good) // 2],
        "extension_mismatch": encode(natural_image(3, (64, 48)), "JPEG", quality=80),
        "decompression_bomb": png_header_only(20000, 20000),
        "too_small": encode(Image.new("RGB", (1, 1), (255, 0, 0))),
        "animated_image": animated.getvalue(),
        "unsupported_mode": encode(sixteen),
    }


def text_bomb_png() -> bytes:
    """A small valid PNG with a zTXt chunk that inflates to 4 MB (Pillow's text-chunk limit is 1 MB)."""
    good = png(98, (32, 32))
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 4_000_000, 9))
    return good[:33] + ztxt + good[33:]


def bomb_png() -> bytes:
    """A real decompression bomb: 5000 x 5000 pixels (25 M > the 16.7 M limit) in a few KB."""
    return encode(Image.new("1", (5000, 5000)))


def write_day(home: DataHome, day: str, blobs: Mapping[str, bytes | None], extra_paths: Mapping[str, str] = {}) -> list[str]:
    """Write blobs to ``raw/images/<uid>.png`` (None = missing) and the day's images partition; return uids."""
    home.raw_images.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (uid, data) in enumerate(sorted(blobs.items())):
        relpath = extra_paths.get(uid, home.raw_image_relpath(uid))
        if data is not None:
            target = home.root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        rows.append(_image_row(index, uid, relpath, day))
    for index, (uid, relpath) in enumerate(sorted(extra_paths.items())):
        if uid not in blobs:
            rows.append(_image_row(1000 + index, uid, relpath, day))
    table = pa.Table.from_pylist(rows, schema=get_schema("images"))
    write_parquet_atomic(table, home.partition_file("images", day), get_schema("images"))
    return sorted(row["image_uid"] for row in rows)


def _image_row(index: int, uid: str, relpath: str, day: str) -> dict:
    return {"image_id": index, "created_at": dt.datetime(2023, 3, 1, 12, 0, index % 60), "image_uid": uid,
            "user_id": 7, "prompt": f"prompt {index}", "bracket_negative_prompt": None, "negative_prompt": None,
            "seed": index, "gs": 7.5, "steps": 25, "idx": 0, "num_generated": 2, "scheduler_cls": "DPM",
            "model_id": "stabilityai/stable-diffusion-2-1", "blob_path": relpath,
            "dt": dt.date.fromisoformat(day)}


class FakeDetector:
    """Deterministic stand-in for NudeNet: one FACE_FEMALE box when the image is mostly red."""

    def detect_prepared(self, batch: Sequence[PreparedImage]) -> list[NsfwResult]:
        results = []
        for item in batch:
            red, green, blue = (float(item.pixels[..., c].mean()) / 255 for c in range(3))
            scores = {name: 0.0 for name in NSFW_CLASSES}
            scores["FACE_FEMALE"] = round(red, 4)
            scores["FEMALE_BREAST_EXPOSED"] = round(red * 0.9 if red > 0.6 else 0.0, 4)
            detections = (Detection("FACE_FEMALE", scores["FACE_FEMALE"], (0, 0, item.width, item.height)),) if red > 0.6 else ()
            results.append(NsfwResult(detections, scores))
        return results


def fake_detector() -> FakeDetector:
    """Picklable factory for :class:`FakeDetector`."""
    return FakeDetector()


def test_bad_blobs_are_what_they_claim() -> None:
    blobs = bad_blobs()
    assert blobs["extension_mismatch"][:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(blobs["animated_image"])).n_frames == 2
    assert Image.open(io.BytesIO(blobs["unsupported_mode"])).mode.startswith("I;16")
    assert blobs["decompression_bomb"][16:24] == struct.pack(">II", 20000, 20000)
    assert len(bomb_png()) < 100_000 and Image.open(io.BytesIO(bomb_png())).size == (5000, 5000)


def test_write_day_round_trips(tmp_path: Path) -> None:
    home = DataHome(tmp_path)
    uids = write_day(home, "2023-03-01", {"a": png(1), "b": None})
    assert uids == ["a", "b"]
    assert (home.raw_images / "a.png").is_file() and not (home.raw_images / "b.png").exists()
    assert os.path.getsize(home.partition_file("images", "2023-03-01")) > 0


def refuse_prism(monkeypatch, tmp_path: Path) -> list[str]:
    """Make Beam's Prism runner and any URL fetch fail and record the attempt (the list returned); the
    system temp dir moves to ``tmp_path / "tmp"`` (a failed Prism start leaves ``beam-temp*`` there)."""
    import tempfile
    import urllib.request

    from apache_beam.runners.portability import prism_runner

    attempts: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            attempts.append(name)
            raise RuntimeError(f"{name} must not be used")
        return call

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse("PrismRunner.run_pipeline"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return attempts


GATES: dict = {}   # name -> threading.Event, shared by a test and the DoFns it holds (same process)


def gate(name: str):
    import threading

    return GATES.setdefault(name, threading.Event())


class HeldDetector:
    """A picklable detector factory (by reference: this module) that holds an in-process stage in its DoFns'
    ``setup`` (after ``configure_worker``): it sets gate ``stage_running``, then waits for gate ``go_on``."""

    def __call__(self) -> FakeDetector:
        gate("stage_running").set()
        if not gate("go_on").wait(60):
            raise RuntimeError("gate go_on never opened")
        return FakeDetector()


def in_memory_pipeline():
    """A ``beam.Pipeline`` on the feature stage's own local runner (``pipeline_runner``: Beam's FnApiRunner, in
    memory), as the stage builds it. Not ``beam.Pipeline(runner="DirectRunner")``: Beam's DirectRunner first starts
    Prism, whose job server makes ``$TMPDIR/beam-tempXXXX`` and, offline, fails to start without removing it
    (fix39d: one such folder left in /tmp per test run)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.features.runner import pipeline_runner

    options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    return beam.Pipeline(runner=pipeline_runner(options), options=options)
