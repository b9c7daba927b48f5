"""Hostile review of December 4, 2026: the trainer's shard checksums and its home-relative run files.

A real published version (``make_home`` + ``publish_dataset``), copied per test, is damaged the way a hostile
or careless user would. Each test reproduced a defect of that
day's code (marked ``xfail(strict=True)`` until it was fixed the same day).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_publish_fixtures import copy_version, published_home

from formats import dataset
from formats.home import DataHome
from training.config import TrainConfig
from training.data import ShardChecksumError, _caption, check_split, iter_captions, split_shards, tar_samples
from training.evaluate import evaluate_model
from training.synthetic import tiny_config
from training.train import train


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("hostile_dec4") / "home")


@pytest.mark.parametrize("also_delete_the_shard", [False, True])
def test_a_shard_hidden_by_an_edited_sizes_json_is_refused(published, tmp_path, also_delete_the_shard):
    """The manifest lists every shard and ``sizes.json`` with its sha256, but ``split_shards`` keeps only the
    shards ``sizes.json`` names and ``check_split`` only checks the shards it keeps: edit ``sizes.json`` and a
    shard (say the test_unique shard holding the pairs the model gets wrong) silently leaves the run."""
    version = copy_version(published, tmp_path / "home")
    split = "test_unique"
    shards = split_shards(version, split)
    assert len(shards) >= 2
    hidden = shards[0]
    sizes_path = version / split / dataset.SIZES_FILE
    sizes = json.loads(sizes_path.read_text())
    del sizes[hidden.name]
    sizes_path.write_text(json.dumps(sizes))
    if also_delete_the_shard:
        hidden.unlink()
    assert f"{split}/{hidden.name}" in dataset.read_manifest(version)["files"]   # the version published it
    try:
        check_split(version, split)                      # what the trainer runs before building the model
        read = split_shards(version, split)              # what the trainer and evaluation then read
    except (ValueError, FileNotFoundError):
        return                                           # refused: fixed
    assert hidden in read, f"{hidden.name}, listed in the manifest, is silently left out of {split}"


def test_the_caption_pass_verifies_the_shard_it_stops_in(published, tmp_path):
    """``iter_captions(..., limit)`` feeds ``build_model``'s BPE tokenizer (saved in init/ and best/); with
    ``tokenizer_max_captions`` below the first shard's samples it stops inside that shard, so a changed
    caption there trains the tokenizer and no ``ShardChecksumError`` is ever raised."""
    version = copy_version(published, tmp_path / "home")
    shard = split_shards(version, "train")[0]
    first = next(tar_samples([{"url": str(shard)}]))           # the shard's first sample, read unchecked
    field = "txt" if "txt" in first else "json"
    data = bytearray(shard.read_bytes())
    caption, start = first[field], 0
    while (start := data.find(caption, start)) >= 0:    # its txt (and the copy in its json)
        data[start + caption.index(b"a")] = ord("A")     # same size, valid UTF-8 and JSON
        start += len(caption)
    shard.write_bytes(bytes(data))
    check_split(version, "train")                        # sizes equal: left to the streaming hash
    with pytest.raises(ShardChecksumError):
        captions = list(iter_captions(version, "train", limit=1))
        assert captions[0] != _caption(first)            # the changed caption reached the tokenizer
        pytest.fail(f"the changed caption {captions[0]!r} was read, no ShardChecksumError")


def test_a_relative_init_from_outside_the_home_keeps_naming_the_same_folder(tmp_path, monkeypatch):
    """``--init-from ckpt/pickscore`` (relative to the working directory, outside the data home) is stored as
    given; ``TrainConfig.load`` then makes it ``HOME/ckpt/pickscore``. ``..`` is not refused either:
    ``../elsewhere/ckpt`` becomes ``HOME/../elsewhere/ckpt``, a folder outside the home the run never used."""
    home = tmp_path / "h" / "home"
    work = tmp_path / "work"
    (work / "ckpt" / "pickscore").mkdir(parents=True)
    (tmp_path / "elsewhere" / "ckpt").mkdir(parents=True)
    monkeypatch.chdir(work)
    run = home / "models" / "run"
    for given in ("ckpt/pickscore", "../elsewhere/ckpt"):
        meant = Path(given).resolve()
        config = TrainConfig(data_dir=str(home / "datasets" / "pickapic" / "v1"), output_dir=str(run),
                             init_from=given)
        (run / "best").mkdir(parents=True, exist_ok=True)
        config.save(run / "best", home)
        loaded = TrainConfig.load(run / "best", home=home)
        assert Path(loaded.init_from).resolve() == meant, (given, loaded.init_from)


def test_evaluating_a_run_started_from_a_relative_checkpoint(published, tmp_path, monkeypatch):
    """A run fine-tuned from a local checkpoint given relative to the working directory (``--init-from
    base/best``), written outside the home: ``evaluate_model`` (with its untrained baseline) loads the
    checkpoint from ``HOME/base/best`` instead of ``./base/best``."""
    version = copy_version(published, tmp_path / "home")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    train(tiny_config(version, work / "base", max_steps=1, eval_every=1, num_workers=0))
    tuned = train(tiny_config(version, tmp_path / "tuned", init_from="base/best", max_steps=1, eval_every=1,
                              num_workers=0))
    result = evaluate_model(tuned.best_dir, version, num_workers=0)
    assert result.untrained_test_accuracy is not None
