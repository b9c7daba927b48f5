"""Fix31b (review rev31b): the plan's view of copied rows.

- One notion of the days a plan does not run (``provenance.days_not_run``): its raw folder gone, not begun, or,
  for the nightly and the sensors (``provenance.planned_days``'s default), incomplete; ``plan_build`` passes the
  days it runs to ``RejectedBlobs``/``CopiedRows``, so ``pickapic build`` (which ingests an incomplete day as it is)
  still judges such a day's rows, and the build stamp judges them as it does. The cache ``copied_rows.json``
  (version 5) records each day's flag ``settled``: a file landing or leaving makes the days from there judged again.
- Only ``dt=YYYY-MM-DD`` folders are days (``DataHome.partition_days``): the stage's history, the plan and the
  stamp never read a copy ``dt=DAY.bak``.
- The plan's caches are read with ``provenance.read_cache`` (a regular file, size-bounded, ``O_NONBLOCK``, no
  link followed): a FIFO, a link to ``/dev/zero``, a huge or deeply nested file counts as no cache.

Synthetic partitions (as ``test_fix30j``) where only the rows matter; the real feature stage (Beam in process) for
the copies themselves.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features_fixtures import fake_detector, png, write_day

from dagster_project import automation, buildstamp, staleness
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from pipelines import provenance
from pipelines.features.config import FeaturesConfig
from pipelines.features.reuse import earlier_partitions
from pipelines.features.stage import build_features
from pipelines.provenance import (
    COPIES_MARK,
    CopiedRows,
    RawDigests,
    RejectedBlobs,
    days_not_run,
    planned_days,
    read_cache,
)
from schemas.features import IMAGE_REJECTS

A, P, L = "2023-03-01", "2023-03-02", "2023-03-03"
FUTURE = "2999-01-01"
S0, S1 = "0" * 64, "1" * 64


def _write(home: DataHome, day: str, rows: list[tuple[str, str, str | None]], *, folder: str | None = None) -> None:
    """A day's ``image_features`` partition of (image_uid, sha256, reused_from) rows and an empty ``image_rejects``
    partition (``folder``: another folder name than ``dt=DAY``)."""
    rows = sorted(rows)
    table = pa.table({"image_uid": pa.array([r[0] for r in rows], pa.string()),
                      "sha256": pa.array([r[1] for r in rows], pa.string()),
                      "reused_from": pa.array([r[2] for r in rows], pa.string())})
    for dataset, data in (("image_features", table.replace_schema_metadata({b"pickapic.features_output_key": b"k"})),
                          ("image_rejects", IMAGE_REJECTS.empty_table())):
        path = home.partition_file(dataset, day)
        if folder is not None:
            path = path.parent.with_name(folder) / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, path)


def _deliver(home: DataHome, day: str, tables: tuple[str, ...] = provenance.RAW_TABLES) -> None:
    """A raw day folder holding ``tables`` (all four: complete)."""
    home.raw_day(day).mkdir(parents=True, exist_ok=True)
    for table in tables:
        home.raw_file(day, table).write_bytes(b"")


def _verdicts(home: DataHome, planned=None) -> dict:
    """Each day's verdict from the cache as it is, then cold (no cache): they must agree."""
    warm = CopiedRows(home, planned)
    verdicts = dict(warm._look())
    warm.save()
    (home.cache / "copied_rows.json").unlink(missing_ok=True)
    cold = CopiedRows(home, planned)
    assert dict(cold._look()) == verdicts
    cold.save()
    return verdicts


