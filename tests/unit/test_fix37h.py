"""Fix37h: the defects of review rev37h (``tests/unit/test_hostile_rev37h.py``) and their neighbours.

1. A dated row remembered (``HOME/cache/UNDATED_STATE``: moved off a raw day that may be published without it) is
   never trimmed by the cap: ``_remembered`` keeps every dated row and gives undated ones the room left;
   ``remember_moved`` adds new rows only into the room left (one of each new day first), else the day is held back
   (fix38b: the others now wait in ``HOME/cache/app_export_moved``, and no day is held back).
2. Rows past the cap moved to a day not closed yet wait in ``HOME/cache/app_export_moved/dt=DAY.json`` (any
   number, sorted ids: deterministic bytes), looked up each night (``watch_waiting``): named once dated back to an
   earlier day, forgotten once deleted or held by the export of their day. No day is held back for them.
3. ``simulator.export._bsd_groups`` compares mountinfo as bytes; of two mounts at one point the later wins.
"""
from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import psycopg
from appdb_fixtures import NIGHTLY, NOW, add_rankings, app_db
from appdb_fixtures import raw_lines as _lines

from formats.home import DataHome
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    MOVED_WAITING,
    REMEMBER_UNDATED,
    UNDATED_STATE,
    HeldRows,
    Outside,
    _remembered,
    export_day,
    moved_rows,
    remember_moved,
    waiting_days,
)
from pipelines.appdb.scheduled import ScheduledDays
from simulator import export as simexport
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _waiting(home: DataHome, day: str) -> dict:
    path = home.cache / MOVED_WAITING / f"dt={day}.json"
    return json.loads(path.read_bytes()) if path.exists() else {}


def test_remembered_never_trims_a_dated_row_and_gives_undated_ones_the_room_left() -> None:
    ids: dict[int, str | None] = {key: "2023-02-15" for key in range(1, 991)}
    ids.update({key: None for key in range(2000, 2020)})
    kept = _remembered(ids)
    assert sum(1 for on in kept.values() if on) == 990
    assert sorted(key for key, on in kept.items() if on is None) == list(range(2000, 2010))   # the room left
    full = {key: "2023-02-15" for key in range(1, REMEMBER_UNDATED + 5)}
    assert _remembered({**full, 7000: None}) == full          # past the cap: every dated row, no undated one


