"""The days the nightly app export (``dagster_project.automation.app_export_schedule``) exports again: one
definition for the schedule's catch-up (``missing_days``) and the app export's moved-row code (``moved_rows``,
``moved_days``, ``dated_warning``), fix36g. Light on purpose (no database driver, no Dagster): the automation
module imports it as Dagster loads the definitions."""
from __future__ import annotations

import datetime as dt
import zlib
from typing import Callable

from formats.home import DataHome

# table -> (rows, largest id) of a raw day's files: ``pipelines.appdb.export.raw_day_counts``, given by the caller
# (the export's module imports this one, and is heavy for the automation module that Dagster loads)
DayCounts = Callable[[DataHome, str], dict]

CATCH_UP_DAYS = 31   # missing days a scheduled export adds before its lookback window, a night (oldest first)
CATCH_UP_HORIZON_DAYS = 366   # how far before the lookback window the schedule looks for missing days
# review rev37b: the gaps ScheduledDays holds, counted back from the day after the raw zone's last day (the next
# night's newest day; fix38f: or after the newest day closed by the caller's clock, if later): the catch-up's
# horizon less CATCH_UP_DAYS nights of slack (a next night that comes late, a lookback of 0), so a gap it holds is
# one a coming night's catch-up (oldest first) reaches; fix38i: a gap marked while held is also requested as a
# marked day (``app_export_schedule``), whatever its age, so an outage longer than the slack loses no row marked there
SCHEDULED_GAP_DAYS = CATCH_UP_HORIZON_DAYS - CATCH_UP_DAYS
STRAY_DAY_ROWS = 10      # fewer rows than this (but some) in the four files of a lone first raw day: a stray


def stray_day(home: DataHome, day: str, next_day: str, raw_day_counts: DayCounts) -> bool:
    """Whether raw day ``day`` is a stray before the app's real history: more than CATCH_UP_DAYS days before
    ``next_day`` (the next raw day, or the night's lookback window) and holding some rows, but fewer than
    STRAY_DAY_ROWS, in its four files (the users file of an app's real day is a snapshot of every account
    so far). That is a row dated by a wrong clock (a device's 1970 or last year's date), exported by
    `pickapic build --from-app-db`, which exports the days holding rows, as a day of its own. A day of
    empty files is what a scheduled export makes of a quiet day, so it is history (the last night before
    an outage); a raw file that cannot be read says no too (the day counts, as before)."""
    if (dt.date.fromisoformat(next_day) - dt.date.fromisoformat(day)).days <= CATCH_UP_DAYS:
        return False
    try:
        counts = raw_day_counts(home, day)
    except (OSError, EOFError, zlib.error):      # unreadable: the ingest reports it
        return False
    return 0 < sum(rows for rows, _ in counts.values()) < STRAY_DAY_ROWS


def real_days(home: DataHome, days: list[str], until: str, raw_day_counts: DayCounts) -> list[str]:
    """``days`` (raw days before ``until``, in order) less their stray first days (:func:`stray_day`, each
    judged against the next of ``days``, the last against ``until``): the history the schedule's catch-up
    (``dagster_project.automation.missing_days``) fills the gaps of, from the day after the first of them."""
    ordered = list(days)
    while ordered and stray_day(home, ordered[0], ordered[1] if len(ordered) > 1 else until, raw_day_counts):
        ordered.pop(0)
    return ordered