# ----------------------------------------------------------------------------------------------- days not run
def test_the_days_a_plan_does_not_run(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    days = [A, P, L, FUTURE]
    assert days_not_run(home, days) == set()                        # no raw zone: nothing settled
    _deliver(home, A)
    _deliver(home, P, ("users", "images", "rankings"))              # downloads never came
    _deliver(home, FUTURE)                                          # an export naming a day to come
    assert planned_days(home) == [A]                                # the nightly's and the sensors'
    assert planned_days(home, incomplete=True) == [A, P]            # pickapic build ingests P as it is
    assert days_not_run(home, days) == {P, L, FUTURE}               # L: its raw folder is gone
    assert days_not_run(home, days, planned_days(home, incomplete=True)) == {L, FUTURE}
    (home.raw_file(P, "downloads")).mkdir()                         # a folder at a table file: still incomplete
    assert not provenance.raw_day_complete(home, P) and automation.raw_day_complete is provenance.raw_day_complete
    assert automation.RAW_TABLE_FILES == tuple(home.raw_file(A, t).name for t in provenance.RAW_TABLES)


def test_an_incomplete_day_is_settled_for_the_nightly_and_judged_for_pickapic_build(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])
    _write(home, P, [("a", S0, "a")])                    # a copy by uid of bytes A no longer holds: stale, risky
    _write(home, L, [("a", S0, "a")])                    # follows P
    for day in (A, P, L):
        _deliver(home, day)
    cli = planned_days(home, incomplete=True)
    assert _verdicts(home) == _verdicts(home, cli) == {A: None, P: "changed", L: "changed"}
    home.raw_file(P, "rankings").unlink()                # P incomplete: the nightly does not run it
    assert _verdicts(home) == {A: None, P: "same", L: "same"}              # L copies P's row as it is
    entries = json.loads((home.cache / "copied_rows.json").read_text())
    assert entries["version"] == 5 and [entries["days"][d]["settled"] for d in (A, P, L)] == [False, True, False]
    cli = planned_days(home, incomplete=True)
    assert _verdicts(home, cli) == {A: None, P: "changed", L: "changed"}   # pickapic build runs P: judged
    assert _verdicts(home) == {A: None, P: "same", L: "same"}              # flag flipped back: judged again
    _deliver(home, P)                                    # the file lands: every plan runs P again
    assert _verdicts(home) == {A: None, P: "changed", L: "changed"}


def test_a_day_not_begun_is_settled_and_the_flag_of_an_old_cache_is_not_trusted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])
    _write(home, FUTURE, [("a", S0, "a")])
    _deliver(home, A)
    _deliver(home, FUTURE)
    assert _verdicts(home) == {A: None, FUTURE: "same"}
    body = json.loads((home.cache / "copied_rows.json").read_text())
    for entry in body["days"].values():                  # a version 4 cache: the flag named "pruned"
        entry["pruned"] = entry.pop("settled")
    (home.cache / "copied_rows.json").write_text(json.dumps({"version": 4, "days": body["days"]}))
    assert CopiedRows(home).known == {}
    (home.cache / "copied_rows.json").write_text(json.dumps({"version": 5, "days": body["days"]}))
    fooled = CopiedRows(home)                            # entries without the flag: judged again
    assert fooled._look() == {A: None, FUTURE: "same"} and fooled.changed


def test_the_plan_and_the_stamp_judge_an_incomplete_day_as_pickapic_build_runs_it(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home, A, [("a", S1, None)])
    _write(home, P, [("a", S0, "a")])
    _deliver(home, A)
    _deliver(home, P, ("users",))
    cli = planned_days(home, incomplete=True)
    blobs = RejectedBlobs(home, planned=cli)             # what plan_build passes for pickapic build
    assert blobs.expected_mark(P, str(home.root))[0].endswith(COPIES_MARK)
    assert not RejectedBlobs(home).expected_mark(P, str(home.root))[0].endswith(COPIES_MARK)   # the nightly's
    watches = dict(buildstamp._blob_watches(home))      # the stamp of pickapic build: P watched, stale
    assert buildstamp.STALE_ROWS in watches[P]
    assert buildstamp.stamp_key(home).startswith(buildstamp.UNTRUSTED)


