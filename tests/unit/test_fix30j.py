"""Fixes of review rev30j (tests/unit/test_hostile_rev30j.py) of ``provenance.CopiedRows`` and the build stamp.

- A row that follows a stale row (a copy by uid or by sha256 of it) is stale only when a run of the source's day may
  give the source other bytes ("risky": no earlier row holds its bytes); a source stale in its ``reused_from``
  alone (an earlier day backfilled with the same picture) is copied the same again, so the copying day settles.
- A day whose raw folder is gone (``provenance.raw_gone_days``: not a day of the raw zone) is never run again: its
  rows are settled as built (never stale, never risky) and the later days are judged against them as they are; the
  build stamp does not watch such a day.

Most cases use hand-written ``image_features`` partitions of the three columns ``CopiedRows`` reads; one drives
the real feature stage.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day

from dagster_project import buildstamp
from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.provenance import COPIES_MARK, CopiedRows, RejectedBlobs, raw_gone_days
from schemas.features import IMAGE_REJECTS

A, P, L = "2023-03-01", "2023-03-02", "2023-03-03"
S0, S1 = "0" * 64, "1" * 64


def _write(home: DataHome, day: str, rows: list[tuple[str, str, str | None]], rejects: list[str] = ()) -> None:
    """A day's ``image_features`` partition of (image_uid, sha256, reused_from) rows and its ``image_rejects``
    partition (``rejects``: blob paths rejected as missing)."""
    rows = sorted(rows)
    table = pa.table({"image_uid": pa.array([r[0] for r in rows], pa.string()),
                      "sha256": pa.array([r[1] for r in rows], pa.string()),
                      "reused_from": pa.array([r[2] for r in rows], pa.string())})
    path = home.partition_file("image_features", day)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"pickapic.features_output_key": b"settings-1"}), path)
    out = home.partition_file("image_rejects", day)
    out.parent.mkdir(parents=True, exist_ok=True)
    empty = IMAGE_REJECTS.empty_table()
    if rejects:
        empty = pa.Table.from_pylist([{"image_uid": f"m{k}", "dt": dt.date.fromisoformat(day), "blob_path": blob, "reason": "missing_blob",
                                       "detail": "", "sha256": None, "num_bytes": None}
                                      for k, blob in enumerate(rejects)], schema=empty.schema)
    pq.write_table(empty, out)


def _verdicts(home: DataHome) -> dict[str, str | None]:
    """Each day's verdict cold (no cache), and again from the cache the first look wrote: they must agree."""
    (home.cache / "copied_rows.json").unlink(missing_ok=True)
    cold = CopiedRows(home)
    verdicts = dict(cold._look())
    cold.save()
    assert dict(CopiedRows(home)._look()) == verdicts
    return verdicts


def _warm(home: DataHome) -> dict[str, str | None]:
    look = CopiedRows(home)
    verdicts = dict(look._look())
    look.save()
    return verdicts


# ------------------------------------------------------------------------------ which stale sources are followed
def test_a_copy_of_a_source_stale_in_its_reused_from_alone_is_not_stale(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, P, [("y", S0, None)])
    _write(home, L, [("y", S0, "y")])                     # L copied y by uid from P
    assert _verdicts(home) == {P: None, L: "same"}
    _write(home, A, [("x", S0, None)])                    # a backfilled day with P's picture: P should copy x
    assert _verdicts(home) == {A: None, P: "changed", L: "same"}   # P's run keeps y's bytes: L copies the same
    assert CopiedRows(home).known[P]["stale"] == ["y"] and CopiedRows(home).known[P]["risky"] == []
    _write(home, P, [("y", S0, "x")])                     # P run again
    assert _verdicts(home) == {A: None, P: "same", L: "same"}


def test_a_copy_of_a_source_whose_run_may_change_its_bytes_is_still_stale(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])                    # A fingerprinted again: new bytes
    _write(home, P, [("a", S0, "a")])                     # P copied the old bytes by uid
    _write(home, L, [("a", S0, "a")])                     # L copied P's row by sha256 (and by uid before)
    assert _verdicts(home) == {A: None, P: "changed", L: "changed"}
    assert CopiedRows(home).known[P]["risky"] == ["a"] and CopiedRows(home).known[L]["risky"] == ["a"]
    _write(home, P, [("a", S1, "a")])                     # P run: it copies A's new bytes; L follows it next
    assert _warm(home) == _verdicts(home) == {A: None, P: "same", L: "changed"}


