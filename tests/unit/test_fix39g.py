"""Fix39g (review rev39d of fix39c): the MOVED_WAITING set-aside names and the nightly damaged-file warning.

- ``_set_aside`` counted set-aside numbers of at most 18 digits, so its own names past a planted 18-digit one were
  invisible to it, and it listed the folder again for each taken name it tried: it now counts every number up to
  ASIDE_NUMBER_MAX (2^63 - 1), lists the folder once at most per set-aside (not at all where dt=DAY.json.damaged is
  free) and tries successive numbers without listing again; past a planted ASIDE_NUMBER_MAX, the first free number.
- ``watch_waiting`` held every set-aside name for the warning: now the first FIRST_IDS, a count and the earliest day
  (``DamagedWaiting``), the warning's text as before.
"""
from __future__ import annotations

import array
from pathlib import Path

from test_fix37h import _waiting
from test_fix38m import DAY, _home
from test_fix39c import _aside

from pipelines.appdb import export as appexport
from pipelines.appdb.export import MOVED_WAITING, _add_waiting, damaged_waiting_warning, watch_waiting


def _counted_listings(monkeypatch, names=None) -> list[int]:
    listings: list[int] = []
    real = appexport._waiting_names
    monkeypatch.setattr(appexport, "_waiting_names",
                        lambda home: listings.append(1) or (iter(names) if names is not None else real(home)))
    return listings


def _set_aside_once(home, path: Path, text: bytes, key: int) -> None:
    path.write_bytes(text)
    _add_waiting(home, {"rankings": {DAY: array.array("q", [key])}})
    assert _waiting(home, DAY) == {"rankings": [key]}


def test_a_free_plain_name_takes_no_listing_a_taken_one_one(tmp_path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    listings = _counted_listings(monkeypatch)
    _set_aside_once(home, path, b"first", 1)
    assert _aside(path, 1).read_bytes() == b"first" and listings == []
    _set_aside_once(home, path, b"second", 2)
    _set_aside_once(home, path, b"third", 3)
    assert _aside(path, 2).read_bytes() == b"second" and _aside(path, 3).read_bytes() == b"third"
    assert len(listings) == 2


def test_names_taken_since_the_listing_are_passed_without_listing_again(tmp_path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    for number in (1, 2, 3, 4):
        _aside(path, number).write_bytes(b"kept %d" % number)
    listings = _counted_listings(monkeypatch, names=[_aside(path, 1).name])     # a listing that missed -2 ... -4
    _set_aside_once(home, path, b"new", 5)
    assert _aside(path, 5).read_bytes() == b"new" and len(listings) == 1
    assert all(_aside(path, number).read_bytes() == b"kept %d" % number for number in (1, 2, 3, 4))


def test_numbers_up_to_2_63_are_counted_and_past_the_highest_the_first_free(tmp_path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    top = appexport.ASIDE_NUMBER_MAX
    assert top == 2 ** 63 - 1
    _aside(path, 1).write_bytes(b"first")
    _aside(path, 2 ** 62).write_bytes(b"19 digits")
    _aside(path, top + 1).write_bytes(b"past the highest: passed over")
    listings = _counted_listings(monkeypatch)
    _set_aside_once(home, path, b"a", 1)
    assert _aside(path, 2 ** 62 + 1).read_bytes() == b"a"             # the export's own 19-digit names: counted
    _set_aside_once(home, path, b"b", 2)
    assert _aside(path, 2 ** 62 + 2).read_bytes() == b"b" and len(listings) == 2
    _aside(path, top).write_bytes(b"planted at the highest")
    _aside(path, 2).write_bytes(b"two")
    for number, text in ((3, b"c"), (4, b"d")):                        # the first free number, never one taken
        _set_aside_once(home, path, text, number)
        assert _aside(path, number).read_bytes() == text
    assert len(listings) == 4
    for number, text in ((1, b"first"), (2, b"two"), (2 ** 62, b"19 digits"), (top, b"planted at the highest"),
                         (top + 1, b"past the highest: passed over")):
        assert _aside(path, number).read_bytes() == text


def test_the_watch_keeps_the_first_names_a_count_and_the_earliest_day(tmp_path) -> None:
    home, _ = _home(tmp_path)
    folder = home.cache / MOVED_WAITING
    for day in range(10, 22):                                          # 12 damaged in place
        (folder / f"dt=2023-01-{day}.json").write_bytes(b"not json")
    for number in range(1, 501):                                       # 500 set aside, of an earlier day
        _aside(folder / "dt=2022-12-01.json", number).write_bytes(b"x")
    (folder / "dt=2022-11-30.json.damaged-x").write_bytes(b"not a set-aside name")
    watch = watch_waiting(None, home, DAY)                             # nothing readable: nothing looked up
    damaged = watch.damaged
    assert (damaged.count, damaged.aside, damaged.day) == (512, 500, "2022-12-01")
    assert [Path(path).name for path, _ in damaged.named] == [f"dt=2023-01-{day}.json" for day in range(10, 20)]
    line = damaged_waiting_warning(damaged)
    assert line.startswith("512 file(s) (500 of them moved aside as damaged) ") and "; ..." in line, line
    assert "--from 2022-12-01 --to 2022-12-01" in line and "dt=2023-01-20.json" not in line
    only_aside = appexport.DamagedWaiting()
    appexport._add_set_aside_files(home, only_aside)
    assert [Path(path).name for path, _ in only_aside.named] == sorted(
        _aside(folder / "dt=2022-12-01.json", number).name for number in range(1, 501))[:appexport.FIRST_IDS]
    assert (only_aside.count, only_aside.aside) == (500, 500)
