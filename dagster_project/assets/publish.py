"""Publish group: WebDataset shards + Parquet sidecars, switched to `latest` atomically."""

import dagster as dg

from dagster_project.metadata import report_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, to_dataclass
from pipelines.publish import PublishConfig, publish_dataset

PublishRunConfig = config_class(PublishConfig, "PublishRunConfig")


@dg.asset(deps=["split_pairs"], group_name="publish", kinds={"webdataset", "parquet"})
def published_dataset(context: dg.AssetExecutionContext, config: PublishRunConfig, data_home: PickapicHome):
    """A new dataset version: tar shards, sidecars, sizes.json, manifest; `latest` points to it."""
    home = data_home.home()
    report = publish_dataset(home, to_dataclass(PublishConfig, config))
    context.log.info(f"published version {report.version}")
    return dg.MaterializeResult(metadata=report_metadata(report))
