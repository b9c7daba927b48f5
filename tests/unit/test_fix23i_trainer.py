"""The fix of review rev23i's trainer defects (tests/unit/test_hostile_rev23i.py), beyond the review's own tests:
"finished" is one fact the trainer keeps (``metrics.json`` and no ``training.json``, written before a training
changes the model and removed after its ``metrics.json``), what was published about a model goes when a training
that changes it starts, a stage that wrote about a model that changed meanwhile keeps nothing, an ``init_from``
inside what the training replaces is refused, a stored ``max_length=1`` loads but is not trained with again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from formats.home import DataHome
from training import evaluate, runs
from training import train as train_module
from training.config import TRAINING_FILE, TrainConfig, remove_run_path
from training.synthetic import tiny_config, write_synthetic_version
from training.train import train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


class Killed(Exception):
    """Stands for the trainer's process being killed at a chosen point."""


def _home(tmp_path: Path) -> tuple[DataHome, Path, Path]:
    home = DataHome.at(tmp_path / "home")
    version_dir = home.root / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version_dir, SIZES, image_px=32, seed=1, shards_per_split=2)
    return home, version_dir, runs.run_dir(home, version_dir)


def test_a_finished_run_rerun_at_its_max_steps_stays_evaluated(tmp_path):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    assert not (run / TRAINING_FILE).exists()
    runs.evaluate_latest(home)
    published = (run / runs.EVAL_FILE).read_bytes()
    result = train(recipe)                       # the model is not changed: it only evaluates again
    assert result.resumed_from_step == 1 and not (run / TRAINING_FILE).exists()
    assert runs.is_evaluated(home) and (run / runs.EVAL_FILE).read_bytes() == published


def test_a_kill_between_metrics_json_and_the_end_of_the_record_leaves_the_run_unfinished(tmp_path, monkeypatch):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    runs.evaluate_latest(home)

    def killed(*_args, **_kwargs):
        raise Killed()

    with monkeypatch.context() as patched:
        patched.setattr(train_module, "write_curve", killed)   # metrics.json of the extension written, then killed
        with pytest.raises(Killed):
            train(recipe.replace(max_steps=2))
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2 and (run / TRAINING_FILE).is_file()
    assert not (run / runs.EVAL_FILE).exists()   # removed when the extension started
    with pytest.raises(ValueError, match=f"did not finish .*{TRAINING_FILE}"):
        runs.trained_model(home)
    result = train(recipe.replace(max_steps=2))   # at its max_steps: evaluates, writes metrics.json, finishes
    assert result.resumed_from_step == 2 and not (run / TRAINING_FILE).exists()
    assert runs.trained_model(home)[1] == run / "best" and not runs.is_evaluated(home)


def test_an_evaluation_whose_model_changed_meanwhile_is_not_kept(tmp_path, monkeypatch):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1)
    train(recipe)
    real = evaluate.evaluate_model

    def racing(*args, **kwargs):
        result = real(*args, **kwargs)                   # the evaluation of the model that was finished
        train(recipe.replace(max_steps=2))               # meanwhile a training extends and finishes the run
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", racing)
    with pytest.raises(ValueError, match="changed while eval.json was written"):
        runs.evaluate_latest(home)
    assert not (run / runs.EVAL_FILE).exists() and not runs.is_evaluated(home)


def test_an_init_from_inside_what_the_training_replaces_is_refused(tmp_path):
    home, version_dir, run = _home(tmp_path)
    train(tiny_config(version_dir, run, max_steps=1, eval_every=1))
    remove_run_path(run / "checkpoints")    # no checkpoint: a new run, which writes best/ at its step 0
    weights = (run / "best" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"init_from .*/best lies inside .*best, which this training replaces"):
        train(tiny_config(version_dir, run, max_steps=1, eval_every=1, init_from=str(run / "best")))
    assert (run / "best" / "model.safetensors").read_bytes() == weights and not (run / TRAINING_FILE).exists()


def test_a_stored_max_length_1_loads_but_is_not_trained_with_again(tmp_path):
    values = TrainConfig(max_length=2).to_dict()
    values["max_length"] = 1
    (tmp_path / "train_config.json").write_text(json.dumps(values))
    stored = TrainConfig.load(tmp_path, resolve=False)
    assert stored.max_length == 1 and stored.replace(seed=3).max_length == 1
    with pytest.raises(ValueError, match="max_length=1 leaves no room for the start and end of text tokens"):
        stored.check_new_run()
    with pytest.raises(ValueError, match=r"max_length = 1 .*out of range"):
        TrainConfig(**values)                           # a new recipe: the field's range


def test_a_train_config_that_is_no_object_or_nests_too_deeply_is_refused_naming_it(tmp_path):
    (tmp_path / "train_config.json").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="stored as a JSON object, not list"):
        TrainConfig.load(tmp_path)
    (tmp_path / "train_config.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    with pytest.raises(ValueError, match=f"{tmp_path / 'train_config.json'} is not valid JSON: it nests"):
        TrainConfig.load(tmp_path)
