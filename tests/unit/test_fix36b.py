"""Fix36b: every read or check a trainer rank does by itself shares any exception with the other ranks (review rev36b).

- the step loop: a rank whose loader fails (its shard's checksum, an unreadable copy, a loader worker's error) adds
  NaN to the step's global weight sum, its first collective; every rank then stops with that rank's failure
  (``_share_any_failure``) instead of waiting in the step's collectives. No extra collective per step.
- ``verify_trained`` (before each evaluation) and ``_verify_open_shards`` (a resume) share any exception, not only
  ``ShardChecksumError``; ``check_split``, ``read_one_version`` on ranks above 0, the resume's reads, ``init/``'s load
  on every rank share theirs too.

Node-local copies of the data home are emulated on one machine by shards that are links through ``/proc/self/cwd``:
each rank process runs in its own folder (its "node"), so each reads its own copy of that shard, really. Two real
gloo processes run every case in one group, in turn: after each shared failure the group is still in step (the
next case, and a last all_reduce, show it).
"""
from __future__ import annotations

import datetime
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
from training_fixtures import damage_a_caption

from training import synthetic
from training import train as train_module
from training.data import ShardChecksumError
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {split: 24 if split == "train" else 8 for split in synthetic.DEFAULT_SIZES}
GLOO_TIMEOUT_S = 180  # a rank waiting for a failed one would end after it; a busy machine stays under it (57 s seen)
SHARD = "pickapic-train-000001.tar"   # rank 1 reads it (resampled=False: split_by_node)


def _node_local(version: Path, nodes: Path, case: str, rank1: str) -> None:
    """Make ``version``'s train/SHARD a link through /proc/self/cwd: node0 (rank 0's folder) holds the published
    copy, node1 a damaged copy (``rank1="damaged"``) or none (``"missing"``)."""
    shard = version / "train" / SHARD
    for node in ("node0", "node1"):
        (nodes / node / case).mkdir(parents=True, exist_ok=True)
    if rank1 == "damaged":
        shutil.copyfile(shard, nodes / "node1" / case / SHARD)
        damage_a_caption(nodes / "node1" / case / SHARD)
    shard.rename(nodes / "node0" / case / SHARD)
    shard.symlink_to(f"/proc/self/cwd/{case}/{SHARD}")


CASES = ("split_missing", "loop_worker_damaged")


def _rank(rank: int, store: str, root: str, answers) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    from training import train as trainer

    os.chdir(Path(root) / "nodes" / f"node{rank}")   # this rank's "node": its copies of the linked shards
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    try:
        for case in CASES:
            version = Path(root) / "datasets" / case
            overrides = dict(max_steps=6, eval_every=6, batch_size=8, shuffle_buffer=2, shuffle_initial=1,
                             resampled=False)
            if case == "loop_worker_damaged":
                overrides["num_workers"] = 1   # the error comes from rank 1's loader worker process
            started = time.monotonic()
            try:
                trainer.train(tiny_config(str(version), str(Path(root) / "runs" / case), **overrides))
                answers.put((case, rank, "trained", "", time.monotonic() - started))
            except Exception as exc:   # noqa: BLE001 - the test reads it
                answers.put((case, rank, type(exc).__name__, str(exc), time.monotonic() - started))
        total = torch.ones(1)
        dist.all_reduce(total)   # the group is still in step: both ranks meet in the same collective
        answers.put(("in_step", rank, "sum", str(int(total.item())), 0.0))
    finally:
        dist.destroy_process_group()


