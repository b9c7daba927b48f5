"""Late images through Dagster: the daily run that resolves an earlier day's waiting references
ingests that day again and records a materialization of its partitions (home and instance on tmpfs when
the machine has one: ``scratch``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

from formats.home import DataHome

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the seeded day builders
from test_ingest_late_images import DAYS, build_days  # noqa: E402


def test_dagster_records_the_earlier_partition_it_rewrote(scratch: Path) -> None:
    """The daily run of day 2 ingests day 1 again: day 1's six assets get a materialization event."""
    import dagster as dg

    from dagster_project.assets.ingest import ingest_day_assets
    from dagster_project.partitions import raw_days
    from dagster_project.resources import PickapicHome

    days = build_days()
    home = DataHome(scratch / "home")
    resources = {"data_home": PickapicHome(root=str(home.root))}
    (scratch / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(scratch / "instance")) as instance:
        for day in DAYS[:2]:
            days[day].write(home)
            instance.add_dynamic_partitions(raw_days.name, [day])  # a raw day lands: its partition exists
            result = dg.materialize([ingest_day_assets], partition_key=day, resources=resources, instance=instance)
            assert result.success
        events = instance.fetch_materializations(dg.AssetKey("rankings"), limit=10).records
        refreshed_by = sorted((e.partition_key, getattr(e.asset_materialization.metadata.get("refreshed_by_partition"),
                                                        "value", "")) for e in events)
    assert refreshed_by == [(DAYS[0], ""), (DAYS[0], DAYS[1]), (DAYS[1], "")]
    assert pq.read_table(home.partition_file("ingest_files", DAYS[0])).column("accepted_late_image").to_pylist() \
        == [1, 0, 1, 0]   # downloads, images, rankings, users
