"""fix38a (noticed): a version's ``manifest.json`` (and a split's ``sizes.json``) was read whole, with no size limit,
by every reader of a version, retention among them, which reads the manifest of every complete-looking folder a
user left beside the versions. A planted (or symlinked) multi-GB manifest cost memory growing with it. Now they are
read through :func:`formats.files.read_limited`: refused from the open file's size before a byte is read, at most
the limit plus one byte read (a file growing meanwhile), never a FIFO waited on or a device read.

Memory is measured with ``tracemalloc`` (what Python allocated while reading), never time. The large files are
sparse (``truncate``): they take no disk."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tracemalloc
from pathlib import Path
from typing import Callable, Iterator

import pytest

from formats import dataset, files
from formats.home import DataHome

A = "2023-03-01-0123456789"
LIMIT = getattr(dataset, "MANIFEST_MAX_BYTES", 256 << 20)   # the code before the fix had no limit
SMALL = 4 << 20                                               # what any refusal may allocate, far below LIMIT


def _sparse_json(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (sparse: no disk) that begins as a manifest: a valid JSON prefix, zeros after."""
    path.write_bytes(b'{"version": "x", "files": {}, "pad": "')
    os.truncate(path, size)
    return path


def _planted(datasets: Path, size: int = LIMIT + 1) -> Path:
    """A folder named like a version beside the versions, with a ``train`` shard and a huge manifest."""
    folder = datasets / A
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    _sparse_json(folder / dataset.MANIFEST_FILE, size)
    return folder


