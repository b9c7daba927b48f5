"""Hostile review rev25d: a year of nightly publishes, retention and crashes (``pipelines/publish/``: ``version.py``,
``versions.py``, ``reuse.py``, ``shards.py``, ``shardphase.py``, ``manifest.py``; README section 6 on publishing,
retention, ``keep_versions`` and hard-linked reuse; section 9).

Reviewed by running the real publish (in-process and as a real subprocess killed with SIGKILL) on seeded homes
(``tests/unit/test_publish_fixtures.py``): retention with ``keep_versions`` changed between runs (3 -> 1 -> 5),
versions rebuilt after retention deleted them, a version folder the publish did not make at a version's name,
crashes at every ``PICKAPIC_FAULT`` point and at the temporary files of the writers outside the version, and
incremental publishes compared byte for byte with from-scratch ones.

Checked and found sound (no test): incremental == from scratch, byte for byte and mode for mode, after a ban then
an unban (with ``keep_versions = 1``, so the unbanned version is rebuilt from the banned one's shards), a holdout
change, a day re-delivered with changed captions, ``max_samples_per_shard`` 5 -> 3 -> 9, ``max_shard_bytes``
and ``seed`` changes between nights; a SIGKILL at ``shards.after_tar``, ``publish.after_link``,
``publish.after_shards``, ``publish.before_rename`` and ``publish.before_switch`` followed by a rerun under another
umask, with ``reuse_shards`` turned off or ``verify_checksums`` on: the rerun's version is byte-identical to an
uncrashed run's and no ``.partial-*`` / ``.deleting-*`` / ``.latest.*.tmp`` is left; ``latest`` never moved
before a version was complete; deleting an older version (hard links) never broke a newer one; a version
``latest`` names is never deleted by retention; a reader process that resolves ``latest``, lists the version and
reads every file against its manifest in a loop, during 100 publishes cycling three inputs with ``keep_versions`` 1
and 3, never saw a mixed version or a file that differs (only a version retention deleted, as documented).

Each test below was a confirmed defect, filed as a strict xfail; all six were fixed the same day (fix25d:
``versions.check_version_identity``, ``versions.made_by_publish``, retention that notes what it cannot remove,
``formats.dataset.latest_version``, ``version.sweep_temp_files``) and the tests now pass as plain tests.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_publish_fixtures import export_days, history_home, publish_until, write_split_pairs

from formats.dataset import resolve_version
from pipelines.publish import versions
from pipelines.publish.config import PublishConfig

REPO = Path(__file__).resolve().parents[2]
FAST = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5)


def _two_nights(root: Path, config: PublishConfig = FAST):
    """A home with the first four export days published (one version) and its whole split_pairs table."""
    home, table = history_home(root, days=5, rankings=120)
    days = export_days(table)
    first = publish_until(home, table, config, days[3])
    return home, table, first


def _leftover_temps(root: Path) -> list[str]:
    """Every ``.NAME.<hex>.tmp`` file under ``root`` (what a writer killed mid-write leaves)."""
    found = []
    for top, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(top, name), root) for name in files
                  if name.startswith(".") and name.endswith(".tmp")]
    return sorted(found)


# --------------------------------------------------------------------------- wrong published data
def test_a_folder_at_the_versions_name_holding_another_version_is_not_switched_to(tmp_path: Path) -> None:
    home, table, first = _two_nights(tmp_path / "home")
    second = publish_until(home, table, FAST).version
    assert second != first.version
    shutil.rmtree(home.datasets / second)
    shutil.copytree(home.datasets / first.version, home.datasets / second)   # restored under the wrong name
    try:
        report = publish_until(home, table, FAST)
    except versions.StagingRefused:
        return                                   # refused, left as it is: acceptable
    latest = resolve_version(home)
    manifest = json.loads((latest / "manifest.json").read_text())
    assert report.version == second == latest.name
    assert manifest["version"] == latest.name, "latest names a folder whose files are another version's"
    assert manifest["sources"]["split_pairs"]["rows"] == table.num_rows


# --------------------------------------------------------------------------- retention vs a reader's open file
def test_a_version_a_reader_holds_open_on_nfs_does_not_fail_every_publish(tmp_path: Path, monkeypatch) -> None:
    home, table, first = _two_nights(tmp_path / "home", PublishConfig(workers=1, fsync=False, min_shards_per_split=1,
                                                                      max_samples_per_shard=5, keep_versions=1))
    real_rmtree = shutil.rmtree

    def nfs_rmtree(path, *args, **kwargs):
        """rmtree on NFS while a reader holds a file open: all goes but the silly-renamed .nfsXXXX file."""
        real_rmtree(path, *args, **kwargs)
        if ".deleting-" not in os.path.basename(path):
            return
        os.makedirs(path, exist_ok=True)
        Path(path, ".nfs0000000000a1b2c3").write_bytes(b"a reader's open shard")
        raise OSError(errno.EBUSY, "Device or resource busy", str(Path(path, ".nfs0000000000a1b2c3")))

    monkeypatch.setattr(versions.shutil, "rmtree", nfs_rmtree)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5, keep_versions=1)
    try:
        report = publish_until(home, table, config)
    except OSError as exc:
        pytest.fail(f"the publish failed after latest was switched to its version: {exc}")
    assert resolve_version(home).name == report.version
    days = export_days(table)
    again = publish_until(home, table, config, days[3])       # the next night (here: a rollback of a day)
    assert resolve_version(home).name == again.version


# --------------------------------------------------------------------------- crashes: temp files outside the version
KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
import formats.files
from formats.home import DataHome
from pipelines.publish import jpgdigests
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset

target = os.environ.get("KILL_AT_TEMP_OF", "")

def killing(real):
    def create_temp(folder, name, *args, **kwargs):
        fd, tmp = real(folder, name, *args, **kwargs)
        if target and name.startswith(target):
            os.write(fd, b"half a file" * 1000)
            os.killpg(os.getpgrp(), signal.SIGKILL)     # a power cut / OOM kill mid-write
        return fd, tmp
    return create_temp

formats.files.create_temp = killing(formats.files.create_temp)
jpgdigests.create_temp = killing(jpgdigests.create_temp)
report = publish_dataset(DataHome(Path(sys.argv[1])), PublishConfig(workers=1, fsync=False, min_shards_per_split=1,
                                                                  max_samples_per_shard=5))
print(report.version)
"""


