"""Crash recovery: a build SIGKILLed at named points resumes to a byte-identical result.

Every build runs as a real ``pickapic build`` process (``python -m dagster_project.cli build``) in its
own session, killed through the fault hook (``PICKAPIC_FAULT``, see :mod:`pipelines.faults`) or, for the
Beam stage, by the test (SIGKILL to the build's process group as soon as the first training JPEG
lands). After each crash: the build lock is free again and ``latest`` is absent or names a complete
version; a watcher thread checks the same thing continuously while the builds run. After the final,
uninterrupted rerun, every published file, warehouse Parquet file and training JPEG equals (sha256)
the output of an uninterrupted build of a copy of the same raw data.

The reference build and the simulated raw zone are shared by this module and test_concurrency.py
(built once per test run, under a file lock, also across pytest-xdist workers). The homes live on tmpfs
when the machine has one (``scratch``, ``tests/fast_tmp.py``).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from formats.dataset import list_versions
from formats.home import DataHome
from formats.settings import write_settings
from pipelines.publish.manifest import verify_version
from pipelines.publish.versions import staging_root
from simulator import SimConfig, simulate
from tests.fast_tmp import build_once

REPO = Path(__file__).resolve().parents[2]
# Three simulated days: the reference and the crash tests build the first two; the concurrency tests
# publish the third as a nightly rebuild.
SIM = SimConfig(days=3, users=12, rankings_per_day=25, image_size=64, seed=3)
DAY1, DAY2, DAY3 = (SIM.day(i) for i in range(3))
INGEST_OUTPUTS = ("users", "images", "rankings", "downloads", "quarantine", "ingest_files")
BUILD_TIMEOUT = 240
SMALL_HOME_SETTINGS = {"splits.min_users": 3, "splits.min_unique_rows": 1}


# --- helpers shared with test_concurrency.py ----------------------------------------------------

def build_command(home: DataHome, *args: str) -> list[str]:
    """The `pickapic build` command line for ``home``."""
    return [sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home.root), *args]


def start_process(command: list[str], log: Path, fault: str | None = None) -> subprocess.Popen:
    """Start ``command`` in its own session (so a fault kills only it), output to ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    if fault:
        env["PICKAPIC_FAULT"] = fault
    handle = open(log, "wb")
    try:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        handle.close()


def finish(proc: subprocess.Popen, log: Path, timeout: float = BUILD_TIMEOUT) -> int:
    """Wait for ``proc`` (killing its group on timeout) and for its whole process group to be gone."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"{proc.args} ran longer than {timeout}s; log:\n{tail(log)}")
    wait_group_gone(proc.pid)
    return proc.returncode


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (the build and its worker processes) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    wait_group_gone(proc.pid)


def wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no process of group ``pgid`` is left (orphaned workers must not write on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.05)
    pytest.fail(f"processes of group {pgid} still alive {timeout}s after the build ended")


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a build log (for failure messages)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def run_build(home: DataHome, log: Path, *args: str, fault: str | None = None) -> int:
    """Run `pickapic build` to its end (or its fault); the exit code (-9 when SIGKILLed)."""
    return finish(start_process(build_command(home, *args), log, fault), log)


def lock_is_free(home: DataHome) -> bool:
    """Whether the build lock can be taken right now (then released at once)."""
    with open(home.lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every visible file under ``root`` (no part of the relative path starts with '.')."""
    from formats.files import sha256_file

    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = sha256_file(path)
    return out


def result_digests(home: DataHome) -> dict[str, dict[str, str]]:
    """The build's result: the published versions, the warehouse Parquet files and the training JPEGs."""
    latest = home.datasets / "latest"
    return {
        "latest": {"target": os.readlink(latest) if latest.is_symlink() else ""},
        **{f"datasets/{v}": file_digests(home.datasets / v) for v in list_versions(home)},
        "warehouse": {k: v for k, v in file_digests(home.warehouse).items() if k.endswith(".parquet")},
        "blobs": file_digests(home.blobs),
    }


