"""The trainer and its evaluation check every shard they read against its version's manifest sha256.

A real published version (``make_home`` + ``publish_dataset``), copied per test, gets one byte of one shard
changed in place (same size: bit rot, an edit); training and evaluation must stop with an error naming the
shard, the version and what to do, also when the shard is read in a loader worker process.
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from test_publish_fixtures import copy_version, published_home

from formats import dataset
from formats.home import DataHome
from training.data import (
    ImageSpec,
    PairCollator,
    ShardChecksumError,
    TrainPairStream,
    check_split,
    iter_captions,
    make_loader,
    shard_digests,
    shard_sizes,
    split_shards,
    split_size,
    tar_samples,
)
from training.evaluate import evaluate_model
from training.model import train_tokenizer
from training.synthetic import tiny_config
from training.train import STATE_FILE, train


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("checksums") / "home")


def _flip_caption_byte(shard: Path) -> None:
    """Change one letter of the first caption in ``shard`` in place: same size, still valid JSON and UTF-8."""
    data = bytearray(shard.read_bytes())
    at = data.index(b"painting")
    data[at] = ord("P")
    with open(shard, "r+b") as handle:  # in place, as bit rot or an editor would
        handle.write(data)
    assert shard.stat().st_size == len(data)


def _error(version: Path, shard: Path) -> str:
    return (f"shard {shard.parent.name}/{shard.name} of dataset version {version.name} .*has sha256 [0-9a-f]{{64}} "
            r"but its manifest.json records [0-9a-f]{64}: its bytes changed after publishing.*--verify-checksums")


def test_an_intact_published_version_trains_and_evaluates(published, tmp_path):
    version = copy_version(published, tmp_path / "home")
    result = train(tiny_config(version.parent / "latest", tmp_path / "run", max_steps=3, eval_every=3,
                               num_workers=1))
    assert result.steps == 3 and 0 <= result.test.test_accuracy <= 1
    assert evaluate_model(result.best_dir, version, num_workers=1, include_untrained=False).n_test > 0


@pytest.mark.parametrize("split", ["train", "validation_unique", "test_unique"])
def test_a_changed_byte_in_a_shard_stops_the_run(published, tmp_path, split):
    """train: read by the tokenizer's caption pass and the train stream; validation_unique: the step-0
    evaluation, in a loader worker process; test_unique: the final evaluation."""
    version = copy_version(published, tmp_path / "home")
    shard = split_shards(version, split)[1]
    _flip_caption_byte(shard)
    events = []
    with pytest.raises(ShardChecksumError, match=_error(version, shard)):
        train(tiny_config(version, tmp_path / "run", max_steps=2, eval_every=2, num_workers=1),
              on_event=events.append)
    if split != "test_unique":
        assert not [e for e in events if e["event"] == "train"]  # stopped before any step trained on it


def test_the_train_stream_checks_shards_in_resampled_workers(published, tmp_path):
    """An endless resampled stream in a loader worker process: the error reaches the trainer, no hang."""
    version = copy_version(published, tmp_path / "home")
    shards = split_shards(version, "train")
    _flip_caption_byte(shards[0])
    collate = PairCollator(train_tokenizer(["a painting of a cat", "a robot"], 600), 77)
    stream = TrainPairStream(shards, 2, collate, ImageSpec(32, 32), seed=0, shuffle_buffer=4, shuffle_initial=1,
                             resampled=True, draft=True, num_workers=1)
    with pytest.raises(ShardChecksumError, match=_error(version, shards[0])):
        for _ in islice(make_loader(stream, 1), 1000):
            pass


def test_evaluating_a_model_reads_only_checked_shards(published, tmp_path):
    version = copy_version(published, tmp_path / "home")
    result = train(tiny_config(version, tmp_path / "run", max_steps=2, eval_every=2))
    shard = split_shards(version, "test_unique")[0]
    _flip_caption_byte(shard)
    with pytest.raises(ShardChecksumError, match=_error(version, shard)):
        evaluate_model(result.best_dir, version, num_workers=0, include_untrained=False)


def test_a_shard_the_manifest_does_not_list_or_sizes_differently_is_refused_before_training(published, tmp_path):
    version = copy_version(published, tmp_path / "home")
    shard = split_shards(version, "validation_unique")[0]
    rel = f"validation_unique/{shard.name}"
    manifest_path = version / dataset.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    listed = manifest["files"].pop(rel)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardChecksumError, match=f"shard {rel} of dataset version {version.name} .* is not listed "
                                                 "in its manifest.json"):
        shard_digests([shard])
    with pytest.raises(ShardChecksumError, match=f"shard {rel} .* is not listed in its manifest.json"):
        train(tiny_config(version, tmp_path / "run"))
    assert not (tmp_path / "run" / "init").exists()  # refused before the model was built
    manifest["files"][rel] = {**listed, "bytes": listed["bytes"] + 512}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardChecksumError, match=f"shard {rel} of dataset version {version.name} .* is "
                                                 f"{listed['bytes']} bytes, its manifest.json records "
                                                 f"{listed['bytes'] + 512}"):
        train(tiny_config(version, tmp_path / "run"))
    (version / dataset.MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json missing: .* is not a complete published version"):
        train(tiny_config(version, tmp_path / "run"))


@pytest.mark.parametrize("edit", ["reformatted", "unlisted", "deleted"])
def test_a_sizes_json_that_differs_from_the_manifest_is_refused_by_every_reader(published, tmp_path, edit):
    """``sizes.json`` decides each shard's expected count and the resampled weights: it is read only with the
    sha256 its manifest records. Even a change no count check notices (the same counts, reformatted) is
    refused, by the up-front check, the shard listing, the sizing helpers and an evaluation alike."""
    version = copy_version(published, tmp_path / "home")
    split = "train"
    sizes_path = version / split / dataset.SIZES_FILE
    if edit == "reformatted":
        sizes_path.write_text(json.dumps(json.loads(sizes_path.read_text())))
        # refused by its size, compared before a byte is read (fix38l); a same-size edit by its sha256 (test_fix38l)
        error, match = ValueError, r"sizes.json of dataset version .* has \d+ bytes but its manifest.json records \d+"
    elif edit == "unlisted":
        manifest = json.loads((version / dataset.MANIFEST_FILE).read_text())
        del manifest["files"][f"{split}/{dataset.SIZES_FILE}"]
        (version / dataset.MANIFEST_FILE).write_text(json.dumps(manifest))
        error, match = ValueError, "sizes.json is not listed in the manifest.json"
    else:
        sizes_path.unlink()
        error, match = FileNotFoundError, "sizes.json missing: the manifest.json of dataset version .* lists it"
    shards = sorted((version / split).glob(dataset.shard_glob(split)))
    with pytest.raises(error, match=match) as refused:
        check_split(version, split)
    assert edit == "deleted" or type(refused.value).__name__ == "ChecksumError"
    with pytest.raises(error, match=match):
        split_shards(version, split)
    with pytest.raises(error, match=match):
        split_size(version, split)
    with pytest.raises(error, match=match):
        shard_sizes(shards)
    with pytest.raises(error, match=match):
        list(iter_captions(version, split))
    if edit == "reformatted":
        with pytest.raises(error, match=match):
            train(tiny_config(version, tmp_path / "run"))
        assert not (tmp_path / "run" / "init").exists()   # refused before the model was built


def _change_last_caption(shard: Path) -> None:
    """Change one letter of the last sample's ``txt`` in ``shard`` in place (same size, valid UTF-8)."""
    *_, last = tar_samples([{"url": str(shard)}])
    data = bytearray(shard.read_bytes())
    at = data.rindex(last["txt"])
    data[at + last["txt"].index(b"a")] = ord("A")
    with open(shard, "r+b") as handle:
        handle.write(data)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_run_that_stops_inside_a_damaged_shard_fails_before_its_final_checkpoint(published, tmp_path, num_workers):
    """The train stream reaches ``max_steps`` inside a shard (every train shard holds 11-15 samples, the run
    reads a few); the changed caption at that shard's end was never checked by the reader. The trainer
    hashes, before its final checkpoint, each shard its loader workers were inside (named by their
    batches): the run fails, and is not recorded as finished (a rerun would not silently skip the check)."""
    version = copy_version(published, tmp_path / "home")
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1, num_workers=0))
    for shard in split_shards(version, "train"):       # no caption pass: the run starts from a checkpoint
        _change_last_caption(shard)
    run = tmp_path / "run"
    config = tiny_config(version, run, init_from=str(base.best_dir), max_steps=1, eval_every=1, batch_size=2,
                         shuffle_buffer=1, shuffle_initial=0, num_workers=num_workers)
    with pytest.raises(ShardChecksumError, match="shard train/pickapic-train-.* has sha256 .* but its manifest.json "
                                                 "records"):
        train(config)
    state = torch.load(run / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == 0 and not (run / "metrics.json").exists()   # the step-0 checkpoint only
    with pytest.raises(ShardChecksumError):
        train(config)                                    # the rerun reads the same shard and fails again


def _flip_last_jpeg_byte(shard: Path) -> None:
    """Flip one bit in the middle of the last sample's ``1.jpg`` in ``shard``, in place (same size, the tar
    still well formed): bytes a run reading the shard from its start meets only at the shard's end."""
    *_, last = tar_samples([{"url": str(shard)}])
    data = bytearray(shard.read_bytes())
    at = data.rindex(last["1.jpg"]) + len(last["1.jpg"]) // 2
    data[at] ^= 0x01
    with open(shard, "r+b") as handle:
        handle.write(data)
    assert shard.stat().st_size == len(data)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_no_checkpoint_holds_steps_trained_on_a_shard_not_yet_verified(published, tmp_path, num_workers):
    """Every train shard holds 11-15 samples and has one bit of its last JPEG flipped; the run takes batches of
    2 in order, so at its evaluation at step 2 the stream is inside the first shard (4 samples read), whose
    end no check has reached. Before an evaluation or a checkpoint, the trainer hashes whole the shard each
    worker's last batch came from: the run fails with the checksum error at step 2, reports no evaluation of
    those steps, and ``checkpoints/last/`` and ``best/`` still hold the step-0 model (before, both were
    written at step 2 with steps trained on the damaged shard, and the error came only at its end)."""
    from safetensors.torch import load_file

    version = copy_version(published, tmp_path / "home")
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1, num_workers=0))
    for shard in split_shards(version, "train"):       # no caption pass: the run starts from a checkpoint
        _flip_last_jpeg_byte(shard)
    run = tmp_path / "run"
    events = []
    with pytest.raises(ShardChecksumError, match="shard train/pickapic-train-.* has sha256 .* but its manifest.json "
                                                 "records"):
        train(tiny_config(version, run, init_from=str(base.best_dir), max_steps=10, eval_every=2, log_every=1,
                          batch_size=2, shuffle_buffer=1, shuffle_initial=0, num_workers=num_workers),
              on_event=events.append)
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2]
    assert [e["step"] for e in events if e["event"] == "eval"] == [0]    # step 2 was never evaluated
    state = torch.load(run / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == 0 and state["open_shards"] == [] and not (run / "metrics.json").exists()
    untrained = load_file(base.best_dir / "model.safetensors")
    for folder in (run / "best", run / "checkpoints" / "last"):
        weights = load_file(folder / "model.safetensors")
        assert weights.keys() == untrained.keys()
        assert all(torch.equal(weights[k], untrained[k]) for k in untrained), folder
