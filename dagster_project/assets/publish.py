"""Publish group: WebDataset shards + Parquet sidecars, switched to `latest` atomically."""

import dagster as dg

from dagster_project.metadata import report_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import REBUILD_CONDITION, runtime_version
from dagster_project.versions import CODE_VERSIONS
from pipelines.publish.version import publish_dataset

PublishRunConfig = config_class("publish", "PublishRunConfig")


@dg.asset(deps=["split_pairs"], group_name="publish", kinds={"webdataset", "parquet"},
          code_version=CODE_VERSIONS["publish"], automation_condition=REBUILD_CONDITION)
def published_dataset(context: dg.AssetExecutionContext, config: PublishRunConfig, data_home: PickapicHome):
    """A new dataset version: tar shards, sidecars, sizes.json, manifest; `latest` points to it."""
    home = data_home.home()
    settings = stage_config("publish", config, home)
    report = publish_dataset(home, settings)
    context.log.info(f"published version {report.version}")
    version = runtime_version(context.instance, "publish", home, settings)
    return dg.MaterializeResult(metadata=report_metadata(report), data_version=dg.DataVersion(version))
