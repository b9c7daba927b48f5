"""Fix of review rev31h (``tests/unit/test_hostile_rev31h.py``), the app export's late markers: cases its tests do not
cover.

A late marker (``HOME/cache/app_export_late/dt=DAY``) now records a ticket drawn as it is set, from the one clock the
snapshots' tickets of every day come from (``HOME/cache/app_export_snapshots/clock.json``, drawn under
``HOME/.locks/app-export-tickets.lock``), and an export clears it only with a larger ticket (its snapshot taken after
the marker was set); a marker written before the fix (empty), or one the export did not write, counts as set at its
modification time; the checked days found whole are cleared once the export published (a superseded export clears
none); a superseded export's report names no file.
"""
from __future__ import annotations

import json
import os

import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.export import (
    LATE_MARKERS,
    SNAPSHOT_ORDER,
    TICKET_CLOCK,
    TICKETS_LOCK,
    export_day,
    last_ticket,
    late_days,
    late_rows,
    mark_late,
    marker_ticket,
    snapshot_order,
    take_snapshot,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

DAY = "2023-03-01"


class _Conn:
    """A connection stand-in for take_snapshot (its one statement)."""

    def execute(self, query: str) -> None:
        pass


def _rank(conn, day: str, ranking_id: int) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, prompt) "
                 "VALUES (%s, %s, 1, 'u0', 'u1', 'p')", (ranking_id, f"{day} 12:00"))


def _marker(home: DataHome, day: str = DAY):
    return home.cache / LATE_MARKERS / f"dt={day}"


# --- the marker's ticket and the clear ----------------------------------------------------------------------------------

def test_a_marker_records_its_ticket_and_only_a_later_snapshot_clears_it(tmp_path):
    home = DataHome.at(tmp_path / "home")
    before, _ = take_snapshot(_Conn(), home, "2023-03-20")          # another day's snapshot, taken before the mark
    assert mark_late(home, DAY, True) == ""
    stamp = json.loads(_marker(home).read_bytes())["ticket"]
    assert marker_ticket(home, DAY) == stamp > before and last_ticket(home) == stamp
    assert mark_late(home, DAY, False, before) == "" and late_days(home) == [DAY]     # older snapshot: kept
    assert mark_late(home, DAY, False, stamp) == "" and late_days(home) == [DAY]      # the same ticket: kept
    after, _ = take_snapshot(_Conn(), home, DAY)                    # this day's snapshot, taken after the mark
    assert after > stamp
    assert mark_late(home, DAY, False, after) == "" and late_days(home) == []
    assert mark_late(home, DAY, False, after) == ""                 # nothing there: nothing to say
    mark_late(home, DAY, True)
    assert mark_late(home, DAY, False) == "" and late_days(home) == []    # no ticket: an operator's clear
    # set again, the marker gets a new ticket: a snapshot taken between the two marks no longer clears it
    mark_late(home, DAY, True)
    between, _ = take_snapshot(_Conn(), home, DAY)
    mark_late(home, DAY, True)
    assert mark_late(home, DAY, False, between) == "" and late_days(home) == [DAY]


def test_the_tickets_of_every_day_and_marker_count_up_on_one_clock(tmp_path, monkeypatch):
    home = DataHome.at(tmp_path / "home")
    first, _ = take_snapshot(_Conn(), home, "2023-03-20")
    monkeypatch.setattr(export_module.time, "time_ns", lambda: 5)     # the clock set back
    mark_late(home, DAY, True)
    stamp = marker_ticket(home, DAY)
    second, _ = take_snapshot(_Conn(), home, DAY)
    assert first < stamp < second and last_ticket(home) == second
    # the clock's record lost (the day's record kept): a marker still counts past that day's tickets
    (home.cache / SNAPSHOT_ORDER / TICKET_CLOCK).unlink()
    mark_late(home, DAY, True)
    assert marker_ticket(home, DAY) > snapshot_order(home, DAY)["taken"] == second
    # tickets past the clock's record are read as no ticket: the marker counts as set at its modification time
    (home.cache / SNAPSHOT_ORDER / TICKET_CLOCK).write_bytes(b"not json")
    assert last_ticket(home) == 0
    assert marker_ticket(home, DAY) == os.lstat(_marker(home)).st_mtime_ns


