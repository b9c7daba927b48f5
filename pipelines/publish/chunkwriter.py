"""Appending a file through one page-aligned buffer, hashed as it goes, with ``O_DIRECT`` where it is taken.

The shard writer builds each tar in a :class:`ChunkWriter`: tar headers, JPEG bytes read straight
into the buffer (``readinto``: no intermediate ``bytes``), padding. Every ``CHUNK`` bytes it hashes
the filled part and writes it. With ``direct`` the file is switched to ``O_DIRECT`` and the chunk
goes from this buffer to the disk: no copy into the page cache, no page-cache memory to allocate,
and so only the file's metadata left for the ``fsync`` (on this project's VMs a buffered write's speed swings
5x with the page cache's memory temperature, a direct one does not: see the README's benchmark
notes). Direct writes are cut at ``ALIGN`` bytes; the rest of a chunk moves to the buffer's front
and goes with the next one. A write the kernel refuses for its alignment (``EINVAL``: a file
system without ``O_DIRECT``, a device with larger blocks than ``ALIGN``) switches the file back to
the page cache and is repeated there, so the bytes on disk are the same either way.

The buffer is an anonymous ``mmap`` (page-aligned, as ``O_DIRECT`` needs), kept between files of
the same process (a forked child starts without its parent's): touching fresh memory costs far more
than reusing it. It grows only to hold a member of more than about a chunk (a member is always whole in the
buffer, its header written after its bytes), and a buffer grown past ``KEEP_MAX`` is freed after.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import threading
from typing import Callable

ALIGN = 4096             # direct writes are cut at this (page size; most devices' logical block is 512)
CHUNK = 2 << 20          # hash and write every this many bytes
TAIL = 512               # room :meth:`ChunkWriter.add_file` leaves after a file (a tar member's padding)
KEEP_MAX = 4 * CHUNK     # a buffer grown past this for a huge member is freed after it, not kept
_lock = threading.Lock()
_free: list[mmap.mmap] = []      # this process's buffers, kept for its next writer


def _forget_after_fork() -> None:
    """In a forked child: a fresh lock, and none of the parent's buffers (each would be copied on write:
    they are private mappings, so a child writing to one never changes the parent's)."""
    global _lock
    _lock = threading.Lock()
    _free.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _take(size: int) -> mmap.mmap:
    """A buffer of at least ``size`` bytes: a kept one if one is big enough, else a new one."""
    with _lock:
        for i, buffer in enumerate(_free):
            if len(buffer) >= size:
                return _free.pop(i)
    return _new(size)


def _new(size: int) -> mmap.mmap:
    """Private anonymous memory of at least ``size`` bytes, whole pages (page-aligned, as ``O_DIRECT`` needs)."""
    return mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _give_back(buffer: mmap.mmap) -> None:
    """Keep ``buffer`` for the next writer (one at most per process: writers run one at a time), or free it."""
    with _lock:
        if len(buffer) <= KEEP_MAX and not _free:
            _free.append(buffer)
            return
    _close(buffer)


def _close(buffer: mmap.mmap) -> None:
    """Unmap ``buffer`` now, or when its last view is gone (a traceback may still hold a slice of it)."""
    with contextlib.suppress(BufferError):
        buffer.close()


