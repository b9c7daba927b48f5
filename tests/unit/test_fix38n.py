"""Fix38n: review rev38f's two defects of fix38d.

- ``VersionWalks.present`` gave the sizes the walk of ``prime`` read (before the ingest lock's wait): a file of
  ``latest`` truncated or extended in place since was verified with its old size. The walk's names are kept, each file
  is ``lstat`` afresh by name in its open folder when asked: the listings alone are skipped.
- A publish history that could not be written (any OSError but a folder not synced after) was a note, and the
  switch went on; it now refuses the switch (an OSError naming the history, its cause and what to do: another
  account's file in a sticky folder by its uid), and retention deletes nothing while the history does not end with
  the version ``latest`` names.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from test_publish_fixtures import contracts_at, make_home

from formats import dataset as dataset_module
from formats.dataset import HISTORY_HEADER, history_file, latest_version, read_history, record_switch, switched_file
from formats.home import DataHome
from pipelines.publish import manifest, versions
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset

CONFIG = PublishConfig(workers=1, fsync=False)


# --- (1) the files of latest as they are when it is verified -------------------------------------------------------

def test_present_gives_each_file_as_it_is_now_without_walking_again(fast_tmp: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3801)
    first = publish_dataset(home, CONFIG)
    files = manifest.read_manifest(first.path)["files"]
    walks = versions.VersionWalks()
    walks.prime(home)
    walked = walks.walked
    shard = sorted(rel for rel in files if rel.endswith(".tar"))[-1]
    sidecar = sorted(rel for rel in files if "/" in rel and not rel.endswith(".tar"))[0]
    with open(first.path / shard, "r+b") as handle:            # in place: same inode, no folder's times change
        handle.truncate(files[shard]["bytes"] - 1)
    with open(first.path / sidecar, "ab") as handle:
        handle.write(b"x")
    now = walks.present(first.path)
    assert now is not None and set(now) == set(files) and walks.walked == walked     # the names kept, not walked
    assert now[shard].st_size == files[shard]["bytes"] - 1 and now[sidecar].st_size == files[sidecar]["bytes"] + 1
    assert all(now[rel].st_size == files[rel]["bytes"] for rel in files if rel not in (shard, sidecar))
    with pytest.raises(manifest.ManifestMismatch) as caught:
        manifest.verify_version(first.path, present=now)
    assert caught.value.paths == sorted([shard, sidecar])
    with pytest.raises(manifest.ManifestMismatch) as walking:                       # as a walk of it finds
        manifest.verify_version(first.path)
    assert walking.value.paths == caught.value.paths and str(walking.value) == str(caught.value)


def test_present_is_none_where_a_kept_file_cannot_be_looked_at(fast_tmp: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed file gone between the check of its folder and its ``lstat`` (simulated: its folder's marks pass):
    None, so the verification walks and names it."""
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3802)
    first = publish_dataset(home, CONFIG)
    walks = versions.VersionWalks()
    walks.prime(home)
    why, marks, names = walks.seen[os.fspath(first.path)]
    walks.seen[os.fspath(first.path)] = (why, marks, [*names, "train/gone.tar"])
    assert walks.present(first.path) is None
    walks.seen[os.fspath(first.path)] = (why, marks, [*names, "nowhere/gone.tar"])      # a folder no mark names
    assert walks.present(first.path) is None
    walks.seen[os.fspath(first.path)] = (why, marks, names)
    assert walks.present(first.path) is not None


