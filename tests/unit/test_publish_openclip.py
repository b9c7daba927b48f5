"""open_clip's WebDataset stages on published shards: nothing passes as published, everything labelled with one stage.

open_clip itself cannot be imported here (its torchvision would replace this venv's CPU torch), so the
test runs the stages its ``get_wds_dataset`` chains after reading the tars (open_clip_torch 3.3.0,
``open_clip_train/data.py``), with the same arguments, on the venv's webdataset. The README records a
run of open_clip's own function (webdataset 0.2.86, as open_clip pins) with and without the stage.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from test_publish_fixtures import make_home

from pipelines.publish import openclip
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset


def filter_no_caption_or_no_image(sample):
    """open_clip_train/data.py, verbatim."""
    has_caption = ('txt' in sample)
    has_image = ('png' in sample or 'jpg' in sample or 'jpeg' in sample or 'webp' in sample)
    return has_caption and has_image


def _open_clip_reader(urls: list[str], *extra_stages) -> list[tuple]:
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(),
        *extra_stages,
        wds.select(filter_no_caption_or_no_image),
        wds.decode("pilrgb"),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.to_tuple("image", "text", "json"),
    )
    return list(pipeline)


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("oc") / "home", num_rankings=60, seed=13)
    return home, publish_dataset(home, PublishConfig(workers=1, fsync=False))


def test_open_clip_drops_every_published_sample(version) -> None:
    _, report = version
    urls = sorted(str(p) for p in (report.path / "train").glob("pickapic-train-*.tar"))
    assert urls and _open_clip_reader(urls) == []


def test_one_stage_gives_open_clip_the_preferred_image(version) -> None:
    home, report = version
    urls = sorted(str(p) for p in (report.path / "train").glob("pickapic-train-*.tar"))
    samples = _open_clip_reader(urls, wds.map(openclip.preferred_image))
    rows = {r["pair_id"]: r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if r["split"] == "train"}
    labelled = [r for r in rows.values() if r["has_label"] and r["label_0"] != r["label_1"]]
    assert len(samples) == len(labelled) < len(rows)                      # ties have no preferred image
    for image, text, meta in samples:
        row = rows[meta["pair_id"]]
        preferred = row["jpg_0_key"] if row["label_0"] > row["label_1"] else row["jpg_1_key"]
        from PIL import Image

        assert text == row["caption"]
        assert image.tobytes() == Image.open(home.root / preferred).convert("RGB").tobytes()


def test_the_readme_shows_the_stage_verbatim() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert inspect.getsource(openclip.preferred_image) in readme
    assert "wds.map(preferred_image)" in readme
