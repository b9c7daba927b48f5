"""The fixes of review rev23g's six defects (tests/e2e/test_hostile_rev23g.py runs the real builds):

1. parallel per-day ingests: the write and the look at other days run under the home's ingest lock, and a day
   that landed (and was ingested) between a day's compute and its write makes that day be computed again;
2. every rejected blob a change can heal is watched (truncated_image, empty_file, unreadable_blob, ...), by its
   size and mtime, and one that changed while the day was fingerprinted is recorded as changed;
3, 4. the build stamp records what the plan saw (inputs, rejected blobs, ``until``), not the home after the runs;
5. ``refresh_later_days`` reads the landing day's uid index once for all the later days (a batch at a time);
6. ``cache/missing_blobs.json`` keeps counts, at most ``CACHED_BLOBS`` paths a day and kind, else folders.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_fix23d import _backfill_days, snapshot
from test_ingest_late_images import DAYS as LATE_DAYS

from dagster_project import buildstamp
from formats.home import DataHome
from formats.locks import open_lock_file, try_lock
from pipelines import provenance
from pipelines.ingest import day as ingest_module
from pipelines.ingest.day import ingest_day, ingest_lock, ingest_lock_path
from pipelines.provenance import CHANGED, RejectedBlobs, missing_mark
from schemas import get_schema

DAY = "2023-02-13"

# --- 1. parallel ingests ------------------------------------------------------------------------------------


def test_a_day_ingested_between_another_days_compute_and_its_write_makes_it_compute_again(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    days = _backfill_days()                      # days 2 and 3 show images of day 1
    reference = DataHome(tmp_path / "reference")
    for builder in days.values():
        builder.write(reference)
    for day in LATE_DAYS[:3]:
        ingest_day(reference, day)

    home = DataHome(tmp_path / "home")
    days[LATE_DAYS[2]].write(home)
    ingest_day(home, LATE_DAYS[2])
    days[LATE_DAYS[1]].write(home)
    real = ingest_module._compute
    computed: list[str] = []

    def compute(home_, day, *args, **kwargs):
        result = real(home_, day, *args, **kwargs)
        computed.append(day)
        if computed == [LATE_DAYS[1]]:
            # the other run, in full, after day 2's compute and before day 2 takes the lock
            days[LATE_DAYS[0]].write(home)
            ingest_day(home, LATE_DAYS[0])
        return result

    monkeypatch.setattr(ingest_module, "_compute", compute)
    ingest_day(home, LATE_DAYS[1])
    assert computed.count(LATE_DAYS[1]) == 2     # looked again under the lock: day 1 had landed
    assert snapshot(home, LATE_DAYS[:3]) == snapshot(reference, LATE_DAYS[:3])


def test_the_ingest_lock_excludes_other_holders_and_is_reentrant_in_its_thread(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    with ingest_lock(home):
        other = open_lock_file(ingest_lock_path(home), "test")
        try:
            assert not try_lock(other)           # another process (or open file) waits
            with ingest_lock(home):              # a rewrite of another day inside the ingest
                assert not try_lock(other)
            assert not try_lock(other)
        finally:
            os.close(other)
    other = open_lock_file(ingest_lock_path(home), "test")
    try:
        assert try_lock(other)
    finally:
        os.close(other)
    assert ingest_lock_path(home).parent == home.locks   # beside the other stages' locks, not in cache/


# --- 5. one read of the landing day's uid index, a batch at a time -------------------------------------------

def test_the_later_days_are_looked_up_a_batch_at_a_time_with_the_same_answer(tmp_path: Path, monkeypatch) -> None:
    days = _backfill_days()
    homes = {}
    for batch in (ingest_module.LOOKUP_BATCH, 1):
        monkeypatch.setattr(ingest_module, "LOOKUP_BATCH", batch)
        home = homes[batch] = DataHome(tmp_path / f"batch-{batch}")
        for day in LATE_DAYS[1:3]:
            days[day].write(home)
            ingest_day(home, day)
        days[LATE_DAYS[0]].write(home)
        assert sorted(ingest_day(home, LATE_DAYS[0]).refreshed) == LATE_DAYS[1:3]
    assert len({json.dumps({k: v.hex() for k, v in snapshot(h, LATE_DAYS[:3]).items()}) for h in homes.values()}) == 1


# --- 2 and 6. rejected blobs ----------------------------------------------------------------------------------

def _rejects(home: DataHome, day: str, rows: list[tuple[str, str, int | None]]) -> None:
    """Write ``day``'s image_rejects partition: (blob_path, reason, num_bytes) rows."""
    n = len(rows)
    table = pa.Table.from_pydict({
        "image_uid": [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)],
        "dt": [dt.date.fromisoformat(day)] * n, "blob_path": [r[0] for r in rows], "reason": [r[1] for r in rows],
        "detail": ["test"] * n, "sha256": [None] * n, "num_bytes": [r[2] for r in rows],
    }, schema=get_schema("image_rejects"))
    target = home.partition_file("image_rejects", day)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".rejects.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def _blob(home: DataHome, name: str, data: bytes) -> str:
    home.raw_images.mkdir(parents=True, exist_ok=True)
    (home.raw_images / name).write_bytes(data)
    return f"raw/images/{name}"