def set_direct(fd: int, on: bool) -> bool:
    """Switch ``fd`` to ``O_DIRECT`` (or back); False where the file system refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    if wanted == flags:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


class ChunkWriter:
    """Bytes appended to ``fd`` (positioned at 0, a new file) through this process's aligned buffer.

    ``add_bytes`` / ``add_file`` put data at the end (``reserve`` first makes room for a member);
    ``close`` writes the rest and returns ``(bytes written, sha256 hex)``. ``on_written(offset,
    length)`` is called after each write that went through the page cache (not direct), e.g. to
    start writeback early; after a refused direct write it covers the whole chunk.
    Use as a context manager: the buffer is kept for the next writer whatever happens.
    """

    def __init__(self, fd: int, direct: bool = False, on_written: Callable[[int, int], None] | None = None) -> None:
        self.fd = fd
        self.direct = direct and set_direct(fd, True)
        self.on_written = on_written
        self.digest = hashlib.sha256()
        self.written = 0        # bytes handed to the file
        self.fill = 0           # bytes in the buffer, not yet written
        self._buffer = _take(2 * CHUNK)
        self.view = memoryview(self._buffer)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def position(self) -> int:
        """Bytes appended so far (written or waiting in the buffer)."""
        return self.written + self.fill

    def reserve(self, size: int) -> None:
        """Make room for ``size`` more bytes in the buffer (writing what is ready, growing it if need be)."""
        if self.fill + size <= len(self.view):
            return
        self._write(self.fill - self.fill % ALIGN)
        if self.fill + size > len(self.view):
            self._grow(self.fill + size)

    def add_bytes(self, data: bytes) -> None:
        self.reserve(len(data))
        self.view[self.fill:self.fill + len(data)] = data
        self.fill += len(data)

    def add_file(self, readinto: Callable[[memoryview], int], at: int, size_hint: int) -> int:
        """Read a file to its end (``readinto``: its reader's method, or one that labels its errors)
        into the buffer at ``at`` past ``fill`` (``reserve`` was called for ``at + size_hint`` and the
        tail room); return how many bytes it had. At least ``TAIL``
        bytes stay free after them, whatever the file's size turns out to be. Does not move
        ``fill``: the caller puts the header before them, then calls :meth:`advance`."""
        start = end = self.fill + at
        while True:
            if len(self.view) - end < TAIL:
                self._grow(end + max(size_hint, CHUNK), keep=end)
            got = readinto(self.view[end:])
            if not got:
                return end - start
            end += got

    def advance(self, size: int) -> None:
        """Count ``size`` more bytes as filled (written in place by the caller)."""
        self.fill += size

    def maybe_write(self) -> None:
        """Write the aligned part of the buffer once it holds a chunk."""
        if self.fill >= CHUNK:
            self._write(self.fill - self.fill % ALIGN)

    def close(self) -> tuple[int, str]:
        """Write everything left; return (bytes written, sha256 of them). The file's ``O_DIRECT`` is
        switched off again (the caller may write more to it).

        The whole pages go first, the tail on its own: a tail the device refuses direct (not a whole
        logical block) is the only part that goes through the page cache.
        """
        self._write(self.fill - self.fill % ALIGN)
        self._write(self.fill)
        if self.direct:
            set_direct(self.fd, False)
            self.direct = False
        return self.written, self.digest.hexdigest()

    def release(self) -> None:
        if self._buffer is not None:
            self.view.release()
            _give_back(self._buffer)
            self._buffer = None

    def _grow(self, size: int, keep: int | None = None) -> None:
        """A bigger buffer, holding the first ``keep`` bytes (default: those filled) of this one."""
        keep = self.fill if keep is None else keep
        bigger = _new(max(size, 2 * len(self.view)))
        bigger[:keep] = self.view[:keep]
        self.view.release()
        _close(self._buffer)
        self._buffer, self.view = bigger, memoryview(bigger)

    def _write(self, length: int) -> None:
        """Hash and write the buffer's first ``length`` bytes; move the rest to its front."""
        if not length:
            return
        with self.view[:length] as data:
            self.digest.update(data)
            done = 0
            while done < length:
                try:
                    done += os.write(self.fd, data[done:])
                except OSError as exc:
                    if not (self.direct and exc.errno == errno.EINVAL):
                        raise
                    self.direct = False           # refused before anything was written: go through the cache
                    set_direct(self.fd, False)
        if self.on_written is not None and not self.direct:
            self.on_written(self.written, length)
        self.written += length
        rest = self.fill - length
        if rest:
            self._buffer.move(0, length, rest)
        self.fill = rest

