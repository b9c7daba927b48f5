"""The shard writer's batches: same bytes as one shard at a time, commit markers only after their files
are synced, errors that stop a batch leave no marker and no temporary file."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats import dataset
from pipelines.publish import shardphase, shards, version
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> list[shards.ShardTask]:
    """The shard tasks of a real publish of a small home (captured, then the publish goes on)."""
    home = make_home(tmp_path_factory.mktemp("batches") / "h", num_rankings=160, seed=3)
    captured: list[shards.ShardTask] = []
    real = version.write_shards

    def grab(tasks, previous, config, progress):
        captured.extend(tasks)
        return real(tasks, previous, config, progress)

    version.write_shards = grab
    try:
        publish_dataset(home, PublishConfig(workers=1, fsync=False))
    finally:
        version.write_shards = real
    assert len(captured) >= 6
    return captured


def _into(tasks: list[shards.ShardTask], folder: Path, fsync: bool = False) -> list[shards.ShardTask]:
    return [dataclasses.replace(t, out_dir=str(folder / t.split), fsync=fsync) for t in tasks]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("duckdb_from", [None, "median", 1])
def test_a_batch_writes_the_same_bytes_as_one_shard_at_a_time(planned, tmp_path, monkeypatch, duckdb_from) -> None:
    """Each shard's JSON path (DuckDB or json.dumps) follows its own rows, never its batch's."""
    sizes = sorted(t.rows.num_rows for t in planned)
    threshold = {None: shards.DUCKDB_JSON_MIN_ROWS, "median": sizes[len(sizes) // 2], 1: 1}[duckdb_from]
    monkeypatch.setattr(shards, "DUCKDB_JSON_MIN_ROWS", threshold)
    calls = []
    real_select = shards._duckdb_select
    monkeypatch.setattr(shards, "_duckdb_select",
                        lambda rows, sql: (calls.append(rows.num_rows), real_select(rows, sql))[1])
    one_by_one = [shards.write_shard(t) for t in _into(planned, tmp_path / "single")]
    assert sorted(calls) == [n for n in sizes if n >= threshold]     # the DuckDB path ran where it should
    calls.clear()
    batched = shards.write_batch(_into(planned, tmp_path / "batch", fsync=True))
    assert sorted(calls) == [n for n in sizes if n >= threshold]
    assert batched == one_by_one
    single, batch = _files(tmp_path / "single"), _files(tmp_path / "batch")
    assert single == batch and len(single) == 3 * len(planned)
    assert not [name for name in batch if name.rsplit("/", 1)[-1].startswith(".")]   # no temporary file left


def test_a_shards_json_does_not_depend_on_its_batch_even_where_the_two_paths_differ(planned, tmp_path,
                                                                                      monkeypatch) -> None:
    """A caption with a control character written as \\u00XX with a hex letter: DuckDB and json.dumps
    spell it differently, so a shard must take the same path alone and inside a larger batch."""
    import pyarrow as pa

    task = _into(planned[:1], tmp_path / "single")[0]
    captions = ["red \x1b car"] * task.rows.num_rows
    field = task.rows.schema.field("caption")
    rows = task.rows.set_column(task.rows.schema.get_field_index("caption"), field, pa.array(captions, field.type))
    task = dataclasses.replace(task, rows=rows)
    default = shards.DUCKDB_JSON_MIN_ROWS
    monkeypatch.setattr(shards, "DUCKDB_JSON_MIN_ROWS", task.rows.num_rows + 1)   # alone: json.dumps
    alone = shards.write_shard(task)
    others = _into(planned[1:], tmp_path / "batch") + _into(planned[1:], tmp_path / "batch2")
    batched = shards.write_batch([dataclasses.replace(task, out_dir=str(tmp_path / "batch" / task.split))] + others)
    # the batch as a whole would have taken DuckDB's path, at the patched and at the default threshold
    assert sum(t.rows.num_rows for t in others) + task.rows.num_rows >= max(default, task.rows.num_rows + 1)
    assert batched[0] == alone


def test_the_committer_closes_every_file_and_reports_a_failed_close(planned, tmp_path, monkeypatch) -> None:
    """close() can report a write error (NFS): the shard is not committed, the error reaches the writer,
    and every other file is still closed."""
    tasks = _into(planned, tmp_path, fsync=True)
    before = len(os.listdir("/proc/self/fd"))
    real_close, closes = os.close, []

    def failing_close(fd):
        closes.append(fd)
        real_close(fd)
        if len(closes) == 3:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(shards.os, "close", failing_close)
    with pytest.raises(OSError, match="Input/output error"):
        shards.write_batch(tasks)
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not [t for t in tasks[1:] if t.paths()[2].exists()]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_committer_that_stops_without_an_error_is_still_an_error(planned, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shards._Committer, "_run", lambda self: None)    # a thread that died at once
    with pytest.raises(RuntimeError, match="committer thread stopped"):
        shards.write_batch(_into(planned[:2], tmp_path))


def test_a_committed_shard_in_a_batch_is_kept_and_the_others_written(planned, tmp_path) -> None:
    tasks = _into(planned[:4], tmp_path)
    first = shards.write_shard(tasks[1])
    marker = tasks[1].paths()[2]
    before = marker.stat().st_mtime_ns, tasks[1].paths()[0].stat().st_ino
    assert shards.write_batch(tasks)[1] == first
    assert (marker.stat().st_mtime_ns, tasks[1].paths()[0].stat().st_ino) == before   # not rewritten
    assert all(t.paths()[2].is_file() for t in tasks)


def test_markers_are_written_only_after_their_tar_and_sidecar_are_synced(planned, tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_write_new = os.fsync, shards._write_new

    def fsync(fd):
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def write_new(path, write, keep_open):
        result = real_write_new(path, write, keep_open)
        events.append(("file", str(path)))
        return result

    monkeypatch.setattr(shards.os, "fsync", fsync)
    monkeypatch.setattr(shards, "_write_new", write_new)
    tasks = _into(planned, tmp_path, fsync=True)
    shards.write_batch(tasks)
    order = {(kind, path): i for i, (kind, path) in enumerate(events)}
    for task in tasks:
        tar, sidecar, stats = (str(p) for p in task.paths())
        assert order[("sync", tar)] < order[("file", stats)] and order[("sync", sidecar)] < order[("file", stats)]
        assert ("sync", stats) not in order      # markers need no fsync of their own


def test_without_fsync_nothing_is_synced(planned, tmp_path, monkeypatch) -> None:
    synced = []
    monkeypatch.setattr(shards.os, "fsync", synced.append)
    shards.write_batch(_into(planned, tmp_path, fsync=False))
    assert synced == []


def test_a_torn_marker_means_the_shard_is_written_again(planned, tmp_path) -> None:
    (task,) = _into(planned[:1], tmp_path)
    stats = shards.write_shard(task)
    wrong = [json.dumps({**stats, **change}).encode() for change in (
        {"shard": "../outside.tar"}, {"sidecar": planned[1].name + ".parquet"},
        {"num_bytes": float(stats["num_bytes"])},
        {"shard": "x" * 300}, {"plan_sha256": "0" * 64})]
    missing = json.dumps({k: v for k, v in stats.items() if k != "sha256"}).encode()
    for torn in (b"", b'{"shard": "x', b'{"sidecar": 3}', b"[]", b"[" * 100_000, b"\xff\xfe", missing, *wrong):
        task.paths()[2].write_bytes(torn)    # what a power cut may leave of a marker that had no fsync
        assert shards._committed_stats(task.paths()[2], task.plan_sha256) is None
        assert shards.write_shard(task) == stats
        assert json.loads(task.paths()[2].read_text()) == stats


def test_a_full_disk_while_syncing_names_the_file_and_commits_nothing_after_it(planned, tmp_path, monkeypatch) -> None:
    tasks = _into(planned, tmp_path, fsync=True)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.os, "fsync", full)
    with pytest.raises(OSError, match="no space left on device at .*pickapic-") as caught:
        shards.write_batch(tasks)
    assert caught.value.errno == errno.ENOSPC
    assert not [t for t in tasks if t.paths()[2].exists()]             # no marker: nothing counts as written
    assert not list(tmp_path.rglob(".*.tmp"))
    # the failed publish's cleanup removes the uncommitted files; a rerun writes every shard
    shardphase.clean_failed_staging(tmp_path)
    assert not list(tmp_path.rglob("*.tar"))
    monkeypatch.undo()
    assert len(shards.write_batch(tasks)) == len(tasks) and all(t.paths()[2].is_file() for t in tasks)


def test_a_missing_jpeg_fails_the_batch_without_markers_or_temporary_files(planned, tmp_path) -> None:
    home = tmp_path / "home"
    tasks = _into(planned[:5], tmp_path / "out")
    for task in tasks:                        # a private copy of the JPEGs these shards read
        for relpath in task.rows.column("jpg_0_key").to_pylist() + task.rows.column("jpg_1_key").to_pylist():
            target = home / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((Path(task.home_root) / relpath).read_bytes())
    def copied(task):    # the copies are other files: the identities the writer checks are theirs
        import numpy as np

        keys = zip(task.rows.column("jpg_0_key").to_pylist(), task.rows.column("jpg_1_key").to_pylist())
        return np.array([[*shards.file_identity(os.stat(home / a)), *shards.file_identity(os.stat(home / b))]
                         for a, b in keys], dtype=np.int64)

    tasks = [dataclasses.replace(t, home_root=str(home), jpg_identities=copied(t)) for t in tasks]
    missing = tasks[3].rows.column("jpg_1_key")[0].as_py()
    (home / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        shards.write_batch(tasks)
    assert not list((tmp_path / "out").rglob("*_stats.json")) and not list((tmp_path / "out").rglob(".*.tmp"))


def test_batches_cover_every_shard_once_in_consecutive_runs_heaviest_first() -> None:
    import random

    rng = random.Random(5)
    for _ in range(300):
        weights = [rng.choice([1, 2, 5, 40, 300]) for _ in range(rng.randint(0, 400))]
        workers = rng.randint(1, 8)
        batches = shardphase.make_batches(weights, workers)
        assert sorted(p for b in batches for p in b) == list(range(len(weights)))
        assert all(b == list(range(b[0], b[-1] + 1)) for b in batches)
        sums = [sum(weights[p] for p in b) for b in batches]
        assert sums == sorted(sums, reverse=True)
        target = -(-sum(weights) // (workers * shardphase.BATCHES_PER_WORKER)) if weights else 0
        assert all(s <= target or len(b) == 1 for s, b in zip(sums, batches))
        assert all(len(b) <= shardphase.MAX_BATCH_SHARDS for b in batches)
        if weights:
            assert len(batches) >= min(len(weights), workers)     # every worker gets work


def test_the_pool_writes_the_same_version_as_one_process(tmp_path) -> None:
    """Also direct I/O against the page cache: the pool's tars go by O_DIRECT (fsync on), the one
    process's through the page cache (fsync off)."""
    homes = [make_home(tmp_path / name, num_rankings=160, seed=3) for name in ("one", "pool")]
    one = publish_dataset(homes[0], PublishConfig(workers=1, fsync=False))
    pool = publish_dataset(homes[1], PublishConfig(workers=3, fsync=True))
    assert one.version == pool.version and pool.shards_written == one.shards_written > 3
    manifests = [(dataset.resolve_version(h) / dataset.MANIFEST_FILE).read_bytes() for h in homes]
    assert manifests[0] == manifests[1]


@pytest.mark.parametrize("fsync,direct_io,expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_the_tars_go_by_o_direct_only_with_fsync_and_direct_io(tmp_path, monkeypatch, fsync, direct_io, expected) -> None:
    from pipelines.publish import chunkwriter

    asked = []
    real_init = chunkwriter.ChunkWriter.__init__

    def recording_init(self, fd, direct=False, on_written=None):
        asked.append(direct)
        real_init(self, fd, direct, on_written)

    monkeypatch.setattr(chunkwriter.ChunkWriter, "__init__", recording_init)
    home = make_home(tmp_path / "h", num_rankings=40, seed=5)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=fsync, direct_io=direct_io))
    assert len(asked) == report.shards_written > 0 and set(asked) == {expected}
