"""Features group: the Apache Beam fingerprinting job for one day's images."""

import time

import dagster as dg

from dagster_project.charts import nsfw_histogram
from dagster_project.contracts import check_specs, materialize_and_check
from dagster_project.metadata import spec_metadata
from dagster_project.partitions import daily
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import version_at_start
from dagster_project.steplog import step_progress
from dagster_project.versions import CODE_VERSIONS, FEATURE_DATASETS
from pipelines.features.stage import build_features
from pipelines.provenance import RejectedBlobs

# ``beam_args`` is the setting features.beam_args (a string of Beam options, split as a shell splits words): given
# in run config it replaces the home's value for that run, as every setting does; left out, the run (a schedule's,
# a sensor's, `pickapic build`'s) uses the home's (review rev23h: they could pass none, so a runner that needs one
# failed every scheduled run)
FeaturesRunConfig = config_class("features", "FeaturesRunConfig")


@dg.multi_asset(
    specs=[
        dg.AssetSpec("image_features", deps=["images"], group_name="features", kinds={"beam", "onnx", "parquet"},
                     code_version=CODE_VERSIONS["features"],
                     description="Per-image sha256, pHash/dHash, NudeNet detections and the training JPEG key.",
                     metadata=spec_metadata("image_features")),
        dg.AssetSpec("image_rejects", deps=["images"], group_name="features", kinds={"beam", "parquet"},
                     code_version=CODE_VERSIONS["features"],
                     description="Images the feature stage could not process, with the reason (dead letter).",
                     metadata=spec_metadata("image_rejects")),
    ],
    check_specs=check_specs(FEATURE_DATASETS),
    partitions_def=daily,
    name="fingerprint_images",
)
def fingerprint_images(context: dg.AssetExecutionContext, config: FeaturesRunConfig, data_home: PickapicHome):
    """Run the Beam feature pipeline (in-process DirectRunner by default) for one day."""
    home = data_home.home()
    day = context.partition_key
    settings = stage_config("features", config, home, context)
    settle = version_at_start(context, "features", home, settings, day)
    began = time.time_ns()   # a rejected blob changed after this (or just before) is recorded as changed
    # its Beam options: settings.beam_args; its warnings (an unusable HOME/cache/tmp) the run's log's (review rev36d)
    report = build_features(home, day, settings, progress=step_progress(context.log))
    features_file = home.partition_file("image_features", day)
    extra = {"image_features": {"nsfw_score_histogram": nsfw_histogram(str(features_file))}} if features_file.exists() else {}
    # the blobs its output rejects for a reason a change of the blob heals (missing, half copied, unreadable, ...) are
    # named in its version: one that lands or changes later makes the day stale (pipelines.provenance.RejectedBlobs)
    version = settle() + RejectedBlobs(home).recorded_mark(day, settings.base(home.root), since_ns=began)
    yield from materialize_and_check(home, FEATURE_DATASETS, report, partition=day, extra=extra, data_version=version)
