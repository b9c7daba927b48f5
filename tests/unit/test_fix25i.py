"""Fixes of review rev25i: AppleDouble ``._*`` files known by their magic (one shared helper), trees deeper than
PATH_MAX walked and removed relative to open folders, a linked partition folder refused by the ingest, a stray the
partition clean-up cannot remove left with a warning, and the warehouse readers' glob limited to the
``dt=YYYY-MM-DD/*.parquet`` layout the stages write."""
from __future__ import annotations

import errno
import glob
import json
import os
from pathlib import Path

import pytest
from test_ingest_fixtures import DayBuilder

from formats.files import APPLE_DOUBLE, is_apple_double
from formats.home import DataHome
from pipelines.curation.decisions import IngestNotReconciled, check_ingest_reconciled
from pipelines.ingest.day import PartitionFolderRefused, ingest_day
from pipelines.publish import versions
from pipelines.sqlrun import connect

DAY = "2023-03-01"
A, B = "2023-03-01-0123456789", "2023-03-02-0123456789"
MAGIC = APPLE_DOUBLE + b"\x00\x02\x00\x00" + b"\x00" * 74


def _reconcile(home: DataHome) -> None:
    con = connect({name: home.table_glob(name) for name in ("rankings", "images", "ingest_files")})
    try:
        check_ingest_reconciled(con, home)
    finally:
        con.close()


def _ingested(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    return home


def _deep(top: Path, depth: int) -> int:
    """``depth`` nested folders ``d/d/...`` under ``top``, made relative to open folders; returns the deepest one
    open (the caller closes it)."""
    current = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=current)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        os.close(current)
        current = deeper
    return current


# ------------------------------------------------------------------------------------------- AppleDouble
def test_apple_double_is_known_by_its_name_and_first_bytes_only(tmp_path):
    (tmp_path / "._a.tar").write_bytes(MAGIC)
    (tmp_path / "._results.parquet").write_bytes(b"PAR1" + b"\x00" * 10 + b"PAR1")
    (tmp_path / "a.tar").write_bytes(MAGIC)                           # the magic without the name
    (tmp_path / "._short").write_bytes(APPLE_DOUBLE[:3])
    os.symlink(tmp_path / "._a.tar", tmp_path / "._link")
    os.mkfifo(tmp_path / "._fifo")                                    # never waited on
    assert is_apple_double(tmp_path / "._a.tar")
    assert not is_apple_double(tmp_path / "._results.parquet")
    assert not is_apple_double(tmp_path / "a.tar")
    assert not is_apple_double(tmp_path / "._short")
    assert not is_apple_double(tmp_path / "._fifo")
    assert not is_apple_double(tmp_path / "._missing")
    assert is_apple_double(tmp_path / "._link")                       # followed by default (rerank's candidates)
    assert not is_apple_double(tmp_path / "._link", follow_symlinks=False)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert is_apple_double("._a.tar", dir_fd=fd) and not is_apple_double("._results.parquet", dir_fd=fd)
    finally:
        os.close(fd)


