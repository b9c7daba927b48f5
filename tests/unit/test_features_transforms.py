"""Beam transforms of the feature stage, each on TestPipeline with assert_that."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import apache_beam as beam
import imagehash
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as _BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_empty
from PIL import Image
from test_features_fixtures import bad_blobs, bomb_png, encode, fake_detector, natural_image, png, thin_png

from pipelines.features import transforms
from pipelines.features.blobs import train_jpg_key
from pipelines.features.config import FeaturesConfig
from pipelines.features.derive import perceptual_hashes, train_size_of
from pipelines.features.nsfw import prepare_image
from pipelines.features.reuse import KNOWN_DTYPE
from pipelines.features.runner import pipeline_runner
from pipelines.features.transforms import DecodeImageFn, DetectNsfwFn, FingerprintImages, ReadBlobFn
from schemas import get_schema

DAY = dt.date(2023, 3, 1)


def BeamTestPipeline() -> _BeamTestPipeline:
    """Beam's TestPipeline on the runner the stage itself uses for DirectRunner (no Prism download)."""
    options = PipelineOptions(["--runner=DirectRunner"])
    return _BeamTestPipeline(runner=pipeline_runner(options), options=options)


def row(uid: str, path: str | None = None) -> dict:
    return {"image_uid": uid, "blob_path": path or f"raw/images/{uid}.png", "dt": DAY}


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    (root / "raw" / "images").mkdir(parents=True)
    return root


def put(home: Path, uid: str, data: bytes, ext: str = "png") -> None:
    (home / "raw" / "images" / f"{uid}.{ext}").write_bytes(data)


def digests_file(tmp_path: Path, blobs: list[bytes], jpeg_bytes: int = 1000) -> str:
    """The known digests of ``blobs``, each recorded with a ``jpeg_bytes`` training JPEG."""
    path = tmp_path / "known.npy"
    array = np.empty(len(blobs), dtype=KNOWN_DTYPE)
    array["sha256"] = sorted(hashlib.sha256(b).digest() for b in blobs)
    array["train_jpg_bytes"] = jpeg_bytes
    np.save(path, array)
    return str(path)


def put_train_jpeg(home: Path, data: bytes, size: int = 1000) -> Path:
    """A ``size``-byte file at the training-JPEG key of the blob ``data`` (what a reuse of its bytes checks: the size
    and the JPEG start and end markers)."""
    key = home / train_jpg_key(FeaturesConfig().train_prefix, hashlib.sha256(data).hexdigest())
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(b"\xff\xd8" + b"\xff" * (size - 4) + b"\xff\xd9")
    return key


def reasons(pcoll):
    return pcoll | beam.Map(lambda r: (r["image_uid"], r["reason"]))


def test_read_blob_routes_unsafe_missing_empty_known_and_good(home: Path, tmp_path: Path) -> None:
    put(home, "good", png(1))
    put(home, "empty", b"")
    put(home, "known", png(2))
    put(home, "big", b"x" * 20_000)
    (tmp_path / "outside.png").write_bytes(png(3))
    os.symlink(tmp_path / "outside.png", home / "raw" / "images" / "link.png")
    known = digests_file(tmp_path, [png(2), png(9)])
    rows = [row("good"), row("empty"), row("known"), row("missing"), row("big"), row("link"),
            row("dots", "raw/images/../../outside.png"), row("abs", str(tmp_path / "outside.png"))]
    with BeamTestPipeline() as p:
        out = (p | beam.Create(rows)
               | beam.ParDo(ReadBlobFn(str(home), "raw", 10_000, known)).with_outputs("image_rejects", "reused", main="blobs"))
        assert_that(out.blobs | beam.Map(lambda e: (e["image_uid"], e["sha256"], len(e["data"]))),
                    equal_to([("good", hashlib.sha256(png(1)).hexdigest(), len(png(1)))]), label="blobs")
        assert_that(out.reused | beam.Map(lambda e: (e["image_uid"], e["sha256"])),
                    equal_to([("known", hashlib.sha256(png(2)).hexdigest())]), label="reused")
        assert_that(reasons(out.image_rejects), equal_to([
            ("empty", "empty_file"), ("missing", "missing_blob"), ("big", "file_too_large"), ("link", "unsafe_path"),
            ("dots", "unsafe_path"), ("abs", "unsafe_path")]), label="rejects")


