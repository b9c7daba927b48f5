"""Fixes of review rev25d (nightly publish, retention, crash recovery): the version ``latest`` names by an absolute
link, retention of only what a publish made and never failing on what it cannot remove, the identity of a complete
folder at the new version's name, and the sweep of the temporary files a killed publish left outside its version."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from test_publish_fixtures import export_days, history_home, publish_until

from formats.dataset import (
    HISTORY_HEADER,
    latest_version,
    read_history,
    read_switched,
    record_switch,
    switch_latest,
    write_names,
)
from formats.files import sweep_temps
from formats.home import DataHome
from pipelines.publish import versions
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import sweep_temp_files

A, B, C, D = "2023-03-01-0123456789", "2023-03-02-0123456789", "2023-03-03-0123456789", "2023-03-04-0123456789"
FAST = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5)


def _version(datasets: Path, name: str, manifest_version: str | None = None, extra: str | None = None) -> Path:
    """A complete version as a publish lays it out: one listed file and a manifest naming the folder."""
    folder = datasets / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    manifest = {"version": manifest_version or name, "files": {"train/a.tar": {"bytes": 1, "sha256": "x"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if extra:
        (folder / extra).write_text("a user's notes\n")
    return folder


def _home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    return home


# --------------------------------------------------------------------------- the version `latest` names
def test_latest_version_reads_relative_and_absolute_links_inside_the_datasets_folder_only(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    _version(datasets, A)
    outside = tmp_path / "elsewhere" / A
    outside.mkdir(parents=True)
    via = tmp_path / "via"                           # the home reached through a linked folder
    os.symlink(datasets, via)
    link = datasets / "latest"
    assert latest_version(datasets) is None          # no link
    for target, expected in [(A, A), (f"./{A}", A), (f"{A}/", A), (str(datasets / A), A), (str(via / A), A),
                             (f"../pickapic/{A}", A), (str(outside), None), (f"../../elsewhere/{A}", None),
                             (str(datasets), None), (".", None), ("..", None)]:
        os.symlink(target, link)
        assert latest_version(datasets) == expected, target
        os.unlink(link)


def test_an_absolute_latest_link_outside_the_datasets_folder_is_still_no_version(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    _version(datasets, A)
    _version(datasets, B)
    outside = tmp_path / "elsewhere" / B            # the same name outside: not this home's version
    outside.mkdir(parents=True)
    os.symlink(str(outside), datasets / "latest")
    assert record_switch(datasets, C, fsync=False) is None
    assert read_history(datasets) == [C]            # B (outside) not recorded as the last switched to
    _version(datasets, C)
    switch_latest(datasets, C, fsync=False)
    assert read_switched(datasets) == {A, B, C}     # the record began with every present version
    assert os.readlink(datasets / "latest") == C


def test_an_absolute_link_to_a_version_is_recorded_and_replaced_by_the_relative_link(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    for name in (A, B, C):
        _version(datasets, name)
    write_names(datasets.parent / "pickapic.switched",
                b"# pickapic switched versions: every version `latest` was switched to (present ones), sorted\n",
                [A], fsync=False)
    write_names(datasets.parent / "pickapic.history", HISTORY_HEADER, [B, A], fsync=False)
    os.symlink(str(datasets / B), datasets / "latest")          # rolled back by hand
    assert record_switch(datasets, C, fsync=False) is None
    assert read_history(datasets) == [A, B, C]                   # B is the last switched to before C
    switch_latest(datasets, B, fsync=False)                      # the same version: the link made relative
    assert os.readlink(datasets / "latest") == B
    assert read_switched(datasets) == {A, B}


# --------------------------------------------------------------------------- retention
def test_retention_deletes_only_versions_a_publish_made_and_counts_only_those(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for name in (A, B, C):
        _version(home.datasets, name)
    _version(home.datasets, "2099-01-01-0123456789", manifest_version=A)     # a copy of A under another name
    _version(home.datasets, "2000-01-01-0123456789", extra="train/my-notes.txt")   # a version a user wrote into
    write_names(home.datasets.parent / "pickapic.history", HISTORY_HEADER,
                ["2000-01-01-0123456789", A, B, C], fsync=False)
    os.symlink(C, home.datasets / "latest")
    notes: list[str] = []
    assert versions.apply_retention(home, 2, notes) == [A]
    assert sorted(p.name for p in home.datasets.iterdir()) == sorted(
        ["2000-01-01-0123456789", "2099-01-01-0123456789", B, C, "latest"])
    assert (home.datasets / "2000-01-01-0123456789" / "train" / "my-notes.txt").is_file()
    assert len(notes) == 2
    assert any("2099-01-01-0123456789" in n and f"names version {A!r}" in n for n in notes)
    assert any("2000-01-01-0123456789" in n and "train/my-notes.txt" in n for n in notes)


def test_a_version_with_a_link_inside_is_not_deleted_and_nothing_is_followed(tmp_path: Path) -> None:
    home = _home(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    folder = _version(home.datasets, A)
    os.unlink(folder / "train" / "a.tar")
    os.symlink(victim / "keep.txt", folder / "train" / "a.tar")         # a listed name, but a link
    _version(home.datasets, B)
    os.symlink(B, home.datasets / "latest")
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == []
    assert (victim / "keep.txt").read_text() == "mine" and folder.is_dir()
    assert len(notes) == 1 and "symbolic link" in notes[0]


def test_what_retention_cannot_remove_is_left_with_a_note_and_swept_later(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path)
    for name in (A, B, C):
        _version(home.datasets, name)
    os.symlink(C, home.datasets / "latest")
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def refusing_rename(src, dst, *args, **kwargs):
        if Path(src).name == A:                        # another account's version on a shared home
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_rename(src, dst, *args, **kwargs)

    def busy_rmtree(path, *args, **kwargs):
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(versions.os, "rename", refusing_rename)
    monkeypatch.setattr(versions.shutil, "rmtree", busy_rmtree)
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == [B]
    assert (home.datasets / A / "manifest.json").is_file()                 # left in place, still a version
    hidden = versions.staging_root(home.datasets) / f".deleting-{B}"   # hidden beside the versions (not among them)
    assert hidden.is_dir() and not (home.datasets / f".deleting-{B}").exists()      # not removed whole
    assert len(notes) == 2 and "next publish" in notes[0] and "next publish" in notes[1]
    notes = versions.sweep_stale(hidden.parent, ".partial-x")              # still busy: left, a note, no raise
    assert len(notes) == 1 and "Device or resource busy" in notes[0] and "tries again" in notes[0]
    assert hidden.is_dir()
    monkeypatch.setattr(versions.shutil, "rmtree", real_rmtree)             # the reader closed its file
    assert versions.sweep_stale(hidden.parent, ".partial-x") == []
    assert not hidden.exists()
    monkeypatch.setattr(versions.os, "rename", real_rename)
    assert versions.apply_retention(home, 1, []) == [A]                     # and the next night deletes A


# --------------------------------------------------------------------------- a complete folder at the version's name
def test_a_folder_whose_manifest_is_not_this_versions_is_refused_and_left(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    folder = _version(datasets, B, manifest_version=A)
    expected = {"format": "f", "version": B, "sources": {"split_pairs": {"days": ["2023-03-02"], "rows": 3}}}
    with pytest.raises(versions.StagingRefused, match="not this version's.*version.*names version"):
        versions.check_version_identity(folder, expected)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **expected, "sources": {
        "split_pairs": {"days": ["2023-03-02"], "rows": 4}}}))               # same name, other sources
    with pytest.raises(versions.StagingRefused, match="its sources differ"):
        versions.check_version_identity(folder, expected)
    (folder / "manifest.json").write_text(json.dumps({**manifest, **expected}))
    versions.check_version_identity(folder, expected)                       # this version's: accepted
    assert (folder / "train" / "a.tar").read_bytes() == b"a"


def test_a_version_restored_from_a_backup_under_its_own_name_is_still_published_again(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=3, rankings=60)
    first = publish_until(home, table, FAST)
    backup = tmp_path / "backup"
    shutil.copytree(home.datasets / first.version, backup)
    shutil.rmtree(home.datasets / first.version)
    shutil.copytree(backup, home.datasets / first.version)
    again = publish_until(home, table, FAST)
    assert (again.version, again.reused) == (first.version, True)
    assert os.readlink(home.datasets / "latest") == first.version


# --------------------------------------------------------------------------- the temporary files of a killed publish
def test_sweep_temps_removes_only_the_temporary_files_of_the_given_names(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    dead = [".published_split_pairs.json.0123456789ab.tmp", ".pickapic.history.abcdef012345.tmp"]
    kept = [".published_split_pairs.json.tmp", ".published_split_pairs.json.0123456789abc.tmp",
            ".other.json.0123456789ab.tmp", "published_split_pairs.json", ".pickapic.history.my-backup.tmp"]
    for name in dead + kept:
        (folder / name).write_text("x")
    os.symlink(victim, folder / ".pickapic.history.000000000000.tmp")     # a link at such a name: never followed
    (folder / ".pickapic.history.111111111111.tmp").mkdir()               # a folder: left
    removed, notes = sweep_temps(folder, r"published_split_pairs\.json|pickapic\.history")
    assert sorted(removed) == sorted(dead)
    assert sorted(os.listdir(folder)) == sorted(kept + [".pickapic.history.000000000000.tmp",
                                                        ".pickapic.history.111111111111.tmp"])
    assert victim.read_text() == "mine" and len(notes) == 2
    linked = tmp_path / "linked"                                           # a linked folder is never swept
    os.symlink(folder, linked)
    (folder / dead[0]).write_text("x")
    assert sweep_temps(linked, r"published_split_pairs\.json") == ([], [])
    assert (folder / dead[0]).exists()
    assert sweep_temps(tmp_path / "absent", "x") == ([], [])


def test_the_publish_sweeps_its_own_temporary_files_and_nothing_else(tmp_path: Path) -> None:
    home = _home(tmp_path)
    mine = {
        home.cache / "train_jpg_sha256" / ".part-000003-0123456789abcdef.parquet.0123456789ab.tmp",
        home.datasets.parent / ".pickapic.history.0123456789ab.tmp",
        home.datasets.parent / ".pickapic.switched.0123456789ab.tmp",
        home.cache / ".published_split_pairs.json.0123456789ab.tmp",
        home.cache / "contract_counts" / ".shard_samples.parquet.0123456789ab.tmp",
        home.cache / "contract_columns" / ".shard_samples.parquet.0123456789ab.tmp",
    }
    others = {   # other stages' temporary files (written under their own locks), a user's file
        home.cache / ".split_ledger_versions.json.0123456789ab.tmp",
        home.cache / "tmp" / ".x.parquet.0123456789ab.tmp",
        home.cache / "train_jpg_sha256" / ".notes.txt.0123456789ab.tmp",
        home.datasets.parent / ".pickapic.notes.0123456789ab.tmp",
        home.datasets.parent / "other" / ".pickapic.history.0123456789ab.tmp",
    }
    for path in mine | others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half a file")
    assert sweep_temp_files(home) == []
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in others)


def test_a_publish_after_a_kill_at_every_temp_outside_the_version_leaves_none(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=3, rankings=60)
    days = export_days(table)
    publish_until(home, table, FAST, days[1])
    leftovers = [home.cache / "train_jpg_sha256" / ".part-000009-0123456789abcdef.parquet.0123456789ab.tmp",
                 home.datasets.parent / ".pickapic.switched.0123456789ab.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    report = publish_until(home, table, FAST)
    assert not any(path.exists() for path in leftovers)
    assert report.notes == []
