"""The dataset card of a version: `datasets.load_dataset(<version folder>)` reads the tar shards, offline."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_publish_fixtures import make_home, write_split_pairs

from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("card") / "home", num_rankings=90, seed=21)
    table = pq.read_table(home.table_file("split_pairs"))
    # ties first in every split: what datasets would infer from the first samples is then a null type
    order = sorted(range(table.num_rows), key=lambda i: (table.column("label_0")[i].as_py() != 0.5, i))
    write_split_pairs(home, table.take(pa.array(order)))
    return home, publish_dataset(home, PublishConfig(workers=1, fsync=False))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_dataset would otherwise ping the Hub / S3 (HF_UPDATE_DOWNLOAD_COUNTS)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


def test_load_dataset_on_the_version_folder_reads_every_split_from_the_tars(version, offline, tmp_path: Path) -> None:
    home, report = version
    loaded = datasets.load_dataset(str(report.path), cache_dir=str(tmp_path / "hf"))
    assert {split: loaded[split].num_rows for split in loaded} == report.pairs
    train = loaded["train"]
    assert list(train.features) == ["0.jpg", "1.jpg", "json", "txt", "__key__", "__url__"]
    assert isinstance(train.features["0.jpg"], datasets.Image)
    assert train.features["json"]["best_image_uid"] == datasets.Value("string")
    rows = {(r["split"], r["pair_id"]): r for r in pq.read_table(home.table_file("split_pairs")).to_pylist()}
    for sample in train.select(range(5)):
        meta = sample["json"]
        row = rows[("train", meta["pair_id"])]
        assert sample["txt"] == row["caption"] and meta["label_0"] == row["label_0"]
        assert sample["__url__"].endswith(".tar") and "/train/pickapic-train-" in sample["__url__"]
        buffer = io.BytesIO()
        sample["0.jpg"].save(buffer, format="PNG")        # decoded from the tar, not the sidecars
        assert sample["0.jpg"].size == (48, 48)
        assert meta["jpg_0_sha256"] == hashlib.sha256((home.root / row["jpg_0_key"]).read_bytes()).hexdigest()


def test_the_sidecars_load_as_parquet_as_the_card_says(version, offline, tmp_path: Path) -> None:
    _, report = version
    files = {s: f"{report.path}/{s}/pickapic-{s}-*.parquet" for s in report.pairs}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert {split: loaded[split].num_rows for split in loaded} == report.pairs
    assert "jpg_0_offset" in loaded["train"].features and "num_example_per_prompt" not in loaded["train"].features


def test_the_card_is_a_datasheet(version) -> None:
    home, report = version
    text = (report.path / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["configs"][0]["data_files"] == [{"split": s, "path": f"{s}/pickapic-{s}-*.tar"} for s in report.pairs]
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == report.pairs
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert "README.md" in manifest["files"]
    # every filter with its count: the fixture drops one banned user's ranking and one NSFW image,
    # and quarantines a users line and a rankings line
    assert "| ranking | banned_user | 1 |" in text and "| image | nsfw | 1 |" in text
    assert "| users | bad_email | 1 |" in text and "| rankings | not_an_object | 1 |" in text
    for split, count in report.pairs.items():
        assert f"| `{split}` | {count:,} |" in text
    for section in ("## Collection", "## Curation", "## Splits", "## Known limits", "tie rate"):
        assert section in text
