"""Fixes of review rev24b (the app database as the source, README section 1a), beyond the review's own tests
(``tests/unit/test_hostile_rev24b.py``): a hot standby whose replay lags, waits and catches up, or whose last
replayed commit is before the day's close; redaction by structure; keepalives on a real TCP connection, on
both ends, and the DSN's own values kept; enum columns (a domain over one, and where none may stand).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import os
import socket
import time

import psycopg
import pytest
from appdb_fixtures import app_db
from psycopg.conninfo import conninfo_to_dict

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.connection import KEEPALIVE_PARAMETERS, AppDatabaseError, connect, redact, server_name
from pipelines.appdb.export import ExportTooEarly, ReplicaBehind, export_day
from pipelines.appdb.tables import AppSchemaError
from tests.postgres_server import (
    SUPERUSER,
    PostgresServer,
    _free_port_number,
    postgres_server,  # noqa: F401 - fixture
    start_server,
)

DAY = "2023-02-13"


def _uid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _seed_day(conn: psycopg.Connection, day: str = DAY) -> None:
    conn.execute("INSERT INTO users VALUES (1, %s, 'u1@example.com', 'n1')", (f"{day} 01:00",))
    for i in (1, 2):
        conn.execute("INSERT INTO images (image_id, created_at, image_uid, user_id, prompt, negative_prompt, seed, gs, "
                     "steps, idx, num_generated, scheduler_cls, model_id) VALUES (%s, %s, %s, 1, 'a cat', '', 1, 7.5, 50, "
                     "0, 1, 's', 'm')", (i, f"{day} 0{i}:00", _uid(i)))


def _rank(conn: psycopg.Connection, ranking_id: int, day: str = DAY) -> str:
    """A ranking committed now, dated 23:59 of ``day``; returns the primary's WAL position after it."""
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (%s, %s, 1, %s, %s, %s, 'a cat')",
                 (ranking_id, f"{day} 23:59", _uid(1), _uid(2), _uid(1)))
    conn.commit()
    return conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]   # synchronous_commit is off


def _lines(home: DataHome, day: str, table: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()]


def _wait_for(check, what: str) -> None:
    for _ in range(300):
        with contextlib.suppress(psycopg.Error):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"never {what}")


# --- a hot standby -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replica():
    """A fresh primary and a streaming hot standby of it (pg_basebackup -R), both on unix sockets; yields
    (primary, standby, standby data folder)."""
    primary = start_server()
    data = primary.root / "standby"
    started = False
    try:
        primary._run([str(primary.bindir / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
                      "-U", SUPERUSER, "-D", str(data), "-R", "-X", "stream", "-c", "fast"],
                     env={**os.environ, "PGPASSWORD": "postgres"})
        standby = PostgresServer(root=primary.root, socket_dir=primary.socket_dir, port=_free_port_number(),
                                 bindir=primary.bindir, run_as=primary.run_as)
        options = (f"-c listen_addresses='' -c unix_socket_directories='{primary.socket_dir}' "
                   f"-c port={standby.port} -c fsync=off -c hot_standby=on")
        primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                      str(primary.root / "standby.log"), "-w", "-t", "60", "start"])
        started = True
        yield primary, standby, data
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        primary.stop()


def _databases(replica) -> tuple[str, str]:
    """A new app database seeded with DAY's account and images, replayed by the standby: (primary, standby) DSNs."""
    primary, standby, _ = replica
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
    _wait_for(lambda: _count(standby_dsn, "images") == 2, "replayed the seed rows")
    return dsn, standby_dsn


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _received(standby_dsn: str, lsn: str) -> bool:
    with psycopg.connect(standby_dsn) as conn:
        return conn.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]


@contextlib.contextmanager
def _apply_delay(replica, delay: str):
    """The standby replays commits only ``delay`` after they were made (recovery_min_apply_delay, a
    delayed replica); back to no delay after."""
    primary, standby, data = replica
    conf = data / "postgresql.auto.conf"
    before = conf.read_bytes()

    def reload(text: bytes) -> None:
        with open(conf, "r+b") as handle:      # in place: the file keeps the server account as its owner
            handle.write(text)
            handle.truncate()
        primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "reload"])
    reload(before + f"recovery_min_apply_delay = '{delay}'\n".encode())
    try:
        with psycopg.connect(standby.dsn(password="postgres")) as conn:
            _wait_for(lambda: conn.execute("SHOW recovery_min_apply_delay").fetchone()[0] != "0", "took the delay")
        yield lambda: reload(before)
    finally:
        reload(before)


def test_a_standby_that_keeps_received_wal_unreplayed_is_refused_after_the_wait(replica, tmp_path, monkeypatch):
    dsn, standby_dsn = _databases(replica)
    monkeypatch.setattr(export_module, "REPLAY_WAIT_S", 0.5)
    with _apply_delay(replica, "1h"):
        with psycopg.connect(dsn) as conn:
            lsn = _rank(conn, 1)
        _wait_for(lambda: _received(standby_dsn, lsn), "received the primary's WAL")
        home = DataHome.at(tmp_path / "home")
        with pytest.raises(ReplicaBehind) as refused:
            export_day(home, standby_dsn, DAY)
    message = str(refused.value)
    assert "hot standby" in message and "bytes of received WAL not replayed" in message and "0.5 s" in message
    assert "\n" not in message and not home.raw.exists()      # one line, nothing written


