"""Fixes of review rev31d (``tests/unit/test_hostile_rev31d.py``): what a published version tells its readers.

- The card's code version (``datacard.CARD_VERSION``) is part of the version id and of the manifest's identity, so a
  card written by other code is another version (its shards linked from the older one), never the old folder.
- The card counts distinct fingerprinted images (``meta/images`` holds one row per image and export day).
- A short ``_unique`` split's reason counts the prompts its parent's kept rows hold and names the parent's rows that
  went to ``split_rejects``; it offers lowering ``splits.min_unique_rows`` only where that can help.
- ``splits.unique_prompts`` = 0 (an empty ``_unique`` split for good, never publishable) is refused, saying why.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.settings import SettingsError, load


def test_a_new_card_version_is_a_new_version_with_the_old_shards_linked(tmp_path: Path, monkeypatch) -> None:
    from test_publish_fixtures import make_home

    from formats.dataset import read_manifest, resolve_version
    from pipelines.publish import datacard
    from pipelines.publish.config import PublishConfig
    from pipelines.publish.manifest import verify_version
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path / "home", num_rankings=40, seed=3)
    first = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert read_manifest(Path(first.path))["card"] == datacard.CARD_VERSION
    again = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert again.version == first.version and again.reused          # same inputs, same card code: the same folder

    monkeypatch.setattr(datacard, "CARD_VERSION", f"{datacard.CARD_VERSION}+next")
    bumped = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    assert bumped.version != first.version and not bumped.reused
    assert bumped.version.split("-")[:3] == first.version.split("-")[:3]     # the same last day
    assert bumped.shards_linked > 0 and bumped.shards_written == 0            # no shard written again
    assert resolve_version(home).name == bumped.version
    assert read_manifest(resolve_version(home))["card"] == datacard.CARD_VERSION
    verify_version(resolve_version(home), checksums=True)
    assert (home.datasets / first.version).is_dir()                           # kept by retention, as any version


def test_a_folder_whose_manifest_records_another_card_version_is_not_taken_as_the_version(tmp_path: Path) -> None:
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset
    from pipelines.publish.versions import StagingRefused

    home = make_home(tmp_path / "home", num_rankings=40, seed=3)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    manifest_path = Path(report.path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["card"] = "0"                       # a folder the same name holds, its card written by other code
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(StagingRefused, match="its card differ"):
        publish_dataset(home, PublishConfig(workers=1, fsync=False))


def test_distinct_images_counts_each_uid_once_across_days_and_empty_files(tmp_path: Path) -> None:
    from pipelines.publish.datacard import _distinct_images

    folder = tmp_path / "images"
    folder.mkdir()
    assert _distinct_images(folder) == 0                                     # no snapshot file: no image
    schema = pa.schema([pa.field("image_uid", pa.string(), nullable=False), pa.field("dt", pa.string())])
    pq.write_table(pa.table({"image_uid": ["a", "b", "c"], "dt": ["d1"] * 3}, schema), folder / "images-d1.parquet")
    pq.write_table(pa.table({"image_uid": ["b", "c", "d"], "dt": ["d2"] * 3}, schema), folder / "images-d2.parquet")
    pq.write_table(pa.table({"image_uid": [], "dt": []}, schema), folder / "images-d3.parquet")
    assert _distinct_images(folder) == 4                                     # 6 rows, 4 images


# --- the "not enough data" reasons ----------------------------------------------------------------------------------


def test_a_short_unique_split_names_its_parents_kept_prompts_and_rejected_rows() -> None:
    from pipelines.splits.assign import trainability_problems

    rows = {"train": 40, "validation": 9, "test": 12, "validation_unique": 7, "test_unique": 12}
    problems = trainability_problems(rows, users=12, min_unique_rows=10, min_users=10,
                                     kept_prompts={"validation": 7, "test": 12},
                                     rejected={"validation": {"cluster_conflict": 2, "prompt_conflict": 1},
                                               "train": {"prompt_conflict": 4}})
    assert problems == [
        "split 'validation_unique' has 7 rows, fewer than the 10 required: its users have typed too few distinct "
        "prompts yet (validation's rows hold 7 distinct prompts, one row each here); 3 of validation's rows went to "
        "split_rejects (2 as cluster_conflict, 1 as prompt_conflict): another split already owns their prompts or "
        "images; it grows as held-out users type prompts no other split has used (or lower splits.min_unique_rows)"]


def test_an_empty_unique_split_of_a_non_empty_parent_does_not_offer_a_lower_minimum() -> None:
    from pipelines.splits.assign import trainability_problems

    rows = {"train": 40, "validation": 3, "test": 12, "validation_unique": 0, "test_unique": 12}
    problems = trainability_problems(rows, users=12, min_unique_rows=0, min_users=10, kept_prompts={"validation": 0})
    assert len(problems) == 1 and problems[0].startswith("split 'validation_unique' is empty: ")
    assert "min_unique_rows" not in problems[0] and "(validation's rows hold 0 distinct prompts" in problems[0]


def test_publish_refusal_counts_the_parents_prompts_from_split_pairs() -> None:
    from pipelines.splits.assign import NotEnoughData, require_trainable

    rows = []
    for split, prompts, copies in (("train", 6, 2), ("validation", 3, 3), ("test", 5, 1), ("validation_unique", 3, 1),
                                   ("test_unique", 5, 1)):
        rows += [{"split": split, "user_id": f"{split}-{p % 2}", "prompt_key": f"{split} {p}", "has_label": True}
                 for p in range(prompts) for _ in range(copies)]
    table = pa.Table.from_pylist(rows)
    with pytest.raises(NotEnoughData) as caught:
        require_trainable(table, min_unique_rows=5, min_users=3)
    message = str(caught.value)
    assert "split 'validation_unique' has 3 rows, fewer than the 5 required" in message
    assert "(validation's rows hold 3 distinct prompts, one row each here)" in message   # 9 rows, 3 prompts
    assert "test_unique" not in message


# --- splits.unique_prompts = 0 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["set", "file"])
def test_unique_prompts_zero_is_refused_at_settings_check_saying_why(tmp_path: Path, how: str) -> None:
    from formats.settings import settings_path

    if how == "file":
        settings_path(tmp_path).write_text("[splits]\nunique_prompts = 0\nmin_unique_rows = 0\n")
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, assignments=["splits.unique_prompts=0", "splits.min_unique_rows=0"] if how == "set" else [])
    message = str(caught.value)
    assert "splits.unique_prompts = 0" in message and "1 <= value" in message
    assert "empty for good" in message and "never published" in message


def test_one_unique_prompt_with_no_minimum_is_accepted() -> None:
    from pipelines.splits.assign import SplitConfig

    config = SplitConfig(min_users=3, unique_prompts=1, min_unique_rows=0)
    assert (config.unique_prompts, config.min_unique_rows) == (1, 0)
