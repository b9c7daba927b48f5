"""Per-image fingerprints as an Apache Beam pipeline: read once, decode once, derive everything.

For every image of one ingested day (``warehouse/images/dt=<day>``) the pipeline reads the original
bytes once through Beam's ``FileSystems``, hashes them (sha256), decodes them once with the checks of
``pipelines.features.decode``, and derives from that one decode: pHash and dHash (imagehash, 64 bits as
uint64), NudeNet 320n detections and per-class maximum scores (``pipelines.features.nsfw``, batched, model
loaded once per worker in ``DoFn.setup``), and the training JPEG (shortest side ``train_size``, never
upscaled, ``jpeg_quality``) written into a content-addressed store. Outputs, each sorted by
``image_uid`` and written atomically: ``image_features/dt=<day>`` and ``image_rejects/dt=<day>``
(dead letter: one row with a reason per image that could not be used). Every input row is in exactly
one of them; :func:`build_features` checks that and raises if not.

Shape (Beam's ``complete/game`` style): ``ReadBlobFn`` -> ``DecodeImageFn`` -> ``BatchElements`` ->
``DetectNsfwFn`` inside the composite :class:`FingerprintImages` (no I/O of its own beyond the blob
reads and the training-JPEG writes it exists for); :func:`build_features` prepares inputs, runs the
pipeline and commits the outputs; :func:`run` is the command line.

Workers read the blobs and write the training JPEGs through Beam ``FileSystems`` paths under the
blob base (the home, or a bucket with ``--blob-base``); only the driver touches the warehouse. The
decisions behind each column (hash input, NSFW columns, the JPEG store, incremental reuse,
determinism) and the runbook for other runners (portable, Dataflow, Flink, Spark) are in the README,
section 3.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import math
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features.beamworker import QuietFnApiRunner  # isort: skip

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from formats.files import cast_to_schema, write_parquet_atomic
from formats.home import DataHome
from formats.settings import add_flags, check_fields, knob, stage_config
from pipelines import faults
from pipelines.features import decode as imagedecode
from pipelines.features.decode import ImageRejected
from pipelines.features.nsfw import FastNudeDetector, NsfwDetector, NsfwResult, PreparedImage, is_flagged, prepare_image
from schemas import get_schema
from schemas.features import NSFW_CLASSES

FEATURES = "image_features"
REJECTS = "image_rejects"
REUSED = "reused"
INPUT_COLUMNS = ("image_uid", "blob_path")
HASH_FLOOR = 128
PILLOW_BLOCKS_MAX = 64

# Reuse candidates found by the pipeline (bytes identical to an earlier image): resolved by the driver.
REUSED_SCHEMA = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("num_bytes", pa.int64(), nullable=False),
])
# Everything the pipeline emits goes through one sink (each extra file sink costs ~1 s of Beam
# overhead); rows travel as JSON, which round-trips every value here exactly (floats via repr).
STAGED_KINDS = ("features", "rejects", "reused")
STAGED_SCHEMA = pa.schema([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("payload", pa.string(), nullable=False),
])
TODO_SCHEMA = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
])


@dataclass(frozen=True)
class FeaturesConfig:
    """Knobs of the feature stage (validated by :meth:`validate`)."""

    train_size: int = knob(512, "shortest side of the training JPEG in px (never upscaled)", min=16)
    jpeg_quality: int = knob(90, "training JPEG quality", min=1, max=95)
    max_pixels: int = knob(4096 * 4096, "decompression-bomb limit on width x height from the header", min=1)
    max_bytes: int = knob(64 * 1024 * 1024, "larger blobs are rejected (file_too_large) without being loaded", min=1)
    min_side: int = knob(8, "images whose shortest side is below this are rejected (too_small)", min=1)
    max_side: int = knob(4096, "images whose longest side is above this are rejected (bad_dimensions); bounds "
                               "NudeNet's padded square", min=1)
    max_aspect: float = knob(4.0, "images whose longest / shortest side is above this are rejected (bad_dimensions)",
                             min=1)
    nsfw_batch_size: int = knob(8, "images per NudeNet session.run (batching gains 4-10%)", min=1, output=False)
    nsfw_threads: int = knob(1, "onnxruntime intra-op threads per worker process", min=1, output=False)
    workers: int = knob(2, "DirectRunner multi_processing workers (0: in-process)", min=0, output=False)
    in_process_below: int = knob(32, "DirectRunner jobs with fewer images run in-process", min=0, output=False)
    runner: str = knob("DirectRunner", "Beam runner used when beam_args names none", output=False)
    blob_zone: str = knob("raw", "folder of the home that blob paths must stay inside")
    blob_base: str | None = knob(None, "where blob paths and the JPEG store resolve (default: the home)", output=False)
    staging: str | None = knob(None, "scratch folder of a run (default <base>/.staging/features/dt=<day>)",
                               output=False)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_fields(self)   # types and ranges of every setting
        checks = [
            ("max_side", self.max_side >= self.min_side), ("runner", bool(self.runner)),
            ("blob_zone", bool(self.blob_zone) and "/" not in self.blob_zone and self.blob_zone not in (".", "..")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"FeaturesConfig.{name}={getattr(self, name)!r} is invalid")

    def decode_limits(self) -> dict[str, Any]:
        """Keyword limits of :func:`pipelines.features.decode.decode_image`."""
        return {"max_pixels": self.max_pixels, "min_side": self.min_side, "max_side": self.max_side,
                "max_aspect": self.max_aspect}

    @property
    def train_prefix(self) -> str:
        """Folder of the training JPEGs for this size/quality, relative to the home."""
        return f"blobs/train/s{self.train_size}q{self.jpeg_quality}"


@dataclass
class FeaturesReport:
    """Counters of one run of the feature stage."""

    day: str
    inputs: int                   # rows of the day's images partition
    processed: int                # images fingerprinted by this run (decoded + NSFW model)
    reused: int                   # rows copied instead of computed (by uid + by sha256)
    reused_by_uid: int            # uid already in this day's or an earlier partition (never read)
    reused_by_sha256: int         # new uid, bytes identical to an earlier day's image (read, not decoded)
    rejected: dict[str, int]      # reject reason -> count (this day's image_rejects)
    nsfw_flagged: int             # feature rows with nsfw_max >= 0.5 in an explicit class
    bytes_read: int               # blob bytes read by this run
    stage_seconds: float          # wall time of the Beam pipeline (0 when nothing had to be read)
    total_seconds: float          # wall time of build_features
    images_per_second: float      # images read by the Beam stage / stage_seconds (start-up included)
    features_rows: int
    rejects_rows: int
    runner: str
    workers: int
    features_path: str
    rejects_path: str

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def metadata(self) -> dict[str, Any]:
        """JSON-able values plus a markdown ``summary`` table, for Dagster asset metadata."""
        values: dict[str, Any] = asdict(self)
        values["rejected"] = dict(sorted(self.rejected.items()))
        values["rejected_total"] = self.rejected_total
        values["reconciled"] = self.features_rows + self.rejects_rows == self.inputs
        lines = ["| counter | value |", "|---|---|"]
        for key in ("inputs", "processed", "reused", "reused_by_uid", "reused_by_sha256", "rejected_total",
                    "nsfw_flagged", "bytes_read", "images_per_second", "stage_seconds"):
            lines.append(f"| {key} | {values[key]} |")
        for reason, count in values["rejected"].items():
            lines.append(f"| rejected: {reason} | {count} |")
        values["summary"] = "\n".join(lines)
        return values


# ---------------------------------------------------------------------------------------- paths

def join_url(base: str, relpath: str) -> str:
    """``base`` + ``/`` + ``relpath`` for local paths and ``scheme://`` URLs alike."""
    return base.rstrip("/") + "/" + relpath


