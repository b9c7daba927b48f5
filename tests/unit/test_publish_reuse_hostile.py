"""Reuse of an older version's files when it was tampered with, damaged, or is not this tool's.

Found by two hostile reviews of the nightly publish (December 2026): a symlink put in place of an
old shard (or of a split folder) got a foreign file hard-linked into the new version; a truncated
images snapshot was linked and blessed by the new manifest; reused files kept an earlier run's
umask; retention deleted a backup folder beside the versions; a rotted old shard (or its stats
file) failed every later publish or slipped into it; an unreadable older version crashed the
nightly; a library upgrade would have mixed old and new sidecar bytes.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from test_publish_fixtures import export_days, history_home, make_home, publish_until

from formats.dataset import VERSION_NAME, list_versions
from pipelines import faults
from pipelines.publish import manifest as manifest_module
from pipelines.publish import meta, plan, reuse, shards
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.reuse import NotReusable, link_or_copy
from pipelines.publish.versions import staging_root

DAYS = 4
CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)
CHECKED = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, verify_checksums=True)
NO_REUSE = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, reuse_shards=False)


def _old_tar(version: Path, new_day) -> Path:
    """A train tar of an older day: the next nightly reuses it."""
    day = new_day.strftime("%Y%m%d")
    return sorted(p for p in (version / "train").glob("*.tar") if day not in p.name)[0]


def _inode(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino


# --------------------------------------------------------------------------- link_or_copy itself
def test_link_or_copy_links_own_files_of_this_mode_and_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 100)
    os.chmod(source, 0o644)
    assert link_or_copy(source, tmp_path / "linked", False, size=100, mode=0o644) is True
    assert _inode(tmp_path / "linked") == _inode(source)
    assert link_or_copy(source, tmp_path / "linked", False, size=100, mode=0o644) is True   # a rerun: already there

    # another mode (an earlier run's umask, a chmod): a copy with the mode of this run's new files
    assert link_or_copy(source, tmp_path / "copied", False, size=100, mode=0o640) is False
    assert _inode(tmp_path / "copied") != _inode(source) and (tmp_path / "copied").read_bytes() == b"x" * 100
    assert stat.S_IMODE(os.stat(tmp_path / "copied").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(source).st_mode) == 0o644          # the older file is left as it was

    link = tmp_path / "link.bin"
    link.symlink_to(source)
    for bad, size in ((link, 100), (source, 99), (tmp_path / "absent", None), (tmp_path, None)):
        with pytest.raises(NotReusable):
            link_or_copy(bad, tmp_path / "refused", False, size=size, mode=0o644)
        assert not (tmp_path / "refused").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- foreign files
def test_a_symlink_in_an_older_version_is_not_followed_into_the_new_one(tmp_path: Path) -> None:
    """Someone replaced an old tar by a symlink to a file of their own, of the same size: the nightly
    writes that shard itself instead of linking the foreign file, and its manifest matches (since fix36e it
    links nothing from that version: retention reports it as not a version a publish made)."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    foreign = tmp_path / "someone-elses.tar"
    foreign.write_bytes(b"x" * tar.stat().st_size)
    tar.unlink()
    tar.symlink_to(foreign)
    nightly = publish_until(home, full)
    new_tar = nightly.path / "train" / tar.name
    assert not new_tar.is_symlink() and _inode(new_tar) != _inode(foreign)
    # fix36e: a version with a link inside is no version a publish made (retention says so, and keeps it): no
    # shard is linked from it any more, where its other shards were (tests/unit/test_fix36e.py)
    assert nightly.shards_linked == 0 and nightly.shards_written >= 2
    verify_version(nightly.path, checksums=True)
    assert foreign.read_bytes() == b"x" * len(foreign.read_bytes())       # never written into


