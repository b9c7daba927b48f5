"""The thirtieth session's own changes.

The training JPEG removal (review rev30b, ``pipelines.features.trainjpegs``) runs in the publish step, so the
nightly schedule's rebuild under ``pickapic serve`` (Dagster runs the daemon launches, not ``pickapic build``)
removes an erased account's JPEGs too: fix30b had put the call in ``pickapic build`` alone.
"""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from dagster_project.build import use_home
from dagster_project.definitions import defs
from tests.conftest import copy_home


def _named_keys(home) -> set[str]:
    keys = set()
    for part in sorted((home.root / "warehouse" / "image_features").glob("dt=*/*.parquet")):
        keys.update(k for k in pq.read_table(part, columns=["train_jpg_key"]).column(0).to_pylist() if k)
    return keys


def test_the_rebuild_jobs_publish_step_removes_training_jpegs_no_day_names(built_home, fast_tmp: Path,
                                                                            env_kept) -> None:
    home = copy_home(built_home, fast_tmp / "home")
    use_home(home)
    stored = sorted((home.root / "blobs" / "train").glob("s*q*/*/*.jpg"))
    assert stored, "the demo home has no training JPEG"
    named = _named_keys(home)
    assert {str(p.relative_to(home.root)) for p in stored} <= named   # the demo home keeps only what its days need
    orphan = stored[0].parent.parent / "ab" / ("ab" + "0" * 62 + ".jpg")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(stored[0].read_bytes())
    stray = stored[0].parent / "notes.txt"                     # a file of another name: never removed
    stray.write_text("mine")
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("rebuild_dataset_job").execute_in_process(
            instance=instance, run_config={"resources": {"data_home": {"config": {"root": str(home.root)}}}},
            asset_selection=[dg.AssetKey("published_dataset")])
        assert result.success
    assert not orphan.exists(), "the publish step left a training JPEG no warehouse day names"
    assert stray.read_text() == "mine"
    assert all(p.exists() for p in stored), "the publish step removed a JPEG a warehouse day names"
