"""Analysts' readers of a published version, as they run them: polars and DuckDB over the sidecars."""
from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest
from test_publish_fixtures import make_home

from formats import dataset
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("readers") / "home", num_rankings=60, seed=5)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return dataset.resolve_version(home)


def test_polars_and_duckdb_read_every_split_with_the_manifest_counts(version_dir) -> None:
    manifest = json.loads((version_dir / dataset.MANIFEST_FILE).read_text())
    expected = {split: info["pairs"] for split, info in manifest["splits"].items()}
    glob = dataset.sidecar_glob(version_dir)
    by_polars = dict(pl.scan_parquet(glob).group_by("split").len().collect().iter_rows())
    by_duckdb = dict(duckdb.sql(f"SELECT split, count(*) FROM read_parquet('{glob}') GROUP BY split").fetchall())
    assert by_polars == by_duckdb == expected


def test_polars_joins_the_loss_weight_beside_the_shards(version_dir) -> None:
    """``num_example_per_prompt`` lives in ``<split>/prompt_counts.parquet``; a join on (split, prompt_key) finds
    it for every sidecar row."""
    pairs = pl.read_parquet(dataset.sidecar_glob(version_dir))
    counts = pl.read_parquet(dataset.prompt_counts_glob(version_dir))
    joined = pairs.join(counts, on=["split", "prompt_key"], how="left")
    assert joined.height == pairs.height and joined["num_example_per_prompt"].null_count() == 0
