"""Hostile review rev23a: the whole build run as a year-long deployment, not one function at a time.

Reviewed by running real ``pickapic build`` processes (Dagster, Beam, DuckDB) and the ingest stage's own
command (``python -m pipelines.ingest``) on small simulated homes, through realistic histories: days
arriving out of order, a day re-exported with corrections, a late ban, settings changed between nights
(``splits.salt``, ``publish.shards_per_day`` / ``min_shards_per_split``, ``features.jpeg_quality``),
crashes at the fault points of ``pipelines/faults.py`` and between two renames, then reruns; each final
home compared file by file (published version, warehouse) with a build from scratch of the same raw zone.

Held up (no test here): in-order nightly builds, a re-export with a changed and a removed ranking, a late
ban, and the three settings changes above each published the same version, byte for byte, as a build from
scratch; a crash at ``features.after_beam`` and a rerun gave the same partition.

Found (each was a strict xfail, stating the correct behaviour; all four fixed the same day by fix23d):

1. A SIGKILL between the renames of a late-image refresh (day D's ingest writing day D-1's six files
   again) leaves D-1's partitions mixed, and no rerun repairs them: the rerun of D finds nothing left to
   refresh, a ranking is then in no table and in no quarantine, and ``ingest_files`` counts it as accepted.
   The same crash in a real ``pickapic build`` followed by a successful rerun left ranking 2 of a simulated
   day in no warehouse table, no quarantine row and no decision.
2. An earlier day landing after a later one was built (a backfill, an export retried the next night):
   the later day's rankings that show the earlier day's images stay quarantined as
   ``unknown_image_reference`` for good (the build reruns only the new day), although a build from scratch
   accepts them. The README mentions ``--force`` for this; nothing runs it, and the reason stored is false.
3. A day folder that had not begun (UTC) when a build ran is skipped with a warning, but the build stamp
   records the raw zone as built: once the day has begun, ``pickapic build`` answers "up to date: nothing
   changed" and never ingests it (until something else in the home changes), with no warning any more.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from formats.settings import write_settings
from pipelines.ingest.config import OUTPUT_DATASETS
from pipelines.ingest.day import ingest_day
from simulator import SimConfig, simulate
from tests.cli_forkserver import forked_cli, run_python  # noqa: F401 (fixture)
from tests.fast_tmp import build_once

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))  # the seeded day builders of the late-image tests
from test_ingest_late_images import DAYS as LATE_DAYS  # noqa: E402
from test_ingest_late_images import build_days  # noqa: E402

# Two simulated days; day 2's export holds rankings that show images of day 1's export (a session across
# midnight), which is what an out-of-order arrival of day 1 must not lose.
SIM = SimConfig(days=2, users=12, rankings_per_day=25, image_size=64, seed=3)
DAY1, DAY2 = SIM.day(0), SIM.day(1)
SMALL_HOME_SETTINGS = {"splits.min_users": 3, "splits.min_unique_rows": 1}
INGEST_TABLES = ("rankings", "downloads", "quarantine", "ingest_files")


pytestmark = pytest.mark.usefixtures("forked_cli")   # the tests' commands: children of a fork server


def pickapic(home: Path, *args: str, runner: list[str] | None = None,
             env: dict[str, str] | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `pickapic <args> --home HOME` as its own process (no inherited home, instance or fault): forked from
    the module's server (``tests/cli_forkserver.py``: the imports paid once), or with ``fresh`` a new
    interpreter. ``runner``: a script run in place of ``-m dagster_project.cli``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_FAULT")}
    clean["PYTHONPATH"] = str(REPO)
    command = (runner or ["-m", "dagster_project.cli"]) + [args[0], "--home", str(home), *args[1:]]
    return run_python(command, env={**clean, **(env or {})}, cwd=REPO, fresh=fresh)


def _build_reference(folder: Path) -> None:
    raw = DataHome(folder / "raw")
    simulate(raw, SIM)
    write_settings(raw.root, SMALL_HOME_SETTINGS)
    shutil.copytree(raw.root, folder / "reference", symlinks=True)
    done = pickapic(folder / "reference", "build", fresh=True)   # a fresh interpreter: its own hash seed
    if done.returncode != 0:
        raise RuntimeError(f"pickapic build exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, DataHome]:
    """(the simulated raw zone of two days with its settings, a home built from scratch from a copy of it)."""
    folder = build_once(tmp_path_factory, "rev23a-two-days", _build_reference)
    return folder / "raw", DataHome(folder / "reference")


def _partition_bytes(home: DataHome, day: str, tables=INGEST_TABLES) -> dict[str, str]:
    """table -> sha256 of the day's partition file (what two homes' warehouses are compared by)."""
    return {table: hashlib.sha256(home.partition_file(table, day).read_bytes()).hexdigest() for table in tables}


# --- 1. a crash between the renames of a late-image refresh --------------------------------------------

KILL_BEFORE_RENAME = """
import os, runpy, signal, sys
target = os.environ["KILL_BEFORE_RENAME_OF"]
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.fspath(dst).endswith(target):          # a power cut between two renames of one day's files
        os.killpg(os.getpgrp(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["pipelines.ingest"] + sys.argv[1:]
runpy.run_module("pipelines.ingest", run_name="__main__")
"""


def test_a_crash_between_the_renames_of_a_late_image_refresh_is_repaired_by_the_rerun(fast_tmp: Path) -> None:
    day1, day2 = LATE_DAYS[:2]
    days = build_days()                   # day 1's rankings wait for images of days 2, 3 and 4
    reference = DataHome(fast_tmp / "reference")
    for day in (day1, day2):              # the nightly, uninterrupted: day 2's ingest refreshes day 1
        days[day].write(reference)
        ingest_day(reference, day)
    assert pq.read_table(reference.partition_file("ingest_files", day1)).column("accepted_late_image").to_pylist() \
        == [1, 0, 1, 0]                   # downloads, images, rankings, users: resolved through day 2's export

    home = DataHome(fast_tmp / "home")
    days[day1].write(home)
    ingest_day(home, day1)
    days[day2].write(home)
    wrapper = fast_tmp / "kill_before_rename.py"
    wrapper.write_text(KILL_BEFORE_RENAME)
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME")}
    env.update(PYTHONPATH=str(REPO), KILL_BEFORE_RENAME_OF=f"rankings/dt={day1}/part-0.parquet")
    # a child of the fork server runs in its own process group (as with start_new_session=True)
    crashed = run_python([str(wrapper), "--home", str(home.root), "--day", day2], cwd=REPO, env=env, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert _partition_bytes(home, day2) == _partition_bytes(reference, day2)   # day 2 itself was complete

    del env["KILL_BEFORE_RENAME_OF"]      # the rerun: day 2 again, as the next build does
    rerun = run_python(["-m", "pipelines.ingest", "--home", str(home.root), "--day", day2], cwd=REPO, env=env,
                       timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    files = {row["table"]: row for row in pq.read_table(home.partition_file("ingest_files", day1)).to_pylist()}
    rows = pq.read_table(home.partition_file("rankings", day1)).num_rows
    assert files["rankings"]["accepted"] == rows, "ingest_files counts a ranking the partition does not hold"
    assert _partition_bytes(home, day1, OUTPUT_DATASETS) == _partition_bytes(reference, day1, OUTPUT_DATASETS)


# --- 2. an earlier day landing after a later one was built ---------------------------------------------

def test_an_earlier_day_landing_late_resolves_the_later_days_references(simulated, fast_tmp: Path) -> None:
    raw, reference = simulated
    home = fast_tmp / "home"
    shutil.copytree(raw, home, symlinks=True)
    shutil.move(str(DataHome(home).raw_day(DAY1)), fast_tmp / "day1")   # day 1's export is late
    first = pickapic(home, "build")     # one day of 12 users publishes nothing yet; day 2 is ingested and recorded
    assert first.returncode == 0 or "not enough data to publish" in first.stderr, first.stdout[-3000:] + first.stderr[-3000:]
    waiting = [q for q in pq.read_table(DataHome(home).partition_file("quarantine", DAY2)).to_pylist()
               if q["reason"] == "unknown_image_reference" and q["table"] == "rankings"]
    assert waiting, "the scenario needs day 2 rankings that show day 1's images"

    shutil.move(str(fast_tmp / "day1"), DataHome(home).raw_day(DAY1))  # it lands the next night
    second = pickapic(home, "build")    # ingests day 1 (the split minimums of so small a home may refuse the publish)
    assert second.returncode == 0 or "not enough data to publish" in second.stderr, \
        second.stdout[-3000:] + second.stderr[-3000:]
    assert DataHome(home).partition_file("rankings", DAY1).is_file()
    assert _partition_bytes(DataHome(home), DAY2) == _partition_bytes(reference, DAY2)


# --- 3. a day folder that had not begun yet -------------------------------------------------------------

CLOCK_BEHIND = """
import datetime as _dt, os, runpy, sys, types
shift = _dt.timedelta(days=int(os.environ["CLOCK_SHIFT_DAYS"]))
class _Clock(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return _dt.datetime.now(tz) + shift
clock = types.SimpleNamespace(**{name: getattr(_dt, name) for name in dir(_dt) if not name.startswith("__")})
clock.datetime = _Clock
import dagster_project.build as build
import dagster_project.staleness as staleness
import pipelines.ingest.day as ingest_day
staleness.dt = build.dt = ingest_day.dt = clock     # the build's and the ingest's idea of "today (UTC)"
sys.argv = ["dagster_project.cli"] + sys.argv[1:]
runpy.run_module("dagster_project.cli", run_name="__main__")
"""


def test_a_day_skipped_before_it_began_is_built_once_it_has_begun(simulated, fast_tmp: Path) -> None:
    _, reference = simulated
    home = DataHome(fast_tmp / "home")
    shutil.copytree(reference.root, home.root, symlinks=True)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    shutil.copytree(home.raw_day(DAY2), home.raw_day(today))   # the export names today's folder early
    wrapper = fast_tmp / "clock_behind.py"
    wrapper.write_text(CLOCK_BEHIND)
    early = pickapic(home.root, "build", runner=[str(wrapper)], env={"CLOCK_SHIFT_DAYS": "-2"})
    assert early.returncode == 0, early.stdout[-3000:] + early.stderr[-3000:]
    assert "lie in the future" in early.stderr and not home.partition_file("rankings", today).exists()

    later = pickapic(home.root, "build")   # the clock has moved on: the day has begun
    assert later.returncode == 0, later.stdout[-3000:] + later.stderr[-3000:]
    assert home.partition_file("rankings", today).is_file(), later.stdout[-2000:]


# --- 4. an image blob that lands after its day was built -------------------------------------------------

def test_a_blob_that_lands_after_its_day_was_built_is_fingerprinted(simulated, fast_tmp: Path) -> None:
    raw, reference = simulated
    kept = [row for row in pq.read_table(reference.table_file("split_pairs")).to_pylist()
            if row["split"] == "train" and row["dt"].isoformat() == DAY2]
    uid = kept[0]["image_0_uid"]
    home = DataHome(fast_tmp / "home")
    shutil.copytree(raw, home.root, symlinks=True)
    blob = home.raw_images / f"{uid}.png"
    shutil.move(str(blob), fast_tmp / blob.name)             # not there yet when day 2 is built
    first = pickapic(home.root, "build")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rejected = {r["image_uid"]: r["reason"] for r in pq.read_table(home.partition_file("image_rejects", DAY2)).to_pylist()}
    assert rejected.get(uid) == "missing_blob", rejected

    shutil.move(str(fast_tmp / blob.name), blob)             # the blob lands
    second = pickapic(home.root, "build")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _partition_bytes(home, DAY2, ("image_features", "image_rejects")) == \
        _partition_bytes(reference, DAY2, ("image_features", "image_rejects"))
