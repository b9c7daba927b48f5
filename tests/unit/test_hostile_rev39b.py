"""Hostile review rev39b: the readers' side of content-stable shards (issue #16).

Shards are now a pure function of the data, one export day each, samples ordered by (user, created_at, key),
so the reader must shuffle. Checked against shards really published (``make_home`` of 1,200 rankings over 6
export days, seed 5, ``publish_dataset``): 22 train shards of 4 to 125 samples, 743 train samples, 17 users.
What holds (no test needed, counted): the bundled trainer's order is the same for a seed, a resume from
batch 17 (and rank 1 of 2 from batch 9) yields exactly the uninterrupted run's later batches; after its
first batches it mixes days and users as a uniform shuffle would (3-6 days and 8-13 users in a batch of 16;
a uniform draw gives 5.7 days on average, at least 3); the README's WebDataset snippet, run as printed,
reads all 743 samples once and its batches of 16 hold 3-6 days; a late sample added to one old day
changes exactly one shard (its 20 samples keep their relative order, the new one inserted), the other 9 keep
their bytes.

Defects (each test below xfailed strictly on the code reviewed; fixed by fix39e):

1. ``test_the_trainers_first_batches_mix_export_days``: with the default knobs (``shuffle_buffer`` 1000,
   ``shuffle_initial`` 100) the shuffle buffer yields its first batches after reading about 100 samples of
   the first shard drawn, and the shard draw is weighted by sample count, so the biggest shards (one day
   each) come first most often. Over seeds 0-19, 1 loader worker, first 10 batches of 16: 5 of 200 batches
   hold a single export day (the first batch of seeds 5, 9, 12, 14, 15, and of seed 42, the default) where
   the split has 6; with 4 loader workers (the paper preset's count) 58 of 800, seed 0's worker 2 five
   batches in a row, seed 2's worker 0 three with 4-5 users of 17. A uniform shuffle of 16 gives 1 day with
   probability 0 (20,000 draws: minimum 3).
2. ``test_an_epoch_of_steps_reads_each_sample_once_across_ranks``: ``resampled=False`` ("seeded epochs with
   split_by_node / split_by_worker") splits each epoch's shard list by shard count, but shards now differ
   in size (4 to 125 samples): with 2 ranks rank 0's epoch-0 share is 418 samples and rank 1's 325. Even
   without a shuffle buffer (``shuffle_buffer=1``), one epoch's steps (23 batches of 16 per rank, 736 of
   743 samples) read 43 samples twice and 50 never.
3. ``test_an_epoch_of_steps_reads_each_sample_once_with_the_default_buffer``: ``resampled=False`` on one
   rank: the shuffle buffer runs on across the epoch boundary (it reads 2 samples per yield until full), so
   the next epoch's samples are yielded while this epoch's wait in the buffer: with the default buffer
   (1000, initial 100) one epoch's steps (46 batches of 16, 736 of 743 samples) read 153 samples twice and
   160 never; with ``shuffle_buffer`` 100 still 31 twice, 38 never. The README's resume rule counts the
   same thing as a defect ("trained 16 of an epoch's 96 pairs twice and 16 never").
"""
from __future__ import annotations

import collections
import json
from itertools import islice
from pathlib import Path

import pytest

from formats import dataset
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from tests.unit.test_publish_fixtures import make_home
from training.data import TrainPairStream, split_shards

BATCH = 16


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The train shards of a really published home: 6 export days, 743 train samples in 22 shards."""
    home = make_home(tmp_path_factory.mktemp("rev39b") / "home", num_rankings=1200, seed=5, days=6)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return split_shards(dataset.resolve_version(home), "train")


def _total(shards: list[Path]) -> int:
    return sum(json.loads((shards[0].parent / "sizes.json").read_text()).values())


def _collate(raw: list[dict], spec, draft) -> dict:
    """What a batch held: keys, export days, users (no decoding: the order is all that is checked)."""
    metas = [json.loads(sample["json"]) for sample in raw]
    return {"keys": [s["__key__"] for s in raw], "dt": [m["dt"] for m in metas],
            "user": [m["user_id"] for m in metas]}


def _batches(monkeypatch: pytest.MonkeyPatch, shards: list[Path], count: int, *, seed: int = 42,
             rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1, resampled: bool = True,
             buffer: int = 1000, initial: int = 100, skip: int = 0) -> list[dict]:
    """The first ``count`` batches of one rank's logical loader worker (webdataset reads the rank and worker
    from RANK / WORLD_SIZE / WORKER / NUM_WORKERS, as under torchrun and a DataLoader)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("WORKER", str(worker))
    monkeypatch.setenv("NUM_WORKERS", str(workers))
    stream = TrainPairStream(shards, BATCH, _collate, None, seed=seed, shuffle_buffer=buffer,
                             shuffle_initial=initial, resampled=resampled, draft=True, num_workers=workers,
                             skip_batches=skip)
    return list(islice(iter(stream), count))


def test_the_trainers_first_batches_mix_export_days(train_shards: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    days = {shard.name.split("-")[2] for shard in train_shards}
    assert len(days) == 6
    single = [(seed, index) for seed in [42, *range(20)]
              for index, batch in enumerate(_batches(monkeypatch, train_shards, 10, seed=seed))
              if len(set(batch["dt"])) == 1]
    assert single == [], f"batches holding one export day of {len(days)} (seed, batch): {single}"


def _assert_one_epoch_reads_each_once(monkeypatch: pytest.MonkeyPatch, shards: list[Path], world: int,
                                      buffer: int, initial: int) -> None:
    """One epoch's steps (``total // (batch x world)`` batches per rank) read no sample twice."""
    steps = _total(shards) // (BATCH * world)
    reads: collections.Counter = collections.Counter()
    for rank in range(world):
        for batch in _batches(monkeypatch, shards, steps, rank=rank, world=world, resampled=False,
                              buffer=buffer, initial=initial):
            reads.update(batch["keys"])
    assert sum(reads.values()) == steps * BATCH * world
    twice = sorted(key for key, count in reads.items() if count > 1)
    assert twice == [], f"{len(twice)} samples read twice, {_total(shards) - len(reads)} never in one epoch"


def test_an_epoch_of_steps_reads_each_sample_once_across_ranks(train_shards: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_one_epoch_reads_each_once(monkeypatch, train_shards, world=2, buffer=1, initial=0)


def test_an_epoch_of_steps_reads_each_sample_once_with_the_default_buffer(train_shards: list[Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_one_epoch_reads_each_once(monkeypatch, train_shards, world=1, buffer=1000, initial=100)
