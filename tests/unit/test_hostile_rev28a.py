"""Hostile review rev28a: the CLIP preference trainer and its use (``training/``: train, data, loss, metric, evaluate,
runs, config, model, scoring, score_cli, rerank, leaderboard; the Dagster ``preference_model`` /
``preference_model_eval`` assets).

Run for real: ``pickapic demo``'s published shards and tiny synthetic versions in the publish layout
(``write_synthetic_version``), the real trainer (``training.train.train``), ``training.runs.train_latest`` /
``evaluate_latest`` (what the model assets call), a real Dagster materialization of ``preference_model`` and the
``pickapic score`` / ``rerank`` commands.

Reviewed and found sound (no test here): a run killed after a checkpoint and rerun gives bit-identical weights of
``best/`` and ``checkpoints/last/`` and the same history and test metrics as an uninterrupted one (0, 1 and 2 loader
workers, resampled and epoch mode, on the demo's real shards); the demo version's splits share no prompt, user or
image with train, and its ``prompt_counts.parquet`` agrees with the shards; the tokenizer is trained on train
captions only; the tie-aware metric, the threshold choice (smallest best) and the random baseline follow the paper;
a version whose validation_unique / test_unique hold only ties trains and reports 1.0 at t = 1 with a 1.0 baseline;
run files honour umask 022; a 2-process gloo DDP run killed after a checkpoint and resumed gives the same weights and
history; the scratch BPE tokenizer is identical across processes; ``pickapic train --output-dir`` inside a published
version is refused; ``pickapic score`` with a UTF-8 byte-order mark in a CSV header, a NUL byte or a 5,000-byte image
path, and a ``prompt_id`` of two JSON types gives rows or one-line errors, and so do ``--candidates /dev/null``, ``--model /dev/null``, ``--processor /proc``,
``--output /dev/stdout`` and an image ``/proc/self/environ``; ``rerank`` and ``score --output`` files honour umask.

Each test below reproduces a defect confirmed by running it (strict xfails when filed; all nine fixed the same day by
fix28a, `tests/unit/test_fix28a.py`, and the tests now pass as plain tests).
"""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from formats import dataset
from formats.home import DataHome
from training import runs
from training.data import ImageSpec, PairCollator
from training.model import train_tokenizer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import TrainingDiverged, train

SIZES = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}
VERSION = "2023-03-01-0000000000"


def _version(home_root: Path) -> Path:
    return write_synthetic_version(home_root / "datasets" / "pickapic" / VERSION, SIZES, image_px=32,
                                   shards_per_split=2).version_dir


def _rewrite_split(split_dir: Path, change) -> None:
    """Rewrite every sample of the split's shards with ``change(sample)`` and record the new bytes in the version's
    manifest: a version a faulty (or hostile) publisher wrote, whose checksums all agree."""
    for tar in sorted(split_dir.glob("*.tar")):
        samples: list[dict] = []
        with tarfile.open(tar) as source:
            for member in source.getmembers():
                key, ext = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][ext] = source.extractfile(member).read()
        with wds.TarWriter(str(tar), encoder=False, mtime=0) as sink:
            for sample in samples:
                sink.write(change(sample))
    manifest_path = split_dir.parent / dataset.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = dataset.manifest_files(split_dir.parent)
    manifest_path.write_text(json.dumps(manifest))


def _set_meta(**values):
    def change(sample: dict) -> dict:
        meta = json.loads(sample["json"])
        meta.update(values)
        sample["json"] = json.dumps(meta).encode()
        return sample
    return change


TINY = {"max_steps": 4, "eval_every": 2}


# ------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("where", ["someones_folder", "published_version"])
def test_the_model_asset_never_trains_into_a_folder_it_did_not_create(tmp_path, where):
    import dagster as dg

    from dagster_project.assets.model import preference_model
    from dagster_project.resources import PickapicHome

    home = tmp_path / "home"
    version_dir = _version(home)
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    (mine / "best" / "thesis.txt").write_text("my only copy\n")
    (mine / "metrics.json").write_text("my own metrics\n")
    target = mine if where == "someones_folder" else version_dir
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    config = {"output_dir": str(target), "image_size": 32, "patch_size": 8, "text_width": 32, "vision_width": 32,
              "layers": 1, "heads": 2, "projection_dim": 32, "tokenizer_vocab_size": 600, "batch_size": 8,
              "max_steps": 2, "warmup_steps": 1, "eval_every": 2, "num_workers": 0, "shuffle_buffer": 40,
              "shuffle_initial": 10, "device": "cpu", "cpu_threads": 1}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([preference_model], instance=instance, raise_on_error=False,
                                resources={"data_home": PickapicHome(root=str(home))},
                                run_config={"ops": {"preference_model": {"config": config}}})
    assert not result.success
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert (mine / "best" / "thesis.txt").read_text() == "my only copy\n"
    assert (mine / "metrics.json").read_text() == "my own metrics\n"


