"""Hostile review rev33k of fix33a (marked, umask-honouring scratch folders; curation snapshots in
``HOME/.staging/curation``) and fix33g (``benchmarks.claim`` / ``remove_owned`` / ``work_folder``; ``benchmarks.run``
forking each benchmark; ``benchmarks.nightly``'s ``.built``).

How: the real helpers of ``formats.locks`` on real folders (a ``cache/tmp`` linked to a scratch disk, a home's
``.staging/curation``), real curation builds (DuckDB, ``curation_fixtures``) in-process, and ``benchmarks.run.isolated``
driven in real processes (``fork``, a new session, real SIGINT to the process group as a terminal's Ctrl-C sends it,
real SIGTERM to the parent as ``kill`` or a job runner's cancel sends it).

What held up (no test): a marker-less folder of a matching name is never removed, a ``.new-`` one only when empty
and an hour old; a live holder's folder cannot be taken by another account's sweep (its ``flock`` is on the inode;
the sweeper's ``try_lock`` fails, nothing removed); the spill folders are now 0755 under umask 022, but their files
are ``NamedTemporaryFile``'s 0600 (other accounts see names, never the raw text of bad lines), and hard-linked curation
snapshots keep their inodes' modes (copies keep theirs: ``copymode``), so nothing is more readable than the inputs;
``remove_owned`` refuses a symlink, a file and an unmarked non-empty folder; ``isolated`` reports a benchmark killed
by a signal or exiting without a result as a failure (exit status 1 at the end) and a benchmark's ``SystemExit``
too; ``ru_maxrss`` from ``wait4`` is the larger of the child and its reaped descendants, as documented (measured:
a 200 MB child that was waited for: 213 MB; a parent that had peaked at 300 MB before the fork: the child still
12 MB, nothing inherited; a child not waited for is not counted, as the docstring says).

Measured: a planted marked folder 1,200 levels deep makes ``sweep_scratch_folders`` raise ``RecursionError``
(Python 3.11's recursive ``shutil.rmtree``; ``ignore_errors`` covers only ``OSError``); under ``benchmarks.run``,
Ctrl-C left the temporary work folder of a 3,000-file benchmark in place (3 of 3 tries: 2,955-3,000 files left;
the test uses 20,000, all left), where the same benchmark run by itself removes it; SIGTERM to ``benchmarks.run`` left the forked benchmark running,
reparented to init.

Noticed, not filed: the marker is no proof of who made a folder: through a ``cache/tmp`` linked to a sticky shared
scratch disk, any local account can plant a marked ``ingest-DAY-X`` folder that every ingest then deletes (its own
bytes only: ``rmtree`` follows no link, so nothing of this account's is lost); a forked grandchild of a benchmark
that outlived it would hold the result pipe open and stall ``isolated`` (no benchmark leaves one: every pool is in a
``with``); ``benchmarks.nightly``'s ``.built`` holds the simulator configuration only, not the code versions, so a
snapshot built by an older version is reused after an upgrade (its first nightly then times an ingest-version
rebuild) -- not confirmed with two real versions here; a group member can write into a live 0775 snapshot folder,
but such a member may write the warehouse itself; a killed ingest's fork-pool workers inherit its spill folder's
``flock`` (one open file description) and keep it unswept while they live (rev33e's finding for the build lock).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All three were fixed the same day (fix33k, ``tests/unit/test_fix33k.py``) and their
markers removed: the scratch sweep removes folders without recursion (``formats.trees.remove_tree``) and leaves a
folder it cannot remove, never raising; ``benchmarks.run.isolated`` stops its benchmark on a SIGTERM or SIGHUP to
itself and on Ctrl-C waits for the benchmark's clean-up (which turns the first stop signal into KeyboardInterrupt and
ignores the others); and ``benchmarks.nightly``'s ``.built`` (and ``nightly_publish``'s history marker) also hold
the stages' code versions and a digest of the simulator's code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from curation_fixtures import HomeBuilder, build_all

from formats.home import DataHome
from formats.locks import SCRATCH_MARKER
from pipelines.curation.decisions import CurationConfig, build_decisions
from pipelines.ingest import day as ingest

REPO = Path(__file__).resolve().parents[2]


def _plant_deep_marked_folder(top: Path, depth: int = 1200) -> None:
    """What any account that can write the scratch folder can make: a folder of a swept name holding the marker
    (an empty file), and below it folders ``depth`` levels deep (made relative to each other: no path limit)."""
    top.mkdir(parents=True)
    (top / SCRATCH_MARKER).touch()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _remove_deep(top: Path, depth: int = 1200) -> None:
    """Remove what :func:`_plant_deep_marked_folder` made (or what of it is left), deepest first, without recursion
    (``fast_tmp``'s own clean-up would hit the same RecursionError)."""
    for level in range(depth, -1, -1):
        folder = Path(top, *["d"] * level)
        if folder.is_dir():
            for entry in os.listdir(folder):
                if entry != "d":
                    os.unlink(folder / entry)
            os.rmdir(folder)


def test_a_planted_deep_marked_folder_does_not_break_every_later_build(fast_tmp):
    # the marker is an empty file: anyone who can write .staging/curation (a group member) or the shared scratch
    # disk a cache/tmp links to (any local account, README section 4) makes one; the sweep then takes the folder for
    # the tool's own and runs shutil.rmtree on it, which recurses once per level and is not covered by ignore_errors
    b = HomeBuilder(fast_tmp / "home")
    b.pair(1)
    home = b.write()
    build_all(home)
    planted = [home.curation_snapshots / "curation-planted", fast_tmp / "scratch-disk" / "ingest-2023-03-01-planted"]
    try:
        _plant_deep_marked_folder(planted[0])
        build_decisions(home, CurationConfig())      # today: RecursionError from sweep_snapshot_folders

        spill_home = DataHome(fast_tmp / "spill-home")
        _plant_deep_marked_folder(planted[1])
        spill_home.cache.mkdir(parents=True)
        os.symlink(planted[1].parent, spill_home.cache / "tmp")
        ingest.sweep_spill_folders(spill_home)       # run under the ingest lock by every ingest: must not raise
    finally:
        for top in planted:
            _remove_deep(top)


def _session(script: str, env_extra: dict[str, str]) -> subprocess.Popen:
    """``script`` in a new session (its own process group, as a shell's foreground job), SIGINT and SIGTERM at their
    defaults (an xdist worker ignores SIGINT, and Python keeps an ignored SIGINT ignored)."""
    def defaults() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                            start_new_session=True, preexec_fn=defaults,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_to_benchmarks_run_stops_the_benchmark_it_forked(fast_tmp):
    record = fast_tmp / "child.pid"
    parent = _session("""
        import os, time
        from benchmarks.run import isolated

        def benchmark(record):
            open(record, "w").write(str(os.getpid()))
            time.sleep(60)                        # a long benchmark (minutes, GBs of disk, every CPU)
            return {}

        isolated(benchmark, os.environ["R33K_RECORD"])
    """, {"R33K_RECORD": str(record)})
    child = int(_wait_for(record))
    try:
        parent.send_signal(signal.SIGTERM)        # kill PID, timeout(1) without its group, a CI job's cancel
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child), "the benchmark outlived benchmarks.run"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)        # this test's own orphan, by its pid


def test_ctrl_c_under_benchmarks_run_removes_the_benchmarks_temporary_folder(fast_tmp):
    record = fast_tmp / "work.txt"
    temp = fast_tmp / "tmp"
    temp.mkdir()
    parent = _session("""
        import os, time
        from benchmarks import work_folder
        from benchmarks.run import isolated

        def benchmark(record):
            with work_folder(None, "bench-r33k-") as base:
                for index in range(20000):        # a benchmark's work: many files (GBs in a real one)
                    (base / f"f{index}").write_bytes(b"x")
                open(record, "w").write(str(base))
                time.sleep(60)
            return {}

        isolated(benchmark, os.environ["R33K_RECORD"])
    """, {"R33K_RECORD": str(record), "TMPDIR": str(temp)})
    try:
        work = Path(_wait_for(record))
        os.killpg(parent.pid, signal.SIGINT)      # the terminal's Ctrl-C: every process of the foreground group
        parent.wait(timeout=60)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert not work.exists(), f"{len(list(work.iterdir()))} files of the benchmark's temporary folder left"
