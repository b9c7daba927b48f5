"""Fixes of hostile review rev28e (tests/unit/test_hostile_rev28e.py): best-of-n replaces only what it wrote (its
own marker, never a candidates/ without its truth table, a rerank output alone no best-of-n output); a run folder
of the home is only ever its own version's; a link's fragment is never shown; chunked scoring gives each input one
embedding (batches of one fixed shape); a count is a whole number >= 1 and a huge JSON integer a one-line error;
huge captions are cut after their blanks are read as the tokenizer reads them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from formats.home import DataHome
from formats.outputs import RefusedOutput, check_output_dir
from tests.unit.test_fix28a import _sample
from training import runs
from training.data import MAX_CAPTION_CHARS, ImageSpec, PairCollator, bounded_caption, pair_meta
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {"train": 16, "validation": 8, "test": 8, "validation_unique": 8, "test_unique": 8}


# ------------------------------------------------------------------------------------------ best-of-n output
def test_a_rerank_output_beside_a_users_candidates_is_no_best_of_n_output(tmp_path):
    from simulator.best_of_n import MARKER, OUTPUT_MARKERS, main

    home = DataHome.at(tmp_path / "home")
    project = tmp_path / "project"
    (project / "candidates" / "cube").mkdir(parents=True)
    (project / "candidates" / "cube" / "mine.png").write_bytes(b"png")
    (project / "rerank").mkdir()
    (project / "rerank" / "scores.parquet").write_bytes(b"")
    with pytest.raises(RefusedOutput, match="not a previous output"):
        main(["--home", str(home.root), "--model", str(tmp_path / "run" / "best"), "--output", str(project)])
    assert (project / "candidates" / "cube" / "mine.png").read_bytes() == b"png"
    (project / MARKER).write_bytes(b"")            # a folder best-of-n marked as its own is an earlier output
    assert check_output_dir(project, [home.root], "--output", markers=OUTPUT_MARKERS, in_home=True) == project


def test_best_of_n_never_replaces_a_candidates_folder_it_did_not_write(tmp_path):
    from simulator.best_of_n import MARKER, _claim

    out = tmp_path / "out"
    (out / "candidates" / "cube").mkdir(parents=True)
    (out / "candidates" / "cube" / "mine.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="not written by best-of-n"):
        _claim(out, out / "candidates")
    assert (out / "candidates" / "cube" / "mine.png").read_bytes() == b"png" and not (out / MARKER).exists()
    (out / "candidates" / "truth.parquet").write_bytes(b"")   # its own candidates: claimed, the marker written
    _claim(out, out / "candidates")
    assert (out / MARKER).is_file()
    fresh = tmp_path / "fresh"
    _claim(fresh, fresh / "candidates")                        # a new folder: marked before anything is written
    assert sorted(p.name for p in fresh.iterdir()) == [MARKER]


# ------------------------------------------------------------------------------------------ run folders
def test_a_run_folder_of_the_home_is_only_its_own_versions(tmp_path):
    home = DataHome.at(tmp_path / "home")
    version = home.datasets / "2023-03-01-0000000000"
    folder = runs.runs_folder(home)
    runs.check_run_folder_version(runs.run_dir(home, version), home, version)        # its own run folder
    runs.check_run_folder_version(tmp_path / "elsewhere", home, version)             # outside the runs folder
    runs.check_run_folder_version(home.models / "other_model" / "x", home, version)
    for refused in (folder / "2023-03-02-0000000000", folder / f"{runs.DELETING_PREFIX}2023-03-01-0000000000",
                    folder, runs.run_dir(home, version) / "nested", folder / "my-run"):
        with pytest.raises(RefusedOutput, match="output_dir") as caught:
            runs.check_run_folder_version(refused, home, version)
        assert "\n" not in str(caught.value)


def test_pickapic_train_refuses_another_versions_run_folder(tmp_path, capsys):
    from dagster_project.cli import main

    home = DataHome.at(tmp_path / "home")
    old = write_synthetic_version(home.datasets / "2023-03-01-0000000000", SIZES, image_px=32,
                                  shards_per_split=1).version_dir
    other = runs.runs_folder(home) / "2023-03-02-0000000000"
    assert main(["train", "--home", str(home.root), "--data-dir", str(old), "--output-dir", str(other),
                 "--max-steps", "1"]) != 0
    assert "this training reads 2023-03-01-0000000000" in capsys.readouterr().err
    assert not other.exists()


# ------------------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize("link", [
    "https://huggingface.co/yuvalkirstain/PickScore_v1#access_token=hf_Rev28eSecret",
    "https://huggingface.co/yuvalkirstain/PickScore_v1?download=1#token=hf_Rev28eSecret",
    "s3://bucket/model#hf_Rev28eSecret",
])
def test_a_links_fragment_is_never_shown(link):
    from pathlib import Path

    from training.model import shown_path

    for given in (link, Path(link)):
        shown = shown_path(given)
        assert "hf_Rev28eSecret" not in shown and shown.endswith("#***"), shown
    assert shown_path("/models/run#1/best") == "/models/run#1/best"     # a local folder is shown as it is


# ------------------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint
    from training.scoring import Scorer

    root = tmp_path_factory.mktemp("fix28e")
    version = write_synthetic_version(root / "home" / "datasets" / "pickapic" / "2023-03-01-0000000000", SIZES,
                                      image_px=32, shards_per_split=1).version_dir
    clip, processor = build_model(tiny_config(version, root / "unused"), iter_captions(version, "train"))
    save_checkpoint(root / "model", clip, processor)
    return Scorer(root / "model", device="cpu", batch_size=4)


def test_an_inputs_embedding_does_not_depend_on_what_shares_its_batch(scorer):
    prompts = ["red cube", "a tall tower of many words in a long caption " * 3, "cat", "blue star 7", "x"]
    alone = [scorer.embed_texts([p]) for p in prompts]
    together = scorer.embed_texts(prompts)
    assert all(torch_equal(alone[i][0], together[i]) for i in range(len(prompts)))
    pixels = np.random.default_rng(3).normal(size=(6, 3, scorer.spec.crop, scorer.spec.crop)).astype(np.float32)
    images = scorer.embed_pixels(pixels)
    assert images.shape[0] == 6
    assert all(torch_equal(scorer.embed_pixels(pixels[i:i + 1])[0], images[i]) for i in range(6))


def test_on_cuda_every_forward_pass_has_one_shape(scorer, monkeypatch):
    """The CUDA path (forward_rows = batch_size), run on CPU: short batches are filled up, texts padded to
    max_length, only the real rows come back."""
    shapes = []
    text_features, image_features = scorer.clip.get_text_features, scorer.clip.get_image_features

    def texts(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return text_features(**kwargs)

    def images(**kwargs):
        shapes.append(tuple(kwargs["pixel_values"].shape))
        return image_features(**kwargs)
    monkeypatch.setattr(scorer.clip, "get_text_features", texts)
    monkeypatch.setattr(scorer.clip, "get_image_features", images)
    monkeypatch.setattr(scorer, "forward_rows", 4)
    assert scorer.embed_texts(["a", "b c", "d", "e", "f"]).shape[0] == 5
    assert scorer.embed_pixels(np.zeros((5, 3, scorer.spec.crop, scorer.spec.crop), np.float32)).shape[0] == 5
    crop = scorer.spec.crop
    assert shapes == [(4, scorer.max_length)] * 2 + [(4, 3, crop, crop)] * 2


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# ------------------------------------------------------------------------------------------ counts and labels
@pytest.mark.parametrize("meta", [{"label_0": 10 ** 400, "label_1": 0}, {"label_0": 0, "label_1": -10 ** 400},
                                  {"num_example_per_prompt": 10 ** 400}, {"num_example_per_prompt": -10 ** 400}])
def test_a_huge_integer_is_a_short_one_line_error(meta):
    with pytest.raises(ValueError) as caught:
        pair_meta(_sample(**meta))
    message = str(caught.value)
    assert not isinstance(caught.value, OverflowError)
    assert "tr000007" in message and "\n" not in message and len(message) < 400 and "digits" in message


@pytest.mark.parametrize("count", [1e-300, 0.5, 0.999, 2.5, 1.0000001])
def test_a_count_is_a_whole_number_of_one_or_more(count):
    with pytest.raises(ValueError, match="num_example_per_prompt") as caught:
        pair_meta(_sample(num_example_per_prompt=count))
    assert "pickapic-train-000003.tar" in str(caught.value)


@pytest.mark.parametrize("count, weight", [(1, 1.0), (2.0, 0.5), (4, 0.25), (10 ** 6, 1e-6)])
def test_whole_counts_are_taken(count, weight):
    assert pair_meta(_sample(num_example_per_prompt=count))["weight"] == weight


# ------------------------------------------------------------------------------------------ captions
@pytest.mark.parametrize("caption", [
    " " * 16_400 + "a red cube",
    "\n\t " * 9_000 + "two blue \u3000 stars" + " " * 20_000,
    "a  red\n\ncube " * 3_000,
    "\u3000" * 20_000 + "a red cube on a table",
])
def test_a_cut_caption_tokenizes_as_the_whole_caption(caption):
    from training.model import train_tokenizer

    tokenizer = train_tokenizer(["a red cube on a table", "two blue stars"] * 20, 600, 77)
    assert len(caption) > MAX_CAPTION_CHARS and len(bounded_caption(caption)) <= MAX_CAPTION_CHARS
    batch = PairCollator(tokenizer, 77)([_sample(caption=caption)], ImageSpec(32, 32), draft=False)
    whole = tokenizer([caption], padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert batch["input_ids"].tolist() == whole["input_ids"].tolist()


def test_captions_within_the_bound_are_unchanged_and_huge_ones_bounded():
    for caption in ("  a  red\n\ncube  ", " " * MAX_CAPTION_CHARS, "\x1c".join(["word"] * 3000)):
        assert bounded_caption(caption) is caption
    huge = "ab " * (8 << 20)                         # 24 MiB: only the part before the cut is read
    assert bounded_caption(huge) == huge[:MAX_CAPTION_CHARS].rstrip(" ")
    assert bounded_caption("a\x1c" + " " * MAX_CAPTION_CHARS + "b") == "a\x1c b"   # a control character kept
    assert bounded_caption(" " * (MAX_CAPTION_CHARS + 1)) == ""
    assert Image is not None
