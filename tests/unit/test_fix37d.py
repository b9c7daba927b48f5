"""Fix37d: the defects of review rev37d (``tests/unit/test_hostile_rev37d.py``) and their neighbours.

1. A row moved to a day no schedule exports past REMEMBER_UNDATED: ``moved_rows`` keeps one row of each day first
   and counts (never lists) the rows left out (``Outside.left``); ``remember_moved`` then warns, and the export
   holds the day back (it keeps the rows) until their days are exported. ``_remembered`` keeps one row of each
   dated day before the others, so every day stays named each night. Memory bounded: 100,000 moved rows.
2. A row moved to a day the export cannot export yet (not closed by its clock): named by ``moved_warning`` and
   remembered (``HOME/cache/UNDATED_STATE``), so a move back to an earlier day is named.
3. ``simulator.export.fresh_group`` honours a ``grpid`` / ``bsdgroups`` mount (``/proc/self/mountinfo``).
"""
from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import psycopg
import pytest
from appdb_fixtures import MARCH_FIRST, NIGHTLY, NOW, add_rankings, app_db, exported_app, move_rankings
from appdb_fixtures import raw_lines as _lines

from formats.home import DataHome
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    REMEMBER_UNDATED,
    UNDATED_STATE,
    HeldRows,
    Outside,
    _remembered,
    export_day,
    moved_rows,
    moved_warning,
    remember_moved,
)
from pipelines.appdb.scheduled import ScheduledDays
from simulator import export as simexport
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _scheduled(home: DataHome, days: list[str]) -> ScheduledDays:
    return ScheduledDays(home, days, appexport.raw_day_counts)


def _state(home: DataHome) -> dict:
    return json.loads((home.cache / UNDATED_STATE).read_bytes())


# --- 1: the cap ------------------------------------------------------------------------------------

def test_remembered_keeps_one_row_of_each_day_first() -> None:
    ids: dict[int, str | None] = {key: "2023-02-15" for key in range(1, REMEMBER_UNDATED + 1)}
    ids.update({5000: "2023-02-10", 6000: "2031-01-01", 1: "2023-02-15", 7: None})
    kept = _remembered(ids)
    # fix37h (review rev37h): no dated row is trimmed (its old day may be published without it); undated ones
    # take the room left, none here
    assert len(kept) == REMEMBER_UNDATED + 1       # 1,001 dated (7 is undated now), none trimmed
    assert kept[5000] == "2023-02-10" and kept[6000] == "2031-01-01" and 1 in kept and 7 not in kept
    small = {3: None, 2: "2023-01-01"}
    assert _remembered(small) is small            # under the cap: as it was