def test_a_standby_that_catches_up_while_the_export_waits_is_exported_whole(replica, tmp_path, monkeypatch):
    dsn, standby_dsn = _databases(replica)
    real_sleep = time.sleep
    with _apply_delay(replica, "1h") as lift:
        with psycopg.connect(dsn) as conn:
            lsn = _rank(conn, 1)
        _wait_for(lambda: _received(standby_dsn, lsn), "received the primary's WAL")
        lifted = []

        def sleep(seconds: float) -> None:       # the export's first wait: the delay is lifted, replay goes on
            if not lifted:
                lifted.append(True)
                lift()
            real_sleep(seconds)
        monkeypatch.setattr(export_module.time, "sleep", sleep)
        home = DataHome.at(tmp_path / "home")
        report = export_day(home, standby_dsn, DAY)
        monkeypatch.undo()
    assert lifted and report.published == "new day" and report.warnings == []
    assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1]
    primary_home = DataHome.at(tmp_path / "primary")
    export_day(primary_home, dsn, DAY)
    for table in ("users", "images", "rankings", "downloads"):
        assert home.raw_file(DAY, table).read_bytes() == primary_home.raw_file(DAY, table).read_bytes()


def test_a_paused_replica_never_replaces_a_day_exported_from_the_primary(replica, tmp_path):
    dsn, standby_dsn = _databases(replica)
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with psycopg.connect(dsn) as conn:
            lsn = _rank(conn, 1)
        export_day(home, dsn, DAY)                       # the day exported whole from the primary
        before = {t: (home.raw_file(DAY, t).read_bytes(), home.raw_file(DAY, t).stat().st_ino)
                  for t in ("users", "images", "rankings", "downloads")}
        _wait_for(lambda: _received(standby_dsn, lsn), "received the primary's WAL")
        with pytest.raises(ReplicaBehind, match="replay is paused") as refused:
            export_day(home, standby_dsn, DAY)           # a lookback re-export from the replica
    finally:
        with psycopg.connect(standby_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    assert "pg_wal_replay_resume()" in str(refused.value) and "nothing was written" in str(refused.value)
    assert {t: (home.raw_file(DAY, t).read_bytes(), home.raw_file(DAY, t).stat().st_ino) for t in before} == before
    assert len(_lines(home, DAY, "rankings")) == 1


def test_a_standby_judges_the_lag_by_its_last_replayed_commit_not_its_clock(replica, tmp_path):
    primary, standby, _ = replica
    today = dt.datetime.now(dt.timezone.utc).date()
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn, today.isoformat())
    standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
    _wait_for(lambda: _count(standby_dsn, "images") == 2, "replayed the seed rows")
    home = DataHome.at(tmp_path / "home")
    later = dt.datetime.combine(today + dt.timedelta(days=3), dt.time(), dt.timezone.utc)
    # this machine's clock (``now``) says the day closed long ago; the standby's data reaches only today
    with pytest.raises(ExportTooEarly, match="a hot standby, has replayed, committed at") as early:
        export_day(home, standby_dsn, today.isoformat(), now=later)
    assert f"day {today.isoformat()} is still open" in str(early.value)
    assert not home.raw_day(today.isoformat()).exists()
    # the primary is not judged by a replay time: with the same ``now`` it exports the day
    assert export_day(home, dsn, today.isoformat(), now=later).published == "new day"


# --- the password is redacted by structure -------------------------------------------------------------

@pytest.mark.parametrize("dsn,name", [
    ("host=db.internal.example port=5432 dbname=app user=reader password=internal", "db.internal.example"),
    ("host=db port=5432 dbname=pickapic user=reader password=pick", "pickapic"),
    ("host=db port=5432 dbname=app user=reader password=reader", "reader"),
    ("host=db port=5432 dbname=app user=u password=5432", "5432"),
    ("host=a.pick.example,b.pick.example port=5432,5433 dbname=app user=u password=pick", "a.pick.example"),
    ("postgresql://reader:pick@db.pick.example:5432/pickapic", "db.pick.example"),
])
def test_names_are_shown_whole_and_free_text_is_searched_around_them(dsn, name):
    password = conninfo_to_dict(dsn)["password"]
    shown = server_name(dsn)
    assert name in str(shown) and "***" not in str(shown) and "***" not in repr(shown.as_metadata())
    # libpq's reason: the name kept whole, the password elsewhere hidden (DSN text quoted by a driver); a
    # password that is a whole name cannot be told from it there (the name shows it anyway)
    text = f'connection to server at "{name}" failed: bad password={password} for "{name}"'
    shown = name if password == name else "***"
    assert redact(text, dsn) == f'connection to server at "{name}" failed: bad password={shown} for "{name}"'


