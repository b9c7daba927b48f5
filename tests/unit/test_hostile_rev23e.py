"""Hostile review rev23e: the fixes of commit 10da926 (review rev23b's eight trainer defects: a non-finite loss
stops the run with ``TrainingDiverged``, ``prompt_counts.parquet`` checked against the manifest, ``num_workers``
no longer resumable, ``init/`` rebuilt when `latest` moved, ``max_length`` used by evaluation and ``Scorer``, the
held-out ``eval_split`` / ``test_split`` rule, no credit for NaN scores, float settings beyond float32 refused,
``max_steps`` below the checkpoint refused), attacked as production users meet them.

Every test runs the real trainer (``training.train.train``, and ``training.runs.train_latest`` /
``evaluate_latest``, the functions the Dagster model assets call) on a tiny synthetic published version.

Reviewed and found sound (no test here): a 2-process gloo DDP run with ``learning_rate=1e3`` stops on both ranks
with ``TrainingDiverged`` (no hang, no ``metrics.json``); an infinite loss with finite weights is caught before
the optimizer step; the divergence check adds no GPU sync (read, not timed: the logged loss was already read back
every step); the last checkpoint of the diverged runs tried holds finite AdamW moments; ``num_workers`` 0 and 1
train bit-identical weights (straight and resumed 0 -> 1, resampled and epoch mode); ``prompt_counts.parquet`` is
in every manifest the publish stage writes, and versions without it (``pickapic-wds/1``) skip the check; the
``_unique`` rule fits the five published splits and the defaults pass; the NaN rule leaves finite scores' credit,
ties and threshold choice unchanged; ``weight_decay=0`` and denormal-but-non-zero values pass.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from formats.home import DataHome
from training import runs
from training.data import split_shards, tar_samples
from training.evaluate import evaluate_model, score_split
from training.model import PairScorer, load_model
from training.scoring import Scorer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic published version (48 train pairs in 2 shards) in a home, through its `latest` link."""
    root = tmp_path_factory.mktemp("rev23e") / "home" / "datasets" / "pickapic" / "v1"
    write_synthetic_version(root, SIZES, image_px=32, seed=1, shards_per_split=2)
    return root.parent / "latest"


# ------------------------------------------------------------------------------------------ divergence
@pytest.mark.xfail(strict=True, reason=(
    "Divergence in the last steps is not caught: the loss is only checked before each optimizer step and the "
    "weights only for NaN/inf, so learning_rate=1e3 with max_steps=3 (rev23b's own setting, shorter) updates "
    "at step 3 to finite but huge weights whose validation scores are NaN (val_loss NaN, val_accuracy 0), "
    "there is no step 4 to see a NaN loss, and the run reports success: best = the untrained step-0 model, "
    "bare NaN in metrics.json (invalid JSON). Expected: non-finite evaluation scores stop the run with "
    "TrainingDiverged like a non-finite loss, no metrics.json."
))
def test_a_divergence_in_the_last_steps_stops_the_run_instead_of_reporting_success(version, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"(?i)diverg"):
        train(tiny_config(version, run, max_steps=3, eval_every=3, learning_rate=1e3, grad_clip=0.0))
    assert not (run / "metrics.json").exists()


@pytest.mark.xfail(strict=True, reason=(
    "A run stopped by TrainingDiverged cannot be finished the way its error says: 'lower learning_rate, "
    "weight_decay or contrastive_weight (or set grad_clip > 0)' and README 'checkpoints/last/ ... from which a "
    "rerun resumes'; but the rerun with the lowered learning_rate is refused as a changed recipe "
    "(config fields ['learning_rate'] differ), and the unchanged rerun resumes and diverges again at the same "
    "step. In the managed flow (train_latest, the preference_model asset) the run folder is fixed per "
    "version, so the version's model can never be trained. Expected: the rerun with the lowered "
    "learning_rate trains (from the last finite checkpoint or afresh) and writes metrics.json."
))
def test_a_diverged_run_can_be_rerun_with_the_lowered_learning_rate_its_error_advises(tmp_path):
    home = DataHome.at(tmp_path / "home")
    write_synthetic_version(home.root / "datasets" / "pickapic" / "v1", SIZES, image_px=32, seed=1,
                            shards_per_split=2)
    with pytest.raises(ValueError, match="learning_rate"):
        runs.train_latest(home, tiny_config("", "", max_steps=8, eval_every=2, learning_rate=1e3, grad_clip=0.0))
    trained = runs.train_latest(home, tiny_config("", "", max_steps=8, eval_every=2, learning_rate=1e-3,
                                                  grad_clip=0.0))
    metrics = json.loads(trained.result.metrics_path.read_text())
    assert metrics["steps"] == 8 and metrics["config"]["learning_rate"] == 1e-3