def is_local(base: str) -> bool:
    """True for a local path (no ``scheme://``)."""
    return "://" not in base


def train_jpg_key(prefix: str, sha256: str) -> str:
    """Content-addressed key of a training JPEG, relative to the home."""
    return f"{prefix}/{sha256[:2]}/{sha256}.jpg"


def write_blob_atomic(base: str, key: str, data: bytes) -> None:
    """Write ``data`` at ``base/key`` through Beam's ``FileSystems`` unless a non-empty file is already there.

    Readers never see a partial file: a local file is written under a unique temporary name in the same
    folder and renamed into place (with the umask's permissions); an object store makes an object
    visible only when its upload completes.
    """
    url = join_url(base, key)
    try:   # metadata of one path; FileSystems.match would compile a glob per image (~2 ms)
        if FileSystems.get_filesystem(url).metadata(url).size_in_bytes > 0:
            return
    except BeamIOError:
        pass   # not there yet
    if not is_local(base):
        with FileSystems.create(url, mime_type="image/jpeg", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        return
    folder, name = url.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with FileSystems.create(temporary, mime_type="image/jpeg", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        FileSystems.rename([temporary], [url])
    except BaseException:
        if FileSystems.exists(temporary):
            FileSystems.delete([temporary])
        raise


# ------------------------------------------------------------------------------ per-image steps

def perceptual_hashes(rgb) -> tuple[int, int]:
    """(pHash, dHash) as unsigned 64-bit integers of the hash input (README section 3, "Decisions")."""
    import imagehash

    gray = rgb.convert("L")
    factor = min(gray.size) // HASH_FLOOR
    if factor >= 2:
        gray = gray.reduce(factor)
    return _hash_int(imagehash.phash(gray)), _hash_int(imagehash.dhash(gray))


def _hash_int(value) -> int:
    bits = value.hash.flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


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


def reject_row(row: dict, reason: str, detail: str, sha256: str | None = None, num_bytes: int | None = None) -> dict:
    """A dead-letter row for ``image_rejects``."""
    return {"image_uid": row["image_uid"], "dt": row["dt"], "blob_path": str(row["blob_path"]),
            "reason": reason, "detail": detail, "sha256": sha256, "num_bytes": num_bytes}


def describe_error(exc: BaseException, base: str) -> str:
    """``Type: message`` of an exception, with ``base`` (the home or bucket) cut from any path it names."""
    message = str(exc).replace(base.rstrip("/") + "/", "") if base else str(exc)
    return f"{type(exc).__name__}: {message}"


def processing_error_row(row: dict, step: str, exc: BaseException, base: str, num_bytes: int) -> dict:
    """The reject row of an image whose per-image work raised at ``step`` (reason ``processing_error``)."""
    return reject_row(row, imagedecode.PROCESSING_ERROR, f"{row['blob_path']!r}: {step} raised {describe_error(exc, base)}",
                      row["sha256"], num_bytes)


def load_known_digests(path: str | None) -> np.ndarray:
    """Sorted ``S32`` array of known sha256 digests from an ``.npy`` file (empty when ``path`` is None)."""
    if not path:
        return np.empty(0, dtype="S32")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        digests = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    if digests.dtype != np.dtype("S32"):
        raise ValueError(f"known digests file {path} has dtype {digests.dtype}, expected S32")
    return digests


def contains_digest(digests: np.ndarray, digest: bytes) -> bool:
    """Binary search for ``digest`` in the sorted array."""
    if digests.size == 0:
        return False
    # numpy compares S32 values without trailing NUL bytes; comparing two S32 values is still exact
    # (same length), comparing one with raw ``bytes`` would not be.
    key = np.array(digest, dtype="S32")
    index = int(np.searchsorted(digests, key))
    return index < digests.size and bool(digests[index] == key)


# ---------------------------------------------------------------------------------------- DoFns

class ReadBlobFn(beam.DoFn):
    """Check the blob path, read the bytes once (capped), sha256 them; known bytes go to ``reused``."""

    def __init__(self, base: str, zone: str, max_bytes: int, known_digests: str | None = None) -> None:
        self.base, self.zone, self.max_bytes, self.known_digests_path = base, zone, max_bytes, known_digests
        self.bytes_read = Metrics.counter("features", "bytes_read")
        self.rejected = Metrics.counter("features", "rejected")

    def setup(self) -> None:
        self.known = load_known_digests(self.known_digests_path)

    def process(self, row: dict) -> Iterator[Any]:
        relpath = row["blob_path"]
        try:
            data = self._read(relpath)
        except ImageRejected as rejected:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS, reject_row(row, rejected.reason, rejected.detail))
            return
        self.bytes_read.inc(len(data))
        digest = hashlib.sha256(data)
        if contains_digest(self.known, digest.digest()):
            yield beam.pvalue.TaggedOutput(REUSED, {"image_uid": row["image_uid"], "blob_path": relpath,
                                                    "sha256": digest.hexdigest(), "num_bytes": len(data)})
            return
        yield {"image_uid": row["image_uid"], "dt": row["dt"], "blob_path": relpath, "data": data,
               "sha256": digest.hexdigest()}

    def _read(self, relpath: object) -> bytes:
        relpath = imagedecode.check_blob_path(relpath, self.zone)
        try:
            if is_local(self.base):
                url = imagedecode.check_local_target(self.base, relpath, self.zone)
            else:
                url = join_url(self.base, relpath)
                if not FileSystems.exists(url):
                    raise ImageRejected(imagedecode.MISSING_BLOB, f"no object at {relpath!r}")
            with FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return imagedecode.read_capped(handle, relpath, self.max_bytes)
        except ImageRejected:
            raise
        except FileNotFoundError:
            raise ImageRejected(imagedecode.MISSING_BLOB, f"{relpath!r} disappeared while being read") from None
        except Exception as exc:  # noqa: BLE001 - one unreadable blob is a reject row, never a failed run
            raise ImageRejected(imagedecode.UNREADABLE_BLOB,
                                f"{relpath!r}: {describe_error(exc, self.base)}") from None


class DecodeImageFn(beam.DoFn):
    """Decode once; derive hashes, the training JPEG (written to the store) and the NSFW model input."""

    def __init__(self, base: str, config: FeaturesConfig) -> None:
        self.base, self.config = base, config
        self.decoded = Metrics.counter("features", "decoded")
        self.rejected = Metrics.counter("features", "rejected")

    def setup(self) -> None:
        import imagehash  # noqa: F401
        import scipy.fftpack  # noqa: F401 - imagehash.phash imports it on its first call (~0.3 s): once per worker, here

        configure_worker()

    def process(self, element: dict) -> Iterator[Any]:
        data, config = element["data"], self.config
        step = "decode"
        try:
            decoded = imagedecode.decode_image(data, element["blob_path"], **config.decode_limits())
            step = "hashes"
            phash, dhash = perceptual_hashes(decoded.rgb)
            step = "train_jpeg"
            jpeg, train_width, train_height = encode_train_jpeg(decoded.rgb, config.train_size, config.jpeg_quality)
            step = "nsfw_input"
            nsfw_input = prepare_image(decoded.pixels)
        except ImageRejected as rejected:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS, reject_row(element, rejected.reason, rejected.detail,
                                                               element["sha256"], len(data)))
            return
        except Exception as exc:  # noqa: BLE001 - dead letter: one image never fails the run (imagedecode: processing_error)
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS, processing_error_row(element, step, exc, self.base, len(data)))
            return
        key = train_jpg_key(config.train_prefix, element["sha256"])
        write_blob_atomic(self.base, key, jpeg)   # a store that cannot be written fails the stage, not the image
        self.decoded.inc()
        yield {
            "image_uid": element["image_uid"], "dt": element["dt"], "blob_path": element["blob_path"],
            "sha256": element["sha256"], "num_bytes": len(data), "width": decoded.width,
            "height": decoded.height, "mode": decoded.mode, "format": decoded.format,
            "phash": phash, "dhash": dhash, "train_jpg_key": key, "train_width": train_width,
            "train_height": train_height, "train_jpg_bytes": len(jpeg), "reused_from": None,
            "_nsfw_input": nsfw_input,
        }


