"""Hostile review of the nightly publish (December 4, 2026, fourth round): defects confirmed, each
reproduced here and marked ``xfail(strict=True)``: the test passes while the defect is there and
fails (XPASS) the day it is fixed; then drop the mark.

Every home is built under ``tmp_path``; every planted link points at a folder under ``tmp_path``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import _jpeg, export_days, history_home, publish_until, write_split_pairs

from formats.dataset import LATEST, list_versions
from formats.home import DataHome
from pipelines import faults
from pipelines.publish import jpgdigests
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import staging_root
from tests.inplace import rewrite_in_place

DAYS = 4
CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)
CHECKED = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, verify_checksums=True)


def _victim(root: Path) -> Path:
    """Someone else's folder outside the data home, with a hidden file and a plain one."""
    victim = root / "victim"
    victim.mkdir()
    (victim / ".keep").write_text("mine")
    (victim / "notes.txt").write_text("mine")
    return victim


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _crashed_nightly(monkeypatch, home: DataHome, table: pa.Table) -> Path:
    """A nightly killed after its shards were committed: its ``.partial-<version>`` staging stays."""
    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        publish_until(home, table)
    monkeypatch.undo()
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    return staging


def _digest_mismatches(version: Path) -> list[tuple[str, str, int]]:
    """Sidecar rows whose ``jpg_N_sha256`` is not the sha256 of the bytes at ``jpg_N_offset`` in the tar."""
    bad = []
    for sidecar in sorted(version.glob("*/pickapic-*.parquet")):
        tar = sidecar.with_suffix(".tar").read_bytes()
        for row in pq.read_table(sidecar).to_pylist():
            for side in (0, 1):
                start, size = row[f"jpg_{side}_offset"], row[f"jpg_{side}_size"]
                if hashlib.sha256(tar[start:start + size]).hexdigest() != row[f"jpg_{side}_sha256"]:
                    bad.append((sidecar.name, row["key"], side))
    return bad


# --------------------------------------------------------------------------- staging followed through links
def test_a_staging_folder_replaced_by_a_link_is_not_followed(tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])
    staging = _crashed_nightly(monkeypatch, home, full)
    version = staging.name[len(".partial-"):]
    victim = _victim(tmp_path)
    before = _listing(victim)
    shutil.rmtree(staging)
    os.symlink(victim, staging)

    with contextlib.suppress(Exception):   # refusing is fine; following the link is not
        publish_until(home, full)

    assert _listing(victim) == before, "the publish wrote or deleted files in a folder outside the home"
    assert not (home.datasets / version).is_symlink(), "latest's version is a link out of the data home"


def test_a_split_folder_of_a_staging_replaced_by_a_link_gets_no_files(tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])
    staging = _crashed_nightly(monkeypatch, home, full)
    victim = _victim(tmp_path)
    before = _listing(victim)
    shutil.rmtree(staging / "validation")
    os.symlink(victim, staging / "validation")

    with contextlib.suppress(Exception):
        publish_until(home, full)

    assert _listing(victim) == before, (
        f"the rerun wrote {sorted(set(_listing(victim)) - set(before))[:3]} into a folder outside the home")


@pytest.mark.parametrize("planted", [".partial-someone link", ".partial-someone file", ".deleting-someone link"])
def test_a_stray_non_folder_named_like_staging_does_not_stop_every_publish(tmp_path: Path, planted: str) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])
    victim = _victim(tmp_path)
    before = _listing(victim)
    name, kind = planted.split()
    if kind == "link":
        os.symlink(victim, home.datasets / name)
    else:
        (home.datasets / name).write_text("someone's notes")

    try:
        nightly = publish_until(home, full)
        published = nightly.version
    except Exception as exc:   # noqa: BLE001 - the property is that the nightly is published
        published = f"publish failed: {type(exc).__name__}: {exc}"

    assert published in list_versions(home) and os.readlink(home.datasets / LATEST) == published
    assert _listing(victim) == before


