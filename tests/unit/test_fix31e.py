"""Fix of review rev31e (``tests/unit/test_hostile_rev31e.py``), the app-database export: cases its tests do not cover.

A row under a raw day's id that the app dates to another day now marks that day whatever its identity, from the
lookback's own re-export (``left_rows``) and from a ``keep_exported_rows`` re-export too, where the old day keeps the
line of another identity; exports of one day take their snapshot under the day's export lock with a ticket, and an
export whose day already holds a newer snapshot publishes nothing ("superseded": no record, no marker cleared, no
undated state saved); a later export publishes again; the tickets count up past a clock set back and read a record
the export did not write as none; the undated rows' state is merged, not overwritten, by overlapping exports; a late
marker that cannot be set or cleared is a warning.
"""
from __future__ import annotations

import fcntl
import gzip
import json
import os

import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from formats.locks import open_lock_file, try_lock
from pipelines.appdb import export as export_module
from pipelines.appdb.export import (
    SNAPSHOT_ORDER,
    UNDATED_STATE,
    AppExportConfig,
    UndatedWatch,
    _load_undated,
    export_day,
    export_lock_file,
    late_days,
    mark_late,
    save_undated,
    snapshot_order,
    take_snapshot,
    written_by_export,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

KEEPING = AppExportConfig(lag_minutes=60, lookback_days=2, keep_exported_rows=True)


def _lines(home: DataHome, day: str) -> list[dict]:
    path = home.raw_file(day, "rankings")
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()] if path.exists() else []


def _ids(home: DataHome, day: str) -> list:
    return [line["ranking_id"] for line in _lines(home, day)]


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, prompt) "
                 "VALUES (%s, %s, %s, 'u0', 'u1', 'p')", (ranking_id, f"{day} 12:00", user_id))


# --- 1. the identity decides what the old day keeps, never whether the new day is marked ------------------------------

