"""Hostile review rev26e of commit e80c136 (fix26d2): readers of a dataset version (the trainer, the evaluation and
leaderboard, ``pickapic query``, ``pickapic export``) hold a shared ``flock`` on the version's folder
(``formats.dataset.hold_for_reading`` / ``reading_version`` / ``reading_data_dir`` / ``reading_resolved``), and the
publish's retention (``pipelines.publish.versions.apply_retention``) keeps a version a reader holds.

Run and found sound (not filed): a reader of an explicitly named version and of `latest` racing retention (resolved
again, or a one-line VersionGone); many readers at once; a crashed reader (the lock goes with the process); a
reader of the new `latest` never blocks the switch; retention never waits on a held version; a reader never
opens a `.deleting-` folder and listings never show one; a forked child (DataLoader worker) keeps the lock only
while it lives (the loaders use ``persistent_workers=False``); exec'd children do not inherit it (O_CLOEXEC).

Filed below (confirmed by running):
- a reader waits without bound, and without a word, on an exclusive lock on its version that is not retention's
  (util-linux ``flock DATASET/<version> cmd`` without ``-s`` is exclusive);
- retention's note on a kept version does not say which process holds it (``/proc/locks`` does).

Both fixed the same day: a reader first tries its shared lock without waiting and, where an exclusive lock is held,
says on stderr which pid holds it before it waits; retention's note names the holders' pids
(``formats.dataset.lock_holders``, read from ``/proc/locks``).
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

from formats import dataset
from formats.home import DataHome
from pipelines.publish.versions import apply_retention
from training.synthetic import write_synthetic_version

SIZES = {"train": 4, "validation": 2, "test": 2, "validation_unique": 2, "test_unique": 2}
NAMES = ("2023-03-01-aaaaaaaaaa", "2023-03-02-bbbbbbbbbb", "2023-03-03-cccccccccc")


def _versions(home: DataHome) -> list[Path]:
    """Synthetic versions switched to in order (as test_fix26d2 makes them): `latest` is the last."""
    paths = []
    for seed, name in enumerate(NAMES):
        path = home.datasets / name
        write_synthetic_version(path, SIZES, image_px=8, shards_per_split=1, seed=seed, link_latest=False)
        assert dataset.record_switch(home.datasets, name, fsync=False) is None
        dataset.switch_latest(home.datasets, name, fsync=False)
        paths.append(path)
    return paths


def test_a_reader_does_not_hang_silently_on_a_foreign_exclusive_lock(tmp_path: Path, capfd) -> None:
    home = DataHome(tmp_path / "home")
    _versions(home)
    version = home.datasets / NAMES[2]
    foreign = os.open(version, os.O_RDONLY | os.O_DIRECTORY)   # another open file description: another "tool"
    fcntl.flock(foreign, fcntl.LOCK_EX)
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            with dataset.reading_version(home) as path:
                outcome["read"] = path
        except (OSError, ValueError) as exc:   # a clear one-line error is an acceptable outcome
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    try:
        reader.start()
        said, deadline = "", time.monotonic() + 20   # a liveness bound (generous), not a timing measurement
        while reader.is_alive() and NAMES[2] not in said and time.monotonic() < deadline:
            reader.join(0.1)
            said += capfd.readouterr().err
        finished = not reader.is_alive()
        said += capfd.readouterr().err
    finally:
        os.close(foreign)                  # the reader, still waiting, goes on now
        reader.join(20)
    assert finished or NAMES[2] in said, (
        f"the reader still waits after 20 s on the foreign exclusive lock and said nothing: {said!r}")


def test_the_kept_version_note_names_the_process_that_holds_it(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    old, middle, _ = _versions(home)
    # the README's way for another tool, in a session of its own: flock(1) and its `sleep` go together
    holder = subprocess.Popen(["flock", "-s", str(old), "sleep", "60"], start_new_session=True)
    try:
        for _ in range(400):                # until flock(1) holds it
            probe = os.open(old, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe, fcntl.LOCK_UN)
            except BlockingIOError:
                break
            finally:
                os.close(probe)
            time.sleep(0.05)
        else:
            raise AssertionError("flock -s never took its lock")
        notes: list[str] = []
        assert apply_retention(home, 1, notes) == [middle.name]
        kept = [note for note in notes if f"version {old.name} kept" in note]
        assert kept, notes
        children = subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        pids = {str(holder.pid), *children}
        assert any(pid in kept[0] for pid in pids), f"no holder pid ({sorted(pids)}) in the note: {kept[0]!r}"
    finally:
        os.killpg(holder.pid, 9)            # the group this test started (flock and its sleep)
        holder.wait()
