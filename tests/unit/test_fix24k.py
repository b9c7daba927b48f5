"""Fix of review rev24k (``tests/unit/test_hostile_rev24k.py``): cases its xfails do not cover. The app database:
a hot standby's upstream is asked whether it is the primary (a healthy cascading standby is still exported; one
whose upstream cannot be asked and that replayed no commit is refused naming ``app_export.primary_host``, and
exported once that names its upstream); a running logical subscriber of the app tables is a replica; a raw file cut
short keeps its complete lines, a partly written last line dropped, and one with no readable line is not compared;
a cut password start after ``:`` or ``password=`` is hidden even where it is a connection name, names elsewhere
still whole; the wal_receiver_timeout = 0 refusal is one line. The splits: a salts record that cannot be written
stops the build before ``split_pairs`` is rewritten.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import zlib

import psycopg
import pytest
from appdb_fixtures import app_db as _app_db
from psycopg.conninfo import conninfo_to_dict
from splits_fixtures import pair_row, users_by_home, write_pairs

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.connection import redact
from pipelines.appdb.export import (
    AppExportConfig,
    ReplicaBehind,
    _check_receiver,
    _StandbyState,
    export_day,
    vanishing_rows,
)
from pipelines.splits import coverage
from pipelines.splits.assign import SplitConfig, build_splits
from tests.unit.test_fix24f import QUIET, V1, _publish
from tests.unit.test_hostile_rev24g import (  # noqa: F401 - fixtures
    DAY,
    TABLES,
    _lines,
    _seed_day,
    _standby_of,
    _wait_for,
    logical_server,
    primary,
)

# --- a hot standby's upstream ---------------------------------------------------------------------------------

def test_a_cascading_standby_of_a_streaming_standby_is_exported_whole(primary, tmp_path):
    dsn = _app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    from_primary = DataHome.at(tmp_path / "primary")
    export_day(from_primary, dsn, DAY)
    with _standby_of(primary, "f_upstream") as upstream, _standby_of(primary, "f_cascade", upstream) as cascade:
        cascade_dsn = cascade.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")
        with psycopg.connect(dsn) as conn:
            conn.execute("UPDATE users SET name = name")
        with psycopg.connect(cascade.dsn(password="postgres"), autocommit=True) as conn:
            _wait_for(lambda: conn.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone()[0]
                      and conn.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                      .fetchone()[0] == 1, "replayed a commit")
        home = DataHome.at(tmp_path / "cascade")
        assert export_day(home, cascade_dsn, DAY).published == "new day"
    for table in TABLES:
        assert home.raw_file(DAY, table).read_bytes() == from_primary.raw_file(DAY, table).read_bytes()


def test_a_quiet_standby_whose_upstream_cannot_be_asked_is_exported_once_primary_host_names_it(primary, tmp_path,
                                                                                                 monkeypatch):
    dsn = _app_db(primary)
    with psycopg.connect(dsn) as conn:
        _seed_day(conn)
    with _standby_of(primary, "f_quiet") as standby:
        standby_dsn = standby.dsn(conninfo_to_dict(dsn)["dbname"], password="postgres")

        def streaming() -> bool:
            with psycopg.connect(standby_dsn) as conn:
                return conn.execute("SELECT status = 'streaming' AND flushed_lsn <= pg_last_wal_replay_lsn() "
                                    "AND last_msg_send_time IS NOT NULL AND pg_last_xact_replay_timestamp() IS NULL "
                                    "FROM pg_stat_wal_receiver").fetchone()[0]
        _wait_for(streaming, "streamed")
        # the export's role may not connect to the upstream (here: a port nothing listens on)
        monkeypatch.setattr(export_module, "_upstream_dsn",
                            lambda dsn, state: f"host={primary.socket_dir} port=1 user=postgres password=postgres")
        home = DataHome.at(tmp_path / "home")
        with pytest.raises(ReplicaBehind) as refused:
            export_day(home, standby_dsn, DAY)
        message = str(refused.value)
        assert "app_export.primary_host" in message and "\n" not in message and "password=postgres" not in message
        assert not home.raw_day(DAY).exists()
        named = AppExportConfig(primary_host=f"elsewhere:5432, {primary.socket_dir}:{primary.port}")
        assert export_day(home, standby_dsn, DAY, named).published == "new day"


def _state(**changes) -> _StandbyState:
    base = _StandbyState(standby=True, received="0/3000000", replayed="0/3000000", behind=0, caught_up=None,
                         paused=False, replayed_at=None, receiver=True, receiver_status="streaming",
                         flushed="0/3000000", latest_end="0/3000000", sent_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                         silent_s=100.0, replayed_all=True, receiver_timeout_ms=0, subscriptions=[])
    return dataclasses.replace(base, **changes)


def test_a_silent_receiver_with_wal_receiver_timeout_0_is_refused_naming_it_in_one_line():
    with pytest.raises(ReplicaBehind) as refused:
        _check_receiver(_state(), DAY, "server X")
    message = str(refused.value)
    assert "wal_receiver_timeout = 0" in message and f"day {DAY}" in message and "\n" not in message
    with pytest.raises(ReplicaBehind) as refused:         # a timeout set: the message of before
        _check_receiver(_state(receiver_timeout_ms=30_000), DAY, "server X")
    assert "wal_receiver_timeout" not in str(refused.value)


# --- a logical subscriber -----------------------------------------------------------------------------------

def test_a_running_subscriber_of_the_app_tables_is_a_replica(logical_server, tmp_path):
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
                  and conn.execute("SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel").fetchone()[0]
                  and conn.execute("SELECT count(*) FROM pg_stat_subscription WHERE relid IS NULL "
                                   "AND pid IS NOT NULL").fetchone()[0] == 1, "copied the publisher's rows")
    try:
        home = DataHome.at(tmp_path / "home")
        assert export_day(home, replica_dsn, DAY).published == "new day"    # a running subscriber: exported
        with psycopg.connect(replica_dsn) as conn:
            conn.execute("DELETE FROM rankings")                            # a row the replica lacks
        report = export_day(home, replica_dsn, DAY)      # rev29c: kept in the day (refused whole before)
        assert report.kept == {"rankings": {"rows": 1, "first_ids": ["1"]}}
        assert any(f"logical-replication subscriber (subscriptions sub_{subscriber})" in w and "kept" in w
                   for w in report.warnings)
        assert [line["ranking_id"] for line in _lines(home, DAY, "rankings")] == [1]
    finally:
        with psycopg.connect(replica_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER SUBSCRIPTION "sub_{subscriber}" DISABLE')
            conn.execute(f'ALTER SUBSCRIPTION "sub_{subscriber}" SET (slot_name = NONE)')
            conn.execute(f'DROP SUBSCRIPTION "sub_{subscriber}"')


# --- a raw file cut short -----------------------------------------------------------------------------------

def _lines_gz(ids) -> bytes:
    return gzip.compress("".join(f'{{"ranking_id": {i}, "x": "{"y" * 50}"}}\n' for i in ids).encode())


def test_a_raw_file_cut_short_counts_its_complete_lines_only(tmp_path):
    new = tmp_path / "new.jsonl.gz"
    new.write_bytes(_lines_gz([1]))
    whole = _lines_gz(range(1, 200))
    old = tmp_path / "old.jsonl.gz"
    old.write_bytes(whole[:-8])                               # the trailer lost: every row read
    count, first = vanishing_rows(old, new)
    assert count == 198 and first[0] == "2"
    raw = gzip.decompress(whole)
    cut_inside = _zlib_cut(raw, raw.index(b'{"ranking_id": 150,') + 30)   # the deflate stream ends inside row 150
    old.write_bytes(cut_inside)
    count, _ = vanishing_rows(old, new)
    assert count == 148                                       # rows 2..149: the partial line of row 150 not counted
    old.write_bytes(whole[:5])                                # no readable line: unreadable, not compared
    with pytest.raises((EOFError, OSError)):
        vanishing_rows(old, new)


def _zlib_cut(raw: bytes, at: int) -> bytes:
    """A gzip member whose deflate data ends (flushed, never finished) after ``raw[:at]``: a copy cut short."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(raw[:at]) + compressor.flush(zlib.Z_SYNC_FLUSH)