class DetectNsfwFn(beam.DoFn):
    """Run the NSFW detector on a batch of decoded images; the model loads once per worker (setup)."""

    def __init__(self, detector_factory: Callable[[], NsfwDetector], base: str = "") -> None:
        self.detector_factory, self.base = detector_factory, base
        self.flagged = Metrics.counter("features", "nsfw_flagged")
        self.processed = Metrics.counter("features", "processed")
        self.rejected = Metrics.counter("features", "rejected")

    def setup(self) -> None:
        configure_worker()
        self.detector = self.detector_factory()

    def process(self, batch: Sequence[dict]) -> Iterator[Any]:
        try:
            results: list[NsfwResult | Exception] = list(self._detect([element["_nsfw_input"] for element in batch]))
        except Exception:  # noqa: BLE001 - find the image at fault: run each one alone
            results = []
            for element in batch:
                try:
                    results.extend(self._detect([element["_nsfw_input"]]))
                except Exception as exc:  # noqa: BLE001 - dead letter (imagedecode: processing_error)
                    results.append(exc)
        for element, result in zip(batch, results):
            row = {key: value for key, value in element.items() if key != "_nsfw_input"}
            try:
                if isinstance(result, Exception):
                    raise result
                row.update(nsfw_columns(result))
            except Exception as exc:  # noqa: BLE001 - dead letter (imagedecode: processing_error)
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTS, processing_error_row(row, "nsfw", exc, self.base,
                                                                             row["num_bytes"]))
                continue
            self.processed.inc()
            if is_flagged(result.class_max):
                self.flagged.inc()
            yield row

    def _detect(self, inputs: list[PreparedImage]) -> list[NsfwResult]:
        results = self.detector.detect_prepared(inputs)
        if len(results) != len(inputs):
            raise RuntimeError(f"NSFW detector returned {len(results)} results for {len(inputs)} images")
        return results


