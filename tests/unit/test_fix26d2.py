"""Fix of review rev26b's retention defect (tests/unit/test_hostile_rev26b.py): the publish's retention deleted
the dataset version a training of `latest` was reading.

A reader of a version holds a shared ``flock`` on the version's folder for as long as it reads
(``formats.dataset.hold_for_reading``: the trainer, the evaluation and leaderboard, ``pickapic query`` and
``export``); retention (``pipelines.publish.versions.apply_retention``) takes an exclusive one without waiting on
each version it would delete, keeps a version a reader holds (a note; deleted by a later publish once free), and
renames the version out of the way with its lock held, so a reader that resolved it just before finds it gone,
never half removed.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import make_home, write_split_pairs

from formats import dataset
from formats.home import DataHome
from pipelines.publish import versions
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import apply_retention
from training.synthetic import write_synthetic_version

SIZES = {"train": 4, "validation": 2, "test": 2, "validation_unique": 2, "test_unique": 2}
NAMES = ("2023-03-01-aaaaaaaaaa", "2023-03-02-bbbbbbbbbb", "2023-03-03-cccccccccc")


def _versions(home: DataHome, names=NAMES) -> list[Path]:
    """Synthetic versions (as a publish writes them: retention deletes them) switched to in order: `latest` is
    the last."""
    paths = []
    for seed, name in enumerate(names):
        path = home.datasets / name
        write_synthetic_version(path, SIZES, image_px=8, shards_per_split=1, seed=seed, link_latest=False)
        assert dataset.record_switch(home.datasets, name, fsync=False) is None
        dataset.switch_latest(home.datasets, name, fsync=False)
        paths.append(path)
    return paths


def _listing(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_retention_keeps_a_held_version_and_deletes_it_once_free(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    old, middle, _ = _versions(home)
    before = _listing(old)
    with dataset.reading_version(home, old.name) as held:
        assert held == old.resolve()
        notes: list[str] = []
        assert apply_retention(home, 1, notes) == [middle.name]      # the free one goes; the held one stays
        assert any(f"version {old.name} kept: in use by a reader" in note for note in notes), notes
        assert _listing(old) == before                               # whole, and nothing written into it
        assert dataset.list_versions(home) == [old.name, NAMES[2]]
        assert not [p for p in home.datasets.iterdir() if p.name.startswith(".deleting-")]
    notes = []
    assert apply_retention(home, 1, notes) == [old.name] and notes == []   # free now: the next night deletes it
    assert dataset.list_versions(home) == [NAMES[2]]


def test_a_lock_held_by_latest_does_not_keep_more_than_keep_versions(tmp_path: Path) -> None:
    """A reader of `latest` costs nothing extra: retention never deletes `latest`, and the held version is
    `latest`'s."""
    home = DataHome(tmp_path / "home")
    paths = _versions(home)
    with dataset.reading_version(home) as held:
        assert held == paths[2].resolve()
        assert apply_retention(home, 1) == [NAMES[0], NAMES[1]]


def _shared_home() -> tuple[Path, DataHome]:
    """A home in a folder every account can reach (pytest's tmp_path is under a 0700 folder of root's)."""
    top = Path(tempfile.mkdtemp(prefix="fix26d2-"))
    os.chmod(top, 0o755)
    return top, DataHome(top / "home")


def _open_path_to_others(path: Path, top: Path) -> None:
    for folder in [path, *path.parents]:
        os.chmod(folder, 0o755)      # read and search only: the other account writes nothing
        if folder == top:
            break


