"""Review rev38e: hostile review of fix38b (rows moved before the raw zone's first day past the 1,000-a-table cap
wait in ``HOME/cache/app_export_moved/dt=DAY.json``).

Defects found (each a strict xfail below):

1. ``test_a_planted_waiting_file_costs_no_more_memory_than_its_size``: ``_load_waiting`` reads a dt=DAY.json whole
   and parses it into a Python list, then a set, then a sorted list of Python ints before the int64 array: a file of
   1,000,000 ids (11,000,015 bytes) peaked at 90,781,161 bytes under tracemalloc (8.25x its size). The only bound is
   MOVED_WAITING_MAX_BYTES = 1 GiB, so a planted (or a year's worth of) 1 GiB file costs ~8.9 GB in every nightly
   export (``watch_waiting``) and in every ``remember_moved``/``forget_waiting`` of that day: memory grows with the
   bad input, against README section 1's "one day's file read at a time: memory bounded".
2. ``test_naming_waiting_rows_over_many_days_is_linear``: ``watch_waiting`` decides whether a dated row is listed
   by counting, for every row, the rows already listed for its day over the whole ``listed`` dict (FIRST_IDS = 10 a
   day, every day): quadratic in the number of file days. 6,000 rows over 300 days: 9,013,500 values scanned.
   100,000 rows over 1,000 days (the brief's year of nights): 7.1 CPU-seconds each night in this loop alone, and
   1,000 row_days queries a night (one a file day and table).
3. ``test_a_corrupt_waiting_file_is_reported_not_silently_dropped``: since fix38b a dt=DAY.json can be the only
   record of a day before the raw zone's first (the 1,000 dated rows of UNDATED_STATE taken by older days, the rows
   of a newer day all wait in the file). A file that is not the export's JSON (truncated by 6 bytes: a restore, a
   hand edit) reads as no rows, with no warning: the night before it named 2023-02-10 with its build, the night
   after names nothing, so rankings 5001-5003 (moved off the published 2023-03-01..02) reach no raw day and no
   night names them; the next ``remember_moved`` onto that day replaces the file.

Attacks that ran clean (plain tests, pinned): a waiting row moved back to its old (published) day or to another
raw day ends in exactly that day once re-exported; one moved to a day not closed yet, or made undated, and then to
another day before the first is named and ends in that day's build; the raw zone backfilled earlier (the waiting
day now inside it) still names the day and its build leaves every row in exactly one raw day; an export killed
between writing the waiting file and the publish, followed by the named build before the old day's re-export,
leaves every row in exactly one raw day and no state behind.
"""
from __future__ import annotations

import array
import datetime as dt
import tracemalloc
from pathlib import Path

import psycopg
import pytest
from appdb_fixtures import NIGHTLY, NOW
from appdb_fixtures import add_rankings as _rankings
from appdb_fixtures import app_db as _app_db
from appdb_fixtures import raw_lines as _lines
from test_fix37h import _waiting
from test_fix38b import _moved_away, _raw_ids, _remembered_ids, _waiting_ids

from formats.home import DataHome
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    MOVED_WAITING,
    REMEMBER_UNDATED,
    WaitingWatch,
    _add_waiting,
    _load_waiting,
    export_day,
    waiting_days,
    watch_waiting,
)
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _three_waiting(server, tmp_path: Path) -> tuple[int, str, DataHome]:
    """1,003 rankings of 2023-03-01 moved to 2023-02-15 and their day re-exported: 1,000 remembered in
    UNDATED_STATE, the last 3 waiting in dt=2023-02-15.json."""
    total = REMEMBER_UNDATED + 3
    dsn, home = _moved_away(server, tmp_path, total)
    assert export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW).published == "updated"
    return total, dsn, home


def _each_once(home: DataHome, expected: set[int]) -> None:
    """Every ranking in exactly one raw day, and nothing left waiting."""
    ids = _raw_ids(home)
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert waiting_days(home) == []