def test_an_unchanged_night_with_latest_intact_is_still_verified_from_the_walk(fast_tmp: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The neighbour behaviour kept: an unchanged night walks latest's version once (the reuse sources' walk)."""
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3803)
    first = publish_dataset(home, CONFIG)
    walked: list[str] = []
    inner = versions._walk
    monkeypatch.setattr(versions, "_walk", lambda folder: walked.append(Path(folder).name) or inner(folder))
    again = publish_dataset(home, CONFIG)
    assert again.reused and again.version == first.version and walked == [first.version]


# --- (2) a history that cannot be written refuses the switch -----------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EPERM])
def test_a_publish_whose_history_cannot_be_written_switches_nothing(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    code: int) -> None:
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3804)
    first = publish_dataset(home, CONFIG)
    history_before = history_file(home.datasets).read_bytes()
    switched_before = switched_file(home.datasets).read_bytes()
    real = dataset_module.write_names

    def failing(path, header, names, fsync):
        if path == history_file(home.datasets):
            raise OSError(code, os.strerror(code))
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", failing)
    contracts_at(monkeypatch, "64.0.0")
    with pytest.raises(OSError, match="`latest` was not switched") as refused:
        publish_dataset(home, CONFIG)
    assert refused.value.errno == code and refused.value.filename == str(history_file(home.datasets))
    assert os.strerror(code) in str(refused.value) and "publish again" in str(refused.value)
    assert latest_version(home.datasets) == first.version
    assert history_file(home.datasets).read_bytes() == history_before
    assert switched_file(home.datasets).read_bytes() == switched_before         # nothing recorded as switched
    assert first.path.is_dir()                                                   # nothing deleted
    monkeypatch.setattr(dataset_module, "write_names", real)
    second = publish_dataset(home, CONFIG)                   # once it can be written: the version left in place
    assert second.reused and latest_version(home.datasets) == second.version
    assert read_history(home.datasets) == [first.version, second.version]


def test_the_note_names_another_accounts_history_in_a_sticky_folder(fast_tmp: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen by an account that owns neither the history nor the sticky folder (its uid given by ``geteuid``: the
    kernel's answer, EPERM, stands in): whose file it is, by uid, and who may remove it; a folder without the sticky
    bit, or this account's history, gets the plain remedy."""
    datasets = fast_tmp / "datasets" / "pickapic"
    datasets.mkdir(parents=True)
    path = history_file(datasets)
    path.write_bytes(HISTORY_HEADER)
    os.chmod(datasets.parent, 0o1777)
    owner = os.lstat(path).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)
    text = dataset_module._history_remedy(errno.EPERM, path)
    assert f"another account (uid {owner})" in text and "sticky (mode 1777)" in text and f"remove {path}" in text
    os.chmod(datasets.parent, 0o777)
    assert dataset_module._history_remedy(errno.EPERM, path) == f"make {datasets.parent} writable for this account"
    os.chmod(datasets.parent, 0o1777)
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert dataset_module._history_remedy(errno.EPERM, path) == f"make {datasets.parent} writable for this account"
    assert dataset_module._history_remedy(errno.ENOSPC, path) == "free some space"


def test_a_history_written_whose_folder_was_not_synced_stays_a_note(fast_tmp: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = fast_tmp / "datasets" / "pickapic"
    (datasets / "2026-01-01-aaaaaaaaaa").mkdir(parents=True)

    def unsynced(path, header, names, fsync):
        dataset_module.write_bytes_atomic(path, header + "".join(f"{n}\n" for n in names).encode())
        raise dataset_module.RecordNotSynced(errno.EIO, os.strerror(errno.EIO), str(path.parent))

    monkeypatch.setattr(dataset_module, "write_names", unsynced)
    note = record_switch(datasets, "2026-01-01-aaaaaaaaaa", fsync=True)
    assert note is not None and "was written but its folder was not synced" in note
    assert read_history(datasets) == ["2026-01-01-aaaaaaaaaa"]


# --- retention deletes nothing while the history does not end with latest's version ---------------------------

def _versions(home: DataHome, names: list[str], history: list[str], latest: str) -> None:
    home.datasets.mkdir(parents=True)
    for name in names:
        (home.datasets / name).mkdir()
        (home.datasets / name / "manifest.json").write_text(json.dumps({"version": name, "files": {}}))
    os.symlink(latest, home.datasets / "latest")
    history_file(home.datasets).write_bytes(HISTORY_HEADER + "".join(f"{n}\n" for n in history).encode())


NAMES = [f"2026-01-0{day}-{letter * 10}" for day, letter in zip(range(1, 5), "abcd")]


def test_retention_deletes_nothing_while_the_history_does_not_end_with_latest(fast_tmp: Path) -> None:
    home = DataHome(fast_tmp / "home")
    _versions(home, NAMES, NAMES[:2], NAMES[3])
    notes: list[str] = []
    assert versions.apply_retention(home, 2, notes) == []
    assert sorted(os.listdir(home.datasets)) == sorted([*NAMES, "latest"])
    assert any("retention deleted nothing" in note and NAMES[3] in note for note in notes), notes


def test_retention_goes_on_where_the_history_ends_with_latest_or_is_missing(fast_tmp: Path) -> None:
    home = DataHome(fast_tmp / "home")
    _versions(home, NAMES, NAMES, NAMES[3])
    assert versions.apply_retention(home, 2) == NAMES[:2]
    other = DataHome(fast_tmp / "other")
    _versions(other, NAMES, NAMES, NAMES[3])
    history_file(other.datasets).unlink()                       # no history: by mtime, as before it existed
    for day, name in enumerate(NAMES, start=1):
        os.utime(other.datasets / name, (day * 1e9, day * 1e9))
    assert versions.apply_retention(other, 3) == NAMES[:1]
