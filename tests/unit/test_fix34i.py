"""Fix34i: the defects of review rev34i (``tests/unit/test_hostile_rev34i.py``) and the neighbours of their fixes.

- ``rawzone.hold_staging_fd``: beside its OFD read lock, an export's hold takes a shared ``flock``, which the probe of
  the release before fix34g (an exclusive ``flock`` with ``LOCK_NB``, run here in a child ``python`` verbatim) finds
  taken; the shared ``flock`` waits out such a probe's exclusive one, and is never fatal (an exclusive one that
  stays, or a file system without ``flock``: the OFD lock alone holds the folder for this release); this release's
  probe (a shared ``flock``) still never fails a hold, and sees it; the folder is free once the hold is closed.
- ``export.withdraw_interrupted_exports``: the record folder is opened once, never through a link, and its records
  read through that descriptor: a folder removed, or replaced by a file or a link, after the look is nothing to
  withdraw (no error, nothing behind the link touched); records are still withdrawn as before.

Small homes, in-process calls, real files, real locks, a real child process for the old release's probe.
"""
from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from formats import rawzone
from formats.home import DataHome
from pipelines.appdb import blobs, export
from pipelines.appdb.export import hold_staging, withdraw_interrupted_exports
from tests.unit.test_hostile_rev34i import _OLD_RELEASE_SWEEP

DAY = "2023-03-01"
UIDS = [str(uuid.UUID(int=i + 1)) for i in range(4)]
DEAD = f".dt={DAY}.export-4242-0badc0de"

# the previous release's probe alone, in a child: prints "held" or "free"
_OLD_PROBE = _OLD_RELEASE_SWEEP.split("removed = []")[0] + "print('held' if staging_in_use(sys.argv[1]) else 'free')\n"


def _home(tmp_path: Path) -> DataHome:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    home.raw_logs.mkdir(parents=True)
    return home


