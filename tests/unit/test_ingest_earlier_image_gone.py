"""An earlier day delivered again without an image a later day's accepted rows use (the app deleted it): the
later day is ingested again with the earlier one, so the order the days are ingested in changes nothing."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest.day import ingest_day


def _days() -> tuple[DayBuilder, DayBuilder, str]:
    day1 = DayBuilder("2023-03-01").populate(users=2, images=4, rankings=2, downloads=0)
    day2 = DayBuilder("2023-03-05", id_base=1000).populate(users=2, images=4, rankings=1, downloads=1)
    earlier = day1.image_uids[0]
    day2.add("rankings", day2.ranking(image_0_uid=day2.image_uids[0], image_1_uid=earlier, best_image_uid="none"))
    day2.add("downloads", day2.download(image_uid=earlier))
    return day1, day2, earlier


def _tables(home: DataHome, day: str) -> dict[str, bytes]:
    return {name: home.partition_file(name, day).read_bytes() for name in ("rankings", "downloads", "quarantine")}


def test_an_earlier_day_losing_an_image_rewrites_the_later_days_that_used_it(tmp_path: Path) -> None:
    scratch, incremental = DataHome(tmp_path / "scratch"), DataHome(tmp_path / "incremental")
    day1, day2, gone = _days()
    for home in (scratch, incremental):
        day1.write(home)
        day2.write(home)
    ingest_day(incremental, "2023-03-01")
    ingest_day(incremental, "2023-03-05")
    assert pq.read_table(incremental.partition_file("rankings", "2023-03-05")).num_rows == 2   # accepted
    day1.lines["images"] = [line for line in day1.lines["images"] if gone.encode() not in line]
    for home in (scratch, incremental):
        day1.write(home)   # the app deleted the image; day 1 delivered again
    report = ingest_day(incremental, "2023-03-01")
    assert "2023-03-05" in report.refreshed
    ingest_day(scratch, "2023-03-01")
    ingest_day(scratch, "2023-03-05")
    assert pq.read_table(scratch.partition_file("rankings", "2023-03-05")).num_rows == 1
    reasons = pq.read_table(scratch.partition_file("quarantine", "2023-03-05")).column("reason").to_pylist()
    assert reasons.count("unknown_image_reference") == 2
    assert _tables(incremental, "2023-03-05") == _tables(scratch, "2023-03-05")
    # ingesting day 1 again as it is now rewrites nothing else: the later day no longer uses its images
    assert ingest_day(incremental, "2023-03-01").refreshed == {}


@pytest.mark.parametrize("inline", [64, 0])
def test_the_record_of_a_later_day_is_kept_and_used_when_the_earlier_day_loses_the_image(tmp_path: Path, monkeypatch,
                                                                                         inline: int) -> None:
    """An unchanged earlier day ingested again refreshes nothing and leaves the later day's record (the uid it
    takes from day 1: in the JSON file, or in its own file past ``INLINE_UIDS``); once day 1 loses the image,
    that record sends the later day to its ingest."""
    import json

    import pipelines.ingest.earlierimages as earlierimages
    from pipelines.ingest.earlierimages import record_path

    monkeypatch.setattr(earlierimages, "INLINE_UIDS", inline)
    home = DataHome(tmp_path / "home")
    day1, day2, gone = _days()
    day1.write(home)
    day2.write(home)
    ingest_day(home, "2023-03-01")
    ingest_day(home, "2023-03-05")
    before = _tables(home, "2023-03-05")
    assert ingest_day(home, "2023-03-01").refreshed == {}
    assert _tables(home, "2023-03-05") == before
    entry = json.loads((home.cache / "earlier_image_days.json").read_text())["days"]["2023-03-05"]
    assert list(entry["from"]) == ["2023-03-01"]
    if inline:
        assert entry["uids"] == [["2023-03-01", gone]] and not record_path(home, "2023-03-05").exists()
    else:
        record = pq.read_table(record_path(home, "2023-03-05")).to_pylist()
        assert record == [{"day": "2023-03-01", "image_uid": gone}] and "uids" not in entry
    day1.lines["images"] = [line for line in day1.lines["images"] if gone.encode() not in line]
    day1.write(home)
    assert set(ingest_day(home, "2023-03-01").refreshed) == {"2023-03-05"}
    assert pq.read_table(home.partition_file("rankings", "2023-03-05")).num_rows == 1


def test_an_image_another_earlier_day_still_holds_keeps_the_rows(tmp_path: Path) -> None:
    """The image is also in an older day's export: the later day's rows stay accepted, as from scratch."""
    scratch, incremental = DataHome(tmp_path / "scratch"), DataHome(tmp_path / "incremental")
    day1, day2, gone = _days()
    day0 = DayBuilder("2023-02-27", id_base=5000).populate(users=1, images=1, rankings=0, downloads=0)
    day0.lines["images"] += [line for line in day1.lines["images"] if gone.encode() in line]
    for home in (scratch, incremental):
        for builder in (day0, day1, day2):
            builder.write(home)
    for day in ("2023-02-27", "2023-03-01", "2023-03-05", "2023-03-01"):
        ingest_day(incremental, day)     # the second ingest of day 1 records what the later day takes from it
    day1.lines["images"] = [line for line in day1.lines["images"] if gone.encode() not in line]
    for home in (scratch, incremental):
        day1.write(home)
    ingest_day(incremental, "2023-03-01")
    for day in ("2023-02-27", "2023-03-01", "2023-03-05"):
        ingest_day(scratch, day)
    assert pq.read_table(scratch.partition_file("rankings", "2023-03-05")).num_rows == 2
    assert _tables(incremental, "2023-03-05") == _tables(scratch, "2023-03-05")
