"""Curation group: duplicate clusters, keep/drop decisions, preference pairs (metadata only, no bytes)."""

import dagster as dg

from dagster_project.charts import cluster_size_histogram
from dagster_project.contracts import check_specs, materialize_and_check
from dagster_project.metadata import spec_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, to_dataclass
from pipelines.curation import CurationConfig, build_decisions, build_pairs
from pipelines.dedup import DedupConfig, build_clusters

DedupRunConfig = config_class(DedupConfig, "DedupRunConfig")
CurationRunConfig = config_class(CurationConfig, "CurationRunConfig")


@dg.asset(
    deps=["image_features"], group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("duplicate_clusters"), check_specs=check_specs(["duplicate_clusters"]),
)
def duplicate_clusters(config: DedupRunConfig, data_home: PickapicHome):
    """Exact (sha256) and near (banded pHash join) duplicate clusters over every image ever seen."""
    home = data_home.home()
    report = build_clusters(home, to_dataclass(DedupConfig, config))
    chart = cluster_size_histogram(str(home.table_file("duplicate_clusters")))
    yield from materialize_and_check(home, ["duplicate_clusters"], report,
                                     extra={"duplicate_clusters": {"cluster_size_chart": chart}})


@dg.asset(
    deps=["duplicate_clusters", "rankings", "images", "image_features", "image_rejects"],
    group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("decisions"), check_specs=check_specs(["decisions"]),
)
def decisions(config: CurationRunConfig, data_home: PickapicHome):
    """Keep/drop decisions with reasons: NSFW, moderation phrases, banned users, broken images, same-cluster pairs."""
    home = data_home.home()
    report = build_decisions(home, to_dataclass(CurationConfig, config))
    yield from materialize_and_check(home, ["decisions"], report)


@dg.asset(
    deps=["decisions"], group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("pairs"), check_specs=check_specs(["pairs"]),
)
def pairs(config: CurationRunConfig, data_home: PickapicHome):
    """Preference pairs in the released Pick-a-Pic columns, users pseudonymised."""
    home = data_home.home()
    report = build_pairs(home, to_dataclass(CurationConfig, config))
    yield from materialize_and_check(home, ["pairs"], report)
