"""The fixes of review rev23a's four defects (tests/e2e/test_hostile_rev23a.py runs the real builds):

1. a rewrite of another day's six partitions is recorded before its renames, so a crash at any rename is
   redone by the next ingest (of the same day or any other) and planned by `pickapic build`;
2. a day that lands after later days were built brings their waiting references up to date;
3. a build stamp written while a raw day had not begun is not trusted once that day has begun;
4. a blob rejected as missing_blob that lands later makes its day's features stale (build, stamp, sensors).
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_automation import DAYS, _plan, _pretend_built, _sensor_context, home, instance  # noqa: F401 (fixtures)
from test_ingest_fixtures import DayBuilder
from test_ingest_late_images import DAYS as LATE_DAYS
from test_ingest_late_images import build_days

from dagster_project import automation, buildstamp
from dagster_project.staleness import DATA_VERSION_TAG
from formats.home import DataHome
from pipelines.ingest import rewrites, waiting
from pipelines.ingest.config import OUTPUT_DATASETS
from pipelines.ingest.day import ingest_day
from pipelines.provenance import MISSING_MARK, RejectedBlobs, missing_mark
from schemas import get_schema


def snapshot(home: DataHome, days=LATE_DAYS) -> dict[str, bytes]:
    return {f"{ds}/{day}": home.partition_file(ds, day).read_bytes()
            for day in days for ds in OUTPUT_DATASETS if home.partition_file(ds, day).is_file()}


# --- 1. a crash at any rename of a rewrite ---------------------------------------------------------------

class PowerCut(BaseException):
    """A crash at a rename: no rename after it, no clean-up of this module's making (a BaseException,
    which no ``except Exception`` handles)."""


def _crash_at(monkeypatch, index: int) -> list[str]:
    """Make the ``index``-th os.replace (0-based) raise PowerCut instead of renaming; returns the targets seen."""
    real = os.replace
    seen: list[str] = []

    def replace(src, dst, *args, **kwargs):
        seen.append(os.fspath(dst))
        if len(seen) - 1 == index:
            raise PowerCut(os.fspath(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return seen


def _two_days(folder: Path) -> DataHome:
    """Day 1 ingested, day 2 landed (its export resolves day 1's waiting references)."""
    days = build_days()
    home = DataHome(folder)
    days[LATE_DAYS[0]].write(home)
    ingest_day(home, LATE_DAYS[0])
    days[LATE_DAYS[1]].write(home)
    return home


def test_a_crash_at_any_rename_of_a_late_image_refresh_is_redone_by_the_rerun(tmp_path: Path, monkeypatch) -> None:
    reference = _two_days(tmp_path / "reference")
    seen = _crash_at(monkeypatch, -1)            # count the renames of the uninterrupted run
    assert sorted(ingest_day(reference, LATE_DAYS[1]).refreshed) == [LATE_DAYS[0]]
    monkeypatch.undo()
    expected = snapshot(reference)
    day1 = [path for path in seen if f"dt={LATE_DAYS[0]}/part-0.parquet" in path]
    assert len(day1) == len(OUTPUT_DATASETS)     # the refresh renames day 1's six files
    marker = next(i for i, path in enumerate(seen) if path.endswith(f"{rewrites.FOLDER}/dt={LATE_DAYS[0]}"))
    assert rewrites.pending(reference) == []

    crashes = 0
    for index, target in enumerate(seen):
        home = _two_days(tmp_path / f"crash-{index}")
        _crash_at(monkeypatch, index)
        with pytest.raises(PowerCut):
            ingest_day(home, LATE_DAYS[1])
        monkeypatch.undo()
        if marker < index <= seen.index(day1[-1]):   # from the record's rename to day 1's last: recorded
            crashes += 1
            assert rewrites.pending(home) == [LATE_DAYS[0]], target
        ingest_day(home, LATE_DAYS[1])           # the rerun (the next build reruns day 2: it was never recorded)
        assert snapshot(home) == expected, f"crash before renaming {target}"
        assert rewrites.pending(home) == []
    assert crashes >= len(OUTPUT_DATASETS)       # every rename of day 1's files was crashed at


def test_an_interrupted_rewrite_is_redone_by_an_ingest_of_any_other_day(tmp_path: Path, monkeypatch) -> None:
    home = _two_days(tmp_path / "home")
    reference = _two_days(tmp_path / "reference")
    ingest_day(reference, LATE_DAYS[1])
    count = _two_days(tmp_path / "count")
    seen = _crash_at(monkeypatch, -1)
    ingest_day(count, LATE_DAYS[1])
    monkeypatch.undo()
    rankings = seen.index(next(p for p in seen if p.endswith(f"rankings/dt={LATE_DAYS[0]}/part-0.parquet")))
    _crash_at(monkeypatch, rankings)
    with pytest.raises(PowerCut):
        ingest_day(home, LATE_DAYS[1])
    monkeypatch.undo()
    assert rewrites.pending(home) == [LATE_DAYS[0]]
    # not day 2 again: a day that waits for nothing of day 1 (nothing to refresh) still finishes the rewrite
    DayBuilder("2023-04-20", seed=9, id_base=90_000).populate(users=1, images=2, rankings=1, downloads=0).write(home)
    report = ingest_day(home, "2023-04-20")
    assert sorted(report.refreshed) == [LATE_DAYS[0]]
    assert snapshot(home, LATE_DAYS[:1]) == snapshot(reference, LATE_DAYS[:1])
    assert rewrites.pending(home) == []


def test_a_day_whose_rewrite_was_interrupted_is_planned_by_the_build(home, instance) -> None:  # noqa: F811
    _pretend_built(home, instance, _plan(home, instance))
    assert _plan(home, instance).up_to_date
    rewrites.begin(home, DAYS[0], DAYS[1])
    plan = _plan(home, instance)
    assert plan.runs[0].partition == DAYS[0] and plan.runs[0].ops == ["ingest_day", "fingerprint_images"]
    assert "interrupted" in plan.runs[0].reasons[0]


# --- 2. an earlier day landing after later days were built ------------------------------------------------

def _backfill_days() -> dict[str, DayBuilder]:
    """Three days; days 2 and 3 show images of day 1, day 3 also an image no export holds."""
    days = {day: DayBuilder(day, seed=i, id_base=1 + 10_000 * i).populate(users=2, images=4, rankings=2, downloads=1)
            for i, day in enumerate(LATE_DAYS[:3])}
    d1, d2, d3 = (days[d] for d in LATE_DAYS[:3])
    d2.add("rankings", d2.ranking(image_0_uid=d1.image_uids[0], image_1_uid=d2.image_uids[0], best_image_uid="none"))
    d2.add("downloads", d2.download(image_uid=d1.image_uids[1]))
    d3.add("rankings", d3.ranking(image_0_uid=d1.image_uids[2], image_1_uid=d3.image_uids[0],
                                  best_image_uid=d3.image_uids[0]))
    d3.add("rankings", d3.ranking(image_0_uid=d3.uid(), image_1_uid=d3.image_uids[1], best_image_uid="none"))
    return days


def test_a_day_landing_after_later_days_brings_their_waiting_references_up_to_date(tmp_path: Path) -> None:
    days = _backfill_days()
    at_once = DataHome(tmp_path / "at_once")
    for builder in days.values():
        builder.write(at_once)
    for day in LATE_DAYS[:3]:
        ingest_day(at_once, day)
    expected = snapshot(at_once, LATE_DAYS[:3])

    late = DataHome(tmp_path / "late")
    for day in LATE_DAYS[1:3]:                    # days 2 and 3 land and are built; day 1 lands after them
        days[day].write(late)
        ingest_day(late, day)
    assert snapshot(late, LATE_DAYS[1:3]) != {k: v for k, v in expected.items() if LATE_DAYS[0] not in k}
    days[LATE_DAYS[0]].write(late)
    report = ingest_day(late, LATE_DAYS[0])
    assert sorted(report.refreshed) == LATE_DAYS[1:3] and report.reconciled
    assert snapshot(late, LATE_DAYS[:3]) == expected
    # day 3 still waits for an image no export holds: a later landing of another day leaves it alone
    before = late.partition_file("rankings", LATE_DAYS[2]).stat().st_ino
    DayBuilder(LATE_DAYS[3], seed=7, id_base=70_000).populate(users=1, images=2, rankings=1, downloads=0).write(late)
    assert ingest_day(late, LATE_DAYS[3]).refreshed == {}
    assert late.partition_file("rankings", LATE_DAYS[2]).stat().st_ino == before


def test_the_look_at_later_days_reads_only_those_that_wait_for_an_image(tmp_path: Path, monkeypatch) -> None:
    days = _backfill_days()
    home = DataHome(tmp_path / "home")
    for day in LATE_DAYS[:3]:
        days[day].write(home)
        ingest_day(home, day)                     # in order: nothing waits for day 1; day 3 waits for a lost image
    reads: list[str] = []
    real = waiting.read_waiting
    monkeypatch.setattr(waiting, "read_waiting", lambda path: reads.append(path.parent.name) or real(path))
    index = waiting.WaitingIndex(home)
    assert index.uids(LATE_DAYS[1]) == set() and len(index.uids(LATE_DAYS[2])) == 1
    index.save()
    reads.clear()
    again = waiting.WaitingIndex(home)
    assert again.uids(LATE_DAYS[1]) == set() and len(again.uids(LATE_DAYS[2])) == 1
    assert again.uids(LATE_DAYS[3]) is None       # never ingested
    assert reads == []                            # answered by their stats (a few waiting uids are kept)
    monkeypatch.setattr(waiting, "CACHED_UIDS", 0)
    index = waiting.WaitingIndex(home)
    home.partition_file("quarantine", LATE_DAYS[2]).touch()   # a new stat: read again, its uids not kept now
    assert len(index.uids(LATE_DAYS[2])) == 1 and index.uids(LATE_DAYS[1]) == set()
    index.save()
    reads.clear()
    assert len(waiting.WaitingIndex(home).uids(LATE_DAYS[2])) == 1 and reads == [f"dt={LATE_DAYS[2]}"]
    shutil.rmtree(home.cache)                     # disposable: the answer is the same
    assert waiting.WaitingIndex(home).uids(LATE_DAYS[1]) == set() and reads[-1] == f"dt={LATE_DAYS[1]}"


# --- 3. a day skipped because it had not begun --------------------------------------------------------------

def test_a_stamp_is_not_trusted_once_a_day_it_skipped_has_begun(tmp_path: Path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    home.raw_day("2023-02-13").mkdir(parents=True)
    key = buildstamp.stamp_key(home)
    monkeypatch.setattr(buildstamp, "_today", lambda: "2023-02-13")
    buildstamp.write_stamp(home, key, until="2023-02-14")
    assert buildstamp.is_up_to_date(home, key)
    monkeypatch.setattr(buildstamp, "_today", lambda: "2023-02-14")
    assert not buildstamp.is_up_to_date(home, key)
    buildstamp.write_stamp(home, key)
    assert buildstamp.is_up_to_date(home, key)


# --- 4. a blob that lands after its day was fingerprinted ---------------------------------------------------

def _reject_missing(home: DataHome, day: str, paths: list[str]) -> None:
    """Write ``day``'s image_rejects partition: ``paths`` rejected as missing_blob."""
    n = len(paths)
    table = pa.Table.from_pydict({
        "image_uid": [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)],
        "dt": [dt.date.fromisoformat(day)] * n, "blob_path": paths, "reason": ["missing_blob"] * n,
        "detail": [f"no file at {p!r}" for p in paths], "sha256": [None] * n, "num_bytes": [None] * n,
    }, schema=get_schema("image_rejects"))
    target = home.partition_file("image_rejects", day)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".rejects.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def _record_features(home: DataHome, instance, day: str, version: str) -> None:
    """What the features asset records, then what the rebuild that follows records."""
    for asset in ("image_features", "image_rejects"):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=day,
                                                                    tags={DATA_VERSION_TAG: version}))
    _pretend_built(home, instance, _plan(home, instance), stages=GLOBAL_STAGES)


