"""Hostile review rev29d of the rev29c fix of the app-database export (``pipelines/appdb/export.py``,
``sql/app_db/``): the rows a replica's (or ``app_export.keep_exported_rows``') re-export keeps in a day
(``keep_vanishing_rows``, which replaced the refusal ``RowsWouldVanish``) and the late-row check's id digest
(``day_counts.sql`` / ``day_ids.sql``, "a deletion alone is compared once and remembered").

Each test states the correct behaviour; all four were fixed the same day (fix29d, tested further in
``tests/unit/test_fix29d.py``). Real PostgreSQL
(``tests/postgres_server.py``); a replica is played as ``tests/unit/test_fix29c.py`` plays it (``check_standby``
answering "a hot standby"), which is the path every replica and ``keep_exported_rows`` take.
"""
from __future__ import annotations

import gzip
import json
import os

import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.export import AppExportConfig, export_day, late_days
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _lines(home: DataHome, day: str, table: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()]


def _ids(home: DataHome, day: str) -> list[int | None]:
    return [line["ranking_id"] for line in _lines(home, day, "rankings")]


def _rank(conn, day: str, prompt: str, ranking_id: int) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, 1, %s)",
                 (ranking_id, f"{day} 12:00", prompt))


def _replica(monkeypatch) -> None:
    """From now on the app database answers as a hot standby (the path of every replica's re-export)."""
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")


# --- 1. a day another exporter wrote is doubled by a replica's re-export ------------------------------

def test_a_day_another_exporter_wrote_is_not_doubled_by_a_replica_re_export(postgres_server, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    day = "2023-03-01"
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, "a", 1)
        _rank(conn, day, "b", 2)
    export_day(home, dsn, day, now=NOW)
    path = home.raw_file(day, "rankings")      # the same rows as another exporter writes them: compact JSON
    compact = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in _lines(home, day, "rankings"))
    staged = path.with_name(".other-exporter.tmp")
    staged.write_bytes(gzip.compress(compact.encode()))
    os.replace(staged, path)
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, "late", 3)
    _replica(monkeypatch)
    report = export_day(home, dsn, day, now=NOW)
    assert sorted(_ids(home, day)) == [1, 2, 3]            # now [1, 2, 3, 1, 2]
    assert report.kept == {}


# --- 2. a row moved to another day is kept in its old day too ------------------------------------------

def test_a_row_moved_to_another_day_is_not_kept_in_its_old_day(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", "a", 1)
        _rank(conn, "2023-03-01", "b", 2)
        _rank(conn, "2023-03-02", "c", 3)
    export_day(home, dsn, "2023-03-01", now=NOW)
    export_day(home, dsn, "2023-03-02", now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-02 09:00' WHERE ranking_id = 2")
    _replica(monkeypatch)
    old_day = export_day(home, dsn, "2023-03-01", now=NOW)
    export_day(home, dsn, "2023-03-02", now=NOW)
    assert _ids(home, "2023-03-02") == [2, 3]
    assert _ids(home, "2023-03-01") == [1]                 # now [1, 2]: ranking 2 in both days
    assert old_day.kept == {}


# --- 3. the id-by-id check calls a moved row a deletion and leaves it in its old day --------------------

def test_a_row_moved_out_of_a_day_past_the_lookback_does_not_stay_in_it(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        for d in range(1, 6):
            _rank(conn, f"2023-03-{d:02d}", "on time", d)
    for d in range(1, 4):
        export_day(home, dsn, f"2023-03-{d:02d}", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-05 09:00' WHERE ranking_id = 1")
    export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)          # checks 03-01 (past the lookback)
    export_day(home, dsn, "2023-03-05", NIGHTLY, now=NOW)
    for marked in late_days(home):                                  # what the schedule re-exports
        export_day(home, dsn, marked, NIGHTLY, now=NOW)
    holding = [d for d in home.raw_days() if 1 in _ids(home, d)]
    assert holding == ["2023-03-05"]                                # now ['2023-03-01', '2023-03-05']


# --- 4. a settings change is kept as rows 'not in the app' ---------------------------------------------

def test_users_snapshot_off_is_not_undone_by_kept_rows(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, '2023-03-01 01:00', 'a@example.com', 'a'), "
                     "(2, '2023-03-02 01:00', 'b@example.com', 'b')")
    export_day(home, dsn, "2023-03-02", now=NOW)                     # the default snapshot: accounts 1 and 2
    _replica(monkeypatch)
    report = export_day(home, dsn, "2023-03-02", AppExportConfig(users_snapshot=False), now=NOW)
    assert [line["user_id"] for line in _lines(home, "2023-03-02", "users")] == [2]    # now [1, 2]
    assert report.kept == {}