def test_each_ranks_own_read_failing_ends_every_rank_with_its_reason_and_keeps_the_group_in_step(
        tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    for case, rank1 in zip(CASES, ("missing", "damaged")):
        version = write_synthetic_version(tmp_path / "datasets" / case, SIZES, image_px=32,
                                          shards_per_split=2).version_dir
        _node_local(version, nodes, case, rank1)
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    ranks = [spawn.Process(target=_rank, args=(rank, str(tmp_path / "store"), str(tmp_path), answers))
             for rank in (0, 1)]
    for process in ranks:
        process.start()
    got: dict = {}
    try:
        for _ in range(2 * (len(CASES) + 1)):
            case, rank, kind, text, seconds = answers.get(timeout=GLOO_TIMEOUT_S + 120)
            got[case, rank] = (kind, text, seconds)
    finally:
        for process in ranks:
            process.join(30)
            if process.exitcode is None:
                process.kill()
    # check_split on rank 1: its copy of a train shard is missing; rank 0's is fine
    kind1, text1, _ = got["split_missing", 1]
    kind0, text0, seconds0 = got["split_missing", 0]
    assert kind1 == "FileNotFoundError" and SHARD in text1, got
    assert kind0 == "ValueError" and text0.startswith("rank 1 stopped with FileNotFoundError") and SHARD in text0, got
    assert seconds0 < GLOO_TIMEOUT_S - 15, got
    assert not (tmp_path / "runs" / "split_missing" / "checkpoints").exists()   # nothing trained or saved
    # rank 1's loader worker reads its damaged copy to its end in the step loop: both stop with the checksum error
    kind1, text1, _ = got["loop_worker_damaged", 1]
    kind0, text0, seconds0 = got["loop_worker_damaged", 0]
    assert kind1 == "ShardChecksumError" and SHARD in text1, got
    # (a loader worker's error reaches its rank as the DataLoader re-raises it: "Caught ShardChecksumError in
    # DataLoader worker process 0", the worker's traceback, then the error's text; rank 0 gets that text)
    assert kind0 == "ShardChecksumError" and SHARD in text0 and "DataLoader worker" in text0, got
    assert seconds0 < GLOO_TIMEOUT_S - 15, got
    state = train_module.load_trainer_state(tmp_path / "runs" / "loop_worker_damaged" / "checkpoints" / "last"
                                            / train_module.STATE_FILE)
    assert state["step"] == 0, state["step"]   # the step-0 checkpoint stays; no later one was saved
    assert not (tmp_path / "runs" / "loop_worker_damaged" / "metrics.json").exists()
    assert got["in_step", 0] == got["in_step", 1] == ("sum", "2", 0.0), got


def test_a_single_rank_whose_loader_fails_raises_its_own_error_and_keeps_its_step_0_checkpoint(
        tmp_path: Path) -> None:
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32,
                                      shards_per_split=1).version_dir
    out = tmp_path / "run"

    def on_event(event) -> None:   # after step 1 the shard changes; the loader reads it to its end later
        if event.get("event") == "train" and event.get("step") == 1:
            damage_a_caption(version / "train" / "pickapic-train-000000.tar")

    with pytest.raises(ShardChecksumError, match="pickapic-train-000000.tar"):
        train_module.train(tiny_config(str(version), str(out), max_steps=8, eval_every=8, batch_size=8,
                                       shuffle_buffer=2, shuffle_initial=1), on_event)
    state = train_module.load_trainer_state(out / "checkpoints" / "last" / train_module.STATE_FILE)
    assert state["step"] == 0
    assert not (out / "metrics.json").exists()


def test_verify_open_shards_raises_on_its_own_rank_for_the_caller_to_share(tmp_path: Path) -> None:
    """A resume's open shard unreadable (an I/O error, not a checksum): raised as it is, with no collective."""
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32,
                                      shards_per_split=2).version_dir
    shard = version / "train" / SHARD
    shard.rename(tmp_path / SHARD)
    shard.symlink_to("/proc/self/mem")   # opens as a regular file; its read fails with EIO
    state = {"open_shards": [f"train/{SHARD}"]}
    with pytest.raises(OSError, match="Input/output error"):
        train_module._verify_open_shards(state, version, tmp_path / "state.pt", 0, 1)
    train_module._verify_open_shards(state, version, tmp_path / "state.pt", 1, 2)   # not its slice: nothing read
