"""App-export group: one day of the app's PostgreSQL tables (and image blobs) -> the raw zone."""
import dagster as dg

from dagster_project.partitions import daily
from dagster_project.resources import AppDatabase, PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import runtime_version
from dagster_project.steplog import step_warning
from dagster_project.versions import CODE_VERSIONS
from pipelines.appdb.export import export_day

AppExportRunConfig = config_class("app_export", "AppExportRunConfig")


@dg.asset(partitions_def=daily, group_name="app_export", kinds={"postgres", "python"},
          code_version=CODE_VERSIONS["app_export"],
          description="The day's rows of the app tables (users as a snapshot up to the day's end) as "
                      "raw/app_logs/dt=DAY/*.jsonl.gz, and the day's image blobs copied into raw/images.")
def app_export(context: dg.AssetExecutionContext, config: AppExportRunConfig, app_db: AppDatabase,
               data_home: PickapicHome) -> dg.MaterializeResult:
    """Export one day of the app database into the raw zone (unchanged files are left untouched)."""
    home = data_home.home()
    settings = stage_config("app_export", config, home, context)
    report = export_day(home, app_db.dsn, context.partition_key, settings, image_store=app_db.store(),
                        source=app_db.dsn_source, progress=context.log.info)
    for warning in report.warnings:
        step_warning(context.log, warning)
    metadata = report.metadata()
    metadata["files"] = dg.MetadataValue.md(metadata["files"])
    # the content of the day's files: equal to the raw day's version that ingest reads, whatever wrote them
    version = runtime_version(context.instance, "app_export", home, settings, context.partition_key)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))
