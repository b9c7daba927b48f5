"""Fix38b: no cap holds a day back for the rows moved before the raw zone's first day.

Before, ``HOME/cache/app_export_undated.json`` remembered at most 1,000 such rows a table (REMEMBER_UNDATED); past
that, one row of each day was kept, the rest only counted (``Outside.left``), and the re-export of their old day was
held back until a ranged build exported their new days. Now the rows past the cap wait in
``HOME/cache/app_export_moved/dt=DAY.json`` as the rows moved to a day not closed yet do (fix37h: any number, int64
arrays, one day's file read at a time), the old day's re-export publishes, and every night names them (with the
build that exports their day) until that build holds them.
"""
from __future__ import annotations

import array
import json
import tracemalloc
from pathlib import Path

import psycopg
from appdb_fixtures import NIGHTLY, NOW
from appdb_fixtures import add_rankings as _rankings
from appdb_fixtures import app_db as _app_db
from appdb_fixtures import raw_lines as _lines
from test_fix37h import _waiting

from formats.home import DataHome
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    MOVED_WAITING,
    REMEMBER_UNDATED,
    UNDATED_STATE,
    HeldRows,
    Outside,
    export_day,
    moved_rows,
    remember_moved,
    waiting_days,
)
from pipelines.appdb.scheduled import ScheduledDays
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _remembered_ids(home: DataHome) -> set[int]:
    path = home.cache / UNDATED_STATE
    return {key for key, _ in json.loads(path.read_bytes()).get("rankings", [])} if path.exists() else set()


def _waiting_ids(home: DataHome) -> set[int]:
    return {key for day in waiting_days(home) for key in _waiting(home, day).get("rankings", [])}


def _raw_ids(home: DataHome) -> list[int]:
    return sorted(row["ranking_id"] for day in home.raw_days() for row in _lines(home, day, "rankings"))


