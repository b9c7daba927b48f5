"""Review rev38f (hostile): fix38d (an unchanged night verifies ``latest`` from the files and sizes of the publish's
first walk, ``VersionWalks.present``; the history that cannot be written) and fix38g (``VersionWalks``' marks by
name relative to open folders, ``SYSTEM_FILE``).

Defects found (each a strict xfail below):

1. ``test_a_file_of_latest_truncated_while_the_publish_waits_is_caught``: the marks ``VersionWalks.present`` rests
   on are the version's folders, its manifest and the AppleDouble files read, never the files themselves, so a file
   of ``latest`` truncated or extended in place (same inode, same name: no folder's times change) after
   ``VersionWalks.prime`` is verified with the size the walk read before. ``prime`` runs before the publish takes
   the home's ingest lock, and the verification comes after it (and after the sources are hashed): the window
   includes the wait for an ingest, unbounded. Seen: a shard truncated from 10,240 to 5,120 bytes inside
   ``source_digests`` (under the ingest lock); the unchanged night returned ``reused=True`` and went on to its switch
   and retention, while ``verify_version`` of the same folder right after raised "has 5120 bytes, manifest says
   10240". The code before fix38d (a fresh walk: ``present=None``, the control test below) refused it with
   ``ManifestMismatch`` and switched nothing, deleted nothing. README section 6 says the verification uses that walk's
   files "while nothing the verdict rests on changed"; a size comparison rests on the files' sizes, which are not
   among the marks. (``verify_checksums = true`` still catches it: the sha256 is of the bytes there now.)

2. ``test_a_history_another_account_owns_in_a_sticky_folder_keeps_the_retention_order``: fix38d's note says the
   switch is refused where the history cannot be written, because the record of switched versions beside it cannot
   be written either. In a sticky, world-writable ``datasets/`` (1777, a shared home) holding a history of another
   account, the history's rename fails with EPERM but the record of switched versions (this account's, or made
   afresh) is written: the switch goes on with the history left naming only the older versions, and retention takes
   every version it does not name for the oldest. Seen as uid 65534, history (root's) naming A, B, ``latest`` -> B:
   two publishes C then D, ``keep_versions = 3``: ``list_versions`` = [C, D, A, B], retention deleted [C], the
   version ``latest`` named until that night, and kept the older A and B: the order the history exists to keep
   (README section 6). The note's remedy, "make .../datasets writable for this account", names a folder that is
   writable (mode 1777): the cause, another account's file in a sticky folder, is not said. Needs root (a second
   account), as ``tests/unit/test_fix38d.py``'s EACCES test.

Attacked and found clean (no test): descriptor counts (``/proc/self/fd``) around ``VersionWalks.__call__`` and
``present`` after a deep folder removed, a folder replaced by a file or a link, the version moved away, a folder made
0000 and a folder moved out and back (6 before, 6 after each); each of those changes gave ``present`` None (walked
again). A folder moved away and another put at its name changes its parent's mtime/ctime, a mark, whatever inode the
new one gets; a version folder replaced changes its own ctime.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats.dataset import HISTORY_HEADER, history_file, list_versions, read_manifest, record_switch, switch_latest
from formats.home import DataHome
from pipelines.publish import manifest, versions
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from tests.accounts import NOBODY_ID, as_another_account, shared_folder

CONFIG = PublishConfig(workers=1, fsync=False)


def _truncate_a_shard_under_the_ingest_lock(monkeypatch: pytest.MonkeyPatch, version: Path) -> tuple[str, int]:
    """Truncate one shard of ``version`` to half its size in place (same inode) while the publish hashes its sources,
    under the ingest lock, after ``VersionWalks.prime`` walked it; (the shard, its size in the manifest)."""
    files = read_manifest(version)["files"]
    shard = sorted(rel for rel in files if rel.endswith(".tar"))[0]
    real = version_module.source_digests

    def digests_then_truncate(*args, **kwargs):
        with open(version / shard, "r+b") as handle:
            handle.truncate(files[shard]["bytes"] // 2)
        return real(*args, **kwargs)

    monkeypatch.setattr(version_module, "source_digests", digests_then_truncate)
    return shard, files[shard]["bytes"]


def test_a_file_of_latest_truncated_while_the_publish_waits_is_caught(fast_tmp: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)          # as if every version settled long ago
    home = make_home(fast_tmp / "home", num_rankings=40, seed=381)
    first = publish_dataset(home, CONFIG)
    shard, size = _truncate_a_shard_under_the_ingest_lock(monkeypatch, first.path)
    with pytest.raises(manifest.ManifestMismatch, match=f"{shard} has {size // 2} bytes, manifest says {size}"):
        publish_dataset(home, CONFIG)                                       # the same inputs: latest's version


def test_control_a_fresh_walk_catches_the_truncated_file(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same attack with the verification walking afresh (``present`` None, as before fix38d): refused."""
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    monkeypatch.setattr(versions.VersionWalks, "present", lambda self, folder: None)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=381)
    first = publish_dataset(home, CONFIG)
    shard, size = _truncate_a_shard_under_the_ingest_lock(monkeypatch, first.path)
    with pytest.raises(manifest.ManifestMismatch, match=f"{shard} has {size // 2} bytes, manifest says {size}"):
        publish_dataset(home, CONFIG)