def decode_rows(home: Path, blobs: dict[str, bytes], ext: str = "png") -> list[dict]:
    out = []
    for uid, data in sorted(blobs.items()):
        out.append({"image_uid": uid, "dt": DAY, "blob_path": f"raw/images/{uid}.{ext}", "data": data,
                    "sha256": hashlib.sha256(data).hexdigest()})
    return out


def test_decode_rejects_every_bad_blob_with_its_reason(home: Path) -> None:
    blobs = dict(bad_blobs())
    blobs["real_bomb"] = bomb_png()
    with BeamTestPipeline() as p:
        out = (p | beam.Create(decode_rows(home, blobs))
               | beam.ParDo(DecodeImageFn(str(home), FeaturesConfig())).with_outputs("image_rejects", main="decoded"))
        assert_that(out.decoded, is_empty(), label="nothing decodes")
        expected = [(uid, uid) for uid in bad_blobs()] + [("real_bomb", "decompression_bomb")]
        assert_that(reasons(out.image_rejects), equal_to(expected), label="reasons")
        assert_that(out.image_rejects | beam.Map(lambda r: (r["image_uid"], r["num_bytes"] == len(blobs[r["image_uid"]]),
                                                            r["sha256"] is not None)),
                    equal_to([(uid, True, True) for uid in blobs]), label="sizes")


def test_decode_derives_hashes_jpeg_and_model_input_from_one_decode(home: Path) -> None:
    big = natural_image(7, (800, 600))
    blobs = {"big": encode(big), "small": png(8, (100, 60))}
    config = FeaturesConfig(train_size=256, jpeg_quality=80)
    with BeamTestPipeline() as p:
        out = (p | beam.Create(decode_rows(home, blobs))
               | beam.ParDo(DecodeImageFn(str(home), config)).with_outputs("image_rejects", main="decoded"))
        assert_that(out.image_rejects, is_empty(), label="no rejects")
        assert_that(out.decoded | beam.Map(lambda e: (e["image_uid"], e["width"], e["height"], e["train_width"],
                                                      e["train_height"], e["mode"], e["format"], e["_nsfw_input"].width)),
                    equal_to([("big", 800, 600, 341, 256, "RGB", "PNG", 800), ("small", 100, 60, 100, 60, "RGB", "PNG", 100)]))
    sha = hashlib.sha256(blobs["big"]).hexdigest()
    stored = home / "blobs" / "train" / "s256q80" / sha[:2] / f"{sha}.jpg"
    jpeg = Image.open(stored)
    assert jpeg.format == "JPEG" and jpeg.size == (341, 256)
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666 & ~umask     # readable by other accounts, as the umask says
    phash, dhash = perceptual_hashes(big)
    assert bin(phash ^ int(str(imagehash.phash(big)), 16)).count("1") <= 2
    assert bin(dhash ^ int(str(imagehash.dhash(big)), 16)).count("1") <= 3


def test_train_size_never_upscales() -> None:
    assert train_size_of(512, 512, 512) == (512, 512)
    assert train_size_of(300, 200, 512) == (300, 200)
    assert train_size_of(768, 1024, 512) == (512, 683)
    assert train_size_of(1000, 600, 512) == (853, 512)


def test_detect_nsfw_batches_and_fills_columns() -> None:
    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 0] = 250
    grey = np.full((20, 50, 3), 90, np.uint8)
    elements = [{"image_uid": "red", "_nsfw_input": prepare_image(red)}, {"image_uid": "grey", "_nsfw_input": prepare_image(grey)}]
    with BeamTestPipeline() as p:
        rows = p | beam.Create([elements]) | beam.ParDo(DetectNsfwFn(fake_detector))
        assert_that(rows | beam.Map(lambda r: (r["image_uid"], sorted(r), [d["class"] for d in r["nsfw_detections"]],
                                               r["nsfw_max"]["FACE_FEMALE"] > 0.6)),
                    equal_to([("red", ["image_uid", "nsfw_detections", "nsfw_max"], ["FACE_FEMALE"], True),
                              ("grey", ["image_uid", "nsfw_detections", "nsfw_max"], [], False)]))


