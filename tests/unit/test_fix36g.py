"""Fix36g (review rev36g): the moved-row code and the schedule agree on the days the schedule exports again.

- ``pipelines.appdb.scheduled.ScheduledDays`` is the one definition: the raw days (a marked one is re-exported)
  and the days after the first real raw day (``real_days``: stray first days left out, as the schedule's
  catch-up ``missing_days`` judges them). ``moved_rows`` remembers a row moved to any other day up to the raw
  zone's last (between a stray first day and the history too), ``moved_days`` / ``dated_warning`` mark only
  the days it holds.
- ``export_day`` holds its day back (publishes nothing, ``published = "held back"``) where a moved row's
  marker could not be set or the row could not be remembered: the old day keeps the row until an export can
  record it.

The unit tests of the definition write tiny raw days (no database); the export tests use the real PostgreSQL
server of ``tests/postgres_server.py``.
"""
from __future__ import annotations

import datetime as dt
import errno
import gzip

import psycopg
from appdb_fixtures import MARCH_FIRST, NIGHTLY, NOW, add_ranking, exported_app, move_rankings, raw_lines

from formats.home import DataHome
from pipelines.appdb import export as app_export
from pipelines.appdb.export import AppExportReport, export_day, late_days, moved_days, raw_day_counts
from pipelines.appdb.scheduled import CATCH_UP_DAYS, STRAY_DAY_ROWS, ScheduledDays, real_days
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _raw_day(home: DataHome, day: str, rankings: int = 0) -> None:
    folder = home.raw_day(day)
    folder.mkdir(parents=True)
    with gzip.open(folder / "rankings.jsonl.gz", "wb") as out:
        out.write(b"".join(b'{"ranking_id": %d, "user_id": 1}\n' % i for i in range(1, rankings + 1)))


def _days(start: str, end: str) -> list[str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(first + dt.timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def test_a_stray_first_day_is_scheduled_but_not_the_gap_after_it(fast_tmp):
    home = DataHome.at(fast_tmp / "home")
    _raw_day(home, "2022-06-01", rankings=1)                      # a stray: one row, long before
    _raw_day(home, "2023-03-01", rankings=50)
    _raw_day(home, "2023-03-05", rankings=50)
    scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts)
    assert scheduled.start == "2023-03-01"
    assert "2022-06-01" in scheduled                               # a raw day: re-exported once marked
    assert "2023-02-15" not in scheduled and scheduled.before("2023-02-15")
    assert "2022-05-31" not in scheduled and scheduled.before("2022-05-31")
    assert "2023-03-03" in scheduled and not scheduled.before("2023-03-03")   # a gap the catch-up fills
    assert "2023-03-06" not in scheduled and not scheduled.before("2023-03-06")   # the nightly's own
    moved = {"rankings": {"2023-02-15": [1, ["3"]], "2023-03-03": [1, ["4"]], "2022-06-01": [1, ["5"]],
                          "2023-04-01": [1, ["6"]]}}
    assert moved_days(scheduled, moved) == ["2022-06-01", "2023-03-03"]


def test_a_first_day_near_the_next_or_with_many_rows_or_empty_is_history(fast_tmp):
    for rows, gap, start in ((1, CATCH_UP_DAYS, "2023-01-29"), (STRAY_DAY_ROWS, 60, "2022-12-31"),
                             (0, 60, "2022-12-31")):
        home = DataHome.at(fast_tmp / f"home-{rows}-{gap}")
        first = (dt.date(2023, 3, 1) - dt.timedelta(days=gap)).isoformat()
        _raw_day(home, first, rankings=rows)
        _raw_day(home, "2023-03-01", rankings=50)
        scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts)
        assert scheduled.start == first == start, (rows, gap)
        assert (dt.date.fromisoformat(first) + dt.timedelta(days=1)).isoformat() in scheduled


def test_two_stray_days_and_the_newest_day_alone(fast_tmp):
    home = DataHome.at(fast_tmp / "home")
    _raw_day(home, "2021-01-01", rankings=1)
    _raw_day(home, "2022-01-01", rankings=2)
    _raw_day(home, "2023-03-01", rankings=50)
    assert ScheduledDays(home, home.raw_days(), raw_day_counts).start == "2023-03-01"
    assert real_days(home, ["2021-01-01", "2022-01-01"], "2023-03-01", raw_day_counts) == []
    alone = DataHome.at(fast_tmp / "alone")
    _raw_day(alone, "2022-01-01", rankings=1)                     # the newest raw day is never a stray
    scheduled = ScheduledDays(alone, alone.raw_days(), raw_day_counts)
    assert scheduled.start == "2022-01-01" and "2022-01-01" in scheduled and not scheduled.before("2022-01-02")
    empty = ScheduledDays(DataHome.at(fast_tmp / "empty"), [], raw_day_counts)
    assert empty.start == "" and "2022-01-01" not in empty and not empty.before("2022-01-01")