def _after_writes() -> int:
    """A run start well after the files written so far (no sleep: the run's start is an argument)."""
    return time.time_ns() + 10 * 10**9


def test_a_blob_seen_half_copied_makes_its_day_stale_once_it_changes(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    half = _blob(home, "half.png", b"\x89PNG\r\n\x1a\n" + b"h" * 40)
    empty = _blob(home, "empty.png", b"")
    _rejects(home, DAY, [(half, "truncated_image", 48), (empty, "empty_file", None), ("raw/images/gone.png",
              "missing_blob", None), ("../etc/passwd", "unsafe_path", None)])
    base = str(home.root)
    recorded = RejectedBlobs(home).recorded_mark(DAY, base, since_ns=_after_writes())
    assert recorded.startswith(provenance.MISSING_MARK) and CHANGED not in recorded
    assert RejectedBlobs(home).expected_mark(DAY, base) == (recorded, False)    # fresh: nothing changed

    copy = DataHome(tmp_path / "copy")                 # a home copied with its times kept (cp -a) keeps its versions
    shutil.copytree(home.root, copy.root, symlinks=True)
    assert RejectedBlobs(copy).expected_mark(DAY, str(copy.root)) == (recorded, False)

    (home.raw_images / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"h" * 400)   # the copy completes
    mark, landed = RejectedBlobs(home).expected_mark(DAY, base)
    assert mark != recorded and not landed
    (home.raw_images / "empty.png").write_bytes(b"x")
    assert RejectedBlobs(home).expected_mark(DAY, base)[0] not in (recorded, mark)
    _blob(home, "gone.png", b"landed")
    assert RejectedBlobs(home).expected_mark(DAY, base)[1]                   # a missing blob landed
    # a bucket is not looked at: nothing there changes the mark
    assert RejectedBlobs(home).expected_mark(DAY, "gs://bucket")[0] == \
        RejectedBlobs(home).recorded_mark(DAY, "gs://bucket", since_ns=0)


def test_a_blob_that_changes_while_its_day_is_fingerprinted_is_recorded_as_changed(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    since = time.time_ns()
    grown = _blob(home, "grown.png", b"g" * 100)   # written after the run began
    _rejects(home, DAY, [(grown, "truncated_image", 100)])
    recorded = RejectedBlobs(home).recorded_mark(DAY, str(home.root), since_ns=since)
    assert recorded == missing_mark([], [(grown, CHANGED)])
    assert RejectedBlobs(home).expected_mark(DAY, str(home.root))[0] != recorded   # the next plan runs it again
    # read at 50 bytes, 100 there now (the copy went on after the read): changed, whatever the times say
    _rejects(home, DAY, [(grown, "truncated_image", 50)])
    assert RejectedBlobs(home).recorded_mark(DAY, str(home.root), since_ns=_after_writes()) == recorded
    # an unreadable blob with nothing to stat is recorded as the plan will see it (no rerun at every plan)
    _rejects(home, DAY, [("raw/images/nothing.png", "unreadable_blob", None)])
    recorded = RejectedBlobs(home).recorded_mark(DAY, str(home.root), since_ns=since)
    assert RejectedBlobs(home).expected_mark(DAY, str(home.root)) == (recorded, False)
    whole = (since // 10**9 - 1) * 10**9               # a ctime of whole seconds: a coarse file system rounds down
    assert provenance.changed_since(whole, since) is True
    assert provenance.changed_since(whole + 1, since) is False and provenance.changed_since(since - 10**6, since)


def test_a_day_with_many_rejects_keeps_counts_and_folders_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "CACHED_BLOBS", 4)
    home = DataHome(tmp_path / "home")
    missing = [f"raw/images/{i:03d}.png" for i in range(10)]
    _rejects(home, DAY, [(p, "missing_blob", None) for p in missing])
    home.raw_images.mkdir(parents=True)
    blobs = RejectedBlobs(home)
    recorded = blobs.recorded_mark(DAY, str(home.root), since_ns=_after_writes())
    assert recorded == missing_mark(missing)
    assert blobs.expected_mark(DAY, str(home.root)) == (recorded, False)
    watch = blobs.stamp_watch(DAY, str(home.root))
    blobs.save()
    entry = json.loads((home.cache / "missing_blobs.json").read_text())["days"][DAY]
    assert entry["missing"] == 10 and "missing_paths" not in entry and entry["folders"] == ["raw/images"]
    assert watch[1] is None and watch[3][0][0] == "raw/images"
    assert blobs.paths(DAY) == missing and blobs.still_missing(DAY, str(home.root)) == missing
    key = buildstamp.stamp_key(home)
    _blob(home, "003.png", b"landed")                 # a blob lands: its folder changes
    assert buildstamp.stamp_key(home) != key
    assert RejectedBlobs(home).expected_mark(DAY, str(home.root)) == (missing_mark(missing[:3] + missing[4:]), True)


def test_rejects_in_too_many_folders_make_the_stamp_untrusted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "CACHED_BLOBS", 1)
    monkeypatch.setattr(provenance, "CACHED_FOLDERS", 2)
    home = DataHome(tmp_path / "home")
    home.raw_day(DAY).mkdir(parents=True)   # a day of the raw zone (one whose raw folder is gone is not watched)
    _rejects(home, DAY, [(f"raw/images/{i}/x.png", "missing_blob", None) for i in range(3)])
    key = buildstamp.stamp_key(home)
    assert key.startswith(buildstamp.UNTRUSTED) and not buildstamp.is_up_to_date(home, key)
    buildstamp.write_stamp(home, key)
    assert not (home.cache / buildstamp.STAMP).exists()


# --- 3 and 4. the stamp records what the plan saw ---------------------------------------------------------

def _stamp_home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.raw_day(DAY).mkdir(parents=True)
    for table in ("users", "images", "rankings", "downloads"):
        home.raw_file(DAY, table).write_bytes(b"x")
    return home


def test_the_stamp_key_is_the_plans_view_with_the_outputs_after_the_runs(tmp_path: Path, monkeypatch) -> None:
    home = _stamp_home(tmp_path)
    view = buildstamp.plan_view(home)
    _rejects(home, DAY, [])                              # the runs write outputs: they are what the stamp keeps
    assert view.key_after_build(home) == buildstamp.stamp_key(home)
    view = buildstamp.plan_view(home)
    home.raw_day("2023-02-14").mkdir()                 # a day lands while the build runs (after its plan)
    assert view.key_after_build(home) != buildstamp.stamp_key(home)

    monkeypatch.setattr(buildstamp, "_today", lambda: "2023-02-14")
    home.raw_day("2023-02-15").mkdir()                 # a folder named after a day that has not begun
    view = buildstamp.plan_view(home)
    monkeypatch.setattr(buildstamp, "_today", lambda: "2023-02-15")   # the build runs past midnight
    assert view.until == "2023-02-15"
    buildstamp.write_stamp(home, view.key_after_build(home), until=view.until)
    assert not buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))


def test_a_blob_changing_during_the_build_is_not_stamped_as_seen(tmp_path: Path) -> None:
    home = _stamp_home(tmp_path)
    blob = _blob(home, "b.png", b"half")
    _rejects(home, DAY, [(blob, "truncated_image", 4)])
    view = buildstamp.plan_view(home)
    (home.raw_images / "b.png").write_bytes(b"whole")  # after the plan, before the end: a day the build left alone
    assert view.key_after_build(home) != buildstamp.stamp_key(home)

    view = buildstamp.plan_view(home)
    view.taken_ns = _after_writes()                    # the blob is older than the plan
    _rejects(home, DAY, [(blob, "truncated_image", 5)])   # the day's run rewrote its rejects
    assert view.key_after_build(home) == buildstamp.stamp_key(home)
    view = buildstamp.plan_view(home)
    (home.raw_images / "b.png").write_bytes(b"wholer")  # changed after the plan, and the day's rejects rewritten
    _rejects(home, DAY, [(blob, "truncated_image", 6)])
    assert view.key_after_build(home) != buildstamp.stamp_key(home)
