"""Hostile review rev24g of commit 799f4db, the fix of review rev24b (``pipelines/appdb/``,
``sql/app_db/``, README sections 1a and 9): the hot-standby check (``export.check_standby``,
``sql/app_db/standby.sql``), the password redaction rebuilt by structure (``connection.redact``,
``server_name``), the libpq keepalives and the server's ``tcp_keepalives_*`` / ``tcp_user_timeout``, and
ENUM columns read as text. Run against real throwaway PostgreSQL 15 servers (``tests/postgres_server.py``),
a streaming hot standby made by ``pg_basebackup``, and a logical-replication subscriber. Each test is a strict
xfail whose assertions state the correct behaviour; all five were fixed the same day (markers removed).

Held (tried, no defect): ENUM labels with quotes, a newline, a tab, a backslash, a control character, U+2028
and an emoji, declared in reverse order, in ``scheduler_cls`` and as ``image_uid`` (unique index dropped):
the four files byte for byte as from the text columns; an enum where an integer belongs is refused naming
it; ``standby.sql``'s functions are executable by any role (PUBLIC); the server's ``tcp_*`` settings are
USERSET with source ``default`` on a fresh server.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import time

import psycopg
import pytest
from appdb_fixtures import app_db
from psycopg.conninfo import conninfo_to_dict

from formats.home import DataHome
from pipelines.appdb.connection import AppDatabaseError
from pipelines.appdb.export import export_day
from tests.postgres_server import (
    SUPERUSER,
    PostgresServer,
    _free_port_number,
    postgres_server,  # noqa: F401 - fixture
    start_server,
)

DAY = "2023-02-13"
TABLES = ("users", "images", "rankings", "downloads")


def _uid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _seed_day(conn: psycopg.Connection, day: str = DAY) -> None:
    """One account, two images and a ranking of ``day``."""
    conn.execute("INSERT INTO users VALUES (1, %s, 'u1@example.com', 'n1')", (f"{day} 01:00",))
    for i in (1, 2):
        conn.execute("INSERT INTO images (image_id, created_at, image_uid, user_id, prompt, negative_prompt, seed, gs, "
                     "steps, idx, num_generated, scheduler_cls, model_id) VALUES (%s, %s, %s, 1, 'a cat', '', 1, 7.5, 50, "
                     "0, 1, 's', 'm')", (i, f"{day} 0{i}:00", _uid(i)))
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (1, %s, 1, %s, %s, %s, 'a cat')", (f"{day} 03:00", _uid(1), _uid(2), _uid(1)))


def _lines(home: DataHome, day: str, table: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()]


def _wait_for(check, what: str) -> None:
    for _ in range(300):
        with contextlib.suppress(psycopg.Error):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"never {what}")


@contextlib.contextmanager
def _standby_of(primary: PostgresServer, name: str, upstream: PostgresServer | None = None):
    """A streaming hot standby of ``primary`` made now (pg_basebackup -R), on a unix socket, streaming from
    ``upstream`` where given (a cascading standby of that standby); yields it."""
    data = primary.root / name
    primary._run([str(primary.bindir / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
                  "-U", SUPERUSER, "-D", str(data), "-R", "-X", "stream", "-c", "fast"],
                 env={**os.environ, "PGPASSWORD": "postgres"})
    if upstream is not None:       # appended: the last setting wins, and the file keeps its owner
        with open(data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = 'host={upstream.socket_dir} port={upstream.port} user={SUPERUSER} "
                       "password=postgres'\n")
    standby = PostgresServer(root=primary.root, socket_dir=primary.socket_dir, port=_free_port_number(),
                             bindir=primary.bindir, run_as=primary.run_as)
    options = (f"-c listen_addresses='' -c unix_socket_directories='{primary.socket_dir}' "
               f"-c port={standby.port} -c fsync=off -c hot_standby=on")
    primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                  str(primary.root / f"{name}.log"), "-w", "-t", "60", "start"])
    try:
        yield standby
    finally:
        with contextlib.suppress(RuntimeError):
            primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])


@pytest.fixture(scope="module")
def primary():
    """A primary of its own (standbys are made of it by the tests)."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


# --- the password ----------------------------------------------------------------------------------

def test_a_password_cut_by_the_servers_name_limit_is_not_shown_in_part(postgres_server, tmp_path):
    password = "correcthorsebatterystaple"
    nested = f"host=db.internal user=export dbname=app password={password}"
    dsn = (f"host={postgres_server.socket_dir} port={postgres_server.port} user={SUPERUSER} password=postgres "
           f"dbname='{nested}'")
    with pytest.raises(AppDatabaseError) as refused:
        export_day(DataHome.at(tmp_path / "home"), dsn, DAY)
    message = str(refused.value)
    assert "does not exist" in message              # the server's reason, quoting the (cut) database name
    assert password[:8] not in message, message     # no part of the password (8 characters of 25 here)


# --- the hot-standby check -------------------------------------------------------------------------

