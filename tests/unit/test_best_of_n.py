"""Best-of-n on simulated candidates: the group arithmetic, deterministic candidates, the whole run at small n."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from simulator import candidates as C
from simulator import world
from simulator.best_of_n import pick_utilities, run_best_of_n
from training.data import iter_captions
from training.model import build_model, save_checkpoint
from training.synthetic import tiny_config, write_synthetic_version


def test_pick_utilities_groups_and_ties():
    utility = np.array([[1.0, 4.0, 2.0, 3.0], [0.0, 0.0, 5.0, 1.0]])
    perfect = pick_utilities(utility, utility, 2)
    assert perfect["chosen"] == perfect["oracle"] == pytest.approx(np.mean([4, 3, 0, 5]))
    assert perfect["random"] == pytest.approx(utility.mean())
    worst = pick_utilities(utility, -utility, 4)
    assert worst["chosen"] == pytest.approx(np.mean([1.0, 0.0]))
    one = pick_utilities(utility, np.random.default_rng(0).normal(size=utility.shape), 1)
    assert one["chosen"] == one["random"] == one["oracle"]  # best-of-1 gains nothing, whatever the scorer
    tied = pick_utilities(utility, np.zeros_like(utility), 4)  # equal scores: the first candidate
    assert tied["chosen"] == pytest.approx(np.mean([1.0, 0.0]))
    unscored = pick_utilities(utility, np.array([[np.nan, np.nan, 0.0, 1.0], [np.nan] * 4]), 2)
    assert unscored["chosen"] == pytest.approx(np.mean([2.5, 3.0, 0.0, 3.0]))  # all-NaN groups: a random pick
    with pytest.raises(ValueError, match="group size 8"):
        pick_utilities(utility, utility, 8)


def test_candidates_are_deterministic_and_priced_by_the_simulator():
    prompt = C.CandidatePrompt(C.prompt_id_of("three red stars"), "three red stars on a blue background", (0, 3, 3, 4, 1))
    images, rows = C.render_candidates(prompt, C.DEFAULT_GENERATOR, 6, 32, seed=1)
    again, rows_again = C.render_candidates(prompt, "stable-diffusion-2-1", 6, 32, seed=1)
    assert images == again and rows == rows_again
    assert C.render_candidates(prompt, C.DEFAULT_GENERATOR, 6, 32, seed=2)[0] != images
    for row in rows:
        right = np.array([row[f"rendered_{a}"] == row[f"target_{a}"] for a in world.ATTRIBUTES], dtype=float)
        assert row["match"] == pytest.approx(right @ world.MATCH_WEIGHTS)
        expected = world.UTILITY_SCALE * (world.BLANK_UTILITY if row["content_filtered"] else row["match"] + row["quality"])
        assert row["utility"] == pytest.approx(expected)
        assert row["generator"] == C.DEFAULT_GENERATOR
    with pytest.raises(ValueError, match="unknown generator 'dalle'"):
        C.render_candidates(prompt, "dalle", 2, 32)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A home with a test_unique sidecar and the simulator truth it needs, and an untrained scratch model."""
    root = tmp_path_factory.mktemp("home")
    version = root / "datasets" / "pickapic" / "v1"
    (version / "test_unique").mkdir(parents=True)
    rng = np.random.default_rng(4)
    targets = world.draw_attributes(5, rng)
    captions = [world.compose_prompt(*t[:6]) for t in targets]
    pq.write_table(pa.table({"prompt_key": [c.lower() for c in captions], "caption": captions,
                             "image_0_uid": [f"uid{i}" for i in range(5)]}),
                   version / "test_unique" / "pickapic-test_unique-000000.parquet")
    (root / "ground_truth").mkdir()
    pq.write_table(pa.table({"image_uid": [f"uid{i}" for i in range(5)],
                             **{f"target_{a}": targets[:, k].astype(np.int8) for k, a in enumerate(world.ATTRIBUTES)}}),
                   root / "ground_truth" / "images.parquet")
    (root / "ground_truth" / "summary.json").write_text(json.dumps({"config": {"image_size": 48}}))
    data = write_synthetic_version(tmp_path_factory.mktemp("syn") / "v", {"train": 16, "validation": 2, "test": 2,
                                   "validation_unique": 2, "test_unique": 2}, image_px=32, seed=2).version_dir
    config = tiny_config(data, tmp_path_factory.mktemp("run"))
    clip, processor = build_model(config, iter_captions(data, "train"))
    model = root / "models" / "best"
    save_checkpoint(model, clip, processor)
    torch.manual_seed(0)
    return root, version, model, captions


def test_eval_prompts_join_the_ground_truth(simulated):
    root, version, _, captions = simulated
    prompts = C.eval_prompts(root / "ground_truth", version)
    assert sorted(p.caption for p in prompts) == sorted(captions)
    assert [p.prompt_id for p in prompts] == sorted(p.prompt_id for p in prompts)
    with pytest.raises(FileNotFoundError, match="ground truth"):
        C.eval_prompts(root / "nowhere" / "ground_truth", version)


def test_best_of_n_runs_at_small_n(simulated, tmp_path):
    root, version, model, _ = simulated
    result = run_best_of_n(root / "ground_truth", version, model, tmp_path / "bon", untrained_dir=model, n=4, ns=(1, 2, 4),
                           device="cpu")
    assert result.prompts == 5 and result.candidates_per_prompt == 4 and result.ns == [1, 2, 4]
    truth = pq.read_table(tmp_path / "bon" / "candidates" / "truth.parquet")
    assert truth.num_rows == 20 and sorted(p.name for p in (tmp_path / "bon" / "candidates").iterdir()
                                           if p.is_dir()) == sorted(set(truth.column("prompt_id").to_pylist()))
    for name in ("trained", "untrained"):
        assert result.gain(name, 1) == pytest.approx(0.0)
        for k in result.ns:  # no scorer beats the oracle
            assert result.chosen_utility[name][k] <= result.oracle_utility[k] + 1e-9
    assert result.chosen_utility["trained"] == result.chosen_utility["untrained"]  # the same model twice
    assert result.oracle_utility[4] >= result.oracle_utility[2] >= result.oracle_utility[1]
    saved = json.loads((tmp_path / "bon" / "best_of_n.json").read_text())
    assert saved["gain"]["trained"]["4"] == pytest.approx(result.gain("trained", 4))
    # paths relative to the folder holding best_of_n.json: right after a move, the same wherever the home is
    assert "output_dir" not in saved
    assert (saved["chart_path"], saved["contact_sheet"]) == ("best_of_n.png", str(Path("rerank") / "contact_sheet.png"))
    assert result.chart_path == str(tmp_path / "bon" / "best_of_n.png")   # the result itself keeps them whole
    for name in ("best_of_n.png", "rerank/contact_sheet.png", "rerank/choices.parquet"):
        assert (tmp_path / "bon" / name).is_file(), name
    assert "| 4 |" in result.metadata()["best_of_n"]
    # a rerun with fewer candidates leaves no stale candidate behind
    run_best_of_n(root / "ground_truth", version, model, tmp_path / "bon", n=2, ns=(1, 2), device="cpu")
    assert len(list((tmp_path / "bon" / "candidates").glob("*/cand-*.png"))) == 10
