"""Contract quality rules as Dagster asset checks: one check per rule, generated from the YAML."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping

import dagster as dg

from dagster_project.metadata import report_metadata
from dagster_project.versions import DATA_VERSION_TAG, FAILED_SUFFIX, FEATURE_DATASETS, INGEST_DATASETS
from data_contracts.engine import RuleResult, evaluate, load_contract
from formats.home import DataHome
from pipelines.sqlrun import connect
from schemas import SCHEMAS
from schemas import raw as raw_schemas

# Datasets written one file per daily partition; every other warehouse dataset is one file.
PARTITIONED = {*INGEST_DATASETS, *FEATURE_DATASETS}


def check_name(rule: Any, asset: str | None) -> str:
    """A rule's check name: the rule's own on its dataset's asset, ``<dataset>__<rule>`` on another asset."""
    return rule.check_name if asset is None or asset == rule.dataset else f"{rule.dataset}__{rule.check_name}"


def check_specs(datasets: Iterable[str], asset: str | None = None) -> list[dg.AssetCheckSpec]:
    """One ``AssetCheckSpec`` per contract rule; ``severity: error`` rules block downstream assets.

    ``asset``: the asset the checks belong to when it is not the dataset itself (``published_dataset``
    holds the datasets of a version: shard samples, shards, prompt counts, ...).
    """
    specs = []
    for dataset in datasets:
        for rule in load_contract(dataset).rules:
            specs.append(dg.AssetCheckSpec(
                name=check_name(rule, asset), asset=asset or dataset, blocking=rule.blocking,
                description=f"{rule.description} ({dataset} contract rule, {rule.expectation()})",
            ))
    return specs


def warehouse_views(home: DataHome, partition: str | None = None) -> dict[str, Path | list[Path]]:
    """View name -> Parquet file (a Path) or a daily table's files (:meth:`DataHome.table_files`: its calendar
    days' files, review rev31k) for every warehouse dataset (one partition if given)."""
    views: dict[str, Path | list[Path]] = {}
    for dataset in SCHEMAS:
        if dataset in raw_schemas.SCHEMAS:   # the raw zone's JSON lines (raw_zone_problems is a warehouse table)
            continue
        if dataset in PARTITIONED:
            views[dataset] = home.partition_file(dataset, partition) if partition else home.table_files(dataset)
        else:
            views[dataset] = home.table_file(dataset)
    return views


def run_checks(datasets: Iterable[str], views: Mapping[str, str | Path], asset: str | None = None,
               uniform: Collection[str] = (), required: Collection[str] = ()) -> Iterator[dg.AssetCheckResult]:
    """Evaluate every rule of each dataset's contract on ``views`` and yield check results (on ``asset``
    when given, else on each dataset's own asset). ``uniform``: views whose files share one schema;
    ``required``: views that must match files (:func:`pipelines.sqlrun.register_views`)."""
    con = connect(views, uniform=uniform, required=required)
    try:
        for dataset in datasets:
            yield from check_results(evaluate(load_contract(dataset), con), asset)
    finally:
        con.close()


def check_results(results: Iterable[RuleResult], asset: str | None = None) -> Iterator[dg.AssetCheckResult]:
    """Asset check results of rule results already evaluated (on ``asset`` when given, else on each
    rule's dataset's own asset)."""
    for result in results:
        rule = result.rule
        yield dg.AssetCheckResult(
            asset_key=asset or rule.dataset, check_name=check_name(rule, asset), passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
            metadata={"value": result.value if result.value is not None else -1.0,
                      "expectation": rule.expectation(), "query": dg.MetadataValue.md(f"```sql\n{rule.sql()}\n```"),
                      **({"error": result.error} if result.error else {})},
        )


def materialize_and_check(
    home: DataHome,
    datasets: Iterable[str],
    report: Any,
    partition: str | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    data_version: str | None = None,
    also: Mapping[str, Iterable[str]] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """One result per dataset a stage wrote (row count read from its file), then every contract check.

    ``also``: asset -> the other tables the stage wrote that are no asset of their own (the splits stage's
    split_ledger, split_key_owners and split_rejects, the ingest's raw_zone_problems); their rules are checks
    of that asset (``<dataset>__<rule>``, :func:`check_specs` with ``asset``), evaluated here with the others.
    ``data_version`` is recorded on each dataset; when a blocking check fails it is recorded with the
    ``-failed-checks`` suffix, so the next build sees the asset as stale and runs it again.
    """
    datasets = list(datasets)
    views = warehouse_views(home, partition)
    checks = list(run_checks(datasets, views))
    for asset, others in (also or {}).items():
        checks += run_checks(list(others), views, asset=asset)
    if data_version is not None and any(not c.passed and c.severity == dg.AssetCheckSeverity.ERROR for c in checks):
        data_version += FAILED_SUFFIX
    for dataset in datasets:
        output = home.partition_file(dataset, partition) if partition else home.table_file(dataset)
        metadata = report_metadata(report, dataset, output=output)
        metadata.update((extra or {}).get(dataset, {}))
        yield dg.MaterializeResult(asset_key=dataset, metadata=metadata,
                                   data_version=dg.DataVersion(data_version) if data_version else None)
    yield from checks


def log_refreshed_partition(context: dg.AssetExecutionContext, home: DataHome, datasets: Iterable[str], report: Any,
                            partition: str, cause: str, data_version: str | None = None) -> None:
    """Record that a run rewrote another partition of its assets (one materialization event each, with
    ``data_version``), after evaluating that partition's contract rules; a failed blocking rule fails the run."""
    datasets = list(datasets)
    con = connect(warehouse_views(home, partition))
    try:
        results = [r for dataset in datasets for r in evaluate(load_contract(dataset), con)]
    finally:
        con.close()
    failed = [f"{r.rule.dataset}.{r.rule.name} = {r.value}" for r in results if r.rule.blocking and not r.passed]
    if failed:
        raise RuntimeError(f"partition {partition}, ingested again after {cause}, fails its contracts: {'; '.join(failed)}")
    tags = {DATA_VERSION_TAG: data_version} if data_version else None
    for dataset in datasets:
        metadata = report_metadata(report, dataset, output=home.partition_file(dataset, partition))
        metadata["refreshed_by_partition"] = cause
        metadata["contract_rules_passed"] = sum(1 for r in results if r.rule.dataset == dataset and r.passed)
        context.log_event(dg.AssetMaterialization(asset_key=dataset, partition=partition, metadata=metadata, tags=tags))