def test_remember_moved_adds_into_the_room_left_and_keeps_what_it_remembered(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    first = Outside()
    first["rankings"] = {key: "2030-06-01" for key in range(1, REMEMBER_UNDATED)}      # one place left
    assert remember_moved(home, first) == ""
    later = Outside()
    later["rankings"] = {5000: "2023-02-10", 5001: "2023-02-10", 6000: "2023-01-05"}
    assert remember_moved(home, later) == ""                  # fix38b: the 2 without room wait (MOVED_WAITING)
    assert waiting_days(home) == ["2023-01-05", "2023-02-10"]
    kept = dict(map(tuple, json.loads((home.cache / UNDATED_STATE).read_bytes())["rankings"]))
    assert set(range(1, REMEMBER_UNDATED)) <= set(kept)     # none remembered before is trimmed
    assert kept.get(5000) == "2023-02-10" or kept.get(6000) == "2023-01-05"


def test_moved_rows_past_the_cap_to_a_day_not_closed_wait_bounded_with_100000_rows(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    held = HeldRows(100_000)
    for key in range(1, 100_001):
        held.add(key, "2030-06-01")
    held.done()
    scheduled, into, outside = ScheduledDays(home, ["2023-03-01"], appexport.raw_day_counts), {}, Outside()
    tracemalloc.start()
    try:
        moved_rows(home, "rankings", held, "2023-03-01", True, scheduled, into, outside,
                   lambda on: on >= "2024-01-01")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(outside["rankings"]) == REMEMBER_UNDATED
    assert len(outside.waiting["rankings"]["2030-06-01"]) == 100_000 - REMEMBER_UNDATED
    assert peak < 1_500_000, peak       # an int64 array (~800 KB), never a dict or list of 100,000 Python ints
    home.cache.mkdir(parents=True)
    assert remember_moved(home, outside) == ""                # nothing held back
    raw = (home.cache / MOVED_WAITING / "dt=2030-06-01.json").read_bytes()
    assert json.loads(raw) == {"rankings": list(range(REMEMBER_UNDATED + 1, 100_001))}
    assert remember_moved(home, outside) == ""                # again: the same rows, the same bytes
    assert (home.cache / MOVED_WAITING / "dt=2030-06-01.json").read_bytes() == raw
    assert waiting_days(home) == ["2030-06-01"]


def test_waiting_rows_are_named_when_moved_back_and_forgotten_once_exported(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        add_rankings(conn, 1, REMEMBER_UNDATED + 3, "2023-03-01 10:00")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2030-06-01 08:00'")
    night = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert night.published == "updated", night.warnings
    waiting = _waiting(home, "2030-06-01")["rankings"]
    assert len(waiting) == 3 and waiting == sorted(waiting)
    back, gone, stays = waiting
    with psycopg.connect(dsn) as conn:        # one dated back before the raw zone's first day, one deleted
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 08:00' WHERE ranking_id = %s", (back,))
        conn.execute("DELETE FROM rankings WHERE ranking_id = %s", (gone,))
    later = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert later.published != "held back", later.warnings
    assert any(f"id {back} on 2023-02-10" in line for line in later.warnings), later.warnings
    assert _waiting(home, "2030-06-01")["rankings"] == [back, stays]          # the deleted one forgotten
    export_day(home, dsn, "2023-02-10", NIGHTLY, now=NOW)                     # the build the warning names
    assert back in {row["ranking_id"] for row in _lines(home, "2023-02-10", "rankings")}
    assert _waiting(home, "2030-06-01")["rankings"] == [stays]                # held by its day: forgotten
    quiet = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert not any(f"id {back} " in line for line in quiet.warnings), quiet.warnings


def _device(folder: Path) -> tuple[int, bytes]:
    dev = os.stat(folder).st_dev
    return dev, f"{os.major(dev)}:{os.minor(dev)}".encode()


def test_bsd_groups_later_of_two_mounts_at_one_point_wins(tmp_path: Path, monkeypatch) -> None:
    dev, device = _device(tmp_path)
    real = os.fsencode(os.path.realpath(tmp_path))
    info = tmp_path / "mountinfo"
    monkeypatch.setattr(simexport, "MOUNTINFO", str(info))
    info.write_bytes(b"2 1 " + device + b" / " + real + b" rw - ext4 /dev/sda1 rw,grpid\n"
                     b"3 1 " + device + b" / " + real + b" rw - ext4 /dev/sda1 rw\n")
    assert simexport._bsd_groups(tmp_path, dev) is False      # the one on top (listed last) is the default
    info.write_bytes(b"2 1 " + device + b" / " + real + b" rw - ext4 /dev/sda1 rw\n"
                     b"3 1 " + device + b" / " + real + b" rw - ext4 /dev/sda1 rw,grpid\n")
    assert simexport._bsd_groups(tmp_path, dev) is True


def test_bsd_groups_escaped_space_beside_a_non_utf8_byte(tmp_path: Path, monkeypatch) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/a b\xff"))
    folder.mkdir()
    dev, device = _device(folder)
    real = os.fsencode(os.path.realpath(folder)).replace(b" ", b"\\040")
    info = tmp_path / "mountinfo"
    info.write_bytes(b"1 0 " + device + b" / / rw - ext4 /dev/sda1 rw\n"
                     b"2 1 " + device + b" / " + real + b" rw - ext4 /dev/sda1 rw,bsdgroups\n")
    monkeypatch.setattr(simexport, "MOUNTINFO", str(info))
    assert simexport._bsd_groups(folder, dev) is True
    assert simexport._bsd_groups(tmp_path, dev) is False      # its parent: the root mount's options
    assert simexport._unescape(rb"/mnt/a\040b\134c") == b"/mnt/a b\\c"
    assert simexport._unescape(r"/mnt/a\040b") == "/mnt/a b"