def nsfw_columns(result: NsfwResult) -> dict:
    """``nsfw_detections`` and ``nsfw_max`` column values of one result; raise on a non-finite score."""
    columns = {"nsfw_detections": [d.as_row() for d in result.detections],
               "nsfw_max": {name: float(result.class_max.get(name, 0.0)) for name in NSFW_CLASSES}}
    scores = list(columns["nsfw_max"].values()) + [d["score"] for d in columns["nsfw_detections"]]
    if not all(math.isfinite(score) for score in scores):
        raise ValueError(f"the NSFW model gave a non-finite score: {columns['nsfw_max']}")
    return columns


def configure_worker() -> None:
    """Per-process settings: Pillow's block allocator (PILLOW_BLOCKS_MAX=64) and one OpenCV thread."""
    import cv2
    from PIL import Image

    os.environ.setdefault("PILLOW_BLOCKS_MAX", str(PILLOW_BLOCKS_MAX))
    Image.core.set_blocks_max(PILLOW_BLOCKS_MAX)
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class DetectorFactory:
    """Picklable factory of the default detector (workers build it in ``setup``)."""

    threads: int = 1

    def __call__(self) -> NsfwDetector:
        return FastNudeDetector(intra_op_threads=self.threads)


# ----------------------------------------------------------------------------------- transforms

