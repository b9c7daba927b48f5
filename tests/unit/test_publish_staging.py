"""The names a publish owns beside the versions, and the order retention keeps them in (December 2026).

``latest`` must be a symbolic link (a folder or a file there is refused before any work); a version's name,
its ``.partial-<version>`` staging and the folders in it are never followed through a link; the publish
history (``datasets/pickapic.history``) orders versions for retention, whatever the clock said; a version
published again, or resumed from an interrupted run, ends with this run's modes. Complements
``test_hostile_dec4d_publish.py``. Every home is built under ``tmp_path``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_publish_fixtures import export_days, history_home, publish_until, write_split_pairs

from formats.dataset import LATEST, history_file, list_versions, switch_latest
from pipelines import faults
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import publish_dataset

CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _modes(version: Path) -> dict[str, int]:
    return {str(p.relative_to(version)): stat.S_IMODE(os.lstat(p).st_mode) for p in [version, *version.rglob("*")]}


def _with_umask(mask: int, run):
    old = os.umask(mask)
    try:
        return run()
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- `latest` that is not a link
def test_a_folder_at_latest_is_refused_before_any_work_and_leaves_no_temp_link(tmp_path: Path) -> None:
    """``latest`` copied as a folder (rsync without -l): refused up front with what to do, nothing written;
    it used to fail after the version was in place with a bare IsADirectoryError and a ``.latest.<pid>.tmp``."""
    home, full = history_home(tmp_path / "h")
    first = publish_until(home, full, last_day=export_days(full)[-2])
    latest = home.datasets / LATEST
    os.unlink(latest)
    os.mkdir(latest)
    (latest / "notes.txt").write_text("a copy")
    before = sorted(os.listdir(home.datasets))

    with pytest.raises(ValueError, match=r"latest is a folder, not the symbolic link.*rsync without -l.*move it aside"):
        publish_until(home, full)

    assert sorted(os.listdir(home.datasets)) == before == sorted([first.version, LATEST])
    assert _listing(latest) == {"notes.txt": b"a copy"}
    with pytest.raises(ValueError, match="is a folder"):
        switch_latest(home.datasets, first.version, fsync=False)
    assert not [name for name in os.listdir(home.datasets) if name.startswith(".latest")]


def test_a_regular_file_at_latest_is_refused_not_replaced(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    home.datasets.mkdir(parents=True)
    (home.datasets / LATEST).write_text("someone's notes")

    with pytest.raises(ValueError, match=r"latest is a regular file, not the symbolic link"):
        publish_until(home, full)

    assert (home.datasets / LATEST).read_text() == "someone's notes"
    assert sorted(os.listdir(home.datasets)) == [LATEST]


# --------------------------------------------------------------------------- names that are the tool's
def test_a_link_at_the_version_name_is_refused_not_switched_to(tmp_path: Path) -> None:
    """A version folder moved away and a link left at its name: the old code found the manifest through the
    link and pointed ``latest`` at it (a version outside the home)."""
    home, full = history_home(tmp_path / "h")
    version = publish_until(home, full).version
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(home.datasets / version, elsewhere / version)
    os.unlink(home.datasets / LATEST)
    os.symlink(elsewhere / version, home.datasets / version)
    before = _listing(elsewhere)

    with pytest.raises(RuntimeError, match=r"is a symbolic link to .*not a version a publish made"):
        publish_until(home, full)

    assert not os.path.lexists(home.datasets / LATEST) and _listing(elsewhere) == before


def test_a_stray_link_named_like_staging_is_left_and_reported(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    publish_until(home, full, last_day=export_days(full)[-2])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    os.symlink(victim, home.datasets / ".partial-someone")
    (home.datasets / ".deleting-someone").write_text("notes")

    nightly = publish_until(home, full)

    assert os.readlink(home.datasets / LATEST) == nightly.version
    assert os.readlink(home.datasets / ".partial-someone") == str(victim) and _listing(victim) == {"keep": b"mine"}
    assert (home.datasets / ".deleting-someone").read_text() == "notes"
    assert len(nightly.notes) == 2 and all("left as it is" in note for note in nightly.notes)


def test_retention_renames_past_a_stray_link_at_its_deleting_name(tmp_path: Path) -> None:
    """Retention moves a version to ``.deleting-<version>`` before deleting it: a link already there is
    neither renamed over nor followed."""
    home, full = history_home(tmp_path / "h", days=3)
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=1)
    first = publish_until(home, full, config, last_day=days[-2])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    os.symlink(victim, home.datasets / f".deleting-{first.version}")

    nightly = publish_until(home, full, config)

    assert nightly.deleted_versions == [first.version] and list_versions(home) == [nightly.version]
    assert os.path.islink(home.datasets / f".deleting-{first.version}") and _listing(victim) == {"keep": b"mine"}


# --------------------------------------------------------------------------- the publish history
def test_a_version_published_again_with_the_clock_behind_counts_as_the_newest(tmp_path: Path) -> None:
    """A roll-back (the inputs of an older version published again) makes that version the newest for
    retention, whatever its folder's mtime says."""
    home, full = history_home(tmp_path / "h", days=3)
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=2)
    a = publish_until(home, full, config, last_day=days[-2])
    b = publish_until(home, full, config)
    again = publish_until(home, full, config, last_day=days[-2])
    assert again.reused and again.version == a.version
    old = os.lstat(b.path).st_mtime_ns - 86_400 * 10**9
    os.utime(a.path, ns=(old, old))                        # the roll-back ran with the clock a day behind
    assert list_versions(home) == [b.version, a.version]

    c = publish_until(home, full, config, last_day=days[-3])
    assert c.deleted_versions == [b.version] and list_versions(home) == [a.version, c.version]


