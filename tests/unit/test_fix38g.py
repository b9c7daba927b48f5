"""Fix38g: what review rev38a (``tests/unit/test_hostile_rev38a.py``) noticed in ``pipelines.publish.versions``.

- ``SYSTEM_FILE`` took any ``.nfs<hex>`` name for an NFS client's silly-renamed file, so a user's ``.nfscafe`` or
  ``.nfsbad`` planted in a version counted as an operating system's file and was deleted with the version by
  retention. Only the name the Linux NFS client writes is one now (``fs/nfs/unlink.c`` ``nfs_sillyrename``:
  ``".nfs" "%0*llx%0*x"`` with the 16 hex digits of the file id and the 8 of a counter): ``.nfs`` and 24 lowercase
  hex digits. Anything else keeps the version, with the usual note.
- ``VersionWalks`` kept each mark with its path relative to the version: a chain of folders ``d`` deep kept
  O(d^2) bytes for the publish, and where the chain was deeper than PATH_MAX every check failed (ENAMETOOLONG) and
  the version was walked again each time. A mark is now (the index of its folder's mark, its name, its ``lstat``),
  checked relative to open folders as ``_walk`` walks them.
"""
from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import pytest
from test_fix25e import A, B, _deep, _home, _version

from formats.trees import remove_tree
from pipelines.publish import versions
from pipelines.publish.versions import VersionWalks, made_by_publish

REAL = ".nfs000000000012abcd0000001f"      # file id 0x12abcd, counter 31, as the Linux client names it


# --- SYSTEM_FILE: only the NFS client's own name --------------------------------------------------------------

@pytest.mark.parametrize("name", [".nfscafe", ".nfsbad", ".nfs0123abcd", ".nfs000000000012abcd",
                                  ".nfs000000000012ABCD0000001F", REAL + "0", REAL[:-1], ".nfs00000000001 2abcd0000001"])
def test_a_users_nfs_like_name_keeps_the_version(tmp_path: Path, name: str) -> None:
    home = _home(tmp_path)
    _version(home.datasets, A, extra=(f"train/{name}",))
    _version(home.datasets, B)
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == []
    assert (home.datasets / A / "train" / name).read_bytes() == b"\x00\x00\x00\x01Bud1"
    assert len(notes) == 1 and A in notes[0] and name in notes[0] and "does not list" in notes[0]
    assert "not a version a publish made" in notes[0]


def test_the_nfs_clients_own_name_is_still_deleted_with_the_version(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _version(home.datasets, A, extra=(f"train/{REAL}", ".nfsffffffffffffffffffffffff"))
    _version(home.datasets, B)
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == [A] and notes == []
    assert not (home.datasets / A).exists()


def test_the_nfs_rule_is_the_linux_clients_format() -> None:
    fileid, counter = 0xFEDCBA9876543210, 0xFFFFFFFF          # the widest each field prints
    assert versions.SYSTEM_FILE.fullmatch(".nfs%0*x%0*x" % (16, fileid, 8, counter))
    assert versions.SYSTEM_FILE.fullmatch(".nfs%0*x%0*x" % (16, 1, 8, 1))
    for name in (".nfs", ".nfs" + "g" * 24, ".nfs.0001a2b3.04d24.4"):
        assert not versions.SYSTEM_FILE.fullmatch(name), name


# --- VersionWalks' marks: relative to open folders ------------------------------------------------------------

def _deep_version(top: Path, depth: int) -> Path:
    """A complete version holding one chain of ``depth`` empty folders ``d/d/...`` (and its listed file)."""
    home = _home(top)
    version = _version(home.datasets, A)
    _deep(version, depth)
    return version


def _kept_bytes(walks: VersionWalks, version: Path) -> int:
    """What one walk of ``version`` leaves held (its marks, in ``walks.seen``), traced by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert walks(version) is None
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_deep_chains_marks_are_kept_in_bytes_linear_in_its_depth(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """900 and 1,800 folders deep (both within PATH_MAX, so each verdict was kept before too): the marks kept for
    the publish grow with the number of folders, not with the sum of their paths' lengths (before: 1.5 MB and
    4.6 MB, ~2.5 kB a folder at 1,800 and three times as much for twice the depth)."""
    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)
    kept = {}
    for depth in (900, 1800):
        version = _deep_version(tmp_path / str(depth), depth)
        try:
            walks = VersionWalks()
            kept[depth] = _kept_bytes(walks, version)
            assert len(walks.seen) == 1 and walks.walked == 1
            assert walks(version) is None and walks.walked == 1        # given again, not walked again
        finally:
            remove_tree(version)
    assert kept[1800] < 2.3 * kept[900], kept
    assert kept[1800] < 1200 * 1800, kept


def test_a_chain_deeper_than_path_max_is_walked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,200 folders ``d/`` deep: 4,400 characters below the version, beyond PATH_MAX (4,096). Each check by full
    path failed with ENAMETOOLONG, so the version was walked at every call while its marks were held; now checked
    relative to open folders, the verdict is given again; a change at the bottom of the chain is still seen."""
    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)
    version = _deep_version(tmp_path, 2200)
    try:
        walks = VersionWalks()
        assert walks(version) is None and walks(version) is None and walks(version) is None
        assert walks.walked == 1
        fd = os.open(version, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(2200):                    # to the bottom, relative to open folders
            deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        try:
            with open(os.open("notes.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as handle:
                handle.write("mine")
        finally:
            os.close(fd)
        fresh = made_by_publish(version)
        assert fresh is not None and "notes.txt" in fresh
        assert walks(version) == fresh and walks.walked == 2
    finally:
        remove_tree(version)


def test_a_folder_in_the_chain_swapped_for_a_link_is_not_followed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The check enters folders without following a link: ``train`` replaced by a link to a copy of it (same names)
    is seen, and the version walked again (the link refused)."""
    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)
    home = _home(tmp_path)
    version = _version(home.datasets, A)
    (version / "train" / "deeper").mkdir()
    walks = VersionWalks()
    assert walks(version) is None and walks(version) is None and walks.walked == 1
    os.rename(version / "train", tmp_path / "train")
    os.symlink(tmp_path / "train", version / "train")
    fresh = made_by_publish(version)
    assert fresh is not None and walks(version) == fresh and walks.walked == 2
