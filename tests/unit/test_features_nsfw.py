"""FastNudeDetector gives what NudeDetector().detect() gives: same tensor, same detections, except that
NMS runs per class (NudeNet's one class-agnostic NMS let a covered or face box hide an exposed one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nudenet import NudeDetector
from nudenet.nudenet import _postprocess, _read_image
from PIL import Image
from test_features_fixtures import face_variants, natural_image

from pipelines.features.nsfw import FastNudeDetector, postprocess, prepare_image, to_model_input
from schemas.features import NSFW_CLASSES


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


def nudenet_postprocess(output: np.ndarray, width: int, height: int) -> list[dict]:
    """NudeNet's own post-processing (one class-agnostic NMS) of one raw output (22, anchors)."""
    side = max(width, height)
    return _postprocess([output[None]], side - width, side - height, side / width, side / height,
                        width, height, 320, 320)


def per_class_reference(output: np.ndarray, width: int, height: int) -> list[tuple]:
    """Class-aware NMS from NudeNet's own code: ``_postprocess`` once per class on the output with every
    anchor of another best class zeroed (so it has no candidates), the results pooled and sorted."""
    best_class = output[4:].argmax(axis=0)
    pooled = []
    for class_id in np.unique(best_class[output[4:].max(axis=0) >= 0.2]):
        alone = output.copy()
        alone[4:, best_class != class_id] = 0
        pooled += [(d["class"], d["score"], tuple(d["box"])) for d in nudenet_postprocess(alone, width, height)]
    return sorted(pooled)


def as_tuples(result) -> list[tuple]:
    return [(d.cls, d.score, d.box) for d in result.detections]


def anchor_of(output: np.ndarray, cls: str, score: float) -> int:
    """The one anchor whose best class is ``cls`` with score ``score`` (float32, exact)."""
    scores = output[4:]
    found = np.flatnonzero((scores.argmax(axis=0) == NSFW_CLASSES.index(cls))
                           & (scores.max(axis=0) == np.float32(score)))
    assert found.size == 1, (cls, score, found)
    return int(found[0])


def nudenet_suppresses(output: np.ndarray, width: int, height: int, kept: int, dropped: int) -> bool:
    """Whether NudeNet's NMS, given only anchors ``kept`` and ``dropped``, drops ``dropped``: IoU > 0.45,
    decided by NudeNet's own float arithmetic rather than by the integer boxes it returns."""
    pair = np.zeros_like(output)
    pair[:, [kept, dropped]] = output[:, [kept, dropped]]
    return len(nudenet_postprocess(pair, width, height)) == 1


def crafted_output(anchors: list[tuple[str, float, tuple[float, float, float, float]]]) -> np.ndarray:
    """A raw model output (22, 2100) with the given anchors (class, score, centre-x/y/width/height in the
    320 px input) at columns 0, 1, ... and nothing else; each anchor's other classes score a little."""
    output = np.zeros((22, 2100), np.float32)
    for column, (cls, score, box) in enumerate(anchors):
        output[:4, column] = box
        output[4:, column] = 0.01
        output[4 + NSFW_CLASSES.index(cls), column] = score
    return output


def test_exposed_detection_survives_an_overlapping_detection_of_another_class() -> None:
    """NudeNet's one class-agnostic NMS drops an exposed box under a higher-scored covered or face box
    (IoU > 0.45), so the image passed curation's filter; per-class NMS keeps it. Same-class suppression
    is unchanged."""
    output = crafted_output([
        ("FEMALE_BREAST_COVERED", 0.9, (100, 100, 60, 60)),
        ("FEMALE_BREAST_EXPOSED", 0.8, (104, 102, 60, 60)),    # IoU ~0.85 with the covered box
        ("FEMALE_BREAST_EXPOSED", 0.6, (106, 104, 60, 60)),    # under the exposed 0.8: suppressed in both
        ("FACE_FEMALE", 0.7, (250, 60, 80, 90)),
        ("BUTTOCKS_EXPOSED", 0.5, (255, 65, 80, 90)),          # under the face
    ])
    output[4 + NSFW_CLASSES.index("FEMALE_BREAST_COVERED"), 1] = 0.5    # the exposed anchor is unsure
    theirs = [(d["class"], round(d["score"], 4)) for d in nudenet_postprocess(output, 320, 320)]
    assert theirs == [("FEMALE_BREAST_COVERED", 0.9), ("FACE_FEMALE", 0.7)]     # NudeNet's design
    ours = postprocess(output, 320, 320)
    assert [(d.cls, round(d.score, 4), d.box) for d in ours.detections] == [
        ("FEMALE_BREAST_COVERED", 0.9, (70, 70, 60, 60)),
        ("FEMALE_BREAST_EXPOSED", 0.8, (74, 72, 60, 60)),
        ("FACE_FEMALE", 0.7, (210, 15, 80, 90)),
        ("BUTTOCKS_EXPOSED", 0.5, (215, 20, 80, 90)),
    ]
    assert sorted(as_tuples(ours)) == per_class_reference(output, 320, 320)
    exposed = anchor_of(output, "FEMALE_BREAST_EXPOSED", 0.8)
    assert nudenet_suppresses(output, 320, 320, anchor_of(output, "FEMALE_BREAST_COVERED", 0.9), exposed)
    assert not nudenet_suppresses(output, 320, 320, anchor_of(output, "FACE_FEMALE", 0.7), exposed)
    # Scaled to a 640 x 400 image (padded to 640 x 640) the same boxes give the same outcome.
    assert [d.cls for d in postprocess(output, 640, 400).detections] == [
        "FEMALE_BREAST_COVERED", "FEMALE_BREAST_EXPOSED", "FACE_FEMALE", "BUTTOCKS_EXPOSED"]


