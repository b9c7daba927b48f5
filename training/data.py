"""Reading published Pick-a-Pic shards with webdataset: shard discovery, fast CLIP preprocessing, batches.

Pipeline per loader worker (a list of small stages, as webdataset likes it):
shard urls (resampled per rank/worker, or each seeded epoch cut into equal sample shares per rank/worker) ->
tar samples (``tar_samples``: webdataset's grouping, a faster reader), ``INTERLEAVED_SHARDS`` shards at once ->
seeded shuffle buffer (drained at each epoch's end) -> skip (exact resume) -> batch: decode JSON + 2 JPEGs into
one pixel tensor, tokenize.

Image preprocessing equals ``CLIPImageProcessor`` (shortest edge -> bicubic resize, center crop, CLIP
mean/std) except that, with ``draft=True``, the JPEG is first decoded at a reduced DCT scale (PIL
``Image.draft``) that still leaves the image at least ``DRAFT_MARGIN`` x the target size. The measured
difference to a full decode is documented in training/README.md (benchmarks/loader.py prints it).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import random
import re
import traceback
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from formats import dataset
from formats.files import sha256_file
from formats.text import first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT = 50                # longest / shortest side; published images are <= 4 (features.max_aspect)
MAX_RESIZED_PIXELS = 1 << 26   # pixels after the shortest-edge resize (64 M, ~200 MB as RGB)
DRAFT_MARGIN = 1  # draft-decode to >= the target edge (e.g. 512 -> 256 for 224), then bicubic; see README
# Characters of a caption given to a tokenizer (train batches, evaluation, the scratch BPE's training): CLIP reads
# 77 tokens, a real prompt is far shorter, and a huge caption (32 MiB in one published sample) tokenized whole cost
# gigabytes for tokens that are cut off anyway (review rev28a). 16,384 characters are at most the 64 KiB
# ``pickapic score`` refuses a prompt above; a caption this short is given whole, as before.
MAX_CAPTION_CHARS = 16_384
# Train shards a loader worker reads at once, one sample from each in turn (``TrainPairStream``): a published shard
# holds one export day, so the shuffle buffer's first samples come from this many shards, not one (review rev39b)
INTERLEAVED_SHARDS = 4


@dataclass(frozen=True)
class ImageSpec:
    """Geometry and normalisation of a CLIP image processor."""

    shortest_edge: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_processor(cls, image_processor: Any) -> "ImageSpec":
        """Read size / crop / mean / std off a transformers CLIP image processor."""
        size, crop = image_processor.size, image_processor.crop_size
        edge = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
        if edge is None:
            raise ValueError(f"image processor size {size!r} has no shortest_edge; only CLIP-style processors are supported")
        height = crop["height"] if isinstance(crop, dict) else crop.height
        width = crop["width"] if isinstance(crop, dict) else crop.width
        if height != width:
            raise ValueError(f"non-square crop_size {crop!r} is not supported")
        if not (getattr(image_processor, "do_resize", True) and getattr(image_processor, "do_center_crop", True)
                and getattr(image_processor, "do_normalize", True)):
            raise ValueError(f"image processor {type(image_processor).__name__} disables resize/crop/normalize")
        return cls(int(edge), int(height), tuple(float(v) for v in image_processor.image_mean),
                   tuple(float(v) for v in image_processor.image_std))


def preprocess_image(data: bytes, spec: ImageSpec, draft: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> float32 ``(3, crop, crop)`` CLIP tensor (resize shortest edge bicubic, center crop).

    With ``out`` the result is written there (no temporaries: one cast, two in-place ops).
    """
    with Image.open(io.BytesIO(data)) as img:
        if draft and img.format == "JPEG":
            img.draft("RGB", (spec.shortest_edge * DRAFT_MARGIN, spec.shortest_edge * DRAFT_MARGIN))
        img = img.convert("RGB")
    return preprocess_rgb(img, spec, out)


class ImageGeometryError(ValueError):
    """An image whose shape the CLIP preprocessing cannot take without blowing up memory."""


def check_geometry(width: int, height: int, spec: ImageSpec) -> None:
    """Refuse an image whose longest / shortest side exceeds ``MAX_ASPECT`` or whose shortest-edge resize
    would exceed ``MAX_RESIZED_PIXELS`` (a 1 x 200,000 strip resized to a 224 px short side is 45 G pixels)."""
    short, long = min(width, height), max(width, height)
    if short <= 0:
        raise ImageGeometryError(f"image is {width}x{height}")
    if long > MAX_ASPECT * short:
        raise ImageGeometryError(f"image is {width}x{height}, aspect ratio {long / short:.1f} > {MAX_ASPECT}")
    resized = spec.shortest_edge * int(spec.shortest_edge * long / short)
    if resized > MAX_RESIZED_PIXELS:
        raise ImageGeometryError(f"image is {width}x{height}; resized to a {spec.shortest_edge} px short side it "
                                 f"would be {resized} pixels (more than {MAX_RESIZED_PIXELS})")


