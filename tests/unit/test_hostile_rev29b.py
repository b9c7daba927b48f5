"""Hostile review rev29b: crash consistency and idempotence of a nightly `pickapic build` killed at any point.

Reviewed by running the real CLI (``python -m dagster_project.cli build``: Dagster, Beam with NudeNet and imagehash,
DuckDB) on small simulated homes (12 users, 25 rankings a day, 64 px images), each build in its own session, killed
with SIGKILL to its process group: after fixed delays (1-11 s into a first build), and at chosen points found by a
hook that wraps ``os.replace`` / ``os.rename`` in the build process and kills the group just before or just after
the Nth rename whose destination matches a pattern (every rename a first build and a nightly make: the raw-day
digests, the raw image-uid index, ``raw_zone_problems``, the six ingest files, the Beam JPEGs and output part, the
``image_features`` / ``image_rejects`` partitions, ``duplicate_clusters``, ``decisions``, ``pairs``,
``datasets/pickapic.salts``, the four split tables and the ledger cache, the publish's contract caches, the version
rename, ``pickapic.history``, ``pickapic.switched``, ``latest``, ``published_split_pairs.json``,
``missing_blobs.json``, ``build_stamp.json``), then rerun until it succeeded.

Checked and found sound (no test here):
- every kill, before or after each rename above (46 kill points over a first build and a day-3 nightly, in one
  home killed 20-26 times in a row, and in fresh homes after 1..11 s), was followed by a rerun that succeeded
  without manual cleanup and left the published version, ``latest``, ``manifest.json``, ``sizes.json``, the
  shards, every warehouse Parquet file and every training JPEG byte-identical to an uninterrupted build (lock
  files' pids aside); `latest` only ever named complete versions;
- SIGKILL of the group, SIGTERM to the build alone and Ctrl-C (SIGINT to the group) never left a process of the
  group alive, and no ``/dev/shm`` entry or semaphore was left (builds run in a private ``/dev/shm`` mount);
- two `pickapic build` started at the same instant on a new home (4 times): one built, the other refused in one
  line naming the lock and the holder's pid, with no traceback; the locks are ``flock`` on pid files, so a
  stale pid (reused or not) left by a killed build blocks nothing (``formats/locks.py``), and the Dagster runs a
  killed build left are failed by the next one.

Found (each a strict xfail stating the correct behaviour; all fixed the same day by fix29b, tested further in
``tests/unit/test_fix29b.py``):
1. A Ctrl-C or SIGTERM that reaches `pickapic build` while Dagster runs a job but outside a step (e.g. as a run
   ends) is swallowed: Dagster's ``capture_interrupts`` records it and clears it when the run's context closes, so
   the build starts the next run, publishes a version and exits 0 ("built 2 day(s)"). Found by Ctrl-C after
   2 s and 6 s of a real build; made deterministic by a hook that signals the build when its first run succeeds.
   A SIGTERM there is swallowed the same way (Dagster maps SIGTERM to its SIGINT handler); two tests, one cause.
2. The temporary files (``.data.parquet.<hex>.tmp``) of the curation and split writers killed before their rename
   (``duplicate_clusters``, ``decisions``, ``pairs``, ``split_pairs``, ``split_rejects``, ``split_ledger``,
   ``split_key_owners``; and ``datasets/.pickapic.salts.<hex>.tmp`` beside the versions) are never removed: each
   crashed attempt adds one the size of the table, and no rerun sweeps them (only the publish sweeps its own).
3. The same for the feature stage: ``warehouse/image_features/dt=D/.part-0.parquet.<hex>.tmp``,
   ``image_rejects``' likewise, and a Beam worker's ``blobs/train/.../.<sha256>.jpg.<hex>.tmp`` stay after the day's
   features are rebuilt (the ingest clears its own six partition folders; the feature stage does not).
4. The same for the ingest's writers outside the day's partition folders: ``warehouse/raw_zone_problems``'s
   temporary file, and in ``cache/`` those of ``raw_day_digests.json`` and ``raw_image_uids/dt=D.parquet`` (killed
   in a first build: a nightly of an unchanged home rewrites neither cache).

Tests 2-4 share one module fixture: a home killed 3 times in its first build and 12 times in its day-3 nightly
(``FIRST_KILLS``, ``NIGHTLY_KILLS``), then rebuilt; each kill must hit (exit -9), so a kill point that moves
fails the fixture. Not attacked: the trainer asset (``--with-model``) and ``export``, reviewed for kills in
rev23b / rev22a.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from formats.home import DataHome
from formats.settings import write_settings
from simulator import SimConfig, simulate
from tests.cli_forkserver import CLI, CLI_MODULES, THIRD_PARTY, ForkServer, forked_cli, pickapic_env  # noqa: F401
from tests.fast_tmp import fast_folder

REPO = Path(__file__).resolve().parents[2]
SIM = SimConfig(days=3, users=12, rankings_per_day=25, image_size=64, seed=3)
DAY1, DAY2, DAY3 = (SIM.day(i) for i in range(3))
SMALL_HOME_SETTINGS = {"splits.min_users": 3, "splits.min_unique_rows": 1}
TIMEOUT = 300

# `pickapic build` with os.replace / os.rename wrapped: at the Nth rename whose destination matches
# REV29B_KILL_RE the whole process group is SIGKILLed just before the rename (the temporary file is complete).
KILL_AT_RENAME = r"""
import os, re, signal, sys
pattern, nth, hits = re.compile(os.environ["REV29B_KILL_RE"]), int(os.environ.get("REV29B_KILL_N", "1")), [0]
def wrap(original):
    def renamed(src, dst, *args, **kwargs):
        if pattern.search(os.fsdecode(dst)):
            hits[0] += 1
            if hits[0] == nth:
                os.killpg(os.getpgrp(), signal.SIGKILL)
        return original(src, dst, *args, **kwargs)
    return renamed
