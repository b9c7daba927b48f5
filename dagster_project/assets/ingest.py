"""Ingest group: one day's raw export -> validated Parquet tables + quarantine."""

import dagster as dg

from dagster_project.contracts import check_specs, log_refreshed_partition, materialize_and_check
from dagster_project.metadata import spec_metadata
from dagster_project.partitions import daily
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import runtime_version
from dagster_project.versions import CODE_VERSIONS, INGEST_DATASETS, RAW_ASSET
from pipelines.ingest.day import ingest_day

_DESCRIPTIONS = {
    "users": "App users of the day (id and sign-up time only: emails and names stay in the raw zone).",
    "images": "Generated images of the day, prompts unescaped and bracketed negatives split off.",
    "rankings": "User clicks of the day: shown images, the chosen one or a tie.",
    "downloads": "Image downloads of the day.",
    "quarantine": "Every raw line that was not accepted, with table, file, line number and reason.",
    "ingest_files": "One row per raw file of the day with line counts that must reconcile.",
}
IngestRunConfig = config_class("ingest", "IngestRunConfig")
# the table every ingest rewrites from the raw zone as it is (no asset of its own): its contract rules are checks
# of ingest_files, the record of the raw files read (``raw_zone_problems__<rule>``)
RAW_ZONE_RECORD = ("raw_zone_problems",)
RAW_ZONE_RECORD_ASSET = "ingest_files"


@dg.multi_asset(
    specs=[dg.AssetSpec(ds, description=_DESCRIPTIONS[ds], group_name="ingest", kinds={"python", "parquet"},
                        deps=[RAW_ASSET, "app_export"], code_version=CODE_VERSIONS["ingest"],
                        metadata=spec_metadata(ds))
           for ds in INGEST_DATASETS],
    check_specs=[*check_specs(INGEST_DATASETS), *check_specs(RAW_ZONE_RECORD, asset=RAW_ZONE_RECORD_ASSET)],
    partitions_def=daily,
    name="ingest_day",
)
def ingest_day_assets(context: dg.AssetExecutionContext, config: IngestRunConfig, data_home: PickapicHome):
    """Validate one day's raw export into partitioned Parquet tables plus quarantine."""
    home = data_home.home()
    day = context.partition_key
    settings = stage_config("ingest", config, home, context)
    report = ingest_day(home, day, settings)
    for other, refreshed in sorted(report.refreshed.items()):
        # another partition was ingested again: this day's images resolved references it waited for (an earlier
        # day within the late-image window, whose version now names this day as an input, or a later day), or a
        # crash had interrupted an earlier rewrite of it (pipelines.ingest.rewrites)
        version = runtime_version(context.instance, "ingest", home, settings, other, refreshed.late_image_days,
                                  read=refreshed.read_digests())
        log_refreshed_partition(context, home, INGEST_DATASETS, refreshed, other, cause=day, data_version=version)
    # the version of the raw bytes the ingest read, not of the files as they are now: one delivered again since
    # leaves the day stale, so the next build or sensor ingests it again (review rev27b)
    version = runtime_version(context.instance, "ingest", home, settings, day, report.late_image_days,
                              read=report.read_digests())
    yield from materialize_and_check(home, INGEST_DATASETS, report, partition=day, data_version=version,
                                     also={RAW_ZONE_RECORD_ASSET: RAW_ZONE_RECORD})