def test_rerank_and_retention_share_the_apple_double_rule(tmp_path):
    from training import rerank
    (tmp_path / "._c1.png").write_bytes(MAGIC)
    (tmp_path / "._c2.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert rerank._system_file(tmp_path / "._c1.png") and not rerank._system_file(tmp_path / "._c2.png")
    info = os.lstat(tmp_path / "._c1.png")
    assert versions.system_file(str(tmp_path / "._c1.png"), info)
    assert not versions.system_file(str(tmp_path / "._c2.png"), os.lstat(tmp_path / "._c2.png"))


def _version(datasets: Path, name: str) -> Path:
    folder = datasets / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    (folder / "manifest.json").write_text(json.dumps({"version": name, "files": {"train/a.tar": {"bytes": 1}}}))
    return folder


def test_an_apple_double_file_deeper_than_path_max_is_read_relative_to_its_folder(tmp_path):
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    folder = _version(home.datasets, A)
    _version(home.datasets, B)
    os.symlink(B, home.datasets / "latest")
    bottom = _deep(folder, 2200)                                      # 4,400 characters of path below the version
    try:
        fd = os.open("._x", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=bottom)
        os.write(fd, MAGIC)
        os.close(fd)
    finally:
        os.close(bottom)
    assert versions.made_by_publish(folder) is None
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == [A] and notes == []
    assert sorted(os.listdir(home.datasets)) == [B, "latest"]


# ------------------------------------------------------------------------------------------- deep trees
def test_walk_tree_is_depth_first_and_names_files_beyond_path_max(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    (top / "b").mkdir()
    (top / "b" / "f").write_bytes(b"x")
    (top / "c").write_bytes(b"y")
    bottom = _deep(top, 2100)
    try:
        os.close(os.open("z", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=bottom))
    finally:
        os.close(bottom)
    walked = [rel for rel, _ in versions.walk_tree(top)]
    assert walked[:4] == ["b", "b/f", "c", "d"]
    assert walked[-1] == "/".join(["d"] * 2100 + ["z"]) and len(walked) == 3 + 2100 + 1
    versions.remove_tree(top)
    assert not os.path.lexists(top)


def test_remove_tree_removes_what_it_can_and_raises_the_first_failure(tmp_path, monkeypatch):
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / ".nfs00000000000000ab").write_bytes(b"held")
    (top / "a" / "b" / "gone").write_bytes(b"x")
    (top / "z").write_bytes(b"x")
    real_unlink = os.unlink

    def nfs_unlink(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith(".nfs"):
            raise OSError(errno.EBUSY, "Device or resource busy", os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", nfs_unlink)
    with pytest.raises(OSError) as failed:
        versions.remove_tree(top)
    monkeypatch.undo()
    assert failed.value.errno == errno.EBUSY
    assert sorted(os.listdir(top)) == ["a"] and os.listdir(top / "a") == [".nfs00000000000000ab"]


def test_remove_tree_refuses_a_link_and_never_enters_one(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(NotADirectoryError):
        versions.remove_tree(tmp_path / "link")
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    os.symlink(victim, top / "sub" / "inside")
    versions.remove_folder(top)
    assert not os.path.lexists(top) and (victim / "keep").read_text() == "mine"


# ------------------------------------------------------------------------------------------- ingest
@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_partition_folder_that_is_no_real_folder_is_refused_before_anything_is_written(tmp_path, kind):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    folder = home.partition_file("images", DAY).parent
    folder.parent.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "link":
        folder.symlink_to(outside)
    else:
        folder.write_bytes(b"not a folder")
    with pytest.raises(PartitionFolderRefused) as refused:
        ingest_day(home, DAY)
    message = str(refused.value)
    assert "\n" not in message and f"warehouse/images/dt={DAY}" in message
    assert ("symbolic link" if kind == "link" else "not a folder") in message
    assert os.listdir(outside) == []
    assert not home.partition_file("rankings", DAY).exists()          # nothing of the day written


def test_a_stray_parquet_file_the_clean_up_cannot_remove_is_left_with_a_warning_and_named(tmp_path, monkeypatch,
                                                                                          capsys):
    home = _ingested(tmp_path)
    part = home.partition_file("rankings", DAY)
    stray = part.with_name("copy.parquet")
    stray.write_bytes(part.read_bytes())
    real_unlink = os.unlink

    def busy(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == "copy.parquet":
            raise OSError(errno.EBUSY, "Device or resource busy", os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", busy)
    ingest_day(home, DAY)
    monkeypatch.undo()
    assert "copy.parquet" in capsys.readouterr().err and stray.exists()
    with pytest.raises(IngestNotReconciled) as refused:                # it is counted: curation names it
        _reconcile(home)
    assert f"warehouse/rankings/dt={DAY}/copy.parquet" in str(refused.value)
    ingest_day(home, DAY)                                              # the next ingest removes it
    assert not stray.exists()
    _reconcile(home)


def test_the_readers_glob_reads_only_the_day_folders_the_stages_write(tmp_path):
    home = _ingested(tmp_path)
    part = home.partition_file("rankings", DAY)
    table = part.parent.parent
    for rel in ("old.parquet", f"backup/dt={DAY}/part-0.parquet", f"dt={DAY}.bak/part-0.parquet",
                "dt=2023-3-1/part-0.parquet", f"dt={DAY}/sub/part-0.parquet"):
        (table / rel).parent.mkdir(parents=True, exist_ok=True)
        (table / rel).write_bytes(part.read_bytes())
    assert glob.glob(home.table_glob("rankings"), recursive=True) == [str(part)]
    ingest_day(home, DAY)                                              # removes dt=DAY/sub; the rest is ignored
    _reconcile(home)
    weird = DataHome(tmp_path / "ho[me]*")                             # the home's own path stays literal
    assert glob.escape(str(weird.root)) in weird.table_glob("rankings")
