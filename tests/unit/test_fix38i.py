"""Fix38i (noticed by fix38f): a row moved into a gap of the raw zone that ``ScheduledDays`` held (within the
catch-up's horizon by the export's clock) is marked there, not remembered. The schedule re-exported only the marked
days the raw zone holds and left the gap to its catch-up, whose horizon (CATCH_UP_HORIZON_DAYS before the night's
window) follows the clock: after an outage longer than the 31 nights of slack (SCHEDULED_GAP_DAYS) no night
requested that day, so the row ended in no raw day, its marker there for good.

``app_export_schedule`` now also requests the marked days the raw zone lacks (after its first day and before the
night's window, whatever their age), oldest first with the other marked days (at most CATCH_UP_DAYS a night). Exporting such a day
writes it (empty files where the app holds nothing for it) and clears its marker, so no night requests it again.
The tick still lists the raw zone once and reads the markers once.

Real PostgreSQL server (``tests/postgres_server.py``), the real ``export_day`` and the real schedule tick.
"""
from __future__ import annotations

import datetime as dt

import psycopg
from appdb_fixtures import NIGHTLY
from appdb_fixtures import add_ranking as _rank
from appdb_fixtures import app_db as _app_db
from appdb_fixtures import raw_lines as _lines
from test_fix37b import _days, _empty_day, _shift
from test_hostile_rev29c import _tick

from formats.home import DataHome
from pipelines.appdb import export
from pipelines.appdb.connection import DSN_ENV
from pipelines.appdb.export import RAW_TABLES, export_day, late_days, mark_late, raw_day_counts
from pipelines.appdb.scheduled import CATCH_UP_DAYS, ScheduledDays, gap_horizon, newest_closed
from tests.postgres_server import postgres_server  # noqa: F401 - fixture

LAST = "2023-03-04"          # the raw zone's last day: the night of 2023-03-05 exported it, then an outage
GAP = "2022-04-10"           # a gap of the raw zone within gap_horizon(LAST) = 2022-04-04
OUTAGE = 60                  # nights down: more than the CATCH_UP_DAYS nights of slack


def _at(day: str) -> dt.datetime:
    """The tick of the night whose newest closed day is ``day`` (01:00 UTC, NIGHTLY's 60-minute lag)."""
    return dt.datetime.combine(dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time(1, 0), dt.timezone.utc)


def _schedule_env(monkeypatch) -> None:
    monkeypatch.setenv(DSN_ENV, "postgresql://nobody@localhost/unused")   # a tick plans only: never connected
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", str(NIGHTLY.lag_minutes))
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", str(NIGHTLY.lookback_days))


def _history(fast_tmp, early: bool = False) -> DataHome:
    """Quiet days 2022-02-01..LAST but GAP (``early``: and the quiet day 2020-12-31, the raw zone's first, a hole
    after it past every coming night's catch-up)."""
    home = DataHome.at(fast_tmp / "home")
    for day in ["2020-12-31"] * early + _days("2022-02-01", LAST):
        if day != GAP:
            _empty_day(home, day)
    return home


def _nights(home: DataHome, fast_tmp, first: str, count: int) -> list[list[str]]:
    """``count`` nights from the one whose newest day is ``first``, each exporting what it requests as an empty
    day would be (files written, marker cleared): the days each night requested."""
    nights = []
    for k in range(count):
        folder = fast_tmp / f"instance-{first}-{k}"
        folder.mkdir()
        requested = _tick(home, folder, _at(_shift(first, k)))
        for day in requested:
            if day not in home.raw_days():
                _empty_day(home, day)
            assert mark_late(home, day, False) == ""
        nights.append(requested)
    return nights


def test_a_gap_marked_before_a_long_outage_is_requested_when_the_nights_resume(fast_tmp, monkeypatch):
    """The export of the night after LAST holds GAP (its clock's horizon), so a row moved there is marked; the
    nights resume OUTAGE days later: one of them requests GAP (before: none did, the catch-up's horizon had passed
    it, and the late list took the raw days only)."""
    _schedule_env(monkeypatch)
    home = _history(fast_tmp)
    assert GAP in ScheduledDays(home, home.raw_days(), raw_day_counts, newest_closed(_at(LAST), 60))
    assert mark_late(home, GAP, True) == ""                       # as moved_days / dated_warning mark it
    nights = _nights(home, fast_tmp, _shift(LAST, OUTAGE), 3)
    assert GAP not in nights[0][CATCH_UP_DAYS:]                    # not the catch-up's (past its horizon) ...
    assert nights[0][0] == GAP, nights[0][:3]                     # ... the marked days' (the oldest first)
    assert [night.count(GAP) for night in nights] == [1, 0, 0]     # exported once: requested no more
    assert late_days(home) == [] and GAP in home.raw_days()
    # the outage itself is still caught up (31 a night) beside it, and the window requested every night
    outage = _days(_shift(LAST, 1), _shift(LAST, OUTAGE - NIGHTLY.lookback_days - 1))
    assert sorted(set(outage) - {d for night in nights for d in night}) == []


