"""Hostile review rev33e: the thirty-second session's automation and settings fixes, fix32e and fix32i.

Reviewed: ``dagster_project/automation.py`` (``build_skip_reason``, ``_build_lock_state``: the nightly and both sensors
skip while a `pickapic build` holds ``HOME/.build.lock``), ``pipelines/ingest/day.py`` (``check_day_begun`` /
``DayNotBegun``), ``dagster_project/serve.py`` (``project_root``, ``HOME/.locks/daemon.automation``), the home's
``max_concurrent_runs: 2``, and ``formats/settings.py`` (``Knob.canonical``, ``utc_naive``, ``home_file_canonical``);
README section 9 (rev32e, rev32i), *Jobs, schedules and sensors*, section 2 and *Settings*.

How: ticks of the real ``nightly_schedule`` through ``evaluate_tick`` against ``dg.instance_for_test`` (as
``tests/unit/test_hostile_rev32e.py``); the real ``build.build_lock`` held by a separate process running the real
ingest (``ingest_day`` with its forked workers, ``ingest.workers`` / ``parallel_min_bytes``) and the real publish
(``python -m pipelines.publish``'s ``main`` on a copy of the shared ``built_home``, its shard writers forked), that
process SIGKILLed from inside one of its workers the moment the work began (as the OOM killer or ``kill -9`` ends a
build; a hook, as reviews rev29b/rev30c used); the real CLI ``pickapic build`` (``python -m dagster_project.cli
build``) killed the same way; the real ingest over ``DayBuilder`` days; hostile instant spellings through
``utc_naive``.

What held up (no test): run: once nothing holds the build lock the automation is free at once (``build_skip_reason``
None, seen as soon as the orphans below were ended); the ``instant`` spellings tried (offsets, ``Z``, ``T``, an ISO
week date, ``20220101T000000``, a ``+00:00:00.000001`` offset) are read by one function (``utc_naive``) in both the
digest and the ingest, so no two spellings the ingest reads apart share a digest. Read in the code, not run: the
lock probe follows no link, skips a FIFO or folder, and a lock file the daemon may not read stops nothing; after a
build the sensors request its stale days and rebuild (only the nightly's failed-day retry waits a night, as
documented, and a build overlapping 02:00 every night plans and retries those days itself, so no day goes missing);
every clock read of the begun-day checks is UTC (no ``date.today()`` or local time in
dagster_project/pipelines/formats), so midnight and DST change nothing and a day only ever becomes "begun"; NSFW
classes are a set wherever they are used (DuckDB ``list_contains``, ``curation_inputs`` sorts them); a home-list
path merged with ``''`` is the same file at plan and run time, and the lists' bytes (by role) are in the version, so
a link repointed later changes the version.

Measured (2 shared CPUs): the real ``pickapic build`` of a one-day home with ``ingest.workers = 2`` and
``ingest.parallel_min_bytes = 1`` reached its ingest and was SIGKILLed at 33 s; 3 s later the two forked ingest
workers (ppid 1) still held the build lock and the nightly's skip reason named a running build; a publish of the demo
home in 62 shards, killed as its first batch began (5.6 s), left both writers holding ``.build.lock`` and
``.locks/publish.lock``. This file: about 15 s, 1 s and 10 s (the third after ``built_home``, 160 s when not built).

Noticed, not filed: ``build_running``'s docstring says a build starting while the daemon's probe holds its shared
lock (microseconds) "is told another build runs, and retried": it is not retried (``build_lock`` raises at once,
naming the pid the last build wrote: a cron ``pickapic build`` without ``--wait`` fails, rarely); ``utc_naive``
truncates a fraction past 6 digits (``...00:00:00.0000004`` is read as ``00:00:00``, so a created_at of exactly
``00:00:00`` that the written bound excludes is accepted; fix32i's own test states this reading, hence not filed);
the forked ingest workers of a killed daemon run would also hold their spill folder's lock (read, not run; same
cause as the first test); ``train`` and ``app_export`` schedules do not look at the build lock (nothing they run
duplicates a build's work).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All three were fixed the same day (fix33e, ``tests/unit/test_fix33e.py``) and their
markers removed: the ingest's fork pool is a ``formats.processes.worker_pool`` and the publish's shard writers start
with ``formats.processes.start_worker``, so both die with the build (``die_with_parent``) and leave no lock held; the
looks of one day's ingest at other days (``refresh_later_days``, ``repair_interrupted_rewrites``) leave a day that
has not begun alone (``day.day_begun``). The noticed ``build_running`` docstring is true now: ``build_lock`` tries a
lock held for an instant again for ``build.PROBE_GRACE_S`` before it refuses.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from test_ingest_fixtures import DayBuilder

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from formats.locks import try_lock
from tests.conftest import copy_home, default_signals
from tests.unit.test_automation import DAYS, _land_day, instance  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
SETTLE_S = 3.0     # after the kill: the workers finish the little work they had (a fixed build would have none left)

# A `pickapic build` holding the home's build lock and ingesting one day with its forked workers (what the build's
# in-process Dagster run does: build.build -> execute_in_process -> the ingest asset -> ingest_day), SIGKILLed by a
# hook in a worker the moment that worker starts (the OOM killer, `kill -9`, `timeout -s KILL`)
KILLED_IN_INGEST = r"""
import os, signal, sys
from pathlib import Path
import pipelines.ingest.day as day_module
from dagster_project.build import build_lock
from formats.home import DataHome
from pipelines.ingest.config import IngestConfig
parent, original = os.getpid(), day_module._ingest_tables
def hooked(*args, **kwargs):
    if os.getpid() != parent:
        os.kill(parent, signal.SIGKILL)
    return original(*args, **kwargs)
