"""``pickapic export --format pickscore-parquet``: the released schema, readable by Hugging Face datasets."""
from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from test_publish_fixtures import make_home

from pipelines import export
from pipelines.publish import PublishConfig, publish_dataset
from schemas import get_schema

RELEASED = ["ranking_id", "user_id", "caption", "created_at", "image_0_uid", "image_1_uid", "image_0_url",
            "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "best_image_uid", "model_0", "model_1",
            "has_label", "are_different", "num_example_per_prompt"]


def test_export_reads_back_with_datasets(tmp_path: Path, monkeypatch) -> None:
    # offline: load_dataset would otherwise ping S3 to count the load (HF_UPDATE_DOWNLOAD_COUNTS)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    home = make_home(tmp_path / "home", num_rankings=70, seed=31)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    out = tmp_path / "export"
    report = export.export_pickscore_parquet(home, None, out)
    assert report.version == published.version and report.rows == published.pairs
    assert get_schema("pickscore_export").names == RELEASED
    for split, n in published.pairs.items():
        table = pq.read_table(out / f"{split}.parquet")
        assert table.schema == get_schema("pickscore_export") and table.num_rows == n
    loaded = datasets.load_dataset("parquet", data_files={s: str(out / f"{s}.parquet") for s in published.pairs},
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert {s: loaded[s].num_rows for s in loaded} == published.pairs
    sidecar_rows = {}
    for sidecar in sorted((published.path / "train").glob("pickapic-train-*.parquet")):
        for r in pq.read_table(sidecar).to_pylist():
            sidecar_rows[r["ranking_id"]] = r
    counts = {r["prompt_key"]: r["num_example_per_prompt"]
              for r in pq.read_table(published.path / "train" / "prompt_counts.parquet").to_pylist()}
    assert counts == {r["prompt_key"]: r["num_example_per_prompt"]
                      for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if r["split"] == "train"}
    train = loaded["train"]
    assert list(train.features) == RELEASED
    for row in train.select(range(10)):
        source = sidecar_rows[row["ranking_id"]]
        assert row["jpg_0"] == (home.root / source["jpg_0_key"]).read_bytes()
        assert row["jpg_1"] == (home.root / source["jpg_1_key"]).read_bytes()
        assert row["image_0_url"] == source["jpg_0_key"] and row["caption"] == source["caption"]
        assert (row["label_0"], row["label_1"]) in {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
        assert (row["best_image_uid"] is None) == (row["label_0"] == 0.5)
        assert row["num_example_per_prompt"] == counts[source["prompt_key"]]   # kept beside the shards
    # the export is deterministic
    again = export.export_pickscore_parquet(home, published.version, tmp_path / "again")
    assert all((out / f"{s}.parquet").read_bytes() == Path(again.files[s]).read_bytes() for s in published.pairs)


def test_export_cli_arguments(tmp_path: Path, capsys) -> None:
    home = make_home(tmp_path / "home", num_rankings=30, seed=32)
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    args = parser.parse_args(["--format", "pickscore-parquet", "--output", str(tmp_path / "o")])
    assert export.run_from_args(args, home) == 2                      # nothing published yet
    assert "no published dataset" in capsys.readouterr().err
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert export.run_from_args(args, home) == 0
    assert "train" in capsys.readouterr().out and (tmp_path / "o" / "train.parquet").is_file()
