"""The publish stage's contracts hold on a built version and catch planted violations."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import make_home

from data_contracts.engine import evaluate, load_contract
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import check_contracts, publish_dataset, version_views
from pipelines.query import export
from pipelines.sqlrun import connect
from schemas import get_schema

DATASETS = ("shard_samples", "shards", "splits_summary", "published_quarantine", "pickscore_export")


def test_contracts_match_schemas() -> None:
    for dataset in DATASETS:
        contract = load_contract(dataset)
        schema = get_schema(dataset)
        assert list(contract.columns) == schema.names
        for field in schema:
            column = contract.columns[field.name]
            assert column["physicalType"] == str(field.type) and column.get("required", False) == (not field.nullable)


def test_every_rule_passes_on_a_built_version(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=60, seed=41)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    export.export_pickscore_parquet(home, None, tmp_path / "x")
    views = {**version_views(report.path), "pickscore_export": str(tmp_path / "x" / "*.parquet")}
    con = connect(views)
    for dataset in DATASETS:
        results = evaluate(load_contract(dataset), con)
        assert results and all(r.passed for r in results), [(r.rule.name, r.value, r.error) for r in results if not r.passed]


def test_planted_violations_block_publishing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=40, seed=42)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    sidecar = sorted(report.path.glob("train/*.parquet"))[0]
    table = pq.read_table(sidecar)
    bad = table.set_column(0, "key", pa.array(["a.b"] + table.column("key").to_pylist()[1:]))
    bad = bad.set_column(bad.schema.get_field_index("label_0"), "label_0", pa.array([0.7] * bad.num_rows))
    pq.write_table(bad, sidecar)
    with pytest.raises(RuntimeError, match="key_has_no_dot.*labels_valid|labels_valid.*key_has_no_dot"):
        check_contracts(report.path)


def test_a_sidecar_with_another_schema_blocks_publishing(tmp_path: Path) -> None:
    """A version's sidecars are read as one schema (no union by name: for a year of sidecars that
    read every footer up front, 2 GB): a sidecar that lost a column is a failed rule, not nulls."""
    home = make_home(tmp_path / "h", num_rankings=40, seed=43)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    check_contracts(report.path)
    sidecars = sorted(report.path.glob("*/pickapic-*.parquet"))
    assert len(sidecars) > 1
    table = pq.read_table(sidecars[-1])
    pq.write_table(table.drop_columns(["label_0"]), sidecars[-1])
    with pytest.raises(RuntimeError, match=r"fails its contracts.*query failed"):
        check_contracts(report.path)


def test_the_gates_results_are_the_assets_checks_and_a_reused_version_is_checked_again(tmp_path: Path) -> None:
    """``published_dataset`` reports the results the gate evaluated before the switch (one pass over
    the sidecars a night, not two); switched to again, an existing version has none, and the asset
    evaluates its files itself."""
    from dagster_project.assets.publish import ASSET, VERSION_DATASETS
    from dagster_project.contracts import check_results, check_specs, run_checks

    home = make_home(tmp_path / "h", num_rankings=40, seed=44)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert not report.reused and report.contract_results
    from_gate = list(check_results(report.contract_results, asset=ASSET))
    evaluated = list(run_checks(VERSION_DATASETS, version_views(report.path), asset=ASSET, uniform=VERSION_DATASETS))
    specs = sorted(spec.name for spec in check_specs(VERSION_DATASETS, asset=ASSET))
    assert sorted(c.check_name for c in from_gate) == specs == sorted(c.check_name for c in evaluated)
    assert [(c.check_name, c.passed, c.metadata["value"]) for c in from_gate] == \
           [(c.check_name, c.passed, c.metadata["value"]) for c in evaluated]
    assert all(c.passed and c.asset_key.to_user_string() == ASSET for c in from_gate)
    again = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert again.reused and again.version == report.version and again.contract_results == []


def test_splits_summary_from_the_pairs_in_hand_equals_the_one_from_the_sidecars(tmp_path: Path) -> None:
    """The publish summarises the splits from the rows it published (no pass over every sidecar, which
    grows with the history); written from the version's sidecars instead, the file is the same bytes.
    The gate ties it to the shard index: a summary whose counts differ fails pairs_match_shards."""
    from formats.dataset import MANIFEST_FILE
    from pipelines.publish import meta, samples

    home = make_home(tmp_path / "h", num_rankings=80, seed=45, days=3)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    stats = [json.loads(p.read_text()) for p in sorted(report.path.glob("*/*_stats.json"))]
    assert stats
    again = tmp_path / "again"
    (again / "meta").mkdir(parents=True)
    for split in {s["split"] for s in stats}:
        (again / split).symlink_to(report.path / split)            # the same sidecars
    meta.write_meta(again, stats, samples.meta_sources(home), fsync=False)
    name = "meta/splits_summary.parquet"
    assert (again / name).read_bytes() == (report.path / name).read_bytes()
    assert name in json.loads((report.path / MANIFEST_FILE).read_text())["files"]
    summary = pq.read_table(report.path / name)
    rows = summary.to_pylist()
    rows[0]["num_pairs"] += 1
    (report.path / name).unlink()
    pq.write_table(pa.Table.from_pylist(rows, schema=summary.schema), report.path / name)
    with pytest.raises(RuntimeError, match="splits_summary.pairs_match_shards"):
        check_contracts(report.path)