class FingerprintImages(beam.PTransform):
    """Rows (image_uid, blob_path, dt) -> ``{"features", "rejects", "reused"}`` PCollections."""

    def __init__(self, base: str, config: FeaturesConfig, known_digests: str | None = None,
                 detector_factory: Callable[[], NsfwDetector] | None = None) -> None:
        super().__init__()
        config.validate()
        self.base, self.config, self.known_digests = base, config, known_digests
        self.detector_factory = detector_factory or DetectorFactory(config.nsfw_threads)

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        config = self.config
        read = rows | "ReadBlob" >> beam.ParDo(
            ReadBlobFn(self.base, config.blob_zone, config.max_bytes, self.known_digests)
        ).with_outputs(REJECTS, REUSED, main="blobs")
        decoded = read.blobs | "DecodeImage" >> beam.ParDo(DecodeImageFn(self.base, config)).with_outputs(
            REJECTS, main="decoded")
        features = (
            decoded.decoded
            | "BatchForNsfw" >> beam.BatchElements(min_batch_size=config.nsfw_batch_size,
                                                   max_batch_size=config.nsfw_batch_size)
            | "DetectNsfw" >> beam.ParDo(DetectNsfwFn(self.detector_factory, self.base)).with_outputs(
                REJECTS, main="features")
        )
        rejects = (read[REJECTS], decoded[REJECTS], features[REJECTS]) | "AllRejects" >> beam.Flatten()
        return {"features": features.features, "rejects": rejects, "reused": read[REUSED]}


# ---------------------------------------------------------------------------------------- driver

LOCAL_RUNNER_NAMES = ("DirectRunner", "direct", "SwitchingDirectRunner")  # run by pipeline_runner's FnApiRunner


