"""Publish group: WebDataset shards + Parquet sidecars, switched to `latest` atomically.

``publish_dataset`` refuses to switch `latest` to a version that fails a blocking contract rule; the
rules of the version's datasets are also reported here as asset checks of ``published_dataset``.
"""

from pathlib import Path

import dagster as dg

from dagster_project.contracts import check_results, check_specs, run_checks
from dagster_project.metadata import report_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config, stage_config_of_run
from dagster_project.staleness import version_at_start
from dagster_project.steplog import step_warning
from dagster_project.versions import code_version
from pipelines.features.trainjpegs import prune_training_jpegs
from pipelines.publish.version import publish_dataset, version_views

PublishRunConfig = config_class("publish", "PublishRunConfig")
ASSET = "published_dataset"
# the datasets of one published version, each with its contract (views of the version's files)
VERSION_DATASETS = tuple(version_views(Path(".")))


@dg.asset(name=ASSET, deps=["split_pairs"], group_name="publish", kinds={"webdataset", "parquet"},
          code_version=code_version("publish"),     # the card's code version in it (review rev31l)
          check_specs=check_specs(VERSION_DATASETS, asset=ASSET))
def published_dataset(context: dg.AssetExecutionContext, config: PublishRunConfig, data_home: PickapicHome):
    """A new dataset version: tar shards, sidecars, sizes.json, manifest; `latest` points to it."""
    home = data_home.home()
    settings = stage_config("publish", config, home, context)
    settle = version_at_start(context, "publish", home, settings)
    try:
        report = publish_dataset(home, settings, shows_refused_notes=True)
    except OSError as exc:      # a refused switch: the notes the publish collected until then (fix39b), not
        # printed by the publish too (review rev39c: `pickapic build` showed each twice, its step's stderr mirrored)
        for note in getattr(exc, "publish_notes", []):
            step_warning(context.log, note)
        raise
    context.log.info(f"published version {report.version}")
    version = settle()
    # review rev30b: the training JPEGs of images no warehouse day holds any more (an erased account's) are removed
    # here, in the step every rebuild runs (`pickapic build` and the nightly schedule under `pickapic serve` alike)
    features = stage_config_of_run("features", context.run.run_config, home)
    pruned = prune_training_jpegs(home, features.base(home.root))
    if pruned.removed:
        context.log.info(f"removed {pruned.removed} training JPEG(s) no warehouse day needs any more "
                         f"({pruned.removed_bytes} bytes; {pruned.cache_entries_removed} digest cache entries)")
    for note in pruned.notes:     # a warning: `pickapic build` shows each on stderr (review rev31a)
        step_warning(context.log, note)
    yield dg.MaterializeResult(metadata=report_metadata(report), data_version=dg.DataVersion(version))
    if report.contract_results:   # the gate's own results, on these very files: every rule once a night, not twice
        yield from check_results(report.contract_results, asset=ASSET)
    else:                         # an existing version switched to again: its files are checked here
        yield from run_checks(VERSION_DATASETS, version_views(report.path), asset=ASSET, uniform=VERSION_DATASETS,
                              required=VERSION_DATASETS)