# ------------------------------------------------------------------------------------------ leakage
def test_the_evaluation_asset_never_reports_accuracy_on_the_split_the_checkpoint_was_chosen_on(tmp_path):
    home = DataHome.at(tmp_path / "home")
    _version(home.root)
    trained = runs.train_latest(home, tiny_config("", "", eval_split="test_unique", test_split="validation_unique",
                                                  **TINY))
    recorded = json.loads(trained.result.metrics_path.read_text())["test"]
    assert (recorded["split_for_threshold"], recorded["split"]) == ("test_unique", "validation_unique")
    try:
        result, path = runs.evaluate_latest(home)
    except ValueError as err:
        assert "split" in str(err)
        return
    assert (result.split_for_threshold, result.split) == ("test_unique", "validation_unique")
    assert json.loads(path.read_text())["split"] == "validation_unique"


# ------------------------------------------------------------------------------------------ hostile shards
@pytest.mark.parametrize("labels", [(3.0, -2.0), (math.nan, math.nan)], ids=["not-a-distribution", "nan"])
def test_a_train_label_that_is_not_a_preference_is_refused_as_bad_data(tmp_path, labels):
    version_dir = _version(tmp_path / "home")
    _rewrite_split(version_dir / "train", _set_meta(label_0=labels[0], label_1=labels[1]))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="label") as caught:
        train(tiny_config(version_dir, run, **TINY))
    assert not isinstance(caught.value, TrainingDiverged)
    assert not (run / "metrics.json").exists() and not (run / "diverged.json").exists()


def _bad_count(sample: dict) -> dict:
    return _set_meta(num_example_per_prompt="3")(sample)


def _bad_jpeg(sample: dict) -> dict:
    sample["0.jpg"] = b"not a jpeg"
    return sample


def _json_array(sample: dict) -> dict:
    sample["json"] = b"[1, 2]"
    return sample


def _bad_caption(sample: dict) -> dict:
    sample["txt"] = b"\xff\xfe a red cube"
    return sample


@pytest.mark.parametrize("change", [_bad_count, _bad_jpeg, _bad_caption, _json_array],
                         ids=["count-as-text", "jpeg", "caption", "json-array"])
def test_a_malformed_train_sample_fails_naming_its_shard_and_key(tmp_path, change):
    version_dir = _version(tmp_path / "home")
    _rewrite_split(version_dir / "train", change)
    with pytest.raises(Exception) as caught:
        train(tiny_config(version_dir, tmp_path / "run", **TINY))
    message = str(caught.value)
    assert isinstance(caught.value, ValueError), f"{type(caught.value).__name__}: {message}"
    assert "pickapic-train-" in message and "tr0000" in message, message


class _Recording:
    """A tokenizer that records the longest text it was given (bytes), then tokenizes as the real one."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest, *(len(t.encode("utf-8")) for t in texts)])
        return self.tokenizer(texts, **kwargs)


def test_a_huge_caption_is_never_tokenized_whole():
    tokenizer = _Recording(train_tokenizer(["a red cube", "two blue circles", "a green tree"] * 20, 600))
    collate = PairCollator(tokenizer, 77)
    buffer = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="JPEG")
    caption = ("a red cube " * 100_000)[:1 << 20]
    sample = {"__key__": "tr000001", "__url__": "pickapic-train-000000.tar", "0.jpg": buffer.getvalue(),
              "1.jpg": buffer.getvalue(), "txt": caption.encode(),
              "json": json.dumps({"caption": caption, "label_0": 1.0, "label_1": 0.0,
                                  "num_example_per_prompt": 1}).encode()}
    try:
        batch = collate([sample], ImageSpec(32, 32), draft=False)
    except ValueError as err:
        assert "tr000001" in str(err)
        return
    assert batch["input_ids"].shape[1] <= 77
    assert tokenizer.longest <= 64 * 1024


# ------------------------------------------------------------------------------------------ versions
def test_a_model_run_folder_always_holds_a_model_of_its_own_version(tmp_path):
    home = DataHome.at(tmp_path / "home")
    old = write_synthetic_version(home.root / "datasets" / "pickapic" / "2023-03-01-0000000000", SIZES, image_px=32,
                                  shards_per_split=2).version_dir
    new = write_synthetic_version(home.root / "datasets" / "pickapic" / "2023-03-02-0000000000", SIZES, image_px=32,
                                  shards_per_split=2, seed=5).version_dir
    try:
        trained = runs.train_latest(home, tiny_config(str(old), "", max_steps=2, eval_every=2))
    except ValueError:
        assert not runs.run_dir(home, new).exists()
        return
    trained_on = json.loads(trained.result.metrics_path.read_text())["data_version_dir"]
    assert trained_on.rsplit("/", 1)[-1] == trained.result.output_dir.name
    runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2))   # the weekly training of latest


# ------------------------------------------------------------------------------------------ best-of-n by hand
def _simulated_home(root: Path) -> tuple[Path, Path]:
    """A home whose `latest` holds test_unique sidecars the simulator's ground truth knows, and a tiny model."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simulator import world
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint

    version_dir = _version(root)
    targets = world.draw_attributes(3, np.random.default_rng(4))
    captions = [world.compose_prompt(*t[:6]) for t in targets]
    pq.write_table(pa.table({"prompt_key": [c.lower() for c in captions], "caption": captions,
                             "image_0_uid": [f"uid{i}" for i in range(3)]}),
                   version_dir / "test_unique" / "pickapic-test_unique-000000.parquet")
    (root / "ground_truth").mkdir()
    pq.write_table(pa.table({"image_uid": [f"uid{i}" for i in range(3)],
                             **{f"target_{a}": targets[:, k].astype(np.int8) for k, a in enumerate(world.ATTRIBUTES)}}),
                   root / "ground_truth" / "images.parquet")
    (root / "ground_truth" / "summary.json").write_text(json.dumps({"config": {"image_size": 32}}))
    clip, processor = build_model(tiny_config(version_dir, root / "unused"), iter_captions(version_dir, "train"))
    model = root.parent / "model" / "best"
    save_checkpoint(model, clip, processor)
    return version_dir, model


