"""Hostile review (December 5) of the key owner pins' re-seed: a version a publish left without switching ``latest``
to it was never published, so its keys must not be pinned; a retained version whose split folder is a link (not
followed) or cannot be listed must not be recorded as covered by the pins, and the build says so."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
from splits_fixtures import pair_row, publish_splits, write_pairs
from test_hostile_rev15b import _others
from test_splits_key_owners import CFG, USERS, _kept, _night, _pins, _publish

from formats import dataset
from formats.home import DataHome
from pipelines.splits import coverage
from pipelines.splits.assign import build_splits, normalize_prompt

P = "a lighthouse in a storm"


def _switched(home: DataHome, name: str) -> None:
    """The fixture's publish with the publish history the publish stage writes just before switching ``latest``."""
    home.datasets.mkdir(parents=True, exist_ok=True)
    assert dataset.record_switch(home.datasets, name, fsync=False) is None
    _publish(home, name)


def _record(home: DataHome) -> dict:
    return json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])


def test_a_version_left_unswitched_by_a_crashed_publish_is_not_pinned(tmp_path):
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    base = _others()
    _night(home, base)
    _switched(home, "2023-03-05-00000000a1")
    _night(home, base + [pair_row(1, te, P, "p1", "p2", day=1)])      # P kept in test by this build
    assert _kept(home)["1_0"] == "test"
    # the publish of that build writes its version in place and dies before the history and `latest` switch
    publish_splits(home, "2023-03-06-00000000a2", switch=False)
    assert dataset.list_versions(home) == ["2023-03-06-00000000a2", "2023-03-05-00000000a1"]
    # the test user is banned, a train user types P: P was never published, nothing holds it out of train
    report = _night(home, base + [pair_row(2, tr, P + "!", "q1", "q2", day=2)]).metadata()
    assert ("prompt", normalize_prompt(P)) not in _pins(home), report["key_owners_update"]
    assert _kept(home).get("2_0") == "train"
    assert _record(home)["versions"] == ["2023-03-05-00000000a1"]
    # lost pins: the re-seed reads the published versions only
    home.table_file("split_key_owners").unlink()
    logs: list[str] = []
    write_pairs(home, base + [pair_row(2, tr, P + "!", "q1", "q2", day=2)])
    report = build_splits(home, CFG, log=logs.append).metadata()
    assert report["key_owners_update"] == "sidecars" and report["key_owners_published_versions_read"] == 1
    assert ("prompt", normalize_prompt(P)) not in _pins(home)
    assert _record(home)["versions"] == ["2023-03-05-00000000a1"]
    assert any("2023-03-06-00000000a2" in line and "never switched" in line for line in logs), logs


def _three_versions(home: DataHome) -> None:
    """a1, a2 (P published in test), a3 (the test user banned: P not in it), each switched to."""
    te = USERS["test"][0]
    base = _others()
    _night(home, base)
    _switched(home, "2023-03-05-00000000a1")
    _night(home, base + [pair_row(1, te, P, "p1", "p2", day=1)])
    _switched(home, "2023-03-06-00000000a2")
    _night(home, base)
    _switched(home, "2023-03-07-00000000a3")


def _reseed_leaves_uncovered(home: DataHome, folder) -> list[str]:
    """Lose the pins and build: the re-seed must not record a2 as covered, and must say why, naming ``folder``.
    Returns the build's log lines."""
    home.table_file("split_key_owners").unlink()
    logs: list[str] = []
    write_pairs(home, _others())
    report = build_splits(home, CFG, log=logs.append).metadata()
    assert report["key_owners_update"] == "sidecars"
    assert "2023-03-06-00000000a2" not in _record(home)["versions"]
    assert any(str(folder) in line and "not recorded" in line for line in logs), logs
    return logs


def test_a_retained_version_whose_split_folder_is_a_link_is_not_recorded_as_covered(tmp_path):
    home = DataHome(tmp_path / "home")
    _three_versions(home)
    folder = home.datasets / "2023-03-06-00000000a2" / "test"
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    os.symlink(moved, folder)
    logs = _reseed_leaves_uncovered(home, folder)
    # the next build reads the sidecars again (and says so again) rather than count the version as pinned
    logs.clear()
    report = build_splits(home, CFG, log=logs.append).metadata()
    assert report["key_owners_update"] == "sidecars"
    assert any(str(folder) in line for line in logs), logs
    # the folder put back: read, pinned and recorded
    os.unlink(folder)
    shutil.move(moved, folder)
    report = build_splits(home, CFG, log=logs.append).metadata()
    assert report["key_owners_update"] == "sidecars"
    assert _pins(home)[("prompt", normalize_prompt(P))][0] == "test"
    assert "2023-03-06-00000000a2" in _record(home)["versions"]
    assert build_splits(home, CFG, log=logs.append).metadata()["key_owners_update"] == "up to date"


def test_a_retained_version_whose_split_folder_cannot_be_listed_is_not_recorded_as_covered(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    _three_versions(home)
    folder = home.datasets / "2023-03-06-00000000a2" / "test"
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    real_glob = type(folder).glob
    monkeypatch.setattr(type(folder), "glob", lambda self, pattern: [] if self == folder else real_glob(self, pattern))
    _reseed_leaves_uncovered(home, folder)
