"""Hostile review (rev17c) of the rev17 fixes to the PostgreSQL app-database export.

Each test was a defect confirmed by running it, filed as a strict xfail; all four are fixed since (the
xfail markers are gone, and the tests were strengthened with the cases the fixes must also cover). Every test that needs a server starts its own throwaway PostgreSQL
(``tests.postgres_server``) and stops it at the end of the session.
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

_names = itertools.count()
_REPO = Path(__file__).resolve().parents[2]


def _app_db(server, encoding: str = "UTF8") -> str:
    """A new empty database holding the app's schema (``sql/app_db/schema.sql``); returns its DSN."""
    return create_app_database(server, f"rev17c_{os.getpid()}_{next(_names)}", encoding)


# --- 1. the fetch plan counts the server's text bytes, not the lines the export makes of them ------------

_PEAK = """
import resource, sys
from pathlib import Path
from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
export_day(DataHome.at(Path(sys.argv[2])), sys.argv[1], sys.argv[3], AppExportConfig(users_snapshot=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _export_peak(dsn: str, home: Path, day: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, dsn, str(home), day], cwd=_REPO, capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split()[-1])


def test_text_of_control_characters_does_not_multiply_the_fetch_memory(postgres_server, tmp_path):
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, "
                     "'2023-02-10 12:00', 1, 'p' || g FROM generate_series(1, 100) g")
        # 128 MiB of control characters (a paste of binary junk), each written as a 6-byte escape
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, "
                     "'2023-02-12 12:00', 1, repeat(chr(1), 32768) FROM generate_series(10001, 14096) g")
    baseline = _export_peak(dsn, tmp_path / "base", "2023-02-10")
    control = (_export_peak(dsn, tmp_path / "ctrl", "2023-02-12") - baseline) >> 20
    # about BATCH_BYTES (4 MiB) of lines a fetch, whatever the characters (measured: +33 MiB, against +20 MiB for
    # the same bytes of printable text, and +248 MiB before the fetch plan counted the escapes)
    assert control < 96, f"peak RSS grew by {control} MiB for 128 MiB of control-character prompts"


_TEXTS = ["plain", 'with "quotes" and a \\ backslash', "new\nline\ttab\r\f\b", chr(1) * 10, "\x7f\x1f\x0b",
          "caf\u00e9" * 5, "\u65e5\u672c" * 10, "\U0001F600" * 10, "\u20ac \u00e9 \x01 \" \U0001F600 \u65e5"]


@pytest.mark.parametrize("encoding", ["UTF8", "WIN1252"])
def test_the_fetch_plan_bounds_the_bytes_each_value_is_written_as(postgres_server, tmp_path, encoding):
    """The fetch plan's size of a text value is at least what its JSON literal takes in the line, whatever
    the characters (escapes, non-ASCII, a WIN1252 byte with no UTF-8), and at most a few times it."""
    from pipelines.appdb.export import WRITTEN_BYTES_PARAMS, _written_bytes

    dsn = _app_db(postgres_server, encoding)
    texts = _TEXTS if encoding == "UTF8" else [t for t in _TEXTS if t.encode("cp1252", "ignore").decode("cp1252") == t]
    with psycopg.connect(dsn) as conn:
        for i, text in enumerate(texts, 1):
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, '2023-03-01 12:00', "
                         "1, %s)", (i, text))
        if encoding != "UTF8":    # bytes WIN1252 leaves undefined: written as \\udcXX escapes
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, "
                         "'2023-03-01 12:00', 1, convert_from('\\x63616ee9812081'::bytea, 'WIN1252'))",
                         (len(texts) + 1,))
        estimate = dict(conn.execute(f"SELECT ranking_id, {_written_bytes('prompt', encoding == 'UTF8')} FROM rankings",
                                     WRITTEN_BYTES_PARAMS).fetchall())
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, "2023-03-01")
    with gzip.open(home.raw_file("2023-03-01", "rankings"), "rb") as lines:
        for line in lines:
            row = json.loads(line)
            written = len(json.dumps(row["prompt"])) - 2      # the literal, without its quotes
            assert written <= estimate[row["ranking_id"]] <= 6 * written + 6, (row, estimate[row["ranking_id"]])
            assert line.decode("utf-8", "surrogateescape").count(json.dumps(row["prompt"])) == 1


@pytest.mark.parametrize("encoding", ["UTF8", "WIN1252", "SQL_ASCII"])
def test_the_escape_counts_match_a_count_character_by_character(postgres_server, encoding):  # noqa: F811
    """The fetch plan's escape counts (regexp_replace() of runs, since December 5: translate() was 2-22x
    slower) are exactly the number of 2-byte and 6-byte escape characters, counted here one by one:
    every ASCII character alone, the bracket expression's own specials (] ^ - [ backslash), runs, mixes
    with non-ASCII text."""
    from pipelines.appdb.export import _LONG_ESCAPES, _SHORT_ESCAPES, WRITTEN_BYTES_PARAMS

    dsn = _app_db(postgres_server, encoding)
    ascii_ = [chr(c) for c in range(1, 128)]
    texts = ascii_ + ["".join(ascii_), "]^-[\\", "\x01" * 300 + "a" + "\t\n" * 50, 'x"y\\z\x7f\x1f]',
                      "[^\x01-\x1f]", "a-b^c]d[e\\f", "\r\n" * 7 + "\x0b\x0c\x08"]
    if encoding == "UTF8":
        texts += ["caf\u00e9\x01\u65e5\t\U0001F600\"", "\u00e9" * 20 + "\x02"]
    elif encoding == "WIN1252":
        texts += ["caf\u00e9\x01\u20ac\t\"", "\u00e9" * 20 + "\x02"]
    with psycopg.connect(dsn) as conn:
        for i, text in enumerate(texts, 1):
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, '2023-03-01 12:00', "
                         "1, %s)", (i, text))
        rows = conn.execute(
            "SELECT ranking_id, octet_length(prompt) - octet_length(regexp_replace(prompt, %(plan_short)s, '', 'g')), "
            "octet_length(prompt) - octet_length(regexp_replace(prompt, %(plan_long)s, '', 'g')) FROM rankings",
            WRITTEN_BYTES_PARAMS).fetchall()
    got = {ranking_id: (short, long) for ranking_id, short, long in rows}
    for i, text in enumerate(texts, 1):
        want = (sum(c in _SHORT_ESCAPES for c in text), sum(c in _LONG_ESCAPES for c in text))
        assert got[i] == want, (encoding, text, got[i], want)


# --- 2. a FIFO (or a link to one, or to /dev/zero) in the counts cache hangs the export, locks held -------

_HANG = """
import sys
from pathlib import Path
from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
report = export_day(DataHome.at(Path(sys.argv[2])), sys.argv[1], sys.argv[3],
                    AppExportConfig(lag_minutes=60, lookback_days=2))
