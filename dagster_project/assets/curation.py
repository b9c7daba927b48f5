"""Curation group: duplicate clusters, keep/drop decisions, preference pairs (metadata only, no bytes)."""

import dagster as dg

from dagster_project.charts import cluster_size_histogram
from dagster_project.contracts import check_specs, materialize_and_check
from dagster_project.home_settings import ground_truth_dir
from dagster_project.metadata import spec_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import version_at_start
from dagster_project.versions import CODE_VERSIONS
from pipelines.curation.decisions import build_decisions, build_pairs
from pipelines.curation.dedup import build_clusters

DedupRunConfig = config_class("dedup", "DedupRunConfig")
CurationRunConfig = config_class("curation", "CurationRunConfig")


@dg.asset(
    deps=["image_features"], group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("duplicate_clusters"), check_specs=check_specs(["duplicate_clusters"]),
    code_version=CODE_VERSIONS["dedup"],
)
def duplicate_clusters(context: dg.AssetExecutionContext, config: DedupRunConfig, data_home: PickapicHome):
    """Exact (sha256) and near (banded pHash join) duplicate clusters over every image ever seen."""
    home = data_home.home()
    settings = stage_config("dedup", config, home, context)
    truth = ground_truth_dir(home)
    planted = truth / "duplicates.parquet" if truth is not None else None
    settle = version_at_start(context, "dedup", home, settings)
    report = build_clusters(home, settings, truth=planted if planted is not None and planted.is_file() else None)
    chart = cluster_size_histogram(str(home.table_file("duplicate_clusters")))
    yield from materialize_and_check(home, ["duplicate_clusters"], report,
                                     extra={"duplicate_clusters": {"cluster_size_chart": chart}},
                                     data_version=settle())


@dg.asset(
    deps=["duplicate_clusters", "rankings", "images", "image_features", "image_rejects"],
    group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("decisions"), check_specs=check_specs(["decisions"]),
    code_version=CODE_VERSIONS["decisions"],
)
def decisions(context: dg.AssetExecutionContext, config: CurationRunConfig, data_home: PickapicHome):
    """Keep/drop decisions with reasons: NSFW, moderation phrases, banned users, broken images, same-cluster pairs."""
    home = data_home.home()
    settings = stage_config("curation", config, home, context)
    settle = version_at_start(context, "decisions", home, settings)
    report = build_decisions(home, settings)
    yield from materialize_and_check(home, ["decisions"], report,
                                     data_version=settle())


@dg.asset(
    deps=["decisions"], group_name="curation", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("pairs"), check_specs=check_specs(["pairs"]),
    code_version=CODE_VERSIONS["pairs"],
)
def pairs(context: dg.AssetExecutionContext, config: CurationRunConfig, data_home: PickapicHome):
    """Preference pairs in the released Pick-a-Pic columns, users pseudonymised."""
    home = data_home.home()
    settings = stage_config("curation", config, home, context)
    settle = version_at_start(context, "pairs", home, settings)
    report = build_pairs(home, settings)
    yield from materialize_and_check(home, ["pairs"], report,
                                     data_version=settle())
