"""``formats.files.open_regular_file``: only regular files are read; a FIFO is never waited on."""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

import pytest

from formats.files import open_regular_file, sha256_file
from pipelines.publish import shards
from pipelines.publish.chunkwriter import ChunkWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit is not a package: reach tests/
from tests.fifos import fifo_that_fails_not_hangs  # noqa: E402


def test_a_regular_file_and_a_link_to_one_are_read(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    for name in ("f", "link"):
        with open_regular_file(tmp_path / name) as handle:
            assert handle.readall() == b"abc"
    assert sha256_file(tmp_path / "link") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "link to a device"])
def test_anything_else_is_refused_without_reading_or_waiting(tmp_path, kind) -> None:
    path = tmp_path / "x.jpg"
    if kind == "folder":
        path.mkdir()
    elif kind == "device":
        path = "/dev/null"
    elif kind == "link to a device":
        path.symlink_to("/dev/null")       # /dev/zero would never end; /dev/null: a regression fails, not hangs
    with fifo_that_fails_not_hangs(path) if kind == "fifo" else contextlib.nullcontext():
        with pytest.raises(OSError, match="not a regular file") as caught:
            open_regular_file(path)
        assert caught.value.errno == errno.EINVAL
        with pytest.raises(OSError, match="not a regular file"):
            sha256_file(path)
        if kind != "device":
            # the shard writer's read: a FIFO swapped into the blob store after the digest step
            with ChunkWriter(-1) as out, pytest.raises(
                    FileNotFoundError, match=r"sample 'k': cannot read training JPEG 'x.jpg': .*not a regular file"):
                shards._read_jpg_into(out, str(tmp_path), "x.jpg", "k")


def test_no_descriptor_is_left_open(tmp_path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(OSError):
            open_regular_file(path)
    assert len(os.listdir("/proc/self/fd")) == before
