"""Late images: a ranking or download whose image arrives in a later day's export (within
``late_image_days``) is accepted and counted, one whose image never arrives in time is quarantined;
day-by-day ingests (each refreshing the earlier days it resolves) equal a build over all days."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day

DAYS = ["2023-03-01", "2023-03-02", "2023-03-03", "2023-03-04"]


def build_days() -> dict[str, DayBuilder]:
    """Four days; day 1's rankings and downloads wait for images of days 2, 3 and 4."""
    days = {day: DayBuilder(day, seed=i, id_base=1 + 10_000 * i).populate(users=2, images=6, rankings=3, downloads=1)
            for i, day in enumerate(DAYS)}
    d1, d2, d3, d4 = (days[d] for d in DAYS)
    late = {"next": d2.image_uids[0], "two": d3.image_uids[0], "three": d4.image_uids[0],
            "both_a": d2.image_uids[1], "both_b": d4.image_uids[1]}
    own = d1.image_uids
    d1.add("rankings", d1.ranking(image_0_uid=late["next"], image_1_uid=own[0], best_image_uid="none"))   # -> late
    d1.add("rankings", d1.ranking(image_0_uid=own[1], image_1_uid=late["two"], best_image_uid=own[1]))    # -> late
    d1.add("rankings", d1.ranking(image_0_uid=late["three"], image_1_uid=own[2], best_image_uid="none"))  # -> lost
    # the first unknown image arrives in time, the second too late: lost, its detail moves on
    d1.add("rankings", d1.ranking(image_0_uid=late["both_a"], image_1_uid=late["both_b"], best_image_uid="none"))
    d1.add("downloads", d1.download(image_uid=late["next"]))                                               # -> late
    d2.add("rankings", d2.ranking(image_0_uid=late["two"], image_1_uid=d2.image_uids[2], best_image_uid="none"))
    # four image rankings with one image from a later day
    d3.add("rankings", d3.ranking(image_0_uid=d3.image_uids[1], image_1_uid=d3.image_uids[2],
                                  image_2_uid=d3.image_uids[3], image_3_uid=d4.image_uids[2],
                                  best_image_uid=d3.image_uids[1]))
    return days


def snapshot(home: DataHome) -> dict[str, bytes]:
    return {f"{ds}/{day}": home.partition_file(ds, day).read_bytes()
            for day in DAYS for ds in OUTPUT_DATASETS if home.partition_file(ds, day).is_file()}


def read(home: DataHome, dataset: str, day: str) -> list[dict]:
    return pq.read_table(home.partition_file(dataset, day)).to_pylist()


def test_day_by_day_equals_all_at_once_in_any_order(tmp_path: Path) -> None:
    days = build_days()
    at_once = DataHome(tmp_path / "at_once")
    for builder in days.values():
        builder.write(at_once)
    for day in DAYS:
        ingest_day(at_once, day)
    expected = snapshot(at_once)

    backwards = DataHome(tmp_path / "backwards")
    shutil.copytree(at_once.raw, backwards.raw, symlinks=True)
    for day in reversed(DAYS):
        ingest_day(backwards, day)
    assert snapshot(backwards) == expected

    nightly = DataHome(tmp_path / "nightly")
    refreshed = {}
    for day in DAYS:                       # each day lands, then is ingested
        days[day].write(nightly)
        refreshed[day] = sorted(ingest_day(nightly, day).refreshed)
    assert snapshot(nightly) == expected
    # day 1 waits for days 2, 3 and 4 (day 4 is outside its 2-day window), day 2 for day 3, day 3 for day 4
    assert refreshed == {"2023-03-01": [], "2023-03-02": ["2023-03-01"], "2023-03-03": ["2023-03-01", "2023-03-02"],
                         "2023-03-04": ["2023-03-03"]}


def test_both_outcomes_are_counted_and_reconcile(tmp_path: Path) -> None:
    days = build_days()
    home = DataHome(tmp_path / "home")
    for builder in days.values():
        builder.write(home)
    reports = {day: ingest_day(home, day) for day in DAYS}
    assert all(r.reconciled for r in reports.values())
    files = {(f["dt"].isoformat(), f["table"]): f for day in DAYS for f in read(home, "ingest_files", day)}
    assert files[(DAYS[0], "rankings")]["accepted_late_image"] == 2
    assert files[(DAYS[0], "downloads")]["accepted_late_image"] == 1
    assert files[(DAYS[1], "rankings")]["accepted_late_image"] == 1
    assert files[(DAYS[2], "rankings")]["accepted_late_image"] == 1
    for f in files.values():
        assert f["lines_in"] == f["accepted"] + f["quarantined"]
    lost = read(home, "quarantine", DAYS[0])
    assert [q["reason"] for q in lost] == ["unknown_image_reference"] * 2
    assert sorted(q["detail"].split(" = ")[0] for q in lost) == ["image_0_uid", "image_1_uid"]
    assert all(q["detail"].endswith("is in no images export of 2023-03-01, an earlier day or the 2 day(s) after it "
                                    "(up to 2023-03-03)") for q in lost)
    accepted = {r["ranking_id"] for r in read(home, "rankings", DAYS[0])}
    assert len(accepted) == 3 + 2
    meta = reports[DAYS[0]].metadata()
    assert meta["accepted_late_image"] == 3 and meta["quarantine_by_reason"] == {"unknown_image_reference": 2}


def test_no_late_window_keeps_every_reference_to_the_past(tmp_path: Path) -> None:
    days = build_days()
    home = DataHome(tmp_path / "home")
    for builder in days.values():
        builder.write(home)
    report = ingest_day(home, DAYS[0], IngestConfig(late_image_days=0))
    assert report.accepted_late_image == 0
    assert report.tables["rankings"].reasons == {"unknown_image_reference": 4}
    assert report.tables["downloads"].reasons == {"unknown_image_reference": 1}
    assert ingest_day(home, DAYS[1], IngestConfig(late_image_days=0)).refreshed == {}


def test_a_day_without_waiting_references_is_not_ingested_again(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    first = DayBuilder(DAYS[0], seed=1).populate(users=2, images=4, rankings=2, downloads=1)
    first.add("rankings", first.ranking(image_0_uid=first.uid(), image_1_uid=first.image_uids[0],
                                        best_image_uid="none"))     # never exported anywhere
    first.write(home)
    ingest_day(home, DAYS[0])
    before = home.partition_file("rankings", DAYS[0]).stat().st_mtime_ns
    DayBuilder(DAYS[1], seed=2, id_base=5000).populate(users=1, images=3, rankings=1, downloads=0).write(home)
    assert ingest_day(home, DAYS[1]).refreshed == {}
    assert home.partition_file("rankings", DAYS[0]).stat().st_mtime_ns == before

