"""The app-database export's session, pinned as pg_dump pins its own (against a real throwaway PostgreSQL
server): the role's and database's defaults change nothing that is read, a row-level security policy
fails the export instead of hiding rows, the transaction is over before the blobs copy, and a password
nested in the DSN's dbname is never shown."""
from __future__ import annotations

import os

import psycopg
import pytest
from psycopg import sql

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb.connection import APPLICATION_NAME, AppDatabaseError, connect, server_name
from pipelines.appdb.export import export_day
from tests.postgres_server import postgres_server  # noqa: F401 - fixture
from tests.unit.test_app_export import DAYS, app_db, simulated_template  # noqa: F401 - fixtures
from tests.unit.test_hostile_dec4e_appdb import _day_rows, _dbname, _lines, _reader


def test_a_row_level_security_policy_fails_the_export_naming_the_fix(app_db, postgres_server, tmp_path):
    role, reader_dsn = _reader(postgres_server, app_db)
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE rankings ENABLE ROW LEVEL SECURITY")
        conn.execute(sql.SQL("CREATE POLICY some_rows ON rankings FOR SELECT TO {} USING (ranking_id % 2 = 0)")
                     .format(sql.Identifier(role)))
    home = DataHome.at(tmp_path / "home")
    with pytest.raises(AppDatabaseError) as error:
        export_day(home, reader_dsn, DAYS[0])
    message = str(error.value)
    assert "row-level security" in message and "rankings" in message and "BYPASSRLS" in message
    assert "reader-pw" not in message and not home.raw_day(DAYS[0]).exists()   # nothing published
    with psycopg.connect(postgres_server.dsn(password="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)))    # the fix it names
    report = export_day(home, reader_dsn, DAYS[0])
    assert report.tables["rankings"].rows == _day_rows(app_db, "rankings") == len(_lines(home, DAYS[0], "rankings"))


def test_the_role_and_database_defaults_do_not_reach_the_export_session(app_db, postgres_server, tmp_path):
    role, reader_dsn = _reader(postgres_server, app_db)
    with psycopg.connect(postgres_server.dsn(password="postgres"), autocommit=True) as conn:
        for setting, value in [("DateStyle", "German"), ("IntervalStyle", "sql_standard"),
                               ("search_path", "elsewhere"), ("statement_timeout", "1234"),
                               ("idle_in_transaction_session_timeout", "1000"), ("lock_timeout", "10"),
                               ("row_security", "on")]:
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(setting),
                                                                    sql.Literal(value)))
    conn = connect(reader_dsn)
    try:
        shown = {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
                 for name in ("DateStyle", "IntervalStyle", "search_path", "statement_timeout",
                              "idle_in_transaction_session_timeout", "lock_timeout", "row_security", "TimeZone")}
    finally:
        conn.close()
    assert shown == {"DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "search_path": "pg_catalog, public",
                     "statement_timeout": "0", "idle_in_transaction_session_timeout": "0", "lock_timeout": "10ms",
                     "row_security": "off", "TimeZone": "UTC"}
    report = export_day(DataHome.at(tmp_path / "home"), reader_dsn, DAYS[0])   # the database's clock is read
    assert report.published == "new day" and report.tables["rankings"].rows == _day_rows(app_db, "rankings")


@pytest.mark.parametrize(("configured", "shown"), [(None, "5min"), ("1h", "5min"), ("0", "5min"), ("2s", "2s")])
def test_the_export_waits_for_a_lock_at_most_five_minutes_or_the_databases_shorter_limit(
        app_db, postgres_server, configured, shown):
    """A lock wait is bounded by 5 minutes, or by the lock_timeout the role or database sets where that is
    shorter: a DBA's stricter limit is kept (the export lifted a database's 300 ms to 5 minutes)."""
    role, reader_dsn = _reader(postgres_server, app_db)
    if configured is not None:
        with psycopg.connect(postgres_server.dsn(password="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} SET lock_timeout = {}").format(sql.Identifier(role),
                                                                              sql.Literal(configured)))
    conn = connect(reader_dsn)
    try:
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == shown
    finally:
        conn.close()


def test_no_transaction_or_session_is_held_while_the_blobs_copy(app_db, postgres_server, tmp_path, monkeypatch):
    """The export's snapshot holds back the app database's vacuum: it ends once the tables and the uids
    are read, before the first blob is copied (uids read to a file, not streamed during the copy)."""
    with psycopg.connect(app_db) as conn:
        uids = [u for (u,) in conn.execute("SELECT image_uid FROM images WHERE created_at >= %s AND created_at < %s",
                                           (f"{DAYS[0]} 00:00", f"{DAYS[1]} 00:00"))]
    assert len(uids) > blobs.BATCH // 8
    store = tmp_path / "store"
    store.mkdir()
    for uid in uids:
        (store / f"{uid}.png").write_bytes(b"\x89PNG not decoded here")
    real_copy, seen = blobs._copy_one, []

    def watched(*args):
        with psycopg.connect(postgres_server.dsn(password="postgres")) as watcher:
            seen.append(watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                                        "application_name = %s", (_dbname(app_db), APPLICATION_NAME)).fetchone()[0])
        return real_copy(*args)

    monkeypatch.setattr(blobs, "_copy_one", watched)
    home = DataHome.at(tmp_path / "home")
    report = export_day(home, app_db, DAYS[0], image_store=str(store))
    assert report.blobs["copied"] == len(uids) == len(seen) and set(seen) == {0}
    assert sorted(p.name for p in home.raw_day(DAYS[0]).iterdir()) == sorted(
        f"{t}.jsonl.gz" for t in ("users", "images", "rankings", "downloads"))   # the uid file left nothing
    assert sorted(p.name for p in home.raw_images.iterdir()) == sorted(f"{uid}.png" for uid in uids)


SECRET = f"nested-secret-{os.getpid()}"


@pytest.mark.parametrize("dbname", [
    f"host=db.internal dbname=app user=export password={SECRET}",                   # libpq's expand_dbname form
    f"host=db.internal dbname=app password='{SECRET}' sslpassword='{SECRET}-key'",
    f"postgresql://export:{SECRET}@db.internal/app",
    f"postgresql://export:{SECRET.replace('-', '%2D')}@db.internal/app",             # percent-encoded: all hidden
    f"postgresql://export@db.internal/app?password={SECRET}",
    f"dbname='host=db.internal password={SECRET}'",                                   # nested twice
    f"host=db.internal password='{SECRET[:5]}\\'{SECRET[5:]}'",                       # escaped: all hidden
], ids=["conninfo", "quoted-and-sslpassword", "url", "url-percent-encoded", "url-query", "nested-twice", "escaped"])
def test_a_secret_nested_in_the_dbname_is_never_shown(dbname, tmp_path):
    escaped = dbname.replace("\\", "\\\\").replace("'", "\\'")
    dsn = f"host=127.0.0.1 port=1 connect_timeout=2 user=export dbname='{escaped}'"
    name = server_name(dsn)
    assert SECRET[6:] not in str(name) and SECRET[6:] not in repr(name.as_metadata())
    with pytest.raises(AppDatabaseError) as error:
        export_day(DataHome.at(tmp_path / "home"), dsn, DAYS[0])
    message = str(error.value)
    assert "'127.0.0.1'" in message and "connection string" in message
    assert SECRET[6:] not in message and SECRET.replace("-", "%2D")[6:] not in message
