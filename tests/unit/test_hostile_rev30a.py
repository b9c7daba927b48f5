"""Hostile review rev30a of the twenty-ninth session's fixes fix29a and fix29e (README section 9, sections 2 and 3):
a pruned raw day's image references answered from ``warehouse/.image_exports/dt=DAY.parquet`` (trusted only while
the images file's sha256 matches ``ingest_files``), the blob identities of ``cache/blob_identities/``
(``pipelines/features/blobidentity.py``), ``provenance.CopiedRows`` making a day that copied a row by uid stale
while the copy differs from its source, and a blob replaced under an accepted uid fingerprinted again.

Driven with the real ingest (``ingest_day`` on ``DayBuilder`` days, also with ``workers = 2`` and
``parallel_min_bytes = 1``), the real feature stage (``build_features``, Beam's DirectRunner in process), the
plan's look at copied rows (``RejectedBlobs.expected_mark`` / ``stamp_watch``, what ``dagster_project.staleness``
and the build stamp call) and the real ``pickapic build`` CLI as a subprocess on a simulated home (3 days, an image
exported again on days 2 and 3, its blob then replaced by junk, ``--force`` of day 1 and two nightlies: the first
nightly ran days 2 and 3 and the second said ``up to date``, every day's rows rejecting the image; that holds only
while ``cache/copied_rows.json`` keeps what the earlier plans saw: test 1).

What held up (no test): a parallel ingest (two forked workers) writes the same exports record and partitions as a
single process; a blob replaced X -> Y -> X with ``--force`` of its first day after each change (every copying day
planned stale and run, equal to a build from scratch); a copy chain whose source stays accepted (day C copies from
the earliest holder, A, so C is stale with B once A is forced); the plan's one pass (``_nightly`` below) is what
``pickapic build`` ran in the CLI run; a record that is a link, a FIFO, garbage, of
another base or another images file (counts as none; tested by fix29e). Measured (not asserted): a year of
pruned days (365 days of 6,000 images) costs an ingest with one unresolved reference 1.6 s of record reads and
under 1 MB; ``CopiedRows`` with a cold cache (first plan after a full rerun of the features, or the cache deleted)
reads every earlier partition for each day that copied a row from a recent day: 3.7 s at 60 days, 10.6 s at 120,
68 s at 365 (2,000 rows a day, 10 copies; quadratic in the days; 0.35 s warm), a day with more than 1,024 copied
rows paying its share at every plan.

Noticed, not filed: a pruned day's features are never run again (``staleness``: "keep what was built"), so after a
change of ``features.train_size`` a published version ships the pruned days' rows and training JPEGs made under
the old settings beside the others' (documented as "kept as it was built"); a retention that deletes a raw day's
files and leaves its empty ``dt=`` folder (``find -type f -delete``) is not a pruned day: the day is ingested
again as four missing files and its rows leave the next published version (README tells retention to remove the
folder).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour; all three fixed the same day (fix30a, ``tests/unit/test_fix30a.py``) and the markers
removed.
"""
from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.provenance import RejectedBlobs

A, B, C = "2023-03-01", "2023-03-02", "2023-03-03"
CONFIG = FeaturesConfig(workers=0)


def _tables(home: DataHome, day: str) -> dict[str, list[dict]]:
    return {t: pq.read_table(home.partition_file(t, day)).to_pylist() for t in ("image_features", "image_rejects")}


def _run(home: DataHome, *days: str) -> None:
    for day in days:
        build_features(home, day, CONFIG, detector_factory=fake_detector)


def _nightly(home: DataHome, days: list[str]) -> list[str]:
    """What ``pickapic build`` does for the features of these days: one plan (a day is stale while the features
    version it expects carries a mark: ``staleness.expected_missing_mark``), then the stale days run in day order."""
    blobs = RejectedBlobs(home)
    stale = [day for day in days if blobs.expected_mark(day, str(home.root))[0]]
    blobs.save()
    _run(home, *stale)
    return stale


def _scratch(tmp_path: Path, days: dict[str, dict[str, bytes]]) -> DataHome:
    scratch = DataHome(tmp_path / "scratch")
    for day, blobs in days.items():
        write_day(scratch, day, blobs)
    _run(scratch, *days)
    return scratch


# ------------------- 1. wrong published data: without the disposable cache a copy's source moves to a stale day
def test_without_the_copied_rows_cache_a_copy_whose_source_is_stale_is_still_run(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1), "x": png(5)})
    write_day(home, B, {"a": png(1), "y": png(6)})
    write_day(home, C, {"a": png(1), "z": png(8)})
    time.sleep(0.15)
    _run(home, A, B, C)
    assert _nightly(home, [A, B, C]) == []                           # the plans' looks fill the cache
    assert [r["reused_from"] for r in _tables(home, C)["image_features"] if r["image_uid"] == "a"] == ["a"]
    junk = b"not an image at all"
    (home.root / home.raw_image_relpath("a")).write_bytes(junk)      # a corrected delivery gone wrong
    time.sleep(0.15)
    _run(home, A)                                                    # pickapic build --force --from A --to A
    assert [r["image_uid"] for r in _tables(home, A)["image_rejects"]] == ["a"]
    (home.cache / "copied_rows.json").unlink()                       # a disposable cache deleted (or lost)
    _nightly(home, [A, B, C])                                        # the next nightly
    scratch = _scratch(tmp_path, {A: {"a": junk, "x": png(5)}, B: {"a": junk, "y": png(6)},
                                  C: {"a": junk, "z": png(8)}})
    for day in (A, B, C):
        assert _tables(home, day) == _tables(scratch, day), day


# ---------------------- 2. incremental != from scratch: a copying day run first keeps a fresh row for good
def test_a_day_run_before_its_source_after_a_blob_replacement_follows_the_source_once_that_runs(
        tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1), "x": png(5)})
    write_day(home, B, {"a": png(1)})                                # a exported again the next day
    time.sleep(0.15)
    _run(home, A, B)
    (home.root / home.raw_image_relpath("a")).write_bytes(png(7))    # a corrected image under the same uid
    time.sleep(0.15)
    _run(home, B)                                                    # day 2 runs first (re-ingest, --force B)
    _run(home, A)                                                    # pickapic build --force --from A --to A
    _nightly(home, [A, B])
    scratch = _scratch(tmp_path, {A: {"a": png(7), "x": png(5)}, B: {"a": png(7)}})
    for day in (A, B):
        assert _tables(home, day) == _tables(scratch, day), day


# ------------------------ 3. incremental != from scratch: a row copied by sha256 keeps a source that is gone
def test_a_row_copied_by_sha256_follows_its_source_after_the_sources_blob_is_replaced(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1), "x": png(5)})
    write_day(home, B, {"b": png(1)})                                # other uid, the same bytes
    time.sleep(0.15)
    _run(home, A, B)
    assert [r["reused_from"] for r in _tables(home, B)["image_features"]] == ["a"]
    (home.root / home.raw_image_relpath("a")).write_bytes(png(7))
    time.sleep(0.15)
    _run(home, A)                                                    # pickapic build --force --from A --to A
    _nightly(home, [A, B])
    scratch = _scratch(tmp_path, {A: {"a": png(7), "x": png(5)}, B: {"b": png(1)}})
    for day in (A, B):
        assert _tables(home, day) == _tables(scratch, day), day
