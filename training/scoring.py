"""Score (prompt, image) pairs with a preference model exactly as the evaluation does: ``Scorer``.

``Scorer(model_dir).score(prompt, images)`` returns one ``ImageScore`` per image: the PickScore score
``logit_scale.exp() * cos(text, image)`` and the softmax preference among the prompt's images (PickScore's
README ``calc_probs``). Images go through the evaluation's preprocessing (``training.data.preprocess_image``
with an exact decode: shortest edge bicubic, center crop, CLIP mean/std), captions through the processor's
tokenizer (pad, truncate to the tokens the model takes, 77 for CLIP; for a run's checkpoint the ``max_length`` its
``train_config.json`` records, as the run's evaluation did), so a score here equals
``training.evaluate.score_split``'s for the same pair.

A missing or unreadable image becomes a row with ``error`` set (``missing_file``, ``not_a_file``,
``unreadable_image``, ``decompression_bomb``, ``empty_file``, ``bad_dimensions``: aspect ratio above
``training.data.MAX_ASPECT`` or a resize above ``MAX_RESIZED_PIXELS``; ``unsupported_mode``: 16-bit grayscale,
32-bit or float pixels, CMYK / YCbCr / LAB, refused as the features stage refuses them; ``non_finite_score``: the
model gave NaN or infinity) and never stops the batch. Work is batched:
each distinct prompt is embedded once, images ``batch_size`` at a time; only the small embeddings are kept. Each
prompt and image goes through the model in a batch of one fixed shape (alone on CPU, ``batch_size`` rows on CUDA):
its score never depends on which other rows it was scored with.
"""
from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from formats.files import open_regular_file
from training.config import recorded_max_length
from training.data import ImageGeometryError, ImageSpec, bounded_caption, preprocess_rgb
from training.device import resolve_device
from training.model import load_model, pooled_embeddings, text_positions

ImageInput = Union[str, os.PathLike, bytes, Image.Image]
MAX_IMAGE_BYTES = 256 << 20   # a candidate image file larger than this is refused unread
# The modes Pillow converts to RGB faithfully: pipelines.features.decode.CONVERTIBLE_MODES, whose
# unsupported_mode refusal this mirrors. Pillow's RGB conversion clips I;16 / I / F (a 30 % grey 16-bit PNG
# becomes white) and converts CMYK / YCbCr / LAB without colour management.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})