def _nobody_ids() -> tuple[int, int] | None:
    """The ``nobody`` account's uid and gid where this test can switch to it (run as root); else None, and the
    reader is another process of this account."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam("nobody")
    return account.pw_uid, account.pw_gid


def test_a_reader_under_another_account_holds_a_version_with_flock(tmp_path: Path) -> None:
    """The README's recipe for other tools, `flock -s DATASET/versions/ID cmd`, run as another account that may
    only read the dataset: retention keeps the version while the command runs."""
    top, home = _shared_home()
    try:
        old, middle, _ = _versions(home)
        _open_path_to_others(old, top)
        ids = _nobody_ids()
        before = _listing(old)
        reader = subprocess.Popen(["flock", "--shared", str(old), "sh", "-c", "echo held; read line"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                                  **({"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}))
        try:
            assert reader.stdout.readline() == b"held\n", reader.stderr.read()
            notes: list[str] = []
            assert apply_retention(home, 1, notes) == [middle.name]
            assert old.is_dir() and any("in use by a reader" in note for note in notes), notes
        finally:
            reader.communicate(b"done\n", timeout=60)
        assert reader.returncode == 0
        assert _listing(old) == before
        assert apply_retention(home, 1) == [old.name]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_projects_reader_lock_works_for_an_account_that_may_only_read(tmp_path: Path) -> None:
    """``hold_for_reading`` as another account (``nobody`` where the test runs as root) that may read the
    version but write nothing in the datasets folder: it takes the lock (not the unlocked fallback), and
    retention keeps the version until that reader is done."""
    top, home = _shared_home()
    try:
        old, middle, _ = _versions(home)
        _open_path_to_others(old, top)
        ids = _nobody_ids()
        status_r, status_w = os.pipe()
        release_r, release_w = os.pipe()
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child: the reader
            code = 1
            try:
                os.close(status_r)
                os.close(release_w)
                if ids:
                    os.setgroups([])
                    os.setgid(ids[1])
                    os.setuid(ids[0])
                fd = dataset.hold_for_reading(old)
                os.write(status_w, b"held" if isinstance(fd, int) else b"unlocked")
                os.read(release_r, 1)              # until the parent says so
                code = 0
            except BaseException as exc:   # noqa: BLE001 - reported to the parent
                os.write(status_w, f"{type(exc).__name__}: {exc}".encode())
            finally:
                os._exit(code)
        os.close(status_w)
        os.close(release_r)
        try:
            assert os.read(status_r, 4096) == b"held"
            notes: list[str] = []
            assert apply_retention(home, 1, notes) == [middle.name]
            assert old.is_dir() and any("in use by a reader" in note for note in notes), notes
        finally:
            os.close(release_w)
            os.close(status_r)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert apply_retention(home, 1) == [old.name]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_latest_deleted_between_resolving_and_locking_is_resolved_again(tmp_path: Path, monkeypatch) -> None:
    """A reader of `latest` that resolved a version which the night's publish then switched away from and its
    retention deleted, before the reader locked it, reads the new `latest`; one that named the version itself
    gets a clear error. Neither reads a half-removed tree."""
    home = DataHome(tmp_path / "home")
    first = _versions(home, NAMES[:1])[0]
    resolve = dataset.resolve_version
    calls: list[Path] = []

    def resolve_then_publish(home_: DataHome, version: str | None = None) -> Path:
        path = resolve(home_, version)
        calls.append(path)
        if len(calls) == 1:    # the night's publish lands between resolving and locking
            _versions(home, NAMES[1:2])
            assert apply_retention(home, 1) == [first.name]
        return path

    monkeypatch.setattr(dataset, "resolve_version", resolve_then_publish)
    with dataset.reading_version(home) as path:
        assert path == (home.datasets / NAMES[1]).resolve() and (path / dataset.MANIFEST_FILE).is_file()
    assert calls == [first.resolve(), path]


    def publish_after(home_: DataHome, version: str | None = None) -> Path:
        path = resolve(home_, version)
        _versions(home, NAMES[2:])
        assert apply_retention(home, 1) == [NAMES[1]]
        return path

    monkeypatch.setattr(dataset, "resolve_version", publish_after)
    gone = (f"dataset version {NAMES[1]} .* was deleted .* nothing was read from it; read `latest` or a version "
            f"that is there \\(available: {NAMES[2]}\\)")
    with pytest.raises(dataset.VersionGone, match=gone), dataset.reading_version(home, NAMES[1]):
        pass


def test_a_reader_waiting_while_retention_deletes_its_version_finds_it_gone(tmp_path: Path) -> None:
    """A reader that opened the version just before retention locked it waits for the removal, then finds the
    version gone (VersionGone), never a half-removed tree."""
    home = DataHome(tmp_path / "home")
    old, _, _ = _versions(home)
    notes: list[str] = []
    free, fd = versions._lock_for_deletion(old, notes)    # what retention holds while it deletes `old`
    assert free and isinstance(fd, int) and notes == []
    got: list[object] = []

    def reader() -> None:
        try:
            got.append(dataset.hold_for_reading(old))
        except dataset.VersionGone as exc:
            got.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert versions._delete_version(home.datasets, old.name, notes) and notes == []
    finally:
        os.close(fd)
        thread.join(60)
    assert len(got) == 1 and isinstance(got[0], dataset.VersionGone), got
    assert "nothing was read from it" in str(got[0]) and not old.exists()


def test_a_data_dir_through_latest_is_locked_at_its_version(tmp_path: Path) -> None:
    """``reading_data_dir`` (the trainer's, the evaluation's) locks the version `latest` reaches, not the link."""
    home = DataHome(tmp_path / "home")
    paths = _versions(home, NAMES[:2])
    for given in (home.datasets, dataset.latest_link(home), paths[1]):
        with dataset.reading_data_dir(given) as path:
            assert path == paths[1].resolve()
            probe = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)


def test_without_flock_on_folders_retention_deletes_and_readers_read(tmp_path: Path, monkeypatch) -> None:
    """A file system with no flock on folders (some NFS and FUSE mounts): readers read unlocked and retention
    deletes as before, with a note; nothing fails."""
    home = DataHome(tmp_path / "home")
    old, middle, latest = _versions(home)

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with dataset.reading_version(home, old.name) as path:
        assert path == old.resolve()
        notes: list[str] = []
        assert apply_retention(home, 1, notes) == [old.name, middle.name]
    assert any("without checking for readers" in note for note in notes), notes
    assert dataset.list_versions(home) == [latest.name]


CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=10**6,
                       max_shard_bytes=10**12, keep_versions=1)


def _up_to(table: pa.Table, last) -> pa.Table:
    return table.filter(pc.less_equal(table.column("dt"), pa.scalar(last, pa.date32())))


def test_a_publish_never_fails_on_a_held_version_and_stays_equal_to_from_scratch(tmp_path: Path) -> None:
    """Nightly publishes with keep_versions = 1 while a reader holds the first night's version: the second night
    keeps it (a note in the report, and on stderr), the third deletes it once free; the incremental version is
    byte for byte the one a from-scratch publish of the same inputs writes."""
    home = make_home(tmp_path / "inc", num_rankings=90, seed=3, days=3)
    full = pq.read_table(home.table_file("split_pairs"))
    days = sorted(set(full.column("dt").to_pylist()))
    write_split_pairs(home, _up_to(full, days[0]))
    first = publish_dataset(home, CONFIG)
    with dataset.reading_version(home) as held:
        assert held == first.path
        write_split_pairs(home, _up_to(full, days[1]))
        second = publish_dataset(home, CONFIG)
        assert second.deleted_versions == [] and dataset.resolve_version(home) == second.path
        assert [n for n in second.notes if "in use by a reader" in n] and \
            [n for n in second.metadata()["notes"] if first.version in n]
        verify_version(first.path, checksums=True)
    write_split_pairs(home, full)
    third = publish_dataset(home, CONFIG)
    assert third.deleted_versions == [first.version, second.version]
    assert dataset.list_versions(home) == [third.version]
    scratch = make_home(tmp_path / "scratch", num_rankings=90, seed=3, days=3)
    write_split_pairs(scratch, full)
    clean = publish_dataset(scratch, CONFIG)
    assert clean.version == third.version
    assert _digests(clean.path) == _digests(third.path)


def _digests(version: Path) -> dict[str, bytes]:
    return {p.relative_to(version).as_posix(): p.read_bytes() for p in sorted(version.rglob("*")) if p.is_file()}
