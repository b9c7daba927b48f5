"""The anchor connections of the home's Dagster storages (``dagster_project.instance._Engines``, thirty-fifth
session): once a kept engine's database is in WAL mode, one idle ``sqlite3`` connection is held open on it, so the
connection-per-use closes are not the last ones (no checkpoint, ``fdatasync`` and deletion of the -wal / -shm files
at every use), while every read still goes through a new connection and sees every commit."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from dagster_project.instance import ENGINES, _Engines


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _wal_db(engines: _Engines, path: Path):
    engine = engines.get(_url(path), 30)
    with engine.connect() as conn, conn.begin():
        conn.execute(text("PRAGMA journal_mode=WAL"))
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return engine


def _insert(engine, value: int) -> None:
    with engine.connect() as conn, conn.begin():
        conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": value})


def _rows(engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(row[0] for row in conn.execute(text("SELECT x FROM t")))


def test_the_log_stays_between_uses_and_the_anchors_close_removes_it(tmp_path: Path) -> None:
    engines = _Engines()
    db = tmp_path / "a.db"
    engine = _wal_db(engines, db)
    assert not Path(f"{db}-wal").exists()              # no anchor yet: the only connection's close removed it
    assert engines.get(_url(db), 30) is engine           # the next use anchors the database
    for value in range(5):
        _insert(engine, value)
        assert Path(f"{db}-wal").exists()                # a use's close is not the last one any more
    anchor = engines._anchors[(os.getpid(), _url(db))]
    assert not anchor.in_transaction                     # idle: no read transaction, no snapshot
    engines.close_anchors()
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    with sqlite3.connect(db) as reader:
        assert sorted(row[0] for row in reader.execute("SELECT x FROM t")) == [0, 1, 2, 3, 4]


def test_a_read_sees_another_process_commit_made_while_anchored(tmp_path: Path) -> None:
    engines = _Engines()
    db = tmp_path / "a.db"
    engine = _wal_db(engines, db)
    engines.get(_url(db), 30)
    _insert(engine, 1)
    assert _rows(engine) == [1]
    for value in (2, 3):                                 # another process (a build beside the webserver) commits
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "c.execute('INSERT INTO t VALUES (?)', (int(sys.argv[2]),)); c.commit(); c.close()",
                        str(db), str(value)], check=True)
        assert _rows(engines.get(_url(db), 30)) == list(range(1, value + 1))
    engines.close_anchors()


def test_no_anchor_before_the_database_exists_or_is_in_wal_mode(tmp_path: Path) -> None:
    engines = _Engines()
    missing = tmp_path / "missing.db"
    engines.get(_url(missing), 30)
    assert not missing.exists() and not engines._anchors     # the anchor creates nothing
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    engine = engines.get(_url(plain), 30)
    assert not engines._anchors                              # a rollback-journal database: left as it is
    with engine.connect() as conn, conn.begin():
        conn.execute(text("PRAGMA journal_mode=WAL"))
    engines.get(_url(plain), 30)
    assert list(engines._anchors) == [(os.getpid(), _url(plain))]   # anchored once it is in WAL mode
    engines.close_anchors()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    engines.get(_url(garbage), 30)                           # no error from the anchor: it is only an economy
    assert engines._anchors.get((os.getpid(), _url(garbage))) is None


def test_a_dropped_engine_closes_its_anchor(tmp_path: Path) -> None:
    engines = _Engines()
    first = tmp_path / "first.db"
    _wal_db(engines, first)
    _insert(engines.get(_url(first), 30), 7)
    assert Path(f"{first}-wal").exists()
    for i in range(_Engines.MAX):                           # pushes the first engine out
        engines.get(_url(tmp_path / f"{i}.db"), 30)
    assert (os.getpid(), _url(first)) not in engines._anchors
    assert not Path(f"{first}-wal").exists()                 # its anchor closed: checkpointed and removed


def test_a_truncate_checkpoint_completes_beside_an_anchor(tmp_path: Path) -> None:
    """The refused-run scrub (``coordinator.scrub_refused_run``) checkpoints runs.db's log with TRUNCATE: an anchor,
    which holds no read transaction, does not keep it busy."""
    engines = _Engines()
    db = tmp_path / "a.db"
    engine = _wal_db(engines, db)
    engines.get(_url(db), 30)
    _insert(engine, 1)
    assert Path(f"{db}-wal").stat().st_size > 0
    with engine.connect() as conn:
        busy, *_ = conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone()
    assert busy == 0 and Path(f"{db}-wal").stat().st_size == 0
    engines.close_anchors()


def test_a_fork_closes_the_anchors_first_and_the_child_inherits_none(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    engine = _wal_db(ENGINES, db)
    ENGINES.get(_url(db), 30)
    key = (os.getpid(), _url(db))
    assert key in ENGINES._anchors
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            inherited = not ENGINES._anchors                  # nothing of the parent's left to close here
            own = ENGINES.get(_url(db), 30)
            _insert(own, 2)
            os.write(write, b"1" if inherited and own is not engine else b"0")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and os.waitstatus_to_exitcode(status) == 0
    os.close(read)
    assert key not in ENGINES._anchors                       # closed before the fork, made again at the next use
    _insert(ENGINES.get(_url(db), 30), 3)
    assert key in ENGINES._anchors
    assert _rows(engine) == [2, 3]
    ENGINES.close_anchors()
    with sqlite3.connect(db) as reader:
        assert sorted(row[0] for row in reader.execute("SELECT x FROM t")) == [2, 3]