def test_a_marker_without_a_ticket_counts_as_set_at_its_modification_time(tmp_path):
    home = DataHome.at(tmp_path / "home")
    take_snapshot(_Conn(), home, "2023-03-20")
    for content in (b"", b"garbage", b'{"ticket": "12"}', b'{"ticket": -3}', b"[1]", b"x" * 5000,
                    json.dumps({"ticket": last_ticket(home) + 10**9}).encode()):   # not a ticket the clock gave
        marker = _marker(home)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(content)                 # as an export before fix31h (empty) or someone else wrote it
        set_at = 1_700_000_000_123_456_789
        os.utime(marker, ns=(set_at, set_at))
        assert marker_ticket(home, DAY) == set_at, content
        assert mark_late(home, DAY, False, set_at) == "" and late_days(home) == [DAY]          # not before it
        assert mark_late(home, DAY, False, set_at + 1) == "" and late_days(home) == []         # after it


def test_a_tickets_lock_that_cannot_be_taken_is_a_warning_not_a_crash(tmp_path):
    home = DataHome.at(tmp_path / "home")
    (home.locks / TICKETS_LOCK).mkdir(parents=True)                # a folder where the lock file belongs
    assert "could not be written" in mark_late(home, DAY, True)
    assert "could not be removed" in mark_late(home, DAY, False, 1)
    assert late_days(home) == []


# --- through exports -------------------------------------------------------------------------------------------------

def test_a_checked_day_whose_marker_was_set_after_the_snapshot_keeps_it(postgres_server, tmp_path):  # noqa: F811
    """Not superseded: the export of 03-20 finds 03-04 whole in its snapshot, but 03-04's marker was set after that
    snapshot (here by hand, as another export's check finding a row committed since): it stays, and the next export
    clears it. A marker set before the snapshot, or one written before fix31h (empty, older), is cleared."""
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    checked, day = "2023-03-04", "2023-03-20"
    with psycopg.connect(dsn) as conn:
        _rank(conn, checked, 1)
        _rank(conn, day, 2)
    for each in (checked, day):
        export_day(home, dsn, each, NIGHTLY, now=NOW)
    marker = _marker(home, checked)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"")                                          # an old marker, set before this export
    export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert late_days(home) == []
    mark_late(home, checked, True)                                   # set before the snapshot: cleared
    export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert late_days(home) == []
    done = []

    def meanwhile(message: str) -> None:
        if message.startswith("rankings") and not done:
            done.append(mark_late(home, checked, True))

    report = export_day(home, dsn, day, NIGHTLY, now=NOW, progress=meanwhile)
    assert done == [""] and report.published == "unchanged" and not report.late
    assert late_days(home) == [checked]                               # set after its snapshot: kept
    export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert late_days(home) == []


def test_late_rows_alone_clears_only_from_a_snapshot_it_takes_itself(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    checked, day = "2023-03-04", "2023-03-20"
    with psycopg.connect(dsn) as conn:
        _rank(conn, checked, 1)
    export_day(home, dsn, checked, NIGHTLY, now=NOW)
    mark_late(home, checked, True)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")                  # a transaction already open: its snapshot may predate the marker
        assert late_rows(conn, home, day, NIGHTLY) == {} and late_days(home) == [checked]
        conn.rollback()
        assert late_rows(conn, home, day, NIGHTLY) == {} and late_days(home) == []


def test_a_superseded_export_reports_no_file_of_its_own(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, 1)
    newer = []

    def meanwhile(message: str) -> None:
        if message.startswith("rankings") and not newer:
            with psycopg.connect(dsn) as conn:
                _rank(conn, DAY, 2)
            newer.append(export_day(home, dsn, DAY, NIGHTLY, now=NOW))

    older = export_day(home, dsn, DAY, NIGHTLY, now=NOW, progress=meanwhile)
    assert newer[0].published == "new day" and newer[0].tables["rankings"].rows == 2
    assert older.published == "superseded" and older.tables == {} and older.kept == {}
    metadata = older.metadata()
    assert metadata["rows"] == 0 and metadata["changed_tables"] == "none"
    assert metadata["files"].startswith("none published") and "sha256" not in metadata["files"]
    assert not any(key.startswith("rows_") for key in metadata)
    assert json.loads(json.dumps(older.as_dict()))["tables"] == {}     # python -m pipelines.appdb's line
    assert any("was not published" in w for w in older.warnings)
