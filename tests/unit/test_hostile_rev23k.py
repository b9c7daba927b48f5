"""Hostile review rev23k of commit f8321e4 (the fix of review rev23i's trainer defects): the ``training.json``
marker of a run whose model is changing, "finished" as metrics.json without training.json/diverged.json, the
derived outputs (config.DERIVED_OUTPUTS) removed when a model-changing training starts, and
``runs.publishing_for_model``, which discards what an evaluation / leaderboard / best-of-n stage wrote when the
run is no longer "the same finished training" (its metrics.json's device, inode, size and mtime) afterwards.
Every test drives the real trainer (tiny synthetic version) and the real evaluation.

Each test reproduced a defect confirmed by running it (a strict xfail when the review filed it); all five were
fixed the same day (fix23k, README section 8).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from formats.home import DataHome
from training import evaluate, runs
from training import train as train_module
from training.config import TRAINING_FILE
from training.synthetic import tiny_config, write_synthetic_version
from training.train import train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


class Killed(Exception):
    """Stands for the trainer's process being killed at a chosen point."""


def _home(tmp_path: Path, seed: int = 1) -> tuple[DataHome, Path, Path]:
    home = DataHome.at(tmp_path / "home")
    version_dir = home.root / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version_dir, SIZES, image_px=32, seed=seed, shards_per_split=2)
    return home, version_dir, runs.run_dir(home, version_dir)


def test_a_stale_evaluation_deletes_the_eval_json_a_concurrent_current_evaluation_published(tmp_path, monkeypatch):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    real = evaluate.evaluate_model
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)            # A: the evaluation of the model that was finished
        if len(calls) == 1:
            train(recipe.replace(max_steps=2))    # meanwhile a training extends and finishes the run
            runs.evaluate_latest(home)            # B: evaluates the new model, publishes eval.json, succeeds
            assert runs.is_evaluated(home)
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", racing)
    with pytest.raises(ValueError, match="changed while eval.json was written"):
        runs.evaluate_latest(home)                 # A: discarded, as it should be
    assert runs.is_evaluated(home), "B's eval.json of the current model must survive A's discard"


def test_a_rerun_that_only_evaluates_again_makes_a_concurrent_evaluation_delete_a_correct_eval_json(tmp_path,
                                                                                                   monkeypatch):
    home, version_dir, run = _home(tmp_path, seed=1)   # data on which best/ moves on when extended (model code 6)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    runs.evaluate_latest(home)
    weights = (run / "best" / "model.safetensors").read_bytes()
    real = evaluate.evaluate_model

    def racing(*args, **kwargs):
        result = real(*args, **kwargs)
        train(recipe)                              # the nightly's rerun at the same max_steps: model unchanged
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", racing)
    try:
        runs.evaluate_latest(home)
    except ValueError:
        pass
    assert (run / "best" / "model.safetensors").read_bytes() == weights   # the model did not change
    assert runs.is_evaluated(home), "eval.json of the unchanged model was deleted"


