"""Fix38f: the defect of review rev38c (``tests/unit/test_hostile_rev38c.py``), beyond the review's tests.

- ``pipelines.appdb.scheduled.ScheduledDays(newest=)``: the gap horizon counts from the later of the raw zone's last
  day and the newest day closed by the caller's clock (``newest_closed``: the export's ``now``, the schedule's tick),
  so every gap it holds is one the coming nights' ``missing_days`` request by the clock; a clock behind the raw zone
  (a test clock, a clock gone backwards) holds what the raw zone alone holds (the fewer gaps: the safe side).
- ``newest_closed`` is the schedule's newest day and the newest day ``export.is_closed`` calls closed.
- ``dated_warning(newest=)`` marks only the gaps held by that clock.
"""
from __future__ import annotations

import datetime as dt

import pytest
from test_fix37b import _days, _empty_day, _shift

from formats.home import DataHome
from pipelines.appdb.export import dated_warning, is_closed, raw_day_counts
from pipelines.appdb.scheduled import CATCH_UP_DAYS, SCHEDULED_GAP_DAYS, ScheduledDays, gap_horizon, newest_closed

LAST = "2023-03-04"


def _gappy(fast_tmp) -> tuple[DataHome, list[str], list[str]]:
    """Every day 2021-06-01..LAST but a gap every 9 days: the home, its raw days, the gaps."""
    home = DataHome.at(fast_tmp / "home")
    gaps = [day for k, day in enumerate(_days("2021-06-02", LAST)) if k % 9 == 4]
    for day in _days("2021-06-01", LAST):
        if day not in gaps:
            _empty_day(home, day)
    return home, home.raw_days(), gaps


@pytest.mark.parametrize("ahead", [-400, -1, 0, 1, 20, 40, 200, 330, 400])
def test_every_gap_held_by_the_clock_is_requested_by_the_coming_nights(fast_tmp, ahead):
    """The clock's newest closed day ``ahead`` days from the raw zone's last: the next night (newest the day after
    the later of the two) and the one CATCH_UP_DAYS late, with a lookback of 0 and 7, request every gap held (in
    their catch-up or their window)."""
    from dagster_project.automation import missing_days

    home, raw, gaps = _gappy(fast_tmp)
    clock = _shift(LAST, ahead)
    scheduled = ScheduledDays(home, raw, raw_day_counts, clock)
    held = [day for day in gaps if day in scheduled]
    remembered = [day for day in gaps if scheduled.before(day)]
    assert sorted(held + remembered) == gaps                       # each gap one or the other
    assert scheduled.horizon == gap_horizon(max(LAST, clock))
    assert held == [day for day in gaps if day >= _shift(max(LAST, clock), 1 - SCHEDULED_GAP_DAYS)]
    nxt = _shift(max(LAST, clock), 1)
    for late in (0, CATCH_UP_DAYS):
        for lookback in (0, 7):
            first = _shift(nxt, late - lookback)      # the night's window: first .. its newest day, exported
            requested = set(missing_days(home, first, raw)) | set(_days(first, _shift(nxt, late)))
            assert set(held) <= requested, (late, lookback, sorted(set(held) - requested)[:3])
    if ahead <= 0:   # a clock behind the raw zone: what the raw zone alone holds (no more gaps held)
        alone = ScheduledDays(home, raw, raw_day_counts)
        assert [day for day in gaps if day in alone] == held and held
    if ahead >= SCHEDULED_GAP_DAYS:   # a clock a horizon past the raw zone: every gap is remembered
        assert held == [] and remembered == gaps
    assert all(day in scheduled for day in raw)                     # the raw days stay held, however old


def test_newest_closed_is_the_schedules_newest_day_and_the_exports_closed_one():
    for now, lag in [(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), 0),
                     (dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.timezone.utc), 60),
                     (dt.datetime(2024, 3, 1, 23, 59, tzinfo=dt.timezone.utc), 120),
                     (dt.datetime(2024, 3, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=9))), 0)]:
        newest = newest_closed(now, lag)
        assert is_closed(newest, lag, now) and not is_closed(_shift(newest, 1), lag, now), (now, lag, newest)
    assert newest_closed(dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.timezone.utc), 60) == "2023-12-30"
    assert newest_closed(dt.datetime(1, 1, 1, 0, 10, tzinfo=dt.timezone.utc), 60) == ""   # before the calendar
    assert newest_closed(None, 0) == (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    home_free = ScheduledDays(DataHome.at("/nonexistent-fix38f"), [LAST], raw_day_counts, "")
    assert home_free.horizon == gap_horizon(LAST)   # '' (no clock, or one before the calendar): the raw zone's day


def test_dated_warning_marks_only_the_gaps_held_by_the_clock(fast_tmp):
    """A row reported undated, dated since to a gap: marked (the coming night exports it) by the raw zone's clock,
    named and not marked by a clock past the gap's horizon (the row stays remembered)."""
    home, raw, gaps = _gappy(fast_tmp)
    gap = next(day for day in gaps if day >= gap_horizon(LAST))
    dated = {"rankings": {7: gap}}
    line, marked = dated_warning(home, dated)
    assert marked == [gap] and f"id 7 on {gap}" in line
    line, marked = dated_warning(home, dated, None, _shift(LAST, 60))
    assert marked == [] and f"id 7 on {gap}" in line and f"the raw zone lacks {gap}" in line
    assert dated_warning(home, dated, None, _shift(LAST, -60))[1] == [gap]   # a clock behind: as the raw zone
