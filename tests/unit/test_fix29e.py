"""Fixes of review rev29e (tests/unit/test_hostile_rev29e.py) of the rev29a fix.

1-2. A pruned day answers exactly what its ingest's byte search found: each ingest records, with the day's six
     files, the uids the search found that the ``images`` partition does not hold (``warehouse/.image_exports/``,
     ``uidindex.exports_record``); without it, the uid index taken of the same file, then rev29a's look-up.
3.   A day that copied a row by uid is stale while that row differs from its source's row now
     (``provenance.CopiedRows``: the features version a plan expects, and the build stamp's watch).
4-6. The blob identity record is read only as a regular file in a real folder (no link, no FIFO), filtered by the
     uids looked up; nothing is written through a link at ``cache/blob_identities``.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_features_fixtures import fake_detector, png, write_day
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.features import blobidentity
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.ingest.day import PartitionFolderRefused, ingest_day
from pipelines.ingest.uidindex import exports_record_path, kept_image_uids
from pipelines.provenance import COPIES_MARK, RejectedBlobs

DAY, DAY2 = "2023-03-01", "2023-03-02"


def _pruned_home(tmp_path: Path) -> tuple[DataHome, DayBuilder, str, str]:
    """A day with a quarantined images line (its own uid, and a nested one the byte search also finds), ingested."""
    home = DataHome(tmp_path / "home")
    early = DayBuilder(DAY).populate(users=2, images=3, rankings=1, downloads=0)
    nested = early.uid()
    line = early.image(extra={"image_uid": nested})
    early.add("images", line)
    early.write(home)
    ingest_day(home, early.day)
    return home, early, nested, line["image_uid"]


def test_the_ingest_records_the_uids_its_search_found_beyond_the_images_partition(tmp_path: Path) -> None:
    home, early, nested, own = _pruned_home(tmp_path)
    record = pq.read_table(exports_record_path(home, DAY))
    assert record.to_pylist() == [{"image_uid": uid, "exported": True} for uid in sorted({nested, own})]
    shutil.rmtree(home.raw_day(DAY))
    wanted = {nested, early.image_uids[0], "0" * 8 + "-0000-4000-8000-" + "0" * 12}
    assert kept_image_uids(home, DAY, wanted) == {nested, early.image_uids[0]}


def test_without_the_record_the_uid_index_of_the_same_file_answers_then_the_quarantine_text(tmp_path: Path) -> None:
    """A day ingested before the record existed: its uid index, taken of the file its partitions were built from
    (the ingest_files sha256), gives the exact answer; without it, rev29a's look-up (the nested uid is masked)."""
    home, early, nested, _ = _pruned_home(tmp_path)
    shutil.rmtree(home.raw_day(DAY))
    exports_record_path(home, DAY).unlink()
    assert kept_image_uids(home, DAY, {nested, early.image_uids[1]}) == {nested, early.image_uids[1]}
    shutil.rmtree(home.raw_image_uid_index(DAY).parent)
    assert kept_image_uids(home, DAY, {nested, early.image_uids[1]}) == {early.image_uids[1]}


def test_a_record_of_another_file_or_through_a_link_is_not_trusted(tmp_path: Path) -> None:
    home, _, nested, _ = _pruned_home(tmp_path)
    shutil.rmtree(home.raw_day(DAY))
    shutil.rmtree(home.raw_image_uid_index(DAY).parent)
    path = exports_record_path(home, DAY)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"version": "1", "raw_sha256": "0" * 64}), path)
    assert kept_image_uids(home, DAY, {nested}) == set()            # another images file's: fallback (masked)
    elsewhere = tmp_path / "elsewhere.parquet"
    pq.write_table(table, elsewhere)
    path.unlink()
    path.symlink_to(elsewhere)
    assert kept_image_uids(home, DAY, {nested}) == set()            # a link is never read
    path.unlink()
    os.mkfifo(path)
    assert kept_image_uids(home, DAY, {nested}) == set()            # a FIFO is never waited on


