"""Hostile review rev39d of fix39c (``formats.files.open_regular``; the app export's waiting files: ``_parse_waiting``'s
16 KiB runs and dedup-on-doubling, ``_set_aside``'s numbering, ``damaged_waiting_warning``).

Defect found:

- ``_set_aside`` numbers a set-aside one past the highest ``-N`` of at most 18 digits, but the export's own next
  name after a planted ``dt=DAY.json.damaged-999999999999999999`` is ``-1000000000000000000`` (19 digits), which its
  own pattern then ignores: every later set-aside of that day finds the 18-digit maximum again, tries the taken
  19-digit names one at a time and lists the whole MOVED_WAITING folder again for each (``_next_aside_number``). Seen:
  five nights after the plant the set-asides listed the folder 1, 2, 3, 4, 5 times; with M such names present (planted
  or made by M nights) one set-aside lists the folder M + 1 times, each listing matching every name (M = 200 below:
  201 listings), quadratic in the folder's size and under UNDATED_LOCK each night.

Attacked and found sound (no test): the 16 KiB split compared with the parent commit's parser on 300 random files (up
to 200,000 ids a table, ascending / random int64 / repeated / descending, 1-3 bytes of whitespace around commas, then
truncated or one byte changed): the same ids or the same refusal every time; ``open_regular`` / ``read_limited`` /
``read_small_file`` / ``open_regular_file`` / ``_load_waiting`` on a FIFO, a folder, a too-large file, a symlink (to a
file, a FIFO, nowhere), /dev/zero, /dev/null and a missing file: same exception types, errno and messages as before,
no file descriptor left open (/proc/self/fd counted); planted ``-0``, ``-007``, ``-1e3``, ``-9223372036854775807``
names are passed over without being taken.
"""
from __future__ import annotations

import array

from test_fix37h import _waiting
from test_fix38m import DAY, _home
from test_fix39c import _aside

from pipelines.appdb import export as appexport
from pipelines.appdb.export import _add_waiting


def test_a_planted_18_digit_set_aside_does_not_make_each_set_aside_list_the_folder_per_name(tmp_path, monkeypatch):
    home, path = _home(tmp_path)
    _aside(path, 1).write_bytes(b"first")
    _aside(path, 10 ** 18 - 1).write_bytes(b"planted")               # 18 digits: counted
    for number in range(10 ** 18, 10 ** 18 + 200):                  # 19 digits: what the export itself names next
        _aside(path, number).write_bytes(b"earlier night")
    listings = []
    real = appexport._waiting_names
    monkeypatch.setattr(appexport, "_waiting_names", lambda home: listings.append(1) or real(home))
    path.write_bytes(b"not json")
    _add_waiting(home, {"rankings": {DAY: array.array("q", [7])}})
    # the file is set aside (no data lost) and the rows written: that part holds today
    assert _aside(path, 10 ** 18 + 200).read_bytes() == b"not json"
    assert _waiting(home, DAY) == {"rankings": [7]}
    assert len(listings) <= 2, f"the folder was listed {len(listings)} times for one set-aside"
