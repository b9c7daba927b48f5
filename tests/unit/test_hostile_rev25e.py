"""Hostile review rev25e: the fix of review rev25d (commit f928217, merged as 7c53dce, and e3ccc2c):
``versions.check_version_identity``, ``versions.made_by_publish`` and retention that notes what it cannot remove,
``formats.dataset.latest_version`` (read by record_switch, switch_latest, apply_retention, reuse and the build
stamp), ``formats.files.sweep_temps`` / ``version.sweep_temp_files`` and the JPEG digests taken under the publish
lock (README section 6 and section 9 "Fixed since (twenty-fifth session)").

Reviewed by running real publishes in-process and as real subprocesses (``python -m pipelines.publish``, and a
publish killed with SIGKILL at ``publish.before_switch``) on the seeded homes of
``tests/unit/test_publish_fixtures.py``.

Checked and found sound (no test): the identity check accepts a rerun after a kill between the rename and the
switch (with ``keep_versions = 1`` too, which then deletes the old version), a republish of identical inputs and a
version restored under its own name; it refuses another version's manifest. ``latest_version`` reads ``V``, ``./V``,
``V/``, absolute links, links through a linked home and ``sub/V`` with ``sub`` a link to ``.`` as the kernel does,
and takes links to ``.``, ``..``, the datasets folder itself and anything outside it for no version. Every
temporary file a publish writes outside its version (collected from a real publish) is in a folder the sweep
covers, and no other stage or command (ingest, features, splits, query, export) writes those names there; the
sweep never follows a link at a temp name and leaves folders (FIFOs and other accounts' files too, by reading the
code). No lock cycle (by reading the code): no stage takes the publish lock while holding the ingest lock, so
hashing the JPEGs under the publish lock only makes a second publish wait longer.

Each test below was a confirmed defect, filed as a strict xfail whose assertions state the correct behaviour; all
six were fixed the same day (fix25e) and the tests now pass as plain tests.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_publish_fixtures import export_days, history_home, publish_until, write_split_pairs

from formats.dataset import read_switched, resolve_version
from formats.home import DataHome
from pipelines.publish.config import PublishConfig

REPO = Path(__file__).resolve().parents[2]
FAST = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5)
KEEP2 = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5, keep_versions=2)

# a publish run as its own process; PICKAPIC_FAULT=publish.before_switch kills it (SIGKILL) with its version in place
PUBLISH = """
import sys
from pathlib import Path
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
report = publish_dataset(DataHome(Path(sys.argv[1])), PublishConfig(workers=1, fsync=False, min_shards_per_split=1,
                                                                  max_samples_per_shard=5))
