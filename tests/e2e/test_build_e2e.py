"""`pickapic demo` / `pickapic build` end to end: runs recorded in the home's instance, every asset
materialized, every contract check passed, counts reconciled, a summary printed."""
import json

import dagster as dg
import duckdb

from dagster_project.contracts import warehouse_views
from dagster_project.definitions import defs
from pipelines.sqlrun import connect

WAREHOUSE = {"users", "images", "rankings", "downloads", "quarantine", "image_features", "image_rejects",
             "duplicate_clusters", "decisions", "pairs", "split_pairs"}
PARTITIONED = {"users", "images", "rankings", "downloads", "quarantine", "ingest_files", "image_features", "image_rejects"}


def _instance(home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home.dagster_home))


def test_runs_recorded_and_successful(built_home, private_home):
    with _instance(private_home) as instance:
        runs = instance.get_runs()
        days = built_home.raw_days()
        assert len(runs) == len(days) + 2  # one daily run per day, the rebuild, the model
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        jobs = sorted(run.job_name for run in runs)
        assert jobs.count("daily_partition_job") == len(days)
        assert "rebuild_dataset_job" in jobs and "train_model_job" in jobs


def test_every_asset_materialized_with_metadata(built_home, private_home):
    graph = defs.resolve_asset_graph()
    days = set(built_home.raw_days())
    with _instance(private_home) as instance:
        for key in graph.get_all_asset_keys():
            if graph.get(key).group_name == "app_export":
                continue  # the demo's raw zone comes from the simulator's files (tests/e2e/test_app_db_e2e.py)
            if not graph.get(key).is_materializable:  # raw_app_logs is observed: one content version per raw day
                from dagster._core.events import DagsterEventType

                observed = instance.event_log_storage.get_latest_tags_by_partition(
                    key, DagsterEventType.ASSET_OBSERVATION, ["dagster/data_version"])
                assert set(observed) == days, key.to_user_string()
                continue
            event = instance.get_latest_materialization_event(key)
            assert event is not None, f"{key.to_user_string()} never materialized"
            assert event.asset_materialization.metadata, f"{key.to_user_string()} has no metadata"
            if key.to_user_string() in PARTITIONED:
                assert set(instance.get_materialized_partitions(key)) == days
            if key.to_user_string() in WAREHOUSE:
                assert "dagster/row_count" in event.asset_materialization.metadata, key.to_user_string()


def test_the_model_run_is_recorded_and_retention_reported(built_home, private_home):
    """The Dagster training of `latest` records its run (models/preference_model.runs) and reports the run
    retention of the home's `models.keep_runs` in its metadata."""
    from formats import dataset
    from training import runs as model_runs

    version = dataset.resolve_version(built_home).name
    assert model_runs.read_runs(built_home) == [version]
    with _instance(private_home) as instance:
        metadata = instance.get_latest_materialization_event(dg.AssetKey("preference_model")).asset_materialization.metadata
    assert metadata["model_runs_kept"].value == 1 and metadata["model_runs_deleted"].value == "none"


def test_every_contract_check_ran_and_passed(built_home, private_home):
    graph = defs.resolve_asset_graph()
    contract_checks = [k for k in graph.asset_check_keys if "freshness" not in k.name]
    assert len(contract_checks) > 50
    with _instance(private_home) as instance:
        records = instance.event_log_storage.get_latest_asset_check_execution_by_key(contract_checks)
        missing = [k for k in contract_checks if k not in records]
        assert not missing, f"checks never executed: {missing[:5]}"
        failed = []
        for key, record in records.items():
            evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
            if evaluation is not None and hasattr(evaluation, "passed") and not evaluation.passed:
                failed.append(key)
        blocking_failed = [k for k in failed if graph.get_check_spec(k).blocking]
        assert not blocking_failed, f"blocking checks failed: {blocking_failed}"


def test_counts_reconcile_across_stages(built_home):
    con = connect(warehouse_views(built_home))
    lines_in, accepted, quarantined = con.execute(
        "SELECT sum(lines_in), sum(accepted), sum(quarantined) FROM ingest_files").fetchone()
    assert lines_in == accepted + quarantined and quarantined > 0
    images = con.execute("SELECT count(*) FROM images").fetchone()[0]
    fingerprinted = con.execute("SELECT count(*) FROM image_features").fetchone()[0]
    rejected = con.execute("SELECT count(*) FROM image_rejects").fetchone()[0]
    assert images == fingerprinted + rejected and rejected > 0
    unaccounted = con.execute("""
        SELECT count(*) FROM (SELECT DISTINCT ranking_id FROM rankings) r
        WHERE r.ranking_id NOT IN (SELECT ranking_id FROM pairs)
          AND CAST(r.ranking_id AS VARCHAR) NOT IN (SELECT subject_id FROM decisions WHERE subject = 'ranking')
    """).fetchone()[0]
    assert unaccounted == 0
    pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    parents = con.execute("SELECT count(*) FROM split_pairs WHERE split IN ('train', 'validation', 'test')").fetchone()[0]
    dropped = con.execute("SELECT count(*) FROM split_rejects").fetchone()[0]
    assert pairs == parents + dropped


def test_published_version_matches_split_pairs(built_home):
    latest = built_home.datasets / "latest"
    assert latest.is_symlink()
    sidecars = duckdb.sql(f"SELECT split, count(*) FROM read_parquet('{latest}/*/pickapic-*.parquet') GROUP BY 1").fetchall()
    expected = duckdb.sql(f"SELECT split, count(*) FROM read_parquet('{built_home.table_file('split_pairs')}') GROUP BY 1").fetchall()
    assert sorted(sidecars) == sorted(expected)
    for split, count in expected:
        sizes = json.loads((latest / split / "sizes.json").read_text())
        assert sum(sizes.values()) == count


def test_demo_summary_tells_the_story(built_home):
    summary = json.loads((built_home.root / "demo_summary.json").read_text())
    assert summary["raw_lines"] == summary["accepted_rows"] + sum(
        v for k, v in summary["quarantine_reasons"].items()) - _file_level(summary)
    assert summary["images_in_duplicate_clusters"] > 0
    assert {"content_filtered", "feature_rejected"} <= set(summary["drop_reasons"])
    assert set(summary["pairs_per_split"]) == {"train", "validation", "test", "validation_unique", "test_unique"}
    assert summary["shards_written"] >= 5
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["random_baseline"] is not None and summary["untrained_test_accuracy"] is not None
    assert 0.5 < summary["bayes_optimal_accuracy"] < 1.0


def _file_level(summary: dict) -> int:
    """Quarantine rows about whole files (missing / unreadable) are not lines."""
    return sum(v for k, v in summary["quarantine_reasons"].items() if k in ("missing_file", "unreadable_file"))
