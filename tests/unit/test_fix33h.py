"""Fix33h: the defects of review rev33h (a full disk and I/O errors, stage by stage), beyond the review's tests.

- `switch_latest` refuses the switch when the record of switched versions cannot be written (an OSError naming it,
  `latest` as it was); something there the tool did not write is still a note (every version counts, no leak); the
  publish then fails naming the record and its rerun switches the version it left in place.
- An EIO syncing the folder after `latest` is renamed is `SwitchNotSynced` (it says the version is live); the publish
  goes on with a note and leaves retention to the next publish.
- `no_space_message`: EDQUOT is a full disk ("disk quota exceeded at PATH"), a two-path call's second path is the file
  named, its own wording and the shards' are read back from a wrapped error's text.
- Errors name their file: an atomic write's fsync, a folder's fsync, a training JPEG, the JPEG digest cache's part,
  the store's writer marker (whose short writes are written on).
"""
from __future__ import annotations

import errno
import io
import os
import types
from pathlib import Path

import pyarrow as pa
import pytest
from test_fix25d import _version
from test_publish_fixtures import make_home

import formats.dataset as dataset_module
from formats.dataset import SwitchNotSynced, latest_version, read_switched, switch_latest, switched_file
from formats.files import atomic_path, naming_full_disk, naming_the_file, no_space_message, write_bytes_atomic
from formats.home import DataHome
from pipelines.features import blobs, storewriters
from pipelines.publish import jpgdigests, shards
from pipelines.publish.__main__ import run as publish_command

V1, V2 = "2023-03-01-aaaaaaaaaa", "2023-03-02-bbbbbbbbbb"


def _two_versions(root: Path) -> DataHome:
    home = DataHome(root / "home")
    home.datasets.mkdir(parents=True)
    _version(home.datasets, V1)
    assert switch_latest(home.datasets, V1, fsync=False) is None
    _version(home.datasets, V2)
    return home


# --------------------------------------------------------------------------- the record of switched versions
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_a_record_that_cannot_be_written_refuses_the_switch(fast_tmp: Path, monkeypatch, code: int) -> None:
    home = _two_versions(fast_tmp)
    record = switched_file(home.datasets)
    before = record.read_bytes()
    real = dataset_module.write_names

    def failing(path, header, names, fsync):
        if Path(path) == record:
            raise OSError(code, os.strerror(code))          # no file name, as a write's error
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", failing)
    with pytest.raises(OSError) as caught:
        switch_latest(home.datasets, V2, fsync=False)
    monkeypatch.undo()
    assert caught.value.errno == code and caught.value.filename == str(record)
    assert "`latest` was not switched" in str(caught.value)
    assert latest_version(home.datasets) == V1 and record.read_bytes() == before
    assert not [p for p in home.datasets.iterdir() if p.name.startswith(".latest.")]
    if code != errno.EIO:
        message = no_space_message(caught.value)
        assert message is not None and f" at {record}" in message
    assert switch_latest(home.datasets, V2, fsync=False) is None      # once it can be written, it is
    assert read_switched(home.datasets) == {V1, V2} and latest_version(home.datasets) == V2


def test_a_foreign_file_at_the_record_is_still_a_note_and_the_switch_goes_on(fast_tmp: Path) -> None:
    home = _two_versions(fast_tmp)
    record = switched_file(home.datasets)
    record.unlink()
    record.write_text("a user's file\n")
    note = switch_latest(home.datasets, V2, fsync=False)
    assert note and "not a record this tool wrote" in note
    assert latest_version(home.datasets) == V2 and record.read_text() == "a user's file\n"


