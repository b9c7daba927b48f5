"""The webdataset loader on shards in the publish format: batches, preprocessing, seeded resume skip."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from transformers import CLIPImageProcessorPil

from training.data import (
    EvalPairStream,
    ImageSpec,
    PairCollator,
    TrainPairStream,
    iter_captions,
    make_loader,
    preprocess_image,
    split_shards,
    split_size,
    tar_samples,
)
from training.model import train_tokenizer
from training.synthetic import write_synthetic_version


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("home") / "datasets" / "pickapic" / "v7"
    sizes = {"train": 40, "validation_unique": 10}
    write_synthetic_version(root, sizes, image_px=48, seed=5, shards_per_split=4)
    return root


@pytest.fixture(scope="module")
def collate(version):
    return PairCollator(train_tokenizer(iter_captions(version, "train"), 600))


def test_shards_follow_the_publish_layout(version):
    shards = split_shards(version.parent / "latest", "train")
    assert [p.name for p in shards] == [f"pickapic-train-{i:06d}.tar" for i in range(4)]
    assert split_size(version, "train") == 40
    names = [m for m in wds.tarfile_to_samples()(iter([{"url": str(shards[0])}]))][0]
    assert {"0.jpg", "1.jpg", "json", "txt"} <= set(names)
    meta = json.loads(names["json"])
    assert {"pair_id", "caption", "label_0", "label_1", "model_0", "model_1", "num_example_per_prompt"} <= set(meta)
    with pytest.raises(FileNotFoundError, match="test_unique"):
        split_shards(version, "test_unique")


def test_preprocessing_matches_clip_image_processor():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    hf = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    spec = ImageSpec.from_processor(hf)
    ours = preprocess_image(buf.getvalue(), spec, draft=False)
    theirs = hf(images=Image.open(io.BytesIO(buf.getvalue())), return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 32, 32) and np.abs(ours - theirs).max() < 1e-4
    drafted = preprocess_image(buf.getvalue(), spec, draft=True)  # 50 px: no DCT scaling possible yet
    assert np.array_equal(drafted, ours)


def _stream(version, collate, workers, skip=0, resampled=True):
    return TrainPairStream(split_shards(version, "train"), 4, collate, ImageSpec(32, 32), seed=9,
                             shuffle_buffer=16, shuffle_initial=4, resampled=resampled, draft=True,
                             num_workers=workers, skip_batches=skip)


def _keys(loader, n):
    out = []
    for i, batch in enumerate(loader):
        out.append(batch["keys"])
        if i + 1 == n:
            return out


@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_batches_and_exact_skip(version, collate, workers):
    first = _keys(make_loader(_stream(version, collate, workers), workers), 7)
    again = _keys(make_loader(_stream(version, collate, workers), workers), 7)
    assert first == again  # seeded
    resumed = _keys(make_loader(_stream(version, collate, workers, skip=3), workers), 4)
    assert resumed == first[3:]  # a resumed run sees the batches an uninterrupted run would have
    batch = next(iter(make_loader(_stream(version, collate, 0), 0)))
    assert batch["pixel_values"].shape == (4, 2, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (4, 2) and torch.all(batch["labels"].sum(1) == 1)
    assert batch["input_ids"].shape[0] == 4 and torch.all(batch["weights"] <= 1)


def test_epoch_mode_splits_shards_over_workers(version, collate):
    def stream(shards, workers):
        return TrainPairStream(shards, 4, collate, ImageSpec(32, 32), seed=0, shuffle_buffer=1, shuffle_initial=1,
                                 resampled=False, draft=True, num_workers=workers)
    shards = split_shards(version, "train")  # 4 shards x 10 samples; each of 2 workers gets 2 per epoch
    keys = [k for batch in _keys(make_loader(stream(shards, 2), 2), 10) for k in batch]
    assert sorted(keys) == sorted(f"tr{i:06d}" for i in range(40))  # one epoch: every sample exactly once
    # fix39e: an epoch is cut by samples, not shards: one shard of 10 gives each of 2 workers 5 of its samples
    keys = [k for batch in _keys(make_loader(stream(shards[:1], 2), 2), 2) for k in batch]
    assert len(keys) == len(set(keys)) == 8 and {k[:-1] for k in keys} == {"tr00000"}


def test_eval_stream_reads_everything_once(version, collate):
    stream = EvalPairStream(split_shards(version, "validation_unique"), 3, collate, ImageSpec(32, 32), True)
    keys = [k for b in make_loader(stream, 2) for k in b["keys"]]
    assert len(keys) == len(set(keys)) == 10 and all(k.endswith("_u") for k in keys)


def test_fast_tar_reader_equals_webdataset(version):
    urls = [{"url": str(p)} for p in split_shards(version, "train")]
    ours = list(tar_samples(iter(urls)))
    theirs = list(wds.tarfile_to_samples()(iter(urls)))
    assert len(ours) == 40
    assert [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in ours] == \
           [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in theirs]
