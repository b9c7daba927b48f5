"""The raw zone's layout: misnamed, linked-out and stray entries are reported and skipped, never fatal;
nothing the ingest stores names the data home's absolute location."""
from __future__ import annotations

import gc
import gzip
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from data_contracts.engine import evaluate, load_contract
from formats.home import DataHome
from formats.rawzone import RAW_FILE_NAMES, scan_raw_zone
from pipelines.ingest.config import OUTPUT_DATASETS
from pipelines.ingest.day import ingest_day
from pipelines.sqlrun import connect

DAY = "2023-03-01"


def _gz(path: Path, data: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0))


def plant_bad_entries(home: DataHome, outside: Path) -> dict[str, str]:
    """Every kind of raw-zone entry that is not a day; returns entry (relative) -> expected reason."""
    logs = home.raw_logs
    for name in ("dt=2023-02-30", "dt=2023-2-1", "dt=garbage"):
        for table in ("users", "rankings"):
            _gz(logs / name / f"{table}.jsonl.gz", b'{"user_id": 1}\n')
    (logs / "dt=").mkdir()                                      # empty, no date at all
    (logs / "dt=2023-03-05").write_bytes(b"a file, not a folder")
    outside.mkdir(parents=True, exist_ok=True)
    _gz(outside / "users.jsonl.gz", b'{"user_id": 999999}\n')
    (logs / "dt=2023-03-06").symlink_to(outside, target_is_directory=True)
    (logs / "dt=2023-03-07").symlink_to(outside / "nowhere")   # dangling
    (logs / "README.txt").write_text("exports land here\n")
    os.mkdir(os.fsencode(logs) + b"/dt=\xff\xfe")               # not UTF-8
    (home.raw_day(DAY) / "rankings.jsonl").write_bytes(b"{}\n")  # stray file beside a real day's files
    return {
        "raw/app_logs/dt=2023-02-30": "invalid_day_name", "raw/app_logs/dt=2023-2-1": "invalid_day_name",
        "raw/app_logs/dt=garbage": "invalid_day_name", "raw/app_logs/dt=": "invalid_day_name",
        "raw/app_logs/dt=2023-03-05": "not_a_folder", "raw/app_logs/dt=2023-03-06": "link_outside_raw_zone",
        "raw/app_logs/dt=2023-03-07": "link_outside_raw_zone", "raw/app_logs/README.txt": "unexpected_entry",
        "raw/app_logs/dt=\\xff\\xfe": "invalid_day_name", f"raw/app_logs/dt={DAY}": "unexpected_file",
    }


@pytest.fixture()
def bad_zone(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY, seed=2).populate(users=3, images=6, rankings=4, downloads=2).write(home)
    expected = plant_bad_entries(home, tmp_path / "outside")
    return home, expected


def test_bad_entries_are_skipped_and_each_is_reported(bad_zone):
    home, expected = bad_zone
    assert home.raw_days() == [DAY]          # raised "day is out of range for month" before
    scan = home.scan_raw_zone()
    assert {p.entry: p.reason for p in scan.problems} == expected
    by_path = {p.path: p for p in scan.problems}
    # the files of a misnamed folder are listed one by one, with their sizes
    listed = by_path["raw/app_logs/dt=2023-02-30/rankings.jsonl.gz"]
    assert listed.file_bytes == (home.raw_logs / "dt=2023-02-30" / "rankings.jsonl.gz").stat().st_size
    assert "'dt=2023-02-30' is not a calendar date (day is out of range for month)" in listed.detail
    assert by_path[f"raw/app_logs/dt={DAY}/rankings.jsonl"].file_bytes == 3
    # a link out is never followed: one row, no size, no target named
    link = by_path["raw/app_logs/dt=2023-03-06"]
    assert link.file_bytes is None and "outside" in link.detail and str(home.root.parent) not in link.detail
    assert len(scan.summary()) == len(expected)
    assert any(line.startswith("raw/app_logs/dt=2023-02-30: invalid_day_name") and "2 file(s) not ingested" in line
               for line in scan.summary())