def _publish_subprocess(home_root: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT_TEMP_OF": kill_at}
    env.pop("PICKAPIC_FAULT", None)
    return subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(home_root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False, start_new_session=True)


def test_temp_files_of_a_killed_publish_outside_the_version_folder_are_swept_by_the_rerun(tmp_path: Path) -> None:
    home, table, _ = _two_nights(tmp_path / "home")
    write_split_pairs(home, table)                       # the next night: one more day of JPEGs to hash
    for target in ("part-", "pickapic.history"):
        killed = _publish_subprocess(home.root, target)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _leftover_temps(home.root), "the kills left no temporary file (the test no longer kills a writer)"
    rerun = _publish_subprocess(home.root)
    assert rerun.returncode == 0, rerun.stderr
    assert resolve_version(home).name == rerun.stdout.split()[-1]
    assert _leftover_temps(home.root) == []


# --------------------------------------------------------------------------- retention vs a folder the publish did not make
def test_retention_leaves_a_folder_the_publish_did_not_make(tmp_path: Path) -> None:
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5, keep_versions=2)
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    first = publish_until(home, table, config, days[2]).version
    copy = home.datasets / "2099-12-31-0123456789"       # the user's copy, named like a version
    shutil.copytree(home.datasets / first, copy)
    (copy / "my-notes.txt").write_text("evaluation notes on this copy\n")
    report = publish_until(home, table, config, days[3])
    assert copy.name not in report.deleted_versions
    assert (copy / "my-notes.txt").read_text() == "evaluation notes on this copy\n"
    assert sorted(report.deleted_versions) == []        # two versions published, two kept


# --------------------------------------------------------------------------- retention after a rollback by hand
def test_a_rollback_by_hand_with_an_absolute_link_keeps_the_version_readers_are_on(tmp_path: Path) -> None:
    import pyarrow.compute as pc

    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=5, keep_versions=2)
    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    publish_until(home, table, config, days[2])
    good = publish_until(home, table, config, days[3]).version
    user = table.column("user_id")[0].as_py()
    bad = publish_until(home, table.filter(pc.not_equal(table.column("user_id"), user)), config, days[3]).version
    os.symlink(str(home.datasets / good), home.datasets / "rollback.tmp")        # rolled back by hand
    os.replace(home.datasets / "rollback.tmp", home.datasets / "latest")
    assert resolve_version(home).name == good
    report = publish_until(home, table, config)                                   # the next night
    assert good not in report.deleted_versions, "retention deleted the version latest named until this switch"
    assert report.deleted_versions == [bad]
    assert (home.datasets / good / "manifest.json").is_file()


def test_a_version_latest_named_by_an_absolute_link_is_recorded_as_switched_to(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from formats.dataset import read_switched

    home, table = history_home(tmp_path / "home", days=5, rankings=120)
    days = export_days(table)
    publish_until(home, table, FAST, days[2])
    write_split_pairs(home, table.filter(pc.less_equal(table.column("dt"), pa.scalar(days[3], pa.date32()))))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PICKAPIC_FAULT": "publish.before_switch", "KILL_AT_TEMP_OF": ""}
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(home.root)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    latest = os.readlink(home.datasets / "latest")
    unswitched = [name for name in os.listdir(home.datasets) if name[0].isdigit() and name != latest]
    assert len(unswitched) == 1
    os.symlink(str(home.datasets / unswitched[0]), home.datasets / "rollback.tmp")   # given to readers by hand
    os.replace(home.datasets / "rollback.tmp", home.datasets / "latest")
    assert resolve_version(home).name == unswitched[0]
    publish_until(home, table, FAST)                                                   # the next night
    assert unswitched[0] in (read_switched(home.datasets) or set())
