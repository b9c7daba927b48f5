"""Hostile review of the publish-stage fixes of December 4, 2026 (dec4f): the staging and versions rules,
the publish history, give_modes, the training-JPEG digest cache, the gate's column and count caches and
the publish lock's new place. Each defect confirmed is reproduced here and marked ``xfail(strict=True)``:
the test passes while the defect is there and fails (XPASS) the day it is fixed; then drop the mark.

Every home is built under ``tmp_path``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import io
import mmap
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_columncache import _check, _full
from test_publish_fixtures import export_days, history_home, publish_until, write_split_pairs
from test_publish_jpgdigests import KEYS, _home, _index, _parts, _truth
from test_publish_rulecache import CONFIG, _first_night, _nights, _values

from data_contracts.engine import Rule, evaluate, reads_only_columns
from data_contracts.engine import load_contract as real_load_contract
from formats.dataset import LATEST, list_versions
from pipelines.publish import columncache, jpgdigests, rulecache
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import check_contracts, publish_dataset, version_views
from pipelines.publish.versions import publish_lock
from pipelines.sqlrun import connect


# --------------------------------------------------------------------------- the publish history
def test_a_crash_between_the_history_and_the_switch_does_not_cost_the_version_latest_named(
        tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h", days=5, rankings=120)
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=2)
    publish_until(home, full, config, last_day=days[-4])
    b = publish_until(home, full, config, last_day=days[-3])

    def killed(*args, **kwargs) -> None:
        raise RuntimeError("killed after the history was written, before latest moved")

    monkeypatch.setattr("pipelines.publish.version.switch_latest", killed)
    with pytest.raises(RuntimeError, match="killed"):
        publish_until(home, full, config, last_day=days[-2])       # c: in place and in the history, never latest
    monkeypatch.undo()
    assert os.readlink(home.datasets / LATEST) == b.version

    d = publish_until(home, full, config)                          # the next night: new data

    # the versions switched to were a, b, d: keep_versions = 2 keeps d and b (the one latest named
    # until this switch, which readers may still be reading), not c
    assert os.readlink(home.datasets / LATEST) == d.version
    assert b.version in list_versions(home), (d.deleted_versions, list_versions(home))


# --------------------------------------------------------------------------- the publish lock's new place
def test_a_publish_waits_for_one_holding_the_lock_at_its_old_path(tmp_path: Path) -> None:
    home, _ = history_home(tmp_path / "h", days=2)
    home.datasets.mkdir(parents=True, exist_ok=True)
    entered = threading.Event()
    messages: list[str] = []

    def publish() -> None:
        with publish_lock(home, messages.append):
            entered.set()

    with open(home.datasets / ".publish.lock", "a+") as old:   # what the old code held, the way it held it
        fcntl.flock(old.fileno(), fcntl.LOCK_EX)
        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        # until the new publish says it waits (or, wrongly, takes its lock), not a fixed time: a loaded machine may
        # need that long just to start the thread, and with the old lock let go first it would never wait; then
        # as long again to see that it does not take its lock all the same
        for _ in range(6000):
            if messages or entered.wait(0.01):
                break
        entered.wait(1.5)
        taken = entered.is_set()
    thread.join(10)
    assert not taken, "the new publish took its lock while the old code's publish held the old one"
    assert entered.is_set() and messages[0].startswith("waiting for a publish of the code before December 4, 2026")


# --------------------------------------------------------------------------- the JPEG digest cache
def test_a_merge_of_the_digest_cache_drops_jpegs_that_are_gone(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    keep = KEYS[0]

    def night(n: int) -> jpgdigests.JpgIndex:
        key = f"blobs/night/{n:03d}.jpg"
        (home.root / key).parent.mkdir(parents=True, exist_ok=True)
        (home.root / key).write_bytes(os.urandom(200 + n))
        index = jpgdigests.index_jpgs(home, {"jpg_0_key": pa.chunked_array([pa.array([keep])]),
                                             "jpg_1_key": pa.chunked_array([pa.array([key])])})
        if n:
            (home.root / f"blobs/night/{n - 1:03d}.jpg").unlink()     # yesterday's image deleted from the store
        return index

    for n in range(jpgdigests.MAX_PARTS + 2):
        assert night(n).hashed >= 1
    parts = _parts(home)
    cached = pa.concat_tables([pq.read_table(part) for part in parts]).column("key").to_pylist()
    gone = sorted(key for key in set(cached) if not (home.root / key).exists())
    assert len(parts) < jpgdigests.MAX_PARTS                       # a merge happened
    assert gone == [], f"{len(gone)} entries of JPEGs that no longer exist kept after the merge: {gone[:3]}"
    again = _index(home)                                           # the cache still serves what it kept
    assert (again.hashed, again.note, again.sha256.to_pylist()) == (len(KEYS) - 1, "", _truth(home))


@pytest.mark.xfail(strict=True, reason="dec4f: the identity (size, mtime, ctime, inode) misses a write through a "
                   "shared mmap into a page that is already dirty (the kernel updates mtime/ctime only when a clean "
                   "page is first written): the cache then serves the old sha256 for the changed JPEG, and the "
                   "writer's fstat check passes, so the sidecar's jpg sha256 is not the tar's bytes")
def test_a_jpeg_changed_through_a_dirty_mmap_page_is_hashed_again(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    blob = home.root / KEYS[0]
    fd = os.open(blob, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, os.fstat(fd).st_size)
        mapped[0:1] = b"\x01"                      # the page is dirty now (mtime/ctime moved once)
        first = _index(home)
        assert first.sha256.to_pylist() == _truth(home)
        before = os.stat(blob)
        mapped[1:2] = b"\x02"                      # the same dirty page: no timestamp update
        after = os.stat(blob)
        if (after.st_mtime_ns, after.st_ctime_ns) != (before.st_mtime_ns, before.st_ctime_ns):
            # a writeback in between moved the timestamps: not this defect's case. No skip (a skipped test
            # says nothing): it fails, which the strict xfail takes as the known limit still standing
            raise AssertionError("the page was written back in between: the defect's case was not reached")
        again = _index(home)
        mapped.close()
    finally:
        os.close(fd)
    assert again.sha256.to_pylist() == _truth(home), "the cache gave the sha256 of the JPEG's old bytes"


def test_a_digest_cache_part_of_another_account_is_not_believed(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    (part,) = _parts(home)
    table = pq.read_table(part)
    forged = table.set_column(table.schema.get_field_index("sha256"), table.schema.field("sha256"),
                              pa.array(["0" * 64] * table.num_rows, pa.string()))
    part.unlink()
    pq.write_table(forged, part, write_page_checksum=True)
    if os.geteuid() == 0:
        os.chown(part, 4242, 4242)                # another account's file in this account's cache folder
        owner = 4242
    else:                                         # cannot give a file away: this account is another one now
        owner = part.stat().st_uid
        monkeypatch.setattr(jpgdigests, "_euid", lambda: owner + 1)

    index = _index(home)

    assert index.sha256.to_pylist() == _truth(home) and index.hashed == len(KEYS)
    assert f"{part.name} belongs to uid {owner}" in index.note and "left in place" in index.note
    assert part.is_file() and pq.read_table(part).equals(forged)  # not ours: never removed or rewritten
    if os.geteuid() == 0:                         # this account's own part is still believed beside it
        again = _index(home)
        assert again.hashed == 0 and again.sha256.to_pylist() == _truth(home) and part.is_file()


# --------------------------------------------------------------------------- the gate's caches
def _rewrite_in_place(path: Path, table: pa.Table) -> None:
    """Write ``table`` into ``path``'s own inode with the same size (padding between the last column chunk
    and the footer, which readers reach by offsets) and put its mtime back: ``rsync -t --inplace`` or an
    edit followed by ``touch -r``. The ctime moves; the inode, size and mtime do not."""
    before = os.stat(path)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=True, write_statistics=True)
    data = buffer.getvalue()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    pad = before.st_size - len(data)
    assert pad >= 0, "the edited sidecar came out larger than the original"
    data = data[:-footer] + bytes(pad) + data[-footer:]
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert pq.read_table(path).equals(table)


@pytest.mark.xfail(strict=True, reason="dec4f, narrowed: the column cache's (and count cache's) sidecar identity is the "
                   "manifest sha256, inode, size and mtime, without a ctime (the publish's own links and retention "
                   "move every reused sidecar's ctime each night): a version checked again after a sidecar of its own "
                   "was rewritten in place with its mtime put back keeps its recorded key/split/prompt_key. The "
                   "publish never does that (one gate per staging version), and since December 5 a nightly no longer "
                   "carries such a sidecar from an older version into a new one (the test after these)")
def test_a_sidecar_rewritten_in_place_with_its_mtime_put_back_is_not_answered_from_the_column_cache(
        tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(nightly.path, copy)            # its own inodes: nothing shared with the published versions
    _check(copy, home)                             # recorded
    sidecar = min(copy.glob("train/pickapic-*.parquet"))
    table = pq.read_table(sidecar)
    keys = table.column("key").to_pylist()
    assert len(keys) >= 2
    _rewrite_in_place(sidecar, table.set_column(table.schema.get_field_index("key"), table.schema.field("key"),
                                                pa.array([keys[0], keys[0]] + keys[2:], pa.string())))
    assert _full(copy)["shard_samples.key_unique"] == 1
    with pytest.raises(RuntimeError, match="key_unique"):
        check_contracts(copy)                      # the whole view fails it

    with pytest.raises(RuntimeError, match="key_unique"):
        check_contracts(copy, rulecache.cache_file(home.cache), rulecache.SidecarCounts({}),
                        columncache.cache_file(home.cache), columncache.ColumnValues())


@pytest.mark.xfail(strict=True, reason="dec4f, narrowed: the count cache's sidecar identity has no ctime: a version "
                   "checked again after a sidecar of its own was rewritten in place with its mtime put back keeps its "
                   "recorded counts. A nightly no longer carries such a sidecar into a new version (the next test)")
def test_a_sidecar_rewritten_in_place_with_its_mtime_put_back_is_not_answered_from_the_count_cache(
        tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(nightly.path, copy)
    _check(copy, home)
    sidecar = min(copy.glob("train/pickapic-*.parquet"))
    table = pq.read_table(sidecar)
    sizes = table.column("jpg_0_size").to_pylist()
    _rewrite_in_place(sidecar, table.set_column(table.schema.get_field_index("jpg_0_size"),
                                                table.schema.field("jpg_0_size"),
                                                pa.array([0] + sizes[1:], pa.int64())))
    with pytest.raises(RuntimeError, match="jpgs_not_empty"):
        check_contracts(copy)

    with pytest.raises(RuntimeError, match="jpgs_not_empty"):
        check_contracts(copy, rulecache.cache_file(home.cache), rulecache.SidecarCounts({}),
                        columncache.cache_file(home.cache), columncache.ColumnValues())


@pytest.mark.parametrize("edit", ["duplicate_key", "empty_jpg"])
def test_a_sidecar_changed_in_place_with_its_mtime_put_back_is_not_carried_into_the_next_version(
        tmp_path: Path, edit: str) -> None:
    """December 5: the nightly publish reads back every sidecar it links from an older version and compares it
    with the sha256 the shard's stats (and so the new manifest) give it; one changed in place is not reused,
    its shard is written afresh from the data, and the gate's caches never answer for the changed bytes."""
    home, table, first = _first_night(tmp_path)
    _check(first.path, home)                                       # both caches know every sidecar of it
    sidecar = min(first.path.glob("train/pickapic-*.parquet"))
    tar = sidecar.with_suffix(".tar")
    original = sidecar.read_bytes()
    old = pq.read_table(sidecar)
    if edit == "duplicate_key":
        keys = old.column("key").to_pylist()
        changed = old.set_column(old.schema.get_field_index("key"), old.schema.field("key"),
                                 pa.array([keys[0], keys[0]] + keys[2:], pa.string()))
    else:
        sizes = old.column("jpg_0_size").to_pylist()
        changed = old.set_column(old.schema.get_field_index("jpg_0_size"), old.schema.field("jpg_0_size"),
                                 pa.array([0] + sizes[1:], pa.int64()))
    _rewrite_in_place(sidecar, changed)

    write_split_pairs(home, table)
    nightly = publish_dataset(home, CONFIG)                        # passes its gate: the changed bytes are not in it

    rel = sidecar.relative_to(first.path)
    carried, carried_tar = nightly.path / rel, nightly.path / tar.relative_to(first.path)
    assert carried.exists() and os.stat(carried).st_ino != os.stat(sidecar).st_ino     # written afresh, not linked
    assert carried.read_bytes() == original                        # from the data: the bytes before the edit
    assert carried_tar.read_bytes() == tar.read_bytes() and os.stat(carried_tar).st_ino != os.stat(tar).st_ino
    assert nightly.shards_linked > 0                               # the other unchanged shards are still linked
    verify_version(nightly.path, checksums=True)                   # every file is its manifest's sha256
    assert _values(nightly.contract_results) == _values(check_contracts(nightly.path))   # cached == whole view


