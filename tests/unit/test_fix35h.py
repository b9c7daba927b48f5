"""Fix35h: the defects of review rev35e (``tests/unit/test_hostile_rev35e.py``), beyond the review's own tests.

- ``simulator.export.write_unless_same`` leaves a file holding the bytes only where it is also what a fresh write
  makes it: this account's, the umask's mode and one name (a hard link is rewritten by the atomic replace, which
  leaves the other name as it was).
- A users snapshot's content baseline (``HOME/cache/app_export_content/``) is kept by the accounts' creation day
  (a seventh member: ``{"from", "before", "days"}``), and the late-row check compares it part by part: an account
  erased on one day no longer hides an email edited on another. The export's record takes its parts from the
  late-row check's query, which now reaches the export's day (no second query).

Real PostgreSQL server (``tests/postgres_server.py``), the real ``export_day``; each test a few seconds.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psycopg
from appdb_fixtures import add_ranking, add_user, app_db, nightly, raw_lines, two_accounts, warnings_of

from formats.home import DataHome
from pipelines.appdb.export import (
    CONTENT_RECORDS,
    DIGEST_MOD,
    _coarsened,
    _edited_parts,
    _parts,
    _valid_content,
    late_days,
    raw_day_state,
)
from simulator import export
from tests.postgres_server import postgres_server  # noqa: F401 - fixture


def _umasked(mask: int):
    class _Mask:
        def __enter__(self):
            self.old = os.umask(mask)

        def __exit__(self, *exc):
            os.umask(self.old)
    return _Mask()


# --- write_unless_same ---------------------------------------------------------------------------------------------

def test_a_hard_linked_same_bytes_file_is_replaced_and_the_other_name_keeps_its_inode(tmp_path: Path) -> None:
    with _umasked(0o022):
        data = b"same bytes"
        raw = tmp_path / "raw.png"
        raw.write_bytes(data)
        raw.chmod(0o644)
        outside = tmp_path / "outside.png"
        os.link(raw, outside)
        assert export.write_unless_same(raw, data) is True
        assert os.lstat(raw).st_ino != os.lstat(outside).st_ino and os.lstat(raw).st_nlink == 1
        assert raw.read_bytes() == outside.read_bytes() == data
        outside.write_bytes(b"edited through the other name")       # no longer reaches the raw zone
        assert raw.read_bytes() == data
        assert export.write_unless_same(raw, data) is False          # one name now: left as it is


def test_a_file_as_a_fresh_write_makes_it_is_left_with_its_mtime(tmp_path: Path) -> None:
    with _umasked(0o027):
        path = tmp_path / "blob.png"
        assert export.write_unless_same(path, b"x") is True
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        assert export.write_unless_same(path, b"x") is False
        assert os.lstat(path).st_mtime_ns == 1_000_000_000
        assert export.write_unless_same(path, b"y") is True and path.read_bytes() == b"y"


def test_a_file_of_another_umask_is_rewritten_under_this_one(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    with _umasked(0o022):
        export.write_text_lines(path, ["a", "b"])
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644
    with _umasked(0o077):                     # a private run: its files are its own
        export.write_text_lines(path, ["a", "b"])
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert path.read_text() == "a\nb\n"


def test_a_fifo_or_a_folder_at_the_path_is_not_read_nor_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "blob.png"
    os.mkfifo(fifo)
    assert export.write_unless_same(fifo, b"data") is True         # replaced, never opened for a blocking read
    assert stat.S_ISREG(os.lstat(fifo).st_mode) and fifo.read_bytes() == b"data"


# --- the users snapshot's parts by creation day ----------------------------------------------------------------------

def test_parts_coarsen_to_the_later_first_day_and_compare_part_by_part() -> None:
    old = _parts("2023-03-01", (1, 10, 100), {"2023-03-01": (1, 11, 110), "2023-03-02": (2, 12, 120),
                                              "2023-03-03": (0, 0, 0)})
    assert old["days"] == {"2023-03-01": [1, 11, 110], "2023-03-02": [2, 12, 120]}     # days without accounts left out
    assert _coarsened(old, "2023-03-02") == {None: (2, 21, 210), "2023-03-02": (2, 12, 120)}
    # an account of 03-02 erased (other ids there), one of before 03-01 edited (same ids, other content): seen
    now = _parts("2023-03-02", (2, 21, 999), {"2023-03-02": (1, 5, 50)})
    assert _edited_parts(old, now) and _edited_parts(now, old)
    # the erasure alone: nothing edited
    assert not _edited_parts(old, _parts("2023-03-02", (2, 21, 210), {"2023-03-02": (1, 5, 50)}))
    # the erasure and the edit on the same creation day: the documented bound (not seen)
    assert not _edited_parts(old, _parts("2023-03-02", (2, 21, 210), {"2023-03-02": (1, 5, 77)}))
    # the digests add modulo 2^64
    big = _parts("2023-03-01", (0, 0, 0), {"2023-03-01": (1, DIGEST_MOD - 1, DIGEST_MOD - 1),
                                           "2023-03-02": (1, 2, 2)})
    assert _coarsened(big, "2023-03-03")[None] == (2, 1, 1)
    assert not _edited_parts(None, now) and not _edited_parts(old, None)


def test_a_content_record_with_malformed_parts_is_no_baseline() -> None:
    key = [10, 20, 30, 40]
    good = _parts("2023-03-01", (0, 0, 0), {"2023-03-01": (1, 2, 3)})
    assert _valid_content(key[:3] + [1, 2, 3], key)
    assert _valid_content(key[:3] + [1, 2, 3, good], key)
    for bad in ({"from": "2023-03-01", "before": [0, 0, 0]},                                # no days
                {"from": "03/01/2023", "before": [0, 0, 0], "days": {}},                     # not a day
                {"from": "2023-03-02", "before": [0, 0, 0], "days": {"2023-03-01": [1, 2, 3]}},  # a day before from
                {"from": "2023-03-01", "before": [0, 0, DIGEST_MOD], "days": {}},            # past the modulus
                {"from": "2023-03-01", "before": [0, 0, 0], "days": {"2023-03-01": [1, 2]}},
                {"from": "2023-03-01", "before": [0, -1, 0], "days": {}},
                [0, 0, 0], None):
        assert not _valid_content(key[:3] + [1, 2, 3, bad], key), bad


def test_an_erasure_of_a_later_account_hides_no_edit_of_an_earlier_one(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        add_user(conn, 1, "2023-03-01 09:00", "old@example.com")
        add_user(conn, 2, "2023-03-02 09:00", "two@example.com")
        add_user(conn, 3, "2023-03-03 09:00", "three@example.com")
        for rid, day in ((1, "2023-03-01"), (2, "2023-03-02"), (3, "2023-03-03")):
            add_ranking(conn, rid, f"{day} 12:00", user=rid)
    for night in ("2023-03-01", "2023-03-02", "2023-03-03"):
        nightly(home, dsn, night)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE user_id = 3")
        conn.execute("DELETE FROM users WHERE user_id = 3")          # erased, created after the edited account
        conn.execute("UPDATE users SET email = 'new@example.com' WHERE user_id = 1")
    lines = warnings_of(nightly(home, dsn, "2023-03-11"))
    edited = [line for line in lines if line.startswith("app rows edited since")]
    assert len(edited) == 1 and all(f"2023-03-0{n}: users" in edited[0] for n in (1, 2, 3)), lines
    for day in ("2023-03-01", "2023-03-02", "2023-03-03"):
        assert {row["user_id"]: row["email"] for row in raw_lines(home, day, "users")}[1] == "new@example.com"
    assert late_days(home) == []
    again = nightly(home, dsn, "2023-03-12")            # re-exported once: the next night is quiet
    assert len(again) == 1 and not any("edited" in line for line in warnings_of(again))


def test_an_erasure_alone_re_exports_nothing_and_keeps_the_snapshot(postgres_server, tmp_path):  # noqa: F811
    dsn, home = two_accounts(postgres_server, tmp_path / "home")
    for night in ("2023-03-01", "2023-03-02"):
        nightly(home, dsn, night)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE user_id = 1")
        conn.execute("DELETE FROM users WHERE user_id = 1")
    reports = nightly(home, dsn, "2023-03-10")
    assert len(reports) == 1 and late_days(home) == []
    assert not any("edited" in line for line in warnings_of(reports))
    assert [row["user_id"] for row in raw_lines(home, "2023-03-02", "users")] == [1, 2]   # the raw zone keeps it
    # the check found it whole and recorded the baseline of the accounts now, by creation day
    entry = json.loads((home.cache / CONTENT_RECORDS / "dt=2023-03-02.json").read_bytes())["users"]
    assert entry[3] == 1 and entry[6]["days"].get("2023-03-02", [0])[0] == 1 and "2023-03-01" not in entry[6]["days"]
    with psycopg.connect(dsn) as conn:                  # a later edit is still seen
        conn.execute("UPDATE users SET email = 'new@example.com' WHERE user_id = 2")
    nightly(home, dsn, "2023-03-11")
    assert [row["email"] for row in raw_lines(home, "2023-03-02", "users")] == ["new@example.com"]


def test_the_export_records_the_parts_from_the_checks_first_day_and_an_old_record_gets_them(  # noqa: F811
        postgres_server, tmp_path):  # noqa: F811
    dsn, home = two_accounts(postgres_server, tmp_path / "home", "2023-03-10")
    nightly(home, dsn, "2023-03-01")
    first = json.loads((home.cache / CONTENT_RECORDS / "dt=2023-03-01.json").read_bytes())["users"][6]
    assert first == {"from": "2023-03-01", "before": [0, 0, 0], "days": {"2023-03-01": first["days"]["2023-03-01"]}}
    nightly(home, dsn, "2023-03-10")               # checks 03-01: its query reaches 03-10, the export's day
    record = json.loads((home.cache / CONTENT_RECORDS / "dt=2023-03-10.json").read_bytes())["users"]
    assert record[6]["from"] == "2023-03-01" and sorted(record[6]["days"]) == ["2023-03-01", "2023-03-10"]
    assert record[3] == 2 and record[6]["before"] == [0, 0, 0]
    # a record of before fix35h (six members) is still a baseline, and the next check that finds the day whole
    # by its ids gives it its parts
    path = home.cache / CONTENT_RECORDS / "dt=2023-03-01.json"
    old = json.loads(path.read_bytes())
    old["users"] = old["users"][:6]
    path.write_text(json.dumps(old))
    assert raw_day_state(home, "2023-03-01")["users"].content is not None
    assert raw_day_state(home, "2023-03-01")["users"].parts is None
    nightly(home, dsn, "2023-03-11")
    assert raw_day_state(home, "2023-03-01")["users"].parts is not None
