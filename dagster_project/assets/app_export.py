"""App-export group: one day of the app's PostgreSQL tables (and image blobs) -> the raw zone."""
import hashlib

import dagster as dg

from dagster_project.partitions import daily
from dagster_project.resources import AppDatabase, PickapicHome
from dagster_project.runconfig import config_class, to_dataclass
from pipelines.appdb.export import AppExportConfig, export_day

AppExportRunConfig = config_class(AppExportConfig, "AppExportRunConfig")


@dg.asset(partitions_def=daily, group_name="app_export", kinds={"postgres", "python"},
          description="The day's rows of the app tables (users as a snapshot up to the day's end) as "
                      "raw/app_logs/dt=DAY/*.jsonl.gz, and the day's image blobs copied into raw/images.")
def app_export(context: dg.AssetExecutionContext, config: AppExportRunConfig, app_db: AppDatabase,
               data_home: PickapicHome) -> dg.MaterializeResult:
    """Export one day of the app database into the raw zone (unchanged files are left untouched)."""
    report = export_day(data_home.home(), app_db.dsn, context.partition_key, to_dataclass(AppExportConfig, config),
                        image_store=app_db.store(), source=app_db.dsn_source, log=context.log.info)
    version = hashlib.sha256("".join(t.sha256 for t in report.tables.values()).encode()).hexdigest()[:16]
    metadata = report.metadata()
    metadata["files"] = dg.MetadataValue.md(metadata["files"])
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))
