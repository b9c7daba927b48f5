"""``pickapic export --format pickscore-parquet``: the released schema, readable by Hugging Face datasets."""
from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from test_publish_fixtures import make_home

from data_contracts.engine import evaluate, load_contract
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import export
from pipelines.sqlrun import connect
from schemas import get_schema

# yuvalkirstain/pickapic_v1's dataset card, in its order, with its types (user_id differs by design: a pseudonym)
RELEASED = {"are_different": "bool", "best_image_uid": "string", "caption": "string", "created_at": "timestamp[ns]",
            "has_label": "bool", "image_0_uid": "string", "image_0_url": "string", "image_1_uid": "string",
            "image_1_url": "string", "jpg_0": "binary", "jpg_1": "binary", "label_0": "double", "label_1": "double",
            "model_0": "string", "model_1": "string", "ranking_id": "int64", "user_id": "string",
            "num_example_per_prompt": "int64", "__index_level_0__": "int64"}


def test_export_reads_back_with_datasets(tmp_path: Path, monkeypatch) -> None:
    # offline: load_dataset would otherwise ping S3 to count the load (HF_UPDATE_DOWNLOAD_COUNTS)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    home = make_home(tmp_path / "home", num_rankings=70, seed=31)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    out = tmp_path / "export"
    report = export.export_pickscore_parquet(home, None, out)
    assert report.version == published.version and report.rows == published.pairs
    assert {f.name: str(f.type) for f in get_schema("pickscore_export")} == RELEASED
    assert get_schema("pickscore_export").names == list(RELEASED)
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
    assert list(train.features) == list(RELEASED)
    assert train["__index_level_0__"] == list(range(train.num_rows))
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


def test_pickscore_dataset_processing_runs_on_the_export(tmp_path: Path, monkeypatch) -> None:
    """The calls of PickScore's trainer/datasetss/clip_hf_dataset.py (yuvalkirstain/PickScore), in its order,
    on our export: filters, limit_examples_per_prompt (drops `__index_level_0__` by name), only_on_best
    (selects by the pandas index) and __getitem__'s decoding. The real file was also run by hand (README §6)."""
    from io import BytesIO

    import pandas as pd
    from PIL import Image

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    home = make_home(tmp_path / "home", num_rankings=90, seed=33)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    out = tmp_path / "export"
    export.export_pickscore_parquet(home, None, out)
    loaded = datasets.load_dataset("parquet", data_files={s: str(out / f"{s}.parquet") for s in ("train", "test_unique")},
                                   cache_dir=str(tmp_path / "hf-cache"))
    dataset = loaded["train"]
    n = dataset.num_rows
    # keep_only_different, keep_only_with_label
    dataset = dataset.filter(lambda x: x["are_different"])
    dataset = dataset.filter(lambda x: x["has_label"])
    # limit_examples_per_prompt = 1
    df = dataset.to_pandas()
    df = df.drop('__index_level_0__', axis=1)
    df = df.groupby("caption").head(1)
    limited = datasets.Dataset.from_pandas(df)
    assert 0 < limited.num_rows <= n and limited.num_rows == dataset.to_pandas()["caption"].nunique()
    # only_on_best (train split): the chain of "bad image -> better image" by uid, rows kept by df.index
    train_dataset = dataset.remove_columns(["jpg_0", "jpg_1"])
    df = train_dataset.to_pandas()
    df = df[df["has_label"] == 1]
    image_0_wins_df = df[df["label_0"] == 1]
    image_1_wins_df = df[df["label_0"] == 0]
    bad_to_good = dict(zip(image_1_wins_df.image_0_uid, image_1_wins_df.image_1_uid)) | dict(
        zip(image_0_wins_df.image_1_uid, image_0_wins_df.image_0_uid))
    keep_ids = df.index.tolist()
    best = dataset.select(keep_ids)
    assert best.num_rows == len(df) and bad_to_good
    # __getitem__: caption tokenized elsewhere; images decoded from the bytes; the loss weight as a tensor
    example = best[0]
    for column in ("jpg_0", "jpg_1"):
        image = Image.open(BytesIO(example[column])).convert("RGB")
        assert min(image.size) > 0
    assert example["num_example_per_prompt"] >= 1 and example["label_0"] + example["label_1"] == 1
    # pandas reads the index column as a plain column, as the release's
    assert "__index_level_0__" in pd.read_parquet(out / "test_unique.parquet").columns


def test_eval_prompts_export(tmp_path: Path, capsys) -> None:
    home = make_home(tmp_path / "home", num_rankings=90, seed=34)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    args = parser.parse_args(["--format", "eval-prompts", "--output", str(tmp_path / "prompts")])
    assert export.run_from_args(args, home) == 0
    assert "prompts" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "prompts" / "eval_prompts.parquet")
    assert table.schema.remove_metadata() == get_schema("eval_prompts")
    assert table.schema.metadata[b"dataset_version"].decode() == published.version
    rows = table.to_pylist()
    sidecars = [r for f in sorted((published.path / "test_unique").glob("pickapic-*.parquet")) for r in pq.read_table(f).to_pylist()]
    test_rows = [r for f in sorted((published.path / "test").glob("pickapic-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len(sidecars) == published.pairs["test_unique"] > 0
    assert [r["prompt_key"] for r in rows] == sorted(r["prompt_key"] for r in sidecars)
    by_key = {r["key"]: r for r in sidecars}
    for row in rows:
        source = by_key[row["test_unique_key"]]
        assert row["caption"] == source["caption"] and row["prompt_key"] == source["prompt_key"]
        assert row["count"] == sum(t["prompt_key"] == row["prompt_key"] for t in test_rows) >= 1
        assert row["dataset_version"] == published.version and len(row["prompt_id"]) == 16
    con = connect({"eval_prompts": str(tmp_path / "prompts" / "eval_prompts.parquet")})
    results = evaluate(load_contract("eval_prompts"), con)
    assert results and all(r.passed for r in results), [(r.rule.name, r.value) for r in results if not r.passed]
    again = export.export_eval_prompts(home, published.version, tmp_path / "again")
    assert Path(again.files["test_unique"]).read_bytes() == (tmp_path / "prompts" / "eval_prompts.parquet").read_bytes()


def test_export_refuses_image_bytes_that_differ_from_the_sidecar_sha256(tmp_path: Path, capsys) -> None:
    home = make_home(tmp_path / "home", num_rankings=30, seed=33)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    sidecar = min((published.path / "test_unique").glob("pickapic-test_unique-*.parquet"))
    first = pq.read_table(sidecar).to_pylist()[0]
    tar = sidecar.with_suffix(".tar")
    tar.chmod(0o644)
    with open(tar, "r+b") as handle:  # zeros over the middle of the first JPEG: same length, other bytes
        handle.seek(first["jpg_0_offset"] + first["jpg_0_size"] // 2)
        handle.write(bytes(64))
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    out = tmp_path / "export"
    assert export.run_from_args(parser.parse_args(["--output", str(out)]), home) == 2
    err = capsys.readouterr().err
    assert f"{tar}: sample {first['key']!r}: the jpg_0 bytes at offset {first['jpg_0_offset']} have sha256" in err
    assert f"but {sidecar.name} records {first['jpg_0_sha256']}" in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
