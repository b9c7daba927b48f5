"""Fix35e: the defects of review rev35a (``tests/unit/test_hostile_rev35a.py``), beyond the review's own tests.

- The late-row check writes what it learnt (a day "whole" for a database state: ``_record_checked``; a content
  baseline: ``record_content``) only after every look-up ran, every day it marks is marked and every row moved
  before the raw zone's first day is remembered (``LateCheck.finish``).
- An edit of a row past the lookback window (same ids, other values) is seen: ``day_counts.sql`` sums a content
  digest of each row's exported columns, the export records it for the day it wrote (HOME/cache/app_export_content)
  and the late-row check compares; a deletion alone still leaves the raw day as it is (the raw zone keeps what was
  exported), and a day without a record gets one from the first check that finds it whole by its ids.
- A row moved to a day before the raw zone's first is remembered with the undated rows dated since
  (HOME/cache/app_export_undated.json) and named every night until the export of its day holds it.

Real PostgreSQL server (``tests/postgres_server.py``), the real ``export_day``; each test a few seconds.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os

import psycopg

from formats.home import DataHome
from pipelines.appdb.export import (
    CONTENT_RECORDS,
    COUNTS_CACHE,
    LATE_MARKERS,
    UNDATED_STATE,
    AppExportConfig,
    edited_warning,
    export_day,
    late_days,
    late_warnings,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

_counter = iter(range(10**6))
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
NIGHTLY = AppExportConfig(lag_minutes=60, lookback_days=2)


def _app_db(server) -> str:
    return create_app_database(server, f"fix35e_{os.getpid()}_{next(_counter)}")


def _lines(home: DataHome, day: str, table: str) -> list[dict]:
    path = home.raw_file(day, table)
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()] if path.exists() else []


def _rank(conn, ranking_id: int, when: str, user: int = 1, best: str = "u-a") -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (%s, %s, %s, 'u-a', 'u-b', %s, 'a cat')", (ranking_id, when, user, best))


def _user(conn, user_id: int, when: str, email: str) -> None:
    conn.execute("INSERT INTO users (user_id, created_at, email, name) VALUES (%s, %s, %s, 'n')",
                 (user_id, when, email))


def _nightly(home: DataHome, dsn: str, night: str, schedule: bool = False) -> list:
    """The night's export, then the marked days (``schedule``: only those ``app_export_schedule`` requests, the
    raw days and, fix38i, the days the raw zone lacks after its first and before the night's lookback window)."""
    reports = [export_day(home, dsn, night, NIGHTLY, now=NOW)]
    first = (dt.date.fromisoformat(night) - dt.timedelta(days=NIGHTLY.lookback_days)).isoformat()
    for marked in late_days(home):
        raw = home.raw_days()
        if not schedule or marked in raw or (raw and raw[0] < marked < first):
            reports.append(export_day(home, dsn, marked, NIGHTLY, now=NOW))
    return reports


def _warnings(reports: list) -> list[str]:
    return [line for report in reports for line in report.warnings]


def test_an_edited_email_reaches_the_users_snapshots_past_the_lookback_and_is_named(postgres_server, tmp_path):  # noqa: F811
    dsn, home = _app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _user(conn, 1, "2023-03-01 09:00", "old@example.com")
        _rank(conn, 1, "2023-03-01 12:00")
        _rank(conn, 2, "2023-03-02 12:00")
    for night in ("2023-03-01", "2023-03-02"):
        _nightly(home, dsn, night)
    record = json.loads((home.cache / CONTENT_RECORDS / "dt=2023-03-01.json").read_bytes())
    assert sorted(record) == ["downloads", "images", "rankings", "users"]
    # fix35h: a users snapshot's baseline also holds its parts by creation day (a seventh member)
    assert all(len(entry) == (7 if table == "users" else 6) for table, entry in record.items())
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE users SET email = 'new@example.com' WHERE user_id = 1")
    reports = _nightly(home, dsn, "2023-03-10")
    lines = _warnings(reports)
    edited = [line for line in lines if line.startswith("app rows edited since")]
    assert len(edited) == 1 and "2023-03-01: users" in edited[0] and "2023-03-02: users" in edited[0]
    assert not any(line.startswith("app rows committed after") for line in lines)   # no row is late
    for day in ("2023-03-01", "2023-03-02"):         # every users snapshot holding the account follows
        assert [row["email"] for row in _lines(home, day, "users")] == ["new@example.com"]
    assert late_days(home) == []
    again = _nightly(home, dsn, "2023-03-11")        # re-exported once: the next night is quiet
    assert len(again) == 1 and not any("edited" in line for line in _warnings(again))