def test_a_caught_up_standby_of_a_quiet_primary_is_exported(primary, tmp_path):
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    from_primary = DataHome.at(tmp_path / "primary")
    export_day(from_primary, dsn, DAY)
    with _standby_of(primary, "quiet") as standby:
        standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")

        def streaming() -> bool:
            with psycopg.connect(standby_dsn) as conn:
                return conn.execute("SELECT status = 'streaming' AND flushed_lsn <= pg_last_wal_replay_lsn() "
                                    "AND last_msg_send_time IS NOT NULL FROM pg_stat_wal_receiver").fetchone()[0]
        _wait_for(streaming, "streamed")
        home = DataHome.at(tmp_path / "standby")
        report = export_day(home, standby_dsn, DAY)       # DAY closed years ago, by every clock there is
    assert report.published == "new day"
    for table in TABLES:
        assert home.raw_file(DAY, table).read_bytes() == from_primary.raw_file(DAY, table).read_bytes()


def _rank(conn: psycopg.Connection, ranking_id: int, day: str = DAY) -> None:
    """A ranking of ``day`` committed now (a late row)."""
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (%s, %s, 1, %s, %s, %s, 'a cat')", (ranking_id, f"{day} 23:59", _uid(1), _uid(2), _uid(1)))
    conn.commit()


def test_a_standby_that_stopped_receiving_never_replaces_a_day_exported_from_the_primary(primary, tmp_path):
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    with _standby_of(primary, "cut") as standby:
        standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
        with psycopg.connect(standby.dsn(password="postgres"), autocommit=True) as conn:
            _wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                      .fetchone()[0] == 1, "streamed")
            with psycopg.connect(dsn) as primary_conn:   # a commit the standby replays: its replay time is now
                primary_conn.execute("UPDATE users SET name = name")
            _wait_for(lambda: conn.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone()[0],
                      "replayed a commit")
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")      # its primary lost (a failover elsewhere)
            conn.execute("SELECT pg_reload_conf()")
            _wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0] == 0,
                      "stopped receiving")
        with psycopg.connect(dsn) as conn:
            _rank(conn, 2)                                # a late row, committed after the standby stopped
        home = DataHome.at(tmp_path / "home")
        export_day(home, dsn, DAY)                        # tonight's export, from the primary: rankings 1 and 2
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]
        with contextlib.suppress(AppDatabaseError):
            export_day(home, standby_dsn, DAY)            # a lookback re-export that reached the standby
    assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]


@pytest.fixture(scope="module")
def logical_server():
    """A server with wal_level = logical (a publisher and its subscriber, two databases of it)."""
    server = start_server()
    try:
        options = (f"-c listen_addresses='' -c unix_socket_directories='{server.root}' -c port={server.port} "
                   "-c fsync=off -c max_connections=40 -c wal_level=logical")
        server._run([str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-o", options, "-l",
                     str(server.root / "log"), "-w", "-t", "60", "restart"])
        yield server
    finally:
        server.stop()


def test_a_stalled_logical_replica_never_replaces_a_day_exported_from_its_publisher(logical_server, tmp_path):
    server = logical_server
    dsn, replica_dsn = app_db(server), app_db(server)
    publisher, subscriber = conninfo_to_dict(dsn)["dbname"], conninfo_to_dict(replica_dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        _seed_day(conn)
        conn.execute(f'CREATE PUBLICATION "p_{publisher}" FOR ALL TABLES')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"s_{publisher}",))
    with psycopg.connect(replica_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SUBSCRIPTION \"sub_{subscriber}\" CONNECTION '{dsn}' PUBLICATION \"p_{publisher}\" "
                     f"WITH (create_slot = false, slot_name = 's_{publisher}')")
        _wait_for(lambda: conn.execute("SELECT count(*) FROM rankings").fetchone()[0] == 1
                  and conn.execute("SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel").fetchone()[0],
                  "copied the publisher's rows")
        conn.execute(f'ALTER SUBSCRIPTION "sub_{subscriber}" DISABLE')     # apply stopped
    with psycopg.connect(dsn) as conn:
        _rank(conn, 2)                                    # a late row the replica never gets
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, DAY)                            # tonight's export, from the publisher
    assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]
    with contextlib.suppress(AppDatabaseError):
        export_day(home, replica_dsn, DAY)                # a lookback re-export that reached the replica
    assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]


def test_a_cascading_standby_of_a_stalled_standby_never_replaces_a_day_exported_from_the_primary(primary, tmp_path):
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    with _standby_of(primary, "upstream") as upstream, _standby_of(primary, "cascade", upstream) as cascade:
        cascade_dsn = cascade.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
        with psycopg.connect(dsn) as conn:                # a commit both replay: their replay time is now
            conn.execute("UPDATE users SET name = name")
        with psycopg.connect(cascade.dsn(password="postgres"), autocommit=True) as conn:
            _wait_for(lambda: conn.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone()[0]
                      and conn.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                      .fetchone()[0] == 1, "replayed a commit")
        with psycopg.connect(upstream.dsn(password="postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")      # the upstream loses its primary
            conn.execute("SELECT pg_reload_conf()")
            _wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0] == 0,
                      "stopped receiving")
        with psycopg.connect(dsn) as conn:
            _rank(conn, 2)                                # a late row, committed after the upstream stopped
        home = DataHome.at(tmp_path / "home")
        export_day(home, dsn, DAY)                        # tonight's export, from the primary: rankings 1 and 2
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]
        with contextlib.suppress(AppDatabaseError):
            export_day(home, cascade_dsn, DAY)            # a lookback re-export that reached the cascade
    assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]
