"""The data home's lock files (``formats.locks``): outside the disposable cache, and never written through a link.

The feature stage's day locks, the splits ledger lock and the build lock. Deleting ``cache/`` while a run
holds its lock must not let a second run in; a hard link (or, for the build lock, a symbolic link) of another
program's file at a lock path is refused with a clear error and that file keeps its bytes.
"""
from __future__ import annotations

import os
import shutil

import pytest
from test_features_fixtures import fake_detector, png, write_day

from dagster_project.build import build_lock
from formats.home import DataHome
from formats.locks import LockFileRefused
from pipelines.features.config import STAGING_MARKER, FeaturesConfig
from pipelines.features.stage import DayAlreadyRunning, build_features, day_lock_file, hold_day_lock
from pipelines.splits import assign as splits_assign

DAY = "2023-03-01"


def _features_home(tmp_path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    (home.cache / "raw_image_uids").mkdir(parents=True, exist_ok=True)   # a home's cache, whatever holds the locks
    return home


def test_deleting_the_cache_does_not_let_a_second_run_of_a_day_in(tmp_path):
    """A run of the day (and of a staging folder from the settings) holds its locks; an operator deletes the
    disposable cache; a second run of that day must still fail at once, changing nothing."""
    home = _features_home(tmp_path)
    shared = str(tmp_path / "scratch")
    with hold_day_lock(home, DAY, shared):                  # the first run, in the middle of its Beam stage
        shutil.rmtree(home.cache)                           # "disposable: deleting it changes only speed"
        with pytest.raises(DayAlreadyRunning, match=f"the feature stage of {DAY} is already running"):
            build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
        with pytest.raises(DayAlreadyRunning, match="using the staging folder"):
            with hold_day_lock(home, "2023-03-02", shared):  # another day's run sharing that staging folder
                pass
        assert not home.partition_file("image_features", DAY).exists()
    assert not day_lock_file(home, DAY).is_relative_to(home.cache)
    assert build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector).processed == 2


def _hard_link_another_programs_pid_file(tmp_path, path):
    other = tmp_path / "other-daemon.pid"                   # not created by the tool
    other.write_text("4242\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(other, path)
    return other


def test_a_hard_link_at_a_day_lock_path_is_refused_untouched(tmp_path):
    home = _features_home(tmp_path)
    other = _hard_link_another_programs_pid_file(tmp_path, day_lock_file(home, DAY))
    with pytest.raises(LockFileRefused, match=rf"cannot lock the feature stage of {DAY}: .* has 2 names \(a hard link"):
        build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    assert other.read_text() == "4242\n"
    assert not home.partition_file("image_features", DAY).exists()
    day_lock_file(home, DAY).unlink()                      # removing the name leaves the other file alone
    assert build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector).processed == 2
    assert other.read_text() == "4242\n"


def test_a_hard_link_at_the_ledger_lock_path_is_refused_with_a_clear_error(tmp_path):
    home = DataHome(tmp_path / "home")
    other = _hard_link_another_programs_pid_file(tmp_path, splits_assign.ledger_lock_file(home))
    with pytest.raises(ValueError, match="cannot lock the split ledger: .* has 2 names"):
        with splits_assign.hold_ledger_lock(home):
            pass
    assert other.read_text() == "4242\n"


def test_the_build_lock_is_never_written_through_a_link_or_into_another_file(tmp_path):
    """``.build.lock`` was opened with ``open(.., "a+")``: it followed a symbolic link and truncated whatever
    file was there (a hard link, or notes someone kept under that name)."""
    home = DataHome(tmp_path / "home")
    other = _hard_link_another_programs_pid_file(tmp_path, home.lock_file)
    with pytest.raises(LockFileRefused, match="has 2 names"), build_lock(home):
        pass
    assert other.read_text() == "4242\n"
    home.lock_file.unlink()
    home.lock_file.symlink_to(other)
    with pytest.raises(LockFileRefused, match="symbolic link"), build_lock(home):
        pass
    assert other.read_text() == "4242\n" and home.lock_file.is_symlink()
    home.lock_file.unlink()
    home.lock_file.write_text("notes someone keeps here\n")
    with pytest.raises(LockFileRefused, match="did not write"), build_lock(home):
        pass
    assert home.lock_file.read_text() == "notes someone keeps here\n"
    home.lock_file.write_text("12345")                      # a pid an older build left (no newline): replaced
    with build_lock(home):
        assert home.lock_file.read_text() == f"{os.getpid()}\n"


def test_a_days_run_with_the_default_staging_folder_is_refused_while_another_day_stages_there(tmp_path):
    """``build_features`` took only the day lock for the day's default staging folder, so a run of another day
    given that folder as its staging setting (holding only a lock on that folder) ran beside it, and one run's
    ``reset_dir`` deleted the other's staged files. Every run now takes its staging folder's lock too."""
    home = _features_home(tmp_path)
    staging = home.root / ".staging" / "features" / f"dt={DAY}"     # the other day's run, mid-Beam, stages here
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).touch()
    (staging / "todo.parquet").write_bytes(b"being read by the other day's workers")
    with hold_day_lock(home, "2023-03-02", str(staging)):
        with pytest.raises(DayAlreadyRunning, match=f"using the staging folder {staging} is already running"):
            build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
        assert (staging / "todo.parquet").read_bytes() == b"being read by the other day's workers"
        assert not home.partition_file("image_features", DAY).exists()