def test_a_deletion_alone_keeps_the_raw_day_and_a_later_edit_is_still_seen(postgres_server, tmp_path):  # noqa: F811
    dsn, home = _app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, 1, "2023-03-01 10:00")
        _rank(conn, 2, "2023-03-01 12:00")
    _nightly(home, dsn, "2023-03-01")
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 2")
    reports = _nightly(home, dsn, "2023-03-10")
    assert len(reports) == 1 and late_days(home) == []          # a deletion alone: no re-export, as before
    assert [row["ranking_id"] for row in _lines(home, "2023-03-01", "rankings")] == [1, 2]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET best_image_uid = 'u-b' WHERE ranking_id = 1")
    reports = _nightly(home, dsn, "2023-03-11")
    assert any(line.startswith("app rows edited since") for line in _warnings(reports))
    assert [(row["ranking_id"], row["best_image_uid"]) for row in _lines(home, "2023-03-01", "rankings")] \
        == [(1, "u-b")]       # its re-export from the primary holds the app's rows (the deleted one goes, as always)


def test_a_day_without_a_content_record_gets_one_and_its_next_edit_is_seen(postgres_server, tmp_path):  # noqa: F811
    dsn, home = _app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, 1, "2023-03-01 12:00")
    _nightly(home, dsn, "2023-03-01")
    record = home.cache / CONTENT_RECORDS / "dt=2023-03-01.json"
    record.unlink()                                   # a day exported before fix35e (or the cache deleted)
    reports = _nightly(home, dsn, "2023-03-10")
    assert len(reports) == 1 and late_days(home) == [] and record.is_file()   # whole: its values are the baseline
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET prompt = 'a dog' WHERE ranking_id = 1")
    _nightly(home, dsn, "2023-03-11")
    assert [row["prompt"] for row in _lines(home, "2023-03-01", "rankings")] == ["a dog"]


def test_a_marker_that_cannot_be_set_leaves_the_checked_day_unrecorded(postgres_server, tmp_path):  # noqa: F811
    dsn, home = _app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, 1, "2023-02-01 12:00", 1)
        _rank(conn, 2, "2023-03-01 12:00", 1)
    for day in ("2023-02-01", "2023-03-01"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:   # moved to 02-01 and given another user: 03-01 keeps its line
        conn.execute("UPDATE rankings SET created_at = '2023-02-01 08:00', user_id = 3 WHERE ranking_id = 2")
    markers = home.cache / LATE_MARKERS
    for entry in markers.iterdir():
        entry.unlink()
    markers.rmdir()
    markers.write_bytes(b"not a folder")              # no marker can be written
    report = export_day(home, dsn, "2023-03-10", NIGHTLY, now=NOW)
    assert any("2023-02-01" in line and "could not be written" in line for line in report.warnings)
    counts = json.loads((home.cache / COUNTS_CACHE / "dt=2023-03-01.json").read_bytes())
    assert counts["rankings"][7] is None              # not "whole": the next night compares it again
    markers.unlink()
    _nightly(home, dsn, "2023-03-11")
    assert [(row["ranking_id"], row["user_id"]) for row in _lines(home, "2023-02-01", "rankings")] == [(1, 1), (2, 3)]


def test_a_row_moved_before_the_first_raw_day_is_named_every_night_until_its_day_is_exported(  # noqa: F811
        postgres_server, tmp_path):  # noqa: F811
    dsn, home = _app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, 1, "2023-03-01 10:00")
        _rank(conn, 2, "2023-03-01 12:00")
        _rank(conn, 3, "2023-03-01 13:00")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-15 08:00' WHERE ranking_id IN (2, 3)")
    for night in ("2023-03-10", "2023-03-11", "2023-03-12"):       # as the schedule runs: 02-15 is never exported
        lines = _warnings(_nightly(home, dsn, night, schedule=True))
        assert any("2023-02-15" in line and "pickapic build --from-app-db --from 2023-02-15" in line for line in lines)
    assert home.raw_days() == ["2023-03-01", "2023-03-10", "2023-03-11", "2023-03-12"]
    state = json.loads((home.cache / UNDATED_STATE).read_bytes())
    assert state == {"rankings": [[2, "2023-02-15"], [3, "2023-02-15"]]}
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 3")          # deleted: forgotten
    export_day(home, dsn, "2023-02-15", NIGHTLY, now=NOW)                  # the build the warning names
    assert [row["ranking_id"] for row in _lines(home, "2023-02-15", "rankings")] == [2]
    assert not (home.cache / UNDATED_STATE).exists()
    lines = _warnings(_nightly(home, dsn, "2023-03-13", schedule=True))
    assert not any("2023-02-15" in line for line in lines)


def test_the_edited_warning_is_apart_from_the_late_one():
    late = {"2023-03-01": {"rankings": {"database": [2, 5], "raw": [2, 5], "edited": True}},
            "2023-03-02": {"images": {"database": [3, 9], "raw": [2, 8]}}}
    lines = late_warnings(late, 2)
    assert len(lines) == 2
    assert lines[0].startswith("app rows committed after") and "2023-03-01" not in lines[0]
    assert lines[1] == edited_warning(late, 2) and "2023-03-01: rankings" in lines[1] and "2023-03-02" not in lines[1]
    assert edited_warning({"2023-03-02": late["2023-03-02"]}, 2) == ""
