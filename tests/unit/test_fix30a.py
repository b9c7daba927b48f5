"""Fixes of review rev30a (tests/unit/test_hostile_rev30a.py) of ``provenance.CopiedRows`` (fix29e).

A day's ``image_features`` rows are judged against the earlier days' rows as a run of the day would copy or compute
them now, from the partitions alone (the cache ``cache/copied_rows.json`` only saves work): a copy by uid against
the earliest earlier holder of the uid, a fresh row whose uid or bytes an earlier day holds, a copy by sha256
against the earliest earlier (day, uid) holding those bytes, and a row whose source row is stale itself. Each case
checks that the plan says the same with and without the cache, that a build of the stale days in day order equals
a build from scratch, and that the next plan finds nothing stale (no day planned again and again).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.provenance import COPIES_MARK, CopiedRows, RejectedBlobs

A, B, C = "2023-03-01", "2023-03-02", "2023-03-03"
CONFIG = FeaturesConfig(workers=0)


def _run(home: DataHome, *days: str, config: FeaturesConfig = CONFIG) -> None:
    for day in days:
        build_features(home, day, config, detector_factory=fake_detector)


def _marks(home: DataHome, days: list[str]) -> dict[str, str]:
    """The copies mark of each day, with the cache as the earlier looks left it and without it: they must agree."""
    blobs = RejectedBlobs(home)
    warm = {day: _copies_mark(blobs, home, day) for day in days}
    blobs.save()
    cache = home.cache / "copied_rows.json"
    aside = home.cache / "copied_rows.aside"
    if cache.exists():
        os.replace(cache, aside)
    try:
        cold = {day: CopiedRows(home).mark(day) for day in days}
    finally:
        if aside.exists():
            os.replace(aside, cache)
    assert warm == cold
    again = RejectedBlobs(home)     # from the cache just written
    assert {day: _copies_mark(again, home, day) for day in days} == warm
    return warm


def _copies_mark(blobs: RejectedBlobs, home: DataHome, day: str) -> str:
    """The part of the features version a plan expects that :class:`CopiedRows` adds (after the rejects' mark)."""
    return COPIES_MARK if blobs.expected_mark(day, str(home.root))[0].endswith(COPIES_MARK) else ""


def _stale(home: DataHome, days: list[str]) -> list[str]:
    return [day for day, mark in _marks(home, days).items() if mark == COPIES_MARK]


def _nightly(home: DataHome, days: list[str]) -> list[str]:
    """One plan, then the stale days run in day order (what ``pickapic build`` does for the features)."""
    stale = _stale(home, days)
    _run(home, *stale)
    return stale


def _tables(home: DataHome, day: str) -> dict[str, list[dict]]:
    return {t: pq.read_table(home.partition_file(t, day)).to_pylist() for t in ("image_features", "image_rejects")}


def _same_as_scratch(tmp_path: Path, home: DataHome, days: dict[str, dict[str, bytes]]) -> None:
    scratch = DataHome(tmp_path / "scratch")
    for day, blobs in days.items():
        write_day(scratch, day, blobs)
    _run(scratch, *days)
    for day in days:
        assert _tables(home, day) == _tables(scratch, day), day


def _reused_from(home: DataHome, day: str) -> dict[str, str | None]:
    return {r["image_uid"]: r["reused_from"] for r in _tables(home, day)["image_features"]}


def _replace(home: DataHome, uid: str, data: bytes) -> None:
    (home.root / home.raw_image_relpath(uid)).write_bytes(data)
    time.sleep(0.15)


def test_a_chain_of_copies_is_followed_from_its_first_holder_with_or_without_the_cache(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    for day, other in ((A, "x"), (B, "y"), (C, "z")):
        write_day(home, day, {"a": png(1), other: png(ord(other))})
    time.sleep(0.15)
    _run(home, A, B, C)
    assert _stale(home, [A, B, C]) == []
    assert _reused_from(home, C)["a"] == "a"
    _replace(home, "a", b"not an image at all")
    _run(home, A)                                                # --force of A: a is rejected there now
    assert _stale(home, [A, B, C]) == [B, C]                     # C's source now is B, whose copy is stale
    assert _nightly(home, [A, B, C]) == [B, C]
    assert _nightly(home, [A, B, C]) == []                       # settled: nothing planned again
    junk = b"not an image at all"
    _same_as_scratch(tmp_path, home, {A: {"a": junk, "x": png(ord("x"))}, B: {"a": junk, "y": png(ord("y"))},
                                      C: {"a": junk, "z": png(ord("z"))}})


def test_a_day_run_after_a_blob_replacement_waits_for_its_source_and_then_copies_it(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1), "x": png(5)})
    write_day(home, B, {"a": png(1)})
    time.sleep(0.15)
    _run(home, A, B)
    _replace(home, "a", png(7))
    _run(home, B)                                                # B reads the new bytes: a fresh row
    assert _reused_from(home, B) == {"a": None}
    # A still holds the old bytes (a replaced blob is seen by the next run of its day): B would write the same
    # fresh row again, so it is not stale (else every build would run it)
    assert _stale(home, [A, B]) == []
    _run(home, A)                                                # --force of A
    assert _stale(home, [A, B]) == [B]
    assert _nightly(home, [A, B]) == [B]
    assert _reused_from(home, B) == {"a": "a"}
    assert _nightly(home, [A, B]) == []
    _same_as_scratch(tmp_path, home, {A: {"a": png(7), "x": png(5)}, B: {"a": png(7)}})


