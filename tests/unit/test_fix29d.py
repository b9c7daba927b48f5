"""Fix of review rev29d (``tests/unit/test_hostile_rev29d.py``), the app-database export: cases its xfails do not
cover. An old raw line is keyed by its parsed id in any JSON spelling (a line whose id cannot be read is kept as it
was, counted apart, never a second version of a row); a row the app still holds outside the day (moved to another
day, undated, left out by ``users_snapshot``) is never kept, from a replica or with ``keep_exported_rows``, while a
deleted one still is; the late-row check marks a day past the lookback holding a row that left it, with a warning
of its own, and still remembers a deletion alone. Real PostgreSQL (``tests/postgres_server.py``).
"""
from __future__ import annotations

import gzip
import json
import os

import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.export import (
    UNREADABLE,
    AppExportConfig,
    _piece_key,
    _written_key,
    export_day,
    late_days,
    raw_day_state,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

DAY = "2023-03-01"


def _raw_lines(home: DataHome, day: str, table: str) -> list[bytes]:
    return gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()


def _ids(home: DataHome, day: str) -> list:
    return [json.loads(line)["ranking_id"] for line in _raw_lines(home, day, "rankings")]


def _rank(conn, day: str, prompt: str, ranking_id: int) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, 1, %s)",
                 (ranking_id, f"{day} 12:00", prompt))


def _replica(monkeypatch) -> None:
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")


def _rewrite(home: DataHome, day: str, table: str, lines: list[bytes]) -> None:
    """The day's file as another exporter writes it (replaced in one step)."""
    path = home.raw_file(day, table)
    staged = path.with_name(".other.tmp")
    staged.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    os.replace(staged, path)


# --- 1. reading a line's id -------------------------------------------------------------------------------

def test_a_lines_id_is_read_in_any_json_spelling_and_bounded():
    key = "ranking_id"
    assert _piece_key(b'{"ranking_id": 7, "prompt": "a"}\n', key) == 7              # the export's own
    assert _piece_key(b'{"ranking_id":7,"prompt":"a"}\n', key) == 7                  # compact
    assert _piece_key(b'{ "prompt" : "a\\"}", "user_id": 1, "ranking_id" : 7 }\n', key) == 7   # not first
    assert _piece_key(b'{"user_id": 1, "ranking_id": 7.0}\n', key) == 7              # as the ingest reads 7.0
    assert _piece_key(b'{"ranking_id": null, "prompt": "a"}\n', key) is None         # a NULL id
    assert _piece_key(b'{"ranking_id": 7, "prompt": "\xff"}\n', key) == 7            # bytes not UTF-8
    assert _piece_key(b'{"prompt": "\xff", "ranking_id": 7}\n', key) == 7
    assert _piece_key(b'{"prompt": "a", "ranking_id": 7, "gs": NaN}\n', key) == 7    # the ingest keys it too
    # fix36c: a first piece cut after its id is read so far only by _written_key (the late-row check's reading); to
    # _piece_key it is a file's last line, not JSON: no key, as the ingest reads it
    assert _written_key(b'{"prompt": "' + b"x" * 100 + b'", "ranking_id": 7, "p": "cut', key) == 7   # cut after it
    assert _piece_key(b'{"prompt": "' + b"x" * 100 + b'", "ranking_id": 7, "p": "cut', key) is UNREADABLE
    for unreadable in (b"not json\n", b'["ranking_id", 7]\n', b'{"ranking_id": "7"}\n', b'{"ranking_id": true}\n',
                       b'{"ranking_id": 7.5}\n', b'{"prompt": "a"}\n', b'{"ranking_id": 7, "ranking_id": 8}\n',
                       b'{"prompt": "' + b"x" * 100 + b'", "ranking_id', b"\n", b'{"ranking_id": 1e400}\n'):
        assert _piece_key(unreadable, key) is UNREADABLE, unreadable
    assert _piece_key(b'{"ranking_id": 7, "ranking_id": 7}\n', key) == 7            # the same value twice
    assert _piece_key(b'{"user_id": 1, "ranking_id": 7}\n', key) == 7                # never another *_id first


def test_the_counts_cache_digest_reads_a_compact_day_as_the_export_does(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, "a", 1)
        _rank(conn, DAY, "b", 2)
    export_day(home, dsn, DAY, now=NOW)
    before = raw_day_state(home, DAY)["rankings"]
    _rewrite(home, DAY, "rankings", [json.dumps(json.loads(line), separators=(",", ":")).encode()
                                     for line in _raw_lines(home, DAY, "rankings")])
    after = raw_day_state(home, DAY)["rankings"]
    assert (after.rows, after.top, after.digest) == (before.rows, before.top, before.digest)


# --- 2. what a replica's re-export keeps ---------------------------------------------------------------------

