"""Fixes of review rev29a (tests/unit/test_hostile_rev29a.py).

1. A pruned raw day (its raw folder gone, its warehouse partitions kept) still gives the images its ingest found:
   the reference check, the later days' records (``earlierimages``) and the late-image look search what the
   warehouse keeps of it (``uidindex.kept_image_uids``: accepted images and quarantined images lines), so a later
   day's re-ingest keeps its rows.
2. A row reused by uid is reused unread only while its blob is the file the stage read it from
   (``pipelines.features.blobidentity``): a blob replaced under an accepted uid is read and fingerprinted again.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.features import blobidentity
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.uidindex import pruned_days, raw_day_present, raw_image_uids, reference_days

DAY = "2023-03-01"


def _rows(home: DataHome, table: str, day: str) -> list[dict]:
    return pq.read_table(home.partition_file(table, day)).to_pylist()


def _bytes(home: DataHome, day: str, tables=("rankings", "downloads", "quarantine", "ingest_files")) -> dict:
    return {table: home.partition_file(table, day).read_bytes() for table in tables}


# ------------------------------------------------------------------------------------------- 1. pruned raw days
def test_a_pruned_days_quarantined_image_line_still_counts_as_exported(tmp_path: Path) -> None:
    """An images line of the pruned day that was quarantined counted as exported (the raw bytes held the uid): the
    uid is read from the line's stored text, so the later day's ranking stays accepted."""
    home = DataHome(tmp_path / "home")
    early = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    bad = early.image(surprise_field=1)                      # an images line the ingest quarantines
    early.add("images", bad)
    later = DayBuilder("2023-03-03", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    later.add("rankings", later.ranking(image_0_uid=bad["image_uid"], image_1_uid=later.image_uids[0],
                                        best_image_uid=later.image_uids[0]))
    early.write(home)
    later.write(home)
    for day in (early.day, later.day):
        ingest_day(home, day)
    assert any(row["table"] == "images" for row in _rows(home, "quarantine", early.day))
    assert bad["image_uid"] not in {row["image_uid"] for row in _rows(home, "images", early.day)}
    before = _bytes(home, later.day)
    assert len(_rows(home, "rankings", later.day)) == 2
    shutil.rmtree(home.raw_day(early.day))
    assert raw_image_uids(home, early.day, {bad["image_uid"], early.image_uids[0], "nope"}) == \
        {bad["image_uid"], early.image_uids[0]}
    ingest_day(home, later.day)
    assert _bytes(home, later.day) == before


def test_a_pruned_day_in_the_late_window_still_resolves_late(tmp_path: Path) -> None:
    """A ranking accepted through the next day's export stays accepted late (same count) when that day is pruned
    and the earlier day is ingested again."""
    home = DataHome(tmp_path / "home")
    early = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    later = DayBuilder("2023-03-02", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    early.add("rankings", early.ranking(image_0_uid=early.image_uids[0], image_1_uid=later.image_uids[1],
                                        best_image_uid=later.image_uids[1]))
    early.write(home)
    later.write(home)
    for day in (early.day, later.day):
        ingest_day(home, day)
    files = _rows(home, "ingest_files", early.day)
    assert sum(row["accepted_late_image"] or 0 for row in files) == 1
    before = _bytes(home, early.day)
    shutil.rmtree(home.raw_day(later.day))
    report = ingest_day(home, early.day)
    assert _bytes(home, early.day) == before
    assert report.tables["rankings"].late_image_days == [later.day]


def test_a_record_of_a_later_day_taken_from_a_pruned_day_leaves_the_later_day_alone(tmp_path: Path) -> None:
    """The look at later days after an ingest (pipelines.ingest.earlierimages) resolves against the pruned day's
    kept images too: a later day that took an image from it is not ingested again, and stays as it was."""
    home = DataHome(tmp_path / "home")
    first = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    middle = DayBuilder("2023-03-03", id_base=500).populate(users=2, images=3, rankings=1, downloads=0)
    last = DayBuilder("2023-03-05", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    last.add("downloads", last.download(image_uid=first.image_uids[2]))
    for builder in (first, middle, last):
        builder.write(home)
        ingest_day(home, builder.day)
    before = _bytes(home, last.day)
    shutil.rmtree(home.raw_day(first.day))
    assert pruned_days(home, home.raw_days()) == [first.day]
    assert reference_days(home, home.raw_days()) == [first.day, middle.day, last.day]
    report = ingest_day(home, middle.day)       # middle delivered again (or --force): it looks at the later days
    assert last.day not in report.refreshed
    assert _bytes(home, last.day) == before
    assert _rows(home, "quarantine", last.day) == []


def test_an_earlier_day_with_late_rows_and_an_image_of_a_pruned_day_is_left_alone(tmp_path: Path) -> None:
    """The look at earlier days within the late window (``_late_image_gone``) resolves against the pruned day's
    kept images too: the earlier day, whose rows name an image of the pruned day and one taken late, is not
    ingested again when the later day is."""
    home = DataHome(tmp_path / "home")
    pruned = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    earlier = DayBuilder("2023-03-03", id_base=500).populate(users=2, images=3, rankings=1, downloads=0)
    later = DayBuilder("2023-03-04", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    earlier.add("downloads", earlier.download(image_uid=pruned.image_uids[0]))
    earlier.add("downloads", earlier.download(image_uid=later.image_uids[0]))       # taken late
    for builder in (pruned, earlier, later):
        builder.write(home)
        ingest_day(home, builder.day)
    assert sum(row["accepted_late_image"] or 0 for row in _rows(home, "ingest_files", earlier.day)) == 1
    before = _bytes(home, earlier.day)
    shutil.rmtree(home.raw_day(pruned.day))
    report = ingest_day(home, later.day)
    assert earlier.day not in report.refreshed
    assert _bytes(home, earlier.day) == before


def test_what_counts_as_a_pruned_day(tmp_path: Path) -> None:
    """A pruned day is one the warehouse holds an images partition of and the raw zone does not list (gone, or a
    link leading out of the raw zone); a raw day present is searched in its raw file only, and a day never ingested
    gives nothing. A build from scratch of a home whose day was pruned has no partition of it: its references to
    that day's images are unknown_image_reference there (README: it sees fewer facts)."""
    home = DataHome(tmp_path / "home")
    early = DayBuilder("2023-03-01").populate(users=2, images=2, rankings=1, downloads=0)
    later = DayBuilder("2023-03-02", id_base=1000).populate(users=2, images=2, rankings=1, downloads=0)
    later.add("downloads", later.download(image_uid=early.image_uids[0]))
    early.write(home)
    later.write(home)
    assert raw_day_present(home, early.day) and pruned_days(home, home.raw_days()) == []
    # the early day was never ingested: pruning it leaves nothing that resolves its images
    scratch = DataHome(tmp_path / "scratch")
    shutil.copytree(home.raw_logs, scratch.raw_logs)
    shutil.rmtree(scratch.raw_day(early.day))
    ingest_day(scratch, later.day)
    assert [row["reason"] for row in _rows(scratch, "quarantine", later.day)] == ["unknown_image_reference"]
    ingest_day(home, early.day)
    outside = tmp_path / "elsewhere"
    home.raw_day(early.day).rename(outside)
    home.raw_day(early.day).symlink_to(outside, target_is_directory=True)   # a link out of the raw zone: not a day
    assert not raw_day_present(home, early.day) and pruned_days(home, home.raw_days()) == [early.day]
    assert raw_image_uids(home, early.day, set(early.image_uids), IngestConfig()) == set(early.image_uids)
    ingest_day(home, later.day)
    assert _rows(home, "quarantine", later.day) == []
    assert len(_rows(home, "downloads", later.day)) == 1