def test_a_missing_or_foreign_history_falls_back_to_mtime_and_is_not_replaced(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h", days=3)
    days = export_days(full)
    first = publish_until(home, full, last_day=days[-2])
    history = history_file(home.datasets)
    assert history == home.root / "datasets" / "pickapic.history" and first.version in history.read_text()
    history.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file")
    os.symlink(victim, history)                             # not a history this tool wrote

    second = publish_until(home, full)

    assert os.readlink(history) == str(victim) and victim.read_text() == "someone's file"
    assert len(second.notes) == 1 and "not a publish history this tool wrote" in second.notes[0]
    assert list_versions(home) == [first.version, second.version]     # by mtime
    history.unlink()
    history.write_text("garbage\n")
    assert list_versions(home) == [first.version, second.version]
    assert publish_until(home, full).notes and history.read_text() == "garbage\n"


# --------------------------------------------------------------------------- modes
def test_a_version_published_again_copies_files_it_shares_and_leaves_the_older_version_its_mode(
        tmp_path: Path) -> None:
    """Published again under umask 022, a version written under 077 gets 0644 / 0755; its files hard-linked
    into an older version are copied (a chmod would open the older version's files to every account)."""
    home, full = history_home(tmp_path / "h")
    days = export_days(full)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, verify_checksums=True)
    older = _with_umask(0o077, lambda: publish_until(home, full, config, last_day=days[-2]))
    newer = _with_umask(0o077, lambda: publish_until(home, full, config))
    assert newer.shards_linked > 0
    older_modes = _modes(older.path)

    again = _with_umask(0o022, lambda: publish_until(home, full, config))

    assert again.reused and again.version == newer.version
    assert set(_modes(newer.path).values()) == {0o644, 0o755}
    assert _modes(older.path) == older_modes and set(older_modes.values()) == {0o600, 0o700}
    assert all(os.lstat(p).st_nlink == 1 for p in newer.path.rglob("*") if p.is_file())
    verify_version(newer.path, checksums=True)


def test_a_staging_resumed_under_another_umask_ends_with_this_runs_modes(tmp_path: Path, monkeypatch) -> None:
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)

    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        _with_umask(0o077, lambda: publish_dataset(home, CONFIG))
    monkeypatch.undo()

    report = _with_umask(0o022, lambda: publish_dataset(home, CONFIG))

    assert report.shards_resumed > 0 and set(_modes(report.path).values()) == {0o644, 0o755}
