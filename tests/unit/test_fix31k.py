"""fix31k: a daily table's days are its ``dt=YYYY-MM-DD`` folders with a calendar date (review rev31k), and every
reader of the table reads the files of those days only (``DataHome.table_files``): DuckDB's views (curation,
splits, the contract checks), the training JPEG prune (``trainjpegs.needed_keys``), the publish's snapshots
(``samples.meta_sources``) and day volumes (``samples.day_volumes``). Beyond the review's two tests: the edges of
a calendar date, a home whose path holds glob characters and a quote, a stray file inside a real day, the empty
list of files, and a home without such folders read exactly as through the old glob."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_project.contracts import warehouse_views
from formats.home import DataHome
from pipelines.features import trainjpegs
from pipelines.publish.samples import day_volumes, meta_sources
from pipelines.sqlrun import NoFilesMatch, connect

REAL = ("2023-03-01", "2024-02-29")                  # a leap day is a day
NOT_DAYS = ("2023-02-30", "2023-02-29", "2023-13-01", "2023-00-10", "2023-04-31", "2023-03-01.bak",
            "٢٠٢٣-٠٣-٠١", "2023-3-01")


def _write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _home(root: Path, dataset: str = "rankings", column: str = "user_id") -> DataHome:
    """A home whose ``dataset`` holds one row per real day and one per folder that is no day (value 99)."""
    home = DataHome(root)
    for number, day in enumerate(REAL):
        _write(home.partition_file(dataset, day), pa.table({column: [number]}))
    for name in NOT_DAYS:
        _write(home.table_dir(dataset) / f"dt={name}" / "part-0.parquet", pa.table({column: [99]}))
    return home


def test_partition_days_are_calendar_dates_only(tmp_path: Path) -> None:
    home = _home(tmp_path / "home")
    (home.table_dir("rankings") / "dt=2023-05-05").write_text("a file, not a folder")   # listed, holds no file
    assert home.partition_days("rankings") == ["2023-03-01", "2023-05-05", "2024-02-29"]
    assert home.partition_days("missing") == []


def test_table_files_lists_real_days_and_a_stray_file_inside_one(tmp_path: Path) -> None:
    home = _home(tmp_path / "home [1] o'k")             # glob characters and a quote in the home's path
    stray = _write(home.table_dir("rankings") / "dt=2024-02-29" / "old.parquet", pa.table({"user_id": [7]}))
    (home.table_dir("rankings") / "dt=2023-05-05").write_text("a file, not a folder")
    files = home.table_files("rankings")
    assert files == [home.partition_file("rankings", "2023-03-01"), stray, home.partition_file("rankings", "2024-02-29")]
    con = connect({"rankings": files})                 # read literally: the home's [1] and quote are no pattern
    assert sorted(row[0] for row in con.sql("SELECT user_id FROM rankings").fetchall()) == [0, 1, 7]


def test_an_empty_list_of_files_is_the_empty_table_or_an_error_when_required(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home.table_dir("rankings") / "dt=2023-02-30" / "part-0.parquet", pa.table({"user_id": [99]}))
    assert home.table_files("rankings") == []
    con = connect({"rankings": home.table_files("rankings")})
    assert con.sql("SELECT count(*) FROM rankings").fetchall() == [(0,)]
    with pytest.raises(NoFilesMatch, match="the rankings table"):
        connect({"rankings": home.table_files("rankings")}, required=("rankings",))


def test_a_home_without_such_folders_reads_as_through_the_glob(tmp_path: Path) -> None:
    """No from-scratch build changes: the list of files reads the same rows and columns (DuckDB's ``dt`` column
    of the folder names included) as the glob it replaces."""
    home = DataHome(tmp_path / "home")
    for number, day in enumerate(("2023-03-01", "2023-03-02", "2023-03-10")):
        columns = {"user_id": [number, number + 10]}
        if number:
            columns["extra"] = ["e", None]              # a column added later: union by name, as before
        _write(home.partition_file("rankings", day), pa.table(columns))
    by_glob = connect({"rankings": home.table_glob("rankings")}).sql("SELECT * FROM rankings ORDER BY ALL")
    by_list = connect({"rankings": home.table_files("rankings")}).sql("SELECT * FROM rankings ORDER BY ALL")
    assert by_list.columns == by_glob.columns
    assert by_list.fetchall() == by_glob.fetchall()


def test_the_contract_views_read_real_days_only(tmp_path: Path) -> None:
    home = _home(tmp_path / "home")
    views = warehouse_views(home)
    assert views["rankings"] == home.table_files("rankings")
    con = connect({"rankings": views["rankings"]})
    assert sorted(row[0] for row in con.sql("SELECT user_id FROM rankings").fetchall()) == [0, 1]


def test_the_publish_snapshots_and_volumes_skip_folders_that_are_no_day(tmp_path: Path) -> None:
    home = _home(tmp_path / "home", "image_features", "image_uid")
    for day in REAL + ("2023-02-30",):
        _write(home.partition_file("ingest_files", day), pa.table({"table": ["rankings"], "lines_in": [5]}))
    sources = meta_sources(home)
    assert sources["image_features"] == [home.partition_file("image_features", day) for day in REAL]
    assert sources["quarantine"] == []
    assert day_volumes(home) == {day: 5 for day in REAL}


def test_the_prune_reads_real_days_and_still_refuses_a_real_day_without_the_key(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _write(home.partition_file("image_features", "2023-03-01"),
           pa.table({"image_uid": ["x"], "train_jpg_key": ["blobs/train/s512q90/ab/x.jpg"]}))
    _write(home.table_dir("image_features") / "dt=2023-02-30" / "part-0.parquet", pa.table({"image_uid": ["y"]}))
    assert trainjpegs.needed_keys(home) == {"blobs/train/s512q90/ab/x.jpg"}
    _write(home.partition_file("image_features", "2023-03-02"), pa.table({"image_uid": ["z"]}))
    with pytest.raises(trainjpegs.NotPruned, match="train_jpg_key"):    # a real day's file must be read
        trainjpegs.needed_keys(home)
