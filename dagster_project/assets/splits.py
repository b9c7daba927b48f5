"""Splits group: leak-free train / validation / test (+ _unique) by user, prompt and duplicate cluster."""

import dagster as dg

from dagster_project.charts import split_sizes
from dagster_project.contracts import check_specs, materialize_and_check
from dagster_project.metadata import spec_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, to_dataclass
from pipelines.splits import SplitConfig, build_splits

SplitRunConfig = config_class(SplitConfig, "SplitRunConfig")


@dg.asset(
    deps=["pairs"], group_name="splits", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("split_pairs"), check_specs=check_specs(["split_pairs"]),
)
def split_pairs(config: SplitRunConfig, data_home: PickapicHome):
    """Pairs assigned to splits; held-out users are a pure function of their pseudonym and a salt."""
    home = data_home.home()
    report = build_splits(home, to_dataclass(SplitConfig, config))
    chart = split_sizes(str(home.table_file("split_pairs")))
    yield from materialize_and_check(home, ["split_pairs"], report, extra={"split_pairs": {"split_sizes_chart": chart}})