def test_one_staging_folder_reached_through_a_linked_folder_takes_one_lock(tmp_path):
    """The staging lock is named after the folder (its real path), not after the spelling given."""
    home = _features_home(tmp_path)
    (tmp_path / "scratch").mkdir()
    os.symlink(tmp_path / "scratch", tmp_path / "scratch-link")
    with hold_day_lock(home, DAY, str(tmp_path / "scratch" / "stage")):
        with pytest.raises(DayAlreadyRunning, match="using the staging folder"):
            with hold_day_lock(home, "2023-03-02", str(tmp_path / "scratch-link" / "stage") + "//"):
                pass
        with hold_day_lock(home, "2023-03-02", str(tmp_path / "scratch" / "other")):   # another folder: runs
            pass


@pytest.mark.parametrize("there", ["a file", "a dangling link"])
def test_something_else_than_a_folder_at_the_locks_folder_is_refused_untouched(tmp_path, there):
    home = _features_home(tmp_path)
    if there == "a file":
        home.locks.write_text("notes\n")
    else:
        os.symlink(tmp_path / "nowhere", home.locks)
    with pytest.raises(LockFileRefused, match=r"cannot lock the feature stage of 2023-03-01: .*\.locks: .*must be a "
                                              r"real folder"):
        build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    with pytest.raises(LockFileRefused, match=r"cannot lock the split ledger: .*\.locks"):
        with splits_assign.hold_ledger_lock(home):
            pass
    assert not (tmp_path / "nowhere").exists()
    if there == "a file":
        assert home.locks.read_text() == "notes\n"
    else:
        assert os.readlink(home.locks) == str(tmp_path / "nowhere")
    assert not home.partition_file("image_features", DAY).exists()


def test_a_home_that_is_a_symbolic_link_keeps_its_locks(tmp_path):
    """A home symlinked to another disk is not refused: only ``.locks`` itself must be a real folder."""
    disk = tmp_path / "disk" / "home"
    disk.mkdir(parents=True)
    home = DataHome(tmp_path / "home")
    os.symlink(disk, home.root)
    with build_lock(home), hold_day_lock(home, DAY), splits_assign.hold_ledger_lock(home):
        assert (disk / ".build.lock").read_text() == f"{os.getpid()}\n"
        assert (disk / ".locks" / f"features-dt={DAY}.lock").read_text() == f"{os.getpid()}\n"


def test_the_publish_lock_never_creates_a_file_through_a_link(tmp_path):
    """The publish lock was ``datasets/pickapic/.publish.lock``, opened with ``open(.., "a+")``: a symbolic link
    planted there made every publish create the file it pointed to, outside the home. It is now
    ``.locks/publish.lock``, opened without following links; a link at that path is refused and its target is
    never created."""
    from pipelines.publish.versions import publish_lock, publish_lock_file

    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside / "old-victim", home.datasets / ".publish.lock")   # the old path: no longer opened
    with publish_lock(home):
        assert publish_lock_file(home).read_text() == f"{os.getpid()}\n"
    assert list(outside.iterdir()) == []
    assert publish_lock_file(home).parent == home.locks
    publish_lock_file(home).unlink()
    os.symlink(outside / "victim", publish_lock_file(home))
    with pytest.raises(LockFileRefused, match="cannot lock the publish stage: .*symbolic link"):
        with publish_lock(home):
            pass
    assert list(outside.iterdir()) == []


def test_a_second_publish_waits_for_the_first_and_says_so(tmp_path):
    """Two processes: the second publish lock is granted only when the first holder exits, and the waiter
    names the holder's pid."""
    import subprocess
    import sys
    import textwrap
    import time

    from pipelines.publish.versions import publish_lock, publish_lock_file

    home = DataHome(tmp_path / "home")
    held, release, done = tmp_path / "held", tmp_path / "release", tmp_path / "done"
    # the holder keeps the lock until the test says "release" (not for a fixed time: on a loaded machine the
    # second publish might only ask after a timed holder had gone, and then it never waits)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from formats.home import DataHome
        from pipelines.publish.versions import publish_lock
        with publish_lock(DataHome(pathlib.Path({str(home.root)!r}))):
            pathlib.Path({str(held)!r}).touch()
            deadline = time.monotonic() + 120
            while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            pathlib.Path({str(done)!r}).touch()       # the last thing it does while holding the lock
        """)], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the first publisher never took the lock"
            time.sleep(0.02)
        said: list[str] = []

        def log(message: str) -> None:
            said.append(message)
            release.touch()                             # told to wait: now the holder may let go

        with publish_lock(home, log=log):
            assert done.exists()                        # granted only once the holder let go
            assert publish_lock_file(home).read_text() == f"{os.getpid()}\n"
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert said[0] == f"waiting for another publish on this home (pid {holder.pid} holds {publish_lock_file(home)})"
    assert said[1].startswith("publish lock taken after ")
