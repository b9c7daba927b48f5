"""Fix of review rev24g (``tests/unit/test_hostile_rev24g.py``), the app database as the source: cases the
review's xfails do not cover. A password key's value and a cut password hidden in free text (names still shown
whole); the publish-time guard (``export.keep_vanishing_rows``; ``check_no_vanishing_rows`` until rev29c): a
re-export from a replica that only adds rows goes through, one that would drop rows keeps them in the day beside the
rows read (rev29c; refused whole before), with one line naming the day, the replica and the rows, a primary's
deletions propagate unless ``app_export.keep_exported_rows``; a database holding a logical
subscription of none of the app tables is no replica (rev24k: it was, until then); a hot standby whose WAL
receiver the role may not see, or that heard nothing from its upstream for too long, is refused.
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
from pipelines.appdb import export as export_module
from pipelines.appdb.connection import redact, server_name
from pipelines.appdb.export import AppExportConfig, ReplicaBehind, export_day, vanishing_rows
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


def _seed_day(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO users VALUES (1, %s, 'u1@example.com', 'n1')", (f"{DAY} 01:00",))
    for i in (1, 2):
        conn.execute("INSERT INTO images (image_id, created_at, image_uid, user_id, prompt, negative_prompt, seed, gs, "
                     "steps, idx, num_generated, scheduler_cls, model_id) VALUES (%s, %s, %s, 1, 'a cat', '', 1, 7.5, 50, "
                     "0, 1, 's', 'm')", (i, f"{DAY} 0{i}:00", _uid(i)))


def _rank(conn: psycopg.Connection, ranking_id: int) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, best_image_uid, "
                 "prompt) VALUES (%s, %s, 1, %s, %s, %s, 'a cat')", (ranking_id, f"{DAY} 23:59", _uid(1), _uid(2), _uid(1)))
    conn.commit()


def _lines(home: DataHome, table: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(home.raw_file(DAY, table).read_bytes()).splitlines()]


def _files(home: DataHome) -> dict:
    return {t: (home.raw_file(DAY, t).read_bytes(), home.raw_file(DAY, t).stat().st_ino) for t in TABLES}


def _scalar(dsn: str, query: str):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchone()[0]


def _wait_for(check, what: str) -> None:
    for _ in range(300):
        with contextlib.suppress(psycopg.Error):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"never {what}")


# --- the password in free text -----------------------------------------------------------------------

def test_a_password_key_in_a_quoted_name_hides_its_value_wherever_the_server_cut_the_name():
    password = "correcthorsebatterystaple"
    nested = f"host=db.internal user=export dbname=app password={password} sslmode=require"
    dsn = f"host=/tmp/s port=5432 user=reader dbname='{nested}'"
    start = nested.index("password=") + len("password=")
    for cut in range(start + 1, len(nested) + 1):       # every length the server's 63-byte limit could leave
        text = f'FATAL:  database "{nested[:cut]}" does not exist'
        shown = redact(text, dsn)
        assert shown == f'FATAL:  database "{nested[:start]}***" does not exist', (cut, shown)
    shown = str(server_name(dsn))
    assert password[:4] not in shown and "dbname=app password=***" in shown
    # sslpassword too, and a libpq-quoted value with a space and an escaped quote
    assert redact('database "a sslpassword=hunter2x"', "") == 'database "a sslpassword=***"'
    assert redact("password='a b\\' c' rest", "") == "password=*** rest"


def test_a_cut_password_is_hidden_at_the_end_of_a_quoted_name_and_names_stay_whole():
    dsn = "host=db port=5432 dbname=pickapic user=reader password=pickapic-secret"
    # a name that starts like the password is a name: shown whole
    assert redact('FATAL:  database "pickapic" does not exist', dsn) == 'FATAL:  database "pickapic" does not exist'
    # a name the server cut inside the password: the cut password hidden (4 characters or more)
    assert redact('database "x pickapic-se" does not exist', dsn) == 'database "x ***" does not exist'
    assert redact('database "x pick" does not exist', dsn) == 'database "x ***" does not exist'
    assert redact('database "x pic" does not exist', dsn) == 'database "x pic" does not exist'      # under 4
    assert redact('role "abc" does not exist', "host=db user=u password=abcdefgh") == 'role "abc" does not exist'
    assert redact('role "abcd" does not exist', "host=db user=u password=abcdefgh") == 'role "***" does not exist'


# --- which rows of a file vanish -----------------------------------------------------------------------

def _gz(path, lines: list[str]):
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    return path


def test_vanishing_rows_counts_keys_the_new_file_lacks(tmp_path):
    old = _gz(tmp_path / "old.gz", ['{"ranking_id": 1, "x": 1}', '{"ranking_id": 2}', '{"ranking_id": 7}',
                                    '{"ranking_id": null}', '{"ranking_id": null}'])
    same = _gz(tmp_path / "same.gz", ['{"ranking_id": 1, "x": 2}', '{"ranking_id": 2}', '{"ranking_id": 7}',
                                      '{"ranking_id": 9}', '{"ranking_id": null}', '{"ranking_id": null}'])
    assert vanishing_rows(old, same) == (0, [])
    unordered = _gz(tmp_path / "unordered.gz", ['{"ranking_id": 7}', '{"ranking_id": null}', '{"ranking_id": 1}'])
    assert vanishing_rows(old, unordered) == (2, ["2", "NULL"])
    assert vanishing_rows(old, _gz(tmp_path / "empty.gz", [])) == (5, ["1", "2", "7", "NULL", "NULL"])


# --- the publish-time guard ----------------------------------------------------------------------------

def test_a_replica_may_add_rows_to_a_day_but_never_drop_them(postgres_server, tmp_path, monkeypatch):
    dsn = app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
        _rank(conn, 1)
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, DAY)
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")    # read as from a replica
    with psycopg.connect(dsn) as conn:
        _rank(conn, 2)
    assert export_day(home, dsn, DAY).published == "updated"          # a late row: the day grows
    assert [line["ranking_id"] for line in _lines(home, "rankings")] == [1, 2]
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 1")
        conn.execute("DELETE FROM images WHERE image_id = 2")
        _rank(conn, 3)
    # rev29c: the rows the replica lacks are kept in the day beside the late row 3 (it was refused whole,
    # RowsWouldVanish, so the late row never landed), with a warning naming them
    report = export_day(home, dsn, DAY)
    assert report.published == "updated"
    assert [line["ranking_id"] for line in _lines(home, "rankings")] == [1, 2, 3]
    assert [line["image_id"] for line in _lines(home, "images")] == [1, 2]
    assert report.kept == {"images": {"rows": 1, "first_ids": ["2"]}, "rankings": {"rows": 1, "first_ids": ["1"]}}
    kept = [w for w in report.warnings if "kept in the re-exported day" in w]
    assert len(kept) == 1 and "a hot standby" in kept[0] and "\n" not in kept[0]
    assert "images: 1 (ids 2)" in kept[0] and "rankings: 1 (ids 1)" in kept[0] and "from the primary" in kept[0]
    before = _files(home)
    assert export_day(home, dsn, DAY).published == "unchanged" and _files(home) == before   # the same bytes again
    monkeypatch.undo()
    # from the primary, rows the app deleted leave the day (section 1a) ...
    kept = export_day(home, dsn, DAY, AppExportConfig(keep_exported_rows=True))   # ... unless told to keep them
    assert kept.published == "unchanged" and _files(home) == before
    assert any("app_export.keep_exported_rows = true keeps rows the app deleted" in w for w in kept.warnings)
    assert export_day(home, dsn, DAY).published == "updated"
    assert [line["ranking_id"] for line in _lines(home, "rankings")] == [2, 3]
    assert [line["image_id"] for line in _lines(home, "images")] == [1]


def test_a_subscription_that_replicates_no_app_table_does_not_make_the_database_a_replica(postgres_server,
                                                                                          tmp_path):
    # rev24k: only a subscription naming one of the app tables (pg_subscription_rel) makes the source a replica;
    # one never connected (disabled, no slot, no tables) replicates none of them: deletions propagate
    dsn = app_db(postgres_server)
    subscription = f"sub_{conninfo_to_dict(dsn)['dbname']}"
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
        _rank(conn, 1)
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, DAY)
    with psycopg.connect(dsn, autocommit=True) as conn:   # a subscription never connected (disabled, no slot)
        conn.execute(f"CREATE SUBSCRIPTION {subscription} CONNECTION 'dbname=elsewhere' PUBLICATION p "
                     "WITH (connect = false, slot_name = NONE)")
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM rankings")
        report = export_day(home, dsn, DAY)
        assert report.published == "updated" and _lines(home, "rankings") == []
        assert not any(subscription in warning for warning in report.warnings)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SUBSCRIPTION {subscription}")


# --- a hot standby's WAL receiver ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def replica():
    """A fresh primary and a streaming hot standby of it, both on unix sockets: (primary, standby)."""
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
        yield primary, standby
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                primary._run([str(primary.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        primary.stop()


def test_a_standby_whose_receiver_the_role_may_not_see_is_refused_until_granted(replica, tmp_path):
    primary, standby = replica
    dsn = app_db(primary)
    dbname = conninfo_to_dict(dsn)["dbname"]
    role = f"r_{dbname}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        _seed_day(conn)
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader = standby.dsn(dbname, user=role, password="pw")
    _wait_for(lambda: _scalar(reader, "SELECT count(*) FROM images") == 2, "replayed")
    home = DataHome.at(tmp_path / "home")
    with pytest.raises(ReplicaBehind) as refused:
        export_day(home, reader, DAY)
    assert "pg_read_all_stats" in str(refused.value) and "\n" not in str(refused.value)
    assert not home.raw.exists()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"GRANT pg_read_all_stats TO {role}")
    _wait_for(lambda: _scalar(reader, "SELECT status FROM pg_stat_wal_receiver") == "streaming", "showed the receiver")
    assert export_day(home, reader, DAY).published == "new day"


def test_a_standby_that_heard_nothing_from_its_upstream_for_too_long_is_refused(replica, tmp_path, monkeypatch):
    primary, standby = replica
    dsn = app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
    _wait_for(lambda: _scalar(standby_dsn, "SELECT count(*) FROM images") == 2, "replayed")
    monkeypatch.setattr(export_module, "_silence_allowed", lambda state: 0.0)
    home = DataHome.at(tmp_path / "home")
    with pytest.raises(ReplicaBehind, match="whose WAL receiver has heard from its upstream not for"):
        export_day(home, standby_dsn, DAY)
    assert not home.raw.exists()
