"""Best-of-n candidates: n fresh images per held-out prompt from one simulated generator, with their true utility.

A generator in the simulator draws each attribute of the prompt right with its own probability and degrades
the image with its own blur, pixel noise and blotch artefacts (``world.GeneratorModel``); the provider's
safety filter blanks a few images. This module renders ``n`` such candidates per prompt, exactly as the
simulator renders the app's images (``world.render_attributes``, ``render.render_array``, PNG), and records
each candidate's true utility for the average user, ``1.5 * (match + quality)`` (alpha = beta = 1, no
favourite-style bonus; a blank image ``1.5 * -3``), so a reranker's pick can be judged against ground truth.

Layout written by ``write_candidates`` (the folder format ``pickapic rerank`` reads)::

    OUT/<prompt_id>/prompt.txt            the caption
    OUT/<prompt_id>/cand-00.png ...       the candidates
    OUT/truth.parquet                     per candidate: drawn attributes, degradations, match, quality, utility

Prompts come from a published version's ``test_unique`` split (the evaluation prompts) joined with the
simulator's ground truth, which knows what each prompt asked for. Same arguments, same bytes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from formats.dataset import split_sidecars
from formats.files import write_bytes_atomic, write_parquet_atomic
from simulator import render, world
from simulator.config import SimConfig

# The weakest generator by true quality: the most room for best-of-n to help.
DEFAULT_GENERATOR = "stabilityai/stable-diffusion-2-1"
TRUTH_FILE = "truth.parquet"
PROMPT_FILE = "prompt.txt"

TRUTH_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("candidate", pa.int32(), nullable=False),         # 0 .. n-1
    pa.field("image", pa.string(), nullable=False),            # path relative to the candidates folder
    pa.field("generator", pa.string(), nullable=False),
    *[pa.field(f"target_{a}", pa.int8(), nullable=False) for a in world.ATTRIBUTES],
    *[pa.field(f"rendered_{a}", pa.int8(), nullable=False) for a in world.ATTRIBUTES],
    pa.field("blur", pa.float64(), nullable=False),
    pa.field("noise", pa.float64(), nullable=False),
    pa.field("artefacts", pa.int64(), nullable=False),
    pa.field("content_filtered", pa.bool_(), nullable=False),
    pa.field("match", pa.float64(), nullable=False),
    pa.field("quality", pa.float64(), nullable=False),
    pa.field("utility", pa.float64(), nullable=False),         # for the average user
])


@dataclass(frozen=True)
class CandidatePrompt:
    """A prompt to generate for and the attributes it asks for (colour, shape, count 1..4, background, style)."""

    prompt_id: str
    caption: str
    target: tuple[int, int, int, int, int]


def prompt_id_of(prompt_key: str) -> str:
    """The evaluation prompts' id: the first 16 hex digits of sha256(prompt_key)."""
    return hashlib.sha256(prompt_key.encode("utf-8")).hexdigest()[:16]


def generator_index(name: str) -> int:
    """Index in ``world.MODELS`` of a generator given by model_id or by the part after its last '/'."""
    for i, model in enumerate(world.MODELS):
        if name in (model.model_id, model.model_id.rsplit("/", 1)[-1]):
            return i
    raise ValueError(f"unknown generator {name!r}; choose one of {[m.model_id for m in world.MODELS]}")


