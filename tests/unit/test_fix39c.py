"""Fix39c: noticed in fix38m/fix38q, the MOVED_WAITING files (``HOME/cache/app_export_moved/dt=DAY.json``).

- ``_load_waiting`` repeated the open / fstat / regular-file / size checks of ``formats.files.read_limited`` and
  ``open_regular_file`` inline (it streams where those read whole): the three now open through one opener,
  ``formats.files.open_regular`` (``NotRegularFile``, ``FileTooLarge``), each caller's errors as before.
- A damaged file was set aside to ``dt=DAY.json.damaged``, ``-2`` ... ``-999`` and then no more: the 1,000th set-aside
  raised EEXIST (the rows waiting for the day were not written that night, nor any night after). The next number is
  now one past the highest there (never taken, no end), and the nightly warning says how many are set aside.
- A hostile waiting file of repeated ids (``0,0,0,...``: 2 bytes an id) cost 6.6x its size while parsed (an int64
  an id, then sorted); ids out of order are now sorted and made unique whenever their array doubles.
"""
from __future__ import annotations

import array
import errno
import inspect
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from test_fix37h import _waiting
from test_fix38m import DAY, _home, _ids

from formats import files
from formats.files import open_regular_file, read_limited
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    DAMAGED_WAITING,
    WaitingDamaged,
    _add_waiting,
    _load_waiting,
    _parse_waiting,
    damaged_waiting_warning,
    watch_waiting,
)


def test_one_opener_holds_the_checks_each_caller_s_errors_as_before(tmp_path: Path) -> None:
    for reader in (read_limited, open_regular_file, appexport._load_waiting):
        source = inspect.getsource(reader)
        assert "S_ISREG" not in source and "os.O_NONBLOCK" not in source, reader      # the checks: in open_regular
    path = tmp_path / "f.json"
    path.write_bytes(b'{"rankings": [1, 2]}')
    with files.open_regular(path, max_bytes=20) as handle:
        assert handle.read() == b'{"rankings": [1, 2]}'
    with pytest.raises(files.FileTooLarge, match=r"holds 20 bytes, more than the 19 such a file may: not read") as too:
        files.open_regular(path, max_bytes=19)
    assert (too.value.size, too.value.limit) == (20, 19)
    os.mkfifo(tmp_path / "fifo")                   # never waited on
    with pytest.raises(files.NotRegularFile, match="is not a regular file: not read"):
        files.open_regular(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError) as link:
        files.open_regular(tmp_path / "link", follow_symlinks=False)
    assert link.value.errno == errno.ELOOP
    assert files.open_regular(tmp_path / "link").read() == b'{"rankings": [1, 2]}'
    # each caller's errors as they were
    with pytest.raises(ValueError, match=r"fifo is not a regular file: not read"):
        read_limited(tmp_path / "fifo", 10)
    with pytest.raises(ValueError, match=r"holds 20 bytes, more than the 19 such a file may: not read"):
        read_limited(path, 19)
    with pytest.raises(OSError, match="not a regular file") as einval:
        open_regular_file(tmp_path / "fifo")
    assert einval.value.errno == errno.EINVAL and not isinstance(einval.value, ValueError)


def test_a_waiting_file_s_errors_are_as_before(tmp_path: Path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    path.write_text('{"rankings": [1, 2, 3]}')
    monkeypatch.setattr(appexport, "MOVED_WAITING_MAX_BYTES", 10)
    with pytest.raises(WaitingDamaged) as large:
        _load_waiting(home, DAY)
    assert str(large.value) == "23 bytes, more than the 10 such a file may hold"
    monkeypatch.undo()
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(WaitingDamaged) as fifo:
        _load_waiting(home, DAY)
    assert str(fifo.value) == "not a regular file"
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WaitingDamaged) as link:
        _load_waiting(home, DAY)
    assert str(link.value) == "a symbolic link"
    path.unlink()
    path.mkdir()
    with pytest.raises(WaitingDamaged, match="not a regular file"):
        _load_waiting(home, DAY)


def _aside(path: Path, number: int) -> Path:
    return path.with_name(path.name + DAMAGED_WAITING + ("" if number == 1 else f"-{number}"))


def test_the_thousandth_damaged_file_is_set_aside_and_the_rows_written(tmp_path: Path) -> None:
    home, path = _home(tmp_path)
    for number in range(1, 1000):              # 999 nights of a broken writer
        _aside(path, number).write_bytes(b"night %d" % number)
    path.write_bytes(b'{"rankings": [5001, 500')
    _add_waiting(home, {"rankings": {DAY: array.array("q", [7])}})      # raised EEXIST: nothing written
    assert _aside(path, 1000).read_bytes() == b'{"rankings": [5001, 500'
    assert _waiting(home, DAY) == {"rankings": [7]}
    assert all(_aside(path, number).read_bytes() == b"night %d" % number for number in range(1, 1000))
    # a planted name with a number no export reaches, and a folder at the next free number: neither is taken over
    _aside(path, 10 ** 40).write_bytes(b"planted")
    _aside(path, 1001).mkdir()
    path.write_bytes(b"not json")                 # (over the file listing 7: a broken writer's)
    _add_waiting(home, {"rankings": {DAY: array.array("q", [8])}})
    assert _aside(path, 1002).read_bytes() == b"not json" and _aside(path, 10 ** 40).read_bytes() == b"planted"
    assert _waiting(home, DAY) == {"rankings": [8]} and _aside(path, 1001).is_dir()


def test_the_warning_says_how_many_files_are_set_aside(tmp_path: Path) -> None:
    home, path = _home(tmp_path)
    for number in range(1, 31):
        _aside(path, number).write_bytes(b"x")
    watch = watch_waiting(None, home, DAY)     # no file in place: nothing looked up
    line = damaged_waiting_warning(watch.damaged)
    assert line.startswith("30 file(s)") and "(30 of them moved aside" in line, line
    assert line.count("moved aside as damaged by an earlier export") <= appexport.FIRST_IDS


def _parse_peak(text: bytes) -> tuple[array.array, int]:
    tracemalloc.start()
    try:
        ids = _parse_waiting(io.BytesIO(text), 1 << 30)["rankings"]
        return ids, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", [
    lambda count: b"0," * (count - 1) + b"0",                                  # one id, 2 bytes a time
    lambda count: b",".join(b"%d" % (i % 1000) for i in range(count)),         # 1,000 ids over and over
])
def test_a_file_of_repeated_ids_costs_memory_that_does_not_grow_with_it(make) -> None:
    peaks = []
    for count in (400_000, 1_600_000):
        text = b'{"rankings": [' + make(count) + b"]}"
        ids, peak = _parse_peak(text)
        assert list(ids) == sorted(set(map(int, text[14:-2].split(b","))))
        peaks.append(peak)
    # it grew with the text: 15x it (an int64 an id, the split's bytes objects of a whole piece, the sort's copies)
    assert peaks[1] < 1.5 * peaks[0] and peaks[1] < 2 * len(text), (peaks, len(text))


def test_ids_out_of_order_are_still_each_read_once_sorted(monkeypatch) -> None:
    monkeypatch.setattr(appexport, "WAITING_READ_BYTES", 64)      # many pieces: many compactions
    values = [(i * 7919) % 5003 - 2500 for i in range(20_000)]
    text = ('{"rankings": [' + ", ".join(map(str, values)) + '], "users": [3, 2, 1, 1]}').encode()
    out = _parse_waiting(io.BytesIO(text), 1 << 30)
    assert _ids(out) == {"rankings": sorted(set(values)), "users": [1, 2, 3]}