# ------------------------------------------------------------------------------ a day whose raw folder is gone
def _deliver(home: DataHome, day: str) -> None:
    """A complete raw day folder (its four table files): a day the nightly runs too (fix31b: an incomplete one, a
    bare folder, is a day the nightly does not run, settled like a pruned one)."""
    home.raw_day(day).mkdir(parents=True, exist_ok=True)
    for table in ("users", "images", "rankings", "downloads"):
        home.raw_file(day, table).write_bytes(b"")


def test_a_day_whose_raw_folder_is_gone_is_settled_and_followed_as_it_is(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    for day in (P, L):
        _deliver(home, day)
    _write(home, A, [("a", S1, None)])
    _write(home, P, [("a", S0, "a")])                     # stale and risky while P can run
    _write(home, L, [("a", S0, "a")])
    _deliver(home, A)
    assert _warm(home) == {A: None, P: "changed", L: "changed"}
    shutil.rmtree(home.raw_day(P))                        # retention prunes P: the plan never runs it again
    assert raw_gone_days(home, [A, P, L]) == {P}
    assert _warm(home) == _verdicts(home) == {A: None, P: "same", L: "same"}   # L copies P's row as it is
    _write(home, L, [("a", S0, None)])                    # a row L does not copy from P as it is: stale
    assert _warm(home) == {A: None, P: "same", L: "changed"}
    _write(home, L, [("a", S0, "a")])
    _deliver(home, P)                                     # P delivered again: it can run, and is judged again
    assert _warm(home) == {A: None, P: "changed", L: "changed"}


def test_a_home_without_a_raw_zone_prunes_nothing(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])
    _write(home, P, [("a", S0, "a")])
    assert raw_gone_days(home, [A, P]) == set()
    assert _verdicts(home) == {A: None, P: "changed"}
    home.raw_day(A).mkdir(parents=True)                   # a raw zone without P: P's raw folder is gone
    assert raw_gone_days(home, [A, P]) == {P}
    assert _warm(home) == {A: None, P: "same"}


def test_the_stage_copying_from_a_pruned_day_settles_after_a_late_day(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    config = FeaturesConfig(workers=0)
    write_day(home, P, {"y": png(1), "q": png(3)})
    write_day(home, L, {"y": png(1), "r": png(4)})
    for day in (P, L):
        home.raw_day(day).mkdir(parents=True)
    time.sleep(0.15)
    for day in (P, L):
        build_features(home, day, config, detector_factory=fake_detector)
    shutil.rmtree(home.raw_day(P))                        # retention prunes P
    write_day(home, A, {"x": png(1)})                     # a late day holding P's picture
    home.raw_day(A).mkdir()
    time.sleep(0.15)
    build_features(home, A, config, detector_factory=fake_detector)
    before = pq.read_table(home.partition_file("image_features", L)).to_pylist()
    blobs = RejectedBlobs(home)
    assert [day for day in (A, P, L) if blobs.expected_mark(day, str(home.root))[0].endswith(COPIES_MARK)] == []
    blobs.save()
    build_features(home, L, config, detector_factory=fake_detector)   # a run of L writes what it holds
    assert pq.read_table(home.partition_file("image_features", L)).to_pylist() == before


# ------------------------------------------------------------------------------ the build stamp
def test_the_stamp_does_not_watch_a_day_whose_raw_folder_is_gone(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.raw_day(A).mkdir(parents=True)
    _write(home, A, [("x", S0, None)], rejects=["raw/images/gone.png"])
    _write(home, P, [("y", S0, None), ("z", S1, "w")], rejects=["raw/images/other.png"])   # pruned, stale rows
    watched = [day for day, _ in buildstamp._blob_watches(home)]
    assert watched == [A]
    key = buildstamp.stamp_key(home)
    assert not key.startswith(buildstamp.UNTRUSTED)
    buildstamp.write_stamp(home, key)
    assert buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))
    _write(home, P, [("y", S0, None)])                    # a pruned day's partition rewritten: an output changed
    assert not buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))
    home.raw_day(P).mkdir()                               # P back in the raw zone: its stale rows are watched
    assert [day for day, _ in buildstamp._blob_watches(home)] == [A, P]
    assert buildstamp.stamp_key(home).startswith(buildstamp.UNTRUSTED)
