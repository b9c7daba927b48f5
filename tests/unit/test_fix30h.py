"""Fixes of review rev30h (tests/unit/test_hostile_rev30h.py) of ``provenance.CopiedRows`` and the build stamp.

- A row whose ``reused_from`` is its own uid while the earliest earlier day holding the uid has other bytes is the
  feature stage's copy by sha256 from a later earlier day holding the uid with the new bytes: fresh while that is
  the earliest earlier (day, uid) holding its bytes (it was read as a copy by uid, and the day planned forever).
- A state in which a day's rows are stale is never stamped as up to date (``buildstamp._key``): a day made stale by
  the build's own runs (a backfilled earlier day) is run by the next build.
- The look holds only the rows another row shares a uid or sha256 with, or that copied one, and judges them with
  integer arrays; a 64-bit fingerprint shared by two strings falls back to the strings themselves.

Most cases use hand-written ``image_features`` partitions of the three columns ``CopiedRows`` reads (the stage's
partitions hold more; its own behaviour is driven in tests/unit/test_fix30a.py and test_hostile_rev30h.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_project import buildstamp
from formats.home import DataHome
from pipelines import provenance
from pipelines.provenance import CopiedRows
from schemas.features import IMAGE_REJECTS

A, B, C, D = "2023-03-01", "2023-03-02", "2023-03-03", "2023-03-04"
S0, S1, S2 = "0" * 64, "1" * 64, "2" * 64
KEY = b"settings-1"


def _write(home: DataHome, day: str, rows: list[tuple[str, str, str | None]], key: bytes = KEY) -> None:
    """A day's ``image_features`` partition of (image_uid, sha256, reused_from) rows (sorted by uid, as the stage
    writes them) and an empty ``image_rejects`` partition (the build stamp watches the days that have one)."""
    rows = sorted(rows)
    table = pa.table({"image_uid": pa.array([r[0] for r in rows], pa.string()),
                      "sha256": pa.array([r[1] for r in rows], pa.string()),
                      "reused_from": pa.array([r[2] for r in rows], pa.string())})
    path = home.partition_file("image_features", day)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"pickapic.features_output_key": key}), path)
    rejects = home.partition_file("image_rejects", day)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(IMAGE_REJECTS.empty_table(), rejects)


def _verdicts(home: DataHome) -> dict[str, str | None]:
    """Each day's verdict, cold (no cache), then again from the cache the first look wrote: they must agree."""
    (home.cache / "copied_rows.json").unlink(missing_ok=True)
    cold = CopiedRows(home)
    verdicts = dict(cold._look())
    cold.save()
    assert dict(CopiedRows(home)._look()) == verdicts
    return verdicts


# ---------------------------------------------------------------------------------------- the staleness rule
def test_a_copy_by_sha256_from_its_own_uid_on_a_later_earlier_day_is_fresh(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None)])      # A still holds the old bytes (not run again after the replacement)
    _write(home, B, [("a", S1, None)])      # B read the replaced blob afresh
    _write(home, C, [("a", S1, "a")])       # C copied (B, a) by sha256: reused_from is its own uid
    assert _verdicts(home) == {A: None, B: None, C: "same"}


def test_a_copy_by_uid_whose_source_holds_other_bytes_now_is_still_stale(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])      # A fingerprinted again after a replacement
    _write(home, B, [("a", S0, "a")])       # B copied A's old row by uid (review rev29e)
    assert _verdicts(home) == {A: None, B: "changed"}
    _write(home, C, [("a", S0, "a")])       # and a day copying those old bytes from B is stale with it
    assert _verdicts(home) == {A: None, B: "changed", C: "changed"}


def test_a_copy_by_sha256_from_its_own_uid_follows_its_source(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None)])
    _write(home, B, [("a", S1, "a")])       # stale: a copy by uid of bytes A does not hold, none earlier holds S1
    _write(home, C, [("a", S1, "a")])       # its source (B, a) is stale: so is C
    assert _verdicts(home) == {A: None, B: "changed", C: "changed"}
    _write(home, B, [("a", S1, None), ("0", S1, None)])   # B holds S1 under a smaller uid too: C should copy (B, 0)
    _write(home, C, [("a", S1, "a")])
    verdicts = _verdicts(home)
    assert verdicts[C] == "changed" and CopiedRows(home).known[C]["stale"] == ["a"]


def test_a_fresh_row_of_bytes_an_earlier_day_holds_under_its_own_uid_only_is_fresh(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None), ("b", S2, None)])
    _write(home, B, [("a", S1, None), ("b", S2, "b")])
    _write(home, C, [("a", S1, "a"), ("b", S2, "b"), ("c", S2, "b")])
    _write(home, D, [("c", S0, None)])      # a fresh row A's bytes (A, a) now match: stale
    assert _verdicts(home) == {A: None, B: "same", C: "same", D: "changed"}


def test_a_cache_of_the_earlier_rule_is_not_trusted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None)])
    _write(home, B, [("a", S1, None)])
    _write(home, C, [("a", S1, "a")])
    look = CopiedRows(home)
    look._look()
    look.save()
    cache = home.cache / "copied_rows.json"
    body = json.loads(cache.read_text())
    assert body["version"] == provenance._COPIES_VERSION
    body["version"] = 2                     # what fix30a's rule wrote: C stale
    body["days"][C].update(verdict="changed", stale=["a"])
    cache.write_text(json.dumps(body))
    assert CopiedRows(home).mark(C) == ""


