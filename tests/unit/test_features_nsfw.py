"""FastNudeDetector gives what NudeDetector().detect() gives: same tensor, same detections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nudenet import NudeDetector
from nudenet.nudenet import _postprocess, _read_image
from PIL import Image
from test_features_fixtures import face_variants, natural_image

from pipelines.features.nsfw import FastNudeDetector, postprocess, prepare_image, to_model_input


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, np.ndarray]]:
    """Face photos (which NudeNet detects) and synthetic pictures, saved as PNG (same pixels for cv2 and PIL)."""
    folder = tmp_path_factory.mktemp("nsfw")
    pictures = face_variants() + [natural_image(seed, size) for seed, size in ((1, (120, 90)), (2, (64, 200)))]
    pictures.append(natural_image(3, (80, 80)).convert("RGBA"))
    out = []
    for index, picture in enumerate(pictures):
        path = folder / f"{index}.png"
        picture.save(path)
        out.append((path, np.asarray(Image.open(path).convert("RGB"))))
    return out


@pytest.fixture(scope="module")
def reference() -> NudeDetector:
    return NudeDetector()


@pytest.fixture(scope="module")
def fast() -> FastNudeDetector:
    return FastNudeDetector(intra_op_threads=1)


def test_model_input_is_bit_identical(images) -> None:
    for path, rgb in images:
        expected = _read_image(str(path), 320)[0]
        assert np.array_equal(to_model_input([prepare_image(rgb)]), expected), path.name


def test_batched_model_input_equals_each_image_alone(images) -> None:
    """A batch tensor holds each image's NudeNet tensor, in order (written plane by plane into one array)."""
    prepared = [prepare_image(rgb) for _, rgb in images]
    batch = to_model_input(prepared)
    assert batch.shape == (len(images), 3, 320, 320) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for i, (path, _) in enumerate(images):
        assert np.array_equal(batch[i], _read_image(str(path), 320)[0][0]), path.name


def test_model_input_refuses_mixed_shapes() -> None:
    small = prepare_image(np.zeros((10, 10, 3), np.uint8), size=32)
    with pytest.raises(ValueError, match="shape"):
        to_model_input([prepare_image(np.zeros((10, 10, 3), np.uint8)), small])


def test_detections_match_nudedetector(images, reference: NudeDetector, fast: FastNudeDetector) -> None:
    ours = fast.detect_batch([rgb for _, rgb in images])        # one batch, as the pipeline runs it
    total = 0
    for (path, _), result in zip(images, ours):
        expected = reference.detect(str(path))
        total += len(expected)
        assert [d.cls for d in result.detections] == [d["class"] for d in expected], path.name
        for mine, theirs in zip(result.detections, expected):
            assert abs(mine.score - theirs["score"]) < 1e-4
            assert np.abs(np.array(mine.box) - np.array(theirs["box"])).max() <= 1
            assert result.class_max[mine.cls] >= mine.score
    assert total >= 6, "the comparison must include real detections"


def test_vectorised_postprocess_equals_the_loop_on_many_detections(images, fast: FastNudeDetector) -> None:
    # Real outputs have few anchors above 0.2; amplify the class scores so that hundreds pass and
    # NMS has work to do, then feed the same array to both post-processors.
    rng = np.random.default_rng(0)
    raw = fast.run([prepare_image(rgb) for _, rgb in images])
    compared = 0
    for (_, rgb), output in zip(images, raw):
        boosted = output.copy()
        boosted[4:] = np.clip(boosted[4:] * rng.uniform(5, 40), 0, 1).astype(np.float32)
        height, width = rgb.shape[:2]
        side = max(width, height)
        expected = _postprocess([boosted[None]], side - width, side - height, side / width, side / height,
                                width, height, 320, 320)
        mine = postprocess(boosted, width, height)
        assert [(d.cls, d.score, d.box) for d in mine.detections] == \
            [(d["class"], d["score"], tuple(d["box"])) for d in expected]
        compared += len(expected)
    assert compared > 20


def test_batches_give_bit_identical_outputs(images, fast: FastNudeDetector) -> None:
    prepared = [prepare_image(rgb) for _, rgb in images[:5]]
    together = fast.run(prepared)
    apart = np.concatenate([fast.run(prepared[:2]), fast.run(prepared[2:])])
    assert np.array_equal(together, apart)


def test_prepare_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare_image(np.zeros((4, 4), np.uint8))