def test_an_images_snapshot_that_changed_since_its_version_is_written_again(tmp_path: Path) -> None:
    """A truncated old snapshot, and one changed in place at the same size, are not linked: the new
    version gets a fresh one equal to what a build from scratch writes."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    snapshots = sorted((first.path / "meta" / "images").glob("images-*.parquet"))
    assert len(snapshots) >= 2
    truncated, flipped = snapshots[0], snapshots[1]
    good = {p.name: p.read_bytes() for p in snapshots}
    truncated.write_bytes(good[truncated.name][: len(good[truncated.name]) // 2])
    data = bytearray(good[flipped.name])
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    nightly = publish_until(home, full)
    for name in (truncated.name, flipped.name):
        assert (nightly.path / "meta" / "images" / name).read_bytes() == good[name]
    untouched = snapshots[2:]
    for path in untouched:    # the intact ones are still linked
        assert _inode(nightly.path / "meta" / "images" / path.name) == _inode(path)
    verify_version(nightly.path, checksums=True)


# --------------------------------------------------------------------------- modes
def test_reused_files_get_the_mode_of_the_publish_that_reuses_them(tmp_path: Path) -> None:
    """A version written under umask 077, the nightly under 022: the new version's files are 0644
    (copies, the old 0600 files untouched); the next nightly under 022 links again."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    old = os.umask(0o077)
    try:
        first = publish_until(home, full, last_day=days[-3])
        os.umask(0o022)
        second = publish_until(home, full, last_day=days[-2])
        third = publish_until(home, full)
    finally:
        os.umask(old)
    files = [p for p in second.path.rglob("*") if p.is_file()]
    wrong = sorted(f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(second.path)}" for p in files
                   if stat.S_IMODE(p.stat().st_mode) != 0o644)
    assert not wrong, wrong[:5]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in first.path.rglob("*") if p.is_file())
    # reused (shards_linked counts copies too) but copied, then linked between the two 0644 versions
    assert second.shards_linked > 0 and third.shards_linked > 0
    tar = _old_tar(first.path, days[-2])
    assert (second.path / "train" / tar.name).read_bytes() == tar.read_bytes()
    assert _inode(second.path / "train" / tar.name) != _inode(tar)
    assert _inode(third.path / "train" / tar.name) == _inode(second.path / "train" / tar.name)


# --------------------------------------------------------------------------- retention
def test_retention_and_reuse_only_see_folders_named_as_versions(tmp_path: Path) -> None:
    """A copy of a version kept beside them under another name is not a version: retention leaves it,
    and no publish links from it."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=2)
    first = publish_until(home, full, config, last_day=days[-3])
    backup = home.datasets / "my-backup-of-march"
    shutil.copytree(first.path, backup)                      # keeps the old mtimes
    assert first.version not in [p.name for p in backup.parents]
    second = publish_until(home, full, config, last_day=days[-2])
    third = publish_until(home, full, config)
    assert backup.is_dir() and list_versions(home) == [second.version, third.version]
    assert VERSION_NAME.fullmatch(third.version)
    assert not VERSION_NAME.fullmatch("\uff12023-03-01-0123456789abc"[:len(third.version)])   # a full-width digit
    backup_inodes = {_inode(p) for p in backup.rglob("*") if p.is_file()}
    assert not any(_inode(p) in backup_inodes for p in third.path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- damaged shards
def _rot(path: Path, offset: int = 600) -> None:
    """Bit rot: one byte flipped in place, the size unchanged."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_rotted_older_shard_is_written_again_when_checksums_are_verified(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    _rot(tar)
    checked = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, verify_checksums=True)
    nightly = publish_until(home, full, checked)
    assert nightly.shards_repaired == [f"train/{tar.name[:-4]} from {first.version}"]
    assert nightly.shards_linked > 0 and _inode(nightly.path / "train" / tar.name) != _inode(tar)
    verify_version(nightly.path, checksums=True)
    with pytest.raises(manifest_module.ManifestMismatch, match="does not match its manifest sha256") as caught:
        verify_version(first.path, checksums=True)          # the older version keeps its damage: not ours to change
    assert caught.value.paths == [f"train/{tar.name}"]

    scratch = make_home(tmp_path / "scratch", num_rankings=80, seed=7, days=DAYS)
    fresh = publish_until(scratch, full, checked)
    assert fresh.version == nightly.version
    assert (fresh.path / "train" / tar.name).read_bytes() == (nightly.path / "train" / tar.name).read_bytes()
    assert (fresh.path / "manifest.json").read_bytes() == (nightly.path / "manifest.json").read_bytes()