def test_a_previous_trainers_run_killed_mid_extension_is_not_finished_and_keeps_no_stale_eval_json(tmp_path,
                                                                                                  monkeypatch):
    home, version_dir, run = _home(tmp_path, seed=1)   # data on which best/ moves on when extended (model code 6)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    runs.evaluate_latest(home)
    stale_eval = (run / runs.EVAL_FILE).read_bytes()
    weights = (run / "best" / "model.safetensors").read_bytes()
    real_write = train_module.write_bytes_atomic

    def killed_at_metrics(path, *args, **kwargs):
        if Path(path).name == "metrics.json":
            raise Killed()
        return real_write(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(train_module, "write_bytes_atomic", killed_at_metrics)
        with pytest.raises(Killed):
            train(recipe.replace(max_steps=8))
    # the previous trainer wrote no training.json and removed no eval.json: its folder, as it left it
    (run / TRAINING_FILE).unlink()
    (run / runs.EVAL_FILE).write_bytes(stale_eval)
    assert (run / "best" / "model.safetensors").read_bytes() != weights   # best/ moved on past metrics.json
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1
    finished_before = runs.is_evaluated(home)
    train(recipe.replace(max_steps=8))             # the upgraded trainer finishes the extension
    evaluated_after = runs.is_evaluated(home)
    assert (finished_before, evaluated_after) == (False, False), (
        "a model past metrics.json's steps was counted finished and evaluated, and once the extension finished "
        "eval.json of the step-1 model stayed beside the step-8 model")


def _simulated_truth(home: DataHome, version_dir: Path) -> None:
    """A test_unique sidecar and the simulator's ground truth for it (what best-of-n reads), as in
    tests/unit/test_best_of_n.py."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simulator import world

    targets = world.draw_attributes(3, np.random.default_rng(4))
    captions = [world.compose_prompt(*t[:6]) for t in targets]
    pq.write_table(pa.table({"prompt_key": [c.lower() for c in captions], "caption": captions,
                             "image_0_uid": [f"uid{i}" for i in range(3)]}),
                   version_dir / "test_unique" / "pickapic-test_unique-000000.parquet")
    truth = home.root / "ground_truth"
    truth.mkdir(exist_ok=True)
    pq.write_table(pa.table({"image_uid": [f"uid{i}" for i in range(3)],
                             **{f"target_{a}": targets[:, k].astype(np.int8) for k, a in enumerate(world.ATTRIBUTES)}}),
                   truth / "images.parquet")
    (truth / "summary.json").write_text(json.dumps({"config": {"image_size": 32}}))


def test_best_of_n_by_hand_into_a_run_still_training_is_refused(tmp_path, monkeypatch):
    from simulator import best_of_n as bon

    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    real_write = train_module.write_bytes_atomic

    def killed_at_metrics(path, *args, **kwargs):
        if Path(path).name == "metrics.json":
            raise Killed()
        return real_write(path, *args, **kwargs)

    with monkeypatch.context() as patched:     # an extension that is still running (here: stopped before its end)
        patched.setattr(train_module, "write_bytes_atomic", killed_at_metrics)
        with pytest.raises(Killed):
            train(recipe.replace(max_steps=2))
    assert (run / TRAINING_FILE).is_file()
    _simulated_truth(home, version_dir)
    refused = None
    try:
        bon.main(["--home", str(home.root), "--model", str(run / "best"), "--n", "2", "--device", "cpu"])
    except (ValueError, FileNotFoundError, SystemExit) as exc:
        refused = exc
    assert refused is not None and not (run / "best_of_n").exists(), "best_of_n/ written about a model mid-training"


def test_an_evaluation_killed_between_its_write_and_its_check_leaves_no_stale_eval_json(tmp_path):
    import os

    home, version_dir, run = _home(tmp_path, seed=1)   # data on which best/ moves on when extended (model code 6)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    weights = (run / "best" / "model.safetensors").read_bytes()
    pid = os.fork()
    if pid == 0:   # the evaluation stage's process
        code = 1
        try:
            real_eval, real_write = evaluate.evaluate_model, runs.write_bytes_atomic

            def racing(*args, **kwargs):
                result = real_eval(*args, **kwargs)      # the evaluation of the model that was finished
                train(recipe.replace(max_steps=8))       # meanwhile a training extends and finishes the run
                return result

            def write_then_killed(*args, **kwargs):
                real_write(*args, **kwargs)
                os._exit(9)                              # SIGKILL right after the write: no finally clause runs

            evaluate.evaluate_model, runs.write_bytes_atomic = racing, write_then_killed
            runs.evaluate_latest(home)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8 and not (run / TRAINING_FILE).exists()
    assert (run / "best" / "model.safetensors").read_bytes() != weights   # the model eval.json describes is gone
    assert not runs.is_evaluated(home), "eval.json of the step-1 model is published beside the finished step-8 run"
