"""Hostile review rev25i of the two fixes merged on the twenty-fifth session: fix25e (a591942: ``latest`` resolved
with realpath, iterative ``walk_tree`` / ``remove_tree`` behind ``remove_folder``, ``SYSTEM_FILE`` tolerated by
retention, escaped notes, ``sweep_temps(follow=True)``) and fix25f (0d52bd1: the ingest clears a day's six partition
folders of every entry but its ``part-0.parquet``, flock-held spill folders swept, decode rejects' keys read
leniently, ``mismatched_image`` a pair decision, shared invisibles, huge exponents, linear bracket rule).

Each test states the correct behaviour (filed as strict xfails; all fixed the same day by fix25i). Confirmed
by running real ingests, retention and the CLI (``pickapic simulate`` + ``pickapic build --force``)."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.curation.decisions import IngestNotReconciled, check_ingest_reconciled
from pipelines.ingest.day import ingest_day
from pipelines.publish import versions
from pipelines.sqlrun import connect

DAY, NEXT = "2023-03-01", "2023-03-02"
A, B, C = "2023-03-01-0123456789", "2023-03-02-0123456789", "2023-03-03-0123456789"


def _reconcile(home: DataHome) -> None:
    con = connect({name: home.table_glob(name) for name in ("rankings", "images", "ingest_files")})
    try:
        check_ingest_reconciled(con, home)
    finally:
        con.close()


def _version(datasets: Path, name: str) -> Path:
    """A complete version as a publish lays it out: one listed file and a manifest naming the folder."""
    folder = datasets / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    (folder / "manifest.json").write_text(json.dumps({"version": name, "files": {"train/a.tar": {"bytes": 1}}}))
    return folder


def _home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    return home


def _deep(top: Path, depth: int) -> None:
    """``depth`` nested empty folders ``d/d/...`` under ``top``, made relative to open folders (no path limit)."""
    first = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    current = first
    for _ in range(depth):
        os.mkdir("d", dir_fd=current)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        if current != first:
            os.close(current)
        current = deeper
    os.close(current)
    os.close(first)


def _undeep(top: Path) -> None:
    """Remove a ``d/d/...`` chain under ``top`` one level at a time, relative to open folders (its paths exceed
    PATH_MAX; pytest's recursive clean-up would fail on it): ``d/d`` moved up, the empty ``d`` removed."""
    if not os.path.isdir(top):
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    outer = os.open(top, flags)
    try:
        while True:
            try:
                inner = os.open("d", flags, dir_fd=outer)
            except FileNotFoundError:
                break
            try:
                os.rename("d", ".up", src_dir_fd=inner, dst_dir_fd=outer)
                moved = True
            except FileNotFoundError:
                moved = False
            finally:
                os.close(inner)
            os.rmdir("d", dir_fd=outer)
            if not moved:
                break
            os.rename(".up", "d", src_dir_fd=outer, dst_dir_fd=outer)
    finally:
        os.close(outer)


# ------------------------------------------------------------------------------------------- ingest (fix25f)

def test_an_nfs_silly_renamed_file_held_open_does_not_crash_the_ingest(tmp_path, monkeypatch):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    part = home.partition_file("rankings", DAY)
    held = part.parent / ".nfs000000000012abcd00000001"        # the old part-0 a reader still holds open
    held.write_bytes(part.read_bytes())
    real_unlink = os.unlink

    def nfs_unlink(path, *args, **kwargs):                      # the NFS client refuses while it is open
        if os.path.basename(os.fspath(path)).startswith(".nfs"):
            raise OSError(errno.EBUSY, "Device or resource busy", os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", nfs_unlink)
    report = ingest_day(home, DAY)                              # now: OSError EBUSY out of clear_partition_folders
    monkeypatch.undo()
    assert report.day == DAY
    assert pq.read_table(part).num_rows == report.tables["rankings"].accepted


def test_a_linked_partition_folder_is_refused_or_cured_by_the_advised_re_ingest(tmp_path):
    home = DataHome(tmp_path / "home")
    for day in (DAY, NEXT):
        DayBuilder(day).populate(users=3, images=4, rankings=2, downloads=0).write(home)
        ingest_day(home, day)
    folder = home.partition_file("rankings", DAY).parent
    outside = tmp_path / "otherdisk"
    folder.rename(outside)
    folder.symlink_to(outside)
    (outside / "copy.parquet").write_bytes((outside / "part-0.parquet").read_bytes())
    before = (outside / "part-0.parquet").stat().st_ino
    try:
        ingest_day(home, DAY)                                   # what the refusal advises
    except Exception as exc:                                    # noqa: BLE001 - a refusal is one correct answer
        message = str(exc)
        assert "link" in message and "\n" not in message
        assert (outside / "part-0.parquet").stat().st_ino == before   # nothing written through the link
    else:
        _reconcile(home)                                        # now: IngestNotReconciled, 0 rows, again


@pytest.mark.parametrize("stray", ["old.parquet", f"backup/dt={DAY}/part-0.parquet"])
def test_a_stray_outside_the_day_folder_is_named_by_the_refusal_that_re_ingest_does_not_cure(tmp_path, stray):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    part = home.partition_file("rankings", DAY)
    copy = part.parent.parent / stray
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(part.read_bytes())
    ingest_day(home, DAY)                                       # the advised re-ingest
    try:
        _reconcile(home)
    except IngestNotReconciled as refused:
        assert f"warehouse/rankings/{stray}" in str(refused)


def test_a_copied_partition_folder_gives_a_clear_refusal_not_a_binder_error(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    folder = home.partition_file("rankings", DAY).parent
    shutil.copytree(folder, folder.with_name(f"dt={DAY}.bak"))
    try:
        _reconcile(home)
    except IngestNotReconciled as refused:
        assert f"dt={DAY}.bak" in str(refused) and "\n" not in str(refused)


# ------------------------------------------------------------------------------------------ retention (fix25e)

def test_a_users_dot_underscore_file_that_is_no_appledouble_keeps_its_version(tmp_path):
    home = _home(tmp_path)
    user = _version(home.datasets, A)
    (user / "._results.parquet").write_bytes(b"PAR1" + b"\x01" * 4096 + b"PAR1")   # the user's data, not metadata
    finder = _version(home.datasets, B)
    (finder / "train" / "._a.tar").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\x00" * 74)  # AppleDouble
    _version(home.datasets, C)
    os.symlink(C, home.datasets / "latest")
    notes: list[str] = []
    deleted = versions.apply_retention(home, 1, notes)
    assert (user / "._results.parquet").exists()
    assert deleted == [B]
    assert any(A in note and "._results.parquet" in note for note in notes)


def test_trees_deeper_than_path_max_are_walked_and_removed(tmp_path):
    home = _home(tmp_path)
    for name in (A, B):
        _version(home.datasets, name)
    hidden = home.datasets / f".deleting-{C}"
    hidden.mkdir()
    try:
        _deep(home.datasets / A, 2500)                          # empty folders: still a version a publish made
        _deep(hidden, 2500)
        os.symlink(B, home.datasets / "latest")
        assert versions.sweep_stale(home.datasets, ".partial-x") == []
        assert not os.path.lexists(hidden)
        notes: list[str] = []
        assert versions.apply_retention(home, 1, notes) == [A]
        assert notes == []
        assert sorted(os.listdir(home.datasets)) == [B, "latest"]
    finally:
        for top in (home.datasets / A, hidden, home.datasets / f".deleting-{A}"):
            _undeep(top)
