"""fix36a: the fixes of review rev36a (``tests/unit/test_hostile_rev36a.py``), beyond the review's own tests.

- ``export_day`` marks the day a row that leaves the re-exported day is dated to now (``mark_late``), and remembers
  a row moved before the raw zone's first day (``remember_moved``), BEFORE it publishes the day without the row:
  a SIGKILL at any point of the export's end leaves the row in its old day, or found again (remembered, its day
  marked), and the crashed run's rerun and the schedule bring it into its new day.
- ``simulator.export.write_unless_same`` leaves a same-bytes file only where it is also of the group a fresh
  file gets (the folder's where it is setgid) and carries no POSIX ACL of its own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
from pathlib import Path

import pytest
from appdb_fixtures import MARCH_FIRST, NIGHTLY, NOW, exported_app, move_rankings, raw_lines

from formats.home import DataHome
from pipelines.appdb import export as app_export
from pipelines.appdb.export import UNDATED_STATE, export_day, late_days
from simulator import export
from tests.postgres_server import postgres_server  # noqa: F401 - fixture

# --- export_day: a kill at each point of the export's end ----------------------------------------------------

def _killed_at(home: DataHome, dsn: str, day: str, point: str) -> int:
    """``export_day`` in a forked child that SIGKILLs itself on its first call of ``pipelines.appdb.export.<point>``
    (``Class.method`` for a method): a real kill, nothing of the export's clean-up runs. Returns the child's wait
    status (``-SIGNAL`` when killed, else its exit code: 0 when the export ended without reaching ``point``)."""
    pid = os.fork()
    if pid == 0:                                     # pragma: no cover - the child
        try:
            owner, name = app_export, point
            if "." in point:
                cls, name = point.split(".")
                owner = getattr(app_export, cls)

            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            setattr(owner, name, die)
            export_day(home, dsn, day, NIGHTLY, now=NOW)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _remembered(home: DataHome) -> dict:
    path = home.cache / UNDATED_STATE
    return json.loads(path.read_bytes()) if path.exists() else {}


def _found(home: DataHome, moved_to: str) -> list[str]:
    """Where ranking 3 (moved from 2023-03-01 to ``moved_to``) can be found: the raw days holding it, a late
    marker of its new day, its entry in the remembered rows."""
    where = [day for day in home.raw_days() if 3 in [row["ranking_id"] for row in raw_lines(home, day, "rankings")]]
    if moved_to in late_days(home):
        where.append("marked")
    if [3, moved_to] in _remembered(home).get("rankings", []):
        where.append("remembered")
    return where


# the points of the export's end, in their order: the record written before the publish (the first mark_late of
# the marked case), the publish, then every write after it
_AFTER = ["_publish", "_write_snapshot_order", "record_written", "record_content", "LateCheck.clear_whole",
          "save_undated", "blob_warnings"]


@pytest.mark.parametrize("moved_to, days, points", [
    ("2023-02-15", ("2023-03-01",), ["remember_moved"] + _AFTER[:4] + ["mark_late"] + _AFTER[4:]),
    ("2023-02-01", ("2023-02-01", "2023-03-01"), ["mark_late"] + _AFTER),
])
def test_a_kill_at_any_point_of_the_end_leaves_the_moved_row_in_its_day_or_found_again(  # noqa: F811
        postgres_server, tmp_path, moved_to, days, points):  # noqa: F811
    dsn, built = exported_app(postgres_server, tmp_path / "built", {1: "2023-02-01 10:00", **MARCH_FIRST}, days)
    move_rankings(dsn, f"{moved_to} 08:00", 3)
    for index, point in enumerate(points):
        home = DataHome.at(tmp_path / f"home{index}")
        shutil.copytree(built.root, home.root, symlinks=True)
        assert _killed_at(home, dsn, "2023-03-01", point) == -signal.SIGKILL, point
        published = 3 not in [row["ranking_id"] for row in raw_lines(home, "2023-03-01", "rankings")]
        where = _found(home, moved_to)
        # killed before the publish: still in its old day (and maybe found already); after: found again
        assert where and (published or "2023-03-01" in where), (point, where)
        if published:
            assert {"marked", "remembered"} & set(where), (point, where)
        export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)           # the crashed run rerun
        assert 3 not in [row["ranking_id"] for row in raw_lines(home, "2023-03-01", "rankings")]
        where = _found(home, moved_to)
        if moved_to in days:        # its day marked for the schedule
            assert where == ["marked"], (point, where)
        else:                       # remembered and named by each export; its day, before the raw zone's first, unmarked (fix36n)
            assert where == ["remembered"], (point, where)
        for marked in late_days(home):                                  # the schedule's re-export
            export_day(home, dsn, marked, NIGHTLY, now=NOW)
        if moved_to in days:
            assert _found(home, moved_to) == [moved_to], point
            assert not late_days(home)


def test_a_superseded_export_remembers_no_moved_row(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    """The rows are remembered before the publish only by an export that publishes (a superseded one forgets no
    row: the day keeps the newer snapshot's files, which the next export compares)."""
    dsn, home = exported_app(postgres_server, tmp_path / "home", MARCH_FIRST)
    move_rankings(dsn, "2023-02-15 08:00", 3)
    real = app_export.snapshot_order

    def newer(home_, day):          # another export of the day published a newer snapshot meanwhile
        order = real(home_, day)
        return {**order, "published": order["taken"] + 1000} if day == "2023-03-01" else order

    monkeypatch.setattr(app_export, "snapshot_order", newer)
    report = export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert report.published == "superseded"
    assert [row["ranking_id"] for row in raw_lines(home, "2023-03-01", "rankings")] == [2, 3]
    assert _remembered(home) == {}
    monkeypatch.setattr(app_export, "snapshot_order", real)
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    assert _remembered(home) == {"rankings": [[3, "2023-02-15"]]}


def test_a_failing_publish_leaves_the_row_in_its_day_and_remembered_and_named(  # noqa: F811
        postgres_server, tmp_path, monkeypatch):  # noqa: F811
    """An export failing in its publish (an exception, not a kill) has remembered the row already: the row stays
    in its old day, each night names it until that day's re-export takes it out (then it is remembered still)."""
    dsn, home = exported_app(postgres_server, tmp_path / "home", MARCH_FIRST)
    move_rankings(dsn, "2023-02-15 08:00", 3)

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(app_export, "_publish", fail)
    with pytest.raises(OSError):
        export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    monkeypatch.undo()
    assert _found(home, "2023-02-15") == ["2023-03-01", "remembered"]
    report = export_day(home, dsn, "2023-03-02", NIGHTLY, now=NOW)
    assert any("2023-02-15" in line for line in report.warnings), report.warnings
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    # out of its old day, remembered and named every night; never marked, a day before the raw zone's first (fix36n)
    assert _found(home, "2023-02-15") == ["remembered"]


# --- write_unless_same: the group and the ACL a fresh write gives --------------------------------------------

def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A ``system.posix_acl_*`` value (version 2; tag, permissions, id per entry)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


_ANY = 0xFFFFFFFF
# owner rw, nobody rw (a named user), owning group r, mask rw, others r
_NOBODY_WRITES = _acl((0x01, 6, _ANY), (0x02, 6, 65534), (0x04, 4, _ANY), (0x10, 6, _ANY), (0x20, 4, _ANY))


@pytest.fixture
def umask002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file another group")


def test_a_same_bytes_file_in_a_setgid_folder_of_its_group_is_left(tmp_path: Path, umask002) -> None:
    """A group-shared home (setgid folders): a fresh file gets the folder's group, so a file of that group is what
    a fresh write makes (left, its inode and mtime too), and one of this process's own group is rewritten into
    the folder's."""
    _root()
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, -1, 65534)
    folder.chmod(0o2775)
    data = b"\x89PNG same bytes"
    path = folder / "blob.png"
    assert export.write_unless_same(path, data)
    first = os.lstat(path)
    assert first.st_gid == 65534 == export.fresh_group(folder)
    assert not export.write_unless_same(path, data)
    again = os.lstat(path)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    os.chown(path, -1, os.getegid())             # this process's group, not the folder's
    assert export.write_unless_same(path, data)
    assert os.lstat(path).st_gid == 65534 and path.read_bytes() == data
    assert not export.write_unless_same(path, data)