def test_free_text_hides_every_occurrence_outside_the_names(monkeypatch):
    dsn = "host=db port=5432 dbname=pickapic user=reader password=pick"
    assert redact("pickapic pick xpicky pickpick", dsn) == "pickapic *** x***y ***"
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    assert redact("database pickapic: s3cret s3cret", "host=db dbname=pickapic user=reader") == \
        "database pickapic: *** ***"
    # a connection string in dbname is free text, not a name: its password is hidden in it
    nested = "host=db user=reader dbname='host=db2 dbname=pickapic password=pick'"
    assert "pick " not in server_name(nested).dbname and "password=***" in server_name(nested).dbname


def test_a_refused_login_names_the_database_whole(postgres_server, tmp_path):
    dsn = f"host={postgres_server.socket_dir} port={postgres_server.port} dbname=pickapic user=pick password=pick"
    with pytest.raises(AppDatabaseError) as refused:
        export_day(DataHome.at(tmp_path / "home"), dsn, DAY)
    message = str(refused.value)       # the password is the user's name: shown as that name, nowhere masked
    assert 'password authentication failed for user "pick"' in message and "user 'pick'" in message
    assert "database 'pickapic'" in message and "***" not in message, message


# --- dead-peer detection -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tcp_server():
    """A throwaway server that listens on 127.0.0.1 too (keepalives exist only on a TCP socket)."""
    server = start_server()
    try:
        options = (f"-c listen_addresses='127.0.0.1' -c unix_socket_directories='{server.root}' "
                   f"-c port={server.port} -c fsync=off -c max_connections=20")
        server._run([str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-o", options, "-l",
                     str(server.root / "log"), "-w", "-t", "60", "restart"])
        yield server
    finally:
        server.stop()


def _tcp_dsn(server: PostgresServer, extra: str = "") -> str:
    dsn = app_db(server)
    return f"{dsn.replace(f'host={server.socket_dir}', 'host=127.0.0.1')} {extra}".strip()


def _socket_options(conn: psycopg.Connection) -> tuple[int, int, int, int, int]:
    probe = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return tuple(probe.getsockopt(level, option) for level, option in [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)])
    finally:
        probe.close()


def test_the_export_session_bounds_a_dead_peer_on_both_ends(tcp_server):
    conn = connect(_tcp_dsn(tcp_server))
    try:
        assert _socket_options(conn) == (1, 60, 10, 6, 120000)          # this side's socket
        server_side = [conn.execute(f"SHOW {name}").fetchone()[0] for name in
                       ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")]
        assert [v.decode() if isinstance(v, bytes) else v for v in server_side] == ["60", "10", "6", "120000"]
    finally:
        conn.close()


def test_keepalive_values_the_user_gives_are_kept(tcp_server):
    dsn = _tcp_dsn(tcp_server, "keepalives_idle=30 tcp_user_timeout=0 options='-c tcp_keepalives_idle=45'")
    conn = connect(dsn)
    try:
        params = conn.info.get_parameters()
        assert params["keepalives_idle"] == "30" and params.get("tcp_user_timeout", "0") == "0"
        assert params["keepalives_interval"] == KEEPALIVE_PARAMETERS["keepalives_interval"]
        assert _socket_options(conn)[:2] == (1, 30)
        shown = conn.execute("SHOW tcp_keepalives_idle").fetchone()[0]
        assert (shown.decode() if isinstance(shown, bytes) else shown) == "45"
    finally:
        conn.close()
    conn = connect(_tcp_dsn(tcp_server, "keepalives=0"))
    try:
        assert conn.info.get_parameters()["keepalives"] == "0" and _socket_options(conn)[0] == 0
    finally:
        conn.close()


# --- enum columns ------------------------------------------------------------------------------------

def test_a_domain_over_an_enum_is_exported_and_an_enum_where_no_text_belongs_is_refused(postgres_server, tmp_path):
    dsn = app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, "
                     "best_image_uid, prompt) VALUES (1, %s, 1, %s, %s, %s, 'a cat')",
                     (f"{DAY} 03:00", _uid(1), _uid(2), _uid(1)))
    before = DataHome.at(tmp_path / "before")
    export_day(before, dsn, DAY)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TYPE model AS ENUM ('x', 'm')")
        conn.execute("CREATE DOMAIN model_d AS model CHECK (VALUE <> 'x')")
        conn.execute("ALTER TABLE images ALTER COLUMN model_id TYPE model_d USING model_id::model_d")
        conn.execute(f"CREATE TYPE uid AS ENUM ('{_uid(1)}', '{_uid(2)}')")
        conn.execute("ALTER TABLE rankings ALTER COLUMN best_image_uid TYPE uid USING best_image_uid::uid")
    after = DataHome.at(tmp_path / "after")
    export_day(after, dsn, DAY)
    for table in ("users", "images", "rankings", "downloads"):
        assert after.raw_file(DAY, table).read_bytes() == before.raw_file(DAY, table).read_bytes()
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TYPE steps_e AS ENUM ('50')")
        conn.execute("ALTER TABLE images ALTER COLUMN steps TYPE steps_e USING steps::text::steps_e")
    with pytest.raises(AppSchemaError, match=r"'steps' has type 'steps_e' \(an enum\), expected type integer"):
        export_day(DataHome.at(tmp_path / "refused"), dsn, DAY)