def test_a_link_at_the_exports_folder_is_refused_and_never_written_through(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    day = DayBuilder(DAY).populate(users=2, images=2, rankings=1, downloads=0)
    day.write(home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home.warehouse.mkdir(parents=True)
    (home.warehouse / ".image_exports").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PartitionFolderRefused, match="warehouse/.image_exports is a symbolic link"):
        ingest_day(home, DAY)
    assert os.listdir(elsewhere) == []
    assert not home.partition_file("images", DAY).exists()


# ----------------------------------------------------------------------------------- 3. copies follow their source
def test_a_day_whose_copied_row_changed_at_its_source_is_expected_stale_until_run_again(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    base = str(home.root)
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    write_day(home, DAY2, {"a": png(1), "c": png(3)})            # "a" exported again: copied by uid from DAY
    time.sleep(0.15)
    for day in (DAY, DAY2):
        build_features(home, day, config, detector_factory=fake_detector)
    blobs = RejectedBlobs(home)
    assert blobs.expected_mark(DAY2, base) == ("", False)
    assert blobs.stamp_watch(DAY2, base)[1] == {"copied_rows": "same"}
    assert blobs.stamp_watch(DAY, base) is None                  # copied nothing, rejects nothing
    blobs.save()
    (home.root / home.raw_image_relpath("a")).write_bytes(png(7))
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)   # --force --from DAY --to DAY
    blobs = RejectedBlobs(home)                                   # from the cache: the source's stat changed
    assert blobs.expected_mark(DAY2, base) == (COPIES_MARK, False)
    assert blobs.stamp_watch(DAY2, base)[1] == {"copied_rows": "changed"}
    assert RejectedBlobs(home).recorded_mark(DAY2, base, time.time_ns()) == ""   # never recorded: the day is stale
    build_features(home, DAY2, config, detector_factory=fake_detector)
    blobs = RejectedBlobs(home)
    assert blobs.expected_mark(DAY2, base) == ("", False)
    shas = {day: {r["image_uid"]: r["sha256"] for r in pq.read_table(home.partition_file("image_features", day))
                  .to_pylist()}["a"] for day in (DAY, DAY2)}
    assert shas[DAY] == shas[DAY2]
    shutil.rmtree(home.cache)                                     # disposable: the same answer from the partitions
    assert RejectedBlobs(home).expected_mark(DAY2, base) == ("", False)


# ------------------------------------------------------------------------------- 4-6. the blob identity record
def test_a_blob_identity_record_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)
    record = blobidentity.record_path(home, DAY)
    moved = tmp_path / "moved.parquet"
    shutil.move(record, moved)
    record.symlink_to(moved)
    rows = pq.read_table(home.partition_file("image_features", DAY)).to_pylist()
    identities = blobidentity.BlobIdentities(home, DAY, str(home.root))
    assert identities.unverified(rows, {}) == {"a"}               # untrusted: read and hashed again
    notes: list[str] = []
    build_features(home, DAY, config, progress=notes.append, detector_factory=fake_detector)
    assert record.is_symlink() and any("is not a regular file" in note for note in notes)   # never replaced
    moved_back = tmp_path / "again.parquet"
    shutil.copy(moved, moved_back)
    record.unlink()
    shutil.copy(moved_back, record)
    assert blobidentity.BlobIdentities(home, DAY, str(home.root)).unverified(rows, {}) == set()


def test_a_link_at_the_blob_identities_folder_is_named_in_a_note(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home.cache.mkdir(parents=True, exist_ok=True)
    (home.cache / "blob_identities").symlink_to(elsewhere, target_is_directory=True)
    time.sleep(0.15)
    notes: list[str] = []
    build_features(home, DAY, config, progress=notes.append, detector_factory=fake_detector)
    assert any("cache/blob_identities is a symbolic link" in note for note in notes)
    assert os.listdir(elsewhere) == []
