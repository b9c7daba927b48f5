"""Second hostile review of December 4, 2026: the trainer fixes merged in f13f7d4 (a reader stopping inside a
shard verifies it; run files store ``home:`` paths).

A real published version (``make_home`` + ``publish_dataset``), copied per test into a home of its own. Each test
reproduces a defect of main at 691940a and was marked ``xfail(strict=True)`` until it was fixed.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_publish_fixtures import copy_version, published_home

from formats import dataset
from formats.home import DataHome
from training.data import ShardChecksumError, split_shards, tar_samples
from training.synthetic import tiny_config
from training.train import STATE_FILE, train


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("hostile_dec4b") / "home")


def _change_last_caption(shard: Path) -> None:
    """Change one letter of the last sample's ``txt`` in ``shard`` in place (same size, valid UTF-8)."""
    *_, last = tar_samples([{"url": str(shard)}])
    data = bytearray(shard.read_bytes())
    at = data.rindex(last["txt"])
    data[at + last["txt"].index(b"a")] = ord("A")
    with open(shard, "r+b") as handle:
        handle.write(data)


class _Killed(Exception):
    """Stands for the run being killed (preempted, OOM, Ctrl-C) after a checkpoint."""


def _kill_at(step: int):
    def on_event(event: dict) -> None:
        if event["event"] == "train" and event["step"] == step:
            raise _Killed(step)
    return on_event


def test_a_resume_that_ends_at_its_checkpoint_still_verifies_the_shard_it_stopped_inside(published, tmp_path):
    """``max_steps`` is a resumable field. A run trained steps 1-2 from inside a train shard (every train shard
    holds 11-15 samples; 2 batches of 2 read 4 of them), checkpointed at step 2 and was killed. Resumed with
    ``--max-steps 2`` ("finish now"), the trainer finds ``step >= max_steps``, skips the loop and its checks,
    evaluates and writes ``metrics.json``: the finished run's model was trained on samples of a shard that no
    check ever passed. (The trainer now hashes that shard before the step-2 checkpoint, so the end of the
    shard is changed after it here, as bit rot would, or as in a checkpoint written by a trainer that did not
    hash: the resume still hashes the checkpoint's ``open_shards`` first.)"""
    version = copy_version(published, tmp_path / "home")
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1, num_workers=0))
    run = tmp_path / "run"
    config = tiny_config(version, run, init_from=str(base.best_dir), max_steps=10, eval_every=2, log_every=1,
                         batch_size=2, shuffle_buffer=1, shuffle_initial=0, num_workers=0)
    with pytest.raises(_Killed):
        train(config, on_event=_kill_at(3))
    state = torch.load(run / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    # the shards its worker was inside: 4, read at once (fix39e; one before)
    assert state["step"] == 2 and len(state["open_shards"]) == 4
    assert all(rel.startswith("train/") for rel in state["open_shards"])
    for shard in split_shards(version, "train"):
        _change_last_caption(shard)
    with pytest.raises(ShardChecksumError):
        train(config.replace(max_steps=2))
    assert not (run / "metrics.json").exists()


def test_a_state_without_open_shards_still_resumes_and_a_mistyped_or_foreign_one_is_refused(published, tmp_path):
    """``open_shards`` (the train shards the workers were inside at the checkpoint, ``train/<name>``) is plain
    data: the state still loads with ``weights_only=True``. A state written before it was recorded resumes (with
    nothing to verify); one whose entry is not a list of strings, or names a file that is not a train shard of
    the version's manifest, is refused before any file is opened."""
    version = dataset.resolve_version(published)
    run = tmp_path / "run"
    config = tiny_config(version, run, max_steps=2, eval_every=2, num_workers=0)
    train(config)
    state_path = run / "checkpoints" / "last" / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["open_shards"] and all(rel.startswith("train/") for rel in state["open_shards"])
    for bad, match in (([1], r"mistyped trainer state entries \['open_shards'\]"),
                       ("train/x.tar", r"mistyped trainer state entries \['open_shards'\]"),
                       (["../manifest.json"], r"open_shards \['../manifest.json'\] are not train shards")):
        torch.save({**state, "open_shards": bad}, state_path)
        with pytest.raises(ValueError, match=match):
            train(config.replace(max_steps=3))
    del state["open_shards"]  # as written before it was recorded
    torch.save(state, state_path)
    assert train(config.replace(max_steps=3)).steps == 3
    assert torch.load(state_path, weights_only=True)["open_shards"]
