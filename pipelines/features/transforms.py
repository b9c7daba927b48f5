"""The Beam side: ``ReadBlobFn`` -> ``DecodeImageFn`` -> ``BatchElements`` -> ``DetectNsfwFn``, composed by
:class:`FingerprintImages` (no I/O of its own beyond the blob reads and the training-JPEG writes it exists for).

Every image that cannot be used becomes one dead-letter row (``image_rejects``) with a reason; one
image never fails the pipeline.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.features import decode
from pipelines.features.blobs import is_local, join_url, train_jpg_key, training_jpeg_ok, write_blob_atomic
from pipelines.features.config import REJECTS, REUSED, FeaturesConfig
from pipelines.features.decode import ImageRejected
from pipelines.features.derive import encode_train_jpeg, perceptual_hashes
from pipelines.features.nsfw import FastNudeDetector, NsfwDetector, NsfwResult, PreparedImage, prepare_image
from pipelines.features.reuse import known_jpeg_bytes, load_known_digests
from schemas.features import NSFW_CLASSES

PILLOW_BLOCKS_MAX = 64


def reject_row(row: dict, reason: str, detail: str, sha256: str | None = None, num_bytes: int | None = None) -> dict:
    """A dead-letter row for ``image_rejects``."""
    return {"image_uid": row["image_uid"], "dt": row["dt"], "blob_path": str(row["blob_path"]),
            "reason": reason, "detail": detail, "sha256": sha256, "num_bytes": num_bytes}


def describe_error(exc: BaseException, base: str) -> str:
    """``Type: message`` of an exception, with ``base`` (the home or bucket) cut from any path it names."""
    message = str(exc).replace(base.rstrip("/") + "/", "") if base else str(exc)
    return f"{type(exc).__name__}: {message}"


def reused_record(element: dict) -> dict:
    """The reuse candidate of a blob whose bytes an earlier day's row holds (resolved by the driver)."""
    return {"image_uid": element["image_uid"], "blob_path": element["blob_path"], "sha256": element["sha256"],
            "num_bytes": len(element["data"])}


def processing_error_row(row: dict, step: str, exc: BaseException, base: str, num_bytes: int) -> dict:
    """The reject row of an image whose per-image work raised at ``step`` (reason ``processing_error``)."""
    return reject_row(row, decode.PROCESSING_ERROR, f"{row['blob_path']!r}: {step} raised {describe_error(exc, base)}",
                      row["sha256"], num_bytes)


class ReadBlobFn(beam.DoFn):
    """Check the blob path, read the bytes once (capped), sha256 them; known bytes go to ``reused``.

    Known bytes are reused only as a decode would take them and while their training JPEG is there: the checks a
    decode makes before Pillow parses anything (:func:`decode.check_extension`, the path's extension;
    :func:`decode.refuse_structure_bomb`, the PNG and JPEG structure walks) apply to them (review rev24d: PNG
    bytes at ``b.jpg`` were copied from an earlier ``a.png``, while a build without that day rejected them as
    ``extension_mismatch``; review rev24h: a JPEG the pre-scan refuses was copied to new uids), and so does a
    JPEG's check that its image data did not run out (:func:`decode.refuse_jpeg_data_ran_out`, one decode:
    review rev31f, rows of JPEGs libjpeg had grey-filled were accepted before it); and with
    ``train_prefix`` (the stage always gives it) a training JPEG that is not there as the reused row records it
    (:func:`training_jpeg_ok`: lost, cut short, zeros) sends the blob to be decoded, so its JPEG is written
    again (``DecodeImageFn`` then hands it back as reused: the row is still a copy). A todo row may name the
    bytes it expects (``reuse_sha256``, ``reuse_jpeg_bytes``: a row reused by uid that the driver sends to be
    judged again or to have its JPEG written again): bytes that are those are treated as known."""

    def __init__(self, base: str, zone: str, max_bytes: int, known_digests: str | None = None,
                 train_prefix: str | None = None) -> None:
        self.base, self.zone, self.max_bytes, self.known_digests_path = base, zone, max_bytes, known_digests
        self.train_prefix = train_prefix
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
        sha256 = digest.hexdigest()
        if row.get("reuse_sha256") is not None and row["reuse_sha256"] == sha256:
            jpeg_bytes = row["reuse_jpeg_bytes"]    # a reused row sent to be judged again / its JPEG written again
        else:
            jpeg_bytes = known_jpeg_bytes(self.known, digest.digest())
        element = {"image_uid": row["image_uid"], "dt": row["dt"], "blob_path": relpath, "data": data, "sha256": sha256}
        if jpeg_bytes is not None:
            try:
                decode.check_extension(data, relpath)
                decode.refuse_structure_bomb(data, relpath)
                decode.refuse_jpeg_data_ran_out(data, relpath)
            except ImageRejected as rejected:
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTS, reject_row(row, rejected.reason, rejected.detail, sha256, len(data)))
                return
            if self.train_prefix is not None and not training_jpeg_ok(
                    self.base, train_jpg_key(self.train_prefix, sha256), jpeg_bytes):
                yield element | {"reuse_jpeg_bytes": jpeg_bytes}   # decoded to write its JPEG again, then reused
                return
            yield beam.pvalue.TaggedOutput(REUSED, reused_record(element))
            return
        yield element

    def _read(self, relpath: object) -> bytes:
        relpath = decode.check_blob_path(relpath, self.zone)
        try:
            if is_local(self.base):
                target = decode.check_local_target(self.base, relpath, self.zone)
                with decode.open_local_blob(self.base, target, relpath, self.zone) as handle:
                    return decode.read_capped(handle, relpath, self.max_bytes)
            url = join_url(self.base, relpath)
            if not FileSystems.exists(url):
                raise ImageRejected(decode.MISSING_BLOB, f"no object at {relpath!r}")
            with FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return decode.read_capped(handle, relpath, self.max_bytes)
        except ImageRejected:
            raise
        except FileNotFoundError:
            raise ImageRejected(decode.MISSING_BLOB, f"{relpath!r} disappeared while being read") from None
        except Exception as exc:  # noqa: BLE001 - one unreadable blob is a reject row, never a failed run
            raise ImageRejected(decode.UNREADABLE_BLOB,
                                f"{relpath!r}: {describe_error(exc, self.base)}") from None


