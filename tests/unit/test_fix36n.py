"""Fix36n: defects noticed by earlier reviews, confirmed and fixed.

- ``pickapic simulate`` run again with the same settings rewrote every file of ``ground_truth/`` with the same
  bytes (new mtime, new inode), as the raw zone's files were before fix35b: the ground truth goes through
  ``simulator.export.write_unless_same`` too (``write_parquet_unless_same`` for its Parquet files).
- A row moved to a day before the raw zone's first day set a late marker of that day (``dated_warning``), which
  no schedule re-exports and nothing but that day's own export clears: moved back, the row left the marker behind
  for good. Such a row is remembered (HOME/cache/app_export_undated.json) and named each night instead; only the
  days from the raw zone's first to its last are marked.

The second test uses a real PostgreSQL server (``tests/postgres_server.py``) and the real ``export_day``.
"""
from __future__ import annotations

import os
from pathlib import Path

import psycopg
from appdb_fixtures import NIGHTLY, NOW, add_ranking, nightly, raw_lines, warnings_of

from formats.home import DataHome
from pipelines.appdb.export import UNDATED_STATE, export_day, late_days
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _files(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_simulation_run_again_leaves_its_ground_truth_files_as_they_were(tmp_path: Path) -> None:
    from simulator import SimConfig, simulate

    home = DataHome.at(tmp_path / "home")
    sim = SimConfig(days=1, users=6, rankings_per_day=10, image_size=32, seed=3, workers=1)
    simulate(home, sim)
    before = _files(home.ground_truth)
    assert {"images.parquet", "rankings.parquet", "summary.json", "models.json"} <= set(before)
    simulate(home, sim)
    assert _files(home.ground_truth) == before
    # another simulation's ground truth still replaces it
    simulate(home, SimConfig(days=1, users=6, rankings_per_day=10, image_size=32, seed=4, workers=1))
    after = _files(home.ground_truth)
    assert after["rankings.parquet"][2] != before["rankings.parquet"][2]
    assert after["summary.json"][:2] != before["summary.json"][:2]


def test_a_row_moved_before_the_first_raw_day_and_back_leaves_no_late_marker(postgres_server, tmp_path):  # noqa: F811
    dsn = create_app_database(postgres_server, f"fix36n_{os.getpid()}")
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        add_ranking(conn, 1, "2023-03-01 10:00")
        add_ranking(conn, 2, "2023-03-01 12:00")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-15 08:00' WHERE ranking_id = 2")
    lines = warnings_of(nightly(home, dsn, "2023-03-10", schedule=True))
    # still named, with the build that exports its day, and remembered for the next nights
    assert any("2023-02-15" in line and "pickapic build --from-app-db --from 2023-02-15" in line for line in lines)
    assert (home.cache / UNDATED_STATE).is_file()
    assert late_days(home) == []        # no marker of a day no schedule exports
    assert [row["ranking_id"] for row in raw_lines(home, "2023-03-01", "rankings")] == [1]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-01 12:00' WHERE ranking_id = 2")
    nightly(home, dsn, "2023-03-11", schedule=True)
    assert [row["ranking_id"] for row in raw_lines(home, "2023-03-01", "rankings")] == [1, 2]
    assert late_days(home) == [] and not (home.cache / UNDATED_STATE).exists()