def test_a_plain_folders_file_of_the_process_group_is_left(tmp_path: Path, umask002) -> None:
    """No setgid: the process's effective group is the fresh one (a second write leaves the first)."""
    tmp_path.chmod(0o775)
    path = tmp_path / "blob.png"
    assert export.write_unless_same(path, b"x")
    assert os.lstat(path).st_gid == os.getegid() == export.fresh_group(tmp_path)
    assert not export.write_unless_same(path, b"x")


def test_a_same_bytes_file_with_an_acl_is_rewritten_without_it(tmp_path: Path, umask002) -> None:
    """An ACL letting another account write, its mask keeping the mode the umask gives (0664 under 002): the
    owner, group, mode and bytes are a fresh write's, the ACL is not; the replace leaves no ACL."""
    _root()
    tmp_path.chmod(0o775)
    data = b"\x89PNG same bytes"
    path = tmp_path / "blob.png"
    export.write_unless_same(path, data)
    try:
        os.setxattr(path, export.ACL_ACCESS, _NOBODY_WRITES)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here ({exc})")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o664
    inode = os.lstat(path).st_ino
    assert export.write_unless_same(path, data)
    assert os.lstat(path).st_ino != inode and path.read_bytes() == data
    assert export.ACL_ACCESS not in os.listxattr(path)
    assert not export.write_unless_same(path, data)


def test_a_folder_with_a_default_acl_rewrites_every_time(tmp_path: Path, umask002) -> None:
    """A folder whose default ACL names another account: a fresh file carries an ACL too, so no file there is
    "what a fresh write makes" by these checks: each write replaces the file (as before fix35b), whole."""
    _root()
    folder = tmp_path / "acl"
    folder.mkdir()
    try:
        os.setxattr(folder, "system.posix_acl_default", _NOBODY_WRITES)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here ({exc})")
    path = folder / "blob.png"
    assert export.write_unless_same(path, b"x")
    assert export.ACL_ACCESS in os.listxattr(path)
    assert export.write_unless_same(path, b"x") and path.read_bytes() == b"x"
