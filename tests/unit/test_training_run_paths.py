"""A run folder's ``train_config.json`` files and ``metrics.json`` (and ``eval.json``) hold no absolute path of
the data home: paths inside it are stored relative to it, so a home can move or be read by another account.
Every reader (resume, evaluation, best-of-n's untrained model) works with that form and with the absolute
paths files written before hold."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from formats.home import DataHome
from simulator.best_of_n import untrained_model_dir
from training import runs
from training.config import CONFIG_FILE, TrainConfig, from_home, home_relative
from training.evaluate import evaluate_model
from training.synthetic import tiny_config, write_synthetic_version
from training.train import STATE_FILE, train

SIZES = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}
VERSION = "2023-03-01-0000000000"


def _home(root: Path) -> DataHome:
    home = DataHome(root)
    write_synthetic_version(home.datasets / VERSION, SIZES, image_px=32, shards_per_split=2)
    return home


def _run_files(run: Path) -> list[Path]:
    files = [run / "metrics.json", *(run / d / CONFIG_FILE for d in ("init", "best", "checkpoints/last"))]
    return [f for f in files if f.is_file()]


def test_run_files_store_home_relative_paths_and_the_home_can_move(tmp_path):
    home = _home(tmp_path / "home")
    trained = runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2))
    config, result = trained.config, trained.result
    run = result.output_dir
    assert run == home.models / "preference_model" / VERSION
    _, out = runs.evaluate_latest(home)
    files = [*_run_files(run), out]
    assert len(files) == 5
    for path in files:
        assert str(tmp_path) not in path.read_text(), path  # no absolute home path
    stored = json.loads((run / "best" / CONFIG_FILE).read_text())
    assert (stored["data_dir"], stored["output_dir"], stored["init_from"]) == (
        f"home:datasets/pickapic/{VERSION}", f"home:models/preference_model/{VERSION}", "scratch")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_version_dir"] == f"home:datasets/pickapic/{VERSION}"
    assert metrics["config"] == stored and metrics["test"]["model_dir"] == f"home:models/preference_model/{VERSION}/best"
    assert json.loads(out.read_text())["model_dir"] == f"home:models/preference_model/{VERSION}/best"
    assert torch.load(run / "checkpoints" / "last" / STATE_FILE, weights_only=True)["data_version_dir"] == (
        f"home:datasets/pickapic/{VERSION}")

    # a second run inside the home starting from the first one's model: init_from stored relative too
    tuned_dir = home.models / "tuned"
    tuned = train(tiny_config(home.datasets / "latest", tuned_dir, init_from=str(run / "best"), max_steps=2))
    assert json.loads((tuned_dir / "best" / CONFIG_FILE).read_text())["init_from"] == (
        f"home:models/preference_model/{VERSION}/best")
    assert str(tmp_path) not in tuned.metrics_path.read_text()

    # the home moves: every reader finds the paths under the new place
    moved = DataHome(tmp_path / "moved")
    (tmp_path / "home").rename(moved.root)
    run = moved.models / "preference_model" / VERSION
    loaded = TrainConfig.load(run / "best")
    assert (loaded.data_dir, loaded.output_dir) == (str(moved.datasets / VERSION), str(run))
    assert untrained_model_dir(run / "best") == run / "init"
    assert untrained_model_dir(moved.models / "tuned" / "best") == run / "best"
    again = evaluate_model(run / "best", moved.datasets / VERSION, num_workers=0)
    assert again.untrained_test_accuracy is not None  # the untrained model found through the stored output_dir
    resumed = train(config.replace(data_dir=str(moved.datasets / "latest"), output_dir=str(run), max_steps=4))
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    resumed_tuned = train(tiny_config(moved.datasets / "latest", moved.models / "tuned",
                                      init_from=str(run / "best"), max_steps=4))
    assert resumed_tuned.resumed_from_step == 2
    for path in _run_files(run):
        assert str(tmp_path) not in path.read_text(), path


def test_run_files_written_with_absolute_paths_are_still_read(tmp_path):
    """Files the trainer wrote before paths were stored relative: absolute paths, read as they are."""
    home = _home(tmp_path / "home")
    version = home.datasets / VERSION
    run = tmp_path / "home" / "models" / "old-run"
    config = tiny_config(version, run, max_steps=2, eval_every=2)
    train(config)
    for folder in ("init", "best", "checkpoints/last"):  # as the old trainer wrote them
        (run / folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")
    state_path = run / "checkpoints" / "last" / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    state["data_version_dir"] = str(version)
    torch.save(state, state_path)

    assert TrainConfig.load(run / "best") == config
    assert untrained_model_dir(run / "best") == run / "init"
    assert evaluate_model(run / "best", version, num_workers=0).untrained_test_accuracy is not None
    resumed = train(config.replace(max_steps=4))
    assert resumed.resumed_from_step == 2 and resumed.steps == 4


def test_a_run_outside_the_home_keeps_its_own_path_and_stores_the_data_relative(tmp_path):
    home = _home(tmp_path / "home")
    run = tmp_path / "elsewhere" / "run"
    train(tiny_config(home.datasets / "latest", run, max_steps=2, eval_every=2))
    stored = json.loads((run / "best" / CONFIG_FILE).read_text())
    assert stored["data_dir"] == "home:datasets/pickapic/latest" and stored["output_dir"] == str(run)
    assert str(home.root) not in (run / "metrics.json").read_text()
    assert evaluate_model(run / "best", home.datasets / VERSION, num_workers=0).untrained_test_accuracy is not None


def test_only_paths_inside_the_home_are_stored_relative_and_marked(tmp_path, monkeypatch):
    """Inside the home: ``home:<relative>``; outside: absolute (a working-directory-relative path meant
    nothing to a later reader and was joined to the home). Only marked paths are joined to the home again;
    a marked path with ``..`` or an absolute one is refused; a path as given in files written before paths
    were stored relative (``runs/x``, relative to the run's working directory) is read as it is."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (home / "models").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    assert home_relative(str(home / "models" / "run"), home) == "home:models/run"
    assert home_relative(str(home), home) == "home:."
    assert home_relative("ckpt/pickscore", home) == str(work / "sub" / "ckpt" / "pickscore")
    assert home_relative("../ckpt", home) == str(work / "ckpt")
    assert home_relative("scratch", home) == "scratch" and home_relative("", home) == ""
    assert home_relative("ckpt", None) == str(work / "sub" / "ckpt")   # no home: absolute too
    assert from_home("home:models/run", home) == str(home / "models" / "run")
    assert from_home(str(work / "ckpt"), home) == str(work / "ckpt")
    assert from_home("runs/x", home) == "runs/x"                       # an older file's path as given
    for bad in ("home:../elsewhere", "home:models/../../x", "home:/etc", "home:"):
        with pytest.raises(ValueError, match="is not a path inside the data home"):
            from_home(bad, home)

    run = home / "models" / "run"
    (run / "best").mkdir(parents=True)
    config = TrainConfig(data_dir=str(home / "datasets" / "pickapic" / VERSION), output_dir=str(run),
                         init_from="../ckpt")
    config.save(run / "best", home)
    stored = json.loads((run / "best" / CONFIG_FILE).read_text())
    assert (stored["data_dir"], stored["output_dir"], stored["init_from"]) == (
        f"home:datasets/pickapic/{VERSION}", "home:models/run", str(work / "ckpt"))
    monkeypatch.chdir(tmp_path)                                        # another working directory
    assert TrainConfig.load(run / "best", home=home) == config.replace(init_from=str(work / "ckpt"))
    # an older file (as given, relative to the old run's working directory): never joined to the home
    (run / "best" / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), "output_dir": "models/run",
                                                        "init_from": "ckpt/pickscore"}))
    loaded = TrainConfig.load(run / "best", home=home)
    assert (loaded.output_dir, loaded.init_from) == ("models/run", "ckpt/pickscore")
    (run / "best" / CONFIG_FILE).write_text(json.dumps({**stored, "init_from": "home:../../etc"}))
    with pytest.raises(ValueError, match="'home:../../etc' is not a path inside the data home"):
        TrainConfig.load(run / "best", home=home)