os.replace, os.rename = wrap(os.replace), wrap(os.rename)
from dagster_project.cli import main
sys.exit(main(sys.argv[1:]))
"""

# `pickapic build` that gets a signal (REV29B_SIG) from "the user" the moment its first Dagster run has succeeded
SIGNAL_AFTER_FIRST_RUN = r"""
import os, signal, sys
from dagster._core.instance import DagsterInstance
original, sent = DagsterInstance.handle_new_event, []
def handle_new_event(self, event, *args, **kwargs):
    result = original(self, event, *args, **kwargs)
    dagster_event = getattr(event, "dagster_event", None)
    # the event's value is PIPELINE_SUCCESS (DagsterEventType.RUN_SUCCESS's), not "RUN_SUCCESS": as filed the hook
    # never fired, and the strict xfails held for that reason (found by fix29b; corrected when the fix was merged)
    if dagster_event is not None and dagster_event.event_type.name == "RUN_SUCCESS" and not sent:
        sent.append(True)
        os.kill(os.getpid(), getattr(signal, os.environ["REV29B_SIG"]))
    return result
DagsterInstance.handle_new_event = handle_new_event
from dagster_project.cli import main
sys.exit(main(sys.argv[1:]))
"""


# the module's fork server preimports the CLI and its stages too (17 builds; the hooks below patch os.replace /
# os.rename, called through the module, and a Dagster class, never a project name before it is bound)
FORK_PREIMPORT = THIRD_PARTY + CLI_MODULES


def _run(cli: ForkServer, code: str | None, args: list[str], log: Path, **extra: str) -> int:
    """Run `pickapic ARGS` (through ``code`` when given) in its own session, output appended to ``log``; wait for it,
    then SIGKILL what is left of its group (a worker left behind must not write on). The process is forked from the
    module's server (``tests/cli_forkserver.py``): a run here is otherwise a new ``python -m dagster_project.cli
    ARGS`` (or ``python -c CODE ARGS``) in its own session, whose group the kill hook SIGKILLs."""
    try:
        return cli.run(["-c", code, *args] if code else [*CLI, *args], env=pickapic_env(**extra), timeout=TIMEOUT,
                       log=log).returncode
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} ran past {TIMEOUT}s; log:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def raw_zone(tmp_path_factory):
    """The simulated raw zone (and its settings) every home of this module starts from: simulated once, copied
    by each test (the three homes were three identical simulations)."""
    with fast_folder(tmp_path_factory.mktemp("rev29b-raw"), prefix="pickapic-rev29b-raw-") as folder:
        simulate(DataHome(folder / "raw"), SIM)
        write_settings(folder / "raw", SMALL_HOME_SETTINGS)
        yield folder / "raw"


def _raw_home(raw_zone: Path, folder: Path) -> DataHome:
    shutil.copytree(raw_zone, folder, symlinks=True)
    return DataHome(folder)


def _temps(home: DataHome, top: str) -> list[str]:
    """The killed writers' temporary files (``.NAME.<hex>.tmp``) under ``HOME/top``."""
    found = []
    for folder, dirs, files in os.walk(home.root / top):
        for name in files + dirs:
            if re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", name):
                found.append(os.path.relpath(os.path.join(folder, name), home.root))
    return sorted(found)


# the first build of days 1-2, then the nightly of day 3, each killed just before each of these renames in turn
# (in the order the build reaches them), then rerun uninterrupted
FIRST_KILLS = [
    (r"cache/raw_day_digests\.json$", 1),
    (rf"cache/raw_image_uids/dt={DAY1}\.parquet$", 1),
    (r"warehouse/raw_zone_problems/data\.parquet$", 1),
]
NIGHTLY_KILLS = [
    (r"warehouse/raw_zone_problems/data\.parquet$", 1),
    (r"\.jpg$", 5),
    (rf"warehouse/image_features/dt={DAY3}/part-0\.parquet$", 1),
    (rf"warehouse/image_rejects/dt={DAY3}/part-0\.parquet$", 1),
    (r"warehouse/duplicate_clusters/data\.parquet$", 1),
    (r"warehouse/decisions/data\.parquet$", 1),
    (r"warehouse/pairs/data\.parquet$", 1),
    (r"datasets/pickapic\.salts$", 1),
    (r"warehouse/split_pairs/data\.parquet$", 1),
    (r"warehouse/split_rejects/data\.parquet$", 1),
    (r"warehouse/split_ledger/data\.parquet$", 1),
    (r"warehouse/split_key_owners/data\.parquet$", 1),
]