print("exported", sorted(report.late), report.tables["rankings"].rows)
"""


def _plant(cached: Path, kind: str) -> None:
    """Put ``kind`` of bad entry at the counts cache file ``cached`` (of a day whose one raw file is rankings)."""
    cached.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(cached)
    elif kind == "link to a fifo":
        os.mkfifo(cached.with_name("elsewhere.fifo"))
        cached.symlink_to(cached.with_name("elsewhere.fifo"))
    elif kind == "link to /dev/zero":
        cached.symlink_to("/dev/zero")
    elif kind == "huge":
        cached.write_bytes(b"{" + b" " * (8 << 20) + b"}")
    elif kind == "deep":
        cached.write_bytes(b"[" * 60000)
    else:                                   # the right key for the file, counts that are not integers
        raw = cached.parents[2] / "raw" / "app_logs" / "dt=2023-03-01" / "rankings.jsonl.gz"
        info = os.lstat(raw)
        rows = {"non-integer counts": "many", "float counts": 1e6}[kind]
        cached.write_text(json.dumps({"rankings": [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns, rows,
                                                  1e6]}))


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "link to /dev/zero", "huge", "deep",
                                  "non-integer counts", "float counts"])
def test_a_fifo_in_the_counts_cache_neither_hangs_the_export_nor_holds_the_locks(postgres_server,
                                                                                tmp_path, kind):
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 12:00', 1, 'on time')")
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-04 12:00', 1, 'today')")
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, "2023-03-01", AppExportConfig(lag_minutes=60, lookback_days=2))
    with psycopg.connect(dsn) as conn:      # committed after 03-01's export: the export of 03-04 must see it
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 13:00', 1, 'late')")
    cached = home.cache / "app_export_counts" / "dt=2023-03-01.json"     # the export of 03-04 checks 03-01
    cached.parent.mkdir(parents=True, exist_ok=True)
    _plant(cached, kind)                    # planted (or a stale cache entry replaced by a FIFO / a link to one)
    export = subprocess.Popen([sys.executable, "-c", _HANG, dsn, str(home.root), "2023-03-04"], cwd=_REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = export.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        with psycopg.connect(dsn) as conn:     # what the app's migration meets meanwhile
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute("ALTER TABLE rankings ADD COLUMN extra int")
                blocked = ""
            except psycopg.errors.LockNotAvailable:
                blocked = "; an ALTER TABLE rankings waited 2 s for the export's lock and gave up"
        export.kill()
        export.communicate()
        pytest.fail(f"the export of 2023-03-04 hung on a {kind} at HOME/cache/app_export_counts/dt=2023-03-01.json"
                    + blocked)
    # the bad entry is ignored, the raw file counted again: the late row of 03-01 is found
    assert "exported ['2023-03-01'] 1" in out, (out, err[-2000:])
    assert json.loads(cached.read_text())["rankings"][4] == 1      # the cache is rewritten as the export's own (rows after ctime)


# --- 3. LOCK TABLE refuses relations a SELECT reads: app tables served as materialized views now fail -------

def test_app_tables_served_as_materialized_views_still_export(postgres_server, tmp_path):
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:   # a reporting copy: the app's tables in schema base, refreshed views in public
        conn.execute("CREATE SCHEMA base")
        for table in ("users", "images", "rankings", "downloads"):
            conn.execute(f"ALTER TABLE public.{table} SET SCHEMA base")
            conn.execute(f"CREATE MATERIALIZED VIEW public.{table} AS SELECT * FROM base.{table}")
        conn.execute("INSERT INTO base.rankings (created_at, user_id, prompt) VALUES ('2023-03-01 12:00', 1, 'p')")
        conn.execute("REFRESH MATERIALIZED VIEW public.rankings")
    report = export_day(DataHome.at(tmp_path / "home"), dsn, "2023-03-01")
    assert report.tables["rankings"].rows == 1
    # each relation read without its lock is named, and why: a rewrite of it is not guarded
    unlocked = [w for w in report.warnings if "read without a lock" in w]
    assert len(unlocked) == 4 and all("materialized view" in w and "not guarded" in w for w in unlocked), \
        report.warnings


# --- 4. LOCK TABLE needs table-level SELECT: a least-privilege role with column grants now fails ----------

def test_a_role_with_column_grants_on_the_exported_columns_still_exports(postgres_server, tmp_path):
    dsn = _app_db(postgres_server)
    role = f"exporter_{os.getpid()}_{next(_names)}"
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN password_hash text")       # the app's own column, withheld
        conn.execute("INSERT INTO users VALUES (1, '2023-03-01 10:00', 'a@example.org', 'A', 'pbkdf2$...')")
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 12:00', 1, 'p')")
        conn.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'export-pw\'')
        conn.execute(f'GRANT SELECT (user_id, created_at, email, name) ON users TO "{role}"')
        conn.execute(f'GRANT SELECT ON images, rankings, downloads TO "{role}"')
    role_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password="export-pw")
    report = export_day(DataHome.at(tmp_path / "home"), role_dsn, "2023-03-01")
    assert report.tables["users"].rows == 1 and report.tables["rankings"].rows == 1
    unlocked = [w for w in report.warnings if "read without a lock" in w]
    assert len(unlocked) == 1 and "public.users" in unlocked[0] and "column grants" in unlocked[0], report.warnings


def test_the_tables_a_role_may_lock_are_locked_before_the_snapshot(postgres_server, tmp_path):
    """With one relation refused (column grants only), the others are still locked, the transaction still has
    no snapshot when the locks are held (a row committed after them is read), and a real lock wait still
    ends in TablesLocked."""
    from pipelines.appdb.connection import connect
    from pipelines.appdb.export import TablesLocked, lock_tables

    dsn = _app_db(postgres_server)
    role = f"exporter_{os.getpid()}_{next(_names)}"
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN password_hash text")
        conn.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'export-pw\'')
        conn.execute(f'GRANT SELECT (user_id, created_at, email, name) ON users TO "{role}"')
        conn.execute(f'GRANT SELECT ON images, rankings, downloads TO "{role}"')
    role_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password="export-pw")
    export = connect(role_dsn)
    try:
        warnings = lock_tables(export, "the test database")
        assert len(warnings) == 1 and "public.users" in warnings[0]
        pid = export.info.backend_pid
        with psycopg.connect(dsn, autocommit=True) as other:
            held = {r for (r,) in other.execute("SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = "
                                                "l.relation WHERE l.pid = %s AND l.mode = 'AccessShareLock' "
                                                "AND l.granted", (pid,))}
            assert {"images", "rankings", "downloads"} <= held and "users" not in held, held
            other.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 12:00', 1, 'p')")
        # the export's snapshot is taken by its first read, after the locks: the row committed since is seen
        assert export.execute("SELECT count(*) FROM rankings").fetchone()[0] == 1
        export.rollback()
        with psycopg.connect(dsn) as holder:
            holder.execute("LOCK TABLE downloads IN ACCESS EXCLUSIVE MODE")
            export.execute("SET lock_timeout = '300ms'")
            export.commit()
            with pytest.raises(TablesLocked, match="could not be locked"):
                lock_tables(export, "the test database")
    finally:
        export.close()


# --- suspicion: the catch-up goes back a year before the app existed because of one wrong-clock row -------

def _raw_day(home: DataHome, day: str, rankings: int = 0) -> None:
    """A raw day folder; with ``rankings`` lines in its rankings file when given."""
    folder = home.raw_day(day)
    folder.mkdir(parents=True)
    if rankings:
        with gzip.open(folder / "rankings.jsonl.gz", "wb") as out:
            out.write(b"".join(b'{"ranking_id": %d, "user_id": 1}\n' % i for i in range(1, rankings + 1)))


def test_a_stray_day_before_the_app_existed_does_not_start_the_catch_up(tmp_path):
    import datetime as dt

    from dagster_project import automation

    home = DataHome.at(tmp_path / "home")
    _raw_day(home, "2022-01-15", rankings=1)          # one ranking dated by a device's wrong clock
    for day in range(1, 26):
        if day != 10:                                  # the export of the 10th failed
            _raw_day(home, f"2023-02-{day:02d}")
    assert automation.missing_days(home, "2023-02-26") == ["2023-02-10"]
    # a lone first day with real activity (launch, then an outage of the exports) still starts the catch-up
    home = DataHome.at(tmp_path / "launch")
    _raw_day(home, "2022-12-01", rankings=automation.STRAY_DAY_ROWS)
    _raw_day(home, "2023-02-25")
    missed = automation.missing_days(home, "2023-02-26")
    assert missed[0] == "2022-12-02" and missed[-1] == "2023-02-24" and len(missed) == (
        dt.date(2023, 2, 24) - dt.date(2022, 12, 2)).days + 1
    # a lone first day of empty files (a quiet night the schedule exported, then an outage) too
    home = DataHome.at(tmp_path / "outage")
    _raw_day(home, "2022-12-01")
    for table in ("users", "images", "rankings", "downloads"):
        with gzip.open(home.raw_day("2022-12-01") / f"{table}.jsonl.gz", "wb"):
            pass
    assert automation.missing_days(home, "2023-02-26")[0] == "2022-12-02"
    # a quiet first day close to the next one is part of the history
    home = DataHome.at(tmp_path / "quiet")
    _raw_day(home, "2023-01-20", rankings=1)
    _raw_day(home, "2023-02-20")
    assert automation.missing_days(home, "2023-02-26")[0] == "2023-01-21"
    # a lone quiet day with no raw day after it, close to the night's window, is history too
    home = DataHome.at(tmp_path / "alone")
    _raw_day(home, "2023-02-01", rankings=1)
    assert automation.missing_days(home, "2023-02-26")[0] == "2023-02-02"