def hidden_leftovers(home: DataHome) -> list[str]:
    """Hidden temporary files/dirs left in the warehouse, the JPEG store and the datasets folder."""
    found = []
    for top in (home.warehouse, home.blobs, home.datasets):
        if top.is_dir():
            found += [p.relative_to(home.root).as_posix() for p in top.rglob(".*")]
    # the ingest's record of what each day's raw search found (review rev29e): a folder the build keeps, not a
    # leftover (what is left inside it is still listed)
    return sorted(p for p in found if p != "warehouse/.image_exports")


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str,
               timeout: float = BUILD_TIMEOUT, poll: float = 0.01) -> None:
    """Poll ``condition`` while ``proc`` runs; fail if it ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the build ended (exit {proc.returncode}) before {what}; log:\n{tail(log)}")
        time.sleep(poll)
    kill_group(proc)
    pytest.fail(f"timed out waiting for {what}; log:\n{tail(log)}")


class LatestWatcher(threading.Thread):
    """Polls ``latest`` while builds run: whenever it exists it must name a complete, verified version."""

    def __init__(self, home: DataHome, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.interval = interval
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.seen: set[str] = set()
        self.polls = 0

    def run(self) -> None:
        link = self.home.datasets / "latest"
        while not self.stop_event.is_set():
            self.polls += 1
            if link.is_symlink():
                target = os.readlink(link)
                path = self.home.datasets / target
                try:
                    manifest = verify_version(path)   # exactly the manifest's files, with its sizes
                    if manifest["version"] != target:
                        self.errors.append(f"latest -> {target} holds the manifest of {manifest['version']}")
                    self.seen.add(target)
                except (OSError, RuntimeError, ValueError, KeyError) as exc:
                    self.errors.append(f"latest -> {target} is not a complete version: {exc!r}")
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@pytest.fixture(scope="session")
def crash_reference(tmp_path_factory: pytest.TempPathFactory):
    """(a simulated 3-day raw zone, a home built from a copy of it by one uninterrupted build of days 1-2).

    Shared by the xdist workers of one run (on tmpfs when possible: see ``tests/fast_tmp.py``; these
    tests kill processes, they do not cut power, so page-cache durability is all they need).
    """
    def build(shared: Path) -> None:
        raw, ref = shared / "raw", shared / "reference"
        simulate(DataHome(raw), SIM)
        # a home this small (12 users) is below the publish minimums; these tests are about crashes
        write_settings(raw, SMALL_HOME_SETTINGS)
        shutil.copytree(raw, ref, symlinks=True)
        log = shared / "reference.log"
        code = run_build(DataHome(ref), log, "--to", DAY2)
        if code != 0:
            raise RuntimeError(f"reference build exited {code}:\n{tail(log)}")

    shared = build_once(tmp_path_factory, "crash-reference", build)
    return shared / "raw", DataHome(shared / "reference")


def fresh_home(raw: Path, destination: Path) -> DataHome:
    """A new data home holding a copy of the simulated raw zone (and its ground truth) only."""
    shutil.copytree(raw, destination, symlinks=True)
    return DataHome(destination)


def assert_same_result(home: DataHome, reference: DataHome) -> None:
    """Published files, warehouse Parquet and training JPEGs equal the reference's, file by file."""
    got, want = result_digests(home), result_digests(reference)
    assert got.keys() == want.keys(), f"different result parts: {sorted(got)} vs {sorted(want)}"
    for part in want:
        missing = sorted(set(want[part]) - set(got[part]))
        extra = sorted(set(got[part]) - set(want[part]))
        differ = sorted(k for k in set(want[part]) & set(got[part]) if want[part][k] != got[part][k])
        assert not (missing or extra or differ), f"{part}: missing {missing[:5]}, extra {extra[:5]}, differ {differ[:5]}"


# --- tests --------------------------------------------------------------------------------------

