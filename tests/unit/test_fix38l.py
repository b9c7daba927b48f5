"""fix38l: the fixes of review rev38d and of what it noticed.

- The publish refuses a version whose ``manifest.json`` would pass ``MANIFEST_MAX_BYTES`` (what every reader of a
  manifest accepts): from the shard plan before any shard is written (the least the shards' lines take), and on
  the exact text before the manifest is written; the error gives the limit and names the knobs. A manifest of
  exactly the limit still publishes.
- ``read_sizes`` reads no more of a ``sizes.json`` than the manifest records (a planted larger one is refused
  before it is read; a shorter one by its size, not its sha256).
- ``read_limited`` reads a regular file blocking, and a read answering "try again" (``FileIO.read`` -> None,
  a FUSE file honouring ``O_NONBLOCK``) is an OSError, never the end of the file (the bytes so far were returned).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import termios
import threading
import tracemalloc
from pathlib import Path
from typing import Iterator

import pytest
from test_publish_fixtures import make_home

from formats import dataset, files
from formats.dataset import ChecksumError, read_sizes
from pipelines.publish import manifest as manifest_module
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig

CONFIG = PublishConfig(workers=1, fsync=False)


def _limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    for module in (dataset, manifest_module):
        monkeypatch.setattr(module, "MANIFEST_MAX_BYTES", limit)


def _publish(root: Path) -> Path:
    """A publish of the seeded home under ``root``; its version folder."""
    return version_module.publish_dataset(make_home(root, num_rankings=80, seed=3), CONFIG).path


@pytest.fixture(scope="module")
def published_size(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The bytes of the manifest the seeded home's publish writes (the same inputs give the same bytes)."""
    return (_publish(tmp_path_factory.mktemp("sized") / "home") / dataset.MANIFEST_FILE).stat().st_size


def test_a_plan_whose_manifest_cannot_fit_is_refused_before_any_shard_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _limit(monkeypatch, 4096)                         # the 20 shards' 60 lines alone take ~9.5 KB
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    with pytest.raises(manifest_module.ManifestTooLarge) as caught:
        version_module.publish_dataset(home, CONFIG)
    message = str(caught.value)
    assert "would hold at least" in message and "listing 20 shards" in message, message
    assert "4096" in message and "publish.shards_per_day (now 64)" in message, message
    assert "publish.min_shard_bytes (now 262144)" in message, message
    written = [p for p in home.datasets.rglob("*") if p.name.endswith((".tar", dataset.STATS_SUFFIX))]
    assert written == []
    assert not dataset.latest_link(home).exists()


def test_a_manifest_past_the_limit_by_its_exact_text_is_never_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, published_size: int) -> None:
    """The plan's least (~9.5 KB) fits, the whole text does not: refused before ``manifest.json`` is written."""
    _limit(monkeypatch, published_size - 1)
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    with pytest.raises(manifest_module.ManifestTooLarge) as caught:
        version_module.publish_dataset(home, CONFIG)
    message = str(caught.value)
    assert f"holds {published_size:,} bytes" in message and str(published_size - 1) in message, message
    assert list(home.datasets.rglob(dataset.MANIFEST_FILE)) == []
    assert not dataset.latest_link(home).exists()


def test_a_manifest_of_exactly_the_limit_publishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   published_size: int) -> None:
    _limit(monkeypatch, published_size)
    path = _publish(tmp_path / "home")
    assert (path / dataset.MANIFEST_FILE).stat().st_size == published_size
    assert dataset.read_manifest(path)["version"] == path.name