class DecodeImageFn(beam.DoFn):
    """Decode once; derive hashes, the training JPEG (written to the store) and the NSFW model input."""

    def __init__(self, base: str, config: FeaturesConfig) -> None:
        self.base, self.config = base, config
        self.decoded = Metrics.counter("features", "decoded")
        self.rejected = Metrics.counter("features", "rejected")
        self.jpegs_rewritten = Metrics.counter("features", "train_jpegs_rewritten")

    def setup(self) -> None:
        import imagehash  # noqa: F401
        import scipy.fftpack  # noqa: F401 - imagehash.phash imports it on its first call (~0.3 s): once per worker, here

        configure_worker()

    def process(self, element: dict) -> Iterator[Any]:
        data, config = element["data"], self.config
        step = "decode"
        try:
            decoded = decode.decode_image(data, element["blob_path"], **config.decode_limits())
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
        except Exception as exc:  # noqa: BLE001 - dead letter: one image never fails the run (decode.PROCESSING_ERROR)
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS, processing_error_row(element, step, exc, self.base, len(data)))
            return
        key = train_jpg_key(config.train_prefix, element["sha256"])
        write_blob_atomic(self.base, key, jpeg)   # a store that cannot be written fails the stage, not the image
        if element.get("reuse_jpeg_bytes") == len(jpeg):
            # known bytes whose training JPEG was lost: written again, the row is the earlier one's copy
            self.jpegs_rewritten.inc()
            yield beam.pvalue.TaggedOutput(REUSED, reused_record(element))
            return
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
                except Exception as exc:  # noqa: BLE001 - dead letter (decode.PROCESSING_ERROR)
                    results.append(exc)
        for element, result in zip(batch, results):
            row = {key: value for key, value in element.items() if key != "_nsfw_input"}
            try:
                if isinstance(result, Exception):
                    raise result
                row.update(nsfw_columns(result))
            except Exception as exc:  # noqa: BLE001 - dead letter (decode.PROCESSING_ERROR)
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTS, processing_error_row(row, "nsfw", exc, self.base,
                                                                             row["num_bytes"]))
                continue
            self.processed.inc()
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
    """Per-process settings: Pillow's block allocator (PILLOW_BLOCKS_MAX=64) and one OpenCV thread. What it
    changes in ``os.environ`` while a stage runs in this process (``PILLOW_BLOCKS_MAX`` where unset;
    ``LD_LIBRARY_PATH``, which OpenCV's first import prepends its library folder to) is noted, for
    :func:`process_settings_kept` to put back."""
    first_cv2 = "cv2" not in sys.modules
    library = os.environ.get("LD_LIBRARY_PATH")
    import cv2

    if first_cv2 and os.environ.get("LD_LIBRARY_PATH") != library:
        _note("cv2_library", library)
    from PIL import Image

    blocks = os.environ.get("PILLOW_BLOCKS_MAX")
    os.environ.setdefault("PILLOW_BLOCKS_MAX", str(PILLOW_BLOCKS_MAX))
    if blocks is None:
        _note("pillow_blocks", os.environ["PILLOW_BLOCKS_MAX"])
    Image.core.set_blocks_max(PILLOW_BLOCKS_MAX)
    cv2.setNumThreads(1)


_KEPT_LOCK = threading.Lock()
_KEPT: dict[str, Any] = {"stages": 0, "saved": None}   # stages running in this process, what the first one saw
# What configure_worker changed in os.environ during the running stages: "pillow_blocks" -> the value it gave
# PILLOW_BLOCKS_MAX (unset before); "cv2_library" -> LD_LIBRARY_PATH before OpenCV's first import.
_STAGE_NOTES: dict[str, str | None] = {}


