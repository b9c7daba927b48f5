"""Scratch tokenizer/model, save_pretrained round trip scored as in PickScore's README, local-dir init."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel

from training.data import ImageSpec, iter_captions, preprocess_image
from training.model import PairScorer, build_model, count_parameters, score_prompt_images, train_tokenizer
from training.synthetic import tiny_config, write_synthetic_version


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("home") / "datasets" / "pickapic" / "v1"
    sizes = {"train": 48, "validation": 8, "test": 8, "validation_unique": 16, "test_unique": 16}
    return write_synthetic_version(root, sizes, image_px=40, seed=3).version_dir


def test_tokenizer_is_deterministic_and_clip_shaped(version):
    captions = list(iter_captions(version, "train"))
    a, b = train_tokenizer(captions, 600), train_tokenizer(captions, 600)
    assert a.get_vocab() == b.get_vocab()  # ids independent of the trainer's order among equal-count merges
    assert [a(c)["input_ids"] for c in captions] == [b(c)["input_ids"] for c in captions]
    ids = a("A Red cube, 4k", padding=True)["input_ids"]
    assert ids[0] == a.bos_token_id and ids[-1] == a.eos_token_id == len(a) - 1
    assert a.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "red</w>"]  # trained merges, lower-cased


def test_save_pretrained_round_trip_scores_like_pickscore_readme(version, tmp_path):
    config = tiny_config(version, tmp_path / "run")
    model, processor = build_model(config, iter_captions(version, "train"))
    assert 20_000 < count_parameters(model) < 200_000
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    # exactly the README: AutoProcessor / AutoModel from the directory, eval mode
    processor2 = AutoProcessor.from_pretrained(tmp_path / "m", local_files_only=True)
    model2 = AutoModel.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    assert isinstance(model2, CLIPModel)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 60, 3), dtype=np.uint8)) for _ in range(2)]
    probs = score_prompt_images(model2, processor2, "a red cube, photo", images)
    assert len(probs) == 2 and sum(probs) == pytest.approx(1.0)
    assert probs == pytest.approx(score_prompt_images(model.eval(), processor, "a red cube, photo", images), abs=1e-6)
    # the training path (fast preprocessing, no draft on PNG) gives the same scores as the README path
    pngs = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    spec = ImageSpec.from_processor(processor2.image_processor)
    pixels = torch.from_numpy(np.stack([preprocess_image(p, spec) for p in pngs]))[None]
    readme_pixels = processor2(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixels[0], readme_pixels, atol=1e-4)
    text = processor2(text=["a red cube, photo"], padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        scores = PairScorer(model2)(text["input_ids"], text["attention_mask"], pixels)
    assert torch.softmax(scores, -1)[0].tolist() == pytest.approx(probs, abs=1e-5)


def test_init_from_local_dir(version, tmp_path):
    # a tiny CLIP + processor saved by save_pretrained stands in for a downloaded CLIP-H / PickScore dir
    config = tiny_config(version, tmp_path / "run")
    _, processor = build_model(config, iter_captions(version, "train"))
    tok = processor.tokenizer
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2), projection_dim=16))
    clip.save_pretrained(tmp_path / "pretrained")
    processor.save_pretrained(tmp_path / "pretrained")
    loaded, proc = build_model(config.replace(init_from=str(tmp_path / "pretrained")))
    assert loaded.config.projection_dim == 16
    for name, value in clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert proc.image_processor.crop_size["height"] == 32
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model(config.replace(init_from=str(tmp_path / "missing")))
