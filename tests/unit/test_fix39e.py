"""fix39e: the trainer's loader on time-ordered shards (review rev39b): shards read interleaved, seeded epochs cut
into equal sample shares, the shuffle buffer drained at each epoch's end; resume stays exact.

Uses rev39b's really published home (6 export days, 743 train samples in 22 shards of 4 to 125 samples).
"""
from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.unit.test_hostile_rev39b import _batches, _total, train_shards  # noqa: F401 - the fixture
from tests.unit.test_training_hostile import _empty_tars, fresh_version  # noqa: F401 - the fixture
from training.data import INTERLEAVED_SHARDS, TrainPairStream, shard_digests, split_shards, verify_shards


def _keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key in batch["keys"]]


@pytest.mark.parametrize("resampled", [True, False])
def test_a_resume_yields_exactly_the_uninterrupted_runs_later_batches(train_shards: list[Path],  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      resampled: bool) -> None:
    # 60 batches of 16 on one rank run past the end of the first epoch (743 samples) in epoch mode
    whole = _batches(monkeypatch, train_shards, 60, resampled=resampled)
    assert _keys(_batches(monkeypatch, train_shards, 60, resampled=resampled)) == _keys(whole)   # seeded
    assert _keys(_batches(monkeypatch, train_shards, 43, resampled=resampled, skip=17)) == _keys(whole[17:])
    rank1 = _batches(monkeypatch, train_shards, 30, rank=1, world=2, resampled=resampled)
    assert _keys(_batches(monkeypatch, train_shards, 21, rank=1, world=2, resampled=resampled, skip=9)) == \
        _keys(rank1[9:])


def test_the_first_batches_of_every_loader_worker_mix_export_days(train_shards: list[Path],  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """4 loader workers (the paper preset): no batch of one day (58 of 800 were; seed 3's worker 1 drew the same
    125-sample shard four times in a row, which is not read by two readers at once)."""
    days = collections.Counter()
    for seed in range(20):
        for worker in range(4):
            for batch in _batches(monkeypatch, train_shards, 10, seed=seed, worker=worker, workers=4):
                days[len(set(batch["dt"]))] += 1
    assert sum(days.values()) == 800 and days[1] == 0, sorted(days.items())


def test_a_batch_names_every_shard_its_worker_is_inside(train_shards: list[Path],  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _batches(monkeypatch, train_shards, 1)[0]
    inside = first["inside_shards"]
    assert 2 <= len(inside) <= INTERLEAVED_SHARDS and set(inside) <= {str(s) for s in train_shards}
    verify_shards(inside, shard_digests(train_shards))   # whole, published bytes: no error


def _segments(shards: list[Path], world: int, workers: int, epochs: int) -> dict[tuple[int, int], list[list[dict]]]:
    stream = TrainPairStream(shards, 16, None, None, seed=42, shuffle_buffer=1, shuffle_initial=0, resampled=False,
                             draft=True, num_workers=workers)
    out = {}
    for rank in range(world):
        for worker in range(workers):
            epochs_of = stream._epoch_segments(rank, world, worker)
            out[rank, worker] = [next(epochs_of) for _ in range(epochs)]
    return out


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 1), (2, 4), (3, 2)])
def test_every_rank_and_worker_gets_an_equal_share_of_each_epoch(train_shards: list[Path],  # noqa: F811
                                                                 world: int, workers: int) -> None:
    """DDP: every rank takes as many steps an epoch (an unequal share would leave ranks out of step), and no
    sample is in two shares of one epoch."""
    total, parts = _total(train_shards), world * workers
    shares = _segments(train_shards, world, workers, 3)
    for epoch in range(3):
        taken: collections.Counter = collections.Counter()
        for part in shares.values():
            segments = part[epoch]
            assert sum(s["hi"] - s["lo"] for s in segments) == total // parts
            taken.update((s["url"], index) for s in segments for index in range(s["lo"], s["hi"]))
        assert max(taken.values()) == 1 and len(taken) == parts * (total // parts)


def test_an_epoch_split_over_more_parts_than_samples_is_refused(train_shards: list[Path],  # noqa: F811
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="743 samples < 400 ranks x 2 workers: use resampled=True"):
        _batches(monkeypatch, train_shards, 1, world=400, workers=2, resampled=False)


def test_epoch_mode_drains_the_buffer_at_each_epochs_end_on_two_ranks(train_shards: list[Path],  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs on 2 ranks x 2 workers with the default buffer: each worker's first 185 samples (743 // 4) are
    one epoch's share, the next 185 the second's; each epoch reads no sample twice over all four."""
    share = _total(train_shards) // 4
    epochs: list[collections.Counter] = [collections.Counter(), collections.Counter()]
    for rank in range(2):
        for worker in range(2):
            keys = _keys(_batches(monkeypatch, train_shards, -(-2 * share // 16), rank=rank, world=2, worker=worker,
                                  workers=2, resampled=False))
            epochs[0].update(keys[:share])
            epochs[1].update(keys[share:2 * share])
    for reads in epochs:
        assert sum(reads.values()) == 4 * share and max(reads.values()) == 1
    assert epochs[0] != epochs[1]   # another order, so another 3 left over


def test_an_epoch_stream_of_empty_shards_on_two_ranks_raises_instead_of_spinning(
        fresh_version: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Without sizes.json (split by shard count) rank 0 reads one shard an epoch: the shards read without a sample are
    counted over the epochs, so the stream stops once it has read both (each epoch alone never holds both)."""
    _empty_tars(fresh_version / "train")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stream = TrainPairStream(split_shards(fresh_version, "train"), 4, None, None, seed=0, shuffle_buffer=8,
                             shuffle_initial=2, resampled=False, draft=True, num_workers=0)
    with pytest.raises(ValueError, match="a full pass over its 2 shards yielded no samples"):
        next(iter(stream))
