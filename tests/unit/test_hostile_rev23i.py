"""Hostile review rev23i of commit c16771a (fix23e, the answer to review rev23e): every evaluation's scores checked
for divergence, ``diverged.json`` (an unchanged rerun refused, a changed one trained over from step 0 after the
trainer's own outputs are removed), ``training.runs.trained_model`` / ``is_evaluated`` / retention counting only
finished runs (``metrics.json``, no ``diverged.json``), stored recipes skipping the new-run rules, denormal float
settings refused, ``recorded_max_length`` used by ``Scorer`` / ``evaluate_model`` / the leaderboard, ``max_length >= 2``.

Every test runs the real trainer (``training.train.train``) and the functions the Dagster model assets, the weekly
schedule and ``pickapic score`` call (``training.runs.evaluate_latest`` / ``trained_model`` / ``is_evaluated``,
``training.scoring.Scorer``, ``training.evaluate.evaluate_model``) on a tiny synthetic published version.

Reviewed and found sound (no test here). Run: an unchanged rerun (also with only ``eval_batch_size``,
``cpu_threads`` or ``log_every`` changed) is refused before anything is read or written; a kill in the middle of
the start-over (some outputs removed, the record not yet) is consistent: the record stays, so a rerun of the
diverged recipe is still refused and one with the changed recipe removes the rest and trains from step 0; a
linked or malformed ``diverged.json`` is refused in one line naming it; ``adam_eps=0``, ``adam_beta2=1.5`` and
NaN float settings are refused up front. Read, not run: a user's own files in the run folder survive the
start-over (only the trainer's names are removed); the run lock refuses a second trainer on the folder; the
recipe holds ``seed``, ``batch_size``, ``image_size``, ``max_steps`` and the resolved data version, so a change of
any starts over; retention keeps a diverged run without counting it and deletes it once enough finished runs are
newer; ``Scorer`` / ``generator_leaderboard`` / best-of-n given a folder by path check no ``metrics.json`` (a run
that still trains, a plain CLIP or PickScore folder without ``train_config.json`` score as before).

Each test reproduced a defect confirmed by running it (a strict xfail when the review filed it); all six were
fixed the same day (fix23i, README section 8).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from formats.home import DataHome
from training import runs
from training.config import DIVERGED_FILE, recorded_max_length
from training.evaluate import evaluate_model
from training.scoring import Scorer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import TrainingDiverged, read_divergence, train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic published version (48 train pairs in 2 shards) in a home, through its `latest` link."""
    root = tmp_path_factory.mktemp("rev23i") / "home" / "datasets" / "pickapic" / "v1"
    write_synthetic_version(root, SIZES, image_px=32, seed=1, shards_per_split=2)
    return root.parent / "latest"


def _home(tmp_path: Path) -> tuple[DataHome, Path, Path]:
    """A data home with one published version; (home, version folder, its run folder)."""
    home = DataHome.at(tmp_path / "home")
    version_dir = home.root / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version_dir, SIZES, image_px=32, seed=1, shards_per_split=2)
    return home, version_dir, runs.run_dir(home, version_dir)


class Killed(Exception):
    """Stands for the trainer's process being killed (a reboot, OOM, Ctrl-C) at a chosen point."""


# ------------------------------------------------------------------------------------------ published evaluation
def test_a_restarted_run_does_not_keep_the_removed_models_published_evaluation(tmp_path):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=2, eval_every=1, seed=1, learning_rate=100.0, grad_clip=0.0,
                         warmup_steps=0)
    train(recipe)                                      # finishes: metrics.json
    runs.evaluate_latest(home)                         # eval.json of that model
    runs.rank_latest(home)                             # leaderboard.png of that model
    assert runs.is_evaluated(home)
    with pytest.raises(TrainingDiverged):
        train(recipe.replace(max_steps=20))            # max_steps raised (a resumable field): the extension diverges
    events: list[dict] = []
    result = train(recipe.replace(max_steps=20, learning_rate=1e-3), on_event=events.append)   # the advised fix
    assert [e["event"] for e in events if e["event"] == "restart"] == ["restart"] and result.resumed_from_step == 0
    # the new model is trained, not evaluated: nothing in the run folder may describe the removed one
    assert not runs.is_evaluated(home)
    eval_json = run / runs.EVAL_FILE
    if eval_json.exists():
        assert json.loads(eval_json.read_text())["test_accuracy"] == result.test.test_accuracy
    assert not (run / "leaderboard.png").exists() or (run / "leaderboard.png").stat().st_mtime_ns >= \
        result.metrics_path.stat().st_mtime_ns


