"""Files changed as later writes change them, for tests of the identities the pipeline's caches and build stamp keep
(size, mtime, inode, ctime): a rewrite in place with the mtime put back (``cp -p``, ``rsync -t --inplace``,
``touch -r``), and a plain rewrite of the same size.

Such a rewrite keeps the inode, the size and the mtime; only the ctime moves. Where the kernel keeps coarse
timestamps (before Linux 6.13, and on file systems without fine-grained ones), a ctime is the clock's last tick
(4 ms at HZ=250): a rewrite within the tick of the file's last change keeps its ctime as well, which no identity
read from ``stat`` can tell from no change. A real ``cp -p`` over a file the pipeline has read never lands in that
tick; a test that rewrites a file milliseconds after writing it may, on such a machine. So the rewrite here waits
for the clock to move on, as it has for a real one.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def rewrite_in_place(path: Path, data: bytes, before: os.stat_result | None = None) -> os.stat_result:
    """Write ``data`` at the start of ``path``'s own inode, then put its atime and mtime back to ``before`` (its stat
    before the rewrite, taken now when not given); return ``before``. On return the ctime differs from
    ``before``'s, and the inode, size and mtime are ``before``'s (``data`` must not make the file longer)."""
    before = before or os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    deadline = time.monotonic() + 5
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:     # within the tick of its last change
        assert time.monotonic() < deadline, f"the ctime of {path} does not move"
        time.sleep(0.001)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    return before


def overwrite(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)`` (same inode), with an mtime later than the one it had: a rewrite of the same size
    within the clock tick of the last write keeps the mtime and ctime on a kernel with coarse timestamps (see above),
    where no later write does."""
    before = os.stat(path)
    path.write_bytes(data)
    deadline = time.monotonic() + 5
    while os.stat(path).st_mtime_ns == before.st_mtime_ns:     # within the tick of its last write
        assert time.monotonic() < deadline, f"the mtime of {path} does not move"
        time.sleep(0.001)
        os.utime(path)
