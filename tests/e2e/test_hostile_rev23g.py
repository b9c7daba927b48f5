"""Hostile review rev23g of commit 190877c (fix23d, the answer to review rev23a).

Reviewed: the rewrite records of other days' partitions (``pipelines/ingest/rewrites.py``), the refresh of later
days whose quarantine waits for a landing day's images (``refresh_later_days``, ``pipelines/ingest/waiting.py``,
``cache/waiting_image_uids.json``), the build stamp's ``until`` (``dagster_project/buildstamp.py``, ``build.py``)
and the ``+missing-blobs:`` mark of a day's features version (``pipelines/provenance.py`` ``RejectedBlobs``,
``cache/missing_blobs.json``, ``dagster_project/staleness.py``, ``assets/features.py``), run as a year in
production would run them: real ``pickapic build`` processes on a small simulated home (the rev23a fixture),
the real ingest on the seeded day builders of the unit tests, the real ``build()`` and plan.

Held up (no test here): a crash at every rename of a backfilled day's ingest that rewrites two later days,
followed by an ingest of another day and the rerun, gives the uninterrupted bytes and leaves no record;
the ``+missing-blobs`` digest does not depend on the cache (kept, deleted) or on the order of the rejects; a
blob that lands as a symlink out of the zone or as a folder counts as landed and its rerun rejects it as
``unsafe_path``, as a build from scratch does (the mark then drops: fresh), a dangling symlink stays missing;
by reading only: a future day folder (``9999-12-31``) gives a stamp trusted until that day.

Found (each was a strict xfail stating the correct behaviour; all six fixed the same day by fix23g):

1. Two daily runs in parallel (the raw-day sensor starts one per landed day): an earlier day landing and
   ingested while a later day's ingest is in flight leaves the later day's rankings that show its images
   quarantined for good (the later day's ingest scanned the raw zone before the earlier day landed, the
   earlier day's ``refresh_later_days`` looked before the later day's partitions were written, and nothing
   looks again); a build from scratch accepts them. No lock orders the two.
2. Only ``missing_blob`` rejects are watched: a blob that lands the way ``cp``/``scp`` and most sync tools
   write it (in place) is seen half copied by the next build or sensor tick, fingerprinted again and
   rejected as ``truncated_image``/``empty_file``; once the copy completes nothing reruns the day
   (``pickapic build`` answers "up to date: nothing changed"), and its features differ from a build from scratch.
3. A build that runs past midnight UTC writes a stamp with no ``until`` for a day folder its plan skipped as
   not begun: ``until`` is computed from the clock at the end of the build, so the next ``pickapic build``
   answers "up to date" and the day is not ingested (the rev23a defect, back for a build that crosses midnight).
4. A raw day that lands while a build runs (after its plan) is recorded as built by the stamp the build
   writes at its end (the key is taken from the state after the runs, not the state the plan saw): the next
   ``pickapic build`` answers "up to date: nothing changed" and never ingests the day.
5. ``refresh_later_days`` looks up each later day's waiting uids in the landing day's uid index one day at a
   time: with K later days waiting for images (a lost image is enough), one ingest reads that index K
   times, so re-ingesting a year (``--force``, an ingest code bump) reads uid indexes ~days^2/2 times
   (66,000 for 365 days).
6. ``cache/missing_blobs.json`` holds every missing blob path of every day, unbounded: one day of 100,000
   missing blobs makes it 5.5 MB, 1,000,000 (80-character paths) 79 MB, loaded whole by every build-stamp
   check (the path that answers in well under a second: 2.4 s and +280 MB of memory at 1,000,000; the
   first check, which reads the partition, peaked at 1 GB), every plan and every sensor tick; the
   waiting-uid cache keeps a few KB a day.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dagster_project import buildstamp
from formats.home import DataHome
from pipelines.ingest import day as ingest_module
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day, refresh_later_days
from tests.cli_forkserver import forked_cli  # noqa: F401 (fixture)
from tests.e2e.test_hostile_rev23a import DAY2, _partition_bytes, pickapic, simulated  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))  # the seeded day builders of the ingest tests
from test_fix23d import LATE_DAYS, _backfill_days, _reject_missing, snapshot
from test_ingest_fixtures import DayBuilder

pytestmark = pytest.mark.usefixtures("forked_cli")   # the tests' commands (``pickapic``): children of a fork server

# --- 1. an earlier day ingested while a later day's ingest is in flight ---------------------------------

def test_an_earlier_day_ingested_while_a_later_days_ingest_runs_leaves_it_quarantined(fast_tmp: Path,
                                                                                        monkeypatch) -> None:
    days = _backfill_days()                      # days 2 and 3 show images of day 1
    reference = DataHome(fast_tmp / "reference")
    for builder in days.values():
        builder.write(reference)
    for day in LATE_DAYS[:3]:
        ingest_day(reference, day)
    expected = snapshot(reference, LATE_DAYS[:3])

    home = DataHome(fast_tmp / "home")
    days[LATE_DAYS[2]].write(home)
    ingest_day(home, LATE_DAYS[2])
    days[LATE_DAYS[1]].write(home)               # day 2 lands: the raw-day sensor starts its run
    real = ingest_module.write_tables_atomic
    landed: list[str] = []

    def day_1_lands_meanwhile(paths_writers):
        # day 2's run has scanned the raw zone and checked its references; before it writes, day 1 lands
        # (an export retried the next night) and the sensor's run for day 1 ingests it in parallel
        if not landed and any(f"dt={LATE_DAYS[1]}" in str(path) for path in paths_writers):
            landed.append(LATE_DAYS[0])
            days[LATE_DAYS[0]].write(home)
            ingest_day(home, LATE_DAYS[0])
        return real(paths_writers)

    monkeypatch.setattr(ingest_module, "write_tables_atomic", day_1_lands_meanwhile)
    ingest_day(home, LATE_DAYS[1])
    monkeypatch.undo()
    assert landed == [LATE_DAYS[0]]
    # the next night: a new day lands and is ingested (nothing it brings concerns days 1-3)
    DayBuilder(LATE_DAYS[3], seed=7, id_base=70_000).populate(users=1, images=2, rankings=1, downloads=0).write(home)
    ingest_day(home, LATE_DAYS[3])
    got = snapshot(home, LATE_DAYS[:3])
    assert [key for key in expected if got.get(key) != expected[key]] == []


# --- 2. a blob seen half copied ------------------------------------------------------------------------

def test_a_blob_seen_half_copied_is_fingerprinted_again_once_the_copy_completes(simulated, fast_tmp: Path) -> None:
    raw, reference = simulated
    kept = [row for row in pq.read_table(reference.table_file("split_pairs")).to_pylist()
            if row["split"] == "train" and row["dt"].isoformat() == DAY2]
    uid = kept[0]["image_0_uid"]
    home = DataHome(fast_tmp / "home")
    shutil.copytree(raw, home.root, symlinks=True)
    blob = home.raw_images / f"{uid}.png"
    data = blob.read_bytes()
    blob.unlink()                                            # not there yet when day 2 is built
    first = pickapic(home.root, "build")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    blob.write_bytes(data[: len(data) // 2])                 # the copy has begun when the next build runs
    second = pickapic(home.root, "build")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rejected = {r["image_uid"]: r["reason"] for r in pq.read_table(home.partition_file("image_rejects", DAY2)).to_pylist()}
    assert rejected.get(uid) in ("truncated_image", "empty_file", "not_an_image"), rejected

    blob.write_bytes(data)                                   # the copy completes
    third = pickapic(home.root, "build")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert _partition_bytes(home, DAY2, ("image_features", "image_rejects")) == \
        _partition_bytes(reference, DAY2, ("image_features", "image_rejects")), third.stdout[-2000:]


# --- 3 and 4. what the build stamp records at the end of a build -----------------------------------------

# `pickapic build` with a clock (CLOCK_SHIFT_DAYS from its start) and, once its plan is made, the clock moved
# on by SHIFT_AFTER_PLAN_DAYS (a build running past midnight UTC) or the folder LAND_AFTER_PLAN=SRC:DST copied
# into the raw zone (an export landing while the build runs)
AFTER_PLAN = """
import datetime as _dt, os, runpy, shutil, sys, types
shift = [_dt.timedelta(days=int(os.environ.get("CLOCK_SHIFT_DAYS", "0")))]
class _Clock(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return _dt.datetime.now(tz) + shift[0]
clock = types.SimpleNamespace(**{name: getattr(_dt, name) for name in dir(_dt) if not name.startswith("__")})
clock.datetime = _Clock
import dagster_project.build as build
import dagster_project.buildstamp as buildstamp
import dagster_project.staleness as staleness
import pipelines.ingest.day as ingest_day
# the build's, the stamp's and the ingest's idea of "today (UTC)" (the ingest refuses a day not begun: fix32e)
staleness.dt = build.dt = buildstamp.dt = ingest_day.dt = clock
real_plan = build.plan_build
def plan_build(*args, **kwargs):
    plan = real_plan(*args, **kwargs)
    shift[0] += _dt.timedelta(days=int(os.environ.get("SHIFT_AFTER_PLAN_DAYS", "0")))
    if os.environ.get("LAND_AFTER_PLAN"):
        src, dst = os.environ["LAND_AFTER_PLAN"].split(os.pathsep)
        shutil.copytree(src, dst)
    return plan
build.plan_build = plan_build
sys.argv = ["dagster_project.cli"] + sys.argv[1:]
runpy.run_module("dagster_project.cli", run_name="__main__")
"""


def _after_plan(fast_tmp: Path) -> list[str]:
    wrapper = fast_tmp / "after_plan.py"
    wrapper.write_text(AFTER_PLAN)
    return [str(wrapper)]


def test_a_build_running_past_midnight_does_not_stamp_a_day_it_skipped_as_built(simulated, fast_tmp: Path) -> None:
    _, reference = simulated
    home = DataHome(fast_tmp / "home")
    shutil.copytree(reference.root, home.root, symlinks=True)
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    shutil.copytree(home.raw_day(DAY2), home.raw_day(tomorrow))   # the export names tomorrow's folder early
    runner = _after_plan(fast_tmp)
    late_night = pickapic(home.root, "build", runner=runner, env={"SHIFT_AFTER_PLAN_DAYS": "1"})
    assert late_night.returncode == 0, late_night.stdout[-3000:] + late_night.stderr[-3000:]
    assert "lie in the future" in late_night.stderr and not home.partition_file("rankings", tomorrow).exists()

    next_build = pickapic(home.root, "build", runner=runner, env={"CLOCK_SHIFT_DAYS": "1"})   # the day has begun
    assert next_build.returncode == 0, next_build.stdout[-3000:] + next_build.stderr[-3000:]
    assert home.partition_file("rankings", tomorrow).is_file(), next_build.stdout[-2000:]


def test_a_raw_day_landing_during_a_build_is_ingested_by_the_next_build(simulated, fast_tmp: Path) -> None:
    _, reference = simulated
    home = DataHome(fast_tmp / "home")
    shutil.copytree(reference.root, home.root, symlinks=True)
    new_day = (dt.date.fromisoformat(DAY2) + dt.timedelta(days=1)).isoformat()
    export = fast_tmp / "export"
    shutil.copytree(home.raw_day(DAY2), export)
    during = pickapic(home.root, "build", runner=_after_plan(fast_tmp),
                      env={"LAND_AFTER_PLAN": os.pathsep.join([str(export), str(home.raw_day(new_day))])})
    assert during.returncode == 0, during.stdout[-3000:] + during.stderr[-3000:]
    assert home.raw_day(new_day).is_dir() and not home.partition_file("rankings", new_day).exists()

    next_build = pickapic(home.root, "build")
    assert next_build.returncode == 0, next_build.stdout[-3000:] + next_build.stderr[-3000:]
    assert home.partition_file("rankings", new_day).is_file(), next_build.stdout[-2000:]


# --- 5. the look at later days, a year at a time ------------------------------------------------------------

def test_the_look_at_later_days_reads_the_days_uid_index_once(fast_tmp: Path, monkeypatch) -> None:
    home = DataHome(fast_tmp / "home")
    days = [(dt.date(2023, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(12)]
    for i, day in enumerate(days):
        builder = DayBuilder(day, seed=i, id_base=1 + 1000 * i).populate(users=1, images=2, rankings=1, downloads=0)
        # one ranking a day shows an image no export holds (deleted before its export): its day waits for it
        builder.add("rankings", builder.ranking(image_0_uid=builder.uid(), image_1_uid=builder.image_uids[0],
                                                best_image_uid="none"))
        builder.write(home)
    for day in days:
        ingest_day(home, day)
    index = home.raw_image_uid_index(days[0])
    assert index.is_file()
    reads: list[str] = []
    real = pq.read_table

    def counting(source, *args, **kwargs):
        if os.fspath(source) == os.fspath(index):
            reads.append(os.fspath(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", counting)
    assert refresh_later_days(home, days[0], IngestConfig()) == {}   # nothing to refresh
    assert len(reads) <= 1, f"{len(reads)} reads of {index.name} for {len(days) - 1} later days"


# --- 6. the missing-blob cache ----------------------------------------------------------------------------------

def test_the_missing_blob_cache_stays_bounded_whatever_a_day_rejects(fast_tmp: Path) -> None:
    home = DataHome(fast_tmp / "home")
    day = "2023-02-13"
    home.raw_day(day).mkdir(parents=True)       # a day of the raw zone (one whose raw folder is gone is not watched)
    _reject_missing(home, day, [f"raw/images/{i:08x}-0000-4000-8000-{i:012x}.png" for i in range(100_000)])
    buildstamp.stamp_key(home)                   # `pickapic build`'s first look (the stamp's fast path)
    cache = home.cache / "missing_blobs.json"
    assert cache.is_file()
    assert cache.stat().st_size < 256 * 1024, f"{cache.stat().st_size} bytes for one day"