def test_moved_rows_is_bounded_with_100000_rows_moved_before_the_first_day(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    held = HeldRows(100_000)
    for key in range(1, 100_001):
        held.add(key, "2023-02-10" if key % 1000 == 0 else "2023-02-15")
    held.done()
    scheduled, into, outside = _scheduled(home, ["2023-03-01"]), {}, Outside()
    tracemalloc.start()
    try:
        moved_rows(home, "rankings", held, "2023-03-01", True, scheduled, into, outside)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(outside["rankings"]) == REMEMBER_UNDATED
    # fix38b: the rows past the cap wait (MOVED_WAITING, int64 arrays) instead of being counted only
    assert sum(map(len, outside.waiting["rankings"].values())) == 100_000 - REMEMBER_UNDATED
    assert set(outside["rankings"].values()) == {"2023-02-10", "2023-02-15"}       # both days kept
    assert peak < 1_500_000, peak       # ~1,000 ids remembered; never a list of the 100,000 (~8 MB as ints)
    assert into["rankings"]["2023-02-10"][0] == 100 and into["rankings"]["2023-02-15"][0] == 99_900


def test_remember_moved_warns_for_rows_left_out_and_keeps_each_day_named(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    outside = Outside()
    outside["rankings"] = {1: "2023-02-15", 2: "2023-02-10"}
    assert remember_moved(home, outside) == ""
    assert sorted(_state(home)["rankings"]) == [[1, "2023-02-15"], [2, "2023-02-10"]]
    # the cap reached by rows remembered before: fix38b, the rows without room wait (MOVED_WAITING), no warning
    full = Outside()
    full["rankings"] = {key: "2023-01-20" for key in range(10, 10 + REMEMBER_UNDATED)}
    assert remember_moved(home, full) == ""
    assert appexport.waiting_days(home) == ["2023-01-20"]
    kept = {key: on for key, on in _state(home)["rankings"]}
    assert len(kept) == REMEMBER_UNDATED and {"2023-02-15", "2023-02-10", "2023-01-20"} <= set(kept.values())
    # all of them fit: no warning
    other = DataHome.at(tmp_path / "other")
    other.cache.mkdir(parents=True)
    assert remember_moved(other, {"rankings": {1: "2023-02-15"}}) == ""
    assert _state(other)["rankings"] == [[1, "2023-02-15"]]


def test_a_day_held_back_by_the_cap_publishes_once_the_days_are_exported(postgres_server, tmp_path):  # noqa: F811
    """The review's case, then the build the warning names: the moved days exported, the old day's re-export
    publishes, and every ranking is in exactly one raw day (none lost, none twice)."""
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        add_rankings(conn, 1, 1001, "2023-03-01 10:00")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    move_rankings(dsn, "2023-02-15 08:00", 1, 1000)
    move_rankings(dsn, "2023-02-10 08:00", 1001)
    report = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    # fix38b: published, the rows past the cap waiting in MOVED_WAITING (it was held back)
    assert report.published == "updated", report.warnings
    assert any("--from 2023-02-10 --to 2023-02-15" in line for line in report.warnings), report.warnings
    for day in ("2023-02-10", "2023-02-15"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert appexport.waiting_days(home) == []
    seen = [row["ranking_id"] for day in home.raw_days() for row in _lines(home, day, "rankings")]
    assert sorted(seen) == list(range(1, 1002))
    assert not (home.cache / UNDATED_STATE).exists() or not _state(home).get("rankings")


# --- 2: a day the export cannot export yet ----------------------------------------------------------

def test_moved_warning_names_a_day_not_closed_only_with_the_clock(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    scheduled = _scheduled(home, ["2023-03-01"])
    moved = {"rankings": {"2030-06-01": [1, ["3"]]}}
    assert moved_warning(scheduled, moved) == ""                    # a later day: the nightly export's own
    line = moved_warning(scheduled, moved, lambda on: on >= "2024-01-01")
    assert "2030-06-01" in line and "ids 3" in line and "not closed yet" in line
    assert moved_warning(scheduled, moved, lambda on: False) == ""  # closed: the nightly catch-up exports it


def test_moved_rows_remembers_a_row_moved_to_a_day_not_closed(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    held = HeldRows(3)
    held.add(3, "2030-06-01")
    held.add(4, "2023-03-05")        # a later day already closed: the nightly export's own, not remembered
    held.done()
    outside = Outside()
    moved_rows(home, "rankings", held, "2023-03-01", True, _scheduled(home, ["2023-03-01"]), {}, outside,
               lambda on: on >= "2024-01-01")
    assert dict(outside) == {"rankings": {3: "2030-06-01"}} and not any(outside.waiting.values())


def test_a_row_moved_to_a_later_year_and_back_is_named(postgres_server, tmp_path):  # noqa: F811
    """The typo corrected to another wrong day (before the raw zone's first): the next night names it, as it
    names every row remembered, and the typo's year never marks a day."""
    dsn, home = exported_app(postgres_server, tmp_path / "home", MARCH_FIRST)
    move_rankings(dsn, "2030-06-01 08:00", 3)
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    quiet = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert not any("2030-06-01" in line for line in quiet.warnings), quiet.warnings   # named once, not each night
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-20 08:00' WHERE ranking_id = 3")
    night = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert any("id 3 on 2023-02-20" in line for line in night.warnings), night.warnings
    assert [3, "2023-02-20"] in _state(home)["rankings"]
    export_day(home, dsn, "2023-02-20", NIGHTLY, now=NOW)
    assert [row["ranking_id"] for row in _lines(home, "2023-02-20", "rankings")] == [3]


# --- 3: fresh_group on a grpid mount ------------------------------------------------------------------

def _mountinfo(tmp_path: Path, folder: Path, lines: list[str]) -> Path:
    dev = os.stat(folder).st_dev
    text = "".join(line.format(dev=f"{os.major(dev)}:{os.minor(dev)}") + "\n" for line in lines)
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


@pytest.mark.parametrize("options, bsd", [("rw,grpid", True), ("rw,bsdgroups", True), ("rw,nogrpid", False),
                                          ("rw,sysvgroups", False), ("rw", False)])
def test_bsd_groups_reads_the_mount_of_the_folder(tmp_path: Path, monkeypatch, options: str, bsd: bool) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    real = os.path.realpath(folder)
    info = _mountinfo(tmp_path, folder, [
        "1 0 {dev} / / rw,relatime - ext4 /dev/sda1 rw,grpid",            # a shorter mount of the device
        f"2 1 {{dev}} / {real.replace(' ', chr(92) + '040')} rw - ext4 /dev/sda1 {options}",
        "3 1 9:9 / " + real + "/x rw - ext4 /dev/sdb rw,grpid",           # another device: not this folder's
    ])
    monkeypatch.setattr(simexport, "MOUNTINFO", str(info))
    assert simexport._bsd_groups(folder, os.stat(folder).st_dev) is bsd
    assert simexport.fresh_group(folder) == (os.stat(folder).st_gid if bsd else os.getegid())


def test_bsd_groups_without_mountinfo_is_the_process_group(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(simexport, "MOUNTINFO", str(tmp_path / "absent"))
    assert simexport._bsd_groups(tmp_path, os.stat(tmp_path).st_dev) is False
    assert simexport.fresh_group(tmp_path) == os.getegid()
    # a malformed file (short lines, no separator) names no mount
    bad = tmp_path / "bad"
    bad.write_text("garbage\n1 2 3\n" + "x " * 20 + "\n")
    monkeypatch.setattr(simexport, "MOUNTINFO", str(bad))
    assert simexport._bsd_groups(tmp_path, os.stat(tmp_path).st_dev) is False


def test_unescape_mountinfo_paths() -> None:
    assert simexport._unescape(r"/mnt/a\040b\011c\134d") == "/mnt/a b\tc\\d"
