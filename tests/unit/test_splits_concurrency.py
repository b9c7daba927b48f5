"""Two splits builds at once on one home: the second waits for the first and keeps its ledger entries.

Build A is a real ``pipelines.splits.assign`` process held (a barrier around :func:`assign`, in that process
only) after it has read the ledger and the day-0 pairs and assigned its users, before it writes anything. A
new day with a new user U then arrives and build B, a plain ``python -m pipelines.splits.assign``, runs. Before
the ledger lock, B finished while A was held and published U in test; A then wrote back the ledger it had
read, U's entry was lost, and after a later ban the fold put U in train (a user the first version held out,
trained on in the next). Now B says it waits, builds after A, and U stays in test.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from splits_fixtures import ledger_splits, pair_row, write_pairs

from formats.home import DataHome
from pipelines.splits import assign as splits_assign

REPO = Path(__file__).resolve().parents[2]
# min_unique_rows=2, no hash hold-outs: u1 train, u2 validation (fill), u3 train; on day 1 U fills test.
FLAGS = ["--min-unique-rows", "2", "--heldout-fraction", "0"]
HELD = """
import pathlib, sys, time
import pipelines.splits.assign as stage
assign = stage.assign

def held(*args, **kwargs):
    result = assign(*args, **kwargs)          # ledger and pairs read, users assigned; nothing written yet
    pathlib.Path(sys.argv[1], "held").touch()
    while not pathlib.Path(sys.argv[1], "release").exists():
        time.sleep(0.05)
    return result

stage.assign = held
stage.main(sys.argv[2:])
"""
DAY0 = [pair_row(1, "u1", "p one", "c1a", "c1b", day=0), pair_row(2, "u2", "p two", "c2a", "c2b", day=0),
        pair_row(3, "u3", "p three", "c3a", "c3b", day=0)]
DAY1 = [pair_row(4, "U", "p new", "c4a", "c4b", day=1)]


def _user_splits(home: DataHome) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in pq.read_table(home.table_file("split_pairs"), columns=["user_id", "split"]).to_pylist():
        out.setdefault(row["user_id"], set()).add(row["split"])
    return out


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


def _wait_for(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__ or what}"
        time.sleep(0.05)


def test_a_second_build_waits_and_keeps_the_first_builds_assignments(tmp_path):
    home = DataHome(tmp_path / "home")
    write_pairs(home, DAY0)
    splits_assign.main(["--home", str(home.root), *FLAGS])
    assert ledger_splits(home) == {"u1": "train", "u2": "validation", "u3": "train"}
    cli = ["-m", "pipelines.splits.assign", "--home", str(home.root), *FLAGS]
    a = _start(["-c", HELD, str(tmp_path), "--home", str(home.root), *FLAGS], tmp_path / "a.log")
    b = None
    try:
        _wait_for(lambda: (tmp_path / "held").exists() or a.poll() is not None)
        assert a.poll() is None, (tmp_path / "a.log").read_text()
        write_pairs(home, DAY0 + DAY1)          # curation publishes day 1 and its new user U
        b = _start(cli, tmp_path / "b.log")

        def b_waits_or_ends():
            """build B to say it waits (or to end)"""
            return b.poll() is not None or b"waiting for another splits build" in (tmp_path / "b.log").read_bytes()

        _wait_for(b_waits_or_ends)
        b_waited = b.poll() is None
        lock_record = splits_assign.ledger_lock_file(home).read_bytes() if b_waited else None
        (tmp_path / "release").touch()
        assert a.wait(timeout=120) == 0, (tmp_path / "a.log").read_text()
        assert b.wait(timeout=120) == 0, (tmp_path / "b.log").read_text()
    finally:
        (tmp_path / "release").touch()
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    # no lost update: U, whom B assigned (and published in test), is still in the ledger after A ended
    assert ledger_splits(home) == {"u1": "train", "u2": "validation", "u3": "train", "U": "test"}
    assert _user_splits(home)["U"] == {"test", "test_unique"}
    b_log = (tmp_path / "b.log").read_text()
    assert b_waited, f"build B ran to the end while build A held the ledger it had read:\n{b_log}"
    assert f"pid {a.pid} holds {splits_assign.ledger_lock_file(home)}" in b_log
    assert lock_record == f"{a.pid}\n".encode()
    write_pairs(home, [r for r in DAY0 + DAY1 if r["user_id"] != "u3"])    # u3 banned later
    splits_assign.main(["--home", str(home.root), *FLAGS])
    assert ledger_splits(home)["U"] == "test" and _user_splits(home)["U"] == {"test", "test_unique"}


def test_the_lock_file_is_never_a_link_or_someone_elses_file(tmp_path):
    home = DataHome(tmp_path / "home")
    path = splits_assign.ledger_lock_file(home)
    path.parent.mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("not ours\n")
    path.symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"), splits_assign.hold_ledger_lock(home):
        pass
    assert target.read_text() == "not ours\n" and path.is_symlink()
    path.unlink()
    os.mkfifo(path)                            # never waited on, never written
    with pytest.raises(ValueError, match="not a regular file"), splits_assign.hold_ledger_lock(home):
        pass
    path.unlink()
    path.write_text("notes someone keeps here\n")
    with pytest.raises(ValueError, match="did not write"), splits_assign.hold_ledger_lock(home):
        pass
    assert path.read_text() == "notes someone keeps here\n"
    path.write_text("12345\n")                 # a pid an earlier build left: replaced by this one's
    with splits_assign.hold_ledger_lock(home):
        assert path.read_text() == f"{os.getpid()}\n"


def test_a_build_waits_while_the_ledger_is_held_and_says_so(tmp_path):
    """Within one process (the kernel's flock is per open file, so a second open waits like another process)."""
    home = DataHome(tmp_path / "home")
    write_pairs(home, DAY0)
    said: list[str] = []
    done = threading.Event()
    with splits_assign.hold_ledger_lock(home):
        worker = threading.Thread(target=lambda: (splits_assign.build_splits(home, log=said.append), done.set()))
        worker.start()
        _wait_for(lambda: said)
        assert not done.is_set() and not home.table_file("split_ledger").exists()
        assert said[0].startswith(f"waiting for another splits build on this home (pid {os.getpid()} holds ")
    worker.join(timeout=120)
    assert done.is_set() and home.table_file("split_ledger").exists()
    assert said[1].startswith("split ledger lock taken after ")
