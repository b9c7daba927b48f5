"""Concurrency: readers during a nightly rebuild, and two builds started at once on one data home.

Readers: a loop of `pickapic query` processes (``python -m pipelines.query.engine``, the module the
subcommand mounts) and a WebDataset reader over ``latest`` (resolved once per pass, every sample of
the train split read) run while a nightly build publishes day 3 -- first killed between its new
version and the ``latest`` switch, then rerun to completion. No reader may fail, and every pass must
match exactly one complete version (sample keys == that version's sidecar keys; query results == the
same query pinned to one version).

Two builds: while a first build holds the data home's lock, a second refuses (non-zero exit, a message
naming the running build's pid) and a third started with ``--wait`` waits, then succeeds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds

from formats.dataset import list_versions, resolve_version
from formats.home import DataHome
from pipelines.publish.manifest import verify_version
from pipelines.publish.versions import staging_root
from pipelines.query.engine import execute
from tests.e2e.test_crash_recovery import (  # noqa: F401  (crash_reference is a fixture
    DAY3,
    REPO,
    LatestWatcher,
    build_command,
    crash_reference,
    finish,
    run_build,
    start_process,
    tail,
    wait_until,
)

QUERY = "SELECT count(*) AS n, md5(string_agg(key || '/' || split, ',' ORDER BY key, split)) AS keys_md5 FROM pairs"


class Reader(threading.Thread):
    """Runs ``one_pass`` in a loop until stopped; records results, the versions seen and any error."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.results: list[tuple] = []
        self.passes = 0

    def one_pass(self) -> tuple:
        raise NotImplementedError

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.results.append(self.one_pass())
            except Exception as exc:  # noqa: BLE001 -- a reader must never fail: record whatever it was
                self.errors.append(f"{self.name}: {exc!r}")
            self.passes += 1

    def wait_passes(self, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` more passes have completed."""
        target = self.passes + count
        deadline = time.monotonic() + timeout
        while self.passes < target and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)
        assert self.passes >= target, f"{self.name}: no pass completed in {timeout}s ({self.errors[:3]})"

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=120)


class QueryProcessReader(Reader):
    """`pickapic query` as a separate process each pass (JSON output)."""

    def __init__(self, home: DataHome) -> None:
        super().__init__("query")
        self.command = [sys.executable, "-m", "pipelines.query.engine", "--home", str(home.root), "--format", "json", QUERY]

    def one_pass(self) -> tuple:
        done = subprocess.run(self.command, cwd=REPO, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
        (row,) = json.loads(done.stdout)
        return row["n"], row["keys_md5"]


class ShardReader(Reader):
    """WebDataset over the train shards of ``latest`` (resolved once per pass), every sample decoded."""

    def __init__(self, home: DataHome) -> None:
        super().__init__("webdataset")
        self.home = home

    def one_pass(self) -> tuple:
        path = resolve_version(self.home)       # once: the whole pass reads this directory
        split = path / "train"
        urls = sorted(str(p) for p in split.glob("pickapic-train-*.tar"))
        expected = pq.read_table(sorted(split.glob("pickapic-train-*.parquet")), columns=["key"]).column("key").to_pylist()
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
        keys = []
        for sample in dataset:
            missing = {"0.jpg", "1.jpg", "json", "txt"} - set(sample)
            if missing:
                raise AssertionError(f"{path.name}: sample {sample['__key__']} lacks {sorted(missing)}")
            if sample["json"]["caption"] != sample["txt"]:
                raise AssertionError(f"{path.name}: sample {sample['__key__']}: json caption != txt")
            sample["0.jpg"].size, sample["1.jpg"].size  # noqa: B018 -- decoded
            keys.append(sample["__key__"])
        if keys != expected:
            raise AssertionError(f"{path.name}: {len(keys)} samples read, sidecars list {len(expected)}; "
                                 f"first difference at {next((i for i, (a, b) in enumerate(zip(keys, expected)) if a != b), None)}")
        return path.name, len(keys)


def test_readers_never_fail_or_mix_versions_during_nightly_rebuild(crash_reference, scratch: Path, tmp_path: Path) -> None:
    """Query processes and a WebDataset reader run through a crashed, then completed, nightly publish."""
    _, reference = crash_reference
    shutil.copytree(reference.root, scratch / "home", symlinks=True)
    home = DataHome(scratch / "home")
    old = os.readlink(home.datasets / "latest")
    readers = [QueryProcessReader(home), ShardReader(home)]
    watcher = LatestWatcher(home)
    for thread in (*readers, watcher):
        thread.start()
    try:
        for reader in readers:
            reader.wait_passes(1)
        # the nightly build of day 3 dies with its new version in place but `latest` not switched
        log = tmp_path / "1-nightly-killed.log"
        assert run_build(home, log, "--from", DAY3, "--to", DAY3, fault="publish.before_switch") == -signal.SIGKILL, tail(log)
        assert os.readlink(home.datasets / "latest") == old
        (new,) = set(list_versions(home)) - {old}
        verify_version(home.datasets / new, checksums=True)
        for reader in readers:
            reader.wait_passes(1)
        # the rerun switches `latest` (the version is reused, not rewritten)
        log = tmp_path / "2-nightly.log"
        assert run_build(home, log, "--from", DAY3, "--to", DAY3) == 0, tail(log)
        assert os.readlink(home.datasets / "latest") == new
        for reader in readers:
            reader.wait_passes(2)
    finally:
        for thread in (*readers, watcher):
            thread.stop()

    for reader in readers:
        assert reader.errors == [], reader.errors[:5]
    assert watcher.errors == [], watcher.errors[:5]
    assert watcher.seen == {old, new}
    shard_reader = next(r for r in readers if isinstance(r, ShardReader))
    assert {version for version, _ in shard_reader.results} == {old, new}, "the reader never raced the switch"
    pinned = {}
    for version in (old, new):
        row = execute(home, QUERY, version=version).to_pylist()[0]
        pinned[(row["n"], row["keys_md5"])] = version
    assert len(pinned) == 2, "the old and the new version have the same pairs"
    query_reader = next(r for r in readers if isinstance(r, QueryProcessReader))
    unexpected = [result for result in query_reader.results if result not in pinned]
    assert unexpected == [], f"query results matching no single version: {unexpected[:3]}"
    assert {pinned[result] for result in query_reader.results} == {old, new}
    for version in (old, new):
        verify_version(home.datasets / version, checksums=True)


def test_second_build_refuses_or_waits(crash_reference, scratch: Path, tmp_path: Path) -> None:
    """A build while another holds the lock exits non-zero naming the holder; with --wait it waits, then succeeds."""
    _, reference = crash_reference
    shutil.copytree(reference.root, scratch / "home", symlinks=True)
    home = DataHome(scratch / "home")
    nightly = ("--from", DAY3, "--to", DAY3)   # holds the lock for a day's ingest + fingerprints + the rebuild
    first_log, refused_log, waiting_log = (tmp_path / f"{n}.log" for n in ("first", "refused", "waiting"))
    first = start_process(build_command(home, *nightly), first_log)
    refused = waiting = None
    try:
        wait_until(lambda: home.lock_file.exists() and home.lock_file.read_text().strip() == str(first.pid),
                   first, first_log, "the first build to take the lock", poll=0.05)
        refused = start_process(build_command(home, *nightly), refused_log)
        waiting = start_process(build_command(home, *nightly, "--wait"), waiting_log)
        refused_code = finish(refused, refused_log, timeout=120)
        assert first.poll() is None, "the first build ended before the second one tried the lock: no contention tested"
        message = refused_log.read_text()
        assert refused_code != 0, message
        assert f"another build is running on {home.root} (pid {first.pid}, lock {home.lock_file})" in message, message
        assert "--wait" in message and "Traceback" not in message, message
        # the waiting build gets the lock (and writes its pid there) only once the first build has published
        while first.poll() is None:
            holder = home.lock_file.read_text().strip()
            if holder != str(first.pid):
                assert holder == str(waiting.pid), f"lock file names pid {holder!r}"
                assert (home.datasets / "latest").is_symlink(), "the --wait build took the lock before the first published"
                break
            assert waiting.poll() is None, f"the --wait build ended early:\n{tail(waiting_log)}"
            time.sleep(0.05)
        assert finish(first, first_log) == 0, tail(first_log)
        assert finish(waiting, waiting_log) == 0, tail(waiting_log)
        assert home.lock_file.read_text().strip() == str(waiting.pid), "the --wait build never took the lock"
    finally:
        for proc in (first, refused, waiting):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert f"built 1 day(s) {DAY3}..{DAY3}" in waiting_log.read_text()
    old = os.readlink(reference.datasets / "latest")
    versions = list_versions(home)
    assert len(versions) == 2 and old in versions, versions
    assert os.readlink(home.datasets / "latest") == versions[-1] != old
    verify_version(resolve_version(home), checksums=True)
    assert not list(staging_root(home.datasets).glob(".partial-*"))
