"""The shard phase reports progress after every batch its writers finish (thirty-fourth session).

``write_shards`` waited on its pool with ``FIRST_EXCEPTION``, which returns only once every batch is done or one
failed: a multi-batch shard phase (a from-scratch publish of a large set, minutes to hours) showed "shards 0/N" until
it ended. It now wakes on each finished batch. Driven with the real fork pool and a stand-in ``write_batch``
(forked writers cannot share a monkeypatched module otherwise than through the fork).
"""
from __future__ import annotations

import time

import pyarrow as pa

from pipelines.publish import shardphase, shards
from pipelines.publish.config import PublishConfig


def _writer(batch):
    time.sleep(0.05)
    return [{"num_bytes": 1, "sidecar_bytes": 1} for _ in batch]


def _failing(batch):
    raise OSError(28, "No space left on device", "shard-x.tar")


def _tasks(folder, count: int) -> list[shards.ShardTask]:
    return [shards.ShardTask("train", f"s{i:03d}", str(folder), str(folder), pa.table({"x": [i]}), "plan", fsync=False)
            for i in range(count)]


def test_progress_is_reported_after_each_batch_not_only_at_the_end(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shards, "write_batch", _writer)
    tasks = _tasks(tmp_path, 16)
    batches = shardphase.make_batches([1] * len(tasks), 2)
    assert len(batches) == 8
    seen: list[tuple[int, int]] = []
    out = shardphase.write_shards(tasks, [], PublishConfig(workers=2), lambda what, done, total: seen.append((done, total)))
    assert out.written == 16
    assert seen[0] == (0, 16) and seen[-1] == (16, 16)
    counts = [done for done, _ in seen]
    assert counts == sorted(counts)
    middle = [c for c in counts if 0 < c < 16]
    assert len(middle) >= 3, f"progress only at {counts}"


def test_a_failed_batch_still_stops_the_phase_with_its_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shards, "write_batch", _failing)
    try:
        shardphase.write_shards(_tasks(tmp_path, 8), [], PublishConfig(workers=2), None)
    except OSError as exc:
        assert exc.errno == 28 and "shard-x.tar" in str(exc)
    else:
        raise AssertionError("a failed batch did not stop the shard phase")
