"""Fixes of review rev23b (``tests/unit/test_hostile_rev23b.py``) beyond its own tests: the cases around them
(a ``*_unique`` split against its parent, a divergence caught in the weights, a lowered ``max_steps``, a finished
run rerun with other workers, ``max_length`` in scoring and against an ``init_from`` model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.evaluate import evaluate_model
from training.metric import choose_threshold
from training.scoring import Scorer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import TrainingDiverged, _check_finite_weights, train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fix23b") / "home" / "datasets" / "pickapic" / "v1"
    write_synthetic_version(root, SIZES, image_px=32, seed=1, shards_per_split=2)
    return root.parent / "latest"


@pytest.fixture(scope="module")
def short_run(version: Path, tmp_path_factory: pytest.TempPathFactory):
    """A finished scratch run with max_length=8 (its text tower takes 8 tokens), checkpoint at step 2."""
    return train(tiny_config(version, tmp_path_factory.mktemp("short") / "run", max_steps=2, eval_every=2,
                             max_length=8))


@pytest.mark.parametrize("splits", [dict(eval_split="validation", test_split="validation_unique"),
                                    dict(eval_split="test_unique", test_split="test")])
def test_a_unique_split_and_its_parent_are_not_two_held_out_splits(splits):
    with pytest.raises(ValueError, match="two different held-out splits"):
        TrainConfig(**splits)
    TrainConfig(eval_split="test_unique", test_split="validation_unique")   # swapped roles are fine


@pytest.mark.parametrize("field", ["weight_decay", "contrastive_weight", "grad_clip", "adam_eps"])
def test_every_float_setting_beyond_float32_is_refused(field):
    with pytest.raises(ValueError, match=f"{field}=.*float32"):
        TrainConfig(**{field: 1e39})
    TrainConfig(**{field: 1e38})


def test_non_finite_weights_stop_the_run_before_an_evaluation_or_checkpoint():
    layer = torch.nn.Linear(2, 2)
    _check_finite_weights(layer, 3)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="training diverged at step 3: 1 weight.*NaN or infinite.*weight"):
        _check_finite_weights(layer, 3)


def test_a_nan_score_never_wins_the_threshold_choice():
    scores = np.array([[np.nan, np.nan]] * 4)
    labels = np.array([[0.0, 1.0]] * 4)
    assert choose_threshold(scores, labels).accuracy == 0.0


def test_a_rerun_with_max_steps_below_the_checkpoint_is_refused_and_other_workers_may_reevaluate(short_run, version):
    config = tiny_config(version, short_run.output_dir, max_steps=2, eval_every=2, max_length=8)
    with pytest.raises(ValueError, match="max_steps=1: its checkpoint is at step 2"):
        train(config.replace(max_steps=1))       # metrics.json would report 2 steps of a 1-step run
    again = train(config.replace(num_workers=2))   # trains no further step: re-evaluates with any worker count
    assert again.steps == 2 and again.resumed_from_step == 2
    assert json.loads(short_run.metrics_path.read_text())["steps"] == 2


def test_a_short_max_length_model_is_scored_and_evaluated_with_its_own_length(short_run, version):
    scorer = Scorer(short_run.best_dir, device="cpu")
    assert scorer.max_length == 8
    assert scorer.embed_texts([" ".join(["red star blue circle"] * 10)]).shape[0] == 1   # far more than 8 tokens
    assert evaluate_model(short_run.best_dir, version, num_workers=0, device="cpu").n_test == SIZES["test_unique"]


def test_a_max_length_beyond_the_init_model_is_refused_naming_it(short_run, version, tmp_path):
    with pytest.raises(ValueError, match="max_length=9 is more than the 8 caption tokens"):
        train(tiny_config(version, tmp_path / "run", init_from=str(short_run.best_dir), max_length=9, max_steps=1))
    assert not (tmp_path / "run" / "checkpoints").exists()
