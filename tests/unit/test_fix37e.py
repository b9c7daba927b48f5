"""fix37e: a loader's worker processes end when the loader is done with, never when the garbage collector finds it
(review rev37e: a worker's error kept the DataLoader iterator, and through its forked workers the run lock, alive in
the exception's traceback after ``train()`` raised). ``training.data.LoaderBatches`` shuts the workers down on an
error, at the end of the batches and on ``close()`` / the end of a ``with`` block, and drops the DataLoader's frames'
locals from the exception; ``train()`` drops the locals of the frames its failure passed (the reference cycles of the
failures shared with every rank); a worker hung after its first batch times out (``LOADER_TIMEOUT_S``) and the
process group is made with an explicit timeout (``GROUP_TIMEOUT_S``) above it. The cyclic collector is held off in
these tests so that they do not depend on when it runs."""
from __future__ import annotations

import gc
import multiprocessing
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.utils.data._utils as loader_utils
from training_fixtures import damage_a_caption

from training import data as data_module
from training import synthetic
from training import train as train_module
from training.data import LOADER_TIMEOUT_S, LoaderBatches, ShardChecksumError, make_loader
from training.evaluate import score_split
from training.model import PairScorer, load_model
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {split: 24 if split == "train" else 8 for split in synthetic.DEFAULT_SIZES}


class _Numbers(torch.utils.data.IterableDataset):
    """Yields 0, 1, ... (after ``first_s`` seconds for the first); raises at ``fail_at``, or hangs there when
    ``hang``."""

    def __init__(self, count: int, fail_at: int | None = None, hang: bool = False, first_s: float = 0.0):
        super().__init__()
        self.count, self.fail_at, self.hang, self.first_s = count, fail_at, hang, first_s

    def __iter__(self):
        time.sleep(self.first_s)
        for i in range(self.count):
            if i == self.fail_at:
                if self.hang:
                    time.sleep(120)
                raise ValueError(f"broken at {i}")
            yield torch.tensor([i])


def _workers(batches: LoaderBatches) -> list:
    return list(batches._batches._workers)   # noqa: SLF001 - the test looks at the processes the loader forked


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def test_a_worker_error_ends_the_workers_and_the_exception_does_not_keep_the_iterator(no_gc) -> None:
    batches = LoaderBatches(make_loader(_Numbers(10, fail_at=2), 1))
    assert int(next(batches)) == 0
    workers, iterator = _workers(batches), weakref.ref(batches._batches)   # noqa: SLF001
    with pytest.raises(ValueError, match="broken at 2") as caught:
        for _ in batches:
            pass
    assert all(not w.is_alive() for w in workers)   # ended when the error was raised, not by a collection
    assert iterator() is None   # nothing of the exception (its traceback's frames) holds the iterator
    assert "DataLoader worker" in str(caught.value)
    with pytest.raises(StopIteration):   # closed: no further batch, no error
        next(batches)


def test_the_end_of_the_batches_close_and_a_with_block_end_the_workers(no_gc) -> None:
    batches = LoaderBatches(make_loader(_Numbers(3), 1))
    workers = _workers(batches) or None
    assert [int(b) for b in batches] == [0, 1, 2]
    assert workers is None or all(not w.is_alive() for w in workers)
    with LoaderBatches(make_loader(_Numbers(100), 2)) as batches:
        next(batches)
        workers = _workers(batches)
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert all(not w.is_alive() for w in workers)   # left mid-stream: the block's end shut them down
    batches.close()   # again: nothing to do


def test_without_workers_close_is_harmless(no_gc) -> None:
    batches = LoaderBatches(make_loader(_Numbers(5, fail_at=1), 0))
    assert int(next(batches)) == 0
    with pytest.raises(ValueError, match="broken at 1"):
        next(batches)
    with pytest.raises(StopIteration):
        next(batches)


def test_a_hung_worker_times_out_and_is_ended_but_a_slow_first_batch_does_not(no_gc, monkeypatch) -> None:
    assert LOADER_TIMEOUT_S < train_module.GROUP_TIMEOUT_S   # the hung rank's error reaches the others in time
    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.5)   # torch's join before it terminates
    # each worker's first batch may take long (a resume's skip): not timed out; the next one that hangs is
    batches = LoaderBatches(make_loader(_Numbers(10, fail_at=1, hang=True, first_s=2.5), 2), timeout=1)
    assert sorted(int(next(batches)) for _ in range(2)) == [0, 0]   # one from each worker, 2.5 s each
    workers = _workers(batches)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 1 seconds"):
        next(batches)
    assert time.monotonic() - started < 10
    assert all(not w.is_alive() for w in workers)   # the hung workers were terminated
    monkeypatch.setattr(data_module, "LOADER_TIMEOUT_S", 0)   # the default, read when made; 0: no timeout
    batches = LoaderBatches(make_loader(_Numbers(3, first_s=0.2), 1))
    assert [int(b) for b in batches] == [0, 1, 2]


def test_the_process_group_gets_an_explicit_timeout(monkeypatch) -> None:
    got = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(train_module.dist, "init_process_group", lambda **kwargs: got.update(kwargs))
    monkeypatch.setattr(train_module.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_module.dist, "get_world_size", lambda: 2)
    assert train_module._init_distributed("cpu")[:2] == (1, 2)
    assert got["backend"] == "gloo" and got["timeout"].total_seconds() == train_module.GROUP_TIMEOUT_S


def test_score_split_ends_its_workers_on_a_damaged_shard(tmp_path: Path, no_gc) -> None:
    written = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32, shards_per_split=2)
    version = written.version_dir
    out = tmp_path / "run"
    trained = train_module.train(tiny_config(str(version), str(out), max_steps=1, eval_every=1, batch_size=8,
                                             num_workers=0))
    clip, processor = load_model(trained.best_dir)
    damage_a_caption(version / "test_unique" / "pickapic-test_unique-000001.tar")
    before = set(multiprocessing.active_children())
    with pytest.raises(ShardChecksumError, match="pickapic-test_unique-000001.tar"):
        score_split(PairScorer(clip), processor, version, "test_unique", num_workers=2, bf16=False)
    assert set(multiprocessing.active_children()) <= before   # its two workers ended with the error


def test_a_failed_train_keeps_no_locals_in_its_traceback_and_a_sink_failure_releases_the_lock(tmp_path: Path,
                                                                                              no_gc) -> None:
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32,
                                      shards_per_split=1).version_dir
    out = tmp_path / "run"
    config = dict(max_steps=4, eval_every=4, batch_size=8, shuffle_buffer=2, shuffle_initial=1, num_workers=1)

    def on_event(event) -> None:   # the caller's event sink fails in the step loop: not the loader's failure
        if event.get("event") == "train" and event.get("step") == 1:
            raise OSError("the sink is gone")

    with pytest.raises(OSError, match="the sink is gone") as caught:
        train_module.train(tiny_config(str(version), str(out), **config), on_event)
    frames, tb = {}, caught.value.__traceback__
    while tb is not None:
        frames[tb.tb_frame.f_code.co_name] = tb.tb_frame
        tb = tb.tb_next
    assert "_train_locked" in frames and not frames["_train_locked"].f_locals   # the model, the loader: gone now
    assert "traceback" not in str(caught.value)
    children = multiprocessing.active_children()
    assert not [c for c in children if "worker" in c.name.lower()], children
    result = train_module.train(tiny_config(str(version), str(out), **config))   # resumes: not RunLocked
    assert result.steps == 4