def test_best_of_n_by_hand_never_deletes_a_folder_it_did_not_create(tmp_path):
    from simulator.best_of_n import main

    _, model = _simulated_home(tmp_path / "home")
    mine = tmp_path / "mine"
    (mine / "candidates").mkdir(parents=True)
    (mine / "candidates" / "thesis.txt").write_text("my only copy\n")
    try:
        main(["--home", str(tmp_path / "home"), "--model", str(model), "--output", str(mine), "--n", "2",
              "--max-prompts", "1", "--device", "cpu"])
    except (SystemExit, ValueError):
        pass
    assert (mine / "candidates" / "thesis.txt").read_text() == "my only copy\n"
    assert sorted(p.name for p in mine.iterdir()) == ["candidates"]


# ------------------------------------------------------------------------------------------ pickapic score
def test_rows_whose_images_are_missing_cost_no_memory_per_row(tmp_path):
    import tracemalloc

    from schemas import get_schema
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint
    from training.score_cli import read_pairs_table, score_rows, write_rows
    from training.scoring import Scorer

    version_dir = _version(tmp_path / "home")
    clip, processor = build_model(tiny_config(version_dir, tmp_path / "unused"), iter_captions(version_dir, "train"))
    save_checkpoint(tmp_path / "model", clip, processor)
    scorer = Scorer(tmp_path / "model", device="cpu")

    def peak(rows: int) -> float:
        table = tmp_path / f"pairs{rows}.csv"
        table.write_text("prompt,image\n" + "a red cube,missing.png\n" * rows)
        tracemalloc.start()
        try:
            write_rows(score_rows(scorer, read_pairs_table(table)), get_schema("image_scores"),
                       tmp_path / f"scores{rows}.parquet")
            return tracemalloc.get_traced_memory()[1] / 1e6
        finally:
            tracemalloc.stop()

    small, large = peak(5_000), peak(45_000)
    assert large - small < 4.0, f"peak {small:.1f} MB for 5,000 rows, {large:.1f} MB for 45,000"


# ------------------------------------------------------------------------------------------ secrets
def test_a_credential_in_init_from_never_reaches_the_run_history(tmp_path, env_kept):
    import dagster as dg

    from dagster_project.assets.model import preference_model
    from dagster_project.build import use_home
    from dagster_project.resources import PickapicHome

    secret = "hf_Rev28aSecretToken"
    home = DataHome(tmp_path / "home")
    _version(home.root)
    settings = home.root / "pickapic.toml"
    settings.write_text(f'[train]\ninit_from = "https://alice:{secret}@huggingface.co/yuvalkirstain/PickScore_v1"\n'
                        'max_steps = 2\nnum_workers = 0\ndevice = "cpu"\n')
    settings.chmod(0o600)
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        result = dg.materialize([preference_model], instance=instance, raise_on_error=False,
                                resources={"data_home": PickapicHome(root=str(home.root))})
    assert not result.success
    holding = sorted(str(p.relative_to(home.dagster_home)) for p in home.dagster_home.rglob("*")
                     if p.is_file() and secret.encode() in p.read_bytes())
    assert holding == []
