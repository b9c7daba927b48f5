"""Hostile review rev39f of fix39e (the trainer's loader reads 4 shards at once; seeded epochs cut into equal
sample shares by ``sizes.json`` counts).

Checked against rev39b's really published home (743 train samples in 22 shards of 4 to 125 samples). What holds
(counted, no test needed): a resume is exact in both modes on 2 ranks x 2 loader workers (DataLoader order
emulated, batch k from worker k % 2) from batches 1, 11, 12, 13, 23, 24 and 25 (50 batches of 16 compared);
tiny splits (1, 2, 3 shards) on 2 x 2, 2 x 1 and 1 x 4 parts get equal shares, no sample in two shares of an
epoch; a one-shard split in resampled mode reads one shard at a time (``inside_shards`` names it alone, no
hang); a shard whose checksum fails while interleaved stops the stream with ``ShardChecksumError`` naming that
shard; a ``sizes.json`` that lists more or fewer (non-zero) samples than a shard holds is the clear
"holds N samples but sizes.json beside it lists M" error once that shard is read.

Defect (the test below xfails strictly on the code reviewed):

1. ``test_a_shard_sizes_json_lists_as_empty_is_not_silently_skipped_in_an_epoch``: ``_epoch_segments`` takes a
   shard into a share only when ``start < last and end > first``; a shard ``sizes.json`` lists with 0 samples
   (``start == end``) that falls on a share boundary (the first shard dealt, or the first of any part's share)
   is in no share, so it is never opened: neither counted nor hashed. A ``sizes.json`` (with a manifest that
   matches it, so ``check_split`` passes: it returned 714) listing epoch 0's first shard (29 samples) as 0: one
   epoch of steps (44 batches of 16, 704 samples) reads 704 distinct samples without an error, the shard's 29
   never; the error ("holds 29 samples but sizes.json beside it lists 0") comes only in a later epoch that deals
   the shard elsewhere. Before fix39e every shard of an epoch was read, so the lie stopped epoch 0.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from itertools import islice
from pathlib import Path

import pytest

from tests.unit.test_hostile_rev39b import _collate, train_shards  # noqa: F401 - the fixture
from training.data import TrainPairStream, check_split, split_shards


def _relist(version: Path, sizes: dict[str, int]) -> None:
    """Write ``sizes`` as the split's sizes.json and the manifest entry that matches it (a consistent export)."""
    path = version / "train" / "sizes.json"
    path.write_text(json.dumps(sizes, sort_keys=True))
    data = path.read_bytes()
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["train/sizes.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_shard_sizes_json_lists_as_empty_is_not_silently_skipped_in_an_epoch(
        train_shards: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    version = tmp_path / train_shards[0].parent.parent.name
    shutil.copytree(train_shards[0].parent.parent, version)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("WORKER", "0"), ("NUM_WORKERS", "1")):
        monkeypatch.setenv(name, value)

    def stream() -> TrainPairStream:
        return TrainPairStream(split_shards(version, "train"), 16, _collate, None, seed=42, shuffle_buffer=1,
                               shuffle_initial=0, resampled=False, draft=True, num_workers=1)

    first = Path(next(stream()._epoch_segments(0, 1, 0))[0]["url"]).name   # epoch 0's first shard dealt
    sizes = json.loads((version / "train" / "sizes.json").read_text())
    held, sizes[first] = sizes[first], 0
    _relist(version, sizes)
    assert held > 0 and check_split(version, "train") == 743 - held
    steps = (743 - held) // 16   # one epoch of steps as the lying sizes.json counts it
    with pytest.raises(ValueError, match=f"holds {held} samples but sizes.json beside it lists 0"):
        list(islice(iter(stream()), steps))