def pipeline_options(config: FeaturesConfig, beam_args: Sequence[str] | None, num_images: int | None = None) -> PipelineOptions:
    """Beam options from ``beam_args`` (unchanged) plus DirectRunner defaults; unknown flags raise.

    On the DirectRunner without an explicit ``--direct_running_mode``: ``multi_processing`` with
    ``config.workers`` processes, or ``in_memory`` when ``workers`` is 0 or the job is smaller than
    ``config.in_process_below`` images (worker start-up costs ~3 s, more than a handful of images).
    """
    args = list(beam_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={config.runner}")
    options = PipelineOptions(args)
    try:
        known = options.get_all_options()
        retained = options.get_all_options(retain_unknown_options=True)
    except SystemExit as exc:  # argparse rejects a bad value by exiting
        raise ValueError(f"invalid Beam pipeline options {args}: see the argparse message above") from exc
    unknown = sorted(set(retained) - set(known))
    if unknown:
        raise ValueError(f"unrecognised Beam pipeline options {unknown} in {args}")
    runner = str(known.get("runner") or "")
    if runner in LOCAL_RUNNER_NAMES and not any(a.startswith("--direct_running_mode") for a in args):
        small = num_images is not None and num_images < config.in_process_below
        if config.workers >= 1 and not small:
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={config.workers}"]
        else:
            args += ["--direct_running_mode=in_memory"]
        if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
            args.append("--default_sdk_harness_log_level=ERROR")
        options = PipelineOptions(args)
    return options


def pipeline_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner object for ``options``: for the DirectRunner names, Beam's batch ``FnApiRunner`` built
    exactly as the DirectRunner builds it; else None (Beam resolves ``--runner`` itself).

    Beam's ``DirectRunner`` (2.6x-2.77) first tries the Prism runner, whose binary it downloads from GitHub
    at run time: a network call this pipeline must never make (on a connected machine it would also
    silently switch runners), and, offline, a failed start that leaves a ``beam-temp*`` folder behind in
    the system temp dir on every run. Its fallback for a batch pipeline like this one is this
    ``FnApiRunner``, which honours ``--direct_running_mode`` and ``--direct_num_workers``.
    """
    values = options.get_all_options()
    if str(values.get("runner") or "") not in LOCAL_RUNNER_NAMES:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(values)
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return QuietFnApiRunner(provision_info=provision)


def build_features(home: DataHome, day: str, config: FeaturesConfig = FeaturesConfig(),
                   beam_args: list[str] | None = None, progress: Callable[[str], None] | None = None,
                   detector_factory: Callable[[], NsfwDetector] | None = None) -> FeaturesReport:
    """Fingerprint the images of ``day``: write image_features and image_rejects for that partition."""
    started = time.perf_counter()
    say = progress or (lambda message: None)
    config.validate()
    day_date = _parse_day(day)
    runner = str(pipeline_options(config, beam_args).get_all_options().get("runner"))  # bad options fail first
    base = config.blob_base or str(home.root)
    staging = config.staging or join_url(base, f".staging/features/dt={day}")

    inputs = read_inputs(home, day)
    say(f"{inputs.num_rows} images in {home.partition_file('images', day)}")
    history = earlier_partitions(home, day)
    by_uid = rows_reused_by_uid(home, day, inputs, history)
    reused_uids = {row["image_uid"] for row in by_uid}
    todo = inputs.filter(pc.invert(pc.is_in(inputs["image_uid"], pa.array(sorted(reused_uids), pa.string()))))
    say(f"{len(by_uid)} reused by uid, {todo.num_rows} to read")

    computed = get_schema(FEATURES).empty_table()
    rejects = get_schema(REJECTS).empty_table()
    candidates = REUSED_SCHEMA.empty_table()
    stage_seconds = 0.0
    if todo.num_rows:
        _reset_dir(staging)
        todo_path = join_url(staging, "todo.parquet")
        _write_parquet_url(pa.table({"image_uid": todo["image_uid"], "blob_path": todo["blob_path"],
                                     "dt": pa.array([day_date] * todo.num_rows, pa.date32())},
                                    schema=TODO_SCHEMA), todo_path)
        digests_path = join_url(staging, "known_sha256.npy")
        _write_npy_url(known_digests([h for h in history if h[0] < day]), digests_path)
        stage_started = time.perf_counter()
        options = pipeline_options(config, beam_args, todo.num_rows)
        with beam.Pipeline(runner=pipeline_runner(options), options=options) as pipeline:
            rows = pipeline | "ReadTodo" >> beam.io.ReadFromParquet(todo_path) | "Spread" >> beam.Reshuffle()
            out = rows | "Fingerprint" >> FingerprintImages(base, config, digests_path, detector_factory)
            staged = [out[kind] | f"Stage_{kind}" >> beam.Map(staged_record, kind) for kind in STAGED_KINDS]
            (staged | "AllOutputs" >> beam.Flatten()
             | "WriteStaged" >> beam.io.WriteToParquet(join_url(staging, "out/part"), STAGED_SCHEMA,
                                                       file_name_suffix=".parquet"))
        stage_seconds = time.perf_counter() - stage_started
        faults.maybe_crash("features.after_beam")  # tests: Beam finished, outputs not committed
        say(f"Beam stage finished in {stage_seconds:.1f} s on {runner}")
        computed, rejects, candidates = read_staged(join_url(staging, "out/part"), day_date)

    by_sha = rows_reused_by_sha256(day_date, candidates, history)
    copied = pa.Table.from_pylist(by_uid + by_sha, schema=get_schema(FEATURES))
    features = pa.concat_tables([cast_to_schema(computed, get_schema(FEATURES)), copied])
    features = features.sort_by("image_uid").combine_chunks()
    rejects = cast_to_schema(rejects, get_schema(REJECTS)).sort_by("image_uid").combine_chunks()
    _reconcile(inputs, features, rejects)

    if is_local(base):
        os.sync()   # training JPEGs were renamed into place without fsync; make them durable first
    features_path = write_parquet_atomic(features, home.partition_file(FEATURES, day), get_schema(FEATURES))
    rejects_path = write_parquet_atomic(rejects, home.partition_file(REJECTS, day), get_schema(REJECTS))
    if todo.num_rows:
        _remove_dir(staging)

    flagged = sum(is_flagged(m) for m in features.column("nsfw_max").to_pylist())
    bytes_read = sum(pc.sum(t["num_bytes"]).as_py() or 0 for t in (computed, rejects, candidates))
    report = FeaturesReport(
        day=day, inputs=inputs.num_rows, processed=computed.num_rows, reused=len(by_uid) + len(by_sha),
        reused_by_uid=len(by_uid), reused_by_sha256=len(by_sha),
        rejected=dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
        nsfw_flagged=flagged, bytes_read=int(bytes_read), stage_seconds=round(stage_seconds, 3),
        total_seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(todo.num_rows / stage_seconds, 2) if stage_seconds else 0.0,
        features_rows=features.num_rows, rejects_rows=rejects.num_rows, runner=runner,
        workers=config.workers, features_path=str(features_path), rejects_path=str(rejects_path))
    say(f"features: {report.features_rows} rows ({report.processed} computed, {report.reused} reused), "
        f"rejects: {report.rejects_rows}")
    return report


def _parse_day(day: str) -> dt.date:
    try:
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {day!r} is not an ISO date YYYY-MM-DD") from None


def read_inputs(home: DataHome, day: str) -> pa.Table:
    """(image_uid, blob_path) of the day's images partition; raise naming the file if it is unusable."""
    path = home.partition_file("images", day)
    if not path.is_file():
        raise FileNotFoundError(f"images partition for {day} not found at {path}; run the ingest first")
    try:
        table = pq.read_table(path, columns=list(INPUT_COLUMNS))
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise ValueError(f"cannot read columns {list(INPUT_COLUMNS)} from {path}: {exc}") from exc
    for name in INPUT_COLUMNS:
        if table[name].null_count:
            raise ValueError(f"{path}: column {name!r} has {table[name].null_count} nulls")
    uids = table["image_uid"]
    if pc.count_distinct(uids).as_py() != table.num_rows:
        counts = pc.value_counts(uids)
        dupes = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:5]
        raise ValueError(f"{path}: image_uid is not unique, e.g. {dupes}")
    return table.sort_by("image_uid")