def _make_version(datasets: Path, name: str) -> None:
    """A version as a publish makes one, with no files: its folder and a manifest naming it."""
    (datasets / name).mkdir()
    (datasets / name / "manifest.json").write_text(json.dumps({"version": name, "files": {}}))


@pytest.fixture()
def shared_tmp():
    """A folder every account may enter (the forked child of ``as_another_account`` writes in it)."""
    with shared_folder("rev38f-") as base:
        yield base


def test_a_history_another_account_owns_in_a_sticky_folder_keeps_the_retention_order(shared_tmp: Path) -> None:
    home = DataHome(shared_tmp / "home")
    datasets = home.datasets
    datasets.mkdir(parents=True)
    os.chmod(datasets.parent, 0o1777)                   # a shared home's datasets/: sticky, world-writable
    a, b, c, d = (f"2026-01-0{day}-{letter * 10}" for day, letter in zip(range(1, 5), "abcd"))
    for name in (a, b):
        _make_version(datasets, name)
    os.symlink(b, datasets / "latest")
    history_file(datasets).write_bytes(HISTORY_HEADER + f"{a}\n{b}\n".encode())   # this (the test's) account's
    if os.geteuid() == 0:
        for top, _, files in os.walk(datasets):
            for path in (top, *(os.path.join(top, name) for name in files)):
                os.lchown(path, NOBODY_ID, NOBODY_ID)  # the account whose publishes these are
        os.lchown(datasets / "latest", NOBODY_ID, NOBODY_ID)
    found: dict = {}
    owner = os.lstat(history_file(datasets)).st_uid

    def publish_c_then_d() -> None:
        for name in (c, d):
            _make_version(datasets, name)
            try:          # fix38n: a history that cannot be written refuses the switch (an OSError), as a publish does
                record_switch(datasets, name, fsync=False)
            except OSError as exc:
                found.setdefault("refused", []).append(str(exc))
                continue
            switch_latest(datasets, name, fsync=False)
        if "refused" in found:   # fix38n: a publish whose switch is refused runs no retention; latest left on b
            assert len(found["refused"]) == 2 and os.readlink(datasets / "latest") == b, found
            assert all(f"another account (uid {owner})" in text and "sticky" in text for text in found["refused"]), found
            assert sorted(os.listdir(datasets.parent)) == ["pickapic", "pickapic.history"], found   # no temporary file
            assert history_file(datasets).read_bytes() == HISTORY_HEADER + f"{a}\n{b}\n".encode()
            return
        found["order"] = list_versions(home)
        found["deleted"] = versions.apply_retention(home, 3)
        assert c in os.listdir(datasets), found       # the version latest named until this night is kept
        assert found["deleted"] in ([a], []), found   # the oldest goes first, or nothing (the switch refused)

    as_another_account(publish_c_then_d)