day_module._ingest_tables = hooked
home = DataHome(Path(sys.argv[1]))
with build_lock(home):
    day_module.ingest_day(home, sys.argv[2], IngestConfig(workers=2, parallel_min_bytes=1))
"""

# the same for the build's publish (its shard writers are forked: publish.workers = 0 is one per CPU)
KILLED_IN_PUBLISH = r"""
import os, signal, sys
from pathlib import Path
import pipelines.publish.shards as shards
from dagster_project.build import build_lock
from formats.home import DataHome
from pipelines.publish.__main__ import main
parent, original = os.getpid(), shards.write_batch
def hooked(*args, **kwargs):
    if os.getpid() != parent:
        os.kill(parent, signal.SIGKILL)
    return original(*args, **kwargs)
shards.write_batch = hooked
with build_lock(DataHome(Path(sys.argv[1]))):
    main(["--home", sys.argv[1], "--max-samples-per-shard", "7", "--workers", "2"])
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_FAULT")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _killed_build(script: str, log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Run ``script`` in its own session (output into ``log``: a pipe would be held open by what outlives it) and
    wait for it to be SIGKILLed; the caller ends its group."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=_env(), start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=default_signals)  # noqa: PLW1509 - no thread runs here
    try:
        code = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, code


def _left_in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            left.append(int(entry))
    return left