def earlier_partitions(home: DataHome, day: str) -> list[tuple[str, Path]]:
    """(day, file) of every image_features partition on or before ``day``, oldest first."""
    root = home.table_dir(FEATURES)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith("dt=") and child.name[3:] <= day:
                path = child / "part-0.parquet"
                if path.is_file():
                    found.append((child.name[3:], path))
    return sorted(found)


def _index(history: list[tuple[str, Path]], columns: Sequence[str], filter_expr=None) -> pa.Table:
    if not history:
        return pa.table({c: pa.array([], pa.string()) for c in columns} | {"dt_key": pa.array([], pa.string())})
    tables = []
    for key, path in history:
        table = pq.read_table(path, columns=list(columns), filters=filter_expr)
        tables.append(table.append_column("dt_key", pa.array([key] * table.num_rows, pa.string())))
    return pa.concat_tables(tables)


def rows_reused_by_uid(home: DataHome, day: str, inputs: pa.Table, history: list[tuple[str, Path]]) -> list[dict]:
    """Copies of already-fingerprinted rows for input uids (same day first, else the earliest day)."""
    if inputs.num_rows == 0:  # an empty chunked array reads as type null in ``isin``
        return []
    uids = inputs["image_uid"].combine_chunks()
    hits = _index(history, ["image_uid"], pc.field("image_uid").isin(uids))
    if hits.num_rows == 0:
        return []
    blob_paths = dict(zip(inputs["image_uid"].to_pylist(), inputs["blob_path"].to_pylist()))
    source_day: dict[str, str] = {}
    for uid, key in zip(hits["image_uid"].to_pylist(), hits["dt_key"].to_pylist()):
        if key == day or uid not in source_day or (source_day[uid] != day and key < source_day[uid]):
            source_day[uid] = key
    rows = []
    day_date = _parse_day(day)
    for key, path in history:
        wanted = sorted(uid for uid, k in source_day.items() if k == key)
        if not wanted:
            continue
        for row in pq.read_table(path, filters=pc.field("image_uid").isin(wanted)).to_pylist():
            if key != day:
                row.update(dt=day_date, reused_from=row["image_uid"])
            row["blob_path"] = blob_paths[row["image_uid"]]
            rows.append(row)
    return rows