def test_a_finished_run_extended_and_killed_is_no_finished_model(tmp_path):
    home, version_dir, run = _home(tmp_path)
    recipe = tiny_config(version_dir, run, max_steps=1, eval_every=1, seed=1)
    train(recipe)
    runs.evaluate_latest(home)
    assert runs.is_evaluated(home)

    def kill_at_step_4(event: dict) -> None:
        if event.get("event") == "train" and event["step"] == 4:
            raise Killed()

    with pytest.raises(Killed):
        train(recipe.replace(max_steps=6), on_event=kill_at_step_4)   # checkpoint at step 3 written, then killed
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1   # the earlier finish's
    with pytest.raises(ValueError, match="(?i)finish"):
        runs.trained_model(home)
    assert not runs.is_evaluated(home)
    assert not runs._has_model(run)


# ------------------------------------------------------------------------------------------ start-over
def test_a_restart_from_the_diverged_runs_own_best_checkpoint_does_not_destroy_it(version, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_config(version, run, max_steps=12, eval_every=1, seed=1, learning_rate=100.0, grad_clip=0.0,
                         warmup_steps=0)
    with pytest.raises(TrainingDiverged):
        train(recipe)
    weights = (run / "best" / "model.safetensors").read_bytes()   # the last checkpoint whose evaluation was finite
    try:
        train(recipe.replace(learning_rate=1e-3, init_from=str(run / "best")))
    except (ValueError, FileNotFoundError):
        # refused: what it was to start from, and the record of the divergence, are all still there
        assert (run / "best" / "model.safetensors").read_bytes() == weights
        assert (run / DIVERGED_FILE).is_file() and (run / "checkpoints" / "last").is_dir()


def test_a_refused_rerun_of_a_diverged_run_removes_nothing(version, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_config(version, run, max_steps=3, eval_every=3, learning_rate=1e3, grad_clip=0.0)
    with pytest.raises(TrainingDiverged):
        train(recipe)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    with pytest.raises((ValueError, FileNotFoundError)):
        train(recipe.replace(learning_rate=1e-3, init_from=str(tmp_path / "no-such-model")))
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    with pytest.raises(ValueError, match="same recipe"):
        train(recipe)


# ------------------------------------------------------------------------------------------ stored recipes
def test_a_model_the_previous_trainer_finished_with_max_length_1_still_scores(version, tmp_path):
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1))
    tuned = train(tiny_config(version, tmp_path / "tuned", max_steps=1, eval_every=1, init_from=str(base.best_dir),
                              max_length=2))
    stored = tuned.best_dir / "train_config.json"          # as the trainer before c16771a wrote it for max_length=1
    values = json.loads(stored.read_text())
    values["max_length"] = 1
    stored.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    assert recorded_max_length(tuned.best_dir) == 1
    assert Scorer(tuned.best_dir, device="cpu").embed_texts(["a red cube, photo"]).shape[0] == 1
    result = evaluate_model(tuned.best_dir, version, num_workers=0, device="cpu", include_untrained=False)
    assert 0.0 <= result.test_accuracy <= 1.0


# ------------------------------------------------------------------------------------------ hostile run files
def test_a_deeply_nested_divergence_record_or_train_config_is_refused_naming_it(tmp_path):
    home, version_dir, run = _home(tmp_path)
    (run / "best").mkdir(parents=True)
    nested = "[" * 200_000 + "]" * 200_000
    (run / "best" / "train_config.json").write_text(nested)
    (run / "metrics.json").write_text("{}\n")
    (run / runs.EVAL_FILE).write_text("{}\n")
    (run / DIVERGED_FILE).write_text(nested)
    assert runs.is_evaluated(home) is False
    with pytest.raises(ValueError, match=DIVERGED_FILE):
        read_divergence(run)
    with pytest.raises(ValueError, match="train_config.json"):
        recorded_max_length(run / "best")