def preprocess_rgb(img: Image.Image, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded RGB PIL image -> float32 ``(3, crop, crop)`` CLIP tensor (the second half of ``preprocess_image``);
    ``ImageGeometryError`` for an image :func:`check_geometry` refuses."""
    width, height = img.size
    check_geometry(width, height, spec)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(spec.shortest_edge * long / short)  # same rounding as transformers
    size = (spec.shortest_edge, new_long) if width <= height else (new_long, spec.shortest_edge)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - spec.crop) // 2, (size[1] - spec.crop) // 2
    if left < 0 or top < 0:
        raise ValueError(f"image {width}x{height} resized to {size} is smaller than the crop {spec.crop}")
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    if out is None:
        out = np.empty((3, spec.crop, spec.crop), dtype=np.float32)
    out[...] = np.asarray(img).transpose(2, 0, 1)
    # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std
    std = np.asarray(spec.std, dtype=np.float64)
    out *= (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    out -= (np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    return out


# --------------------------------------------------------------------------- shard discovery
def split_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Sorted shard paths of ``split``: exactly the ones its version's manifest lists (``dataset.split_shards``)."""
    return dataset.split_shards(dataset.resolve_data_dir(data_dir), split)


def shard_sizes(shards: Iterable[str | os.PathLike]) -> dict[str, int]:
    """``{shard path: sample count}`` from the ``sizes.json`` beside each shard (shards it does not list are left out)."""
    sizes: dict[Path, dict] = {}
    counts = {}
    for shard in map(Path, shards):
        if shard.parent not in sizes:
            sizes[shard.parent] = dataset.read_sizes(shard.parent) or {}
        if shard.name in sizes[shard.parent]:
            counts[str(shard)] = int(sizes[shard.parent][shard.name])
    return counts


def shard_weights(shards: list[Path]) -> list[float]:
    """Each shard's sample count from the ``sizes.json`` beside it (1 for a shard it does not list)."""
    counts = shard_sizes(shards)
    return [float(counts.get(str(shard), 1)) for shard in shards]


class ShardChecksumError(dataset.ChecksumError):
    """A shard whose bytes differ from the sha256 its version's manifest records (or that it does not list)."""


def shard_digests(shards: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{shard path: sha256}`` from the ``manifest.json`` of each shard's version (``<version>/<split>/<shard>``).

    The readers hash every shard as they stream it and compare at its end (:func:`tar_samples`). A version
    without a manifest, or a shard its manifest does not list, is an error here, before anything is read.
    """
    manifests: dict[Path, dict] = {}
    digests = {}
    for shard in map(Path, shards):
        version_dir = shard.parent.parent
        if version_dir not in manifests:
            manifests[version_dir] = dataset.read_manifest(version_dir)["files"]
        rel = f"{shard.parent.name}/{shard.name}"
        info = manifests[version_dir].get(rel)
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise ShardChecksumError(f"shard {rel} of dataset version {version_dir.name} ({shard}) is not listed in "
                                     f"its {dataset.MANIFEST_FILE}: not a file that version published; "
                                     f"{dataset.republish(version_dir)}")
        digests[str(shard)] = info["sha256"]
    return digests


def _mismatch(url: str, digest: str, recorded: str) -> str:
    path = Path(url)
    return (f"shard {path.parent.name}/{path.name} of dataset version {path.parent.parent.name} ({url}) has "
            f"sha256 {digest} but its {dataset.MANIFEST_FILE} records {recorded}: its bytes changed "
            f"after publishing (bit rot, an edit, a swapped file) and its samples cannot be trusted; "
            f"{dataset.republish(path.parent.parent)}")


def verify_shards(urls: Iterable[str], digests: dict[str, str]) -> None:
    """Hash each of ``urls`` whole and compare with ``digests`` (:func:`shard_digests`): the check for a shard
    a reader in another process (a loader worker) started but did not read to its end."""
    for url in sorted(set(urls)):
        digest = sha256_file(Path(url))
        if digest != digests[url]:
            raise ShardChecksumError(_mismatch(url, digest, digests[url]))


class OpenShard:
    """The shard a :func:`tar_samples` reader is inside: started, not yet read to its end, so not yet
    verified (``url`` is None between shards and once a shard passed its checks).

    A reader that stops inside a shard calls :meth:`finish`, explicitly: a generator's ``close()`` (or a
    ``finally`` in it) may never run, and an exception there would be lost. Only ``url`` crosses
    processes; the open file and the running sha256 stay in the process reading the shard."""

    def __init__(self) -> None:
        self.url: str | None = None
        self._digest: str | None = None
        self._handle: Any = None
        self._sha: Any = None

    def _enter(self, url: str, digest: str, handle: Any, sha: Any) -> None:
        self.url, self._digest, self._handle, self._sha = url, digest, handle, sha

    def _leave(self) -> None:
        self.url = self._digest = self._handle = self._sha = None

    def finish(self) -> None:
        """Verify the shard the reader stopped inside (none: nothing to do): hash the rest of it, continuing the
        running sha256, or the whole file when the reader's file is already closed; then compare with the
        manifest's digest (:class:`ShardChecksumError`). The reader must not be resumed afterwards."""
        if self.url is None:
            return
        url, recorded, handle, sha = self.url, self._digest, self._handle, self._sha
        self._leave()
        if handle is None or handle.closed:
            digest = sha256_file(Path(url))
        else:
            while data := handle.read(1 << 16):
                sha.update(data)
            digest = sha.hexdigest()
        if digest != recorded:
            raise ShardChecksumError(_mismatch(url, digest, recorded))


def check_tar_end(path: str | os.PathLike) -> None:
    """Refuse a shard that does not end with tar's two zero end-of-archive blocks (a truncated or 0-byte file)."""
    size = os.stat(path).st_size
    if size < 2 * _BLOCK or size % _BLOCK:
        raise ValueError(f"shard {path} is {size} bytes: not a complete tar (truncated?); republish the version")
    with open(path, "rb") as handle:
        handle.seek(size - 2 * _BLOCK)
        if handle.read(2 * _BLOCK).strip(b"\0"):
            raise ValueError(f"shard {path} does not end with tar's end-of-archive blocks (truncated?); "
                             "republish the version")


def check_split(data_dir: str | os.PathLike, split: str) -> int | None:
    """Check before a run that ``split`` has shards (exactly the ones its version's manifest lists: a shard
    file in the folder that it does not list is refused too), that its ``sizes.json`` (when present) has
    its manifest sha256 and lists samples, that its ``prompt_counts.parquet`` (when present) has its manifest
    sha256, that every shard is a complete tar of the size the manifest
    records; returns the listed sample count (None without ``sizes.json``). The shards' bytes are hashed
    as they are read."""
    version = dataset.resolve_data_dir(data_dir)
    split_dir = version / split
    listed = dataset.read_manifest(version)["files"]
    if split_dir.is_dir():
        for shard in sorted(split_dir.glob(dataset.shard_glob(split))):
            if f"{split}/{shard.name}" not in listed:
                shard_digests([shard])  # raises, naming the shard
    shards = dataset.split_shards(version, split)
    if not shards:
        raise ValueError(f"split {split!r} has no shards in {split_dir}")
    sizes = dataset.read_sizes(split_dir, listed)
    if f"{split}/{dataset.PROMPT_COUNTS_FILE}" in listed or os.path.lexists(split_dir / dataset.PROMPT_COUNTS_FILE):
        prompt_counts(str(split_dir))   # the loss weights: checked against the manifest now, not mid-run
    total = None if sizes is None else int(sum(sizes.values()))
    if total is not None and total <= 0:
        raise ValueError(f"split {split!r} is empty: {split_dir / dataset.SIZES_FILE} lists {total} samples")
    for shard in shards:
        try:
            check_tar_end(shard)
        except ValueError as err:
            raise ValueError(f"split {split!r} of {version}: {err}") from None
    shard_digests(shards)  # every shard listed
    for shard in shards:  # a size the manifest does not record fails now; equal sizes are hashed while read
        rel = f"{split}/{shard.name}"
        size = os.stat(shard).st_size
        if size != listed[rel].get("bytes"):
            raise ShardChecksumError(f"shard {rel} of dataset version {version.name} ({shard}) is {size} bytes, its "
                                     f"{dataset.MANIFEST_FILE} records {listed[rel].get('bytes')}: it changed after "
                                     f"publishing; {dataset.republish(version)}")
    return total


def split_size(data_dir: str | os.PathLike, split: str) -> int:
    """Number of samples in ``split`` from its ``sizes.json``."""
    split_dir = dataset.resolve_data_dir(data_dir) / split
    sizes = dataset.read_sizes(split_dir)
    if sizes is None:
        raise FileNotFoundError(f"{split_dir / dataset.SIZES_FILE} missing: cannot size split {split!r}")
    return int(sum(sizes.values()))


def iter_captions(data_dir: str | os.PathLike, split: str = "train", limit: int | None = None) -> Iterator[str]:
    """Captions of ``split`` in shard order, read without decoding images. Every shard they come from is
    checked against its manifest sha256: each read to its end as it is read, and the one ``limit`` stops
    inside once the last caption has been yielded (the rest of it hashed then), so a caller that reads the
    captions to the end (the tokenizer's trainer) gets :class:`ShardChecksumError` for a changed caption."""
    shards = split_shards(data_dir, split)
    inside = OpenShard()
    samples = tar_samples(({"url": str(p)} for p in shards), shard_sizes(shards), shard_digests(shards), inside)
    for sample in islice(samples, limit):
        yield bounded_caption(_caption(sample))
    inside.finish()


# --------------------------------------------------------------------------- stages
_BLOCK = 512


def tar_samples(urls: Iterable[dict[str, str]], expected: dict[str, int] | None = None,
                digests: dict[str, str] | None = None, inside: OpenShard | None = None) -> Iterator[dict[str, Any]]:
    """webdataset samples (``__key__``, ``__url__``, one field per extension) from plain ustar shards.

    Same grouping as ``wds.tarfile_to_samples`` (key = member name before the first dot), 4x cheaper
    per sample than Python's ``tarfile`` (0.05 vs 0.21 ms): that matters at small crops, where decoding
    a pair costs only ~2 ms. Pax / GNU extension members are refused (the publish writer never makes them).
    A shard that ends without tar's end-of-archive block (truncated, even at a member boundary) raises, and
    so does one whose sample count differs from ``expected[url]`` (its ``sizes.json`` entry, see
    :func:`shard_sizes`), once the shard has been read to its end.

    With ``digests`` (:func:`shard_digests`), every byte read is hashed as it streams by (padding and the
    tail after the end-of-archive block included, so no second pass) and a shard whose sha256 differs
    from ``digests[url]`` raises :class:`ShardChecksumError` once read to its end; its samples were
    already yielded by then, so the error stops a run at the end of the first damaged shard. A reader
    that stops inside a shard learns its digest only through ``inside`` (an :class:`OpenShard`, which
    names the shard being read until it passed its checks): it calls ``inside.finish()``. A url missing
    from ``digests`` is an error.

    An item's ``lo`` / ``hi`` (samples ``lo:hi``; default all) are the samples yielded: the others are parsed for
    their position but never built (no payload kept, nothing to decode). ``count=False`` (with ``hi``): another
    reader checks this shard's count, so past sample ``hi`` its bytes are only hashed, not parsed (a shard that
    ends before ``hi`` still fails its count).
    """
    for item in urls:
        url = item["url"]
        lo, hi = item.get("lo", 0), item.get("hi")
        stop = None if item.get("count", True) or hi is None else hi   # past it: only hashed, not parsed
        current: dict[str, Any] | None = None
        count = 0
        whole = True   # parsed to the end-of-archive block: its sample count is checked
        keep = False   # ``current`` is in ``lo:hi``: its members are kept and it is yielded
        if digests is not None and url not in digests:
            raise ShardChecksumError(f"shard {url} is not listed in its version's {dataset.MANIFEST_FILE}; "
                                     f"{dataset.republish(Path(url).parent.parent)}")
        sha = hashlib.sha256() if digests is not None else None
        with open(url, "rb") as handle:
            if inside is not None and sha is not None:
                inside._enter(url, digests[url], handle, sha)

            def read(n: int) -> bytes:
                data = handle.read(n)
                if sha is not None:
                    sha.update(data)
                return data

            while True:
                header = read(_BLOCK)
                if header == bytes(_BLOCK):
                    break
                if len(header) < _BLOCK:
                    raise ValueError(f"{url}: ends after {handle.tell()} bytes without tar's end-of-archive "
                                     "block (truncated?); samples would be lost, republish the version")
                name = header[:100].split(b"\0", 1)[0].decode("utf-8")
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" else ""
                name = f"{prefix}/{name}" if prefix else name
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                kind = header[156:157]
                if kind == b"5":
                    continue
                if kind not in (b"0", b"\0"):
                    raise ValueError(f"{url}: member {name!r} has tar type {kind!r}; only plain ustar files are read")
                payload = read(size)
                read((-size) % _BLOCK)  # padding: hashed, not skipped
                if len(payload) != size:
                    raise ValueError(f"{url}: member {name!r} is truncated ({len(payload)} of {size} bytes)")
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise ValueError(f"{url}: member {name!r} has no extension")
                key, ext = base.split(".", 1)
                if current is None or current["__key__"] != key:
                    if current is not None:
                        count += 1
                        if keep:
                            yield current
                    if stop is not None and count >= stop:   # the rest is another reader's: hash it, no more
                        whole, current = False, None
                        break
                    current = {"__key__": key, "__url__": url}
                    keep = lo <= count and (hi is None or count < hi)
                if ext in current:
                    raise ValueError(f"{url}: sample {key!r} repeats member {ext!r}")
                current[ext] = payload if keep else b""
            while sha is not None and read(1 << 16):  # the second zero block and the record padding
                pass
        count += current is not None  # the last sample waits for the checks
        if whole and expected is not None and url in expected and count != expected[url]:
            raise ValueError(f"{url}: holds {count} samples but {dataset.SIZES_FILE} beside it lists {expected[url]}; "
                             "republish the version")
        if sha is not None and sha.hexdigest() != digests[url]:
            raise ShardChecksumError(_mismatch(url, sha.hexdigest(), digests[url]))
        if inside is not None and inside.url == url:
            inside._leave()  # verified
        if current is not None and keep:
            yield current


# Runs of the blanks that CLIP's tokenizer reads as one space between words (transformers 5's CLIPTokenizer, the
# only one it has, and every version's CLIPTokenizerFast: its normalizer's \s+ -> ' ', Oniguruma's \s, the Unicode
# White_Space characters): Python's \s less the separators \x1c-\x1f, which Python counts as blanks and the
# tokenizer reads as tokens. \x0b, \x0c and \x85 are blanks to it (review rev30e: a run of more than
# MAX_CAPTION_CHARS of them was cut into with the words after it, which the tokenizer reads). The slow tokenizer of
# transformers 4 (BasicTokenizer) deleted them instead; this project's code never loads it.
_BLANKS = re.compile(r"[^\S\x1c-\x1f]+")


def bounded_caption(caption: str) -> str:
    """``caption`` as a tokenizer is given it, so a huge caption never costs more than a normal one: unchanged when
    it has at most :data:`MAX_CAPTION_CHARS` characters; else its runs of blanks read as one space and the blanks
    at its ends left out (as the tokenizer reads them: the same tokens), then cut to its first
    :data:`MAX_CAPTION_CHARS` characters (review rev28e: 16,400 blanks before the words were cut off with them,
    so the training read an empty caption where `pickapic score` reads the words)."""
    if len(caption) <= MAX_CAPTION_CHARS:
        return caption
    pieces, size, start = [], 0, 0     # read only as far as the cut: a huge caption is never copied whole
    for blanks in _BLANKS.finditer(caption):
        if blanks.start() > start:
            pieces.append(caption[start:min(blanks.start(), start + MAX_CAPTION_CHARS - size)])
            size += len(pieces[-1])
        if size >= MAX_CAPTION_CHARS:
            break
        if size:                        # the blanks before the first word are left out
            pieces.append(" ")
            size += 1
        start = blanks.end()
    else:
        pieces.append(caption[start:start + max(0, MAX_CAPTION_CHARS - size)])
    return "".join(pieces)[:MAX_CAPTION_CHARS].rstrip(" ")


def _where(sample: dict[str, Any]) -> str:
    """'sample KEY of SHARD' for an error about one published sample."""
    return f"sample {sample.get('__key__')!r} of {sample.get('__url__')}"


def _sample_json(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``json`` member as an object; a one-line ``ValueError`` naming the sample otherwise."""
    try:
        meta = json.loads(sample["json"])
    except (ValueError, RecursionError) as exc:   # not UTF-8 or not JSON (UnicodeDecodeError is a ValueError)
        raise ValueError(f"{_where(sample)}: its json member is not valid JSON ({_one_line(exc)}); "
                         "republish the version") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{_where(sample)}: its json member is a JSON {type(meta).__name__}, not an object; "
                         "republish the version")
    return meta


def _one_line(exc: BaseException) -> str:
    return first_line(exc)[:300]


def _caption(sample: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    """The sample's caption (``txt``, else the json's ``caption``; ``meta``: its json, already read); a one-line
    ``ValueError`` naming the sample when it is not UTF-8 text."""
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{_where(sample)}: its caption (txt) is not UTF-8 text ({_one_line(exc)}); "
                             "republish the version") from None
    caption = (_sample_json(sample) if meta is None else meta).get("caption")
    if not isinstance(caption, str):
        raise ValueError(f"{_where(sample)}: it has no txt member and its json caption is "
                         f"{type(caption).__name__}, not text; republish the version")
    return caption


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from a sha256 of ``parts`` (never Python's ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def shuffled(samples: Iterable[dict], bufsize: int, initial: int, seed: int) -> Iterator[dict]:
    """Shuffle buffer with an explicit seed (webdataset's ``shuffle``: starts after ``initial``, grows to ``bufsize``)."""
    rng = random.Random(seed)
    initial = min(initial, bufsize)
    buf: list[dict] = []
    it = iter(samples)
    for sample in it:
        buf.append(sample)
        if len(buf) < bufsize:
            extra = next(it, None)  # read two per yield until the buffer is full
            if extra is not None:
                buf.append(extra)
        if len(buf) < initial:
            continue
        idx = rng.randrange(len(buf))
        buf[idx], buf[-1] = buf[-1], buf[idx]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _label_pair(sample: dict[str, Any], meta: dict[str, Any]) -> tuple[float, float]:
    """``(label_0, label_1)``: a preference distribution (two finite numbers in [0, 1] that sum to 1: 1/0, 0/1 or
    0.5/0.5 as published), else a one-line ``ValueError`` naming the sample (bad data, never trained on: a NaN label
    would turn the loss NaN and read as a divergence, and 3 / -2 trains a 'probability' of -2)."""
    values = (meta.get("label_0"), meta.get("label_1"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{_where(sample)}: label_0={_shown_number(values[0])}, "
                         f"label_1={_shown_number(values[1])} are not two numbers; republish the version")
    try:
        label = (float(values[0]), float(values[1]))
    except OverflowError:   # a JSON integer past 1e308 (review rev28e): no preference either
        label = (math.inf, math.inf)
    if not (all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in label) and abs(label[0] + label[1] - 1.0) <= 1e-6):
        raise ValueError(f"{_where(sample)}: label_0={_shown_number(values[0])}, "
                         f"label_1={_shown_number(values[1])} are no preference (two "
                         "numbers in [0, 1] summing to 1: 1/0, 0/1 or 0.5/0.5 for a tie); republish the version")
    return label


def _count(n: Any) -> float | None:
    """``num_example_per_prompt`` as a float when it is a count (a whole number >= 1 that a float holds: 2 and 2.0;
    review rev28e: a count of 1e-300 weighted its pair 1e300 and read as a divergence, 0.5 doubled a pair's
    weight, and 10 ** 400 raised a bare OverflowError); None otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return None
    try:
        count = float(n)
    except OverflowError:
        return None
    return count if math.isfinite(count) and count >= 1.0 and count.is_integer() else None


def _shown_number(value: Any) -> str:
    """``repr(value)``, an integer of many digits shortened (a message is one short line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    return repr(value)[:80]


def pair_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """Caption, label, weight (1 / num_example_per_prompt) and generator names of a raw tar sample; a malformed
    sample (json not an object, a count or label of the wrong type or range, a caption that is not UTF-8) is a
    one-line ``ValueError`` naming its shard and key. The caption is cut to :data:`MAX_CAPTION_CHARS`."""
    key = sample["__key__"]
    missing = [m for m in ("0.jpg", "1.jpg", "json") if m not in sample]
    if missing:
        raise KeyError(f"sample {key!r} in {sample.get('__url__')!r} lacks members {missing}")
    meta = _sample_json(sample)
    n = meta.get("num_example_per_prompt")
    if n is None and isinstance(meta.get("prompt_key"), str) and "__url__" in sample:
        n = prompt_counts(os.path.dirname(sample["__url__"])).get(meta["prompt_key"])
    count = _count(n)
    if count is None:
        raise ValueError(f"{_where(sample)}: num_example_per_prompt={_shown_number(n)} must be a count of pairs "
                         "(a whole number, 1 or more); republish the version")
    return {
        "key": key,
        "caption": bounded_caption(_caption(sample, meta)),
        "label": _label_pair(sample, meta),
        "weight": 1.0 / count,
        "model_0": str(meta.get("model_0", "")),
        "model_1": str(meta.get("model_1", "")),
    }


@functools.lru_cache(maxsize=8)
def prompt_counts(split_dir: str) -> dict[str, int]:
    """``prompt_key -> num_example_per_prompt`` of the split whose shards are in ``split_dir``.

    The publish stage keeps the count outside the shards (a new day changes it for old pairs, the
    shards stay byte-identical), in ``prompt_counts.parquet`` beside them. The bytes read must have the
    sha256 the version's manifest records for it, else :class:`formats.dataset.ChecksumError` (a ValueError).
    """
    import pyarrow.parquet as pq

    path = Path(split_dir) / dataset.PROMPT_COUNTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the samples of {split_dir} carry no num_example_per_prompt")
    version_dir = path.parent.parent
    rel = f"{path.parent.name}/{path.name}"
    # its size checked against the manifest before a byte is read, its sha256 hashed streaming (fix38a: it was
    # read whole first, so a planted multi-GB file cost as much memory); as sizes.json (dataset.read_sizes),
    # the file decides every pair's loss weight
    with dataset.open_listed_file(version_dir, rel, why="an edited prompt_counts.parquet reweights the loss") as handle:
        if handle is None:                         # removed since the check above: as missing
            raise FileNotFoundError(f"{path} missing: the samples of {split_dir} carry no num_example_per_prompt")
        table = pq.read_table(handle, columns=["prompt_key", "num_example_per_prompt"])
    return dict(zip(table.column("prompt_key").to_pylist(), table.column("num_example_per_prompt").to_pylist()))


class PairCollator:
    """Raw tar samples -> a batch: both images decoded straight into one pixel tensor, captions tokenized
    the way PickScore does (pad, truncate to 77). In a loader worker the tensor is allocated in shared
    memory, so handing it to the trainer copies nothing."""

    def __init__(self, tokenizer: Any, max_length: int = 77):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, samples: list[dict[str, Any]], spec: ImageSpec, draft: bool) -> dict[str, Any]:
        metas = [pair_meta(s) for s in samples]
        pixels = torch.empty((len(samples), 2, 3, spec.crop, spec.crop), dtype=torch.float32)
        if torch.utils.data.get_worker_info() is not None:
            pixels.share_memory_()
        target = pixels.numpy()
        for i, sample in enumerate(samples):
            for j in (0, 1):
                try:
                    preprocess_image(sample[f"{j}.jpg"], spec, draft, out=target[i, j])
                except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
                    # PIL's ways of saying "not a (whole) image", and a geometry the preprocessing refuses
                    raise ValueError(f"{_where(sample)}: its image {j}.jpg cannot be read ({_one_line(exc)}); "
                                     "republish the version") from None
        text = self.tokenizer([m["caption"] for m in metas], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": pixels,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "labels": torch.tensor([m["label"] for m in metas], dtype=torch.float32),
            "weights": torch.tensor([m["weight"] for m in metas], dtype=torch.float32),
            "keys": [m["key"] for m in metas],
            "model_0": [m["model_0"] for m in metas],
            "model_1": [m["model_1"] for m in metas],
        }


def batched(samples: Iterable[dict], size: int, collate: Callable, partial: bool) -> Iterator[dict]:
    """Group ``samples`` into lists of ``size`` and collate them."""
    it = iter(samples)
    while batch := list(islice(it, size)):
        if len(batch) < size and not partial:
            return
        yield collate(batch)


def worker_init(_: int = 0) -> None:
    """Loader worker set-up: one torch thread; Pillow keeps up to 64 freed blocks (its default 0 returns every
    decoded 512 px JPEG's memory to the OS and maps it again for the next one)."""
    torch.set_num_threads(1)
    Image.core.set_blocks_max(64)


# --------------------------------------------------------------------------- datasets
class TrainPairStream(torch.utils.data.IterableDataset):
    """Endless, seeded stream of training batches for one DDP rank (each loader worker yields whole batches).

    ``resampled=True`` draws shards with replacement, weighted by their sample counts, from a
    per-(rank, worker) seed (webdataset's ``ResampledShards``), so ranks never run dry at different times; ``False``
    walks seeded epochs, each cut into ``ranks x workers`` equal shares of samples (:meth:`_epoch_segments`: every
    rank takes as many steps an epoch, and reads each sample at most once), and needs at least ranks x workers
    samples (shards, without a ``sizes.json``). Each worker reads :data:`INTERLEAVED_SHARDS` shards at once, one
    sample from each in turn, into its seeded shuffle buffer, which in epoch mode is drained at each epoch's end
    (review rev39b: the next epoch's samples came out while this one's waited). ``skip_batches`` is
    the number of batches this rank already consumed: each worker drops its share of raw samples before
    decoding, so a resumed run sees exactly the batches an uninterrupted one would have.

    Each batch also names the loader ``worker`` that made it and the shards that worker was inside
    (``inside_shards``: started, not yet verified; empty between shards). A consumer that reports or keeps
    what it trained on (the trainer, before each evaluation and checkpoint) verifies, with
    :func:`verify_shards`, the ``inside_shards`` of the last batch it took from each worker: the only shards
    its batches drew samples from that no check has passed yet.
    """

    def __init__(self, shards: list[Path], batch_size: int, collate: PairCollator, spec: ImageSpec, *, seed: int,
                 shuffle_buffer: int, shuffle_initial: int, resampled: bool, draft: bool, num_workers: int,
                 skip_batches: int = 0):
        super().__init__()
        if not shards:
            raise ValueError("no training shards given")
        self.urls = [str(p) for p in shards]
        self.weights = shard_weights(shards)
        self.expected = shard_sizes(shards)
        self.digests = shard_digests(shards)
        self.where = f"split {Path(self.urls[0]).parent.name!r} in {Path(self.urls[0]).parent}"
        if resampled and sum(self.weights) <= 0:
            raise ValueError(f"{self.where}: sizes.json lists no samples in any shard, nothing to train on")
        self.batch_size, self.collate, self.spec, self.seed = batch_size, collate, spec, seed
        self.shuffle_buffer, self.shuffle_initial = shuffle_buffer, shuffle_initial
        self.resampled, self.draft = resampled, draft
        self.num_workers, self.skip_batches = max(num_workers, 1), skip_batches

    def _resampled_shards(self, rank: int, world: int, worker: int) -> Iterator[dict[str, Any]]:
        """Endless shard draw of one (rank, worker), with replacement, by sample count: published shards differ
        in size (one export day each)."""
        rng = random.Random(stable_seed("shards", self.seed, rank, world, worker, self.num_workers))
        while True:
            yield {"url": rng.choices(self.urls, weights=self.weights)[0]}

    def _epoch_segments(self, rank: int, world: int, worker: int) -> Iterator[list[dict[str, Any]]]:
        """Each seeded epoch's share of one (rank, worker): a list of ``{"url", "lo", "hi"}`` (samples
        ``lo:hi`` of the shard; None: to its end).

        The epoch's shuffled shard list is dealt to the ranks and workers as ``split_by_node`` then
        ``split_by_worker`` would (shard ``i`` to rank ``i % world``, then worker ``(i // world) % workers``),
        laid end to end part after part, and cut by the sample counts of ``sizes.json`` into ``ranks x workers``
        runs of ``total // (ranks x workers)`` samples (review rev39b: shards of 4 to 125 samples split by count
        gave rank 0 418 samples an epoch and rank 1 325, so an epoch of steps read 43 twice and 50 never). Every
        part reads as many samples an epoch, each sample at most once (the ``total % parts`` left over are the
        ones this epoch's order puts last); a shard cut between two parts is read whole (hashed) by both, each
        keeping its own samples. With equal shards of a divisible count this is the plain dealt split. A version
        whose ``sizes.json`` does not list every shard is split by shard count, as before."""
        parts = world * self.num_workers
        part = rank * self.num_workers + worker
        sized = all(url in self.expected for url in self.urls)
        total = sum(self.expected[url] for url in self.urls) if sized else 0
        if sized and total < parts:
            raise ValueError(f"{self.where}: {total} samples < {world} ranks x {self.num_workers} workers: "
                             "use resampled=True or fewer workers")
        if not sized and len(self.urls) < parts:
            raise ValueError(f"{len(self.urls)} shards < {world} ranks x {self.num_workers} workers: "
                             "use resampled=True or fewer workers")
        share = total // parts
        epoch = 0
        while True:
            order = list(self.urls)
            random.Random(stable_seed("epoch", self.seed, epoch)).shuffle(order)
            owner = [(i % world) * self.num_workers + (i // world) % self.num_workers for i in range(len(order))]
            if not sized:
                yield [{"url": url, "lo": 0, "hi": None} for url, p in zip(order, owner) if p == part]
            else:
                dealt = [url for p in range(parts) for url, q in zip(order, owner) if q == p]
                first, last, start, segments = part * share, (part + 1) * share, 0, []
                for url in dealt:
                    size = self.expected[url]
                    end = start + size
                    # The part whose run holds the shard's last sample (a 0-listed shard: its position; past the
                    # last run: the last part) reads it to its end and checks its count (review rev39f: a shard
                    # listed as 0 on a run's boundary was in no share, never opened, its samples lost silently).
                    counter = min((end - 1 if size else start) // share, parts - 1)
                    if (start < last and end > first) or counter == part:
                        lo = min(max(first - start, 0), size)
                        segments.append({"url": url, "lo": lo, "hi": max(min(last, end) - start, lo),
                                         "count": counter == part})
                    start = end
                yield segments
            epoch += 1

    def _interleaved(self, segments: Iterable[dict[str, Any]], opened: list[OpenShard],
                     empty: set[str | None]) -> Iterator[dict[str, Any]]:
        """Samples of the shard ``segments`` (``{"url"[, "lo", "hi"]}``), :data:`INTERLEAVED_SHARDS` read at once
        (at most as many as the split has shards), one sample from each in turn; a shard that ends gives its place
        to the next one (review rev39b: read one after the other, the shuffle buffer's first ``shuffle_initial``
        samples, so the first batches, came from the first shard drawn: one export day). Each shard is read to its
        end and checked (hashed, counted); ``opened`` holds an :class:`OpenShard` for each shard being read.
        ``empty`` (shared by the epochs of a stream) collects the shards read without a sample until one gives
        one (then it is cleared for good: ``None`` in it); once it holds every shard, an error (an endless draw
        would otherwise spin forever)."""
        pending = iter(segments)

        def read(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
            inside = OpenShard()
            opened.append(inside)
            count = 0
            for sample in tar_samples([item], self.expected, self.digests, inside):
                count += 1
                yield sample
            opened.remove(inside)
            if count:
                empty.clear()
                empty.add(None)   # productive: never checked again
            elif None not in empty:
                empty.add(item["url"])
                if len(empty) == len(set(self.urls)):
                    raise ValueError(f"{self.where}: a full pass over its {len(empty)} shards yielded no samples")

        deferred: list[dict[str, Any]] = []
        reading: list[str] = []   # the url each reader reads

        def take() -> dict[str, Any] | None:
            """The next segment to read, one of a shard no reader is reading when there is one: a draw with
            replacement (resampled) that repeats a shard being read waits, in order, until that shard's reader is
            done (seed 3's worker 1 of 4 drew the same 125-sample shard four times in a row). Up to
            ``4 x INTERLEAVED_SHARDS`` wait; past that (fewer distinct shards than readers) the oldest is read."""
            for index, item in enumerate(deferred):
                if item["url"] not in reading:
                    return deferred.pop(index)
            while len(deferred) < 4 * INTERLEAVED_SHARDS:
                item = next(pending, None)
                if item is None:
                    break
                if item["url"] not in reading:
                    return item
                deferred.append(item)
            return deferred.pop(0) if deferred else None

        readers: list[Iterator[dict[str, Any]]] = []
        width = min(INTERLEAVED_SHARDS, len(set(self.urls)))   # a split of 1 shard: read one after the other
        while len(readers) < width and (item := take()) is not None:
            readers.append(read(item))
            reading.append(item["url"])
        turn = 0
        while readers:
            sample = next(readers[turn], None)
            if sample is None:   # this shard ended: the next one takes its turn now
                del readers[turn], reading[turn]
                item = take()
                if item is not None:
                    readers.insert(turn, read(item))
                    reading.insert(turn, item["url"])
                turn = turn % len(readers) if readers else 0
                continue
            yield sample
            turn = (turn + 1) % len(readers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, physical, workers = wds.utils.pytorch_worker_info()
        if workers != self.num_workers:
            raise RuntimeError(f"stream built for {self.num_workers} workers runs in {workers}")
        # The DataLoader takes batch k from worker k % W and always starts at worker 0. After skipping s
        # batches the next one belongs to logical worker s % W, so physical worker p plays logical (p + s) % W;
        # logical worker w has already produced ceil((s - w) / W) batches.
        worker = (physical + self.skip_batches) % workers
        opened: list[OpenShard] = []
        empty: set[str | None] = set()
        seed = stable_seed("shuffle", self.seed, rank, world, worker, workers)
        if self.resampled:
            samples = shuffled(self._interleaved(self._resampled_shards(rank, world, worker), opened, empty),
                               self.shuffle_buffer, self.shuffle_initial, seed)
        else:   # the buffer drains at each epoch's end: no sample of the next epoch before this one's last
            samples = (sample for epoch, segments in enumerate(self._epoch_segments(rank, world, worker))
                       for sample in shuffled(self._interleaved(segments, opened, empty), self.shuffle_buffer,
                                              self.shuffle_initial, stable_seed(seed, "epoch", epoch)))
        done = max(0, -(-(self.skip_batches - worker) // workers))
        samples = islice(samples, done * self.batch_size, None)

        def collate(raw: list[dict[str, Any]]) -> dict[str, Any]:
            batch = self.collate(raw, self.spec, self.draft)
            # Every shard this worker read to its end passed its checks (or its error follows this batch),
            # so of the shards its batches so far drew samples from only these can be unverified.
            batch["worker"] = physical
            batch["inside_shards"] = tuple(sorted({inside.url for inside in opened if inside.url is not None}))
            return batch
        return batched(samples, self.batch_size, collate, partial=False)


class EvalPairStream(torch.utils.data.IterableDataset):
    """One ordered pass over a split (shards split over loader workers), in batches; the last may be short."""

    def __init__(self, shards: list[Path], batch_size: int, collate: PairCollator, spec: ImageSpec, draft: bool):
        super().__init__()
        self.urls = [str(p) for p in shards]
        self.expected = shard_sizes(shards)
        self.digests = shard_digests(shards)
        self.batch_size, self.collate, self.spec, self.draft = batch_size, collate, spec, draft

    def __iter__(self) -> Iterator[dict[str, Any]]:
        samples = tar_samples(wds.split_by_worker({"url": u} for u in self.urls), self.expected, self.digests)
        return batched(samples, self.batch_size, lambda raw: self.collate(raw, self.spec, self.draft), partial=True)


# a loader worker that, once it has yielded its first batch, yields no further batch for this long is taken as hung
# (a stalled network mount): ``LoaderBatches`` raises, and the trainer stops every rank with it, well before the
# process group's timeout (``GROUP_TIMEOUT_S`` in training.train) would stop the ranks that wait for this one. Far
# above a batch's time. A worker's first batch is not bounded: it fills the shuffle buffer, and a resume's worker
# reads (and hashes) every sample its skipped batches held first, which on a long run takes long
LOADER_TIMEOUT_S = 600


def make_loader(stream: torch.utils.data.IterableDataset, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over a stream that already yields batches (take them through :class:`LoaderBatches`)."""
    if isinstance(stream, EvalPairStream):
        num_workers = min(num_workers, len(stream.urls))
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, worker_init_fn=worker_init if num_workers else None,
        persistent_workers=False, prefetch_factor=4 if num_workers else None)


def clear_traceback_locals(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in the tracebacks of ``exc`` and of the exceptions it chains
    (``__cause__``, ``__context__``); the text of the tracebacks stays. An exception a DataLoader raises holds the
    loader's iterator (``self`` of its frames), and an exception kept in a local and raised again (the trainer's
    failures, shared with every rank) is in a reference cycle with its frame: without this, what those frames hold
    (a loader and its worker processes, a model) lives on until the cyclic garbage collector runs."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)   # a frame still running is left as it is
        todo += [current.__cause__, current.__context__]


class LoaderBatches:
    """The batches of a DataLoader, whose worker processes end as soon as it is closed: by :meth:`close`, at the end
    of a ``with`` block, at the end of the batches, or when taking a batch fails (a worker's error, which the
    DataLoader raises, ends the iteration). Not left to the iterator's ``__del__`` (review rev37e): a forked worker
    holds every descriptor the process had, the trainer's run lock among them, and an exception raised by the
    iterator holds the iterator in its traceback, so the lock stayed held after the failed run returned, until the
    cyclic garbage collector ran (a retry in the same process was refused with ``RunLocked``).

    Once every worker has yielded its first batch, waiting longer than ``timeout`` (default ``LOADER_TIMEOUT_S``) for
    a batch raises the DataLoader's ``RuntimeError`` (``DataLoader timed out after ... seconds``), and the loader
    ends (a hung worker is terminated)."""

    def __init__(self, loader: torch.utils.data.DataLoader, timeout: float | None = None):
        self._batches: Iterator[Any] | None = iter(loader)
        self._timeout = LOADER_TIMEOUT_S if timeout is None else timeout
        self._first = loader.num_workers if self._timeout > 0 else 0   # batches before the timeout is set

    def __iter__(self) -> "LoaderBatches":
        return self

    def __next__(self) -> Any:
        if self._batches is None:
            raise StopIteration
        try:
            batch = next(self._batches)
        except BaseException as exc:   # StopIteration, a worker's error, a timeout, an interrupt: the loader ends
            self.close()
            clear_traceback_locals(exc)   # the DataLoader's frames hold its iterator: not kept by the exception
            raise
        if self._first:   # the DataLoader takes batches from its workers in turn: each has yielded its first
            self._first -= 1
            if not self._first and hasattr(self._batches, "_timeout"):   # the wait of its _get_data
                self._batches._timeout = self._timeout
        return batch

    def close(self) -> None:
        """End the worker processes now (joined, or terminated where one does not end: torch's own shut-down)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)   # what its __del__ calls; none without workers
        del batches
        if shutdown is not None:
            try:
                shutdown()
            except BaseException as exc:   # torch's shut-down failed: its frames, and this one, keep no iterator
                del shutdown                # (fix38k: the new exception held the loader through them)
                clear_traceback_locals(exc)
                raise

    def __enter__(self) -> "LoaderBatches":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
