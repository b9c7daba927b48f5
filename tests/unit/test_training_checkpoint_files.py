"""A saved checkpoint carries what transformers 4.27 (PickScore's pin, tokenizers 0.13) reads as well as 5.x.

The real 4.27.3 / 0.13.3 load was run by hand (README, section 8: `benchmarks/pickscore_compat.py`); this test
keeps the files it needs: ``preprocessor_config.json`` (4.27 reads the image processor from nowhere else),
BPE merges stored as ``"a b"`` strings (tokenizers 0.13 rejects ``[a, b]`` pairs), and the slow tokenizer's
``vocab.json`` + ``merges.txt``, all consistent with the tokenizer the model was trained with.
"""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoProcessor, CLIPTokenizer

from training.data import iter_captions
from training.model import build_model, save_checkpoint, write_legacy_files
from training.synthetic import tiny_config, write_synthetic_version

TEXTS = ["A Red cube, 4k!!", "two   green STARS, flat style, it's 8k", "an artist's rendering of a cat"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("home") / "datasets" / "pickapic" / "v1"
    version = write_synthetic_version(root, {"train": 24, "validation": 2, "test": 2, "validation_unique": 2,
                                             "test_unique": 2}, image_px=32, seed=9).version_dir
    config = tiny_config(version, tmp_path_factory.mktemp("run"))
    clip, processor = build_model(config, iter_captions(version, "train"))
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(directory, clip, processor)
    return directory, processor


def test_preprocessor_config_for_old_transformers(saved):
    directory, processor = saved
    legacy = json.loads((directory / "preprocessor_config.json").read_text())
    assert legacy["image_processor_type"] == "CLIPImageProcessor" and legacy["processor_class"] == "CLIPProcessor"
    image = processor.image_processor
    assert legacy["size"] == {"shortest_edge": image.size["shortest_edge"]}
    assert legacy["crop_size"] == {"height": image.crop_size["height"], "width": image.crop_size["width"]}
    assert legacy["image_mean"] == pytest.approx(list(image.image_mean))
    assert legacy["image_std"] == pytest.approx(list(image.image_std))
    assert legacy["resample"] == 3 and legacy["do_center_crop"] and legacy["do_normalize"]  # bicubic


def test_tokenizer_files_old_and_new_versions_parse(saved):
    directory, processor = saved
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text())
    merges = tokenizer_json["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    vocab = json.loads((directory / "vocab.json").read_text())
    assert vocab == tokenizer_json["model"]["vocab"]
    lines = (directory / "merges.txt").read_text().splitlines()
    assert lines[0].startswith("#version") and lines[1:] == merges
    expected = [processor.tokenizer(t)["input_ids"] for t in TEXTS]
    # the fast tokenizer as saved (what AutoProcessor loads, in 4.27 and in 5.x)
    fast = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert [fast.encode(t).ids for t in TEXTS] == expected
    # a tokenizer rebuilt from vocab.json + merges.txt alone (the slow tokenizer's files)
    assert [CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))(t)["input_ids"]
            for t in TEXTS] == expected
    reloaded = AutoProcessor.from_pretrained(directory, local_files_only=True)
    assert [reloaded.tokenizer(t)["input_ids"] for t in TEXTS] == expected


def test_legacy_files_are_idempotent(saved):
    directory, _ = saved
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert write_legacy_files(directory) == []  # nothing left to add or rewrite
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