def test_which_marked_days_the_raw_zone_lacks_are_requested(fast_tmp, monkeypatch):
    """Requested: a closed marked day the raw zone lacks after its first day, however old (a marker left by an
    older version between a stray first day and the history, fix36g, is exported too: its row was not
    remembered). Not requested: a marked day before the raw zone's first (no export marks one since fix36n, its
    rows remembered; exporting it would start the history anew), one not closed by the tick (the nightly's own
    when it closes), a marker name that is no calendar day; no tick fails on any. At most CATCH_UP_DAYS marked
    days a night, the oldest first, the raw days' markers among them."""
    _schedule_env(monkeypatch)
    home = _history(fast_tmp, early=True)
    night = _shift(LAST, 4)                          # LAST + 1 is missing (the catch-up's), GAP too
    before, old, held, future = "2019-05-05", "2021-05-05", "2023-01-10", _shift(night, 3)
    for day in (before, "2020-12-30", old, GAP, held, future):
        assert mark_late(home, day, True) == ""
    bogus = export.late_marker_file(home, "2021-02-30")
    bogus.write_text("{}")
    (fast_tmp / "i1").mkdir()
    requested = _tick(home, fast_tmp / "i1", _at(night))
    window = _days(_shift(night, -NIGHTLY.lookback_days), night)
    assert requested == [old, GAP, held, _shift(LAST, 1)] + window, requested
    # more marked days than a night takes: the oldest CATCH_UP_DAYS, the rest on the next nights
    many = _days("2021-01-01", "2021-03-01")
    for day in many:
        assert mark_late(home, day, True) == ""
    (fast_tmp / "i2").mkdir()
    requested = _tick(home, fast_tmp / "i2", _at(night))
    assert requested[:CATCH_UP_DAYS] == many[:CATCH_UP_DAYS]
    assert requested[CATCH_UP_DAYS:] == [GAP, _shift(LAST, 1)] + window     # the catch-up's days beside them


def test_the_tick_lists_the_raw_zone_once_and_reads_the_markers_once(fast_tmp, monkeypatch):
    _schedule_env(monkeypatch)
    home = _history(fast_tmp, early=True)
    for day in _days("2021-01-01", "2021-02-19") + [GAP]:          # 50 marked days the raw zone lacks, and GAP
        assert mark_late(home, day, True) == ""
    calls = {"scan": 0, "late": 0}

    def counted(name, real):
        def call(*args):
            calls[name] += 1
            return real(*args)
        return call

    monkeypatch.setattr(DataHome, "scan_raw_zone", counted("scan", DataHome.scan_raw_zone))
    monkeypatch.setattr(export, "late_days", counted("late", export.late_days))
    (fast_tmp / "instance").mkdir()
    requested = _tick(home, fast_tmp / "instance", _at(LAST))
    assert requested[:CATCH_UP_DAYS] == _days("2021-01-01", "2021-01-31")
    assert calls == {"scan": 1, "late": 1}, calls


def test_a_row_moved_into_a_held_gap_reaches_a_raw_day_after_a_long_outage(postgres_server, fast_tmp,  # noqa: F811
                                                                           monkeypatch):
    """End to end: the export of LAST's night moves ranking 3 from 2023-03-01 to GAP (held: marked, not
    remembered); the nights resume OUTAGE days later, and the export of what their first tick requests puts the
    row in GAP's raw day and clears the marker; an empty marked day (a row moved there and deleted since) is
    exported as empty files, its marker cleared: the next tick requests neither again."""
    _schedule_env(monkeypatch)
    dsn, home = _app_db(postgres_server), _history(fast_tmp)
    before = _at(LAST)
    with psycopg.connect(dsn) as conn:
        _rank(conn, 2, "2023-03-01 10:00")
        _rank(conn, 3, "2023-03-01 12:00")
    for table in RAW_TABLES:                       # the day as its export will write it
        home.raw_file("2023-03-01", table).unlink()
    home.raw_day("2023-03-01").rmdir()
    assert export_day(home, dsn, "2023-03-01", NIGHTLY, now=before).published == "new day"
    with psycopg.connect(dsn) as conn:
        conn.execute(f"UPDATE rankings SET created_at = '{GAP} 08:00' WHERE ranking_id = 3")
    moved = export_day(home, dsn, "2023-03-01", NIGHTLY, now=before)
    assert [r["ranking_id"] for r in _lines(home, "2023-03-01", "rankings")] == [2]
    assert late_days(home) == [GAP], moved.warnings                  # held by the export's clock: marked
    quiet = "2022-04-20"              # a held gap (past the resumed catch-up's horizon too), nothing in the app DB
    assert gap_horizon(LAST) <= quiet and home.raw_file(quiet, "rankings").exists()
    for table in RAW_TABLES:
        home.raw_file(quiet, table).unlink()
    home.raw_day(quiet).rmdir()
    assert mark_late(home, quiet, True) == ""
    resumed = _shift(LAST, OUTAGE)
    (fast_tmp / "i1").mkdir()
    first = _tick(home, fast_tmp / "i1", _at(resumed))
    assert first[:2] == [GAP, quiet], first[:3]
    for day in (GAP, quiet):
        assert export_day(home, dsn, day, NIGHTLY, now=_at(resumed)).published == "new day"
    assert [r["ranking_id"] for r in _lines(home, GAP, "rankings")] == [3]     # the row is in a raw day
    assert _lines(home, quiet, "rankings") == [] and home.raw_file(quiet, "users").exists()
    assert late_days(home) == []
    (fast_tmp / "i2").mkdir()
    second = _tick(home, fast_tmp / "i2", _at(_shift(resumed, 1)))
    assert GAP not in second and quiet not in second
