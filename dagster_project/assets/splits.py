"""Splits group: leak-free train / validation / test (+ _unique) by user, prompt and duplicate cluster."""

import dagster as dg

from dagster_project.charts import split_sizes
from dagster_project.contracts import check_specs, materialize_and_check
from dagster_project.metadata import spec_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config, stage_config_of_run
from dagster_project.staleness import version_at_start
from dagster_project.steplog import step_warner
from dagster_project.versions import CODE_VERSIONS, FAILED_SUFFIX
from pipelines.splits.assign import build_splits

SplitRunConfig = config_class("splits", "SplitRunConfig")
TRAINABLE_CHECK = "split_pairs_trainable"
# the other tables the splits stage writes (no asset of their own): their rules are checks of split_pairs
# (``<dataset>__<rule>``), evaluated on every materialization with split_pairs' own
SPLIT_RECORDS = ("split_rejects", "split_ledger", "split_key_owners")


@dg.asset(
    deps=["pairs"], group_name="splits", kinds={"duckdb", "parquet"},
    metadata=spec_metadata("split_pairs"),
    check_specs=[*check_specs(["split_pairs"]), *check_specs(SPLIT_RECORDS, asset="split_pairs"), dg.AssetCheckSpec(
        TRAINABLE_CHECK, asset="split_pairs", blocking=True,
        description="Every split can feed the trainer: none empty, validation_unique and test_unique hold at least "
                    "splits.min_unique_rows rows, at least splits.min_users users; else nothing is published.")],
    code_version=CODE_VERSIONS["splits"],
)
def split_pairs(context: dg.AssetExecutionContext, config: SplitRunConfig, data_home: PickapicHome):
    """Pairs assigned to splits; held-out users come from a ledger filled in order of first appearance, the owner
    split of every prompt and image once kept from the stored key owners (split_key_owners)."""
    home = data_home.home()
    settings = stage_config("splits", config, home, context)
    settle = version_at_start(context, "splits", home, settings)
    # the curation's secret tells an erased account's rows in the retained versions (their pins go: fix37a)
    secret = stage_config_of_run("curation", context.run.run_config, home).pseudonym_secret
    report = build_splits(home, settings, log=step_warner(context.log),  # says so when it waits for another run
                          pseudonym_secret=secret)
    chart = split_sizes(str(home.table_file("split_pairs")))
    version = settle()
    if report.problems:  # a version no trainer can use must not flow on to publish
        version += FAILED_SUFFIX
        context.log.error("not enough data to publish: " + "; ".join(report.problems))
    yield from materialize_and_check(home, ["split_pairs"], report, data_version=version,
                                     extra={"split_pairs": {"split_sizes_chart": chart}},
                                     also={"split_pairs": SPLIT_RECORDS})
    yield dg.AssetCheckResult(
        asset_key="split_pairs", check_name=TRAINABLE_CHECK, passed=not report.problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="not enough data to publish: " + "; ".join(report.problems) if report.problems else None,
        metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in report.problems) or "none"),
                  "rows_per_split": dg.MetadataValue.json(report.rows), "users": report.users})
