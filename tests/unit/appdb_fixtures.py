"""App databases for the app-DB export tests: a fresh database of the app's schema on the test PostgreSQL server
(``tests/postgres_server.py``), rows put in it, days exported by the real ``export_day``, and the raw zone read
back. The export runs with the nightly config (a one-hour lag, a two-day lookback) at a fixed clock (NOW)."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path

import psycopg

from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day, late_days, raw_day_counts
from pipelines.appdb.scheduled import real_days
from tests.postgres_server import PostgresServer, create_app_database

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
NIGHTLY = AppExportConfig(lag_minutes=60, lookback_days=2)
# rankings 2 and 3 on 2023-03-01: the day the moved-row tests export, then re-export once ranking 3 has moved
MARCH_FIRST = {2: "2023-03-01 10:00", 3: "2023-03-01 12:00"}

_counter = iter(range(10**6))


def app_db(server: PostgresServer, encoding: str = "UTF8") -> str:
    """The DSN of a new empty database of the app's schema (a name of its own for each call)."""
    return create_app_database(server, f"appdb_{os.getpid()}_{next(_counter)}", encoding)


def add_ranking(conn, ranking_id: int, when: str, user: int = 1, best: str = "u-a") -> None:
    """One ranking of ``user`` made at ``when`` (images u-a and u-b, ``best`` the preferred one)."""
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (%s, %s, %s, 'u-a', 'u-b', %s, 'a cat')", (ranking_id, when, user, best))


def add_rankings(conn, first: int, last: int, when: str) -> None:
    """Rankings ``first`` to ``last`` (inclusive) of user 1, all made at ``when``, in one statement."""
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid,"
                 " prompt) SELECT i, %s::timestamptz, 1, 'u-a', 'u-b', 'u-a', 'a cat' "
                 "FROM generate_series(%s::int, %s::int) AS i", (when, first, last))


def add_user(conn, user_id: int, when: str, email: str) -> None:
    """One user created at ``when``."""
    conn.execute("INSERT INTO users (user_id, created_at, email, name) VALUES (%s, %s, %s, 'n')",
                 (user_id, when, email))


def exported_app(server: PostgresServer, root: Path, rankings: dict[int, str],
                 days: Iterable[str] = ("2023-03-01",)) -> tuple[str, DataHome]:
    """A new app database holding ``rankings`` (id -> created_at) and the data home at ``root`` with each of
    ``days`` exported (in that order); returns (DSN, home)."""
    dsn, home = app_db(server), DataHome.at(root)
    with psycopg.connect(dsn) as conn:
        for ranking_id, when in rankings.items():
            add_ranking(conn, ranking_id, when)
    for day in days:
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    return dsn, home


def two_accounts(server: PostgresServer, root: Path, second_day: str = "2023-03-02",
                 second_email: str = "two@example.com") -> tuple[str, DataHome]:
    """A new app database with two accounts of one ranking each: user 1 (one@example.com) on 2023-03-01 and
    user 2 (``second_email``) on ``second_day``, each created at 09:00 and ranking at 12:00; the data home at
    ``root`` is empty. Returns (DSN, home)."""
    dsn, home = app_db(server), DataHome.at(root)
    with psycopg.connect(dsn) as conn:
        add_user(conn, 1, "2023-03-01 09:00", "one@example.com")
        add_user(conn, 2, f"{second_day} 09:00", second_email)
        add_ranking(conn, 1, "2023-03-01 12:00")
        add_ranking(conn, 2, f"{second_day} 12:00", user=2)
    return dsn, home


def move_rankings(dsn: str, when: str, first: int, last: int | None = None) -> None:
    """Date rankings ``first`` to ``last`` (``first`` alone when ``last`` is None) to ``when`` in the app."""
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = %s WHERE ranking_id BETWEEN %s AND %s",
                     (when, first, first if last is None else last))


def raw_lines(home: DataHome, day: str, table: str) -> list[dict]:
    """The rows of ``table`` in the raw day (none when the day's file is absent)."""
    path = home.raw_file(day, table)
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()] if path.exists() else []


def raw_ids(home: DataHome, table: str = "rankings") -> set[int]:
    """The ranking ids of ``table`` in every raw day."""
    return {row["ranking_id"] for day in home.raw_days() for row in raw_lines(home, day, table)}


def nightly(home: DataHome, dsn: str, night: str, schedule: bool = False) -> list:
    """The night's export, then the marked days (``schedule``: only those ``app_export_schedule`` requests, the
    raw days and, fix38i, the days the raw zone lacks after its first real day and before the night's lookback window)."""
    reports = [export_day(home, dsn, night, NIGHTLY, now=NOW)]
    first = (dt.date.fromisoformat(night) - dt.timedelta(days=NIGHTLY.lookback_days)).isoformat()
    for marked in late_days(home):
        raw = home.raw_days()
        real = real_days(home, [day for day in raw if day < first], first, raw_day_counts)
        if not schedule or marked in raw or (real and real[0] < marked < first):
            reports.append(export_day(home, dsn, marked, NIGHTLY, now=NOW))
    return reports


def warnings_of(reports: list) -> list[str]:
    """Every warning line of ``reports``, in order."""
    return [line for report in reports for line in report.warnings]
