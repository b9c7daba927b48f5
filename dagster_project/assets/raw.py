"""Raw group: the app's daily exports, observed (not produced) by the pipeline."""

import warnings

import dagster as dg

from dagster_project.partitions import raw_days
from dagster_project.versions import PARTITIONS, RAW_ASSET
from pipelines.provenance import RawDigests

warnings.filterwarnings("ignore", message=".*observable_source_asset.*", category=dg.BetaWarning)


@dg.observable_source_asset(
    name=RAW_ASSET, partitions_def=raw_days, group_name="raw", required_resource_keys={"data_home"},
    tags={"dagster/kind/jsonl": "", "dagster/kind/gzip": ""},
    description="The app's daily export (users, images, rankings, downloads); its data version is the content "
                "digest of the day's four files, so a re-export with changed bytes makes the day stale.",
)
def raw_app_logs(context) -> dg.DataVersionsByPartition:
    """Observe every raw day of the home: a content digest per day."""
    home = context.resources.data_home.home()
    digests = RawDigests(home)
    known = set(context.instance.get_dynamic_partitions(PARTITIONS))
    versions = {day: dg.DataVersion(digests.day(day)) for day in home.raw_days() if day in known}
    digests.save()
    return dg.DataVersionsByPartition(versions)