# --------------------------------------------------------------------------- the JPEG digests
def test_a_jpeg_replaced_during_the_publish_does_not_publish_a_wrong_digest(tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)
    key = full.column("jpg_0_key")[0].as_py()
    real = jpgdigests.index_jpgs

    def then_replace(*args, **kwargs):
        index = real(*args, **kwargs)
        blob = home.root / key
        tmp = blob.with_name(".replacement")
        tmp.write_bytes(_jpeg(random.Random(99)))   # a concurrent writer: a new file renamed in
        os.replace(tmp, blob)
        return index

    monkeypatch.setattr(jpgdigests, "index_jpgs", then_replace)
    with contextlib.suppress(Exception):   # refusing is fine; publishing a lie is not
        publish_dataset(home, CHECKED)

    latest = home.datasets / LATEST
    mismatches = _digest_mismatches(latest.resolve()) if latest.exists() else []
    assert mismatches == [], f"sidecar jpg sha256 differ from the tar bytes: {mismatches[:3]}"


def test_a_damaged_jpeg_digest_cache_is_treated_as_empty(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])
    (part,) = sorted(jpgdigests.cache_dir(home).glob("part-*.parquet"))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])

    scratch, _ = history_home(tmp_path / "scratch")
    expected = publish_until(scratch, full).version
    try:
        published = publish_until(home, full).version
    except Exception as exc:   # noqa: BLE001
        published = f"publish failed: {type(exc).__name__}: {str(exc)[:120]}"
    assert published == expected


def test_the_jpeg_digest_cache_never_changes_a_published_byte(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])              # fills cache/train_jpg_sha256
    blob = home.root / full.column("jpg_0_key")[0].as_py()
    before = os.stat(blob)
    data = bytearray(blob.read_bytes())
    data[200] ^= 0xFF
    rewrite_in_place(blob, bytes(data), before)           # in place: same inode, same size, mtime put back

    with_cache = publish_until(home, full)
    cached_version, cached_mismatches = with_cache.version, _digest_mismatches(with_cache.path)
    shutil.rmtree(jpgdigests.cache_dir(home))
    shutil.rmtree(home.datasets)
    without_cache = publish_until(home, full)
    assert (cached_version, cached_mismatches) == (without_cache.version, [])


# --------------------------------------------------------------------------- retention and modes
def test_retention_keeps_the_newest_versions_after_the_clock_went_backwards(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h", days=5, rankings=100)
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=3)
    first = publish_until(home, full, config, last_day=days[-4])
    second = publish_until(home, full, config, last_day=days[-3])
    third = publish_until(home, full, config, last_day=days[-2])
    behind = os.lstat(first.path).st_mtime_ns - 86_400 * 10**9  # night 3 ran with the clock a day behind
    os.utime(third.path, ns=(behind, behind))
    fourth = publish_until(home, full, config)

    assert list_versions(home) and set(list_versions(home)) == {second.version, third.version, fourth.version}, (
        f"deleted {fourth.deleted_versions}")


def test_publishing_an_existing_version_again_gives_it_this_runs_umask(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)
    old = os.umask(0o077)
    try:
        publish_dataset(home, CONFIG)
    finally:
        os.umask(0o022)
    try:
        again = publish_dataset(home, CONFIG)
    finally:
        os.umask(old)
    unreadable = sorted(str(p.relative_to(again.path)) for p in [again.path, *again.path.rglob("*")]
                        if not os.lstat(p).st_mode & stat.S_IROTH)
    assert again.reused and unreadable == []


# --------------------------------------------------------------------------- cache folders through links
@pytest.mark.parametrize(("folder", "note"), [("contract_counts", "contract_counts_note"),
                                             ("contract_columns", "contract_columns_note")])
def test_a_linked_contract_cache_folder_is_not_written_through(tmp_path: Path, folder: str, note: str) -> None:
    """The gate's caches made ``cache/<folder>`` with ``mkdir(exist_ok=True)`` and renamed their file into it: a
    symlink planted as that folder was followed, and a ``shard_samples.parquet`` in the link's target (not the
    tool's) was replaced. Now the publish goes on, writes nothing there, and its report says why."""
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)
    victim = _victim(tmp_path)
    (victim / "shard_samples.parquet").write_text("someone's file")
    before = _listing(victim)
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, home.cache / folder)

    report = publish_dataset(home, CONFIG)

    assert _listing(victim) == before
    assert "symbolic link" in getattr(report, note)
    assert all(r.passed for r in report.contract_results)


def test_a_linked_jpeg_digest_cache_folder_is_not_written_through(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)
    victim = _victim(tmp_path)
    before = _listing(victim)
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, jpgdigests.cache_dir(home))

    with contextlib.suppress(Exception):
        publish_dataset(home, CONFIG)

    assert _listing(victim) == before
