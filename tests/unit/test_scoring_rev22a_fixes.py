"""The fixes of review rev22a's model-loading and scoring defects, beyond what test_hostile_rev22a.py asserts.

A tiny local CLIP checkpoint (random weights) stands in for PickScore; nothing downloads.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.scoring_fixtures import tiny_checkpoint
from training.model import NotAClipCheckpoint, load_model
from training.scoring import CONVERTIBLE_MODES, ImageError, Scorer, load_rgb


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP checkpoint saved by this project's own trainer code (``save_checkpoint``)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("rev22a-fixes-model"))


def _copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


def _edit_image_processor(folder: Path, **values) -> None:
    for name, section in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        config = json.loads((folder / name).read_text())
        (config[section] if section else config).update(values)
        (folder / name).write_text(json.dumps(config))


def test_a_pickscore_style_checkpoint_with_position_ids_and_a_bin_file_still_loads(model_dir, tmp_path):
    """Older transformers (PickScore_v1's 4.2x) saved the position_ids buffers in pytorch_model.bin."""
    old = _copy(model_dir, tmp_path / "old")
    weights = load_file(old / "model.safetensors")
    weights["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    weights["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    (old / "model.safetensors").unlink()
    torch.save(weights, old / "pytorch_model.bin")
    clip, _ = load_model(old)
    assert torch.equal(clip.text_projection.weight, weights["text_projection.weight"])


def test_weights_left_over_or_of_the_wrong_shape_are_refused_by_name(model_dir, tmp_path):
    extra = _copy(model_dir, tmp_path / "extra")
    weights = load_file(model_dir / "model.safetensors")
    save_file({**weights, "head.weight": torch.zeros(2)}, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NotAClipCheckpoint, match="unexpected: head.weight"):
        load_model(extra)
    wrong = _copy(model_dir, tmp_path / "wrong")
    save_file({**weights, "text_projection.weight": torch.zeros(3, 3)}, wrong / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(NotAClipCheckpoint, match=r"text_projection.weight is \(3, 3\) in the weights"):
        load_model(wrong)


def test_a_pickled_weights_file_is_refused_without_running_it(model_dir, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = _copy(model_dir, tmp_path / "evil")
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(NotAClipCheckpoint, match="objects other than tensors"):
        load_model(evil)
    assert not marker.exists()


@pytest.mark.parametrize("values, match", [
    ({"image_std": [0.0, 0.0, 0.0]}, "image_std"),
    ({"image_mean": [0.5, float("nan"), 0.5]}, "image_mean"),
    ({"size": {"shortest_edge": 1_000_000}}, "shortest_edge 1000000"),
])
def test_a_processor_that_cannot_normalise_or_resize_for_the_model_is_refused(model_dir, tmp_path, values, match):
    odd = _copy(model_dir, tmp_path / "odd")
    _edit_image_processor(odd, **values)
    with pytest.raises(NotAClipCheckpoint, match=match):
        load_model(odd)


def test_auto_map_in_a_model_folder_processor_config_is_refused(model_dir, tmp_path):
    mapped = _copy(model_dir, tmp_path / "mapped")
    config = json.loads((mapped / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["custom.Tok", None]}
    (mapped / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(NotAClipCheckpoint, match=r"tokenizer_config.json names custom code \(auto_map\)"):
        load_model(mapped)


def test_a_non_finite_score_becomes_an_error_row_never_ranked(model_dir, tmp_path):
    """Weights that go NaN after loading (or an embedding of norm 0) still never give a NaN score."""
    scorer = Scorer(model_dir, device="cpu")
    images = [Image.new("RGB", (40, 40), (90, 20, 20)), Image.new("RGB", (40, 40), (20, 90, 20))]
    with torch.no_grad():
        scorer.clip.visual_projection.weight.fill_(float("nan"))
    rows = scorer.score("two red stars", images)
    assert all(r.score is None and r.rank is None and r.preference is None for r in rows), rows
    assert all(r.error.startswith("non_finite_score: ") for r in rows), rows


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK"])
def test_modes_pillow_cannot_convert_faithfully_are_refused(mode):
    image = Image.new(mode, (8, 8))
    with pytest.raises(ImageError, match="unsupported_mode"):
        load_rgb(image, "in-memory")


def test_a_16_bit_png_and_a_cmyk_jpeg_file_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 20000, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("g16.png", "cmyk.jpg"):
        with pytest.raises(ImageError, match="unsupported_mode"):
            load_rgb(tmp_path / name, name)


def test_the_8_bit_modes_still_convert_and_match_the_feature_stage():
    decode = pytest.importorskip("pipelines.features.decode")
    assert CONVERTIBLE_MODES == decode.CONVERTIBLE_MODES
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        assert load_rgb(Image.new(mode, (4, 4)), mode).mode == "RGB"


def test_the_scores_of_a_normal_checkpoint_are_finite_and_ranked(model_dir):
    rows = Scorer(model_dir, device="cpu").score("two red stars", [Image.new("RGB", (40, 40), c) for c in
                                                                   ((90, 20, 20), (20, 90, 20))])
    assert all(r.error is None and math.isfinite(r.score) for r in rows)
    assert sorted(r.rank for r in rows) == [1, 2]


def test_a_logit_scale_whose_exp_is_infinite_is_refused(model_dir, tmp_path):
    hot = _copy(model_dir, tmp_path / "hot")
    weights = load_file(model_dir / "model.safetensors")
    save_file({**weights, "logit_scale": torch.tensor(1000.0)}, hot / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NotAClipCheckpoint, match="logit_scale"):
        load_model(hot)       # every score would be infinite: each row a non_finite_score


@pytest.mark.parametrize("values, match", [
    ({"size": {"shortest_edge": 16}}, "shortest_edge 16"),          # smaller than the crop: nothing to crop
    ({"image_std": [0.26, 0.26, 0.26, 0.26]}, "image_std"),          # not one value per colour
    ({"image_mean": [0.5, 2e6, 0.5]}, "image_mean"),
])
def test_a_processor_resize_or_normalisation_out_of_bounds_is_refused(model_dir, tmp_path, values, match):
    odd = _copy(model_dir, tmp_path / "odd")
    _edit_image_processor(odd, **values)
    with pytest.raises(NotAClipCheckpoint, match=match):
        load_model(odd)
