"""Hostile review of December 4, 2026: the splits stage's ledger lock (``hold_ledger_lock``).

Each test reproduced a defect on main (marked ``xfail(strict=True)`` until it was fixed).
"""
from __future__ import annotations

import os
import shutil
import threading
import time

from splits_fixtures import pair_row, write_pairs

from formats.home import DataHome
from pipelines.splits import assign as splits_assign

DAY0 = [pair_row(1, "u1", "p one", "c1a", "c1b", day=0), pair_row(2, "u2", "p two", "c2a", "c2b", day=0),
        pair_row(3, "u3", "p three", "c3a", "c3b", day=0)]


def test_deleting_the_disposable_cache_does_not_let_a_second_build_run(tmp_path):
    """README: 'cache/ is disposable: deleting it changes only speed'. An operator (or a clean-up job) removes
    it while build A holds the ledger lock; build B then creates a new lock file (another inode), takes an
    exclusive flock on it at once, and reads and writes the ledger while A still holds the one it read."""
    home = DataHome(tmp_path / "home")
    write_pairs(home, DAY0)
    (home.cache / "raw_image_uids").mkdir(parents=True, exist_ok=True)   # a home's cache, whatever holds the lock
    said: list[str] = []
    done = threading.Event()
    with splits_assign.hold_ledger_lock(home):          # build A, between reading and writing the ledger
        shutil.rmtree(home.cache)                       # "disposable"
        worker = threading.Thread(target=lambda: (splits_assign.build_splits(home, log=said.append), done.set()))
        worker.start()
        deadline = time.monotonic() + 60
        while not said and not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        ran_while_held = done.is_set() or home.table_file("split_ledger").exists()
    worker.join(timeout=120)
    assert not ran_while_held, "build B read and wrote the ledger while build A held the ledger lock"
    assert said and said[0].startswith("waiting for another splits build")


def test_a_hard_link_at_the_lock_path_is_not_written_through(tmp_path):
    """The lock file 'is never truncated unless it holds nothing but a pid' -- but another program's pid file
    holds exactly that. Hard-linked at the lock path (anyone who can write the home's lock folder can do it; no
    symlink, so O_NOFOLLOW does not see it), the stage overwrites that program's pid file with its own pid
    (a later ``kill $(cat other.pid)`` then signals the wrong process)."""
    home = DataHome(tmp_path / "home")
    other = tmp_path / "other-daemon.pid"               # not created by the splits stage
    other.write_text("4242\n")
    path = splits_assign.ledger_lock_file(home)
    path.parent.mkdir(parents=True)
    os.link(other, path)
    try:
        with splits_assign.hold_ledger_lock(home):
            pass
    except ValueError:
        pass                                            # refusing is fine; writing through the link is not
    assert other.read_text() == "4242\n", f"another file's content replaced: {other.read_text()!r}"