@pytest.fixture(scope="module")
def crashed_nightly(tmp_path_factory, raw_zone, forked_cli):
    """A home whose first build (days 1-2) was SIGKILLed at each of FIRST_KILLS, then finished, and whose day-3
    nightly was SIGKILLed at each of NIGHTLY_KILLS, then rerun to success.

    Yields (the home, {kill: temporary files right after that kill}, the final rerun's exit code and log)."""
    with fast_folder(tmp_path_factory.mktemp("rev29b"), prefix="pickapic-rev29b-") as folder:
        home = _raw_home(raw_zone, folder / "home")
        log = folder / "build.log"
        seen = {}

        def kill(pattern: str, nth: int, *args: str) -> None:
            code = _run(forked_cli, KILL_AT_RENAME, ["build", "--home", str(home.root), *args], log,
                        REV29B_KILL_RE=pattern, REV29B_KILL_N=str(nth))
            assert code == -signal.SIGKILL, f"{pattern}: exit {code}; log:\n{log.read_text()[-3000:]}"
            seen[(pattern, args)] = [t for top in ("warehouse", "blobs", "cache", "datasets") for t in _temps(home, top)]

        for pattern, nth in FIRST_KILLS:
            kill(pattern, nth, "--to", DAY2)
        assert _run(forked_cli, None, ["build", "--home", str(home.root), "--to", DAY2], log) == 0, log.read_text()[-3000:]
        for pattern, nth in NIGHTLY_KILLS:
            kill(pattern, nth)
        final = folder / "final.log"
        code = _run(forked_cli, None, ["build", "--home", str(home.root)], final)
        yield home, seen, code, final.read_text(errors="replace")


def _left_after_rerun(crashed_nightly, tops: tuple[str, ...], keep: str = ".*") -> list[str]:
    home, seen, code, log = crashed_nightly
    assert code == 0, log[-3000:]
    assert seen[(NIGHTLY_KILLS[-1][0], ())], "the kills left no temporary file at all (the hook did not fire)"
    return [t for top in tops for t in _temps(home, top) if re.search(keep, t)]


def test_ctrl_c_between_runs_stops_the_build(raw_zone: Path, tmp_path: Path, forked_cli: ForkServer) -> None:
    with fast_folder(tmp_path) as folder:
        home = _raw_home(raw_zone, folder / "home")
        log = folder / "build.log"
        code = _run(forked_cli, SIGNAL_AFTER_FIRST_RUN, ["build", "--home", str(home.root), "--to", DAY2], log,
                    REV29B_SIG="SIGINT")
        text = log.read_text(errors="replace")
        assert "built 2 day(s)" not in text, text[-2000:]
        assert code == 130, f"exit {code}:\n{text[-2000:]}"
        assert not (home.datasets / "latest").exists(), "a build the user interrupted published a version"


def test_sigterm_between_runs_stops_the_build(raw_zone: Path, tmp_path: Path, forked_cli: ForkServer) -> None:
    with fast_folder(tmp_path) as folder:
        home = _raw_home(raw_zone, folder / "home")
        log = folder / "build.log"
        code = _run(forked_cli, SIGNAL_AFTER_FIRST_RUN, ["build", "--home", str(home.root), "--to", DAY2], log,
                    REV29B_SIG="SIGTERM")
        text = log.read_text(errors="replace")
        assert code != 0 and "built 2 day(s)" not in text, f"exit {code}:\n{text[-2000:]}"
        assert not (home.datasets / "latest").exists(), "a build that was told to terminate published a version"


def test_curation_and_split_writers_leave_no_temporary_files(crashed_nightly) -> None:
    left = _left_after_rerun(crashed_nightly, ("warehouse", "datasets"),
                             r"duplicate_clusters|decisions|/pairs/|split_|pickapic\.salts")
    assert left == [], f"killed writers' temporary files left after a successful rerun: {left}"


def test_feature_stage_leaves_no_temporary_files(crashed_nightly) -> None:
    left = _left_after_rerun(crashed_nightly, ("warehouse", "blobs"), r"image_features|image_rejects|\.jpg\.")
    assert left == [], f"killed writers' temporary files left after a successful rerun: {left}"


def test_ingest_writers_leave_no_temporary_files(crashed_nightly) -> None:
    left = _left_after_rerun(crashed_nightly, ("warehouse", "cache"), r"raw_zone_problems|raw_day_digests|raw_image_uids")
    assert left == [], f"killed writers' temporary files left after a successful rerun: {left}"
