"""Hostile review rev38h of fix38m (MOVED_WAITING files parsed in pieces, damaged ones named and set aside) and
fix38i (the schedule requests marked days the raw zone lacks).

Defect found:

1. ``_parse_waiting`` turns each id's digits into an int with ``int()`` and catches only ``OverflowError``. An id
   of more than 4,300 digits (Python's integer string conversion limit) raises a plain ``ValueError``
   ("Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"), not
   ``WaitingDamaged``. ``watch_waiting`` catches only ``(WaitingDamaged, OSError)``, so one hand-edited or hostile
   ``HOME/cache/app_export_moved/dt=DAY.json`` with such an id makes ``export_day`` crash every night (seen: the
   ValueError out of export_day), instead of naming the file as damaged like the other malformed forms; the
   writers (``_waiting_to_change``) likewise do not set it aside. (20 to 4,300 digits gives OverflowError from
   array("q"), caught as intended.)

2. fix38i: ``app_export_schedule`` requests a marked day the raw zone lacks when it is after ``raw_days[0]``, the raw
   zone's first day *as listed*, not its first real day (``real_days``/``stray_day``, the definition
   ``missing_days`` and ``ScheduledDays`` use). A marker left between a stray first day and the real history (one
   an export before fix36g/fix36n wrote and that waited "for good", as test_hostile_rev36g describes, or one made
   by hand) is now requested; its export writes a day of empty files, which makes the stray no longer a stray (it
   is now <= CATCH_UP_DAYS before the next raw day), so the history starts at the stray and the catch-up exports
   every day after it. Seen (stray 2022-06-01 with one row, history from 2023-03-01, a marker of 2022-07-01): the
   night of 2023-03-05 requested 2022-07-01, and the next tick requested 34 days, 2022-06-02 .. onward (~270 empty
   days to come, 31 a night) -- exactly the "start the history anew, a year of empty days" the fix's own comment
   says it avoids by not requesting markers before the raw zone's first day.
"""

from __future__ import annotations

import pytest
from appdb_fixtures import NIGHTLY, NOW
from test_fix38i import _at, _schedule_env
from test_hostile_rev29c import _tick
from test_hostile_rev36g import _stray_home
from test_hostile_rev38e import _three_waiting

from formats.home import DataHome
from pipelines.appdb.export import MOVED_WAITING, WaitingDamaged, _load_waiting, export_day, mark_late
from tests.postgres_server import postgres_server  # noqa: F401 - fixture

HUGE = b"1" * 5000          # past int()'s 4,300-digit limit


@pytest.mark.parametrize("text", [b'{"rankings": [' + HUGE + b', 7]}', b'{"rankings": [7, ' + HUGE + b']}'])
def test_an_id_of_thousands_of_digits_is_damaged_not_a_crash(tmp_path, text) -> None:
    home = DataHome.at(tmp_path / "home")
    path = home.cache / MOVED_WAITING / "dt=2023-02-15.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(text)
    with pytest.raises(WaitingDamaged, match="not a 64-bit integer"):
        _load_waiting(home, "2023-02-15")


def test_the_nightly_export_names_a_file_with_a_huge_id(postgres_server, tmp_path):  # noqa: F811
    _total, dsn, home = _three_waiting(postgres_server, tmp_path)
    path = home.cache / MOVED_WAITING / "dt=2023-02-15.json"
    path.write_bytes(b'{"rankings": [' + HUGE + b"]}")
    report = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    named = [line for line in report.warnings if str(path) in line]
    assert len(named) == 1 and "64-bit" in named[0], report.warnings
    assert path.read_bytes() == b'{"rankings": [' + HUGE + b"]}"


def test_a_stale_marker_after_a_stray_first_day_does_not_restart_the_history(postgres_server, tmp_path,  # noqa: F811
                                                                               monkeypatch):
    _schedule_env(monkeypatch)
    dsn, home = _stray_home(postgres_server, tmp_path)       # raw days 2022-06-01 (a stray) and 2023-03-01
    assert home.raw_days() == ["2022-06-01", "2023-03-01"]
    assert mark_late(home, "2022-07-01", True) == ""          # a marker no export of today writes there
    for night in ("2023-03-05", "2023-03-06"):
        folder = tmp_path / f"instance-{night}"
        folder.mkdir()
        requested = _tick(home, folder, _at(night))
        for day in requested:
            export_day(home, dsn, day, NIGHTLY, now=NOW)
    # the stray is still a stray: no night catches up the empty months between it and the history
    assert [day for day in requested if day < "2023-03-01"] == [], requested