def test_fingerprint_images_composite_with_fake_detector(home: Path, tmp_path: Path) -> None:
    for uid, data in {"a": png(1), "b": png(2), "c": bad_blobs()["truncated_image"], "d": png(4)}.items():
        put(home, uid, data)
    known = digests_file(tmp_path, [png(4)])
    put_train_jpeg(home, png(4))
    rows = [row("a"), row("b"), row("c"), row("d"), row("gone")]
    config = FeaturesConfig(nsfw_batch_size=2)
    with BeamTestPipeline() as p:
        out = p | beam.Create(rows) | FingerprintImages(str(home), config, known, fake_detector)
        assert_that(out["features"] | beam.Map(lambda r: (r["image_uid"], r["train_jpg_key"].startswith("blobs/train/s512q90/"),
                                                          set(r) == set(get_schema("image_features").names))),
                    equal_to([("a", True, True), ("b", True, True)]), label="features")
        assert_that(reasons(out["rejects"]), equal_to([("c", "truncated_image"), ("gone", "missing_blob")]), label="rejects")
        assert_that(out["reused"] | beam.Map(lambda r: r["image_uid"]), equal_to(["d"]), label="reused")


def test_fingerprint_images_with_real_model_one_image(home: Path) -> None:
    put(home, "a", png(1, (64, 64)))
    with BeamTestPipeline() as p:
        out = p | beam.Create([row("a")]) | FingerprintImages(str(home), FeaturesConfig())
        assert_that(out["features"] | beam.Map(lambda r: (len(r["nsfw_max"]), all(0 <= v <= 1 for v in r["nsfw_max"].values()))),
                    equal_to([(18, True)]))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="jpeg_quality"):
        FeaturesConfig(jpeg_quality=0).validate()
    with pytest.raises(ValueError, match="blob_zone"):
        FeaturesConfig(blob_zone="..").validate()


def test_extreme_shapes_are_rejects_not_a_failed_run(home: Path) -> None:
    """70000x8 and 8x70000 PNGs (under max_pixels) used to break the JPEG encoder and pad to 14 GB for NudeNet."""
    for uid, size in {"wide": (70000, 8), "tall": (8, 70000), "ok": (96, 80)}.items():
        put(home, uid, thin_png(*size))
    with BeamTestPipeline() as p:
        out = p | beam.Create([row("wide"), row("tall"), row("ok")]) | FingerprintImages(str(home), FeaturesConfig(), None, fake_detector)
        assert_that(out["features"] | beam.Map(lambda r: r["image_uid"]), equal_to(["ok"]), label="features")
        assert_that(reasons(out["rejects"]), equal_to([("wide", "bad_dimensions"), ("tall", "bad_dimensions")]),
                    label="rejects")