def _note(key: str, value: str | None) -> None:
    with _KEPT_LOCK:
        if _KEPT["stages"] > 0:           # a call outside any stage (a benchmark, a test) is not the stage's
            _STAGE_NOTES.setdefault(key, value)


def _without_cv2_folders(value: str, before: str | None) -> list[str]:
    """``value``'s folders less those OpenCV's loader prepended (inside its package, absent ``before``)."""
    if "cv2" not in sys.modules:
        return value.split(os.pathsep)
    package = os.path.dirname(sys.modules["cv2"].__file__)
    # as imported, and with links resolved: OpenCV's loader names its folder from another spelling of the path
    # when the environment is reached through a link (a linked virtualenv)
    prefixes = tuple({package + os.sep, os.path.realpath(package) + os.sep})
    kept = set((before or "").split(os.pathsep))
    return [folder for folder in value.split(os.pathsep) if folder in kept or not folder.startswith(prefixes)]


def _process_settings() -> dict[str, Any]:
    from PIL import Image

    return {"blocks_max": Image.core.get_blocks_max(),
            "cv2_threads": sys.modules["cv2"].getNumThreads() if "cv2" in sys.modules else None}


def _restore_process_settings(saved: dict[str, Any]) -> None:
    """Called with ``_KEPT_LOCK`` held, by the last stage to end: what the stages changed, and nothing else."""
    from PIL import Image

    if "pillow_blocks" in _STAGE_NOTES and os.environ.get("PILLOW_BLOCKS_MAX") == _STAGE_NOTES["pillow_blocks"]:
        del os.environ["PILLOW_BLOCKS_MAX"]      # still the stage's value: another's is left alone
    library = os.environ.get("LD_LIBRARY_PATH")
    if "cv2_library" in _STAGE_NOTES and library is not None:
        before = _STAGE_NOTES["cv2_library"]
        folders = _without_cv2_folders(library, before)     # OpenCV's folders only: another thread's stay
        if folders != library.split(os.pathsep):
            if folders or before is not None:
                os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(folders)
            else:
                del os.environ["LD_LIBRARY_PATH"]
    _STAGE_NOTES.clear()
    Image.core.set_blocks_max(saved["blocks_max"])
    Image.core.clear_cache()
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(-1 if saved["cv2_threads"] is None else saved["cv2_threads"])  # -1: default


@contextlib.contextmanager
def process_settings_kept() -> Iterator[None]:
    """Run a pipeline, then put back what the stage changed in this process: on an in-process run
    (``in_memory``, ``multi_threading``, ``BundleBasedDirectRunner``: a small day by default) the DoFns
    configure the caller, the Dagster run process, which goes on after the stage. What
    :func:`configure_worker` changed in the environment during the stages is undone (later subprocesses
    would inherit it): ``PILLOW_BLOCKS_MAX`` where it still holds the value it gave it, OpenCV's folders
    taken out of ``LD_LIBRARY_PATH`` (another thread's value or folders, and every other variable, are
    left alone); Pillow's block cache is set back and emptied (it would
    keep up to 64 x 16 MiB after the stage), OpenCV's thread count is set back (its default where OpenCV
    was not loaded before). Stages that overlap in one process (threads) share one snapshot, taken when
    the first starts and restored when the last ends, so none restores another's settings as the
    process's own. Nothing changes when the DoFns ran in worker processes."""
    with _KEPT_LOCK:
        if _KEPT["stages"] == 0:
            _KEPT["saved"] = _process_settings()
            _STAGE_NOTES.clear()
        _KEPT["stages"] += 1
    try:
        yield
    finally:
        with _KEPT_LOCK:
            _KEPT["stages"] -= 1
            if _KEPT["stages"] == 0:
                saved, _KEPT["saved"] = _KEPT["saved"], None
                _restore_process_settings(saved)


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
            ReadBlobFn(self.base, config.blob_zone, config.max_bytes, self.known_digests, config.train_prefix)
        ).with_outputs(REJECTS, REUSED, main="blobs")
        decoded = read.blobs | "DecodeImage" >> beam.ParDo(DecodeImageFn(self.base, config)).with_outputs(
            REJECTS, REUSED, main="decoded")
        features = (
            decoded.decoded
            | "BatchForNsfw" >> beam.BatchElements(min_batch_size=config.nsfw_batch_size,
                                                   max_batch_size=config.nsfw_batch_size)
            | "DetectNsfw" >> beam.ParDo(DetectNsfwFn(self.detector_factory, self.base)).with_outputs(
                REJECTS, main="features")
        )
        rejects = (read[REJECTS], decoded[REJECTS], features[REJECTS]) | "AllRejects" >> beam.Flatten()
        reused = (read[REUSED], decoded[REUSED]) | "AllReused" >> beam.Flatten()
        return {"features": features.features, "rejects": rejects, "reused": reused}
