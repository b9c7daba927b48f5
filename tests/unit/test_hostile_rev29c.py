"""Hostile review rev29c of ingesting from the app's real PostgreSQL database over a year (``pipelines/appdb/``:
``connection.py``, ``export.py``, ``tables.py``, ``blobs.py``; the ``app_export`` asset and
``app_export_schedule``; README section 1a): what a live production database does between nights and during
an export. Run against real throwaway PostgreSQL servers (``tests/postgres_server.py``; a logical-replication
subscriber for the replica case). Each test states the correct behaviour; all three were fixed the same day
(fix29c, tested further in ``tests/unit/test_fix29c.py``).

Found (each confirmed by running it):

1. The late-row check (``export.late_rows``) compares only rows and largest id per day, so a row committed late
   for a day past the lookback window (a transaction left open for days, whose id was taken when it began) is
   never exported nor reported once any other row of that day was deleted since (a user removing a ranking, an
   account erasure): the count and the largest id match.
2. An undated row (NULL ``created_at``), which every export reports with "give them a real created_at in the
   app database", is never exported nor reported once the operator does exactly that with its real (past)
   date: the warning goes away and the row reaches no raw day.
3. From a replica (the README's recommended read replica or a logical subscriber), a re-export of a day is
   refused whole (``RowsWouldVanish``) as soon as one account of the day's ``users`` snapshot was deleted on
   the primary, so a late ranking of that day never reaches it (the README: "Rows may be added from a replica
   (late rows reach the day)"); every later lookback night, and every ``build --from-app-db`` of the days
   exported before the deletion, fails the same way.

Held (tried, no defect): a ``timestamptz`` ``created_at`` written from a ``Europe/Berlin`` session across the
DST change, in a table partitioned by month with a default partition (the same bytes as a plain ``timestamp``
table, each row on its UTC day); a microsecond rounding onto the next day; NULLs in every nullable column and
a NULL ``image_uid`` (exported as ``null``, quarantined, counts reconcile); a ``?`` in a URL password (libpq and
the check agree); ``conninfo_to_dict`` of a quoted value left open (no text quoted).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import gc
import gzip
import json
import time

import dagster as dg
import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db
from psycopg.conninfo import conninfo_to_dict

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from pipelines.appdb.connection import AppDatabaseError
from pipelines.appdb.export import export_day, late_days
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_hostile_rev24g import logical_server  # noqa: F401 - fixture

# NOW (appdb_fixtures): every day below is long closed


def _lines(home: DataHome, day: str, table: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()]


def _tick(home: DataHome, folder, when: dt.datetime) -> list[str]:
    """The days ``app_export_schedule`` requests at ``when`` (a fresh instance in ``folder``)."""
    with dg.instance_for_test(temp_dir=str(folder)) as instance:
        result = automation.app_export_schedule.evaluate_tick(dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when,
            resources={"data_home": PickapicHome(root=str(home.root))}, repository_def=defs.get_repository_def()))
        gc.collect()
    return [r.partition_key for r in result.run_requests]


# --- 1. a deletion hides a late row from the late-row check ------------------------------------------

def test_a_late_row_is_seen_though_a_row_of_its_day_was_deleted_since(postgres_server, tmp_path):  # noqa: F811
    dsn = app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 09:00', 1, 'deleted later')")
    lingering = psycopg.connect(dsn)               # an app session that begins on 03-01 and commits days later
    try:
        lingering.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 18:00', 2, 'late')")
        with psycopg.connect(dsn) as conn:
            for day in ("2023-03-01", "2023-03-02", "2023-03-03", "2023-03-04", "2023-03-05"):
                conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, 3, 'on time')",
                             (f"{day} 20:00",))
        home = DataHome.at(tmp_path / "home")
        for day in ("2023-03-01", "2023-03-02", "2023-03-03"):     # the nights of 03-02 .. 03-04
            export_day(home, dsn, day, NIGHTLY, now=NOW)
        lingering.commit()
    finally:
        lingering.close()
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE prompt = 'deleted later'")
    warnings = []
    for day in ("2023-03-04", "2023-03-05", "2023-03-06"):         # the next nights (03-01 is past the lookback)
        warnings += export_day(home, dsn, day, NIGHTLY, now=NOW).warnings
        for marked in late_days(home):                           # what the schedule re-exports the next night
            warnings += export_day(home, dsn, marked, NIGHTLY, now=NOW).warnings
    exported = "late" in [line["prompt"] for line in _lines(home, "2023-03-01", "rankings")]
    assert exported or any("2023-03-01" in warning for warning in warnings), \
        "the late ranking of 2023-03-01 is in the app database only, and nothing said so"


# --- 2. an undated row dated as the warning asks ---------------------------------------------------------

def test_an_undated_row_dated_as_the_warning_asks_is_exported_or_reported(postgres_server, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    dsn = app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN created_at DROP NOT NULL")
        for day in range(1, 31):
            conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, 1, 'on time')",
                         (f"2023-03-{day:02d} 12:00",))
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (NULL, 2, 'undated')")
    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "60")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", "2")
    warnings: list[str] = []
    for day in range(1, 29):                                      # the history, as build --from-app-db exports it
        warnings += export_day(home, dsn, f"2023-03-{day:02d}", NIGHTLY, now=NOW).warnings
    assert any("belong to no day" in w and "give them a real created_at" in w for w in warnings)
    with psycopg.connect(dsn) as conn:                            # the operator does what the warning says
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 18:00' WHERE created_at IS NULL")
    warnings = []
    for night in (31, 32, 33):                                    # 03-31, 04-01, 04-02 at 01:00 UTC
        when = dt.datetime(2023, 3, 1, 1, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=night - 1)
        for day in _tick(home, tmp_path / "instance", when):
            warnings += export_day(home, dsn, day, NIGHTLY, now=when).warnings
    exported = "undated" in [line["prompt"] for line in _lines(home, "2023-03-01", "rankings")]
    assert exported or any("2023-03-01" in warning for warning in warnings), \
        "the row the operator dated as asked is in the app database only, and nothing said so"


# --- 3. a replica refuses the whole day over one deleted account -------------------------------------

def _wait_for(conn: psycopg.Connection, query: str, value) -> None:
    for _ in range(300):
        with contextlib.suppress(psycopg.Error):
            if conn.execute(query).fetchone()[0] == value:
                return
        time.sleep(0.1)
    raise AssertionError(f"never {query} = {value!r}")


def test_a_late_ranking_reaches_its_day_from_a_replica_after_an_account_was_deleted(logical_server,  # noqa: F811
                                                                                    tmp_path):
    day = "2023-03-01"
    dsn, replica_dsn = app_db(logical_server), app_db(logical_server)
    publisher, subscriber = conninfo_to_dict(dsn)["dbname"], conninfo_to_dict(replica_dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users VALUES (1, %s, 'a@example.com', 'a'), (2, %s, 'b@example.com', 'b')",
                     (f"{day} 01:00", f"{day} 02:00"))
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, 1, 'on time')", (f"{day} 12:00",))
        conn.execute(f'CREATE PUBLICATION "p_{publisher}" FOR ALL TABLES')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"s_{publisher}",))
    with psycopg.connect(replica_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SUBSCRIPTION \"sub_{subscriber}\" CONNECTION '{dsn}' PUBLICATION \"p_{publisher}\" "
                     f"WITH (create_slot = false, slot_name = 's_{publisher}')")
        _wait_for(conn, "SELECT count(*) FROM rankings", 1)
        _wait_for(conn, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel", True)
    home = DataHome.at(tmp_path / "home")
    export_day(home, replica_dsn, day, now=NOW)                    # the night's export, from the replica
    assert [line["user_id"] for line in _lines(home, day, "users")] == [1, 2]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE user_id = 2")       # user 2 deletes their account
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, 1, 'late')", (f"{day} 23:59",))
    with psycopg.connect(replica_dsn, autocommit=True) as conn:    # the replica has both changes
        _wait_for(conn, "SELECT count(*) FROM rankings", 2)
        _wait_for(conn, "SELECT count(*) FROM users", 1)
    with contextlib.suppress(AppDatabaseError):
        export_day(home, replica_dsn, day, now=NOW)                # the lookback re-export, from the replica
    assert [line["prompt"] for line in _lines(home, day, "rankings")] == ["on time", "late"]
    assert [line["user_id"] for line in _lines(home, day, "users")] == [1, 2]