# ------------------------------------------------------------------------------------------- 2. replaced blobs
def _table_bytes(home: DataHome, day: str) -> dict:
    return {t: pq.read_table(home.partition_file(t, day)).to_pylist() for t in ("image_features", "image_rejects")}


def _recorded(home: DataHome, day: str) -> set[str]:
    path = blobidentity.record_path(home, day)
    return set(pq.read_table(path).column("image_uid").to_pylist()) if path.is_file() else set()


def test_a_blob_rewritten_in_place_with_its_size_and_mtime_kept_is_read_again(tmp_path: Path) -> None:
    """The ctime gives it away (cp -p, rsync -t --inplace): other bytes of the same size, mtime set back."""
    config = FeaturesConfig(workers=0)
    home, scratch = DataHome(tmp_path / "home"), DataHome(tmp_path / "scratch")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    time.sleep(0.15)    # the blobs settled before the run (a ctime within 0.1 s of it is not vouched for)
    build_features(home, DAY, config, detector_factory=fake_detector)
    assert _recorded(home, DAY) == {"a", "b"}
    blob = home.root / home.raw_image_relpath("a")
    info = blob.stat()
    junk = bytes(info.st_size)                           # same size, other bytes: not an image
    with open(blob, "r+b") as handle:
        handle.write(junk)
    os.utime(blob, ns=(info.st_atime_ns, info.st_mtime_ns))
    again = build_features(home, DAY, config, detector_factory=fake_detector)
    assert again.rejected_total == 1
    write_day(scratch, DAY, {"a": junk, "b": png(2)})
    build_features(scratch, DAY, config, detector_factory=fake_detector)
    assert _table_bytes(home, DAY) == _table_bytes(scratch, DAY)
    assert _recorded(home, DAY) == {"b"}                 # rejects are recomputed each run: nothing to record