GLOBAL_STAGES = {"dedup", "decisions", "pairs", "splits", "publish"}
REBUILD = ["duplicate_clusters", "decisions", "pairs", "split_pairs", "published_dataset"]


def test_a_landed_blob_makes_its_day_stale_in_the_plan_the_stamp_and_the_sensor(home, instance) -> None:  # noqa: F811
    _pretend_built(home, instance, _plan(home, instance))
    base = _plan(home, instance).expected[("features", DAYS[0])]
    paths = ["raw/images/a.png", "raw/images/b.png"]
    _reject_missing(home, DAYS[0], paths)
    _record_features(home, instance, DAYS[0], base + missing_mark(paths))    # what the asset records
    assert _plan(home, instance).up_to_date
    key = buildstamp.stamp_key(home)
    assert buildstamp.stamp_key(home) == key

    home.raw_images.mkdir(parents=True)
    (home.raw_images / "a.png").write_bytes(b"png")                    # a blob lands
    assert buildstamp.stamp_key(home) != key
    plan = _plan(home, instance)
    assert [(run.partition, run.ops) for run in plan.runs] == [(DAYS[0], ["fingerprint_images"]), (None, REBUILD)]
    assert "missing_blob is there now" in plan.runs[0].reasons[0]
    assert plan.expected[("features", DAYS[0])] == base + missing_mark(paths[1:])
    sensor = automation.raw_partition_sensor.evaluate_tick(_sensor_context(home, instance))
    assert [r.partition_key for r in sensor.run_requests] == [DAYS[0]]

    _reject_missing(home, DAYS[0], paths[1:])                          # the day's run: b is still missing
    for asset in ("image_features", "image_rejects"):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, partition=DAYS[0], tags={DATA_VERSION_TAG: base + missing_mark(paths[1:])}))
    assert [(run.partition, run.ops) for run in _plan(home, instance).runs] == [(None, REBUILD)]   # then the rebuild
    assert RejectedBlobs(home).paths(DAYS[0]) == paths[1:]
    (home.raw_images / "b.png").write_bytes(b"png")                    # the last one lands: the version loses its mark
    assert _plan(home, instance).expected[("features", DAYS[0])] == base


def test_a_blob_base_url_is_not_looked_at(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _reject_missing(home, DAYS[0], ["raw/images/a.png"])
    home.raw_images.mkdir(parents=True)
    (home.raw_images / "a.png").write_bytes(b"png")
    blobs = RejectedBlobs(home)
    assert blobs.still_missing(DAYS[0], str(home.root)) == []
    assert blobs.still_missing(DAYS[0], "gs://bucket/base") == ["raw/images/a.png"]
    blobs.save()
    assert MISSING_MARK not in missing_mark([]) and missing_mark([]) == ""