def _end_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _held(path: Path) -> bool:
    """Whether anyone holds an flock on ``path`` (probed as the automation probes: a shared lock taken and dropped)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return not try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _nightly_tick(home: DataHome, instance: dg.DagsterInstance):   # noqa: F811 - the fixture's name
    return automation.nightly_schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, resources={"data_home": PickapicHome(root=str(home.root))},
        repository_def=defs.get_repository_def()))


def test_a_build_killed_during_a_parallel_ingest_stops_the_nightly_for_good(fast_tmp, instance) -> None:  # noqa: F811
    """fix32e made the nightly and both sensors skip while anyone holds ``HOME/.build.lock``, trusting that "the kernel
    drops it when the holder dies, killed or not" (``formats.locks.hold_lock``). The ingest computes a large day in a
    ``ProcessPoolExecutor`` of forked workers (``pipelines.ingest.day._compute``: ``ingest.workers`` = 2 and any day
    of 16 MiB compressed or more, ``parallel_min_bytes``: every real day), created without
    ``formats.processes.die_with_parent`` (review rev30c gave it to the simulator's pool only). A fork shares the
    build's open lock file, so when the build is SIGKILLed during that ingest (the OOM killer, ``kill -9``, ``timeout
    -s KILL``) its workers, each holding both ends of its own call queue, never see it go and hold the build lock for
    good: every nightly and sensor tick then says "a `pickapic build` holds the build lock ... the sensors look again
    at their first tick after it ends" while no build runs, and every ``pickapic build`` is refused ("another build is
    running ... (pid N)", a dead pid). Seen with the real CLI build too (33 s; not run here: the same code path).
    Correct: a killed build leaves nothing holding its lock, and the next nightly requests the day."""
    home = DataHome(fast_tmp / "home")
    _land_day(home, DAYS[0])            # four empty files: the pool is used at parallel_min_bytes = 1
    log = fast_tmp / "build.log"
    proc, code = _killed_build(KILLED_IN_INGEST, log, str(home.root), DAYS[0])
    try:
        assert code == -signal.SIGKILL, log.read_text(errors="replace")[-2000:]
        time.sleep(SETTLE_S)
        left = _left_in_group(proc.pid)
        reason = automation.build_skip_reason(home)
        tick = _nightly_tick(home, instance)
    finally:
        _end_group(proc.pid)
    assert reason is None, reason
    assert [request.partition_key for request in tick.run_requests] == [DAYS[0]], tick.skip_message
    assert left == [], f"processes of the killed build still alive: {left}"


def test_an_ingested_day_that_has_not_begun_makes_every_later_ingest_fail(tmp_path: Path, monkeypatch) -> None:
    """fix32e's ``check_day_begun`` runs at the top of ``ingest_day``, which is also how one day's ingest rewrites
    another (``_rewrite``: ``rewrites.begin`` records the intent, then ``_again`` -> ``ingest_day``). A home can hold
    the partitions of a day that has not begun: the six ``dt=9999-12-31`` partitions the UI run of review rev32e wrote
    before the fix (nothing removed them), or a day ingested while the machine's clock ran ahead. When a landing day
    holds an image that day's quarantine waits for (``refresh_later_days``), its ingest writes its own six partitions,
    then rewrites that day: ``DayNotBegun`` is raised out of the landing day's ingest ("... (nothing was written)",
    although its partitions were), and the rewrite record stays pending. ``repair_interrupted_rewrites`` then redoes it
    at the start of every later ingest, catching only ``RawDayGone``: every ingest of every day fails from then on,
    and the daily runs with it. Correct: a day that has not begun is left alone by the other days' looks (it is an
    export error, never ingested; at most said), and the other days ingest."""
    from pipelines.ingest import day as day_module
    from pipelines.ingest import rewrites

    home = DataHome(tmp_path / "home")
    landing, later, future = "2023-03-01", "2023-03-05", "9999-12-30"
    first = DayBuilder(landing, seed=1, id_base=1).populate(users=2, images=4, rankings=2, downloads=1)
    odd = DayBuilder(future, seed=2, id_base=20_000).populate(users=2, images=4, rankings=2, downloads=1)
    odd.add("rankings", odd.ranking(image_0_uid=first.image_uids[0], image_1_uid=odd.image_uids[0],
                                    best_image_uid="none"))   # waits for an image of the day that lands next
    odd.write(home)
    real = day_module.check_day_begun
    with monkeypatch.context() as patch:   # ingested when its day had begun by the clock (or before fix32e)
        patch.setattr(day_module, "check_day_begun", lambda day, today=None: real(day, "9999-12-31"))
        day_module.ingest_day(home, future)
    assert home.partition_file("quarantine", future).is_file()

    first.write(home)
    failures = []
    try:
        day_module.ingest_day(home, landing)
    except day_module.DayNotBegun as exc:
        failures.append(f"{landing}: {exc}")
    DayBuilder(later, seed=5, id_base=50_000).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    try:
        day_module.ingest_day(home, later)
    except day_module.DayNotBegun as exc:
        failures.append(f"{later}: {exc}")
    assert failures == [], failures
    assert future not in rewrites.pending(home)


def test_a_build_killed_while_it_writes_shards_leaves_both_locks_held_for_good(built_home, fast_tmp) -> None:
    """The publish writes shards in a fork pool (``pipelines.publish.shardphase``: ``publish.workers`` = 0, one
    writer per CPU, whenever two or more shards are to be written), also without ``die_with_parent``. A build
    SIGKILLed as its shard writers start leaves them running for good, holding the build lock (the automation skips
    for good, as in the first test) and ``.locks/publish.lock``: every later publish, the daemon's rebuild included,
    waits for it ("waiting for another publish on this home (pid N ...)") for ever, its run STARTED. Correct: the
    writers die with the build and both locks are free."""
    from pipelines.publish.versions import publish_lock_file

    home = copy_home(built_home, fast_tmp / "home")
    log = fast_tmp / "publish.log"
    proc, code = _killed_build(KILLED_IN_PUBLISH, log, str(home.root))
    try:
        assert code == -signal.SIGKILL, log.read_text(errors="replace")[-2000:]
        time.sleep(SETTLE_S)
        left = _left_in_group(proc.pid)
        held = {"build lock": _held(home.lock_file), "publish lock": _held(publish_lock_file(home))}
    finally:
        _end_group(proc.pid)
    assert left == [], f"processes of the killed build still alive: {left}"
    assert held == {"build lock": False, "publish lock": False}