@pytest.mark.xfail(strict=True, reason=(
    "evaluate_latest (the preference_model_eval asset) and rank_latest (the leaderboard) take the best/ of "
    "`latest`'s run folder as 'the model trained on latest' without asking whether the run finished: after "
    "TrainingDiverged (no metrics.json by design, best/ kept) eval.json is written and reported for the "
    "untrained or half-trained model of a failed run. Expected: refused, naming the run that did not finish "
    "(no metrics.json)."
))
def test_the_evaluation_asset_refuses_the_model_of_a_run_that_diverged(tmp_path):
    home = DataHome.at(tmp_path / "home")
    version_dir = home.root / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version_dir, SIZES, image_px=32, seed=1, shards_per_split=2)
    with pytest.raises(ValueError, match=r"(?i)diverg"):
        runs.train_latest(home, tiny_config("", "", max_steps=8, eval_every=2, learning_rate=1e3, grad_clip=0.0))
    with pytest.raises((FileNotFoundError, ValueError), match=r"(?i)metrics|finish|diverg|no trained model"):
        runs.evaluate_latest(home)
    assert not (runs.run_dir(home, version_dir) / runs.EVAL_FILE).exists()


# ------------------------------------------------------------------------------------------ held-out splits
@pytest.mark.xfail(strict=True, reason=(
    "The held-out split rule lives in TrainConfig.__post_init__, so every train_config.json written before it "
    "with eval_split == test_split (or a split and its _unique subset) no longer loads: evaluate_model (the "
    "evaluation asset, pickapic evaluate) and simulator.best_of_n.untrained_model_dir crash with 'invalid "
    "TrainConfig: eval_split=... must be two different held-out splits' on an existing model, although the "
    "evaluation chooses its own splits and only reads max_length / init_from from the file. Expected: an "
    "existing model evaluates (the rule refuses new runs, not stored recipes)."
))
def test_a_model_trained_before_the_held_out_rule_still_evaluates(version, tmp_path):
    result = train(tiny_config(version, tmp_path / "run", max_steps=1, eval_every=1))
    stored = result.best_dir / "train_config.json"
    values = json.loads(stored.read_text())
    values.update(eval_split="test_unique", test_split="test_unique")   # as the trainer accepted until 10da926
    stored.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    evaluated = evaluate_model(result.best_dir, version, num_workers=0, device="cpu")
    assert evaluated.n_test == SIZES["test_unique"]


# ------------------------------------------------------------------------------------------ float32 range
@pytest.mark.xfail(strict=True, reason=(
    "The float32 check refuses only values above float32's range; a positive adam_eps below its smallest "
    "(1e-46) passes 'adam_eps > 0', rounds to 0 in the float32 optimizer, 0/0 turns the never-used weights "
    "NaN, and the run stops with TrainingDiverged after writing init/ and a step-0 checkpoint, advising to "
    "lower learning_rate; the corrected rerun is then refused as a changed recipe (adam_eps), the very "
    "sequence rev23b filed for learning_rate=1e300. Expected: refused up front naming adam_eps, nothing written."
))
def test_an_adam_eps_that_float32_rounds_to_zero_is_refused_before_anything_is_written(version, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="adam_eps"):
        train(tiny_config(version, run, max_steps=4, eval_every=2, adam_eps=1e-46))
    assert not (run / "checkpoints").exists() and not (run / "init").exists()


# ------------------------------------------------------------------------------------------ max_length
@pytest.mark.xfail(strict=True, reason=(
    "Scorer (pickapic score / rerank, best_of_n) truncates captions to the model's text positions (77) even "
    "for a run's best/ whose train_config.json records max_length=4, while the run's evaluation, metrics.json "
    "and evaluate_model truncate to 4: the scores users get differ from the scores the reported accuracy was "
    "measured with (by up to 2.5 logits here), and README's 'Scorer equals score_split' no longer holds for "
    "such a run. Expected: Scorer of a run's checkpoint truncates as the run did."
))
def test_scorer_scores_a_run_checkpoint_with_the_max_length_the_run_evaluated_with(version, tmp_path):
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1))       # 77 text positions
    tuned = train(tiny_config(version, tmp_path / "tuned", max_steps=1, eval_every=1, init_from=str(base.best_dir),
                              max_length=4))
    clip, processor = load_model(tuned.best_dir)
    evaluated = score_split(PairScorer(clip), processor, version, "test_unique", num_workers=0, bf16=False,
                            max_length=4)                        # as the run (and evaluate_model) scored it
    samples = {s["__key__"]: s for s in tar_samples({"url": str(p)} for p in split_shards(version, "test_unique"))}
    pairs = [(samples[k]["txt"].decode(), samples[k][f"{j}.jpg"]) for k in evaluated.keys for j in (0, 1)]
    rows = Scorer(tuned.best_dir, device="cpu").score_pairs(pairs, groups=[k for k in evaluated.keys for _ in (0, 1)])
    np.testing.assert_allclose(np.array([r.score for r in rows]).reshape(-1, 2), evaluated.scores, atol=1e-4)


@pytest.mark.xfail(strict=True, reason=(
    "max_length=1 passes the config (min 1) and the new check (1 <= the model's positions), but no caption "
    "fits in 1 token with its two special tokens, so the tokenizer does not truncate: a scratch run (1 text "
    "position) writes init/ and crashes in its step-0 evaluation inside transformers ('Sequence length must "
    "be less than max_position_embeddings'), and the corrected rerun is refused because init/ records "
    "max_length=1. Expected: max_length below 2 refused in one line naming it before anything is written, "
    "so the corrected rerun trains."
))
def test_a_max_length_too_short_for_the_special_tokens_is_refused_up_front(version, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="max_length"):
        train(tiny_config(version, run, max_steps=1, eval_every=1, max_length=1))
    assert train(tiny_config(version, run, max_steps=1, eval_every=1)).steps == 1