def test_publish_with_its_record_unwritable_fails_naming_it_and_its_rerun_switches(fast_tmp: Path, monkeypatch,
                                                                                   capsys) -> None:
    home = make_home(fast_tmp / "home", num_rankings=30, seed=2)
    record = switched_file(home.datasets)
    real = dataset_module.write_names

    def full(path, header, names, fsync):
        if Path(path) == record:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", full)
    assert publish_command(["--home", str(home.root), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"python -m pipelines.publish: error: no space left on device at {record};"), err
    assert latest_version(home.datasets) is None                   # nothing given to readers
    monkeypatch.undo()
    assert publish_command(["--home", str(home.root), "--workers", "1"]) == 0
    published = latest_version(home.datasets)
    assert published is not None and published in read_switched(home.datasets)


# --------------------------------------------------------------------------- the folder's sync after the switch
def test_an_unsynced_switch_says_the_version_is_live(fast_tmp: Path, monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    real = dataset_module.fsync_dir

    def broken(path, enabled=True, unsupported_ok=False):
        if Path(path) == home.datasets:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path, enabled, unsupported_ok)

    monkeypatch.setattr(dataset_module, "fsync_dir", broken)
    with pytest.raises(SwitchNotSynced) as caught:
        switch_latest(home.datasets, V2, fsync=True)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.EIO
    assert f"`latest` was switched to {V2}" in str(caught.value) and str(home.datasets) in str(caught.value)
    assert latest_version(home.datasets) == V2 and V2 in read_switched(home.datasets)


def test_publish_goes_on_after_an_unsynced_switch_and_leaves_retention(fast_tmp: Path, monkeypatch, capsys) -> None:
    home = make_home(fast_tmp / "home", num_rankings=30, seed=2)
    old = "2020-01-01-0123456789"
    _version(home.datasets, old)            # an older version a publish made: retention (keep 1) would delete it
    real = dataset_module.fsync_dir

    def broken(path, enabled=True, unsupported_ok=False):
        if Path(path) == home.datasets and latest_version(home.datasets) not in (None, old):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path, enabled, unsupported_ok)

    monkeypatch.setattr(dataset_module, "fsync_dir", broken)
    assert publish_command(["--home", str(home.root), "--workers", "1", "--keep-versions", "1"]) == 0
    err = capsys.readouterr().err
    live = latest_version(home.datasets)
    assert live not in (None, old) and f"`latest` was switched to {live} (readers get it now)" in err
    assert "retention is left to the next publish" in err
    assert (home.datasets / old).is_dir()                       # not deleted while the switch may not last


# --------------------------------------------------------------------------- full-disk messages
def test_quota_wording_and_its_round_trip(fast_tmp: Path) -> None:
    target = fast_tmp / "out dir" / "part-0.parquet"
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(target))
    message = no_space_message(quota)
    assert message.startswith(f"disk quota exceeded at {target}; the account's quota") and "bytes free" not in message
    again = no_space_message(RuntimeError(f"step failed: {message}"))     # carried as text: the same path
    assert again.startswith(f"disk quota exceeded at {target};")
    text = RuntimeError(f"step failed: OSError: [Errno 122] Disk quota exceeded: '{target}'")
    assert no_space_message(text).startswith(f"disk quota exceeded at {target};")
    shard = shards.no_space_error(OSError(errno.EDQUOT, "x"), target)
    assert shard.errno == errno.EDQUOT and no_space_message(shard).startswith(f"disk quota exceeded at {target};")
    # a full disk outermost is said as one, whatever is behind it
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    full.__cause__ = quota
    assert no_space_message(full).startswith(f"no space left on device at {target};")


def test_own_wording_read_back_keeps_a_path_with_spaces_and_semicolons(fast_tmp: Path) -> None:
    target = fast_tmp / "a; b" / "c d.tar"
    first = no_space_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)))
    assert no_space_message(first).startswith(f"no space left on device at {target};")
    assert no_space_message(RuntimeError(f"x: {first}\nTraceback ...")).startswith(f"no space left on device at {target};")
    shard_text = RuntimeError(f"publish failed: OSError: [Errno 28] no space left on device at {target}\nmore")
    assert no_space_message(shard_text).startswith(f"no space left on device at {target};")


def test_two_path_text_and_descriptors(fast_tmp: Path) -> None:
    made = fast_tmp / "cache" / "000000.parquet"
    step = RuntimeError(f"failed: OSError: [Errno 28] No space left on device: '/src/a.parquet' -> '{made}'")
    assert no_space_message(step).startswith(f"no space left on device at {made};")
    by_fd = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    by_fd.filename = 7                                               # an fd, not a path: falls back to where
    assert no_space_message(by_fd, [fast_tmp]).startswith(f"no space left on device at {fast_tmp};")