def _old_probe(path: Path) -> str:
    run = subprocess.run([sys.executable, "-c", _OLD_PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _flocks(fd: int) -> tuple[bool, bool]:
    """(a shared flock can be taken, an exclusive one can be taken) on another descriptor of fd's folder."""
    out = []
    for kind in (fcntl.LOCK_SH, fcntl.LOCK_EX):
        other = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(other, kind | fcntl.LOCK_NB)
            out.append(True)
        except BlockingIOError:
            out.append(False)
        finally:
            os.close(other)
    return out[0], out[1]


# --- the hold seen by the previous release -------------------------------------------------------------------------

def test_the_previous_releases_probe_sees_a_hold_and_not_a_closed_one(tmp_path: Path) -> None:
    staging = tmp_path / DEAD
    staging.mkdir()
    assert _old_probe(staging) == "free"
    held = hold_staging(staging)
    try:
        assert _old_probe(staging) == "held" and rawzone.staging_in_use(staging)
        assert _flocks(held) == (True, False)        # a shared flock: this release's probe is never refused
    finally:
        os.close(held)
    assert _old_probe(staging) == "free" and not rawzone.staging_in_use(staging)
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _flocks(fd) == (True, True)
    finally:
        os.close(fd)


def test_the_hold_waits_out_an_old_probes_exclusive_flock(tmp_path: Path) -> None:
    staging = tmp_path / DEAD
    staging.mkdir()
    probe = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(probe, fcntl.LOCK_EX)                # an old release's probe at that instant, ending 0.1 s later
    threading.Timer(0.1, os.close, (probe,)).start()
    started = time.monotonic()
    held = hold_staging(staging)
    try:
        assert 0.05 < time.monotonic() - started < rawzone.SHARED_HOLD_RETRY_S
        assert _old_probe(staging) == "held"         # the shared flock was taken after the probe ended
    finally:
        os.close(held)


def test_an_exclusive_flock_that_stays_never_fails_the_hold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rawzone, "SHARED_HOLD_RETRY_S", 0.05)
    staging = tmp_path / DEAD
    staging.mkdir()
    other = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        held = hold_staging(staging)                 # no shared flock to be had: the OFD lock alone holds it
        try:
            assert rawzone.staging_in_use(staging)
        finally:
            os.close(held)
    finally:
        os.close(other)
    assert not rawzone.staging_in_use(staging)


def test_without_flock_the_ofd_hold_alone_holds_the_folder(tmp_path: Path, monkeypatch) -> None:
    real_flock = fcntl.flock

    def no_flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_SH | fcntl.LOCK_NB:
            raise OSError(errno.EOPNOTSUPP, "no flock here (simulated)")
        real_flock(fd, operation)

    staging = tmp_path / DEAD
    staging.mkdir()
    monkeypatch.setattr(fcntl, "flock", no_flock)
    held = hold_staging(staging)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert rawzone.staging_in_use(staging) and _flocks(held) == (True, True)
    finally:
        os.close(held)
    assert not rawzone.staging_in_use(staging)


def test_this_releases_probes_while_held_never_take_what_the_old_probe_looks_for(tmp_path: Path) -> None:
    staging = tmp_path / DEAD
    staging.mkdir()
    held = hold_staging(staging)
    try:
        for _ in range(50):                          # probes leave the hold's shared flock as it was
            assert rawzone.staging_in_use(staging)
        assert _flocks(held) == (True, False) and _old_probe(staging) == "held"
    finally:
        os.close(held)


def test_the_previous_releases_sweep_still_removes_a_dead_staging_folder(tmp_path: Path) -> None:
    raw_logs = tmp_path / "app_logs"
    raw_logs.mkdir()
    dead, live = raw_logs / DEAD, raw_logs / f".dt={DAY}.export-{os.getpid()}-0a1b2c3d"
    dead.mkdir()
    live.mkdir()
    held = hold_staging(live)
    try:
        old = time.time() - 600
        for path in (dead, live):
            os.utime(path, (old, old))
        run = subprocess.run([sys.executable, "-c", _OLD_RELEASE_SWEEP, str(raw_logs)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [DEAD] and not dead.exists() and live.is_dir()
    finally:
        os.close(held)


# --- the record folder's listing -----------------------------------------------------------------------------------

def _race(monkeypatch, folder: Path, replace) -> None:
    real_lstat = export.lstat_or_none

    def lstat_then_replaced(path):
        info = real_lstat(path)
        if Path(path) == folder and info is not None:
            replace()
        return info

    monkeypatch.setattr(export, "lstat_or_none", lstat_then_replaced)


def _dead_record(home: DataHome, folder: Path) -> tuple[Path, Path]:
    """A dead export's record naming a blob no file names and its temporary file."""
    folder.mkdir(exist_ok=True)
    blob = home.raw_images / f"{UIDS[0]}.png"
    blob.write_bytes(b"png")
    temp = home.raw_images / f".{UIDS[1]}.png.00000000abcd.tmp"
    temp.write_bytes(b"half")
    (folder / DEAD).write_text(f"{UIDS[0]} 00000000abcd\n{UIDS[1]} 00000000abcd\n")
    return blob, temp


def test_a_record_folder_replaced_by_a_link_meanwhile_is_never_followed(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path)
    folder = home.raw_images / blobs.EXPORTS
    elsewhere = tmp_path / "elsewhere"
    blob, temp = _dead_record(home, elsewhere)       # a record-like file behind the link: never read

    folder.mkdir()
    _race(monkeypatch, folder, lambda: (folder.rmdir(), folder.symlink_to(elsewhere)))
    assert withdraw_interrupted_exports(home) == []
    assert blob.exists() and temp.exists() and (elsewhere / DEAD).exists()


def test_a_record_folder_replaced_by_a_file_meanwhile_is_nothing_to_withdraw(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path)
    folder = home.raw_images / blobs.EXPORTS
    folder.mkdir()
    _race(monkeypatch, folder, lambda: (folder.rmdir(), folder.write_bytes(b"not a folder")))
    assert withdraw_interrupted_exports(home) == []
    assert folder.read_bytes() == b"not a folder"


def test_records_are_still_withdrawn_through_the_folders_descriptor(tmp_path: Path) -> None:
    home = _home(tmp_path)
    folder = home.raw_images / blobs.EXPORTS
    blob, temp = _dead_record(home, folder)
    (folder / f".dt={DAY}.export-4243-0badc0df").symlink_to(folder / DEAD)   # a link among records: skipped
    notes = withdraw_interrupted_exports(home)
    assert not blob.exists() and not temp.exists() and not (folder / DEAD).exists()
    assert len(notes) == 1 and DEAD in notes[0] and "1 temporary blob file(s) and 1 image blob(s)" in notes[0]
    assert (folder / f".dt={DAY}.export-4243-0badc0df").is_symlink()       # the folder stays: the link is in it