def test_an_exception_in_the_per_image_work_is_a_reject_row(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any error of one image (here the JPEG encoder's 'broken data stream') is a processing_error row."""
    real_encode = transforms.encode_train_jpeg

    def encoder(rgb, train_size, quality):
        if rgb.size == (90, 70):
            raise OSError(f"broken data stream when writing image file {home}/raw/images/b.png")
        return real_encode(rgb, train_size, quality)

    monkeypatch.setattr(transforms, "encode_train_jpeg", encoder)
    put(home, "a", png(1))
    put(home, "b", png(2, (90, 70)))
    with BeamTestPipeline() as p:
        out = p | beam.Create([row("a"), row("b")]) | FingerprintImages(str(home), FeaturesConfig(), None, fake_detector)
        assert_that(out["features"] | beam.Map(lambda r: r["image_uid"]), equal_to(["a"]), label="features")
        assert_that(out["rejects"] | beam.Map(lambda r: (r["image_uid"], r["reason"], r["detail"], r["sha256"], r["num_bytes"])),
                    equal_to([("b", "processing_error", "'raw/images/b.png': train_jpeg raised OSError: broken data stream "
                               "when writing image file raw/images/b.png", hashlib.sha256(png(2, (90, 70))).hexdigest(),
                               len(png(2, (90, 70))))]), label="rejects")


class FailsOnGrey:
    """A detector that raises whenever a batch holds the grey test image (the only one 50 px wide)."""

    def detect_prepared(self, batch):
        if any(item.width == 50 for item in batch):
            raise RuntimeError("model failed")
        return fake_detector().detect_prepared(batch)


def fails_on_grey() -> FailsOnGrey:
    return FailsOnGrey()


def test_a_model_error_rejects_only_the_image_at_fault() -> None:
    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 0] = 250
    grey = np.full((20, 50, 3), 90, np.uint8)
    elements = [{"image_uid": uid, "dt": DAY, "blob_path": f"raw/images/{uid}.png", "sha256": "0" * 64, "num_bytes": 10,
                 "_nsfw_input": prepare_image(pixels)} for uid, pixels in (("red", red), ("grey", grey), ("red2", red))]
    with BeamTestPipeline() as p:
        out = p | beam.Create([elements]) | beam.ParDo(DetectNsfwFn(fails_on_grey)).with_outputs("image_rejects", main="rows")
        assert_that(out.rows | beam.Map(lambda r: r["image_uid"]), equal_to(["red", "red2"]), label="rows")
        assert_that(out.image_rejects | beam.Map(lambda r: (r["image_uid"], r["reason"], r["detail"])),
                    equal_to([("grey", "processing_error", "'raw/images/grey.png': nsfw raised RuntimeError: model failed")]),
                    label="rejects")


def test_an_unreadable_blob_is_a_reject_row(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def opener(path, *args, **kwargs):   # the tests run as root, whom a mode of 000 does not stop
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", opener)
    put(home, "locked", png(1))
    put(home, "fine", png(2))
    with BeamTestPipeline() as p:
        out = (p | beam.Create([row("locked"), row("fine")])
               | beam.ParDo(ReadBlobFn(str(home), "raw", 10**6)).with_outputs("image_rejects", "reused", main="blobs"))
        assert_that(out.blobs | beam.Map(lambda e: e["image_uid"]), equal_to(["fine"]), label="blobs")
        assert_that(out.image_rejects | beam.Map(lambda r: (r["image_uid"], r["reason"], r["detail"], r["sha256"])),
                    equal_to([("locked", "unreadable_blob", "'raw/images/locked.png': PermissionError: [Errno 13] "
                               "Permission denied: 'raw/images/locked.png'", None)]), label="rejects")


@pytest.mark.parametrize("swap", ["fifo", "link_out", "folder_link_out"])
def test_a_blob_swapped_after_its_path_checks_is_refused_not_waited_on_or_followed(tmp_path, monkeypatch, swap):
    """The checks look at the path, then the file is opened: whatever was swapped in between (a FIFO, a
    link to a file outside the zone, a folder replaced by a link leading out) is an unsafe_path reject,
    at once (a FIFO blocked the worker forever before)."""
    import threading

    from pipelines.features import decode

    home = tmp_path / "home"
    (home / "raw/images/sub").mkdir(parents=True)
    (home / "raw/images/sub/a.png").write_bytes(png(1))
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub/a.png").write_bytes(png(2))
    real_check = decode.check_local_target

    def check_then_swap(base, relpath, zone="raw"):
        target = real_check(base, relpath, zone)           # passes: a regular file inside the zone
        if swap == "fifo":
            os.unlink(target)
            os.mkfifo(target)
        elif swap == "link_out":
            os.unlink(target)
            os.symlink(outside / "sub/a.png", target)
        else:
            os.rename(home / "raw/images/sub", home / "raw/images/gone")
            os.symlink(outside / "sub", home / "raw/images/sub")
        return target

    monkeypatch.setattr(decode, "check_local_target", check_then_swap)
    fn = ReadBlobFn(str(home), "raw", 10**6)
    fn.setup()
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(fn.process(row("a", "raw/images/sub/a.png"))), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the blob reader waited on a FIFO"
    assert len(out) == 1 and out[0].tag == "image_rejects" and out[0].value["reason"] == "unsafe_path", out