def test_the_plan_check_counts_no_more_than_the_manifest_writes(tmp_path: Path) -> None:
    """The least the plan's lines take is at most what those lines take in the written manifest."""
    path = _publish(tmp_path / "home")
    listed = dataset.read_manifest(path)["files"]
    shards = sorted({rel.rsplit(".", 1)[0] for rel in listed if rel.endswith(".tar")})
    tasks = [type("Task", (), {"split": rel.split("/")[0], "name": rel.split("/")[1]}) for rel in shards]
    shard_files = {rel: info for rel, info in listed.items()
                   if any(rel.startswith(shard + ext) for shard in shards
                          for ext in (".tar", ".parquet", dataset.STATS_SUFFIX))}
    assert len(shard_files) == 3 * len(tasks) == 60
    written = len(manifest_module.manifest_text({"files": shard_files}))
    manifest_module.check_manifest_room(path.name, tasks, CONFIG)     # fits the real limit
    for limit, refused in ((written, False), (written // 2, True)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(manifest_module, "MANIFEST_MAX_BYTES", limit)
            if refused:
                with pytest.raises(manifest_module.ManifestTooLarge):
                    manifest_module.check_manifest_room(path.name, tasks, CONFIG)
            else:
                manifest_module.check_manifest_room(path.name, tasks, CONFIG)


# --------------------------------------------------------------------------- read_sizes
def _sizes_version(root: Path) -> tuple[Path, dict]:
    """A split folder with a ``sizes.json`` and the manifest ``files`` that list it."""
    split_dir = root / "2023-03-01-0123456789" / "train"
    split_dir.mkdir(parents=True)
    data = json.dumps({"pickapic-train-20230301-0000000000.tar": 7}).encode()
    (split_dir / dataset.SIZES_FILE).write_bytes(data)
    return split_dir, {f"train/{dataset.SIZES_FILE}": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}


def test_read_sizes_reads_the_file_the_manifest_lists(tmp_path: Path) -> None:
    split_dir, listed = _sizes_version(tmp_path)
    assert read_sizes(split_dir, listed) == {"pickapic-train-20230301-0000000000.tar": 7}


def test_read_sizes_refuses_a_larger_planted_file_before_reading_it(tmp_path: Path) -> None:
    split_dir, listed = _sizes_version(tmp_path)
    planted = 8 << 20
    (split_dir / dataset.SIZES_FILE).write_bytes(b" " * planted)
    tracemalloc.start()
    try:
        with pytest.raises(ChecksumError, match="more than the 45 such a file may: not read"):
            read_sizes(split_dir, listed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < planted // 8, peak


def test_read_sizes_refuses_a_shorter_file_by_its_size(tmp_path: Path) -> None:
    split_dir, listed = _sizes_version(tmp_path)
    (split_dir / dataset.SIZES_FILE).write_bytes(b"{}")
    with pytest.raises(ChecksumError, match="has 2 bytes but its manifest.json records 45"):
        read_sizes(split_dir, listed)


def test_read_sizes_still_checks_the_sha256_of_a_same_size_edit(tmp_path: Path) -> None:
    split_dir, listed = _sizes_version(tmp_path)
    path = split_dir / dataset.SIZES_FILE
    path.write_bytes(path.read_bytes().replace(b"7", b"9"))
    with pytest.raises(ChecksumError, match="has sha256"):
        read_sizes(split_dir, listed)


# --------------------------------------------------------------------------- read_limited, "try again"
@pytest.fixture
def fifo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, int]]:
    """A FIFO that ``read_limited`` takes for a regular file, and a descriptor writing to it: the kernel's stand-in
    for a FUSE file honouring ``O_NONBLOCK`` (a read of it with nothing there answers "try again"). A reader is
    held open meanwhile (a write with none fails), reading nothing."""
    path = tmp_path / "manifest.json"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)       # so the writer's open does not wait
    writer = os.open(path, os.O_WRONLY)
    monkeypatch.setattr(stat, "S_ISREG", lambda mode: True)
    try:
        yield path, writer
    finally:
        os.close(reader)
        with contextlib.suppress(OSError):
            os.close(writer)


def test_read_limited_takes_try_again_for_an_error_not_the_end(fifo: tuple[Path, int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, writer = fifo
    monkeypatch.setattr(os, "set_blocking", lambda fd, blocking: None)   # a descriptor left non-blocking
    os.write(writer, b'{"files": {}')                   # the writer holds it open: more may come
    with pytest.raises(OSError) as caught:
        files.read_limited(path, 1 << 20)
    assert caught.value.errno == errno.EAGAIN and caught.value.filename == str(path)


def test_read_limited_waits_for_the_rest_of_a_file(fifo: tuple[Path, int]) -> None:
    """The descriptor is made blocking once the file is known regular: a read that would answer "try again" waits
    for the bytes. The writer writes the rest once the first part is read (nothing left in the pipe)."""
    path, writer = fifo
    os.write(writer, b'{"files": ')

    def rest() -> None:
        while struct.unpack("i", fcntl.ioctl(writer, termios.FIONREAD, b"\0\0\0\0"))[0]:
            os.sched_yield()
        os.write(writer, b"{}}")
        os.close(writer)

    thread = threading.Thread(target=rest)
    thread.start()
    try:
        assert files.read_limited(path, 1 << 20) == b'{"files": {}}'
    finally:
        thread.join()
