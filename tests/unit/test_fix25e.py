"""Fixes of review rev25e (retention and ``latest`` after fix25d): ``latest_version`` resolves the link as the kernel
does, a deep tree in a version never fails retention, files an operating system drops in a browsed version do not
keep it for good, retention's notes show planted names escaped, and the publish's temporary files are swept through
a linked ``datasets/`` or ``cache/`` folder."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from formats.dataset import latest_version, read_switched, record_switched, switch_latest
from formats.files import sweep_temps
from formats.home import DataHome
from pipelines.publish import versions
from pipelines.publish.version import sweep_temp_files

A, B, C = "2023-03-01-0123456789", "2023-03-02-0123456789", "2023-03-03-0123456789"


def _version(datasets: Path, name: str, extra: tuple[str, ...] = ()) -> Path:
    """A complete version as a publish lays it out: one listed file and a manifest naming the folder."""
    folder = datasets / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    (folder / "manifest.json").write_text(json.dumps({"version": name, "files": {"train/a.tar": {"bytes": 1}}}))
    for rel in extra:
        # an AppleDouble ._<name> begins with its magic (review rev25i: only then is it tolerated), .DS_Store with its
        (folder / rel).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" if Path(rel).name.startswith("._")
                                   else b"\x00\x00\x00\x01Bud1")
    return folder


def _home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    return home


def _deep(top: Path, depth: int) -> None:
    """``depth`` nested empty folders ``d/d/...`` under ``top`` (made relative to open folders)."""
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


def _undeep(top: Path, depth: int) -> None:
    for level in range(depth, 0, -1):      # never leave the tree to pytest's recursive clean-up
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(top / "/".join(["d"] * level))


# --------------------------------------------------------------------------- the version `latest` reaches
def test_latest_version_is_the_folder_the_link_finally_reaches_inside_the_datasets_folder(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    _version(datasets, A)
    outside = tmp_path / "elsewhere" / A
    outside.mkdir(parents=True)
    os.symlink(A, datasets / "candidate")                      # a named link beside the versions
    os.symlink(outside, datasets / "away")                     # a named link to a folder outside
    os.symlink("loop", datasets / "loop")
    link = datasets / "latest"
    for target, expected in [("candidate", A), (f"{A}/.", A), (f"./{A}/train/..", A), ("candidate/.", A),
                             (str(datasets / "candidate"), A), ("away", None), ("loop", None), ("latest", None),
                             (f"{A}/train", None), (B, B)]:     # B: not there (yet), resolved as far as it goes
        os.symlink(target, link)
        assert latest_version(datasets) == expected, target
        os.unlink(link)


def test_switch_latest_records_the_version_a_named_link_gave_readers(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    _version(datasets, B)
    assert record_switched(datasets, [B], fsync=False) is None and read_switched(datasets) == {B}
    _version(datasets, A)                                      # left unswitched, then given to readers by hand
    os.symlink(A, datasets / "candidate")
    os.symlink("candidate", datasets / "latest")
    switch_latest(datasets, B, fsync=False)
    assert read_switched(datasets) == {A, B}
    assert os.readlink(datasets / "latest") == B


def test_retention_keeps_the_version_latest_reaches_through_a_named_link(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for name in (A, B, C):
        _version(home.datasets, name)
    os.symlink(f"{A}/.", home.datasets / "latest")             # rolled back by hand to the oldest
    assert versions.apply_retention(home, 1, []) == [B, C]
    assert (home.datasets / A / "manifest.json").is_file()


# --------------------------------------------------------------------------- deep trees
def test_walk_and_removal_of_a_deep_tree_are_iterative_and_follow_no_link(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    _deep(top, 1200)
    os.symlink(victim, top / "d" / "link")                     # a link inside: never entered nor removed through
    (top / "d" / "file").write_text("x")
    try:
        walked = list(versions.walk_tree(top))
        assert len(walked) == 1202
        order = [rel for rel, _ in walked]
        assert order[0] == "d" and order.index("d/d") < order.index("d/d/d")          # parents before children
        assert sorted(rel for rel, _ in walked if rel.count("/") == 1) == ["d/d", "d/file", "d/link"]
        versions.remove_tree(top)
        assert not top.exists()
        assert (victim / "keep.txt").read_text() == "mine"
    finally:
        _undeep(top, 1200)


def test_retention_deletes_a_version_holding_a_deep_tree_without_failing(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for name in (A, B):
        _version(home.datasets, name)
    _deep(home.datasets / A, 1200)                              # empty folders: still a version a publish made
    os.symlink(B, home.datasets / "latest")
    try:
        assert versions.made_by_publish(home.datasets / A) is None
        notes: list[str] = []
        assert versions.apply_retention(home, 1, notes) == [A]
        assert notes == []
        assert sorted(os.listdir(home.datasets)) == [B, "latest"]
    finally:
        _undeep(home.datasets / A, 1200)
        _undeep(home.datasets / f".deleting-{A}", 1200)


def test_a_deep_leftover_deleting_folder_is_swept(tmp_path: Path) -> None:
    home = _home(tmp_path)
    hidden = home.datasets / f".deleting-{A}"
    hidden.mkdir()
    _deep(hidden, 1200)
    try:
        assert versions.sweep_stale(home.datasets, ".partial-x") == []
        assert not hidden.exists()
    finally:
        _undeep(hidden, 1200)


# --------------------------------------------------------------------------- files an operating system drops
def test_system_files_do_not_keep_a_version_but_a_users_file_or_a_link_does(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _version(home.datasets, A, extra=(".DS_Store", "train/.DS_Store", "train/._a.tar", "Thumbs.db", "desktop.ini",
                                     "train/.nfs0000000000a1b2c300000001"))
    _version(home.datasets, B, extra=("notes.txt", ".DS_Store"))
    folder = _version(home.datasets, C)
    os.symlink(tmp_path, folder / "train" / ".DS_Store")      # a link at such a name is no system file
    _version(home.datasets, "2023-03-04-0123456789")
    os.symlink("2023-03-04-0123456789", home.datasets / "latest")
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == [A]
    assert sorted(os.listdir(home.datasets)) == sorted([B, C, "2023-03-04-0123456789", "latest"])
    assert len(notes) == 2
    assert any(B in note and "notes.txt" in note for note in notes)
    assert any(C in note and "symbolic link" in note for note in notes)
    for name in (".DS_Store", "._x", "Thumbs.db", "desktop.ini", ".nfs0000000000a1b2c300000001"):
        assert versions.SYSTEM_FILE.fullmatch(name), name
    for name in ("notes.txt", "DS_Store", ".nfs", ".nfsnotes", ".nfs0123abcd", "._", "thumbs.db.bak"):
        assert not versions.SYSTEM_FILE.fullmatch(name), name


# --------------------------------------------------------------------------- planted names in notes
def test_retention_and_sweep_notes_show_planted_names_escaped(tmp_path: Path) -> None:
    home = _home(tmp_path)
    planted = "x\x1b[2J\npublish: version 2099-01-01-0123456789 verified\u202e\n"
    folder = _version(home.datasets, A)
    (folder / "train" / planted).write_bytes(b"x")
    _version(home.datasets, B)
    os.symlink(B, home.datasets / "latest")
    (home.datasets / f".partial-{planted}").mkdir()
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == []
    notes += versions.sweep_stale(home.datasets, ".partial-x")
    assert len(notes) == 2
    for note in notes:
        assert "\x1b" not in note and "\n" not in note and "\u202e" not in note
        assert "x\\x1b[2J\\x0apublish: version" in note


# --------------------------------------------------------------------------- a linked datasets/ or cache/ folder
def test_temp_files_are_swept_through_linked_datasets_and_cache_folders_only(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    disk = tmp_path / "disk"
    (disk / "datasets" / "pickapic").mkdir(parents=True)
    (disk / "cache" / "train_jpg_sha256").mkdir(parents=True)
    os.symlink(disk / "datasets", home.root / "datasets")
    os.symlink(disk / "cache", home.root / "cache")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    mine = [disk / "datasets" / ".pickapic.history.0123456789ab.tmp",
            disk / "datasets" / ".pickapic.switched.0123456789ab.tmp",
            disk / "cache" / ".published_split_pairs.json.0123456789ab.tmp",
            disk / "cache" / "train_jpg_sha256" / ".part-000003-0123456789abcdef.parquet.0123456789ab.tmp"]
    others = [disk / "datasets" / ".pickapic.notes.0123456789ab.tmp", disk / ".pickapic.history.0123456789ab.tmp"]
    for path in mine + others:
        path.write_text("half a file")
    planted = disk / "cache" / ".published_split_pairs.json.abcdefabcdef.tmp"
    os.symlink(victim, planted)                                                           # never followed
    notes = sweep_temp_files(home)
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in others)
    assert victim.read_text() == "mine" and os.path.islink(planted)
    assert len(notes) == 1 and "not a regular file" in notes[0]
    (disk / "datasets" / ".pickapic.history.0123456789ab.tmp").write_text("x")   # sweep_temps alone: no link followed
    assert sweep_temps(home.root / "datasets", r"pickapic\.history") == ([], [])
    assert sweep_temps(home.root / "datasets", r"pickapic\.history", follow=True)[0] == [
        ".pickapic.history.0123456789ab.tmp"]
