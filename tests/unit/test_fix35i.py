"""Fix35i: the failures review rev35f found unshared between the trainer's ranks, and their neighbours.

- ``train._train_reading``: rank 0's failure to make or lock the run folder (``RunLocked``) is shared
  (``_share_failure``) before anything else: every rank ends with the refusal.
- ``train._share_any_failure``: a check each rank does on its own part (the open shards a resume hashes,
  ``opened[rank::world]``) fails every rank with the first failure in rank order: the failing rank raises its own,
  the others a ``ShardChecksumError``/``ValueError`` of the same text, or a ``ValueError`` naming another exception.
- rank 0's event sink (``on_event``) failing at an ``eval`` event (it then saves no checkpoint) or at a ``train``
  event (every ``log_every`` steps: the noticed item of rev35f) is shared: every rank stops with it.
Two real gloo processes run every multi-rank case in one group, in turn: after each shared failure the group is
still in step (no rank left inside a collective), which the next case, and the successful run last, show.
"""
from __future__ import annotations

import datetime
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from training import synthetic
from training import train as train_module
from training.data import ShardChecksumError
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {split: 24 if split == "train" else 8 for split in synthetic.DEFAULT_SIZES}
GLOO_TIMEOUT_S = 12


def _helper_cases(rank: int) -> list[tuple[str, BaseException | None]]:
    """(case, the failure this rank hands to _share_any_failure)."""
    missing = FileNotFoundError(2, "No such file or directory", f"/shards/train-{rank}.tar")
    return [
        ("none", None),
        ("rank1_oserror", missing if rank == 1 else None),
        ("rank0_refusal", ValueError("refused: the shard list names train/x.tar") if rank == 0 else None),
        ("both_checksum", ShardChecksumError(f"train/shard-{rank}.tar: sha256 differs")),
        ("rank1_checksum", ShardChecksumError("train/shard-1.tar: sha256 differs") if rank == 1 else None),
    ]


def _rank(rank: int, store: str, version: str, root: str, answers) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch.distributed as dist

    from training import train as trainer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    try:
        for name, failure in _helper_cases(rank):
            try:
                trainer._share_any_failure(failure, rank, 2)
                answers.put((name, rank, "none", ""))
            except Exception as exc:   # noqa: BLE001 - the test reads it
                answers.put((name, rank, type(exc).__name__, str(exc)))
        for name in ("train_sink", "eval_sink", "ok"):
            def on_event(event, failing=name.removesuffix("_sink")):   # rank 0's sink: its stdout pipe closed
                if event.get("event") == failing:
                    raise BrokenPipeError(32, "Broken pipe")
            started = time.monotonic()
            try:
                trainer.train(tiny_config(version, str(Path(root) / name), max_steps=2, batch_size=8), on_event)
                answers.put((name, rank, "trained", time.monotonic() - started))
            except Exception as exc:   # noqa: BLE001 - the test reads it
                answers.put((name, rank, type(exc).__name__, f"{exc} after {time.monotonic() - started:.1f}s"))
    finally:
        dist.destroy_process_group()


def test_every_unshared_failure_of_rev35f_and_its_neighbours_ends_every_rank_and_keeps_the_group_in_step(
        tmp_path: Path) -> None:
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32,
                                      shards_per_split=2).version_dir
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    ranks = [spawn.Process(target=_rank, args=(rank, str(tmp_path / "store"), str(version), str(tmp_path), answers))
             for rank in (0, 1)]
    for process in ranks:
        process.start()
    got: dict = {}
    try:
        for _ in range(2 * (len(_helper_cases(0)) + 3)):
            name, rank, kind, text = answers.get(timeout=120)
            got[name, rank] = (kind, text)
    finally:
        for process in ranks:
            process.join(30)
            if process.exitcode is None:
                process.kill()
    assert got["none", 0] == got["none", 1] == ("none", ""), got
    # another exception on rank 1: rank 1 raises its own, rank 0 a ValueError naming it
    assert got["rank1_oserror", 1][0] == "FileNotFoundError", got
    assert got["rank1_oserror", 0] == ("ValueError", "rank 1 stopped with FileNotFoundError: [Errno 2] No such file "
                                                     "or directory: '/shards/train-1.tar'"), got
    # a refusal (ValueError) keeps its text on every rank
    assert got["rank0_refusal", 0] == got["rank0_refusal", 1] == (
        "ValueError", "refused: the shard list names train/x.tar"), got
    # both failing: each raises its own; one failing: the other raises its class with its text
    assert got["both_checksum", 0] == ("ShardChecksumError", "train/shard-0.tar: sha256 differs"), got
    assert got["both_checksum", 1] == ("ShardChecksumError", "train/shard-1.tar: sha256 differs"), got
    assert got["rank1_checksum", 0] == got["rank1_checksum", 1] == (
        "ShardChecksumError", "train/shard-1.tar: sha256 differs"), got
    # rank 0's sink failing at a train event (log_every=1: step 1): every rank stops with it at once
    assert got["train_sink", 0][0] == "BrokenPipeError", got
    assert got["train_sink", 1][0] == "ValueError", got
    assert got["train_sink", 1][1].startswith("rank 0 stopped with BrokenPipeError"), got
    assert float(got["train_sink", 1][1].rsplit(" after ", 1)[1].rstrip("s")) < GLOO_TIMEOUT_S - 4, got
    kept = train_module.load_trainer_state(tmp_path / "train_sink" / "checkpoints" / "last" / train_module.STATE_FILE)
    assert kept["step"] == 0, kept["step"]   # the step-0 checkpoint stays; nothing after the failure was saved
    # at the step-0 eval event: every rank stops, and no checkpoint is saved after the failure
    assert got["eval_sink", 0][0] == "BrokenPipeError", got
    assert got["eval_sink", 1][1].startswith("rank 0 stopped with BrokenPipeError"), got
    assert not (tmp_path / "eval_sink" / "checkpoints" / "last").exists()
    assert not (tmp_path / "eval_sink" / "metrics.json").exists()
    # the group is still in step after every failure above: a normal run trains on both ranks
    assert got["ok", 0][0] == got["ok", 1][0] == "trained", got
    assert (tmp_path / "ok" / "metrics.json").is_file()


@pytest.mark.parametrize("failure", [None, OSError(5, "Input/output error"), ShardChecksumError("train/a.tar")])
def test_a_single_rank_raises_its_own_failure_without_a_collective(failure) -> None:
    if failure is None:
        train_module._share_any_failure(None, 0, 1)
        return
    with pytest.raises(type(failure)) as raised:
        train_module._share_any_failure(failure, 0, 1)
    assert raised.value is failure


def test_a_single_rank_run_whose_sink_fails_at_a_train_event_keeps_its_step_0_checkpoint(tmp_path: Path) -> None:
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32,
                                      shards_per_split=2).version_dir
    events: list[str] = []

    def on_event(event) -> None:
        events.append(event["event"])
        if event["event"] == "train":
            raise BrokenPipeError(32, "Broken pipe")

    out = tmp_path / "run"
    with pytest.raises(BrokenPipeError):
        train_module.train(tiny_config(str(version), str(out), max_steps=2, batch_size=8), on_event)
    assert events[-1] == "train" and "eval" in events
    state = train_module.load_trainer_state(out / "checkpoints" / "last" / train_module.STATE_FILE)
    assert state["step"] == 0
    assert not (out / "metrics.json").exists()
