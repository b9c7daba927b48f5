"""The sidecar-scan benchmark's incremental mode: a first version recorded, then a night of new files."""
from __future__ import annotations

import json
import os

from test_publish_fixtures import make_home

from benchmarks import sidecar_scan
from data_contracts.engine import evaluate, load_contract
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.sqlrun import connect


def test_incremental_mode_reads_only_the_new_files_and_gets_every_rules_value(tmp_path, capsys) -> None:
    home = make_home(tmp_path / "h", num_rankings=40, seed=3)
    version = publish_dataset(home, PublishConfig(workers=1, fsync=False)).path
    sources = sorted(version.glob("train/pickapic-*.parquet"))
    folder = tmp_path / "year" / "train"
    folder.mkdir(parents=True)
    for n in range(12):
        os.link(sources[n % len(sources)], folder / f"pickapic-train-{n:06d}.parquet")
    glob = str(tmp_path / "year" / "*" / "pickapic-*.parquet")
    con = connect({"shard_samples": glob}, uniform=("shard_samples",))
    sidecar_scan._incremental(con, glob, 3)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["first_scanned"] == 9 and result["scanned"] == 3 and result["cached"] == 9
    assert result["value"] == {r.rule.name: r.value for r in evaluate(load_contract("shard_samples"), con)}


def test_column_mode_reads_only_the_new_files_for_key_unique_too(tmp_path, capsys) -> None:
    home = make_home(tmp_path / "h", num_rankings=40, seed=3)
    version = publish_dataset(home, PublishConfig(workers=1, fsync=False)).path
    sources = sorted(version.glob("train/pickapic-*.parquet"))
    folder = tmp_path / "year" / "train"
    folder.mkdir(parents=True)
    for n in range(12):
        os.link(sources[n % len(sources)], folder / f"pickapic-train-{n:06d}.parquet")
    glob = str(tmp_path / "year" / "*" / "pickapic-*.parquet")
    con = connect({"shard_samples": glob}, uniform=("shard_samples",))
    for phase in ("first-columns", "night-columns"):
        sidecar_scan._incremental(con, glob, 3, phase)
    first, night = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert first["first_columns_scanned"] == 9 and night["columns_scanned"] == 3 and night["columns_cached"] == 9
    assert night["column_rules"] == ["shard_samples.key_unique"] and night["columns_note"] == ""
    assert night["value"] == {r.rule.name: r.value for r in evaluate(load_contract("shard_samples"), con)}
