"""A seeded, learnable synthetic published version in exactly the publish format (tests, benchmarks, demos).

The task: a caption asks for a colour ("a red cube, high quality"); each generator model paints the
requested colour with its own probability ``quality`` (else a random other colour) and adds pixel noise
that shrinks with quality. The human prefers the image that shows the requested colour; when both or
neither do, the visibly less noisy one (noise levels closer than ``TIE_MARGIN`` -> tie, 0.5/0.5); with
``label_noise`` the label is replaced by a uniformly random one of the three. A CLIP model can learn it, and the generator ranking
by quality is planted, so the leaderboard has a known answer.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from formats import dataset
from formats.files import write_bytes_atomic

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 30), "white": (235, 235, 235), "black": (25, 25, 25)}
OBJECTS = ("cube", "cat", "car", "house", "tree", "flower", "robot", "boat")
STYLES = ("high quality", "oil painting", "photo", "trending on artstation", "4k", "watercolor")
MODELS: dict[str, float] = {"sim-alpha": 0.9, "sim-beta": 0.7, "sim-gamma": 0.45, "sim-delta": 0.2}
DEFAULT_SIZES = {split: 600 if split == "train" else 60 for split in dataset.SPLITS}
TIE_MARGIN = 6.0
EPOCH = dt.datetime(2023, 3, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class SyntheticVersion:
    """Where a synthetic version was written and its planted truth."""

    version_dir: Path
    sizes: dict[str, int]
    models: dict[str, float]


def _image(color: tuple[int, int, int], noise: float, px: int, rng: np.random.Generator) -> bytes:
    """A colour field with a random-coloured rectangle and Gaussian noise, as JPEG bytes."""
    arr = np.empty((px, px, 3), dtype=np.float32)
    arr[:] = color
    x0, y0 = rng.integers(0, px // 2, size=2)
    w, h = rng.integers(px // 6, px // 3, size=2)
    arr[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    arr += rng.normal(0, noise, size=arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rows(split: str, n: int, rng: random.Random, models: dict[str, float], label_noise: float,
          unique: bool) -> list[dict]:
    names = sorted(models)
    rows, prompt = [], 0
    while len(rows) < n:
        color, obj = rng.choice(sorted(COLORS)), rng.choice(OBJECTS)
        caption = f"a {color} {obj}, {rng.choice(STYLES)}"
        count = 1 if unique else min(rng.randint(1, 3), n - len(rows))
        for _ in range(count):
            m0, m1 = rng.sample(names, 2)
            shown, hits, noise = [], [], []
            for m in (m0, m1):
                hit = rng.random() < models[m]
                shown.append(color if hit else rng.choice([c for c in sorted(COLORS) if c != color]))
                hits.append(hit)
                noise.append(4.0 + 36.0 * (1.0 - models[m]) * rng.uniform(0.5, 1.5))
            if hits[0] != hits[1]:
                label = (1.0, 0.0) if hits[0] else (0.0, 1.0)
            elif abs(noise[0] - noise[1]) < TIE_MARGIN:
                label = (0.5, 0.5)
            else:
                label = (1.0, 0.0) if noise[0] < noise[1] else (0.0, 1.0)
            if rng.random() < label_noise:
                label = rng.choice([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
            i = len(rows)
            pair_id = f"{split[:2]}{i:06d}"
            uids = (f"{pair_id}a", f"{pair_id}b")
            rows.append({
                "pair_id": pair_id, "ranking_id": i, "user_id": f"u{rng.randrange(50):04d}", "caption": caption,
                "created_at": (EPOCH + dt.timedelta(minutes=i)).isoformat(),
                "image_0_uid": uids[0], "image_1_uid": uids[1], "label_0": label[0], "label_1": label[1],
                "best_image_uid": "none" if label[0] == 0.5 else uids[0 if label[0] > label[1] else 1],
                "has_label": True, "are_different": True, "model_0": m0, "model_1": m1, "split": split,
                "prompt_key": f"{split}-{prompt}", "num_example_per_prompt": count,
                "_colors": shown, "_noise": noise})
        prompt += 1
    return rows


def write_synthetic_version(version_dir: str | os.PathLike, sizes: dict[str, int] | None = None, *,
                            image_px: int = 64, shards_per_split: int = 2, seed: int = 0,
                            label_noise: float = 0.0, models: dict[str, float] | None = None,
                            link_latest: bool = True) -> SyntheticVersion:
    """Write a synthetic published version (shards + sizes.json per split); ``latest`` links to it."""
    version_dir = Path(version_dir)
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    models = dict(MODELS if models is None else models)
    for split, n in sorted(sizes.items()):
        rng = random.Random(f"{seed}:{split}")
        img_rng = np.random.default_rng([seed, len(split), sum(map(ord, split))])
        rows = _rows(split, n, rng, models, label_noise, split.endswith("_unique"))
        split_dir = version_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        counts = {}
        n_shards = max(1, min(shards_per_split, len(rows)))
        edges = np.linspace(0, len(rows), n_shards + 1).astype(int)
        for s in range(n_shards):
            name = f"{dataset.SHARD_PREFIX}{split}-{s:06d}.tar"
            with wds.TarWriter(str(split_dir / name), encoder=False, mtime=0) as sink:
                for row in rows[edges[s]:edges[s + 1]]:
                    colors, noise = row.pop("_colors"), row.pop("_noise")
                    key = row["pair_id"] + (dataset.UNIQUE_SUFFIX if split.endswith("_unique") else "")
                    sink.write({"__key__": key,
                                "0.jpg": _image(COLORS[colors[0]], noise[0], image_px, img_rng),
                                "1.jpg": _image(COLORS[colors[1]], noise[1], image_px, img_rng),
                                "json": json.dumps(row, sort_keys=True).encode(),
                                "txt": row["caption"].encode()})
            counts[name] = int(edges[s + 1] - edges[s])
        (split_dir / dataset.SIZES_FILE).write_bytes(dataset.sizes_json(counts))
    _write_manifest(version_dir, sizes)
    if link_latest:
        dataset.switch_latest(version_dir.parent, version_dir.name, fsync=False)
    return SyntheticVersion(version_dir, sizes, models)


def _write_manifest(version_dir: Path, sizes: dict[str, int]) -> None:
    """A manifest as a published version has one: every file with its bytes and sha256, the splits."""
    splits = {split: {"pairs": n, "shards": len(list((version_dir / split).glob(dataset.shard_glob(split))))}
              for split, n in sorted(sizes.items())}
    manifest = {"format": dataset.FORMAT_VERSION, "version": version_dir.name, "files": dataset.manifest_files(version_dir), "splits": splits,
                "synthetic": True}
    write_bytes_atomic(version_dir / dataset.MANIFEST_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def write_models_json(path: str | os.PathLike, models: dict[str, float] | None = None) -> Path:
    """Ground-truth ``models.json`` in the simulator's shape: {name: {"quality", "rank"}}."""
    models = dict(MODELS if models is None else models)
    ranked = sorted(models, key=lambda m: (-models[m], m))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({m: {"quality": models[m], "rank": ranked.index(m) + 1} for m in sorted(models)},
                               indent=1, sort_keys=True) + "\n")
    return path


def tiny_config(data_dir: str | os.PathLike, output_dir: str | os.PathLike, **overrides: object):
    """The smallest sensible TrainConfig (32 px, 1 layer, width 32) for tests and smoke runs."""
    from training.config import preset

    values = dict(data_dir=str(data_dir), output_dir=str(output_dir), image_size=32, patch_size=8, text_width=32,
                  vision_width=32, layers=1, heads=2, projection_dim=32, tokenizer_vocab_size=600, batch_size=8,
                  max_steps=6, warmup_steps=2, eval_every=2, log_every=1, num_workers=0, shuffle_buffer=40,
                  shuffle_initial=10, eval_batch_size=32, learning_rate=5e-4, device="cpu", cpu_threads=1)
    values.update(overrides)
    return preset("demo", **values)