def test_fault_hook_kills_only_at_its_point_and_hit() -> None:
    """maybe_crash is a no-op for other points and hits; at the named n-th hit it SIGKILLs its group."""
    code = ("from pipelines.faults import maybe_crash\n"
            "maybe_crash('other.point'); maybe_crash('demo.point'); print('after first hit', flush=True)\n"
            "maybe_crash('demo.point'); print('after second hit', flush=True)\n")
    env = {**os.environ, "PICKAPIC_FAULT": "demo.point:2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          start_new_session=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "after first hit\n"
    env["PICKAPIC_FAULT"] = ""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.endswith("after second hit\n"), done.stderr
    env["PICKAPIC_FAULT"] = "demo.point:zero"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "PICKAPIC_FAULT='demo.point:zero'" in done.stderr


def test_killed_build_resumes_to_identical_result(crash_reference, scratch: Path, tmp_path: Path) -> None:
    """One first build of days 1-2, SIGKILLed in ingest, in Beam, mid-shard and before the switch, then finished."""
    raw, reference = crash_reference
    home = fresh_home(raw, scratch / "home")
    staging = home.root / ".staging" / "features" / f"dt={DAY1}"
    watcher = LatestWatcher(home)
    watcher.start()
    try:
        # 1. ingest of day 1: one of the six partition files renamed into place, the others not yet
        log = tmp_path / "1-ingest.log"
        assert run_build(home, log, "--to", DAY2, fault="ingest.after_first_rename") == -signal.SIGKILL, tail(log)
        present = [ds for ds in INGEST_OUTPUTS if home.partition_file(ds, DAY1).exists()]
        assert len(present) == 1, f"expected exactly one renamed ingest file, got {present}"
        assert not home.table_dir("image_features").exists()
        assert lock_is_free(home), "a SIGKILLed build left the build lock held"

        # 2. Beam stage of day 1: killed (whole process group) as soon as a training JPEG is written
        log = tmp_path / "2-beam.log"
        proc = start_process(build_command(home, "--to", DAY2), log)
        wait_until(lambda: home.blobs.is_dir() and any(home.blobs.rglob("*.jpg")), proc, log,
                   "the first training JPEG")
        kill_group(proc)
        assert staging.is_dir(), "the kill should have hit the Beam stage (its staging folder is gone)"
        assert all(home.partition_file(ds, DAY1).exists() for ds in INGEST_OUTPUTS)
        assert not home.partition_file("image_features", DAY1).exists()
        assert lock_is_free(home)

        # 3. mid-shard: a writer process dies on its second shard, between the tar and the sidecar
        log = tmp_path / "3-shard.log"
        assert run_build(home, log, "--to", DAY2, fault="shards.after_tar:2") == -signal.SIGKILL, tail(log)
        partials = sorted(staging_root(home.datasets).glob(".partial-*"))
        assert len(partials) == 1, partials
        stats = sorted(partials[0].rglob("*_stats.json"))
        tars = sorted(partials[0].rglob("*.tar"))
        assert stats, "no shard was committed before the crash"
        assert len(tars) > len(stats), "no shard was caught between its tar and its commit marker"
        committed = {p.relative_to(partials[0]).as_posix(): p.stat().st_ino for p in stats}
        assert list_versions(home) == [] and not (home.datasets / "latest").exists()
        assert lock_is_free(home)

        # 4. the version complete and in place, `latest` not switched yet
        log = tmp_path / "4-switch.log"
        assert run_build(home, log, "--to", DAY2, fault="publish.before_switch") == -signal.SIGKILL, tail(log)
        versions = list_versions(home)
        assert len(versions) == 1 and not (home.datasets / "latest").exists()
        final = home.datasets / versions[0]
        verify_version(final, checksums=True)
        assert not list(staging_root(home.datasets).glob(".partial-*"))
        resumed = {rel: (final / rel).stat().st_ino for rel in committed}
        assert resumed == committed, "shards committed before the crash were rewritten instead of resumed"
        assert lock_is_free(home)

        # 5. the uninterrupted rerun
        log = tmp_path / "5-final.log"
        assert run_build(home, log, "--to", DAY2) == 0, tail(log)
    finally:
        watcher.stop()
    assert watcher.errors == [], watcher.errors[:5]
    assert watcher.seen == {versions[0]}
    assert os.readlink(home.datasets / "latest") == versions[0]
    assert not staging.exists()
    assert_same_result(home, reference)
    leftovers = [p for p in hidden_leftovers(home) if not p.endswith(".tmp")]
    assert leftovers == [], f"hidden non-temporary leftovers: {leftovers}"


PUBLISH_ONLY = """
import sys
from formats.home import DataHome
from pipelines.publish.version import publish_dataset
report = publish_dataset(DataHome.at(sys.argv[1]))
print(report.version, report.shards_written, report.shards_resumed)
"""


def test_publish_killed_before_manifest_and_before_rename_resumes(crash_reference, scratch: Path, tmp_path: Path) -> None:
    """The publish stage alone, killed after its shards and before its rename, then rerun: identical version."""
    _, reference = crash_reference
    ref_version = os.readlink(reference.datasets / "latest")
    shutil.copytree(reference.root, scratch / "home", symlinks=True)
    home = DataHome(scratch / "home")
    shutil.rmtree(home.datasets)
    watcher = LatestWatcher(home)
    watcher.start()
    command = [sys.executable, "-c", PUBLISH_ONLY, str(home.root)]
    try:
        log = tmp_path / "1-after-shards.log"
        assert finish(start_process(command, log, "publish.after_shards"), log) == -signal.SIGKILL, tail(log)
        (partial,) = staging_root(home.datasets).glob(".partial-*")
        assert not (partial / "manifest.json").exists() and list(partial.rglob("*_stats.json"))

        log = tmp_path / "2-before-rename.log"
        assert finish(start_process(command, log, "publish.before_rename"), log) == -signal.SIGKILL, tail(log)
        assert (partial / "manifest.json").is_file() and list_versions(home) == []
        assert not (home.datasets / "latest").exists()

        log = tmp_path / "3-final.log"
        assert finish(start_process(command, log), log) == 0, tail(log)
    finally:
        watcher.stop()
    version, written, resumed = log.read_text().split()[-3:]
    assert version == ref_version and written == "0" and int(resumed) > 0, log.read_text()
    assert watcher.errors == [] and watcher.seen <= {ref_version}
    assert file_digests(home.datasets / version) == file_digests(reference.datasets / ref_version)
    manifest = json.loads((home.datasets / version / "manifest.json").read_text())
    assert manifest["version"] == ref_version