def _moved_100000(home: DataHome) -> tuple[Outside, int]:
    """``moved_rows`` of 100,000 rows of 2023-03-01 moved to two days before the raw zone's first and to a day not
    closed yet, and its tracemalloc peak."""
    held, days = HeldRows(100_000), ("2023-02-15", "2023-02-15", "2030-06-01", "2023-02-10")
    for key in range(1, 100_001):
        held.add(key, days[key % len(days)])
    held.done()
    outside, scheduled = Outside(), ScheduledDays(home, ["2023-03-01"], appexport.raw_day_counts)
    tracemalloc.start()
    try:
        moved_rows(home, "rankings", held, "2023-03-01", True, scheduled, {}, outside, lambda on: on >= "2024-01-01")
        return outside, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rows_past_the_cap_before_the_first_day_and_on_a_day_not_closed_wait_alike(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    outside, peak = _moved_100000(home)
    assert len(outside["rankings"]) == REMEMBER_UNDATED
    assert set(outside["rankings"].values()) == {"2023-02-10", "2023-02-15", "2030-06-01"}   # one of each day first
    waiting = outside.waiting["rankings"]
    assert sum(len(ids) for ids in waiting.values()) == 100_000 - REMEMBER_UNDATED   # none only counted
    assert set(waiting) == {"2023-02-10", "2023-02-15", "2030-06-01"}              # one list, both kinds of day
    assert peak < 1_500_000, peak       # int64 arrays (~800 KB), never a list or dict of 100,000 Python ints
    home.cache.mkdir(parents=True)
    assert remember_moved(home, outside) == ""             # nothing held back
    assert _remembered_ids(home) | _waiting_ids(home) == set(range(1, 100_001))      # every row remembered
    raw = {day: (home.cache / MOVED_WAITING / f"dt={day}.json").read_bytes() for day in waiting_days(home)}
    assert remember_moved(home, outside) == ""             # again: the same rows, the same bytes
    assert {day: (home.cache / MOVED_WAITING / f"dt={day}.json").read_bytes() for day in waiting_days(home)} == raw
    assert sorted(raw) == ["2023-02-10", "2023-02-15", "2030-06-01"]


def test_remember_moved_with_the_state_full_lets_new_rows_wait_not_warn(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    first = Outside()
    first["rankings"] = {key: "2023-01-20" for key in range(1, REMEMBER_UNDATED + 1)}
    assert remember_moved(home, first) == ""
    later = Outside()
    later["rankings"] = {5000: "2023-02-10", 6000: "2023-01-05"}
    assert remember_moved(home, later) == ""
    assert _remembered_ids(home) == set(range(1, REMEMBER_UNDATED + 1))     # none remembered before trimmed
    assert _waiting(home, "2023-02-10") == {"rankings": [5000]} and _waiting(home, "2023-01-05") == {"rankings": [6000]}
    # a row the state remembers already is not listed again (one place each)
    again = Outside()
    again.waiting["rankings"] = {"2023-02-10": array.array("q", [1, 7000])}
    assert remember_moved(home, again) == ""
    assert _waiting(home, "2023-02-10") == {"rankings": [5000, 7000]}
    assert list(again.waiting["rankings"]["2023-02-10"]) == [1, 7000]         # the caller's list as it was


def test_the_waiting_file_unwritable_still_holds_the_day_back(tmp_path: Path) -> None:
    """Crash safety kept: a row that cannot be remembered anywhere holds its day back (the warning says so)."""
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.cache / MOVED_WAITING).write_bytes(b"not a folder")
    outside = Outside()
    outside["rankings"] = {key: "2023-01-20" for key in range(1, REMEMBER_UNDATED + 1)}
    outside.waiting["rankings"] = {"2023-01-20": array.array("q", [REMEMBER_UNDATED + 1])}
    line = remember_moved(home, outside)
    assert "could not be remembered" in line and "--from DAY --to DAY" in line
    assert (home.cache / MOVED_WAITING).read_bytes() == b"not a folder"


def _moved_away(server, tmp_path: Path, total: int) -> tuple[str, DataHome]:
    """Rankings 1..``total`` exported in 2023-03-01, then moved to 2023-02-15 (before the raw zone's first day)."""
    dsn, home = _app_db(server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rankings(conn, 1, total, "2023-03-01 10:00")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-15 08:00'")
    return dsn, home


def test_rows_past_the_cap_moved_before_the_first_day_are_named_each_night_until_exported(  # noqa: F811
        postgres_server, tmp_path):  # noqa: F811
    """The held-back case of fix37d: 1,005 rankings move from 2023-03-01 to days before the raw zone's first. The
    re-export publishes (its late row too), every ranking is in a raw day or remembered, every night names the
    rows with the build of their day, and that build holds them all; then no cache is left and no night names them."""
    total = REMEMBER_UNDATED + 5
    dsn, home = _moved_away(postgres_server, tmp_path, total)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 08:00' WHERE ranking_id = %s", (total,))
        _rankings(conn, 5000, 5000, "2023-03-01 18:00")        # a late row of the day, to be published
    night = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert night.published == "updated", night.warnings
    assert _raw_ids(home) == [5000]
    assert _remembered_ids(home) | _waiting_ids(home) == set(range(1, total + 1))     # no row lost
    assert waiting_days(home) == ["2023-02-15"]           # the rows past the cap; id ``total``'s day kept first
    for later in ("2023-03-02", "2023-03-03"):
        report = export_day(home, dsn, later, NIGHTLY, now=NOW)
        named = [line for line in report.warnings if f"rankings: {total} (" in line]
        assert named and "2023-02-10" in named[0] and "2023-02-15" in named[0], report.warnings
        assert "--from-app-db --from DAY --to DAY" in named[0]
    for day in ("2023-02-10", "2023-02-15"):                 # the builds the warnings name
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert _raw_ids(home) == sorted([*range(1, total + 1), 5000])     # each in exactly one raw day
    assert _remembered_ids(home) == set() and waiting_days(home) == []
    quiet = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)
    assert not any("2023-02-15" in line for line in quiet.warnings), quiet.warnings


def test_a_waiting_row_moved_again_is_named_with_its_new_day_and_a_deleted_one_forgotten(  # noqa: F811
        postgres_server, tmp_path):  # noqa: F811
    total = REMEMBER_UNDATED + 3
    dsn, home = _moved_away(postgres_server, tmp_path, total)
    assert export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW).published == "updated"
    back, gone, stays = _waiting(home, "2023-02-15")["rankings"]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-01 08:00' WHERE ranking_id = %s", (back,))
        conn.execute("DELETE FROM rankings WHERE ranking_id = %s", (gone,))
    night = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    named = [line for line in night.warnings if f"rankings: {total - 1} (" in line]     # the deleted one not
    assert named and "the raw zone lacks 2023-02-01, 2023-02-15" in named[0], night.warnings
    assert _waiting(home, "2023-02-15")["rankings"] == [back, stays]
    export_day(home, dsn, "2023-02-01", NIGHTLY, now=NOW)
    assert [row["ranking_id"] for row in _lines(home, "2023-02-01", "rankings")] == [back]
    assert _waiting(home, "2023-02-15")["rankings"] == [stays]
