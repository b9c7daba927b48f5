"""fix38q (final read of the thirty-eighth session): the twin of fix38l's ``read_limited`` fix in the app export's
waiting files. ``export._load_waiting`` opened ``HOME/cache/app_export_moved/dt=DAY.json`` with ``O_NONBLOCK`` (so
a FIFO is never waited on at the open) and read it so: on a FUSE file system that honours ``O_NONBLOCK`` a read
answering "try again" (``None``) was taken for the end of the file, and the file for damaged (moved aside by the
next writer, its rows named by nothing but the damaged-file warning). It now reads blocking once the file is
known regular. A FIFO taken for a regular file stands in for such a file, as in test_fix38l."""
from __future__ import annotations

import fcntl
import os
import stat
import struct
import termios
import threading
from pathlib import Path

import pytest

from formats.home import DataHome
from pipelines.appdb import export as appexport


def test_a_waiting_file_whose_reads_answer_try_again_is_read_whole(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    home = DataHome(tmp_path / "home")
    path = appexport._waiting_path(home, "2023-02-10")          # noqa: SLF001 - the file the test stands in for
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)         # so the writer's open does not wait
    writer = os.open(path, os.O_WRONLY)
    monkeypatch.setattr(stat, "S_ISREG", lambda mode: True)
    os.write(writer, b'{"rankings": [1, 2')

    def rest() -> None:                                          # the rest once the first part is read
        while struct.unpack("i", fcntl.ioctl(writer, termios.FIONREAD, b"\0\0\0\0"))[0]:
            os.sched_yield()
        os.write(writer, b", 3]}")
        os.close(writer)

    thread = threading.Thread(target=rest)
    thread.start()
    try:
        waiting = appexport._load_waiting(home, "2023-02-10")   # noqa: SLF001
    finally:
        thread.join()
        os.close(reader)
    assert list(waiting["rankings"]) == [1, 2, 3]
    assert all(not ids for table, ids in waiting.items() if table != "rankings")