def test_unreadable_lines_are_kept_apart_and_deleted_rows_in_another_spelling_are_kept_once(postgres_server,  # noqa: F811
                                                                                             tmp_path, monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        for i in (1, 2, 3):
            _rank(conn, DAY, f"r{i}", i)
    export_day(home, dsn, DAY, now=NOW)
    compact = [json.dumps(json.loads(line), separators=(",", ":")).encode() for line in _raw_lines(home, DAY, "rankings")]
    _rewrite(home, DAY, "rankings", compact + [b"garbage from the other exporter", b'{"ranking_id": "x"}'])
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 2")     # deleted: kept from a replica
        _rank(conn, DAY, "late", 4)
    _replica(monkeypatch)
    report = export_day(home, dsn, DAY, now=NOW)
    lines = _raw_lines(home, DAY, "rankings")
    assert [_piece_key(line + b"\n", "ranking_id") for line in lines] == [1, 2, 3, 4, UNREADABLE, UNREADABLE]
    assert lines[1] == compact[1] and lines[4] == b"garbage from the other exporter"   # kept as they were
    assert report.kept == {"rankings": {"rows": 1, "first_ids": ["2"], "unreadable": 2}}
    assert report.tables["rankings"].rows == 6
    warning = [w for w in report.warnings if w.startswith(f"day {DAY}:")]
    assert len(warning) == 1 and "1 row(s) its raw files held" in warning[0] and "in no table of the app" in warning[0]
    assert "2 line(s) of its raw files have no id the export can read" in warning[0] and "ranking_id: 2 in rankings" \
        in warning[0]
    before = home.raw_file(DAY, "rankings").read_bytes()
    assert export_day(home, dsn, DAY, now=NOW).published == "unchanged"           # the same bytes the next night
    assert home.raw_file(DAY, "rankings").read_bytes() == before


def test_rows_the_app_holds_undated_or_elsewhere_leave_the_day_a_deleted_one_stays(postgres_server, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN created_at DROP NOT NULL")
        for i in (1, 2, 3, 4):
            _rank(conn, DAY, f"r{i}", i)
    export_day(home, dsn, DAY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = NULL WHERE ranking_id = 1")              # undated now
        conn.execute("UPDATE rankings SET created_at = '2023-02-10 08:00' WHERE ranking_id = 2")  # an earlier day
        conn.execute("DELETE FROM rankings WHERE ranking_id = 3")
    report = export_day(home, dsn, DAY, AppExportConfig(keep_exported_rows=True), now=NOW)   # from the primary
    assert _ids(home, DAY) == [3, 4]
    assert report.kept == {"rankings": {"rows": 1, "first_ids": ["3"]}}
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-05 08:00' WHERE ranking_id = 4")
    _replica(monkeypatch)
    report = export_day(home, dsn, DAY, now=NOW)                                              # from a replica
    assert _ids(home, DAY) == [3]
    assert report.kept == {"rankings": {"rows": 1, "first_ids": ["3"]}}


def test_an_account_created_after_the_day_leaves_its_users_snapshot_a_deleted_one_stays(postgres_server,  # noqa: F811
                                                                                         tmp_path, monkeypatch):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, '2023-02-01 01:00', 'a@example.com', 'a'), "
                     "(2, '2023-02-02 01:00', 'b@example.com', 'b'), (3, '2023-03-01 01:00', 'c@example.com', 'c')")
    export_day(home, dsn, DAY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE users SET created_at = '2023-03-04 01:00' WHERE user_id = 1")   # after the day's end
        conn.execute("DELETE FROM users WHERE user_id = 2")
    _replica(monkeypatch)
    report = export_day(home, dsn, DAY, now=NOW)
    assert [json.loads(line)["user_id"] for line in _raw_lines(home, DAY, "users")] == [2, 3]
    assert report.kept == {"users": {"rows": 1, "first_ids": ["2"]}}


# --- 3. the late-row check and rows that left a day --------------------------------------------------------

def _history(dsn: str, home: DataHome) -> None:
    with psycopg.connect(dsn) as conn:
        for d in range(1, 6):
            _rank(conn, f"2023-03-{d:02d}", "on time", d)
    for d in range(1, 4):
        export_day(home, dsn, f"2023-03-{d:02d}", NIGHTLY, now=NOW)


def test_a_row_that_left_a_day_past_the_lookback_is_named_apart_and_its_day_re_exported(postgres_server,  # noqa: F811
                                                                                         tmp_path):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    _history(dsn, home)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN created_at DROP NOT NULL")
        conn.execute("UPDATE rankings SET created_at = NULL WHERE ranking_id = 1")     # undated: still in the app
    report = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)                   # checks 03-01
    assert report.late == {"2023-03-01": {"rankings": {"database": [0, None], "raw": [1, 1], "missing": 0,
                                                       "first_ids": [], "left": 1, "left_ids": ["1"]}}}
    assert not [w for w in report.warnings if "are in no raw day yet" in w]              # no late row
    left = [w for w in report.warnings if "left their day" in w]
    assert len(left) == 1 and "2023-03-01: rankings 1 (ids 1)" in left[0] and "--from 2023-03-01" in left[0]
    assert late_days(home) == ["2023-03-01"]
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)                             # the schedule's re-export
    assert _ids(home, "2023-03-01") == [] and late_days(home) == []
    report = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)
    assert report.late == {} and not [w for w in report.warnings if "left their day" in w]


def test_a_deletion_alone_is_still_remembered_not_re_exported(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    _history(dsn, home)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE ranking_id = 1")
    report = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)
    assert report.late == {} and late_days(home) == []
    assert _ids(home, "2023-03-01") == [1]                     # the raw zone keeps what was exported
    assert raw_day_state(home, "2023-03-01")["rankings"].checked == (0, 0)


def test_an_account_moved_out_of_an_old_users_snapshot_marks_that_day(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, '2023-03-01 01:00', 'a@x', 'a'), (2, '2023-03-01 02:00', 'b@x', 'b')")
    _history(dsn, home)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE users SET created_at = '2023-03-05 01:00' WHERE user_id = 2")
    report = export_day(home, dsn, "2023-03-05", NIGHTLY, now=NOW)        # checks 03-01 and 03-02
    assert sorted(report.late) == ["2023-03-01", "2023-03-02"]
    assert all(tables["users"]["left_ids"] == ["2"] for tables in report.late.values())
    for day in late_days(home):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    for day in ("2023-03-01", "2023-03-02"):
        assert [json.loads(line)["user_id"] for line in _raw_lines(home, day, "users")] == [1]
    assert late_days(home) == []
