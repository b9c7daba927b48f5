"""The fix of review rev23e's trainer defects (tests/unit/test_hostile_rev23e.py), beyond the review's own tests:
a diverged run is recorded (``diverged.json``), refused when rerun unchanged and trained over when its recipe
changed; the final evaluation is checked too; metrics.json is strict JSON; a diverged or unfinished run is no
model (evaluation, leaderboard, retention); stored recipes skip the rules for new runs; denormal float settings
are refused; the leaderboard scores with the run's max_length and gives a NaN score no vote."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from formats.home import DataHome
from training import leaderboard, runs
from training import train as train_module
from training.config import DIVERGED_FILE, TrainConfig, recorded_max_length
from training.evaluate import score_split
from training.leaderboard import bradley_terry, generator_leaderboard, leaderboard_from_outcomes, scorer_outcomes
from training.model import PairScorer, load_model
from training.scoring import Scorer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import TrainingDiverged, train

SIZES = {"train": 48, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 8}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fix23e") / "home" / "datasets" / "pickapic" / "v1"
    write_synthetic_version(root, SIZES, image_px=32, seed=1, shards_per_split=2)
    return root.parent / "latest"


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds a bare {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ divergence record
def test_a_diverged_run_is_refused_unchanged_in_one_line_and_trained_over_when_its_recipe_changed(version, tmp_path):
    run = tmp_path / "run"
    # seed 43: a run whose weights grow too large to score by its step-3 evaluation (with the default seed and the
    # full-size scratch vocabulary of fix33f, the loss turns NaN at step 2 instead)
    diverging = tiny_config(version, run, max_steps=3, eval_every=3, learning_rate=1e3, grad_clip=0.0, seed=43)
    with pytest.raises(TrainingDiverged, match="training diverged at step 3: .*validation_unique score NaN"):
        train(diverging)
    record = json.loads((run / DIVERGED_FILE).read_text())
    assert record["step"] == 3 and record["recipe"]["learning_rate"] == 1e3
    assert not (run / "metrics.json").exists()
    (run / "notes.txt").write_text("mine\n")            # not the trainer's: never removed
    before = _snapshot(run)
    for same in (diverging, diverging.replace(cpu_threads=2, log_every=3, eval_batch_size=5)):   # no recipe change
        with pytest.raises(ValueError, match=r"diverged at step 3 .*; change learning_rate") as refused:
            train(same)
        assert "\n" not in str(refused.value) and not isinstance(refused.value, TrainingDiverged)
        assert _snapshot(run) == before                  # refused at once: nothing read, written or trained
    events: list[dict] = []
    result = train(diverging.replace(learning_rate=1e-3), on_event=events.append)
    assert result.resumed_from_step == 0 and result.steps == 3
    assert [e["changed"] for e in events if e["event"] == "restart"] == [["learning_rate"]]
    assert not (run / DIVERGED_FILE).exists() and (run / "notes.txt").read_text() == "mine\n"
    metrics = _strict_json(run / "metrics.json")
    assert metrics["config"]["learning_rate"] == 1e-3 and [h["step"] for h in metrics["history"] if "val_accuracy" in h] == [0, 3]
    assert TrainConfig.load(run / "init").learning_rate == 1e-3   # init/ built again for the new recipe


def test_a_non_finite_final_evaluation_of_the_best_checkpoint_stops_the_run(version, tmp_path, monkeypatch):
    calls: list[str] = []
    checked = train_module._non_finite

    def non_finite(scores, split):   # the 4th evaluation is the best checkpoint's on test_split
        calls.append(split)
        return "injected: 1 of the pairs scores NaN" if len(calls) == 4 else checked(scores, split)

    monkeypatch.setattr(train_module, "_non_finite", non_finite)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d: the best checkpoint's \(step \d\) final "
                                               "evaluation: injected"):
        train(tiny_config(version, run, max_steps=2, eval_every=2))
    assert calls == ["validation_unique", "validation_unique", "validation_unique", "test_unique"]
    assert not (run / "metrics.json").exists() and (run / DIVERGED_FILE).is_file()


def test_a_divergence_record_the_trainer_did_not_write_is_refused(version, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / DIVERGED_FILE).write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="is not a divergence record this trainer wrote"):
        train(tiny_config(version, run, max_steps=1, eval_every=1))
    assert not (run / "init").exists()


# ------------------------------------------------------------------------------------------ unfinished runs
def _run_folder(home: DataHome, name: str) -> Path:
    run = runs.runs_folder(home) / name
    for sub in ("init", "best", "checkpoints/last"):
        (run / sub).mkdir(parents=True, exist_ok=True)
        (run / sub / "train_config.json").write_text("{}\n")
    return run


def test_a_run_that_did_not_finish_or_diverged_is_no_model(tmp_path):
    home = DataHome.at(tmp_path / "home")
    version_dir = home.root / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version_dir, SIZES, image_px=32, seed=1, shards_per_split=2)
    run = _run_folder(home, "v1")
    (run / runs.EVAL_FILE).write_text("{}\n")
    with pytest.raises(ValueError, match="no trained model for v1 .*did not finish \\(no metrics.json"):
        runs.trained_model(home)
    assert not runs.is_evaluated(home) and not runs._has_model(run)
    (run / "metrics.json").write_text("{}\n")
    assert runs.trained_model(home)[1] == run / "best" and runs.is_evaluated(home) and runs._has_model(run)
    (run / DIVERGED_FILE).write_text(json.dumps({"step": 7, "reason": "x", "recipe": {}}))
    with pytest.raises(ValueError, match="training diverged at step 7"):
        runs.rank_latest(home)
    assert not runs.is_evaluated(home) and not runs._has_model(run)


def test_retention_does_not_count_a_diverged_run_as_a_model(tmp_path):
    home = DataHome(tmp_path / "home")
    names = ["2023-03-01-0000000000", "2023-03-02-0000000000", "2023-03-03-0000000000"]
    for name in names:
        assert runs._record_run(home, name) is None
        (_run_folder(home, name) / "metrics.json").write_text("{}\n")
    (runs.runs_folder(home) / names[2] / DIVERGED_FILE).write_text("{}\n")
    result = runs.apply_run_retention(home, 1)
    # the diverged newest run stays without counting: the newest model (names[1]) is the one kept
    assert result.deleted == [names[0]] and sorted(os.listdir(runs.runs_folder(home))) == names[1:]


# ------------------------------------------------------------------------------------------ stored recipes
def test_a_stored_recipe_skips_the_new_run_rules_which_train_still_applies(version, tmp_path):
    folder = tmp_path / "best"
    folder.mkdir()
    values = tiny_config(version, tmp_path / "run").to_dict()
    values.update(eval_split="test", test_split="test_unique", learning_rate=1e-40)
    (folder / "train_config.json").write_text(json.dumps(values))
    stored = TrainConfig.load(folder)
    assert stored.stored and stored.replace(num_workers=2).stored and stored.learning_rate == 1e-40
    with pytest.raises(ValueError, match="learning_rate=1e-40 is below float32's smallest normal.*two different"):
        stored.check_new_run()
    with pytest.raises(ValueError, match="learning_rate=1e-40"):
        train(stored.replace(output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="two different held-out splits"):
        TrainConfig(eval_split="test", test_split="test_unique")   # a new config still is refused


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "adam_eps", "grad_clip", "contrastive_weight"])
def test_a_float_setting_float32_cannot_hold_as_a_normal_number_is_refused(field):
    with pytest.raises(ValueError, match=f"{field}=1e-40 is below float32's smallest normal"):
        TrainConfig(**{field: 1e-40})
    TrainConfig(**{field: 1.2e-38})
    if field not in ("learning_rate", "adam_eps"):   # settings that may be 0 (off)
        TrainConfig(**{field: 0.0})


def test_max_length_below_the_special_tokens_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"max_length = 1 .*out of range: allowed an integer, 2 <= value"):
        TrainConfig(max_length=1)
    assert TrainConfig(max_length=2).max_length == 2


# ------------------------------------------------------------------------------------------ scoring length
def test_the_recorded_max_length_of_a_checkpoint(tmp_path):
    assert recorded_max_length(tmp_path) is None          # no train_config.json: a downloaded checkpoint
    (tmp_path / "train_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a train_config.json this trainer wrote"):
        recorded_max_length(tmp_path)


def test_the_leaderboard_scores_a_run_checkpoint_with_the_run_max_length(version, tmp_path, monkeypatch):
    base = train(tiny_config(version, tmp_path / "base", max_steps=1, eval_every=1))
    tuned = train(tiny_config(version, tmp_path / "tuned", max_steps=1, eval_every=1, init_from=str(base.best_dir),
                              max_length=4))
    assert Scorer(tuned.best_dir, device="cpu").max_length == 4 and Scorer(base.best_dir, device="cpu").max_length == 77
    lengths: list[int | None] = []

    def scored(*args, **kwargs):
        lengths.append(kwargs.get("max_length"))
        return score_split(*args, **kwargs)

    monkeypatch.setattr(leaderboard, "score_split", scored)
    board = generator_leaderboard(version, tuned.best_dir, splits=("test_unique",), chart_path=tmp_path / "lb.png",
                                  num_workers=0, device="cpu")
    assert lengths == [4]
    clip, processor = load_model(tuned.best_dir)
    got = score_split(PairScorer(clip), processor, version, "test_unique", num_workers=0, max_length=4)
    expected = leaderboard_from_outcomes(got.model_0, got.model_1, got.labels[:, 0], scorer_outcomes(got.scores))
    assert board.scorer_elo == pytest.approx(expected.scorer_elo)


# ------------------------------------------------------------------------------------------ leaderboard NaN
def test_a_nan_score_gives_the_leaderboard_no_vote():
    nan, inf = float("nan"), float("inf")
    scores = np.array([[1.0, 0.0], [nan, 0.0], [0.0, inf], [0.0, 2.0], [0.5, 0.5]])
    np.testing.assert_array_equal(scorer_outcomes(scores), [1.0, nan, nan, 0.0, 0.5])
    m0, m1 = ["A", "A", "B", "B", "A"], ["B", "B", "A", "A", "B"]
    with_nan = bradley_terry(["A", "B"], m0, m1, scorer_outcomes(scores))
    without = bradley_terry(["A", "B"], [m0[i] for i in (0, 3, 4)], [m1[i] for i in (0, 3, 4)],
                            scorer_outcomes(scores[[0, 3, 4]]))
    assert with_nan == pytest.approx(without)
    assert scorer_outcomes(np.array([[1000.0, -1000.0]]))[0] == 1.0   # finite, far apart: no overflow warning