def newest_closed(clock: dt.datetime | None, lag_minutes: int) -> str:
    """The newest day closed for export by ``clock`` (UTC; a naive one is local time, as ``export.check_lag``
    reads it; None: now) with ``lag_minutes``: the newest day of the night whose tick is ``clock``
    (``app_export_schedule``), the clock :class:`ScheduledDays` counts its horizon from (fix38f); '' where that is
    before the calendar's first day."""
    clock = (clock or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    try:
        return ((clock - dt.timedelta(minutes=lag_minutes)).date() - dt.timedelta(days=1)).isoformat()
    except OverflowError:
        return ""


def gap_horizon(last: str) -> str:
    """The oldest gap :class:`ScheduledDays` holds when ``last`` is the later of the raw zone's last day and the
    newest day closed by the caller's clock (fix38f): SCHEDULED_GAP_DAYS before the day after it (review rev37b),
    '' where that is before the calendar's first day."""
    try:
        return (dt.date.fromisoformat(last) + dt.timedelta(days=1 - SCHEDULED_GAP_DAYS)).isoformat()
    except OverflowError:
        return ""


class ScheduledDays:
    """Fix36g: the days ``app_export_schedule`` will ever export again up to the raw zone's last day (one
    definition for the moved-row code and the schedule): the raw days (a marked one is re-exported:
    :func:`late_days`), and the days the raw zone lacks after its first real day (:func:`real_days`, as the
    schedule's catch-up judges the stray first days) and within its horizon (below), which the catch-up exports.
    A day after the last raw day is the nightly export's own. Any other day (before the raw zone's first, between
    a stray first day and the history, or a gap past the horizon) is exported by no schedule: a row moved there is remembered (``pipelines.appdb.export.remember_moved``), its day never
    marked (its marker would stay for good: only that day's own export clears it). Before, the raw zone's first
    day was taken for the start of the history, so a row moved between a stray first day and the history was
    marked (never re-exported) instead of remembered, and its marker stayed for good.

    The stray first days are judged as the schedule does, each against the next raw day (the last raw day is
    the newest, never a stray): a day the schedule's night judges against its lookback window (nearer than the
    next raw day) is a stray here whenever it is one there, so a day this calls exported is exported. The raw
    files of a first day are read only where it is more than CATCH_UP_DAYS before the next raw day, and only
    once a caller asks about a day the raw zone lacks.

    Review rev37b: the catch-up looks back CATCH_UP_HORIZON_DAYS from the night's lookback window only, so a gap
    older than that (a row moved more than a year back into a hole of the history) is exported by no night; it
    was held here all the same, so the row was marked there (its marker for good), not remembered, and named one
    night only. A gap counts only from SCHEDULED_GAP_DAYS before the day after the raw zone's last day (the next
    night's newest day; the horizon less CATCH_UP_DAYS nights of slack): an older one is remembered, named each
    night until a ranged build exports it (or the catch-up, where it still reaches it: the memory is dropped by the
    day's own export).

    Fix38f (review rev38c): the catch-up's horizon follows the clock (the coming night's window), not the raw
    zone, so a horizon counted from the raw zone's last day alone held gaps no night requests once that day was
    more than CATCH_UP_DAYS behind the clock (a five-week outage, an export run with a later ``now``): a row moved
    there was marked for good and in no raw day. ``newest``, the newest day closed by the caller's clock
    (:func:`newest_closed`: the export's ``now``, the schedule's tick), moves the horizon's start to the later of
    the two; a clock behind the raw zone (a test clock, a clock gone backwards) leaves it at the raw zone's last
    day, the fewer gaps held (more rows remembered, none lost); '' (no clock) is the raw zone's last day alone.

    Fix38i: the guarantee no longer rests on the slack alone. A gap held here when its row was marked is requested
    by ``app_export_schedule`` as a marked day the raw zone lacks (after its first real day), however many nights
    the schedule missed since (an outage longer than CATCH_UP_DAYS nights took the gap past every coming
    catch-up's horizon: the row was in no raw day); its export writes the day and clears the marker."""

    def __init__(self, home: DataHome, raw_days: list[str], raw_day_counts: DayCounts, newest: str = "") -> None:
        self.home, self.days, self.held = home, list(raw_days), set(raw_days)
        self._counts = raw_day_counts
        self._start: str | None = None
        self.horizon = gap_horizon(max(self.days[-1], newest)) if self.days else ""

    @property
    def start(self) -> str:
        """The first real raw day ('' where the raw zone holds none)."""
        if self._start is None:
            real = real_days(self.home, self.days[:-1], self.days[-1], self._counts) + self.days[-1:] if self.days else []
            self._start = real[0] if real else ""
        return self._start

    def __contains__(self, day: object) -> bool:
        """Whether the schedule exports ``day`` (a day up to the raw zone's last) once marked or caught up."""
        if not isinstance(day, str) or not self.days or day > self.days[-1]:
            return False
        return day in self.held or (day >= self.horizon and self.start <= day)

    def before(self, day: str) -> bool:
        """Whether ``day`` is one no schedule exports (up to the raw zone's last day, not in it): the rows moved
        there are remembered."""
        return bool(self.days) and day <= self.days[-1] and day not in self
