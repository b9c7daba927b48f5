"""Fix of review rev29i (found on reading fix29h, before it shipped): a ranged ``pickapic build --from-app-db``
re-exports a raw day the app database holds no row on (README 1a, account erasure) only when the app export itself
wrote that day's files and they are unchanged since (its record, ``HOME/cache/app_export_written/dt=DAY.json``).
A day the raw zone got another way (the simulator, ``pickapic demo``, another exporter, history imported by hand),
one edited since, or one whose record is gone or not a regular file, is left byte for byte, named in a warning.
Real PostgreSQL (``tests/postgres_server.py``).
"""
from __future__ import annotations

import gzip
import json
import os

import psycopg
import pytest
from appdb_fixtures import NOW, app_db

from dagster_project.build import BuildError, select_app_db_days
from formats.home import DataHome
from formats.settings import load
from pipelines.appdb.export import WRITTEN_RECORDS, export_day, written_by_export
from simulator.export import write_jsonl_gz
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

LEFT = "are left as they are: their files were not written by the app export"
ERASED = "hold no row the app database has now: re-exported"


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, %s, 'p')",
                 (ranking_id, f"{day} 12:00", user_id))


def _day_bytes(home: DataHome, day: str) -> dict[str, bytes]:
    folder = home.raw_day(day)
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _record(home: DataHome, day: str):
    return home.cache / WRITTEN_RECORDS / f"dt={day}.json"


def _exported_then_erased(server, tmp_path, monkeypatch) -> tuple[str, DataHome]:
    """2023-03-01 exported from the app (ranking 1), then the account erased there; 2023-03-02 holds ranking 2."""
    dsn, home = app_db(server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", 1, user_id=7)
        _rank(conn, "2023-03-02", 2)
    export_day(home, dsn, "2023-03-01", now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE user_id = 7")
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    return dsn, home


def test_a_raw_day_the_export_did_not_write_is_left_byte_for_byte(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-02", 2)
    home.raw_day("2023-03-01").mkdir(parents=True)     # the simulator's (or an import's) day: the app never had it
    write_jsonl_gz(home.raw_file("2023-03-01", "rankings"),
                   ['{"ranking_id": 99, "created_at": "2023-03-01T10:00:00", "user_id": 5, "prompt": "x"}'])
    before = _day_bytes(home, "2023-03-01")
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    warnings: list[str] = []
    days = select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append)
    assert days == ["2023-03-02"]                     # was both: 2023-03-01 emptied, ranking 99 lost
    assert any(LEFT in w and "2023-03-01" in w and "by hand" in w for w in warnings)
    assert not any(ERASED in w for w in warnings)
    for day in days:
        export_day(home, dsn, day, now=NOW)
    assert _day_bytes(home, "2023-03-01") == before
    # only such days in the range: the build says there is nothing to export, the warning names the day
    warnings.clear()
    with pytest.raises(BuildError, match="no day"):
        select_app_db_days(load(home.root), "2023-03-01", "2023-03-01", warnings.append)
    assert any(LEFT in w and "2023-03-01" in w for w in warnings)


def test_a_day_the_export_wrote_is_erased(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = _exported_then_erased(postgres_server, tmp_path, monkeypatch)
    assert _record(home, "2023-03-01").is_file() and written_by_export(home, "2023-03-01")
    warnings: list[str] = []
    days = select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append)
    assert days == ["2023-03-01", "2023-03-02"]
    assert any(ERASED in w for w in warnings) and not any(LEFT in w for w in warnings)
    for day in days:
        export_day(home, dsn, day, now=NOW)
    assert gzip.decompress(home.raw_file("2023-03-01", "rankings").read_bytes()) == b""
    assert written_by_export(home, "2023-03-01")      # the re-export's record: the day is the export's still


def test_a_day_edited_by_hand_after_its_export_is_left(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home = _exported_then_erased(postgres_server, tmp_path, monkeypatch)
    path = home.raw_file("2023-03-01", "rankings")
    write_jsonl_gz(path, ['{"ranking_id": 50, "created_at": "2023-03-01T10:00:00", "user_id": 3, "prompt": "y"}'])
    before = _day_bytes(home, "2023-03-01")
    warnings: list[str] = []
    assert select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append) == ["2023-03-02"]
    assert any(LEFT in w and "2023-03-01" in w for w in warnings)
    export_day(home, dsn, "2023-03-02", now=NOW)
    assert _day_bytes(home, "2023-03-01") == before
    # rewritten in place with its size and mtime put back (the same inode): its bytes differ, so it is left
    dsn, home = _exported_then_erased(postgres_server, tmp_path / "again", monkeypatch)
    path = home.raw_file("2023-03-01", "rankings")
    info, data = os.stat(path), path.read_bytes()
    with open(path, "r+b") as handle:
        handle.write(bytes([data[0] ^ 1]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns, os.stat(path).st_ino) == \
        (info.st_size, info.st_mtime_ns, info.st_ino)
    assert not written_by_export(home, "2023-03-01")
    # a table file the export's record does not name, added by hand: left too
    dsn, home = _exported_then_erased(postgres_server, tmp_path / "third", monkeypatch)
    record = json.loads(_record(home, "2023-03-01").read_bytes())
    del record["downloads"]
    _record(home, "2023-03-01").write_text(json.dumps(record))
    assert not written_by_export(home, "2023-03-01")


def test_a_record_gone_or_not_a_regular_file_is_not_trusted(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    _dsn, home = _exported_then_erased(postgres_server, tmp_path, monkeypatch)
    record = _record(home, "2023-03-01")
    good = record.read_bytes()
    copy = tmp_path / "record-copy.json"
    copy.write_bytes(good)
    record.unlink()
    os.symlink(copy, record)                          # a link to a record that would match: never followed
    assert not written_by_export(home, "2023-03-01")
    record.unlink()
    os.mkfifo(record)                                 # a FIFO: never waited on
    warnings: list[str] = []
    assert select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append) == ["2023-03-02"]
    assert any(LEFT in w and "2023-03-01" in w for w in warnings)
    record.unlink()                                   # gone (HOME/cache deleted): left alone
    assert not written_by_export(home, "2023-03-01")
    record.write_bytes(good[:-1])                     # malformed: left alone
    assert not written_by_export(home, "2023-03-01")
    record.write_bytes(good + b" " * (20 << 10))      # larger than a record is: left alone
    assert not written_by_export(home, "2023-03-01")
    record.write_bytes(good)                          # the export's own record: trusted
    assert written_by_export(home, "2023-03-01")