def test_the_lookback_re_export_marks_the_day_of_a_row_moved_and_reassigned(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-20", 2, user_id=9)
    for day in ("2023-03-01", "2023-03-20"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:        # moved far back, past the check's window, and given another user
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 08:00', user_id = 3 WHERE ranking_id = 2")
    report = export_day(home, dsn, "2023-03-20", NIGHTLY, now=NOW)      # the lookback's own re-export (left_rows)
    assert _ids(home, "2023-03-20") == [] and late_days(home) == ["2023-03-01"]
    assert any("dated to another day now" in w and "1 on 2023-03-01 (ids 2)" in w for w in report.warnings)
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert [(r["ranking_id"], r["user_id"]) for r in _lines(home, "2023-03-01")] == [(1, 1), (2, 3)]
    assert late_days(home) == []


def test_a_keeping_re_export_keeps_the_old_line_and_marks_the_new_day(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-20", 2, user_id=9)
    for day in ("2023-03-01", "2023-03-20"):
        export_day(home, dsn, day, KEEPING, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 08:00', user_id = 3 WHERE ranking_id = 2")
    report = export_day(home, dsn, "2023-03-20", KEEPING, now=NOW)
    # another identity: the day keeps its line (as a restore's reused id, rev30b) and the app's row gets its day
    assert [(r["ranking_id"], r["user_id"]) for r in _lines(home, "2023-03-20")] == [(2, 9)]
    assert report.kept["rankings"]["rows"] == 1 and late_days(home) == ["2023-03-01"]
    for day in late_days(home):
        export_day(home, dsn, day, KEEPING, now=NOW)
    assert [(r["ranking_id"], r["user_id"]) for r in _lines(home, "2023-03-01")] == [(1, 1), (2, 3)]


# --- 2. exports of one day: the snapshot's ticket and the publish -------------------------------------------------------

def test_a_superseded_export_publishes_and_records_nothing_and_a_later_one_publishes(postgres_server,  # noqa: F811
                                                                                     tmp_path):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    day = "2023-03-01"
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, 1)
    export_day(home, dsn, day, NIGHTLY, now=NOW)
    newer = []

    def meanwhile(message: str) -> None:
        if message.startswith("rankings") and not newer:
            with psycopg.connect(dsn) as conn:
                _rank(conn, day, 2)
            newer.append(export_day(home, dsn, day, NIGHTLY, now=NOW))
            mark_late(home, day, True)       # as a later late-row check of another export may leave it

    older = export_day(home, dsn, day, NIGHTLY, now=NOW, progress=meanwhile)
    assert older.published == "superseded" and not older.changed_tables
    assert any("was not published" in w and SNAPSHOT_ORDER in w for w in older.warnings)
    assert _ids(home, day) == [1, 2] and written_by_export(home, day)     # the newer export's record stands
    assert late_days(home) == [day]                                        # not cleared by the older snapshot
    order = snapshot_order(home, day)
    assert order["published"] == order["taken"] and order["taken"] > 0
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, 3)
    again = export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert again.published == "updated" and _ids(home, day) == [1, 2, 3] and late_days(home) == []
    assert not [p for p in home.raw_logs.iterdir() if p.name.startswith(".dt=")]   # no staging folder left


class _Conn:
    """A connection stand-in: whether the day's export lock was held when the snapshot's statement ran."""

    def __init__(self, home: DataHome, day: str) -> None:
        self.home, self.day, self.held = home, day, None

    def execute(self, query: str) -> None:
        fd = open_lock_file(export_lock_file(self.home, self.day), "a probe")
        try:
            self.held = not try_lock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)


def test_the_snapshot_is_taken_under_the_day_lock_with_a_ticket_that_counts_up(tmp_path, monkeypatch):
    home, day = DataHome.at(tmp_path / "home"), "2023-03-01"
    conn = _Conn(home, day)
    first, warning = take_snapshot(conn, home, day)
    assert conn.held is True and warning == "" and snapshot_order(home, day) == {"taken": first, "published": 0}
    monkeypatch.setattr(export_module.time, "time_ns", lambda: 5)      # the clock set back
    second, _ = take_snapshot(conn, home, day)
    assert second == first + 1
    other, _ = take_snapshot(_Conn(home, "2023-03-02"), home, "2023-03-02")
    # each day its own record and lock; since fix31h one clock for every day's tickets (and the late markers')
    assert other == second + 1 and snapshot_order(home, "2023-03-02")["taken"] == other
    record = home.cache / SNAPSHOT_ORDER / f"dt={day}.json"
    for junk in (b"not json", b'{"taken": "9", "published": -1}', b"[1, 2]"):   # not the export's: read as none
        record.write_bytes(junk)
        assert snapshot_order(home, day) == {"taken": 0, "published": 0}
    record.unlink()
    record.mkdir()                                                        # cannot be written: said, not raised
    ticket, warning = take_snapshot(conn, home, day)
    assert ticket == other + 1 and "could not be recorded" in warning


# --- 3. the undated rows' state and the late markers ----------------------------------------------------------------------

def _watch(loaded: dict, state: dict) -> UndatedWatch:
    full = {table: {} for table in ("users", "images", "rankings", "downloads")}
    return UndatedWatch({**full, **state}, {}, {**full, **loaded})


def test_overlapping_exports_merge_the_undated_state(tmp_path):
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.cache / UNDATED_STATE).write_text(json.dumps({"rankings": [[5, None], [6, None], [7, None]]}))
    loaded = {"rankings": {5: None, 6: None, 7: None}}
    # export X: 5 dated to 03-02 since, 6 exported in its own day (forgotten), 8 undated now
    assert save_undated(home, _watch(loaded, {"rankings": {5: "2023-03-02", 7: None, 8: None}})) == ""
    # export Y loaded the same state before X saved: it learnt 7 is dated to 03-04, 9 undated now
    assert save_undated(home, _watch(loaded, {"rankings": {5: None, 6: None, 7: "2023-03-04", 9: None}})) == ""
    assert _load_undated(home)["rankings"] == {5: "2023-03-02", 7: "2023-03-04", 8: None, 9: None}
    # everything forgotten: the file goes
    now = _load_undated(home)
    assert save_undated(home, _watch(now, {})) == "" and not (home.cache / UNDATED_STATE).exists()


def test_a_late_marker_that_cannot_be_set_or_cleared_is_a_warning(tmp_path):
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.cache / "app_export_late").write_bytes(b"a file where the markers' folder belongs")
    assert "could not be written" in mark_late(home, "2023-03-01", True)
    assert "pickapic build --from-app-db --from 2023-03-01 --to 2023-03-01" in mark_late(home, "2023-03-01", True)
    assert "could not be removed" in mark_late(home, "2023-03-01", False)
    (home.cache / "app_export_late").unlink()
    assert mark_late(home, "2023-03-01", True) == "" and late_days(home) == ["2023-03-01"]
    assert mark_late(home, "2023-03-01", False) == "" and late_days(home) == []


def test_the_export_reports_a_marker_it_could_not_clear(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
    home.cache.mkdir(parents=True)
    (home.cache / "app_export_late").write_bytes(b"not a folder")
    report = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert report.published == "new day" and any("could not be removed" in w for w in report.warnings)
