"""The Definitions object: every asset, check, job, schedule and sensor of the project."""
from __future__ import annotations

import dagster as dg

from dagster_project import automation
from dagster_project.assets import app_export, curation, features, ingest, model, publish, raw, splits
from dagster_project.resources import AppDatabase, PickapicHome

ALL_ASSETS = [
    app_export.app_export,
    raw.raw_app_logs,
    ingest.ingest_day_assets,
    features.fingerprint_images,
    curation.duplicate_clusters,
    curation.decisions,
    curation.pairs,
    splits.split_pairs,
    publish.published_dataset,
    model.preference_model,
    model.preference_model_eval,
    model.generator_leaderboard,
    model.best_of_n,
]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*automation.freshness_checks],
    jobs=[automation.daily_partition_job, automation.rebuild_dataset_job, automation.train_model_job,
          automation.app_export_job],
    schedules=[automation.nightly_schedule, automation.train_schedule, automation.app_export_schedule],
    sensors=[automation.raw_partition_sensor, automation.rebuild_sensor, automation.freshness_sensor],
    # The DSN is read from the environment when an export runs; Dagster shows the variable's name only.
    resources={"data_home": PickapicHome(), "app_db": AppDatabase(dsn=dg.EnvVar("PICKAPIC_APP_DB_DSN"))},
    # A run executes its steps in one process, as `pickapic build` does (execute_in_process): the steps of
    # a job run one after another anyway (each waits for its input), and a process per step would pay the
    # imports of Beam, NudeNet and torch again for every step. The Beam stage still fans out to its workers.
    executor=dg.in_process_executor,
)