def test_detection_order_is_score_then_anchor() -> None:
    """Detections are ordered by score, highest first, then by anchor (the order of NudeNet's one
    NMSBoxes call), whatever their classes: equal scores of two classes keep their anchors' order."""
    anchors = [("MALE_GENITALIA_EXPOSED", 0.5, (40, 40, 30, 30)), ("FACE_MALE", 0.7, (200, 200, 50, 50)),
               ("FEMALE_GENITALIA_COVERED", 0.5, (120, 40, 30, 30)), ("ANUS_EXPOSED", 0.5, (40, 120, 30, 30))]
    assert [d.cls for d in postprocess(crafted_output(anchors), 320, 320).detections] == \
        ["FACE_MALE", "MALE_GENITALIA_EXPOSED", "FEMALE_GENITALIA_COVERED", "ANUS_EXPOSED"]
    reordered = [anchors[3], anchors[1], anchors[2], anchors[0]]
    assert [d.cls for d in postprocess(crafted_output(reordered), 320, 320).detections] == \
        ["FACE_MALE", "ANUS_EXPOSED", "FEMALE_GENITALIA_COVERED", "MALE_GENITALIA_EXPOSED"]


def test_detections_match_nudedetector_up_to_cross_class_suppression(images, reference: NudeDetector,
                                                                      fast: FastNudeDetector) -> None:
    """Every ``NudeDetector().detect()`` detection is found (same class, score, box, order), and each extra
    one is a box NudeNet's agnostic NMS dropped under a higher-scored kept box of another class."""
    prepared = [prepare_image(rgb) for _, rgb in images]
    ours = fast.detect_prepared(prepared)                       # one batch, as the pipeline runs it
    raw = fast.run(prepared)
    total = 0
    for (path, rgb), result, output in zip(images, ours, raw):
        expected = reference.detect(str(path))
        total += len(expected)
        height, width = rgb.shape[:2]
        assert sorted(as_tuples(result)) == per_class_reference(output, width, height), path.name
        found = iter(result.detections)                         # NudeNet's detections, in order, among ours
        for theirs in expected:
            mine = next((d for d in found if d.cls == theirs["class"] and abs(d.score - theirs["score"]) < 1e-4
                         and np.abs(np.array(d.box) - np.array(theirs["box"])).max() <= 1), None)
            assert mine is not None, (path.name, theirs)
            assert result.class_max[mine.cls] >= mine.score
        extras = [d for d in result.detections
                  if not any(d.cls == t["class"] and abs(d.score - t["score"]) < 1e-4 for t in expected)]
        assert len(extras) == len(result.detections) - len(expected), path.name
        for extra in extras:
            dropped = anchor_of(output, extra.cls, extra.score)
            assert any(t["class"] != extra.cls and t["score"] >= extra.score
                       and nudenet_suppresses(output, width, height, anchor_of(output, t["class"], t["score"]), dropped)
                       for t in expected), (path.name, extra)
    assert total >= 6, "the comparison must include real detections"


def test_vectorised_postprocess_equals_nudenet_per_class_on_many_detections(images, fast: FastNudeDetector) -> None:
    # Real outputs have few anchors above 0.2; amplify the class scores so that hundreds pass and
    # NMS has work to do (within and across classes), then compare with NudeNet's loop run per class.
    rng = np.random.default_rng(0)
    raw = fast.run([prepare_image(rgb) for _, rgb in images])
    compared = cross_class = 0
    for (_, rgb), output in zip(images, raw):
        boosted = output.copy()
        boosted[4:] = np.clip(boosted[4:] * rng.uniform(5, 40), 0, 1).astype(np.float32)
        height, width = rgb.shape[:2]
        mine = postprocess(boosted, width, height)
        expected = per_class_reference(boosted, width, height)
        assert sorted(as_tuples(mine)) == expected
        scores = [d.score for d in mine.detections]
        assert scores == sorted(scores, reverse=True)
        compared += len(expected)
        cross_class += len(set(expected) - {(d["class"], d["score"], tuple(d["box"]))
                                            for d in nudenet_postprocess(boosted, width, height)})
    assert compared > 20 and cross_class > 0, (compared, cross_class)


def test_batches_give_bit_identical_outputs(images, fast: FastNudeDetector) -> None:
    prepared = [prepare_image(rgb) for _, rgb in images[:5]]
    together = fast.run(prepared)
    apart = np.concatenate([fast.run(prepared[:2]), fast.run(prepared[2:])])
    assert np.array_equal(together, apart)


def test_prepare_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare_image(np.zeros((4, 4), np.uint8))
