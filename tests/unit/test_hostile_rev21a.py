"""Hostile review (rev21a): how days and time are handled by the ingest, the app export and the later stages
(``pipelines/ingest/``, ``pipelines/appdb/export.py``, ``pipelines/curation/``, ``pipelines/splits/``, ``sql/``,
``data_contracts/``); not the Dagster automation.

Each test is a defect confirmed by running it, filed as a strict xfail whose reason says what is wrong; each
asserts the behaviour that is right, so it passes once the defect is fixed. None needs a server.

What held up:
- ``created_at`` rules (``parse.LineParser._timestamp`` and the compiled fast path agree): ``23:59:59.999999``
  is the day's last instant (accepted, Arrow casts it exactly); 1-6 digit fractions parse the same in
  ``fromisoformat`` and in Arrow's cast (``.5`` is 500,000 us); a leap second ``23:59:60``, ``24:00:00``,
  ``2023-02-30``, ``T``-separated, ``Z`` / ``+02:00`` offsets, Arabic-Indic digits and epoch strings are
  ``bad_timestamp``, an epoch number ``wrong_type`` (never a traceback, never another day); ``2024-02-29``
  parses; the window's end (partition day + 1 + 2 days) is exclusive to the microsecond.
- A row dated days before its partition (a late arrival) is accepted into the partition it was delivered in;
  the same ranking on two days is one row of ``curation_rankings`` (earliest export, ``n_exports``), a changed
  re-export is ``n_variants`` > 1; curation compares typed values there, so two spellings of one instant
  across days are one variant.
- Days sort and compare as text everywhere (``YYYY-MM-DD``, zero-padded, years 0001..9999 included);
  DuckDB ``strftime(dt, '%Y-%m-%d')`` and Arrow ``strftime('%Y%m%d')`` zero-pad years below 1000, so the
  ``ingest_files`` file-name rule and the shard segment labels hold for such days.
- The publish's two JSON paths for a pair (DuckDB ``strftime ... %f`` and Arrow ``strftime``) write the same
  ``created_at`` text for whole seconds, microseconds and nulls.
- The export's day bounds are naive UTC ``[D 00:00, D+1 00:00)`` on a session pinned to ``TimeZone`` UTC;
  ``check_lag`` turns an overflow at 9999-12-31 into ``ExportTooEarly``; ``export_days.sql`` /
  ``undated_rows.sql`` share one dated range (years 1..9999) so no row is in both or neither.
- A re-delivered day with fewer rows replaces its partitions whole (nothing of the old day left); a day of
  empty files and a day of only bad lines reconcile (lines in = accepted + quarantined).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.appdb.connection import AppDatabaseError
from pipelines.appdb.export import AppExportConfig, export_day, verified_days
from pipelines.ingest.__main__ import main as ingest_main
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day


def _small_day(home: DataHome, day: str, **over) -> DayBuilder:
    builder = DayBuilder(day, **over).populate(users=2, images=4, rankings=2, downloads=1)
    builder.write(home)
    return builder


# --- 1. an app export of a day in year 1 (Go's / .NET's zero time) dies with an OverflowError ---------------------
#
# README 1a: a created_at "outside years 1..9999 (BC dates, year 10000) cannot be placed in a dt= day", so a row
# dated 0001-01-01 00:00:00 (the zero time.Time of a Go client, DateTime.MinValue in .NET: a classic hostile
# value) IS placed: export_days.sql lists day 0001-01-01 (created_at >= '0001-01-01'). Exporting it fails before
# connecting: export_day (export.py:753) calls verified_days (export.py:994-999), whose
# `date.fromisoformat(day) - timedelta(days=lookback_days)` and `- timedelta(days=VERIFY_DAYS)` leave the date
# range for every day up to 0001-01-16 (OverflowError: date value out of range, a traceback, every night the
# day is requested). The 14 days before such a day simply do not exist: nothing to verify.

@pytest.mark.parametrize("day", ["0001-01-01", "0001-01-16"])
def test_exporting_a_day_of_year_one_reaches_the_database(tmp_path: Path, day: str) -> None:
    home = DataHome(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    assert verified_days(home, "0001-01-17", AppExportConfig()) == []   # the first day that works today
    assert verified_days(home, day, AppExportConfig()) == []
    # no server listens there: the right outcome is the connection error, not an arithmetic one
    with pytest.raises(AppDatabaseError):
        export_day(home, f"host={tmp_path} port=1 dbname=app user=ro connect_timeout=2", day)


# --- 2. the ingest of such a day writes its partitions, then dies with an OverflowError -------------------------
#
# The raw zone takes dt=0001-01-01 as a real day (formats/rawzone.py), files delivered or exported. ingest_day
# validates it (every row bad_timestamp: before 2022) and writes the six partitions, then refresh_late_references
# (day.py:281) computes `parse_day(day) - timedelta(days=late_image_days)`: OverflowError for 0001-01-01 and
# 0001-01-02 with the default late_image_days = 2. The day's run fails after its files were renamed into place
# (a traceback, the report lost), every time it is retried; `python -m pipelines.ingest` stops there too.

@pytest.mark.parametrize("day", ["0001-01-01", "0001-01-02"])
def test_ingesting_a_day_of_year_one_reconciles(tmp_path: Path, day: str) -> None:
    home = DataHome(tmp_path / "home")
    _small_day(home, day)
    report = ingest_day(home, day)
    assert report.reconciled
    assert all(t.accepted == 0 and set(t.reasons) == {"bad_timestamp"} for t in report.tables.values())


# --- 3. a raw day of 9999-12-29..31 crashes the ingest, and `python -m pipelines.ingest` with it -------------------
#
# A file-delivered raw zone can hold a well-named folder dt=9999-12-31 (a client's "max date" sentinel, a typo'd
# year); formats/rawzone.py lists it as a day. ingest_day computes the created_at window
# IngestConfig.timestamp_range (config.py:49: day + 1 + future_tolerance_days days) and the late-image window
# (references.py:91: day + late_image_days) with datetime arithmetic that overflows for 9999-12-29, -30 and -31:
# OverflowError, a traceback. `python -m pipelines.ingest --home H` (default: every raw day, __main__.py:33)
# ingests the earlier days, then dies on that folder with the traceback instead of skipping it with a warning
# (as `pickapic build` skips days that have not begun) or ingesting it: README 2 promises a bad raw-zone entry is
# "never fatal to the other days". Right: no traceback; the day is skipped with a warning, or ingested and
# reconciled (its windows clipped at the end of the calendar).

def test_a_raw_day_at_the_end_of_the_calendar_never_crashes_the_ingest(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    for day in ("2023-03-01", "9999-12-29", "9999-12-31"):
        _small_day(home, day)
    rc = ingest_main(["--home", str(home.root)])   # raised OverflowError
    assert rc in (0, 1)
    assert home.partition_file("rankings", "2023-03-01").is_file()
    for day in ("9999-12-29", "9999-12-31"):
        try:
            report = ingest_day(home, day)
        except (OverflowError, ArithmeticError) as exc:   # a clear refusal (ValueError naming the day) is fine
            pytest.fail(f"ingest_day({day}) raised {type(exc).__name__}: {exc}")
        except ValueError as exc:
            assert day in str(exc)
        else:
            assert report.reconciled


# --- 4. an earliest_created_at with a UTC offset is accepted by the config, then crashes every line ---------------
#
# IngestConfig.__post_init__ (config.py:42-45) checks ingest.earliest_created_at only with fromisoformat, which in
# Python 3.11 takes "2022-01-01 00:00:00+00:00" and "2022-01-01T00:00:00Z" (an operator spelling the UTC instant
# explicitly). The bound is then an aware datetime, and every line's naive created_at is compared with it
# (the fast path `TMIN <= FROMISO(v)`, parse.py `parsed < self.ts_min`): TypeError "can't compare offset-naive and
# offset-aware datetimes", uncaught (the fast path catches ValueError only): every day's ingest fails with a
# traceback. Right: refuse the setting with a clear error naming it, or read it as the naive UTC instant.

@pytest.mark.parametrize("earliest", ["2022-01-01 00:00:00+00:00", "2022-01-01T00:00:00Z"])
def test_an_earliest_created_at_with_an_offset_is_refused_or_honoured(tmp_path: Path, earliest: str) -> None:
    home = DataHome(tmp_path / "home")
    _small_day(home, "2023-03-01")
    try:
        config = IngestConfig(earliest_created_at=earliest)
    except ValueError as exc:
        assert "earliest_created_at" in str(exc)
        return
    report = ingest_day(home, "2023-03-01", config)
    assert report.reconciled
    assert report.tables["rankings"].accepted == 2


# --- 5. one instant spelled two ways is a conflict: both copies of an exact repeat are quarantined ----------------
#
# pipelines/ingest/reader.py (module docstring) compares a key's versions "after typing, so 5 and 5.0 are the
# same", and README 2 promises "duplicate_row (exact repeat: first kept, the rest counted here)". created_at is
# kept as its text (parse.py _timestamp returns `value`, "kept as text"), so a ranking written once as
# "2023-03-01 12:00:00.5" and once as "2023-03-01 12:00:00.500000" (or "13:00:00" and "13:00:00.000000": Python's
# isoformat drops a zero fraction, PostgreSQL's to_char .US never does; two exporters, or a re-export appended to a
# file) is `conflicting_primary_key`: BOTH lines quarantined, the ranking lost, though the rows are identical
# as typed (the same timestamp[us] in the output; curation_rankings.sql, comparing typed values across days,
# rightly takes them as one variant). Run: 4 lines, 0 accepted, 4 conflicting_primary_key.

def test_one_instant_spelled_two_ways_is_a_duplicate_row(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    builder = DayBuilder("2023-03-01").populate(users=2, images=4, rankings=0, downloads=0)
    for short, full in (("2023-03-01 12:00:00.5", "2023-03-01 12:00:00.500000"),
                        ("2023-03-01 13:00:00", "2023-03-01 13:00:00.000000")):
        ranking = builder.ranking(created_at=short)
        builder.add("rankings", ranking)
        builder.add("rankings", dict(ranking, created_at=full))
    builder.write(home)
    report = ingest_day(home, "2023-03-01").tables["rankings"]
    assert report.lines_in == 4
    assert report.accepted == 2
    assert report.reasons == {"duplicate_row": 2}


# --- 6. a later day re-delivered without a late image leaves the earlier day accepting it -----------------------
#
# README 2 (Late images): when day D is ingested, the days in [D-2, D) waiting on an image of D's export are
# ingested again (refresh_late_references), "exact: a later export changes an earlier day only by resolving the
# image such a row names", so "a day-by-day build as the days land, a build over all days at once, and one in
# reverse order give byte-identical tables"; ingest_day's docstring: "a day's partitions never depend on the order
# in which the days were ingested". A later export can also UN-resolve: the app deletes an image (or a re-export
# of D+1 within the lookback no longer holds it). Run: D1 has a ranking of an image first exported on D2 (accepted
# late); D2 is then delivered again without that image and ingested (`python -m pipelines.ingest --day D2`):
# refresh_late_references (day.py:264-296) looks only for D1's unknown_image_reference rows, finds none, and D1
# keeps the ranking (3 rows) whose image is in no export at all; from scratch D1 has 2 rows and the ranking is
# quarantined as unknown_image_reference. (Under Dagster, D1's ingest version names D2 ("+late:", versions.py),
# so a plan there rebuilds D1; the pipeline's own refresh and its CLI do not.)

def test_a_later_day_redelivered_without_a_late_image_is_felt_by_the_earlier_day(tmp_path: Path) -> None:
    def build(root: Path, incremental: bool) -> int:
        home = DataHome(root)
        day1 = DayBuilder("2023-03-01").populate(users=2, images=4, rankings=2, downloads=0)
        day2 = DayBuilder("2023-03-02", id_base=1000).populate(users=2, images=4, rankings=0, downloads=0)
        late = day2.image_uids[0]
        day1.add("rankings", day1.ranking(image_0_uid=day1.image_uids[0], image_1_uid=late, best_image_uid="none"))
        day1.write(home)
        day2.write(home)
        if incremental:
            ingest_day(home, "2023-03-01")
            ingest_day(home, "2023-03-02")
            assert pq.read_table(home.partition_file("rankings", "2023-03-01")).num_rows == 3   # accepted late
        day2.lines["images"] = [line for line in day2.lines["images"] if late.encode() not in line]
        day2.write(home)   # the app deleted the image; day 2 delivered again
        if incremental:
            ingest_day(home, "2023-03-02")
        else:
            ingest_day(home, "2023-03-01")
            ingest_day(home, "2023-03-02")
        return pq.read_table(home.partition_file("rankings", "2023-03-01")).num_rows

    assert build(tmp_path / "scratch", incremental=False) == 2
    assert build(tmp_path / "incremental", incremental=True) == 2


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-p", "no:cacheprovider"]))