def test_the_raw_day_sensor_plans_as_the_nightly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = DataHome(tmp_path / "home")
    _deliver(home, A)
    _deliver(home, P, ("users",))
    seen = []
    real = automation.plan_build

    def spy(*args, **kwargs):
        seen.append(sorted(kwargs.get("ignore_days", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(automation, "plan_build", spy)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                          resources={"data_home": PickapicHome(root=str(home.root))},
                                          repository_def=defs.get_repository_def())
        result = automation.raw_partition_sensor.evaluate_tick(context)
    assert seen == [[P]]
    assert [request.partition_key for request in result.run_requests] == [A]


# ------------------------------------------------------------------------------------- only day folders are days
def test_only_day_folders_are_days(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    assert home.partition_days("image_features") == []
    _write(home, A, [("a", S0, None)])
    for name in (f"dt={A}.bak", f"dt={A} (copy)", "dt=2023-3-1", "dt=２０２３-03-01", f"old-dt={A}", "dt="):
        _write(home, A, [("a", S1, None)], folder=name)
    (home.table_dir("image_features") / f"dt={P}").write_bytes(b"")   # a file named as a day: no partition file
    assert home.partition_days("image_features") == [A, P]
    assert earlier_partitions(home, L) == [(A, home.partition_file("image_features", A))]
    assert CopiedRows(home)._look() == {A: None}
    assert [day for day, _ in buildstamp._blob_watches(home)] == []   # nothing rejected: nothing watched


def test_the_stage_copies_from_no_bak_folder_and_writes_what_a_build_from_scratch_writes(tmp_path: Path) -> None:
    """The review's case by sha256 and by uid: the copy's rows (x with the old picture) are no source."""
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"x": png(1)})
    time.sleep(0.15)
    build_features(home, A, config, detector_factory=fake_detector)
    folder = home.partition_file("image_features", A).parent
    os.rename(folder, folder.with_name(folder.name + ".bak"))       # moved aside: A has no partition now
    write_day(home, L, {"x": png(1), "v": png(1)})
    time.sleep(0.15)
    build_features(home, L, config, detector_factory=fake_detector)
    table = pq.read_table(home.partition_file("image_features", L))
    rows = [(r["image_uid"], r["reused_from"]) for r in table.to_pylist()]
    assert rows == [("v", None), ("x", None)]                       # no earlier day: both computed afresh
    assert CopiedRows(home)._look() == {L: None}


# ---------------------------------------------------------------------------------- caches never waited on
def _release(path: Path, after: float = 3.0) -> threading.Thread:
    """Open the FIFO at ``path`` for writing after ``after`` s (a reader blocked in its open then reads EOF)."""
    def run() -> None:
        time.sleep(after)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero", "huge", "nested", "not-utf8", "folder"])
def test_an_unreadable_cache_counts_as_absent(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    _write(home, A, [("a", S1, None)])
    _write(home, P, [("a", S0, "a")])
    monkeypatch.setattr(provenance, "CACHE_MAX_BYTES", 1 << 16)
    monkeypatch.setattr(buildstamp, "STAMP_MAX_BYTES", 1 << 10)
    names = ("copied_rows.json", "missing_blobs.json", provenance.RAW_DIGESTS_CACHE, buildstamp.STAMP)
    for name in names:
        path = home.cache / name
        if kind == "fifo":
            os.mkfifo(path)
            _release(path)
        elif kind == "link-to-dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "huge":                              # valid JSON past the bound
            path.write_text(json.dumps({"version": 5, "days": {}, "pad": "x" * (1 << 17)}))
        elif kind == "nested":
            path.write_text("[" * 20_000 + "]" * 20_000)       # under the bound, past Python's recursion limit
        elif kind == "not-utf8":
            path.write_bytes(b"\xff\xfe{}")
        else:
            path.mkdir()
        assert read_cache(path) is None
    began = time.monotonic()
    assert CopiedRows(home)._look() == {A: None, P: "changed"}
    assert RejectedBlobs(home).summary(A) is None
    assert RawDigests(home).known == {}
    assert not buildstamp.is_up_to_date(home, "key")
    assert time.monotonic() - began < 1.5


def test_a_well_formed_cache_of_the_wrong_shape_is_no_cache(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    _deliver(home, A)
    for text in ("[]", "null", '"x"', json.dumps({"raw/app_logs/dt=2023-03-01/users.jsonl.gz": [1, 2]}),
                 json.dumps({"raw/app_logs/dt=2023-03-01/users.jsonl.gz": {"stat": None, "sha256": 5}})):
        (home.cache / provenance.RAW_DIGESTS_CACHE).write_text(text)
        digests = RawDigests(home)
        digest = digests.day(A)
        (home.cache / provenance.RAW_DIGESTS_CACHE).unlink()
        assert digest == RawDigests(home).day(A)
    (home.cache / buildstamp.STAMP).write_text("[1]")
    assert not buildstamp.is_up_to_date(home, "key")
    buildstamp.write_stamp(home, "key")
    assert buildstamp.is_up_to_date(home, "key")


def test_begun_days_keeps_its_clock_in_staleness() -> None:
    assert staleness.begun_days([A, FUTURE]) == provenance.begun_days([A, FUTURE]) == [A]
    assert staleness.begun_days([A, P], today=A) == [A]
