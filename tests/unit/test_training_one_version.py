"""Every rank of a distributed training reads the version rank 0 resolved (``training.train.read_one_version``):
each rank resolved ``latest`` by itself before, so a nightly switching it between the ranks' starts trained them
on two versions (noted by review rev26e). Two real gloo processes."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
from pathlib import Path

from formats import dataset
from formats.home import DataHome
from training.synthetic import write_synthetic_version

SIZES = {"train": 4, "validation": 2, "test": 2, "validation_unique": 2, "test_unique": 2}
NAMES = ("2023-03-01-aaaaaaaaaa", "2023-03-02-bbbbbbbbbb")


def _versions(home: DataHome) -> list[Path]:
    paths = []
    for seed, name in enumerate(NAMES):
        path = home.datasets / name
        write_synthetic_version(path, SIZES, image_px=8, shards_per_split=1, seed=seed, link_latest=False)
        assert dataset.record_switch(home.datasets, name, fsync=False) is None
        dataset.switch_latest(home.datasets, name, fsync=False)
        paths.append(path)
    return paths


def _rank(rank: int, store: str, given: list[str], answers) -> None:
    import torch.distributed as dist

    from training.train import read_one_version

    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        try:
            with contextlib.ExitStack() as reading:
                answers.put((rank, "read", str(read_one_version(given[rank], rank, 2, reading))))
        finally:
            dist.destroy_process_group()
    except Exception as exc:   # noqa: BLE001 - the test reads it
        answers.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=2)}"))


def _run(tmp_path: Path, given: list[str]) -> dict[int, tuple[str, str]]:
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    store = str(tmp_path / f"store-{os.getpid()}")
    ranks = [spawn.Process(target=_rank, args=(rank, store, given, answers)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    got = dict((rank, (kind, text)) for rank, kind, text in (answers.get(timeout=120) for _ in ranks))
    for process in ranks:
        process.join(60)
        assert process.exitcode == 0
    return got


def test_every_rank_reads_the_version_rank_0_resolved(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    old, latest = _versions(home)
    # rank 1 is given the older version, as its own resolution of `latest` would have found it had `latest` moved
    # between the two: it reads rank 0's
    got = _run(tmp_path, [str(home.datasets), str(old)])
    assert got == {0: ("read", str(latest.resolve())), 1: ("read", str(latest.resolve()))}, got


def test_where_rank_0_cannot_read_every_rank_fails_with_its_reason(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _versions(home)
    missing = str(home.datasets / "2023-04-01-nonexistent")
    got = _run(tmp_path, [missing, str(home.datasets)])
    assert got[0][0] == "error" and got[1][0] == "error", got
    assert "rank 0 could not read the dataset" in got[1][1] and "2023-04-01-nonexistent" in got[1][1], got