# --------------------------------------------------------------------------- errors name their file
def test_naming_full_disk_keeps_quota_and_leaves_other_errors_of_a_body(fast_tmp: Path) -> None:
    target = fast_tmp / "t.parquet"
    with pytest.raises(OSError) as caught, naming_full_disk(target):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert caught.value.errno == errno.EDQUOT and caught.value.filename == str(target)
    with pytest.raises(OSError) as caught, atomic_path(target):
        raise OSError(errno.EIO, "reading an input")                  # the body's own: not said to be the target's
    assert caught.value.filename is None and os.listdir(fast_tmp) == []
    named = fast_tmp / "input.parquet"
    with pytest.raises(FileNotFoundError) as caught, naming_the_file(target):
        raise FileNotFoundError(errno.ENOENT, "gone", str(named))     # names its file already: left as it is
    assert caught.value.filename == str(named)


def test_atomic_write_full_at_the_sync_names_the_file_and_keeps_the_old_one(fast_tmp: Path, monkeypatch) -> None:
    target = fast_tmp / "record.json"
    target.write_bytes(b"old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        write_bytes_atomic(target, b"new\n")
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"old\n" and os.listdir(fast_tmp) == ["record.json"]


def test_fsync_dir_still_passes_an_unsupported_folder_sync(fast_tmp: Path, monkeypatch) -> None:
    def unsupported(fd):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "fsync", unsupported)
    dataset_module.fsync_dir(fast_tmp, unsupported_ok=True)
    with pytest.raises(OSError) as caught:
        dataset_module.fsync_dir(fast_tmp)
    assert caught.value.errno == errno.EINVAL and caught.value.filename == str(fast_tmp)


def test_jpeg_store_io_error_names_the_jpeg_and_a_rewrite_succeeds(fast_tmp: Path, monkeypatch) -> None:
    real_file_io = io.FileIO

    class BrokenFileIO(real_file_io):
        def write(self, data):
            if "w" in self.mode:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return super().write(data)

    monkeypatch.setattr(blobs, "io", types.SimpleNamespace(FileIO=BrokenFileIO))
    store, key, data = fast_tmp / "store", "blobs/train/s256q90/cd/cdef.jpg", b"\xff\xd8" + b"y" * 100 + b"\xff\xd9"
    with pytest.raises(OSError) as caught:
        blobs.write_blob_atomic(str(store), key, data)
    monkeypatch.undo()
    assert caught.value.errno == errno.EIO and caught.value.filename == str(store / key)
    assert os.listdir(store / "blobs/train/s256q90/cd") == []
    blobs.write_blob_atomic(str(store), key, data)
    assert (store / key).read_bytes() == data


def test_digest_cache_note_names_the_part(fast_tmp: Path, monkeypatch) -> None:
    home = DataHome(fast_tmp / "home")
    home.root.mkdir()

    def full(*args, **kwargs):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")   # Arrow's

    monkeypatch.setattr(jpgdigests.pq, "write_table", full)
    with jpgdigests._Cache(home) as cache:
        cache.record(pa.table({"key": ["blobs/train/a.jpg"]}), merge=False)
    monkeypatch.undo()
    assert len(cache.notes) == 1
    assert f"{jpgdigests.cache_dir(home)}/part-000000-" in cache.notes[0] and "No space left" in cache.notes[0]
    assert [p for p in jpgdigests.cache_dir(home).iterdir()] == []    # no temporary file left


def test_store_marker_short_writes_are_written_on(fast_tmp: Path, monkeypatch) -> None:
    real = os.write
    calls = []

    def one_byte(fd, data):
        calls.append(len(data))
        return real(fd, bytes(data[:1]))

    monkeypatch.setattr(storewriters.os, "write", one_byte)
    store = fast_tmp / "store"
    store.mkdir()
    storewriters._record_in(str(store), fast_tmp / "home")
    monkeypatch.undo()
    marker = store / storewriters.WRITERS / storewriters.home_digest(fast_tmp / "home")
    assert marker.read_bytes() == storewriters._MARKER_TEXT and len(calls) == len(storewriters._MARKER_TEXT)
    assert sorted(p.name for p in marker.parent.iterdir()) == [marker.name]


def test_store_marker_full_disk_names_the_marker(fast_tmp: Path, monkeypatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storewriters.os, "write", full)
    store = fast_tmp / "store"
    store.mkdir()
    with pytest.raises(OSError) as caught:
        storewriters._record_in(str(store), fast_tmp / "home")
    monkeypatch.undo()
    marker = store / storewriters.WRITERS / storewriters.home_digest(fast_tmp / "home")
    assert f"no space left on device at {marker};" in no_space_message(caught.value)
    assert list(marker.parent.iterdir()) == []