def _peak(call: Callable[[], object]) -> tuple[object, int]:
    """(what ``call`` returned or raised, the most bytes Python held meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result: object = call()
        except Exception as exc:       # noqa: BLE001 - the caller asserts what it is
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def _no_hang(seconds: int = 20) -> Iterator[None]:
    """Fail (not hang) if the body blocks: a FIFO opened or read without O_NONBLOCK waits for a writer forever."""
    def stop(*_: object) -> None:
        raise AssertionError("blocked: a FIFO was waited on")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- the manifest reader
def test_a_planted_manifest_over_the_limit_is_refused_unread_naming_the_path_and_the_limit(tmp_path: Path) -> None:
    folder = _planted(tmp_path)
    result, peak = _peak(lambda: dataset.read_manifest(folder))
    assert peak < SMALL, f"read_manifest held {peak} bytes for a {LIMIT + 1}-byte manifest: read whole"
    assert isinstance(result, ValueError)
    assert str(folder / dataset.MANIFEST_FILE) in str(result) and str(LIMIT) in str(result)


def test_a_symlinked_manifest_to_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    folder = tmp_path / A
    folder.mkdir()
    huge = _sparse_json(tmp_path / "elsewhere.json", 8 * LIMIT)
    os.symlink(huge, folder / dataset.MANIFEST_FILE)
    result, peak = _peak(lambda: dataset.read_manifest(folder))
    assert peak < SMALL
    assert isinstance(result, ValueError) and str(folder / dataset.MANIFEST_FILE) in str(result)


def test_a_manifest_at_the_limit_is_still_read(tmp_path: Path) -> None:
    """The limit refuses only what is larger: a manifest of exactly the limit (padded with spaces) is read."""
    folder = tmp_path / A
    folder.mkdir()
    body = json.dumps({"version": A, "files": {"train/a.tar": {"bytes": 1, "sha256": "x"}}}).encode()
    (folder / dataset.MANIFEST_FILE).write_bytes(body + b" " * (LIMIT - len(body)))
    assert dataset.read_manifest(folder)["files"] == {"train/a.tar": {"bytes": 1, "sha256": "x"}}


def test_the_limit_covers_a_pick_a_pic_v2_size_manifest_with_headroom() -> None:
    """The derivation the code documents: ~26,000 shards of 3 files at <= 172 bytes a line (a Pick-a-Pic v2-size
    version) is far below the limit, and so is every shard at the 256 KiB floor of the shard limits."""
    from pipelines.publish.manifest import manifest_text

    line_bytes = len(manifest_text({"files": {
        "test_unique/pickapic-test_unique-20230304-9ca2aa3223_stats.json":
            {"bytes": 256 << 20, "sha256": hashlib.sha256(b"").hexdigest()}}}).splitlines()[1]) + 2
    assert line_bytes <= 172
    assert 10 * 26_000 * 3 * line_bytes < LIMIT
    assert (100 << 30) // (256 << 10) * 3 * line_bytes < LIMIT


# --------------------------------------------------------------------------- the shared bounded reader
def test_read_limited_refuses_a_fifo_without_waiting_and_a_device_through_a_link(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    os.symlink("/dev/zero", zero)
    with _no_hang():
        for path in (fifo, zero):
            with pytest.raises(ValueError, match="not a regular file") as caught:
                files.read_limited(path, 1 << 10)
            assert str(path) in str(caught.value)
            assert files.read_small_file(path, 1 << 10) is None
        folder = tmp_path / A
        folder.mkdir()
        os.symlink(fifo, folder / dataset.MANIFEST_FILE)     # is_file() follows it: no manifest there
        with pytest.raises(FileNotFoundError):
            dataset.read_manifest(folder)


def test_read_limited_reads_at_most_one_byte_past_the_limit_of_a_file_larger_than_it_says() -> None:
    """``/proc/self/status`` is a regular file whose size reads 0 (as a file growing after the size check): the
    read stops at limit + 1 bytes and the file is refused."""
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(ValueError, match="grew past the 16 bytes"):
        files.read_limited("/proc/self/status", 16)
    assert files.read_limited("/proc/self/status", 1 << 20).startswith(b"Name:")


def test_read_small_file_still_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"{}")
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert files.read_small_file(tmp_path / "real", 2) == b"{}"
    assert files.read_small_file(tmp_path / "real", 1) is None
    assert files.read_small_file(tmp_path / "link", 2) is None
    assert files.read_limited(tmp_path / "link", 2) == b"{}"                 # read_manifest's reading: a link followed
    with pytest.raises(OSError):
        files.read_limited(tmp_path / "link", 2, follow_symlinks=False)


# --------------------------------------------------------------------------- every caller
def test_retention_leaves_a_planted_folder_with_a_huge_manifest_and_names_it(tmp_path: Path) -> None:
    from pipelines.publish import versions

    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    folder = _planted(home.datasets)
    notes: list[str] = []
    result, peak = _peak(lambda: versions.apply_retention(home, 1, notes))
    assert result == [] and peak < SMALL
    assert folder.is_dir() and len(notes) == 1
    assert "not a version a publish made" in notes[0] and str(LIMIT) in notes[0]


def test_the_publish_side_readers_take_a_planted_huge_manifest_for_an_unreadable_one(tmp_path: Path) -> None:
    from pipelines.publish import reuse, rulecache, version, versions

    folder = _planted(tmp_path)
    for call, expected in ((lambda: reuse.read_manifest(folder), {}),             # reuse, meta: nothing to reuse
                           (lambda: rulecache.version_sidecars(folder), None),    # the gate's rule cache: no cache
                           (lambda: version._reversible(folder), None)):          # the pseudonym note: nothing known
        result, peak = _peak(call)
        assert result == expected and peak < SMALL
    why, peak = _peak(lambda: versions.made_by_publish(folder))
    assert isinstance(why, str) and "cannot be read" in why and peak < SMALL
    with pytest.raises(versions.StagingRefused, match=str(LIMIT)):
        versions.check_version_identity(folder, {"version": A})


def test_the_trainer_and_the_query_name_the_path_of_a_huge_manifest(tmp_path: Path) -> None:
    from pipelines.query.engine import QueryFailed, _listed_tables
    from training import data

    folder = _planted(tmp_path)
    path = str(folder / dataset.MANIFEST_FILE)
    for call, error in ((lambda: data.shard_digests([folder / "train" / "a.tar"]), ValueError),
                        (lambda: data.check_split(folder, "train"), ValueError),
                        (lambda: _listed_tables(folder), QueryFailed)):
        result, peak = _peak(call)
        assert isinstance(result, error) and path in str(result) and str(LIMIT) in str(result) and peak < SMALL


def test_a_planted_huge_sizes_json_is_refused_unread(tmp_path: Path) -> None:
    folder = tmp_path / A
    (folder / "train").mkdir(parents=True)
    sizes = _sparse_json(folder / "train" / dataset.SIZES_FILE, LIMIT + 1)
    files = {"train/sizes.json": {"bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}}
    result, peak = _peak(lambda: dataset.read_sizes(folder / "train", files))
    assert peak < SMALL
    assert isinstance(result, dataset.ChecksumError) and str(sizes) in str(result)
    sizes.unlink()
    sizes.write_bytes(b"{}")
    assert dataset.read_sizes(folder / "train", files) == {}
