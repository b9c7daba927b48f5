"""Fix37b: the defects of review rev37b (``tests/unit/test_hostile_rev37b.py``), beyond the review's tests.

- ``pipelines.appdb.scheduled.ScheduledDays`` holds a gap of the history only from ``gap_horizon`` on
  (SCHEDULED_GAP_DAYS before the day after the raw zone's last day: the catch-up's CATCH_UP_HORIZON_DAYS less
  CATCH_UP_DAYS nights of slack), so every gap it holds is one the coming nights' ``missing_days`` request; an
  older gap is a day no schedule exports (``before``): a row moved or dated there is remembered and named, its day
  never marked. The raw days themselves stay held, however old (the late list re-exports them).
- ``app_export_schedule`` lists the raw zone once a tick (``missing_days`` takes the listing).
"""
from __future__ import annotations

import datetime as dt
import gzip

from formats.home import DataHome
from pipelines.appdb.export import RAW_TABLES, dated_warning, moved_days, raw_day_counts
from pipelines.appdb.scheduled import (
    CATCH_UP_DAYS,
    CATCH_UP_HORIZON_DAYS,
    SCHEDULED_GAP_DAYS,
    ScheduledDays,
    gap_horizon,
)


def _empty_day(home: DataHome, day: str) -> None:
    home.raw_day(day).mkdir(parents=True)
    for table in RAW_TABLES:
        home.raw_file(day, table).write_bytes(gzip.compress(b"", mtime=0))


def _shift(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def _days(start: str, end: str) -> list[str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(first + dt.timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def _history(fast_tmp, name: str = "home") -> DataHome:
    """History from 2021-01-01/02, a hole until 2022-02-01, then every day to 2023-03-04 but 2022-06-01."""
    home = DataHome.at(fast_tmp / name)
    for day in ["2021-01-01", "2021-01-02"] + [d for d in _days("2022-02-01", "2023-03-04") if d != "2022-06-01"]:
        _empty_day(home, day)
    return home


def test_the_horizon_boundary_and_the_old_raw_days(fast_tmp):
    home = _history(fast_tmp)
    scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts)
    edge = gap_horizon("2023-03-04")
    assert edge == _shift("2023-03-05", -SCHEDULED_GAP_DAYS) and SCHEDULED_GAP_DAYS < CATCH_UP_HORIZON_DAYS
    assert scheduled.start == "2021-01-01"
    assert "2021-01-01" in scheduled and "2021-01-02" in scheduled       # raw days: the late list re-exports them
    assert "2021-06-01" not in scheduled and scheduled.before("2021-06-01")
    assert "2022-06-01" in scheduled and not scheduled.before("2022-06-01")   # a gap within the horizon
    # a raw zone with a gap on the edge and one just before it
    edged = DataHome.at(fast_tmp / "edged")
    for day in ["2021-01-01"] + [d for d in _days("2021-01-02", "2023-03-04") if d not in (edge, _shift(edge, -1))]:
        _empty_day(edged, day)
    at_edge = ScheduledDays(edged, edged.raw_days(), raw_day_counts)
    assert edge in at_edge and not at_edge.before(edge)
    assert _shift(edge, -1) not in at_edge and at_edge.before(_shift(edge, -1))
    moved = {"rankings": {edge: [1, ["3"]], _shift(edge, -1): [1, ["4"]], "2021-01-01": [1, ["5"]]}}
    assert moved_days(at_edge, moved) == ["2021-01-01", edge]


def test_every_gap_held_is_requested_by_the_coming_nights(fast_tmp):
    """The guarantee: a gap ScheduledDays holds is in ``missing_days`` of the next night and of any night up to
    CATCH_UP_DAYS later, whatever the lookback (0..7), so its marker is cleared by a catch-up export."""
    from dagster_project.automation import missing_days

    home = DataHome.at(fast_tmp / "home")
    gaps = {_shift("2023-03-04", -k) for k in (3, 100, SCHEDULED_GAP_DAYS - 1, SCHEDULED_GAP_DAYS,
                                                SCHEDULED_GAP_DAYS + 1, CATCH_UP_HORIZON_DAYS + 10)}
    for day in _days("2021-06-01", "2023-03-04"):
        if day not in gaps:
            _empty_day(home, day)
    raw = home.raw_days()
    scheduled = ScheduledDays(home, raw, raw_day_counts)
    held_gaps = sorted(day for day in gaps if day in scheduled)
    assert held_gaps == sorted(day for day in gaps if day >= gap_horizon("2023-03-04")) and len(held_gaps) == 3
    for late in (0, CATCH_UP_DAYS - 1):
        for lookback in (0, 2, 7):
            first = _shift("2023-03-05", late - lookback)      # the window's first day of a coming night
            missed = set(missing_days(home, first, raw))
            due = {day for day in held_gaps if day < first}      # the later ones are the window's own
            assert due <= missed and len(due) >= 2, (late, lookback, due - missed)
            assert missing_days(home, first) == sorted(missed)          # the listing given or not: the same


def test_missing_days_given_the_listing_does_not_scan(fast_tmp, monkeypatch):
    from dagster_project.automation import missing_days

    home = _history(fast_tmp)
    raw = home.raw_days()
    expected = missing_days(home, "2023-03-05")
    assert expected == ["2022-06-01"]         # the 2021 hole: past CATCH_UP_HORIZON_DAYS before the window

    def refuse(self):
        raise AssertionError("scanned")

    monkeypatch.setattr(DataHome, "scan_raw_zone", refuse)
    assert missing_days(home, "2023-03-05", raw) == expected


def test_a_dated_row_past_the_horizon_is_named_not_marked(fast_tmp):
    """``dated_warning`` (rows once undated or moved, remembered): a row dated to a gap past the horizon is named
    (with the build that exports it), not marked; one dated to a gap within it is marked for the catch-up."""
    home = _history(fast_tmp)
    line, marked = dated_warning(home, {"rankings": {7: "2021-06-01", 8: "2022-06-01", 9: "2023-04-01"}})
    assert marked == ["2022-06-01"]
    assert "2021-06-01" in line and "--from 2021-06-01 --to 2021-06-01" in line
    assert "2023-04-01" not in line                      # after the raw zone's last day: the nightly's own


def test_a_horizon_before_the_calendar_and_an_empty_raw_zone(fast_tmp):
    assert gap_horizon("0001-01-05") == ""
    home = DataHome.at(fast_tmp / "home")
    for day in ("0001-01-01", "0001-01-20"):
        _empty_day(home, day)
    scheduled = ScheduledDays(home, home.raw_days(), raw_day_counts)
    assert "0001-01-10" in scheduled and not scheduled.before("0001-01-10")
    empty = ScheduledDays(DataHome.at(fast_tmp / "empty"), [], raw_day_counts)
    assert empty.horizon == "" and "2021-06-01" not in empty and not empty.before("2021-06-01")