def test_a_failed_file_that_was_not_linked_still_fails_the_publish(tmp_path: Path, monkeypatch) -> None:
    """Only linked shards are written again: a file this publish wrote that fails its check is an error."""
    home, full = history_home(tmp_path / "h")
    checked = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, verify_checksums=True)
    real = manifest_module.write_manifest

    def then_rot(staging, *args, **kwargs):
        real(staging, *args, **kwargs)
        _rot(sorted((staging / "train").glob("*.tar"))[0])

    monkeypatch.setattr(manifest_module, "write_manifest", then_rot)
    with pytest.raises(manifest_module.ManifestMismatch, match="does not match its manifest sha256"):
        publish_until(home, full, checked)
    assert list_versions(home) == []


def test_a_publish_without_reuse_does_not_resume_shards_an_interrupted_run_linked(tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    publish_until(home, full, last_day=days[-2])

    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        publish_until(home, full)
    monkeypatch.undo()
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    linked = [p for p in staging.rglob("*.tar") if p.stat().st_nlink > 1]
    assert linked
    again = publish_until(home, full, PublishConfig(workers=1, fsync=False, min_shards_per_split=1, reuse_shards=False))
    assert again.shards_linked == 0 and again.shards_resumed > 0       # its own shards resumed, linked ones written
    assert all(p.stat().st_nlink == 1 for p in again.path.rglob("*.tar"))
    verify_version(again.path, checksums=True)


# --------------------------------------------------------------------------- another account's version
def test_an_older_version_this_account_cannot_read_is_not_reused(tmp_path: Path, monkeypatch) -> None:
    """Another account's version under umask 077: its commit markers cannot be opened (EACCES,
    simulated: the tests run as root). Its shards are not reusable; the nightly writes its own."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if str(path).endswith("_stats.json") and str(path).startswith(str(first.path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(shards.os, "open", denied)
    nightly = publish_until(home, full)
    assert nightly.shards_linked == 0 and nightly.shards_written > 0
    verify_version(nightly.path, checksums=True)


# --------------------------------------------------------------------------- library upgrades
def test_another_writer_library_version_reuses_nothing(tmp_path: Path, monkeypatch) -> None:
    """Sidecars name the pyarrow that wrote them: after an upgrade a nightly must not mix old and new
    files, so the version id and every plan digest carry the writer libraries' versions."""
    home, full = history_home(tmp_path / "h")
    first = publish_until(home, full)
    upgraded = plan.WRITERS + " (upgraded)"
    for module in (plan, meta, manifest_module):
        monkeypatch.setattr(module, "WRITERS", upgraded)
    again = publish_until(home, full)
    assert again.version != first.version and again.shards_linked == 0
    assert not any(_inode(p) in {_inode(q) for q in first.path.rglob("*.parquet")}
                   for p in (again.path / "meta" / "images").glob("*.parquet"))
    assert reuse.read_manifest(again.path)["writers"] == upgraded


def _rot_stats_field(stats_path: Path, field: str) -> None:
    """Bit rot in a ``_stats.json``: bit 0 of the last decimal digit of one field's value flipped in
    place ('0'<->'1', '8'<->'9': same size, still valid JSON, a hex digest stays hex; every field that
    _committed_stats checks is intact)."""
    data = bytearray(stats_path.read_bytes())
    text = data.decode()
    start = text.index(f'"{field}": ') + len(f'"{field}": ')
    end = start
    while text[end] not in ",}\n":
        end += 1
    pos = max(i for i in range(start, end) if text[i].isdigit())
    data[pos] ^= 0x01
    stats_path.write_bytes(bytes(data))
    json.loads(stats_path.read_text())      # still parses


def _crash_after_shards(monkeypatch, home, table, config=CONFIG):
    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        publish_until(home, table, config)
    monkeypatch.undo()


# --------------------------------------------------------------------------- found by a second review
def test_a_rotted_shard_linked_by_an_interrupted_run_is_repaired_on_the_rerun(tmp_path: Path, monkeypatch) -> None:
    """An older shard rots; a verified nightly links it and is killed before its verification: the
    rerun resumes the linked (rotted) shard from staging, and repairs it (it did not write it)."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    _rot(tar)
    _crash_after_shards(monkeypatch, home, full, CHECKED)
    again = publish_until(home, full, CHECKED)            # ManifestMismatch here, and on every later rerun
    assert again.shards_repaired


def test_a_rotted_stats_file_of_an_older_shard_does_not_reach_a_verified_nightly(tmp_path: Path) -> None:
    """Bit rot in an older shard's ``_stats.json`` (num_samples 1 bit off, still valid JSON): its
    numbers would go into the new manifest unchecked, so the stats file must have the sha256 its
    version's manifest recorded to be reused; the nightly equals a build from scratch."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    stats_path = tar.with_name(tar.name[:-4] + "_stats.json")
    _rot_stats_field(stats_path, "num_samples")
    nightly = publish_until(home, full, CHECKED)

    scratch = make_home(tmp_path / "scratch", num_rankings=80, seed=7, days=DAYS)
    fresh = publish_until(scratch, full, CHECKED)
    assert fresh.version == nightly.version
    assert (nightly.path / "train" / "sizes.json").read_bytes() == (fresh.path / "train" / "sizes.json").read_bytes()
    assert (nightly.path / "manifest.json").read_bytes() == (fresh.path / "manifest.json").read_bytes()


def test_a_rotted_sha256_in_an_older_stats_file_does_not_fail_every_verified_nightly(tmp_path: Path) -> None:
    """Same rot in the ``sha256`` field: not reused (its sha256 is not the manifest's), so the
    verified nightly does not fail on it, tonight or any night."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    _rot_stats_field(tar.with_name(tar.name[:-4] + "_stats.json"), "sha256")
    nightly = publish_until(home, full, CHECKED)
    verify_version(nightly.path, checksums=True)


def test_reuse_shards_false_writes_shards_an_interrupted_run_copied(tmp_path: Path, monkeypatch) -> None:
    """reuse_shards=false after an interrupted publish writes what that run reused, copies included
    (another umask or account, another file system): a rotted older shard copied by the interrupted
    run does not end up in the version published without reuse."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    tar = _old_tar(first.path, days[-1])
    _rot(tar)

    def cross_device(source, target, **_):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "link", cross_device)
    _crash_after_shards(monkeypatch, home, full)       # undoes both patches
    again = publish_until(home, full, NO_REUSE)
    assert again.shards_linked == 0
    verify_version(again.path, checksums=True)