def eval_prompts(ground_truth: Path, version_dir: Path, split: str = "test_unique") -> list[CandidatePrompt]:
    """The prompts of ``split`` of a published version with what each asked for (from the simulation's
    ground-truth folder, ``HOME/ground_truth`` of a simulated home)."""
    truth_file = Path(ground_truth) / "images.parquet"
    if not truth_file.is_file():
        raise FileNotFoundError(f"{truth_file} is missing: best-of-n candidates need the simulator's ground truth")
    sidecars = split_sidecars(Path(version_dir), split)
    if not sidecars:
        raise FileNotFoundError(f"no {split} sidecars in {Path(version_dir) / split}")
    rows = pa.concat_tables([pq.read_table(f, columns=["prompt_key", "caption", "image_0_uid"]) for f in sidecars])
    columns = ["image_uid"] + [f"target_{a}" for a in world.ATTRIBUTES]
    images = pq.read_table(truth_file, columns=columns).to_pydict()
    target_of = {uid: tuple(int(images[c][i]) for c in columns[1:]) for i, uid in enumerate(images["image_uid"])}
    prompts: dict[str, CandidatePrompt] = {}
    for key, caption, uid in zip(*(rows.column(c).to_pylist() for c in ("prompt_key", "caption", "image_0_uid"))):
        if uid not in target_of:
            raise ValueError(f"{split} image {uid} is not in {truth_file}: is this home simulated?")
        prompts.setdefault(key, CandidatePrompt(prompt_id_of(key), caption, target_of[uid]))
    return sorted(prompts.values(), key=lambda p: p.prompt_id)


def render_candidates(prompt: CandidatePrompt, generator: str, n: int, image_size: int, seed: int = 0,
                      content_filtered_rate: float = SimConfig.content_filtered_rate) -> tuple[list[bytes], list[dict]]:
    """``n`` PNG candidates of ``generator`` for ``prompt`` and one truth row each (seeded by seed and prompt id)."""
    if n < 1:
        raise ValueError(f"n={n} candidates must be >= 1")
    model = generator_index(generator)
    rng = np.random.default_rng([seed, 11, int(prompt.prompt_id, 16)])
    target = np.tile(np.asarray(prompt.target, dtype=np.int64), (n, 1))
    models = np.full(n, model)
    rendered = world.render_attributes(target, models, rng)
    blur = np.minimum(1.0, world.BLUR[models] * np.exp(rng.normal(0, 0.3, n)))
    noise = np.minimum(1.0, world.NOISE[models] * np.exp(rng.normal(0, 0.3, n)))
    artefacts = rng.poisson(world.ARTEFACTS[models])
    layout = rng.integers(0, 2**62, n)
    blank = rng.random(n) < content_filtered_rate
    match = world.match_score(target, rendered)
    quality = world.quality_of(blur, noise, artefacts)
    utility = np.where(blank, world.UTILITY_SCALE * world.BLANK_UTILITY, world.UTILITY_SCALE * (match + quality))
    images, rows = [], []
    for k in range(n):
        spec = render.ImageSpec(*(int(v) for v in rendered[k]), float(blur[k]), float(noise[k]), int(artefacts[k]),
                                int(layout[k]), bool(blank[k]))
        images.append(render.png_bytes(render.render_array(spec, image_size)))
        rows.append({"prompt_id": prompt.prompt_id, "candidate": k, "image": f"{prompt.prompt_id}/cand-{k:02d}.png",
                     "generator": world.MODELS[model].model_id,
                     **{f"target_{a}": int(prompt.target[i]) for i, a in enumerate(world.ATTRIBUTES)},
                     **{f"rendered_{a}": int(rendered[k, i]) for i, a in enumerate(world.ATTRIBUTES)},
                     "blur": float(blur[k]), "noise": float(noise[k]), "artefacts": int(artefacts[k]),
                     "content_filtered": bool(blank[k]), "match": float(match[k]), "quality": float(quality[k]),
                     "utility": float(utility[k])})
    return images, rows


def write_candidates(out_dir: Path, prompts: list[CandidatePrompt], generator: str, n: int, image_size: int,
                     seed: int = 0) -> Path:
    """Render ``n`` candidates per prompt into ``out_dir`` (rerank's folder layout); returns the truth table path."""
    out_dir = Path(out_dir)
    truth: list[dict] = []
    for prompt in prompts:
        images, rows = render_candidates(prompt, generator, n, image_size, seed)
        folder = out_dir / prompt.prompt_id
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / PROMPT_FILE, prompt.caption.encode("utf-8"))
        for data, row in zip(images, rows):
            write_bytes_atomic(out_dir / row["image"], data)
        truth += rows
    return write_parquet_atomic(pa.Table.from_pylist(truth, schema=TRUTH_SCHEMA), out_dir / TRUTH_FILE)