def test_ingest_runs_beside_bad_entries_and_records_them(bad_zone):
    home, expected = bad_zone
    report = ingest_day(home, DAY)
    assert report.reconciled and report.tables["users"].accepted == 3
    record = pq.read_table(home.table_file("raw_zone_problems"))
    assert set(record.column("entry").to_pylist()) == set(expected)
    assert record.column("path").to_pylist() == sorted(record.column("path").to_pylist())
    for row in record.to_pylist():
        assert str(home.root) not in " ".join(str(v) for v in row.values()), row
    assert len(report.metadata()["raw_zone_problems"]) == len(expected)
    con = connect({"raw_zone_problems": str(home.table_file("raw_zone_problems"))})
    failed = [r.rule.name for r in evaluate(load_contract("raw_zone_problems"), con) if not r.passed]
    assert failed == []
    # the user behind the link out of the raw zone was never read
    assert 999999 not in pq.read_table(home.partition_file("users", DAY)).column("user_id").to_pylist()


def test_a_day_folder_linked_inside_the_raw_zone_is_a_day(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    store = home.raw / "store" / "2023-03-02"
    DayBuilder("2023-03-02", seed=1).populate(users=1, images=2, rankings=1, downloads=0).write(DataHome(tmp_path / "x"))
    store.parent.mkdir(parents=True)
    os.rename(tmp_path / "x" / "raw" / "app_logs" / "dt=2023-03-02", store)
    (home.raw_logs / "dt=2023-03-02").symlink_to(Path("..") / "store" / "2023-03-02", target_is_directory=True)
    assert home.raw_days() == [DAY, "2023-03-02"] and not home.scan_raw_zone().problems
    assert ingest_day(home, "2023-03-02").tables["users"].accepted == 1


def test_a_raw_file_linked_out_of_the_raw_zone_is_unreadable_even_inside_the_home(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    inside_home = home.root / "elsewhere" / "users.jsonl.gz"
    _gz(inside_home, b'{"user_id": 77, "created_at": "2023-03-01 00:00:00", "email": null, "name": null}\n')
    home.raw_file(DAY, "users").unlink()
    home.raw_file(DAY, "users").symlink_to(inside_home)
    report = ingest_day(home, DAY)
    assert report.tables["users"].status == "unreadable"
    assert report.tables["users"].error == f"path 'raw/app_logs/dt={DAY}/users.jsonl.gz' resolves outside the raw zone"


def _odd_files_home(base: Path) -> DataHome:
    """One day whose files hit every file-level problem that once named an absolute path."""
    home = DataHome(base / "home")
    DayBuilder(DAY, seed=5).populate(users=2, images=4, rankings=3, downloads=1).write(home, skip=("downloads",))
    home.raw_file(DAY, "users").unlink()
    home.raw_file(DAY, "users").mkdir()                                        # not a regular file
    outside = base / "outside.jsonl.gz"
    _gz(outside, b"{}\n")
    home.raw_file(DAY, "rankings").unlink()
    home.raw_file(DAY, "rankings").symlink_to(outside)                        # link out of the raw zone
    return home                                                               # downloads: missing


def test_stored_details_name_no_absolute_path_and_homes_agree(tmp_path):
    """The same raw files in two homes at different places give byte-identical ingest outputs."""
    short = _odd_files_home(tmp_path / "a")
    deep = _odd_files_home(tmp_path / "b" / "much" / "deeper" / "folder")
    reports = [ingest_day(home, DAY) for home in (short, deep)]
    for dataset in OUTPUT_DATASETS:
        assert short.partition_file(dataset, DAY).read_bytes() == deep.partition_file(dataset, DAY).read_bytes(), dataset
    details = pq.read_table(short.partition_file("quarantine", DAY)).column("detail").to_pylist()
    assert sorted(details) == sorted([f"no file at raw/app_logs/dt={DAY}/downloads.jsonl.gz",
                                      f"raw/app_logs/dt={DAY}/users.jsonl.gz is not a regular file",
                                      f"path 'raw/app_logs/dt={DAY}/rankings.jsonl.gz' resolves outside the raw zone"])
    assert all(str(tmp_path) not in str(t.error) for r in reports for t in r.tables.values())


def test_scan_of_a_home_without_raw_zone_is_empty(tmp_path):
    scan = scan_raw_zone(tmp_path / "nothing")
    assert scan.days == [] and scan.problems == []


def test_build_selects_the_real_days_and_names_every_skipped_entry(bad_zone):
    from dagster_project.build import BuildError, select_days

    home, expected = bad_zone
    warnings: list[str] = []
    assert select_days(home, warn=warnings.append) == [DAY]
    assert select_days(home, "2023-02-01", "2023-03-31") == [DAY]
    assert sorted(w.split(":")[0] for w in warnings) == sorted(f"skipped {entry}" for entry in expected)
    (home.raw_logs / "dt=2999-06-01").mkdir()          # a well-named day that has not begun: skipped, named
    warnings.clear()
    assert select_days(home, warn=warnings.append) == [DAY]
    assert any("2999-06-01 lie in the future" in w for w in warnings)
    for path in sorted(home.raw_day(DAY).iterdir()):
        path.unlink()
    home.raw_day(DAY).rmdir()
    with pytest.raises(BuildError, match="2999-06-01 lie in the future"):   # nothing else left: an error
        select_days(home)
    (home.raw_logs / "dt=2999-06-01").rmdir()
    with pytest.raises(BuildError, match=r"no raw partitions under .*entries there are not days: raw/app_logs/"):
        select_days(home)


def test_sensor_requests_the_real_days_beside_bad_entries(bad_zone, tmp_path):
    import dagster as dg

    from dagster_project import automation
    from dagster_project.definitions import defs
    from dagster_project.resources import PickapicHome

    home, _ = bad_zone
    (tmp_path / "instance").mkdir()  # not tmp_path/dagster: tmp_path would look like a home holding ./home
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        def tick():
            return automation.raw_partition_sensor.evaluate_tick(dg.build_sensor_context(
                instance=instance, instance_ref=instance.get_ref(),
                resources={"data_home": PickapicHome(root=str(home.root))},
                repository_def=defs.get_repository_def()))

        result = tick()
        assert [r.partition_key for r in result.run_requests] == [DAY]
        for path in sorted(home.raw_day(DAY).iterdir()):
            path.unlink()
        home.raw_day(DAY).rmdir()
        skipped = tick()
        gc.collect()   # close the instance the sensor context opened from the ref while this one is current
    assert not skipped.run_requests and "raw zone entries that are not days" in skipped.skip_message


def test_a_build_names_exporter_markers_in_one_line_whatever_the_days(tmp_path):
    from dagster_project.build import select_days

    home = DataHome(tmp_path / "home")
    for n in range(1, 31):
        day = home.raw_day(f"2023-01-{n:02d}")
        day.mkdir(parents=True)
        for name in RAW_FILE_NAMES:
            (day / name).write_bytes(b"")
        (day / "_SUCCESS").write_bytes(b"")
    (home.raw_day("2023-01-02") / "stray.csv").write_text("x")       # a day folder with more than a marker
    warnings: list[str] = []
    assert len(select_days(home, warn=warnings.append)) == 30
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("skipped raw/app_logs/dt=2023-01-02: unexpected_file")
    assert warnings[1] == ("skipped 29 exporter marker file(s) (_SUCCESS) in 29 folder(s) (raw/app_logs/dt=2023-01-01, "
                           "...): left alone, not tables (each is recorded in raw_zone_problems)")