print(report.version)
"""


def _killed_before_switch(home: DataHome) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PICKAPIC_FAULT": "publish.before_switch"}
    return subprocess.run([sys.executable, "-c", PUBLISH, str(home.root)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False, start_new_session=True)


def _roll_back_by_hand(home: DataHome, version: str, form: str) -> None:
    """Point ``latest`` at ``version`` as a person might: through a named link beside the versions
    (``ln -s <version> candidate; ln -sfn candidate latest``), or as ``<version>/.``; the kernel, every reader and
    the trainer (``resolve_version``, ``latest.resolve()``) then read ``version``."""
    if form == "alias":
        os.symlink(version, home.datasets / "candidate")
        os.symlink("candidate", home.datasets / "rollback.tmp")
    else:
        os.symlink(f"{version}/.", home.datasets / "rollback.tmp")
    os.replace(home.datasets / "rollback.tmp", home.datasets / "latest")
    assert resolve_version(home).name == version


def _upto(table: pa.Table, day) -> pa.Table:
    return table.filter(pc.less_equal(table.column("dt"), pa.scalar(day, pa.date32())))


# --------------------------------------------------------------------------- data loss: the version readers are on
@pytest.mark.parametrize("form", ["alias", "dot"])
def test_a_rollback_by_hand_through_a_named_link_keeps_the_version_readers_are_on(tmp_path: Path, form: str) -> None:
    home, table = history_home(tmp_path / "home", days=4, rankings=60)
    days = export_days(table)
    versions = [publish_until(home, table, KEEP2, day).version for day in days[:3]]
    good = versions[1]
    _roll_back_by_hand(home, good, form)
    report = publish_until(home, table, KEEP2, days[3])                          # the next night
    assert good not in report.deleted_versions, "retention deleted the version latest named until this switch"
    assert (home.datasets / good / "manifest.json").is_file()


# --------------------------------------------------------------------------- wrong published data: held-out keys unpinned
@pytest.mark.parametrize("form", ["alias", "dot"])
def test_a_version_given_to_readers_through_a_named_link_is_recorded_as_switched_to(tmp_path: Path, form: str) -> None:
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    publish_until(home, table, FAST, days[2])
    write_split_pairs(home, _upto(table, days[3]))
    killed = _killed_before_switch(home)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    latest = os.readlink(home.datasets / "latest")
    unswitched = [name for name in os.listdir(home.datasets) if name[0].isdigit() and name != latest]
    assert len(unswitched) == 1
    _roll_back_by_hand(home, unswitched[0], form)                                # given to readers by hand
    publish_until(home, table, FAST)                                              # the next night
    assert (home.datasets / unswitched[0]).is_dir()
    assert unswitched[0] in (read_switched(home.datasets) or set())


# --------------------------------------------------------------------------- crash after the switch
def test_a_deep_folder_tree_in_a_retained_version_does_not_fail_the_publish_after_its_switch(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    old = publish_until(home, table, FAST, days[2]).version
    depth = 1200
    top = os.open(home.datasets / old, os.O_RDONLY | os.O_DIRECTORY)
    current = top
    for _ in range(depth):                             # a runaway script's nested folders, all empty
        os.mkdir("d", dir_fd=current)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        if current != top:
            os.close(current)
        current = deeper
    os.close(current)
    os.close(top)
    try:
        try:
            report = publish_until(home, table, FAST, days[3])
        except RecursionError as exc:
            switched = resolve_version(home).name != old
            pytest.fail(f"the publish failed (latest switched to its version: {switched}): {exc!r}")
        assert resolve_version(home).name == report.version
    finally:                                           # never leave the tree to pytest's recursive clean-up
        for level in range(depth, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(home.datasets / old / "/".join(["d"] * level))


# --------------------------------------------------------------------------- disk: a version kept for good
def test_a_version_browsed_from_a_mac_is_still_deleted_by_retention(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    first = publish_until(home, table, KEEP2, days[2]).version
    for folder in ("", "train", "meta"):
        (home.datasets / first / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    publish_until(home, table, KEEP2, days[3])
    report = publish_until(home, table, KEEP2, days[4])
    assert first in report.deleted_versions
    assert len([name for name in os.listdir(home.datasets) if name[0].isdigit()]) == 2


# --------------------------------------------------------------------------- security: forged report lines
def test_a_planted_file_name_in_an_old_version_cannot_forge_publish_lines(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    old = publish_until(home, table, FAST, days[2]).version
    forged = "publish: version 2099-01-01-0123456789 verified, every file checked"
    (home.datasets / old / "train" / f"x\x1b[2J\n{forged}\n").write_bytes(b"x")
    write_split_pairs(home, _upto(table, days[3]))
    (home.root / "pickapic.toml").write_text("[publish]\nworkers = 1\nfsync = false\nmin_shards_per_split = 1\n"
                                             "max_samples_per_shard = 5\n")
    run = subprocess.run([sys.executable, "-m", "pipelines.publish", "--home", str(home.root)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "is not a version a publish made" in run.stderr           # the note is there
    assert forged not in run.stderr.splitlines()
    assert "\x1b" not in run.stderr


# --------------------------------------------------------------------------- litter: a linked datasets folder
def test_temp_files_beside_the_versions_are_swept_when_the_datasets_folder_is_a_link(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    elsewhere = tmp_path / "big-disk" / "datasets"
    elsewhere.parent.mkdir()
    os.rename(home.root / "datasets", elsewhere) if (home.root / "datasets").exists() else elsewhere.mkdir()
    os.symlink(elsewhere, home.root / "datasets")                # the versions on another disk
    publish_until(home, table, FAST, days[2])
    assert (elsewhere / "pickapic.history").is_file()            # the publish writes through the link
    leftover = elsewhere / ".pickapic.history.0123456789ab.tmp"  # a publish killed while writing its history
    leftover.write_text("# pickapic publish history: half a file\n")
    report = publish_until(home, table, FAST, days[3])
    assert not leftover.exists() or any(leftover.name in note for note in report.notes)
