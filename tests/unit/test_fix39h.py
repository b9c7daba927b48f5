"""fix39h: every shard dealt in a seeded epoch is opened, hashed whole and its count checked by exactly one part
(review rev39f: a shard ``sizes.json`` lists as 0 on a share boundary was in no share), and the samples outside
a part's share are never handed on (no payload kept, nothing to decode); past its share a part that does not
count the shard only hashes the rest of it."""
from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

import training.data
from tests.unit.test_hostile_rev39b import _total, train_shards  # noqa: F401 - the fixture
from tests.unit.test_hostile_rev39f import _relist
from training.data import ShardChecksumError, TrainPairStream, shard_digests, shard_sizes, split_shards, tar_samples


def _stream(shards: list[Path], workers: int) -> TrainPairStream:
    return TrainPairStream(shards, 16, None, None, seed=42, shuffle_buffer=1, shuffle_initial=0, resampled=False,
                           draft=True, num_workers=workers)


@pytest.fixture(scope="module")
def zeroed(train_shards: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: F811
    """A copy whose sizes.json lists three shards as 0 (and a manifest that matches it): positions at share
    boundaries, mid-share and at the very end of some epoch's order occur among the layouts below."""
    version = tmp_path_factory.mktemp("fix39h") / train_shards[0].parent.parent.name
    shutil.copytree(train_shards[0].parent.parent, version)
    sizes = json.loads((version / "train" / "sizes.json").read_text())
    for name in sorted(sizes)[::8]:
        sizes[name] = 0
    _relist(version, sizes)
    return split_shards(version, "train")


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 2), (3, 2), (8, 4)])
@pytest.mark.parametrize("which", ["published", "zeroed"])
def test_each_epoch_opens_every_shard_and_one_part_counts_it(train_shards: list[Path], zeroed: list[Path],  # noqa: F811
                                                             world: int, workers: int, which: str) -> None:
    shards = train_shards if which == "published" else zeroed
    stream, parts = _stream(shards, workers), world * workers
    sizes = shard_sizes(shards)
    share = sum(sizes.values()) // parts
    epochs = {(r, w): stream._epoch_segments(r, world, w) for r in range(world) for w in range(workers)}
    for _ in range(4):
        counted: collections.Counter = collections.Counter()
        opened: set[str] = set()
        taken: collections.Counter = collections.Counter()
        for part in epochs.values():
            segments = next(part)
            assert sum(s["hi"] - s["lo"] for s in segments) == share
            for s in segments:
                assert 0 <= s["lo"] <= s["hi"] <= sizes[s["url"]]
                assert s["count"] or s["hi"] < sizes[s["url"]]   # a part that stops early leaves samples to one that counts
                opened.add(s["url"])
                counted[s["url"]] += s["count"]
                taken.update((s["url"], i) for i in range(s["lo"], s["hi"]))
        assert opened == {str(s) for s in shards} and set(counted.values()) == {1}
        assert len(taken) == parts * share and max(taken.values()) == 1


def test_the_samples_outside_a_share_are_never_handed_on(train_shards: list[Path],  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks x 2 workers, one epoch: the shard reader hands on exactly the samples the parts train on (1.00, was
    1.33: the out-of-share samples of a cut shard were built with their payloads and dropped after), and every
    shard is still hashed whole and passes (no error)."""
    handed: collections.Counter = collections.Counter()
    real = training.data.tar_samples

    def counting(*args, **kwargs):
        for sample in real(*args, **kwargs):
            handed[sample["__url__"], sample["__key__"]] += 1
            yield sample
    monkeypatch.setattr(training.data, "tar_samples", counting)
    stream, trained = _stream(train_shards, 2), 0
    for rank in range(2):
        for worker in range(2):
            segments = next(stream._epoch_segments(rank, 2, worker))
            trained += sum(1 for _ in stream._interleaved(segments, [], set()))
    assert trained == 4 * (_total(train_shards) // 4) == sum(handed.values()) and max(handed.values()) == 1


def _damaged(train_shards: list[Path], tmp_path: Path) -> tuple[Path, dict, dict]:  # noqa: F811
    """A copy of the largest shard with one byte of its last member flipped (its manifest digest kept)."""
    shard = max(train_shards, key=lambda p: p.stat().st_size)
    copy = tmp_path / shard.parent.parent.name / shard.parent.name / shard.name
    copy.parent.mkdir(parents=True)
    data = bytearray(shard.read_bytes())
    tail = data.rstrip(b"\0")
    data[len(tail) - 1] ^= 1
    copy.write_bytes(bytes(data))
    return copy, {str(copy): shard_digests([shard])[str(shard)]}, {str(copy): shard_sizes([shard])[str(shard)]}


def test_a_part_that_stops_parsing_still_hashes_the_rest(train_shards: list[Path], tmp_path: Path) -> None:  # noqa: F811
    copy, digests, sizes = _damaged(train_shards, tmp_path)
    item = {"url": str(copy), "lo": 1, "hi": 3, "count": False}
    with pytest.raises(ShardChecksumError, match=copy.name):
        list(tar_samples([item], sizes, digests))


def test_only_the_counting_part_checks_the_count(train_shards: list[Path]) -> None:  # noqa: F811
    shard = max(train_shards, key=lambda p: p.stat().st_size)
    url, digests = str(shard), shard_digests([shard])
    lying = {url: shard_sizes([shard])[url] + 1}
    kept = [s["__key__"] for s in tar_samples([{"url": url, "lo": 1, "hi": 3, "count": False}], lying, digests)]
    whole = [s["__key__"] for s in tar_samples([{"url": url}], None, digests)]
    assert kept == whole[1:3]
    with pytest.raises(ValueError, match=f"holds {len(whole)} samples but sizes.json beside it lists {len(whole) + 1}"):
        list(tar_samples([{"url": url, "lo": 1, "hi": 3, "count": True}], lying, digests))