def test_every_gap_the_export_calls_scheduled_is_one_the_catch_up_exports(fast_tmp):
    """The agreement itself: for nights whose window starts after the raw days, a day up to the last raw day
    that the raw zone lacks is in ScheduledDays exactly where ``missing_days`` catches it up."""
    from dagster_project.automation import missing_days

    layouts = {"stray": [("2022-06-01", 1), ("2023-03-01", 50), ("2023-03-04", 50)],
               "real": [("2023-02-20", 50), ("2023-03-01", 50), ("2023-03-04", 50)],
               "stray-near": [("2023-02-10", 1), ("2023-03-01", 50), ("2023-03-04", 50)]}
    for name, layout in layouts.items():
        home = DataHome.at(fast_tmp / name)
        for day, rows in layout:
            _raw_day(home, day, rankings=rows)
        scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts)
        for first in ("2023-03-05", "2023-03-20"):
            missed = set(missing_days(home, first))
            for day in _days("2022-05-01", "2023-03-04"):
                if day not in scheduled.held:
                    assert (day in scheduled) == (day in missed), (name, first, day)


def test_a_marker_not_set_holds_the_day_back_and_the_next_export_publishes_it(postgres_server, fast_tmp,  # noqa: F811
                                                                             monkeypatch):
    """Defect 3's neighbour: the row moves to a raw day past the lookback (marked, not remembered); the marker
    cannot be written, so the old day is not published without the row; once it can, the day is published and
    the new day marked."""
    dsn, home = exported_app(postgres_server, fast_tmp / "home", {1: "2023-02-01 10:00", **MARCH_FIRST},
                             ("2023-02-01", "2023-03-01"))
    move_rankings(dsn, "2023-02-01 08:00", 3)
    with psycopg.connect(dsn) as conn:
        add_ranking(conn, 4, "2023-03-01 13:00")          # a late row of the day: waits with the day
    before = home.raw_file("2023-03-01", "rankings").read_bytes()
    real = app_export._write_cache_json

    def full(home_, path, record):
        if path.parent.name == app_export.LATE_MARKERS:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(home_, path, record)

    monkeypatch.setattr(app_export, "_write_cache_json", full)
    report = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    monkeypatch.undo()
    assert report.published == "held back" and report.tables == {}
    assert any("was not published" in line and "2023-02-01" in line for line in report.warnings), report.warnings
    assert home.raw_file("2023-03-01", "rankings").read_bytes() == before       # the row stays in its old day
    assert "none published" in report.metadata()["files"]
    assert late_days(home) == []
    again = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert again.published == "updated"
    assert [r["ranking_id"] for r in raw_lines(home, "2023-03-01", "rankings")] == [2, 4]
    assert late_days(home) == ["2023-02-01"]
    export_day(home, dsn, "2023-02-01", NIGHTLY, now=NOW)
    assert [r["ranking_id"] for r in raw_lines(home, "2023-02-01", "rankings")] == [1, 3]
    assert late_days(home) == []


def test_a_row_moved_into_a_gap_after_the_real_history_is_still_marked_not_remembered(postgres_server,  # noqa: F811
                                                                                        fast_tmp):
    """The neighbour the fix must keep: no stray, a row moved into a day the raw zone lacks after its first day
    is marked (the catch-up exports it), not remembered."""
    dsn, home = exported_app(postgres_server, fast_tmp / "home", {1: "2023-02-01 10:00", **MARCH_FIRST},
                             ("2023-02-01", "2023-03-01"))
    move_rankings(dsn, "2023-02-15 08:00", 3)
    report = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert report.published == "updated"
    assert late_days(home) == ["2023-02-15"]
    assert not (home.cache / app_export.UNDATED_STATE).exists()


def test_a_held_back_report_says_so_in_its_metadata():
    report = AppExportReport(day="2023-03-01", server={}, published="held back")
    assert report.metadata()["published"] == "held back" and "none published" in report.metadata()["files"]


def test_the_withdrawal_line_names_a_held_back_export_as_held_back():
    """A held-back export withdraws the blobs it copied as a superseded one does; its line says which it was."""
    from pipelines.appdb.export import withdrawn_warning

    assert "this superseded export" in withdrawn_warning("2023-03-01", 2, False, "a file cannot be read")
    held = withdrawn_warning("2023-03-01", 2, True, "", "held back")
    assert "this held back export copied" in held and "superseded" not in held
    assert "superseded" not in withdrawn_warning("2023-03-01", 0, False, "why", "held back")