# --- the redaction ---------------------------------------------------------------------------------------------

def test_a_cut_password_start_after_a_colon_or_password_key_is_hidden_even_as_a_name():
    dsn = "host=db port=5432 dbname=app user=reader password=readerhorsebattery"
    assert redact('database "postgresql://x:reader" does not exist', dsn) == \
        'database "postgresql://x:***" does not exist'
    assert redact('database "host=h password=reader" does not exist', dsn) == \
        'database "host=h password=***" does not exist'
    assert redact("database \"host=h password='reader\" does not exist", dsn) == \
        "database \"host=h password=***\" does not exist"
    # the user name elsewhere, and at the end of a quoted name after anything else, is shown whole
    assert redact('role "reader" does not exist', dsn) == 'role "reader" does not exist'
    assert redact('database "host=h user=reader" does not exist', dsn) == 'database "host=h user=reader" does not exist'
    # a whole password equal to a name cannot be told from it (rev24b: shown, the name shows it anyway)
    same = "host=db port=5432 dbname=app user=reader password=reader"
    assert redact('failed: bad password=reader for "reader"', same) == 'failed: bad password=reader for "reader"'


# --- the splits' salts record ---------------------------------------------------------------------------------

def test_a_salts_record_that_cannot_be_written_stops_the_build_before_split_pairs_is_rewritten(tmp_path, monkeypatch):
    home = DataHome(tmp_path / "home")
    old = SplitConfig(salt="old-salt", heldout_fraction=0.5, min_unique_rows=0)
    new = dataclasses.replace(old, salt="new-salt")
    t1, t2 = users_by_home(new.salt, new.heldout_fraction, {"train": 2})["train"]
    rows = [pair_row(1, t1, "a prompt of T1", "c1a", "c1b", day=0)]
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    _publish(home, V1)
    write_pairs(home, rows + [pair_row(2, t2, "a prompt of T2", "c2a", "c2b", day=1)])
    before = {name: home.table_file(name).read_bytes() for name in ("split_pairs", "split_ledger")}
    with monkeypatch.context() as patch:
        patch.setattr(coverage, "write_version_salts",
                      lambda home, salts: "the record of the salts x was not written ([Errno 28] No space left)")
        with pytest.raises(OSError, match="split_pairs and the ledger were not rewritten") as stopped:
            build_splits(home, new, **QUIET)
    assert "\n" not in str(stopped.value)
    assert {name: home.table_file(name).read_bytes() for name in before} == before
    build_splits(home, new, **QUIET)
    assert coverage.read_version_salts(home) == {V1: "old-salt"}