def known_digests(history: list[tuple[str, Path]]) -> np.ndarray:
    """Sorted unique sha256 digests (``S32``) of the given partitions (hex decoded with numpy)."""
    table = _index(history, ["sha256"])
    if table.num_rows == 0:
        return np.empty(0, dtype="S32")
    hexes = np.asarray(pc.unique(table["sha256"]).to_numpy(zero_copy_only=False), dtype="S64")
    chars = np.frombuffer(hexes.tobytes(), dtype=np.uint8).reshape(-1, 64).astype(np.int16)
    nibbles = np.where(chars >= ord("a"), chars - ord("a") + 10, chars - ord("0"))
    if ((nibbles < 0) | (nibbles > 15)).any():
        raise ValueError("image_features.sha256 holds a value that is not 64 lowercase hex characters")
    digests = np.ascontiguousarray(((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).astype(np.uint8)).view("S32").ravel()
    return np.sort(digests)


def rows_reused_by_sha256(day: dt.date, candidates: pa.Table, history: list[tuple[str, Path]]) -> list[dict]:
    """Copies of the earliest (dt, image_uid) row with the same sha256, for each reuse candidate."""
    if candidates.num_rows == 0:
        return []
    earlier = [item for item in history if item[0] < day.isoformat()]
    shas = pc.unique(candidates["sha256"])
    hits = _index(earlier, ["image_uid", "sha256"], pc.field("sha256").isin(shas))
    source: dict[str, tuple[str, str]] = {}
    for uid, sha, key in zip(hits["image_uid"].to_pylist(), hits["sha256"].to_pylist(), hits["dt_key"].to_pylist()):
        if sha not in source or (key, uid) < source[sha]:
            source[sha] = (key, uid)
    missing = sorted(set(shas.to_pylist()) - set(source))
    if missing:
        raise RuntimeError(f"reuse candidates with sha256 {missing[:3]} have no source row in earlier partitions")
    source_rows: dict[str, dict] = {}
    paths = dict(earlier)
    for key in sorted({k for k, _ in source.values()}):
        wanted = sorted(uid for k, uid in source.values() if k == key)
        for row in pq.read_table(paths[key], filters=pc.field("image_uid").isin(wanted)).to_pylist():
            source_rows[row["image_uid"]] = row
    rows = []
    for candidate in candidates.to_pylist():
        _, source_uid = source[candidate["sha256"]]
        row = dict(source_rows[source_uid])
        row.update(image_uid=candidate["image_uid"], dt=day, blob_path=candidate["blob_path"],
                   reused_from=source_uid)
        rows.append(row)
    return rows


def _reconcile(inputs: pa.Table, features: pa.Table, rejects: pa.Table) -> None:
    expected = set(inputs["image_uid"].to_pylist())
    got_features = features["image_uid"].to_pylist()
    got_rejects = rejects["image_uid"].to_pylist()
    both = set(got_features) & set(got_rejects)
    union = set(got_features) | set(got_rejects)
    if both or union != expected or len(got_features) + len(got_rejects) != len(expected):
        raise RuntimeError(
            f"feature outputs do not reconcile with {len(expected)} inputs: {len(got_features)} features, "
            f"{len(got_rejects)} rejects, in both {sorted(both)[:5]}, missing {sorted(expected - union)[:5]}, "
            f"unexpected {sorted(union - expected)[:5]}")


def _reset_dir(url: str) -> None:
    _remove_dir(url)
    if is_local(url):
        os.makedirs(url, exist_ok=True)


def _remove_dir(url: str) -> None:
    if is_local(url):
        if os.path.isdir(url):
            shutil.rmtree(url)
        for parent in (os.path.dirname(url.rstrip("/")), os.path.dirname(os.path.dirname(url.rstrip("/")))):
            if os.path.basename(parent) in ("features", ".staging") and os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
        return
    matches = FileSystems.match([join_url(url, "**")])[0].metadata_list
    if matches:
        FileSystems.delete([m.path for m in matches])


def _write_parquet_url(table: pa.Table, url: str) -> None:
    if is_local(url):
        pq.write_table(table, url)
        return
    with FileSystems.create(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        pq.write_table(table, handle)


def _write_npy_url(array: np.ndarray, url: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with FileSystems.create(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(buffer.getvalue())


def staged_record(row: dict, kind: str) -> dict:
    """One pipeline output row as a staging record: kind, uid and the row as JSON (``dt`` dropped)."""
    return {"kind": kind, "image_uid": row["image_uid"],
            "payload": json.dumps({k: v for k, v in row.items() if k != "dt"}, sort_keys=True, allow_nan=False)}


def read_staged(prefix: str, day: dt.date) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(computed features, rejects, reuse candidates) from the staging files the pipeline wrote."""
    matches = FileSystems.match([prefix + "*.parquet"])[0].metadata_list
    rows: dict[str, list[dict]] = {kind: [] for kind in STAGED_KINDS}
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(io.BytesIO(handle.read()))
        for kind, payload in zip(table["kind"].to_pylist(), table["payload"].to_pylist()):
            rows[kind].append(json.loads(payload) | ({"dt": day} if kind != "reused" else {}))
    return (pa.Table.from_pylist(rows["features"], schema=get_schema(FEATURES)),
            pa.Table.from_pylist(rows["rejects"], schema=get_schema(REJECTS)),
            pa.Table.from_pylist(rows["reused"], schema=REUSED_SCHEMA))


# -------------------------------------------------------------------------------------- command

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.features.job", allow_abbrev=False,
                                     description=build_features.__doc__,
                                     epilog="Unknown options are passed to Beam's PipelineOptions unchanged.")
    parser.add_argument("--home", default=None, help="data home (default $PICKAPIC_HOME or ./data)")
    parser.add_argument("--day", required=True, help="partition day YYYY-MM-DD")
    add_flags(parser, "features", exclude=("runner",))  # --runner stays Beam's own option
    return parser


def run(argv: Sequence[str] | None = None) -> FeaturesReport:
    """Command line: parse our options (over the home's settings file), pass the rest to Beam, print the report."""
    args, beam_args = _parser().parse_known_args(argv)
    home = DataHome.at(args.home)
    report = build_features(home, args.day, stage_config(home.root, "features", args), beam_args,
                            progress=lambda message: print(message, flush=True))
    print(json.dumps({k: v for k, v in report.metadata().items() if k != "summary"}, indent=2, sort_keys=True))
    return report


if __name__ == "__main__":
    run()
