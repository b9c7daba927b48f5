"""Fix of review rev29h (``tests/unit/test_hostile_rev29h.py``), the app-database export: cases its xfails do not
cover. A ranged ``pickapic build --from-app-db`` re-exports the raw days of the range the app holds no row on (from
the primary; from a replica it does not, and says so); a row that leaves a raw day marks the day it is dated to now
(or names the build that exports a day the raw zone lacks), from the lookback's own re-export too; a leading byte
order mark is skipped as the ingest skips it and never carried mid-file; the ids looked up are held in int64
arrays. Real PostgreSQL (``tests/postgres_server.py``).
"""
from __future__ import annotations

import array
import gzip
import json
import os

import psycopg
import pytest
from appdb_fixtures import NIGHTLY, NOW, app_db

from dagster_project.build import BuildError, select_app_db_days
from formats.home import DataHome
from formats.settings import load
from pipelines.appdb import export as export_module
from pipelines.appdb.export import _file_counts, _line_keys, _sorted_unique, export_day, held_ids, late_days
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _raw(home: DataHome, day: str, table: str) -> bytes:
    return gzip.decompress(home.raw_file(day, table).read_bytes())


def _ids(home: DataHome, day: str) -> list:
    return [json.loads(line)["ranking_id"] for line in _raw(home, day, "rankings").splitlines()]


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, %s, 'p')",
                 (ranking_id, f"{day} 12:00", user_id))


# --- 1. the erasure build: raw days the app holds no row on -------------------------------------------------

def test_a_ranged_build_re_exports_raw_days_without_app_rows_from_the_primary_only(postgres_server, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-02", 2)
    for day in ("2023-03-01", "2023-03-02"):
        export_day(home, dsn, day, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings")          # every row of the range erased: the app has no dated row
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    warnings: list[str] = []
    days = select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append)
    assert days == ["2023-03-01", "2023-03-02"]       # was BuildError: "has no dated rows"
    assert any("hold no row the app database has now: re-exported" in w for w in warnings)
    for day in days:
        export_day(home, dsn, day, now=NOW)
    assert _raw(home, "2023-03-01", "rankings") == b"" and _raw(home, "2023-03-02", "rankings") == b""
    # no range named: the app's own days only (none here), as before
    with pytest.raises(BuildError, match="no dated rows"):
        select_app_db_days(load(home.root), warn=warnings.append)
    # a replica: a re-export from it keeps every row it lacks, so the days are not chosen, and the warning says why
    real = export_module.app_days
    monkeypatch.setattr(export_module, "app_days",
                        lambda *a, **k: export_module.AppDays(real(*a, **k).days, {}, replica=True))
    warnings.clear()
    with pytest.raises(BuildError, match="no dated rows"):
        select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append)
    assert any("build from the primary" in w for w in warnings)


# --- 2. a row that leaves a raw day: its new day --------------------------------------------------------------

def test_a_row_moved_by_a_lookback_re_export_marks_its_new_day(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-20", 2)
    for day in ("2023-03-01", "2023-03-20"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:               # moved far back, past the check's window of 03-22
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 08:00' WHERE ranking_id = 2")
    report = export_day(home, dsn, "2023-03-20", NIGHTLY, now=NOW)     # the night's lookback re-export
    assert _ids(home, "2023-03-20") == []
    assert late_days(home) == ["2023-03-01"]                            # was []: ranking 2 in no raw day
    assert any("dated to another day now" in w and "1 on 2023-03-01 (ids 2)" in w for w in report.warnings)
    for day in late_days(home):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    assert [d for d in home.raw_days() if 2 in _ids(home, d)] == ["2023-03-01"] and late_days(home) == []


def test_a_row_moved_to_a_day_before_the_raw_zone_is_named_with_its_build(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-02", 2)
    for day in ("2023-03-01", "2023-03-02"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 08:00' WHERE ranking_id = 2")
    report = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    line = [w for w in report.warnings if "dated to another day now" in w]
    assert len(line) == 1 and "the raw zone lacks 2023-02-10" in line[0] \
        and "pickapic build --from-app-db --from 2023-02-10 --to 2023-02-10" in line[0]
    assert late_days(home) == []                       # no marker the schedule would never act on


# --- 3. a byte order mark -------------------------------------------------------------------------------------

def test_a_leading_byte_order_mark_is_skipped_as_the_ingest_skips_it(tmp_path):
    path = tmp_path / "users.jsonl.gz"
    path.write_bytes(gzip.compress(b'\xef\xbb\xbf{"user_id": 7, "x": 1}\n{"user_id": 9}\n\xef\xbb\xbf{"user_id": 8}\n'))
    keys = list(_line_keys(path, name="user_id"))
    assert keys[:2] == [7, 9] and keys[2] is export_module.UNREADABLE    # mid-file: malformed, as the ingest says
    rows, top, digest = _file_counts(path, "user_id")
    assert (rows, top, digest) == (3, 9, export_module.id_digest([7, 9]))
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf"))                     # a mark alone: no line
    assert list(_line_keys(path, name="user_id")) == []


def test_a_replica_re_export_of_a_marked_day_writes_no_mark_mid_file(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    day = "2023-03-01"
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, 5)
        _rank(conn, day, 6)
    export_day(home, dsn, day, now=NOW)
    path = home.raw_file(day, "rankings")
    staged = path.with_name(".other.tmp")
    staged.write_bytes(gzip.compress(b"\xef\xbb\xbf" + _raw(home, day, "rankings")))
    os.replace(staged, path)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 5")
        _rank(conn, day, 7)
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")
    report = export_day(home, dsn, day, now=NOW)
    data = _raw(home, day, "rankings")
    assert b"\xef\xbb\xbf" not in data and _ids(home, day) == [5, 6, 7]
    assert report.kept == {"rankings": {"rows": 1, "first_ids": ["5"]}}


# --- 4. the ids looked up: int64 arrays -----------------------------------------------------------------------

def test_held_ids_are_int64_arrays_with_their_days(postgres_server):  # noqa: F811
    dsn = app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN created_at DROP NOT NULL")
        for i in range(1, 5000):
            _rank(conn, f"2023-03-{1 + i % 3:02d}", i)
        conn.execute("UPDATE rankings SET created_at = NULL WHERE ranking_id = 4")
        found = held_ids(conn, "rankings", array.array("q", range(0, 6000, 2)))
    assert found.ids.typecode == "q" and found.days.typecode == "i"
    assert list(found.ids) == list(range(2, 5000, 2))
    assert found.days[1] == -1 and found.names[found.days[0]] == "2023-03-03"      # id 4: undated; id 2: 03-03
    assert found.by_day()["2023-03-01"][0] == len([i for i in range(2, 5000, 2) if i % 3 == 0])
    assert list(_sorted_unique([5, 3, 3, 1 << 63, 9])) == [3, 5, 9]             # any order; past int64 left out