def test_a_rule_reading_the_whole_row_is_not_answered_from_the_narrow_view(tmp_path: Path, monkeypatch) -> None:
    home, _, nightly = _nights(tmp_path)
    row = Rule("shard_samples", "rows_not_huge", "no sample row longer than 400 characters",
               "SELECT max(length(concat(shard_samples))) FROM {object}", "mustBeLessThan", 400, True)

    def with_extra(dataset: str):
        contract = real_load_contract(dataset)
        return dataclasses.replace(contract, rules=contract.rules + ((row,) if dataset == "shard_samples" else ()))

    monkeypatch.setattr("pipelines.publish.version.load_contract", with_extra)
    monkeypatch.setattr("pipelines.publish.columncache.load_contract", with_extra)
    views = version_views(nightly.path)
    con = connect(views, uniform=views)
    try:
        full = _values([r for dataset in views for r in evaluate(with_extra(dataset), con)])
    finally:
        con.close()
    assert full["shard_samples.rows_not_huge"] >= 400           # every column of a row: the full scan fails it
    with pytest.raises(RuntimeError, match="rows_not_huge"):
        check_contracts(nightly.path)

    with pytest.raises(RuntimeError, match="rows_not_huge"):
        check_contracts(nightly.path, rulecache.cache_file(home.cache), rulecache.SidecarCounts({}),
                        columncache.cache_file(home.cache), columncache.ColumnValues())
    assert not reads_only_columns(row, "shard_samples", frozenset(columncache.COLUMNS), frozenset(views))