# ---------------------------------------------------------------------------------------- memory and exactness
def test_only_the_rows_that_can_matter_are_judged(tmp_path: Path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [(f"a{k:04}", f"{k:064x}", None) for k in range(500)])
    _write(home, B, [(f"b{k:04}", f"{k + 1000:064x}", None) for k in range(500)] + [("a0007", f"{7:064x}", "a0007")])
    _write(home, C, [(f"c{k:04}", f"{k + 2000:064x}", None) for k in range(500)] + [("c9999", f"{9:064x}", None)])
    seen = []
    judge = CopiedRows._verdicts_of
    monkeypatch.setattr(CopiedRows, "_verdicts_of",
                        lambda self, tables, kept, entries: seen.extend(
                            (day, sorted(t.column("image_uid").to_pylist())) for day, t in tables)
                        or judge(self, tables, kept, entries))
    assert _verdicts(home) == {A: None, B: "same", C: "changed"}
    assert seen[:3] == [(A, ["a0007", "a0009"]), (B, ["a0007"]), (C, ["c9999"])]


def test_fingerprints_shared_by_other_strings_fall_back_to_the_strings(tmp_path: Path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None), ("b", S2, None)])
    _write(home, B, [("a", S1, None), ("x", S0, "a"), ("y", S2, None)])
    _write(home, C, [("a", S1, "a"), ("b", S2, "b"), ("z", S0, "b")])
    _write(home, D, [("a", S0, "a"), ("b", S2, None)])
    exact = _verdicts(home)
    assert exact == {A: None, B: "changed", C: "changed", D: "changed"}
    for value in (0, 1):                    # every string one fingerprint (0) or two strings' shared (1)
        monkeypatch.setattr(provenance, "_fingerprint",
                            lambda values, value=value: np.full(len(values), value, dtype=np.uint64)
                            if value == 0 else np.asarray([hash(v) % 3 for v in values.to_pylist()], dtype=np.uint64))
        assert _verdicts(home) == exact


def test_first_rows_of_strings_with_nulls_and_colliding_prints() -> None:
    values = pa.chunked_array([pa.array(["q", None, "p"]), pa.array(["p", None, "q", "r"])])
    expected = [0, 1, 2, 2, 1, 0, 6]
    assert provenance._first_rows(values, np.zeros(7, dtype=np.uint64)).tolist() == expected
    prints = np.concatenate([provenance._fingerprint(chunk) for chunk in values.chunks])
    assert provenance._first_rows(values, prints).tolist() == expected


# ---------------------------------------------------------------------------------------- the build stamp
def test_a_home_with_a_stale_day_is_never_up_to_date(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, B, [("b", S0, None)])
    fresh = buildstamp.stamp_key(home)
    assert not fresh.startswith(buildstamp.UNTRUSTED)
    buildstamp.write_stamp(home, fresh)
    assert buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))
    _write(home, A, [("a", S0, None)])      # a backfilled earlier day holding B's bytes: B is stale now
    stale = buildstamp.stamp_key(home)
    assert stale.startswith(buildstamp.UNTRUSTED)
    (home.cache / buildstamp.STAMP).write_text(json.dumps({"key": stale}))   # a stamp the earlier code wrote
    assert not buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))
    buildstamp.write_stamp(home, stale)
    assert not (home.cache / buildstamp.STAMP).exists()


@pytest.mark.parametrize("backfill", [True, False])
def test_the_stamp_after_a_build_whose_run_made_another_day_stale_is_untrusted(tmp_path: Path,
                                                                                backfill: bool) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, B, [("b", S0, None)])
    view = buildstamp.plan_view(home)       # the plan sees B alone: nothing watched on it
    _write(home, A, [("a", S0 if backfill else S1, None)])   # the build's run of A (a backfill)
    key = view.key_after_build(home)
    assert key.startswith(buildstamp.UNTRUSTED) is backfill
    buildstamp.write_stamp(home, key)
    assert buildstamp.is_up_to_date(home, buildstamp.stamp_key(home)) is not backfill
    if backfill:                            # the next build runs B, which then copies (A, a) by sha256
        _write(home, B, [("b", S0, "a")])
        view = buildstamp.plan_view(home)
        key = view.key_after_build(home)
        assert not key.startswith(buildstamp.UNTRUSTED)
        buildstamp.write_stamp(home, key)
        assert buildstamp.is_up_to_date(home, buildstamp.stamp_key(home))


def test_an_empty_partition_among_the_days_is_judged_as_holding_nothing(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S0, None)])
    _write(home, B, [])
    _write(home, C, [("a", S0, "a"), ("c", S0, "a")])
    assert _verdicts(home) == {A: None, B: None, C: "same"}
    _write(home, A, [])                     # the source's rows gone: both copies are stale
    assert _verdicts(home) == {A: None, B: None, C: "changed"}
    assert CopiedRows(home).known[C]["stale"] == ["a", "c"]