def test_link_or_copy_checks_size_and_mode_even_when_the_target_is_already_that_inode(tmp_path: Path) -> None:
    """A target already linked to the source (by an interrupted run) is still checked: size, mode."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 100)
    os.chmod(source, 0o644)
    os.link(source, tmp_path / "t")
    with pytest.raises(NotReusable):
        link_or_copy(source, tmp_path / "t", False, size=99, mode=0o644)


def test_link_or_copy_mode_of_a_file_already_linked_from_another_umask(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 100)
    os.chmod(source, 0o644)
    os.link(source, tmp_path / "t")
    link_or_copy(source, tmp_path / "t", False, size=100, mode=0o600)
    assert oct(os.stat(tmp_path / "t").st_mode & 0o777) == oct(0o600)


def test_link_or_copy_leaves_no_temporary_name_when_the_rename_fails(tmp_path: Path) -> None:
    """The link path makes ``.<name>.tmp`` and renames it; a failing rename removes it."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 100)
    os.chmod(source, 0o644)
    target = tmp_path / "out" / "t"
    target.mkdir(parents=True)
    (target / "occupied").write_bytes(b"")            # a non-empty folder where the file goes
    with pytest.raises(OSError):
        link_or_copy(source, target, False, size=100, mode=0o644)
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_split_folder_of_an_older_version_is_not_followed_into_the_new_one(tmp_path: Path) -> None:
    """An older version whose ``train`` folder was replaced by a symlink to a folder elsewhere: no
    file of that folder is linked into the new version (an edit there would edit the published one)."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(first.path / "train", elsewhere / "train")
    (first.path / "train").symlink_to(elsewhere / "train")
    nightly = publish_until(home, full)
    foreign = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in elsewhere.rglob("*") if p.is_file()}
    shared = sorted(str(p.relative_to(nightly.path)) for p in nightly.path.rglob("*")
                    if p.is_file() and (os.lstat(p).st_dev, os.lstat(p).st_ino) in foreign)
    assert not shared, shared[:3]
