"""Hostile review rev24k of fix24g (1e865c4, ``pipelines/appdb/``: a hot standby must stream, the publish-time
guard ``export.check_no_vanishing_rows`` / ``RowsWouldVanish``, ``app_export.keep_exported_rows``,
``connection.redact`` of ``password=`` values and cut prefixes, a caught-up standby of a quiet primary) and of
fix24f (055d87e, ``pipelines/splits/``: the salts record ``datasets/pickapic.salts``, re-seed while ``latest``
dangles, ``UnreadPublishedVersion``). Run against real throwaway PostgreSQL 15 servers
(``tests/postgres_server.py``), streaming and cascading hot standbys made by ``pg_basebackup`` and a logical
subscriber. Each test was a strict xfail whose assertions state the correct behaviour; all seven were fixed the same day.

Held (tried, no defect): ``redact`` on the server's 'database "..." does not exist' with a nested connection
string cut at every length, for passwords with regex specials, spaces, double and single quotes, backslashes,
unicode, an emoji, under ``password`` and ``sslpassword`` (no part of 4+ characters shown); a URL-form nested
dbname with the password cut inside it (hidden); an archived (linked) split folder of an old version stops no
build after the next publish while the ledger covers it; the salts record honours the umask (0644 under 022);
a corrupt sidecar of a retained version to re-seed from stops the build with one line naming the file and
saying to repair or delete the version.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import zlib

import psycopg
import pytest
from appdb_fixtures import app_db as _app_db
from psycopg.conninfo import conninfo_to_dict
from splits_fixtures import pair_row, users_by_home, write_pairs

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.connection import AppDatabaseError
from pipelines.appdb.export import export_day
from pipelines.splits import coverage
from pipelines.splits.assign import SplitConfig, build_splits
from tests.postgres_server import SUPERUSER, postgres_server  # noqa: F401 - fixture
from tests.unit.test_fix24f import QUIET, V1, _publish
from tests.unit.test_hostile_rev24g import (  # noqa: F401 - fixtures
    DAY,
    _lines,
    _rank,
    _seed_day,
    _standby_of,
    _wait_for,
    logical_server,
    primary,
)

# --- a first export from a replica that cannot see it is behind -------------------------------------------

def test_a_first_export_from_a_cascading_standby_of_a_stalled_standby_lacks_no_row(primary, tmp_path):
    dsn = _app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    with _standby_of(primary, "k_upstream") as upstream, _standby_of(primary, "k_cascade", upstream) as cascade:
        cascade_dsn = cascade.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
        with psycopg.connect(dsn) as conn:
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
            _rank(conn, 2)                                # committed on the primary after the upstream stopped
        home = DataHome.at(tmp_path / "home")
        with contextlib.suppress(AppDatabaseError):
            export_day(home, cascade_dsn, DAY)            # the night's first export of the day reached the cascade
    if home.raw_file(DAY, "rankings").exists():
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]


def test_a_first_export_from_a_disabled_logical_subscriber_is_not_published(logical_server, tmp_path):
    server = logical_server
    dsn, replica_dsn = _app_db(server), _app_db(server)
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
        conn.execute(f'ALTER SUBSCRIPTION "sub_{subscriber}" DISABLE')
    with psycopg.connect(dsn) as conn:
        _rank(conn, 2)                                    # a row the replica never gets
    home = DataHome.at(tmp_path / "home")
    try:
        with pytest.raises(AppDatabaseError):
            export_day(home, replica_dsn, DAY)
        assert not home.raw_file(DAY, "rankings").exists()
    finally:
        with psycopg.connect(replica_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER SUBSCRIPTION "sub_{subscriber}" SET (slot_name = NONE)')
            conn.execute(f'DROP SUBSCRIPTION "sub_{subscriber}"')


# --- the vanishing-rows guard ------------------------------------------------------------------------------

def test_a_raw_file_cut_before_its_gzip_trailer_still_keeps_its_readable_rows(primary, tmp_path, monkeypatch):
    dsn = _app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
        conn.commit()
        _rank(conn, 2)
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, DAY)
    path = home.raw_file(DAY, "rankings")
    whole = path.read_bytes()
    os.chmod(path, 0o644)
    path.unlink()
    path.write_bytes(whole[:-8])                         # CRC and size trailer lost: every row still readable
    assert b'"ranking_id": 2' in zlib.decompressobj(31).decompress(whole[:-8])
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 2")
        conn.commit()
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")   # a stalled replica
    # refused (RowsWouldVanish) until rev29c; now the readable rows are kept in the re-exported day
    assert export_day(home, dsn, DAY).kept == {"rankings": {"rows": 1, "first_ids": ["2"]}}
    assert b'"ranking_id": 2' in gzip.decompress(path.read_bytes())


# --- the redaction -------------------------------------------------------------------------------------------

def test_a_cut_password_that_starts_with_the_user_name_is_not_shown_in_part(postgres_server, tmp_path):
    password = f"{SUPERUSER}horsebatterystaple"
    user = "u" * (63 - len("postgresql://") - 1 - len(SUPERUSER))       # the server cuts right after 'postgres'
    nested = f"postgresql://{user}:{password}@db.internal/app"
    dsn = (f"host={postgres_server.socket_dir} port={postgres_server.port} user={SUPERUSER} password=postgres "
           f"dbname='{nested}'")
    with pytest.raises(AppDatabaseError) as refused:
        export_day(DataHome.at(tmp_path / "home"), dsn, DAY)
    message = str(refused.value)
    assert "does not exist" in message and f"as user '{SUPERUSER}'" in message    # the user name is still shown
    assert f"{user}:{SUPERUSER}" not in message, message


def test_a_primary_subscribing_to_an_unrelated_table_still_propagates_its_deletions(logical_server, tmp_path):
    server = logical_server
    dsn, other_dsn = _app_db(server), _app_db(server)
    app, other = conninfo_to_dict(dsn)["dbname"], conninfo_to_dict(other_dsn)["dbname"]
    with psycopg.connect(other_dsn, autocommit=True) as conn:        # another service's reference table
        conn.execute("CREATE TABLE reference (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO reference VALUES (1, 'one')")
        conn.execute(f'CREATE PUBLICATION "p_{other}" FOR TABLE reference')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"s_{other}",))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _seed_day(conn)
        _rank(conn, 2)
        conn.execute("CREATE TABLE reference (id int PRIMARY KEY, label text)")
        conn.execute(f"CREATE SUBSCRIPTION \"sub_{app}\" CONNECTION '{other_dsn}' PUBLICATION \"p_{other}\" "
                     f"WITH (create_slot = false, slot_name = 's_{other}')")
        _wait_for(lambda: conn.execute("SELECT count(*) FROM reference").fetchone()[0] == 1, "copied the reference")
    try:
        home = DataHome.at(tmp_path / "home")
        export_day(home, dsn, DAY)
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1, 2]
        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM rankings WHERE ranking_id = 2")   # the app deleted a ranking
        assert export_day(home, dsn, DAY).published == "updated"
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1]
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SUBSCRIPTION "sub_{app}"')


def test_a_streaming_standby_with_wal_receiver_timeout_0_is_exported_or_told_why(primary, tmp_path, monkeypatch):
    dsn = _app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    with _standby_of(primary, "k_idle") as standby:
        standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
        with psycopg.connect(standby.dsn(password="postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_receiver_timeout = 0")
            conn.execute("SELECT pg_reload_conf()")
            _wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                      .fetchone()[0] == 1 and conn.execute("SHOW wal_receiver_timeout").fetchone()[0] == "0",
                      "streamed")
            with psycopg.connect(dsn) as primary_conn:      # a commit the standby replays, then a quiet primary
                primary_conn.execute("UPDATE users SET name = name")
            _wait_for(lambda: conn.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone()[0],
                      "replayed a commit")
            monkeypatch.setattr(export_module, "MIN_SILENCE_S", 3.0)
            _wait_for(lambda: conn.execute("SELECT clock_timestamp() - last_msg_receipt_time > interval '4 s' "
                                           "FROM pg_stat_wal_receiver WHERE status = 'streaming'").fetchone()[0],
                      "went quiet")
        home = DataHome.at(tmp_path / "home")
        try:
            published = export_day(home, standby_dsn, DAY).published
        except AppDatabaseError as exc:
            assert "wal_receiver_timeout" in str(exc), str(exc)
        else:
            assert published == "new day"


# --- the splits: the salt each published version was built under -------------------------------------------

def test_a_build_that_dies_before_the_salts_record_still_records_the_published_versions_salt(tmp_path, monkeypatch):
    def night(home: DataHome, crash: bool) -> dict:
        old = SplitConfig(salt="old-salt", heldout_fraction=0.5, min_unique_rows=0)
        new = dataclasses.replace(old, salt="new-salt")
        t1, t2 = users_by_home(new.salt, new.heldout_fraction, {"train": 2})["train"]
        rows = [pair_row(1, t1, "a prompt of T1", "c1a", "c1b", day=0)]
        write_pairs(home, rows)
        build_splits(home, old, **QUIET)
        _publish(home, V1)
        write_pairs(home, rows + [pair_row(2, t2, "a prompt of T2", "c2a", "c2b", day=1)])
        if crash:
            with monkeypatch.context() as patch:
                def died(*args, **kwargs):
                    raise RuntimeError("the build died here (killed, power lost)")
                patch.setattr(coverage, "write_version_salts", died)
                with pytest.raises(RuntimeError, match="died here"):
                    build_splits(home, new, **QUIET)
        build_splits(home, new, **QUIET)                 # the rerun (or the only run)
        return coverage.read_version_salts(home)

    clean = night(DataHome(tmp_path / "clean"), crash=False)
    assert clean == {V1: "old-salt"}
    assert night(DataHome(tmp_path / "crashed"), crash=True) == clean
