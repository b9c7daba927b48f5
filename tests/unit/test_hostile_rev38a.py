"""Hostile review rev38a: fix37c's ``pipelines.publish.versions.VersionWalks`` (each version walked once a publish,
``prime`` before the home's ingest lock, the verdict given again to the reuse sources and retention while the
``lstat`` of the folder, its manifest, every folder in it and every AppleDouble file read are unchanged), its
operating-system-file allowance (``SYSTEM_FILE``, ``system_file``, in ``made_by_publish`` and ``verify_version``) and
the iterative ``_walk``.

No defect filed: nothing demonstrated lets a cached verdict differ from a fresh walk on a POSIX file system, so no
test here is an xfail. What was run (ext4 ``/`` and tmpfs ``/dev/shm``, ``SETTLE_S`` set as if the version settled
long ago; each mutation made after the first verdict, then the cached verdict compared with ``made_by_publish``):
a listed file replaced by rename; a file added then removed; a user's file added and its folder's mtime put back with
``os.utime``; a listed file replaced by a symbolic link, by a FIFO; a hard link to a listed file planted; ``.DS_Store``
replaced by a link; an AppleDouble file rewritten in place (same size) and its mtime put back; a subfolder swapped
for a copy holding a user's file, its times put back; the manifest rewritten in place (same size, one file dropped,
mtime put back). Every one: the cached verdict equals the fresh walk's (ctime cannot be put back without root
changing the clock, and every name operation changes its folder's mtime and ctime, as POSIX requires). The same
swap made during a real publish (between ``prime`` and retention) keeps the version. The tests below pin those
results so a later weakening of the marks (mtime alone, folders not marked) fails.

The ``SYSTEM_FILE`` allowance: a ``.DS_Store`` / ``Thumbs.db`` that is a link, a FIFO, a device or a folder holding
another file keeps the version (``made_by_publish``) and differs (``verify_version``, the FIFO never opened); a huge
``.DS_Store`` is deleted with the version (a name macOS owns); a ``._x`` is accepted only with the AppleDouble magic,
a link at that name never followed (``O_NOFOLLOW``).

Noticed, not filed (see the report):
- marks cost ~700 bytes a folder (20,000 empty folders: 13.9 MB kept for the publish) and a path string each, so a
  chain of folders ``d`` deep keeps O(d^2) bytes (3,000 deep: 11.1 MB kept, the walk's own peak 11.8 MB; the walk's
  stack already holds that much while it runs); and where the chain is deeper than PATH_MAX, ``_unchanged``'s lstat by
  full path fails (ENAMETOOLONG), so that version is walked again each time while its marks are held for nothing;
- a file system whose folders' times do not follow their entries (some FUSE object-store mounts; an NFS client's
  attribute cache for ``acdirmin``..``acdirmax`` seconds for a change made from another host) would keep a stale
  "made by a publish" verdict: not demonstrable here (no FUSE library, no NFS), and the publish's own walk reads
  through the same caches.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_fix37c import _version
from test_publish_fixtures import make_home

from formats.dataset import MANIFEST_FILE
from formats.files import APPLE_DOUBLE
from pipelines.publish.config import PublishConfig
from pipelines.publish.versions import VersionWalks, made_by_publish


def _keep_times(path: Path):
    info = os.lstat(path)
    return lambda: os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _add_and_put_times_back(v: Path) -> None:
    back = _keep_times(v / "train")
    (v / "train" / "notes.txt").write_text("mine")
    back()


def _listed_file_to_link(v: Path) -> None:
    os.unlink(v / "train" / "a.json")
    os.symlink("/etc/passwd", v / "train" / "a.json")


def _listed_file_to_fifo(v: Path) -> None:
    os.unlink(v / "b.txt")
    os.mkfifo(v / "b.txt")


def _hard_link_planted(v: Path) -> None:
    os.link(v / "b.txt", v / "train" / "second.txt")


def _ds_store_to_link(v: Path) -> None:
    os.unlink(v / ".DS_Store")
    os.symlink("/etc", v / ".DS_Store")


def _apple_double_rewritten_times_back(v: Path) -> None:
    back = _keep_times(v / "train" / "._a.json")
    with open(v / "train" / "._a.json", "r+b") as handle:
        handle.write(b"PAR1")
    back()


def _folder_swapped_times_back(v: Path) -> None:
    back = _keep_times(v / "train")
    copy = v.parent / "train-copy"
    shutil.copytree(v / "train", copy, symlinks=True)
    (copy / "user.txt").write_text("mine")
    info = os.lstat(v / "train")
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.rename(v / "train", v.parent / "train-gone")
    os.rename(copy, v / "train")
    back()


def _manifest_same_size_times_back(v: Path) -> None:
    back = _keep_times(v / MANIFEST_FILE)
    size = os.lstat(v / MANIFEST_FILE).st_size
    manifest = json.loads((v / MANIFEST_FILE).read_text())
    del manifest["files"]["b.txt"]
    text = json.dumps(manifest)
    with open(v / MANIFEST_FILE, "r+") as handle:
        handle.write(text + " " * (size - len(text)))
    back()


@pytest.mark.parametrize("change", [_add_and_put_times_back, _listed_file_to_link, _listed_file_to_fifo,
                                    _hard_link_planted, _ds_store_to_link, _apple_double_rewritten_times_back,
                                    _folder_swapped_times_back, _manifest_same_size_times_back])
def test_a_kept_verdict_never_outlives_a_change_that_makes_it_wrong(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     change) -> None:
    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)            # as if the version settled long ago
    version = _version(fast_tmp)
    (version / "train" / "._a.json").write_bytes(APPLE_DOUBLE + bytes(20))
    (version / ".DS_Store").write_bytes(b"\0" * 8)
    walks = VersionWalks()
    assert walks(version) is None and walks(version) is None and walks.walked == 1
    change(version)
    fresh = made_by_publish(version)
    assert fresh is not None                                         # each change makes it no publish's version
    assert walks(version) == fresh and walks.walked == 2


def test_a_subfolder_swapped_with_its_times_during_a_publish_keeps_the_version(
        fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between ``prime`` and retention (while the shards are written), the oldest version's ``train/`` is swapped for
    a copy holding a user's file, the folder's times put back: retention walks it again and keeps it."""
    from pipelines.publish import contracts
    from pipelines.publish import version as module

    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)
    home, contract = make_home(fast_tmp / "home", num_rankings=40, seed=38), contracts.contract_versions()
    published = []
    for shards in ("60.0.0", "61.0.0", "62.0.0"):          # a contract bump a publish: a new version each
        monkeypatch.setattr(module, "_contract_versions", lambda shards=shards: {**contract, "shards": shards})
        if published[1:]:                                     # the third: swapped while its shards are written
            first, real_write = published[0], module.write_shards
            monkeypatch.setattr(module, "write_shards", lambda *a, **k: (_folder_swapped_times_back(first.path),
                                                                         real_write(*a, **k))[1])
        published.append(module.publish_dataset(home, PublishConfig(workers=1, fsync=False, keep_versions=2)))
    first, third = published[0], published[2]
    assert third.deleted_versions == [] and (first.path / "train" / "user.txt").read_text() == "mine"
    assert any(first.version in note and "user.txt" in note for note in third.notes)