def test_without_the_record_reused_rows_are_hashed_once_then_trusted(tmp_path: Path) -> None:
    """No record (a home from before it, a deleted cache): the rerun reads and hashes each reused row's blob, keeps
    the rows (no decode), writes the same bytes, and the next rerun reads nothing."""
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2), "c": png(3)})
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)
    files = {t: home.partition_file(t, DAY).read_bytes() for t in ("image_features", "image_rejects")}
    shutil.rmtree(home.cache / "blob_identities")
    hashed = build_features(home, DAY, config, detector_factory=fake_detector)
    assert (hashed.processed, hashed.reused_by_uid) == (0, 3) and hashed.bytes_read > 0
    assert {t: home.partition_file(t, DAY).read_bytes() for t in files} == files
    assert _recorded(home, DAY) == {"a", "b", "c"}
    trusted = build_features(home, DAY, config, detector_factory=fake_detector)
    assert (trusted.processed, trusted.reused_by_uid, trusted.bytes_read) == (0, 3, 0)


def test_a_row_copied_from_an_earlier_day_is_trusted_by_that_days_record_and_read_when_its_blob_changed(
        tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home, scratch = DataHome(tmp_path / "home"), DataHome(tmp_path / "scratch")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    write_day(home, "2023-03-02", {"a": png(1)})             # the uid exported again the next day
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)
    copied = build_features(home, "2023-03-02", config, detector_factory=fake_detector)
    assert (copied.reused_by_uid, copied.bytes_read) == (1, 0)     # its blob is as day 1's run read it
    (home.root / home.raw_image_relpath("a")).write_bytes(png(2))  # now the bytes of b
    for day in (DAY, "2023-03-02"):
        build_features(home, day, config, detector_factory=fake_detector)
    write_day(scratch, DAY, {"a": png(2), "b": png(2)})
    write_day(scratch, "2023-03-02", {"a": png(2)})
    for day in (DAY, "2023-03-02"):
        build_features(scratch, day, config, detector_factory=fake_detector)
        assert _table_bytes(home, day) == _table_bytes(scratch, day), day


def test_an_unreadable_or_foreign_record_counts_as_none(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)
    path = blobidentity.record_path(home, DAY)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"version": "1", "base": "/somewhere/else"}), path)
    assert build_features(home, DAY, config, detector_factory=fake_detector).bytes_read > 0   # another base's
    path.write_bytes(b"not parquet")
    assert build_features(home, DAY, config, detector_factory=fake_detector).bytes_read > 0
    identity = json.loads(pq.read_table(path).column("identity")[0].as_py())
    assert identity[0] == (home.root / home.raw_image_relpath("a")).stat().st_size
