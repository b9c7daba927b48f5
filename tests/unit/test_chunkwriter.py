"""``pipelines.publish.chunkwriter``: the bytes on disk are what was appended, direct or not, whatever the kernel says."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import random

import pytest

from pipelines.publish import chunkwriter
from pipelines.publish.chunkwriter import ALIGN, ChunkWriter


def _takes_direct(folder) -> bool:
    """Whether the file system under ``folder`` opens files with O_DIRECT (asked without the code under test)."""
    try:
        os.close(os.open(folder / ".probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
        return True
    except OSError:
        return False


def _is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _append(out: ChunkWriter, pieces: list[bytes | io.BytesIO]) -> None:
    """Bytes as they are, files read in with a one-block gap before them (where a tar header goes)."""
    for piece in pieces:
        if isinstance(piece, bytes):
            out.add_bytes(piece)
        else:
            size = len(piece.getbuffer())
            out.reserve(512 + size + 512)
            got = out.add_file(piece.readinto, 512, size)
            out.view[out.fill:out.fill + 512] = b"H" * 512
            out.advance(512 + got)
        out.maybe_write()


def _expected(pieces) -> bytes:
    return b"".join(p if isinstance(p, bytes) else b"H" * 512 + p.getvalue() for p in pieces)


def _pieces(seed: int, count: int = 60) -> list[bytes | io.BytesIO]:
    rng = random.Random(seed)
    out: list[bytes | io.BytesIO] = []
    for _ in range(count):
        data = rng.randbytes(rng.choice([0, 1, 511, 512, 4095, 70_000, 300_000]))
        out.append(io.BytesIO(data) if rng.random() < 0.5 else data)
    return out


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("tail", [0, 512, 100])   # the file ends on a page, on a sector, on neither
def test_the_file_holds_what_was_appended(tmp_path, monkeypatch, direct, tail) -> None:
    pieces = _pieces(1)
    pieces.append(b"t" * (-len(_expected(pieces)) % ALIGN + tail))
    expected = _expected(pieces)
    real_write = os.write
    calls = []    # (bytes asked, O_DIRECT on)

    def watched_write(fd, data):
        if fd == target:
            calls.append((len(data), _is_direct(fd)))
        return real_write(fd, data)

    monkeypatch.setattr(chunkwriter.os, "write", watched_write)
    written = []
    target = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with ChunkWriter(target, direct, lambda offset, length: written.append((offset, length))) as out:
            _append(out, pieces)
            assert out.position == len(expected)
            size, digest = out.close()
        assert not _is_direct(target)       # switched off again for whoever writes next
    finally:
        os.close(target)
    assert (size, digest) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert (tmp_path / "f").read_bytes() == expected
    assert len(calls) > 2
    if direct and _takes_direct(tmp_path):
        if tail == 100:
            # a tail that is not a whole sector is refused by O_DIRECT (EINVAL): it alone goes through the page cache
            assert calls[-2:] == [(100, True), (100, False)] and all(on for _, on in calls[:-1])
            assert written == [(size - 100, 100)]
        else:
            assert all(on for _, on in calls) and written == []
    else:
        assert not any(on for _, on in calls)
        assert sum(n for _, n in written) == size and written[0][0] == 0


def test_a_refused_direct_write_midway_goes_on_through_the_page_cache(tmp_path, monkeypatch) -> None:
    """EINVAL from a direct write (a device with bigger blocks, a file system that changes its mind):
    the same bytes are written again through the page cache, and the rest of the file too."""
    pieces = _pieces(2, count=200)
    pieces.append(b"t" * (-len(_expected(pieces)) % ALIGN))    # whole pages: only the planted refusal
    expected = _expected(pieces)
    real_write = os.write
    calls = []

    def picky_write(fd, data):
        if fd == target:
            calls.append(_is_direct(fd))
            if calls[-1] and len(calls) == 3:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(chunkwriter.os, "write", picky_write)
    target = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with ChunkWriter(target, True) as out:
            _append(out, pieces)
            assert out.close() == (len(expected), hashlib.sha256(expected).hexdigest())
        assert not out.direct and not _is_direct(target)
    finally:
        os.close(target)
    assert (tmp_path / "f").read_bytes() == expected
    if _takes_direct(tmp_path):
        assert calls[:4] == [True, True, True, False] and len(calls) > 5 and not any(calls[4:])


def test_a_file_system_without_o_direct_gets_buffered_writes(tmp_path, monkeypatch) -> None:
    real_fcntl = fcntl.fcntl

    def no_direct(fd, command, arg=0):
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(chunkwriter.fcntl, "fcntl", no_direct)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert chunkwriter.set_direct(fd, True) is False
        with ChunkWriter(fd, True) as out:
            assert not out.direct
            out.add_bytes(b"abc" * 1000)
            out.close()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abc" * 1000


def test_other_write_errors_are_raised_and_the_buffer_is_kept(tmp_path, monkeypatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with ChunkWriter(fd, True) as out:
            buffer = out._buffer
            monkeypatch.setattr(chunkwriter.os, "write", full)
            with pytest.raises(OSError) as caught:
                _append(out, [bytes(chunkwriter.CHUNK + 10)])   # fits the buffer: a write is due
            assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with ChunkWriter(-1) as again:
        assert again._buffer is buffer and not buffer.closed     # given back by the context manager, reused by the next writer


@pytest.mark.parametrize("actual,hint", [(9 << 20, 9 << 20), (9 << 20, 0), (3000, 100_000), (100_000, 3000)])
def test_a_file_bigger_than_the_buffer_or_than_its_size_said(tmp_path, actual, hint) -> None:
    """A member larger than the buffer grows it (kept whole, its header in front); a file that grew or
    shrank since its size was taken is read to its end, and room for the padding is left after it."""
    data = random.Random(3).randbytes(actual)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with ChunkWriter(fd, True) as out:
            out.add_bytes(b"x" * 1000)
            out.reserve(512 + hint + 512)
            got = out.add_file(io.BytesIO(data).readinto, 512, hint)
            assert got == actual and len(out.view) - (out.fill + 512 + got) >= chunkwriter.TAIL
            out.view[out.fill:out.fill + 512] = b"H" * 512
            out.advance(512 + got)
            out.add_bytes(b"\0" * (-(out.position) % 512))
            size, digest = out.close()
            grown = len(out._buffer)
    finally:
        os.close(fd)
    expected = b"x" * 1000 + b"H" * 512 + data + b"\0" * (-(1512 + actual) % 512)
    assert size == len(expected) and (tmp_path / "f").read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert all(len(kept) <= chunkwriter.KEEP_MAX for kept in chunkwriter._free)   # a huge buffer is not kept
    if grown > chunkwriter.KEEP_MAX:
        with ChunkWriter(-1) as again:
            assert len(again._buffer) < grown


def test_the_buffer_is_reused_and_a_forked_child_starts_without_it() -> None:
    with ChunkWriter(-1) as first:
        buffer = first._buffer
    with ChunkWriter(-1) as second:
        assert second._buffer is buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: the parent's kept buffer is not its to use
        os.close(read)
        os.write(write, b"%d" % len(chunkwriter._free))
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 10) == b"0"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert chunkwriter._free == [buffer]
