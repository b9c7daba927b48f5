"""The publish reads the warehouse's own layout only (review rev25i's glob, applied where fix25i left the publish's
own globs): a copied ``dt=DAY.bak`` folder is no export day of the shard sizes, and stray Parquet files beside the
tables are not snapshot sources."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_publish_fixtures import make_home

from pipelines.publish import samples


def test_copies_and_strays_are_neither_days_nor_sources(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    for day, lines in (("2023-02-13", 40), ("2023-02-14", 60)):      # what the ingest records of each day
        path = home.partition_file("ingest_files", day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"table": ["rankings", "images"], "lines_in": pa.array([lines, 7], pa.int64())}), path)
    volumes = samples.day_volumes(home)
    sources = samples.meta_sources(home)
    assert volumes == {"2023-02-13": 40, "2023-02-14": 60}
    assert sources["image_features"] and sources["decisions"] == [home.table_file("decisions")]
    for name in ("ingest_files", "image_features", "quarantine"):
        folder = home.table_dir(name)
        if not folder.is_dir():
            continue
        day = sorted(p for p in folder.iterdir() if p.name.startswith("dt="))[0]
        shutil.copytree(day, folder / f"{day.name}.bak")             # an admin's copy before a repair
        shutil.copy(next(day.glob("*.parquet")), folder / "old.parquet")
    shutil.copy(home.table_file("decisions"), home.table_dir("decisions") / "decisions-backup.parquet")
    (home.table_dir("decisions") / "backup").mkdir()
    shutil.copy(home.table_file("decisions"), home.table_dir("decisions") / "backup" / "data.parquet")
    assert samples.day_volumes(home) == volumes
    assert samples.meta_sources(home) == sources