@dataclass
class ImageScore:
    """The score of one image for one prompt (or why it has none)."""

    prompt: str
    image: str                      # the path as given, or "<bytes #i>" / "<image #i>" for in-memory inputs
    score: float | None = None      # logit_scale.exp() * cosine(text, image)
    preference: float | None = None  # softmax of the scores among the prompt's scored images
    rank: int | None = None          # 1 = highest score among the prompt's scored images
    error: str | None = None         # reason the image has no score

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (one output row)."""
        return {"prompt": self.prompt, "image": self.image, "score": self.score, "preference": self.preference,
                "rank": self.rank, "error": self.error}


class ImageError(Exception):
    """An image that cannot be scored; ``reason`` is the short category stored in ``ImageScore.error``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def load_rgb(image: ImageInput, name: str) -> Image.Image:
    """The RGB image behind a path, bytes or PIL image; ``ImageError`` names what is wrong with it."""
    if isinstance(image, Image.Image):
        return _to_rgb(image, name)
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        path = Path(image)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError("missing_file", f"{name} does not exist") from None
        except OSError as exc:        # a name too long for the file system, a loop of links, no permission
            raise ImageError("unreadable_image", f"{name}: {exc.strerror or exc}") from None
        except ValueError as exc:     # a NUL byte in the path
            raise ImageError("unreadable_image", f"{name}: {exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not_a_file", f"{name} is not a regular file")
        try:
            # the type is checked on the open file: a FIFO or device swapped in after the checks above is never
            # waited on or read without end
            with open_regular_file(path) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > MAX_IMAGE_BYTES:
                    raise ImageError("unreadable_image", f"{name} has {size} bytes (more than {MAX_IMAGE_BYTES})")
                data = handle.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise ImageError("unreadable_image", f"{name}: {exc.strerror or exc}") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageError("unreadable_image", f"{name} grew past {MAX_IMAGE_BYTES} bytes while read")
    if not data:
        raise ImageError("empty_file", f"{name} has no bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that (and raises above): refused here from
            # MAX_IMAGE_PIXELS on, as the features stage does, before any pixel is decoded
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                raise ImageError("decompression_bomb", f"{name}: {img.width}x{img.height} pixels is more than "
                                 f"{limit}, a possible decompression bomb")
            return _to_rgb(img, name)
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", f"{name}: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's ways of saying "not a (whole) image"
        raise ImageError("unreadable_image", f"{name}: {exc}") from None


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """``img`` converted to RGB, or ``ImageError('unsupported_mode')`` where the conversion would change it."""
    if img.mode not in CONVERTIBLE_MODES:
        raise ImageError("unsupported_mode", f"{name} has mode {img.mode!r} (16-bit grayscale, 32-bit, float, CMYK "
                         f"and the like are not converted faithfully); accepted: {sorted(CONVERTIBLE_MODES)}")
    return img.convert("RGB")


def _scored_groups(groups: Sequence[str], scores: Sequence[float | None]) -> dict[str, list[int]]:
    """Row indices with a score, per group, in input order."""
    members: dict[str, list[int]] = {}
    for i, (group, score) in enumerate(zip(groups, scores)):
        if score is not None:
            members.setdefault(group, []).append(i)
    return members


def softmax_within(groups: Sequence[str], scores: Sequence[float | None]) -> list[float | None]:
    """Softmax of ``scores`` within each group (rows without a score get None), as PickScore's ``calc_probs``."""
    out: list[float | None] = [None] * len(scores)
    for rows in _scored_groups(groups, scores).values():
        values = np.array([scores[i] for i in rows], dtype=np.float64)
        exp = np.exp(values - values.max())
        for i, p in zip(rows, exp / exp.sum()):
            out[i] = float(p)
    return out


def ranks_within(groups: Sequence[str], scores: Sequence[float | None]) -> list[int | None]:
    """1-based rank of each score within its group (highest first; equal scores keep input order)."""
    out: list[int | None] = [None] * len(scores)
    for rows in _scored_groups(groups, scores).values():
        for rank, i in enumerate(sorted(rows, key=lambda r: (-scores[r], r)), 1):
            out[i] = rank
    return out


class Scorer:
    """A loaded preference model that scores prompts against images (CPU or CUDA, batched, exact decoding)."""

    def __init__(self, model_dir: str | os.PathLike, processor_dir: str | os.PathLike | None = None, *,
                 device: str = "auto", batch_size: int = 32):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be > 0")
        self.model_dir = str(model_dir)
        self.device = resolve_device(device)
        clip, self.processor = load_model(model_dir, processor_dir)
        self.clip = clip.eval().to(self.device)
        self.spec = ImageSpec.from_processor(self.processor.image_processor)
        self.batch_size = batch_size
        # rows of every forward pass: a model's numbers for one input vary with the shape of the batch it is in
        # (padding, kernels chosen by size), so each input is embedded in a batch of one fixed shape whatever shares
        # it (review rev28e: a prompt scored 2,048 rows at a time got another score in each chunk). One on CPU (the
        # input alone: as fast per input there); batch_size on CUDA, a short batch filled up (blank prompts, black
        # images) and texts padded to max_length, whose rows a GPU computes alike wherever they sit
        self.forward_rows = batch_size if self.device.type == "cuda" else 1
        # 77 for CLIP; a scratch model's max_length; a run's checkpoint: the max_length the run trained and
        # evaluated with (its train_config.json), so these scores equal its evaluation's
        self.max_length = min(text_positions(clip), recorded_max_length(model_dir) or text_positions(clip))

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings [len(prompts), d] (each prompt read as :func:`training.data.bounded_caption`
        reads a caption, then tokenized as PickScore does: pad, truncate to
        ``max_length``: the model's text length, 77 for CLIP, or the run's recorded ``max_length``)."""
        chunks, rows = [], self.forward_rows
        for start in range(0, len(prompts), rows):
            # read as the training reads captions (the same tokens): a huge prompt given to the Python API is never
            # tokenized whole (`pickapic score` refuses one over 64 KiB; `Scorer.score_pairs` took any)
            batch = [bounded_caption(prompt) for prompt in prompts[start:start + rows]]
            tokens = self.processor.tokenizer(batch + [""] * (rows - len(batch)),
                                              padding="max_length" if rows > 1 else True,
                                              truncation=True, max_length=self.max_length, return_tensors="pt")
            out = self.clip.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                              attention_mask=tokens["attention_mask"].to(self.device))
            chunks.append(_normalised(out)[:len(batch)])
        return torch.cat(chunks) if chunks else torch.empty(0)

    @torch.no_grad()
    def embed_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """Normalised image embeddings of preprocessed ``pixels`` [N, 3, crop, crop], :attr:`forward_rows` at a
        time (a short batch filled up with black images): an image's embedding never depends on what shares it."""
        chunks, rows = [], self.forward_rows
        for start in range(0, len(pixels), rows):
            batch = pixels[start:start + rows]
            if len(batch) < rows:
                batch = np.concatenate([batch, np.zeros((rows - len(batch), *batch.shape[1:]), batch.dtype)])
            out = self.clip.get_image_features(pixel_values=torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
            chunks.append(_normalised(out)[:min(rows, len(pixels) - start)])
        return torch.cat(chunks) if chunks else torch.empty(0)

    def score(self, prompt: str, images: Sequence[ImageInput]) -> list[ImageScore]:
        """Scores of ``images`` for ``prompt`` and their softmax preference among them (errors as rows)."""
        return self.score_pairs([(prompt, image) for image in images])

    def score_pairs(self, pairs: Iterable[tuple[str, ImageInput]], groups: Sequence[str] | None = None) -> list[ImageScore]:
        """One ``ImageScore`` per (prompt, image), in input order; preference and rank within each prompt
        (or within each of ``groups``, one label per pair: candidate sets that share a prompt text stay apart)."""
        pairs = list(pairs)
        if groups is not None and len(groups) != len(pairs):
            raise ValueError(f"{len(groups)} group labels for {len(pairs)} pairs")
        rows = [ImageScore(prompt=str(prompt), image=_image_name(image, i)) for i, (prompt, image) in enumerate(pairs)]
        prompts = sorted({row.prompt for row in rows})
        texts = self.embed_texts(prompts)
        text_of = {p: i for i, p in enumerate(prompts)}
        scale = float(self.clip.logit_scale.detach().exp())
        buffer = np.empty((self.batch_size, 3, self.spec.crop, self.spec.crop), dtype=np.float32)
        pending: list[int] = []

        def flush() -> None:
            if not pending:
                return
            images = self.embed_pixels(buffer[:len(pending)])
            index = torch.tensor([text_of[rows[i].prompt] for i in pending], device=images.device)
            values = scale * (texts[index] * images).sum(dim=-1)
            for i, value in zip(pending, values.cpu().tolist()):
                if math.isfinite(value):
                    rows[i].score = float(value)
                else:   # never ranked, chosen or written as a bare NaN
                    rows[i].error = (f"non_finite_score: {rows[i].image}: the model gave {value} (NaN or infinite "
                                     "weights or embeddings)")
            pending.clear()

        for i, (_, image) in enumerate(pairs):
            try:
                preprocess_rgb(load_rgb(image, rows[i].image), self.spec, out=buffer[len(pending)])
            except ImageError as exc:
                rows[i].error = str(exc)
                continue
            except ImageGeometryError as exc:  # an extreme strip: its resize alone would take gigabytes
                rows[i].error = f"bad_dimensions: {rows[i].image}: {exc}"
                continue
            pending.append(i)
            if len(pending) == self.batch_size:
                flush()
        flush()
        groups = list(groups) if groups is not None else [row.prompt for row in rows]
        scores = [row.score for row in rows]
        for row, p, r in zip(rows, softmax_within(groups, scores), ranks_within(groups, scores)):
            row.preference, row.rank = p, r
        return rows


def _normalised(output: Any) -> torch.Tensor:
    embeds = pooled_embeddings(output).float()
    return embeds / embeds.norm(dim=-1, keepdim=True)


def _image_name(image: ImageInput, index: int) -> str:
    if isinstance(image, (bytes, bytearray)):
        return f"<bytes #{index}>"
    if isinstance(image, Image.Image):
        return f"<image #{index}>"
    return os.fspath(image)