def test_a_waiting_row_moved_back_to_its_old_day_ends_there_once(postgres_server, tmp_path):  # noqa: F811
    total, dsn, home = _three_waiting(postgres_server, tmp_path)
    back, later, stays = _waiting(home, "2023-02-15")["rankings"]
    export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 09:00' WHERE ranking_id = %s", (back,))
        conn.execute("UPDATE rankings SET created_at = '2023-03-02 09:00' WHERE ranking_id = %s", (later,))
    night = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert night.published == "new day", night.warnings
    # the schedule re-exports the marked days
    for day in ("2023-03-01", "2023-03-02"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert [r["ranking_id"] for r in _lines(home, "2023-03-01", "rankings")] == [back]
    assert [r["ranking_id"] for r in _lines(home, "2023-03-02", "rankings")] == [later]
    assert _waiting(home, "2023-02-15")["rankings"] == [stays]
    export_day(home, dsn, "2023-02-15", NIGHTLY, now=NOW)
    _each_once(home, set(range(1, total + 1)))
    assert _remembered_ids(home) == set()


def test_a_waiting_row_moved_to_a_day_not_closed_then_back(postgres_server, tmp_path):  # noqa: F811
    total, dsn, home = _three_waiting(postgres_server, tmp_path)
    a, b, _ = _waiting(home, "2023-02-15")["rankings"]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2030-01-01 09:00' WHERE ranking_id = %s", (a,))
        conn.execute("UPDATE rankings SET created_at = 'infinity' WHERE ranking_id = %s", (b,))
    night = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert _waiting_ids(home) | _remembered_ids(home) >= set(range(1, total + 1)), night.warnings
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 09:00' WHERE ranking_id IN (%s, %s)", (a, b))
    night = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    named = [line for line in night.warnings if "2023-02-10" in line]
    assert named, night.warnings
    for day in ("2023-02-10", "2023-02-15"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    _each_once(home, set(range(1, total + 1)))


def test_the_raw_zone_backfilled_earlier_takes_the_waiting_day_in(postgres_server, tmp_path):  # noqa: F811
    total, dsn, home = _three_waiting(postgres_server, tmp_path)
    with psycopg.connect(dsn) as conn:
        _rankings(conn, 9000, 9000, "2023-02-01 10:00")
    export_day(home, dsn, "2023-02-01", NIGHTLY, now=NOW)       # backfill: 2023-02-15 is inside the zone now
    night = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert any("2023-02-15" in line for line in night.warnings), night.warnings
    export_day(home, dsn, "2023-02-15", NIGHTLY, now=NOW)
    _each_once(home, set(range(1, total + 1)) | {9000})


def test_a_planted_waiting_file_costs_no_more_memory_than_its_size(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    path = home.cache / MOVED_WAITING / "dt=2023-02-15.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"rankings": [' + ",".join(str(10**9 + i) for i in range(1_000_000)) + "]}")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        ids = _load_waiting(home, "2023-02-15")["rankings"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ids) == 1_000_000
    assert peak < 3 * size, (peak, size)


def _waiting_days_db(server, tmp_path: Path, days: int, per_day: int) -> tuple[str, DataHome]:
    """``per_day`` rankings a day for ``days`` days from 2022-01-01 (ids 1.. in day order), all waiting in
    MOVED_WAITING under their own day (fix38m moved this builder here from the test below, to share it)."""
    dsn, home = _app_db(server), DataHome.at(tmp_path / "home")
    first = dt.date(2022, 1, 1)
    waiting: dict[str, dict[str, array.array]] = {"rankings": {}}
    with psycopg.connect(dsn) as conn:
        for d in range(days):
            on = (first + dt.timedelta(days=d)).isoformat()
            _rankings(conn, d * per_day + 1, (d + 1) * per_day, f"{on} 10:00")
            waiting["rankings"][on] = array.array("q", range(d * per_day + 1, (d + 1) * per_day + 1))
    home.cache.mkdir(parents=True)
    _add_waiting(home, waiting)
    return dsn, home


class _Counting(dict):
    scans = 0

    def values(self):
        for value in super().values():
            _Counting.scans += 1
            yield value


class _Dated(dict):
    def setdefault(self, key, default=None):
        return super().setdefault(key, _Counting())


def test_naming_waiting_rows_over_many_days_is_linear(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    days, per_day = 300, 20
    _Counting.scans = 0
    dsn, home = _waiting_days_db(postgres_server, tmp_path, days, per_day)
    queries = 0
    with psycopg.connect(dsn) as conn:
        real = conn.execute

        def counted(*args, **kwargs):
            nonlocal queries
            queries += 1
            return real(*args, **kwargs)

        conn.execute = counted
        monkeypatch.setattr(appexport, "WaitingWatch", lambda: WaitingWatch(dated=_Dated()))
        watch = watch_waiting(conn, home, "2023-06-01")
    assert queries <= days + 1                    # at most one row_days look-up a file day (300 now)
    assert len(watch.dated["rankings"]) == days * appexport.FIRST_IDS   # FIRST_IDS named a day, the others counted
    assert sum(watch.more["rankings"].values()) == days * (per_day - appexport.FIRST_IDS)
    # each waiting row looked at a bounded number of listed rows (9,013,500 scans for 6,000 rows)
    assert _Counting.scans <= 2 * appexport.FIRST_IDS * days * per_day, _Counting.scans


def test_a_corrupt_waiting_file_is_reported_not_silently_dropped(postgres_server, tmp_path):  # noqa: F811
    total, dsn, home = _three_waiting(postgres_server, tmp_path)
    with psycopg.connect(dsn) as conn:
        _rankings(conn, 5001, 5003, "2023-03-02 10:00")
    export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 08:00' WHERE ranking_id > 5000")
    night = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert night.published == "updated", night.warnings
    assert _waiting(home, "2023-02-10") == {"rankings": [5001, 5002, 5003]}
    assert not {5001, 5002, 5003} & _remembered_ids(home)       # the state is full: only the file knows them
    named = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert any("2023-02-10" in line for line in named.warnings), named.warnings
    path = home.cache / MOVED_WAITING / "dt=2023-02-10.json"
    path.write_bytes(path.read_bytes()[:-6])                 # truncated (a restore, a hand edit)
    night = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)
    assert any("2023-02-10" in line for line in night.warnings), night.warnings


def test_a_kill_between_the_waiting_file_and_the_publish_loses_and_doubles_nothing(  # noqa: F811
        postgres_server, tmp_path, monkeypatch):  # noqa: F811
    total = REMEMBER_UNDATED + 3
    dsn, home = _moved_away(postgres_server, tmp_path, total)

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt("killed before the publish")

    with monkeypatch.context() as patch:
        patch.setattr(appexport, "_publish", killed)
        with pytest.raises(KeyboardInterrupt):
            export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert len(_lines(home, "2023-03-01", "rankings")) == total          # the old day keeps every row
    assert _remembered_ids(home) | _waiting_ids(home) == set(range(1, total + 1))
    export_day(home, dsn, "2023-02-15", NIGHTLY, now=NOW)                # the named build first
    export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)                # the next night: its lookback re-exports
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    _each_once(home, set(range(1, total + 1)))
    assert _remembered_ids(home) == set()
