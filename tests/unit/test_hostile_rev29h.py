"""Hostile review rev29h of the app-database export (``pipelines/appdb/export.py``, ``sql/app_db/``) as fix29c and
fix29d left it: the late-row check's id digest and its look-up of the ids that left a day (``row_days.sql`` in a
transaction after the snapshot, ``LateCheck.finish``), the rows a replica's / ``keep_exported_rows`` re-export keeps
(old lines keyed by ``_piece_key``, unreadable lines kept apart), and the account erasure (GDPR) procedure of
README section 1a.

Checked and found sound (no test here): a nightly of an unchanged database is quiet and cheap (200,000 rankings
over 20 days: 3 exports in ~1.1 s, all ``unchanged``, no warning, no marker; a deletion costs one night of
comparisons, then quiet again); a row moved or deleted between the snapshot and the later look-up gives at worst
one more re-export, never a loop; ids at the int64 edges export, digest, keep and settle.

Each test states the correct behaviour; all four were fixed the same day (fix29h, tested further in
``tests/unit/test_fix29h.py``). Real PostgreSQL (``tests/postgres_server.py``); a replica
is played as ``tests/unit/test_fix29c.py`` plays it where needed.
"""
from __future__ import annotations

import gzip
import json
import os
import tracemalloc

import psycopg
import pyarrow.parquet as pq
from appdb_fixtures import NIGHTLY, NOW, app_db

from dagster_project.build import select_app_db_days
from formats.home import DataHome
from formats.settings import load
from pipelines.appdb.export import AppExportConfig, export_day, late_days
from pipelines.ingest.day import ingest_day
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _raw(home: DataHome, day: str, table: str) -> bytes:
    return gzip.decompress(home.raw_file(day, table).read_bytes())


def _ids(home: DataHome, day: str) -> list:
    return [json.loads(line)["ranking_id"] for line in _raw(home, day, "rankings").splitlines()]


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, %s, 'p')",
                 (ranking_id, f"{day} 12:00", user_id))


# --- 1. the documented account erasure leaves the account in raw days -----------------------------------------

def test_the_documented_erasure_removes_the_account_from_every_raw_day(postgres_server, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, '2023-03-01 01:00', 'a@example.com', 'a'), "
                     "(2, '2023-03-02 01:00', 'erase-me@example.com', 'b')")
        _rank(conn, "2023-03-01", 1, user_id=1)
        _rank(conn, "2023-03-02", 2, user_id=2)       # the only activity of 03-02 is the erased account's
        _rank(conn, "2023-03-03", 3, user_id=1)
    for day in ("2023-03-01", "2023-03-02", "2023-03-03"):
        export_day(home, dsn, day, now=NOW)
    with psycopg.connect(dsn) as conn:                # the erasure in the app (primary) database
        conn.execute("DELETE FROM rankings WHERE user_id = 2")
        conn.execute("DELETE FROM users WHERE user_id = 2")
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    # what `pickapic build --from-app-db --from 2023-03-01 --to 2023-03-03` exports (build.build -> one export each)
    for day in select_app_db_days(load(home.root), "2023-03-01", "2023-03-03"):
        export_day(home, dsn, day, now=NOW)
    holding = [day for day in home.raw_days() for table in ("users", "rankings")
               if b"erase-me@example.com" in _raw(home, day, table) or b'"user_id": 2,' in _raw(home, day, table)]
    assert holding == []                              # now ['2023-03-02', '2023-03-02']


# --- 2. a row moved to a day before the check window leaves every raw day ---------------------------------------

def test_a_row_moved_to_an_earlier_day_is_not_lost_from_the_raw_zone(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1)
        _rank(conn, "2023-03-02", 2)
    for day in ("2023-03-01", "2023-03-02"):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:                # an offline client's clock fixed: the ranking is a day older
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 08:00' WHERE ranking_id = 2")
    for night in ("2023-03-18", "2023-03-19"):       # 03-18 checks 03-02 .. 03-15: 03-02 holds a row that left it
        export_day(home, dsn, night, NIGHTLY, now=NOW)
        for marked in late_days(home):               # what the schedule re-exports
            export_day(home, dsn, marked, NIGHTLY, now=NOW)
    holding = [day for day in home.raw_days() if 2 in _ids(home, day)]
    assert holding == ["2023-03-01"]                  # now []: ranking 2 is in no raw day


# --- 3. a byte order mark makes a kept row an unreadable line the ingest quarantines ----------------------------

def test_a_kept_row_behind_a_byte_order_mark_stays_a_row(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    day = "2023-03-01"
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, '2023-03-01 01:00', 'a@example.org', 'a'), "
                     "(2, '2023-03-01 02:00', 'b@example.org', 'b')")
    export_day(home, dsn, day, now=NOW)
    path = home.raw_file(day, "users")                # the same day as a utf-8-sig writer delivers it
    staged = path.with_name(".other-exporter.tmp")
    staged.write_bytes(gzip.compress(b"\xef\xbb\xbf" + _raw(home, day, "users")))
    os.replace(staged, path)
    ingest_day(home, day)
    assert pq.read_table(home.partition_file("users", day)).column("user_id").to_pylist() == [1, 2]
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM users WHERE user_id = 1")
    report = export_day(home, dsn, day, AppExportConfig(keep_exported_rows=True), now=NOW)
    assert report.kept == {"users": {"rows": 1, "first_ids": ["1"]}}     # now {'rows': 0, ..., 'unreadable': 1}
    ingest_day(home, day)
    assert sorted(pq.read_table(home.partition_file("users", day)).column("user_id").to_pylist()) == [1, 2]


# --- 4. the ids that left a day cost ~145 bytes each in memory ---------------------------------------------------

def test_the_ids_that_left_a_day_are_held_compactly(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    accounts = 100_000
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users SELECT g, timestamp '2023-02-01' + (g %% 20) * interval '1 day', "
                     "'u' || g || '@x', 'n' FROM generate_series(1, %s) g", (accounts,))
    export_day(home, dsn, "2023-03-01", now=NOW)      # the default snapshot: every account
    tracemalloc.start()
    try:
        report = export_day(home, dsn, "2023-03-17", AppExportConfig(lookback_days=2, users_snapshot=False), now=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(report.late) == ["2023-03-01"] and report.late["2023-03-01"]["users"]["left"] == accounts
    assert peak < 48 * accounts                      # now ~145-215 bytes an id (21 MB traced)
