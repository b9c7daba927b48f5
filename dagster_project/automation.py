"""Jobs, the nightly export and ingest schedules, weekly training, the raw-partition sensor, freshness checks."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import warnings

import dagster as dg

from dagster_project.partitions import daily
from dagster_project.resources import PickapicHome
from pipelines.home import DataHome

NIGHTLY_CRON = os.environ.get("PICKAPIC_NIGHTLY_CRON", "0 2 * * *")
APP_EXPORT_CRON = os.environ.get("PICKAPIC_APP_EXPORT_CRON", "0 1 * * *")
TRAIN_CRON = os.environ.get("PICKAPIC_TRAIN_CRON", "0 4 * * 0")
RAW_TABLE_FILES = ("users.jsonl.gz", "images.jsonl.gz", "rankings.jsonl.gz", "downloads.jsonl.gz")

daily_partition_job = dg.define_asset_job(
    "daily_partition_job", selection=dg.AssetSelection.groups("ingest", "features"),
    description="Ingest and fingerprint one day's raw export.",
)
rebuild_dataset_job = dg.define_asset_job(
    "rebuild_dataset_job", selection=dg.AssetSelection.groups("curation", "splits", "publish"),
    description="Re-cluster, re-decide, re-split over all days and publish a new dataset version.",
)
app_export_job = dg.define_asset_job(
    "app_export_job", selection=dg.AssetSelection.groups("app_export"),
    description="Export one day of the app's PostgreSQL database into the raw zone (the raw sensor ingests it).",
)
train_model_job = dg.define_asset_job(
    "train_model_job", selection=dg.AssetSelection.groups("model"),
    description="Train the preference model on `latest`, evaluate it and rank the generators.",
)


@dg.schedule(job=daily_partition_job, cron_schedule=NIGHTLY_CRON, execution_timezone="UTC",
             description="Nightly: ingest and fingerprint yesterday's partition (the rebuild follows on success).")
def nightly_schedule(context: dg.ScheduleEvaluationContext):
    """Request yesterday's partition (the day that just ended in UTC)."""
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    return dg.RunRequest(run_key=f"nightly-{day}", partition_key=day)


def app_export_settings() -> dict:
    """Lag and lookback of the scheduled export: $PICKAPIC_APP_EXPORT_LAG_MINUTES / _LOOKBACK_DAYS or the defaults."""
    from pipelines.appdb.export import AppExportConfig

    defaults = AppExportConfig()
    values = {}
    for name, variable in (("lag_minutes", "PICKAPIC_APP_EXPORT_LAG_MINUTES"),
                           ("lookback_days", "PICKAPIC_APP_EXPORT_LOOKBACK_DAYS")):
        text = os.environ.get(variable, "").strip()
        try:
            values[name] = int(text) if text else getattr(defaults, name)
        except ValueError:
            raise ValueError(f"{variable} must be an integer, got {text!r}") from None
    AppExportConfig(**values).validate()
    return values


@dg.schedule(job=app_export_job, cron_schedule=APP_EXPORT_CRON, execution_timezone="UTC",
             description="Nightly (PICKAPIC_APP_EXPORT_CRON, 01:00 UTC): export the newest day closed for the lag "
                         "and re-export the lookback days before it; skipped unless PICKAPIC_APP_DB_DSN is set.")
def app_export_schedule(context: dg.ScheduleEvaluationContext):
    """One run per day: the newest day that ended at least lag_minutes ago and the lookback days before it."""
    from pipelines.appdb.connection import DSN_ENV

    if not os.environ.get(DSN_ENV, "").strip():
        return dg.SkipReason(f"{DSN_ENV} is not set: the app database is not a source of this deployment")
    settings = app_export_settings()
    tick = context.scheduled_execution_time.astimezone(dt.timezone.utc)
    newest = (tick - dt.timedelta(minutes=settings["lag_minutes"])).date() - dt.timedelta(days=1)
    valid = set(daily.get_partition_keys(current_time=tick))
    days = [(newest - dt.timedelta(days=k)).isoformat() for k in range(settings["lookback_days"], -1, -1)]
    run_config = {"ops": {"app_export": {"config": settings}}}
    return [dg.RunRequest(run_key=f"app-export-{day}-{tick:%Y%m%dT%H%M}", partition_key=day, run_config=run_config)
            for day in days if day in valid]


train_schedule = dg.ScheduleDefinition(
    name="weekly_training_schedule", job=train_model_job, cron_schedule=TRAIN_CRON, execution_timezone="UTC",
    description="Weekly (configurable with PICKAPIC_TRAIN_CRON): retrain and re-evaluate on `latest`.",
)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[daily_partition_job],
                      request_job=rebuild_dataset_job, name="rebuild_after_daily_partition",
                      description="After a day is ingested and fingerprinted, rebuild curation, splits and shards.")
def rebuild_after_daily_partition(context: dg.RunStatusSensorContext):
    """Start one dataset rebuild per successful daily run."""
    return dg.RunRequest(run_key=f"rebuild-after-{context.dagster_run.run_id}")


def raw_partition_fingerprint(home: DataHome, day: str) -> str | None:
    """Digest of a complete raw day (all four table files present), else None."""
    folder = home.raw_day(day)
    digest = hashlib.sha256(day.encode())
    for name in RAW_TABLE_FILES:
        path = folder / name
        if not path.is_file():
            return None
        stat = path.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dg.sensor(job=daily_partition_job, minimum_interval_seconds=60,
           description="Starts the daily run when a new (or re-exported) raw partition lands.")
def raw_partition_sensor(context: dg.SensorEvaluationContext, data_home: PickapicHome):
    """One run request per complete raw day; the run key changes when the export is replaced."""
    home = data_home.home()
    valid = set(daily.get_partition_keys())
    requests = []
    scan = home.scan_raw_zone()
    problems = scan.summary()
    for line in problems:   # skipped, never fatal to the other days; the ingest records them too
        context.log.warning(f"raw zone entry skipped: {line}")
    for day in scan.days:
        fingerprint = raw_partition_fingerprint(home, day)
        if fingerprint is None or day not in valid:
            continue
        requests.append(dg.RunRequest(run_key=f"raw-{day}-{fingerprint}", partition_key=day))
    if not requests:
        skipped = f"; skipped {len(problems)} raw zone entries that are not days: {'; '.join(problems[:3])}" \
            if problems else ""
        return dg.SkipReason(f"no complete raw partition under {home.raw_logs}{skipped}")
    return requests


# Freshness checks (rather than the newer FreshnessPolicy, still behind a feature flag in OSS) give a
# visible pass/fail check on the asset page and run from their own sensor.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.SupersessionWarning if hasattr(dg, "SupersessionWarning") else Warning)
    freshness_checks = dg.build_last_update_freshness_checks(
        assets=["published_dataset"], lower_bound_delta=dt.timedelta(hours=26), blocking=False,
    )
    freshness_sensor = dg.build_sensor_for_freshness_checks(freshness_checks=freshness_checks,
                                                            name="published_dataset_freshness")