def test_rows_copied_by_sha256_follow_their_source_and_same_day_twins_stay_computed(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1), "x": png(5)})
    write_day(home, B, {"b": png(1), "c": png(1), "d": png(5)})   # A's bytes under other uids
    write_day(home, C, {"e": png(1)})
    time.sleep(0.15)
    _run(home, A, B, C)
    assert _reused_from(home, B) == {"b": "a", "c": "a", "d": "x"}
    assert _stale(home, [A, B, C]) == []
    _replace(home, "a", png(7))
    _run(home, A)
    assert _stale(home, [A, B, C]) == [B, C]                     # C's e now copies B's b (the earliest holder)
    assert _nightly(home, [A, B, C]) == [B, C]
    assert _reused_from(home, B) == {"b": None, "c": None, "d": "x"}   # same-day twins are both computed
    assert _reused_from(home, C) == {"e": "b"}
    assert _nightly(home, [A, B, C]) == []
    _same_as_scratch(tmp_path, home, {A: {"a": png(7), "x": png(5)}, B: {"b": png(1), "c": png(1), "d": png(5)},
                                      C: {"e": png(1)}})


def test_a_day_built_before_an_earlier_day_with_its_bytes_is_stale_until_run_again(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1)})
    write_day(home, B, {"b": png(1), "a": png(1)})
    time.sleep(0.15)
    _run(home, B)                                                # a backfill: B built before A landed
    assert _stale(home, [B]) == []
    _run(home, A)
    assert _stale(home, [A, B]) == [B]                           # from scratch B copies a by uid, b by sha256
    assert _nightly(home, [A, B]) == [B]
    assert _reused_from(home, B) == {"a": "a", "b": "a"}
    assert _nightly(home, [A, B]) == []
    _same_as_scratch(tmp_path, home, {A: {"a": png(1)}, B: {"b": png(1), "a": png(1)}})


def test_a_copy_whose_source_was_written_under_other_settings_or_removed_is_stale(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1)})
    write_day(home, B, {"a": png(1), "y": png(6)})
    write_day(home, C, {"z": png(8)})
    time.sleep(0.15)
    _run(home, A, B, C)
    assert _stale(home, [A, B, C]) == []
    _run(home, A, config=FeaturesConfig(workers=0, train_size=64))   # A under other output settings
    assert _stale(home, [A, B, C]) == [B]
    _run(home, A)
    assert _stale(home, [A, B, C]) == []
    home.partition_file("image_features", A).unlink()            # a partition removed (by hand)
    assert _stale(home, [B, C]) == [B]
    _run(home, A)
    assert _stale(home, [A, B, C]) == []


def test_a_damaged_cache_gives_the_answer_of_the_partitions(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"a": png(1)})
    write_day(home, B, {"a": png(1)})
    time.sleep(0.15)
    _run(home, A, B)
    assert _stale(home, [A, B]) == []
    _replace(home, "a", png(7))
    _run(home, A)
    cache = home.cache / "copied_rows.json"
    assert _stale(home, [A, B]) == [B]
    known = json.loads(cache.read_text())
    for damage in ({"verdict": "changed", "stale": None}, {"verdict": "changed", "stale": []}, {"stale": [1]},
                   {"key": 3}, {"verdict": "maybe"}, {"stat": [1, 2, 3, 4]}):
        days = {day: {**entry, **damage} for day, entry in known["days"].items()}
        cache.write_text(json.dumps({"version": known["version"], "days": days}))
        assert _copies_mark(RejectedBlobs(home), home, B) == COPIES_MARK, damage
    for text in ("not json", "[]", json.dumps({"version": known["version"], "days": []})):
        cache.write_text(text)
        assert _copies_mark(RejectedBlobs(home), home, B) == COPIES_MARK, text
