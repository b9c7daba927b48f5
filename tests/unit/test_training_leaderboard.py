"""Generator leaderboard on planted rankings."""
import json

import numpy as np
import pytest

from training.leaderboard import (
    bradley_terry,
    generator_leaderboard,
    leaderboard_from_outcomes,
    load_true_quality,
    spearman,
)
from training.model import build_model
from training.synthetic import tiny_config, write_synthetic_version


def _planted_pairs(strength, n, seed=0):
    rng = np.random.default_rng(seed)
    names = sorted(strength)
    m0, m1, out = [], [], []
    for _ in range(n):
        a, b = rng.choice(names, 2, replace=False)
        p = strength[a] / (strength[a] + strength[b])
        m0.append(str(a)); m1.append(str(b))
        out.append(1.0 if rng.random() < p else 0.0)
    return m0, m1, np.array(out)


def test_model_that_always_wins_is_first():
    m0 = ["A", "B", "A", "C", "B", "C"] * 5
    m1 = ["B", "A", "C", "A", "C", "B"] * 5
    # A always wins, B beats C, ties count half
    out = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.5] * 5)
    elo = bradley_terry(["A", "B", "C"], m0, m1, out)
    assert elo["A"] > elo["B"] > elo["C"]
    assert np.mean([np.log10(1e-9 + 10 ** ((v - 1000) / 400)) for v in elo.values()]) == pytest.approx(0, abs=1e-6)


def test_planted_ranking_recovered_with_spearman_one():
    truth = {"m1": 8.0, "m2": 4.0, "m3": 2.0, "m4": 1.0, "m5": 0.5}
    m0, m1, human = _planted_pairs(truth, 3000)
    scorer = human.copy()
    scorer[::4] = 1 - scorer[::4]  # a noisier scorer still ranks the same way
    result = leaderboard_from_outcomes(m0, m1, human, scorer, truth)
    assert sorted(result.models, key=lambda m: -result.human_elo[m]) == ["m1", "m2", "m3", "m4", "m5"]
    assert result.spearman_human_truth == pytest.approx(1.0)
    assert result.spearman_scorer_truth == pytest.approx(1.0)
    assert result.spearman_scorer_human == pytest.approx(1.0)
    # BT recovers the planted log-strength gaps: 2x strength = 400 log10(2) ~ 120 Elo
    assert result.human_elo["m1"] - result.human_elo["m2"] == pytest.approx(120, abs=30)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 1], [1, 2]) is None


def test_true_quality_matches_short_or_long_names(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"stabilityai/stable-diffusion-2-1": {"quality": 0.7, "rank": 2},
                                "dreamlike": {"model_id": "yuvalkirstain/dreamlike-photoreal-2-flax", "quality": 0.9,
                                              "rank": 1}, "sdxl": {"rank": 3}}))
    got = load_true_quality(path, ["stable-diffusion-2-1", "yuvalkirstain/dreamlike-photoreal-2-flax", "sdxl", "x"])
    assert got == {"stable-diffusion-2-1": 0.7, "yuvalkirstain/dreamlike-photoreal-2-flax": 0.9, "sdxl": -3.0}
    assert load_true_quality(tmp_path / "missing.json", ["a"]) is None


def test_generator_leaderboard_end_to_end(tmp_path):
    models = {"sim-a": 0.95, "sim-b": 0.6, "sim-c": 0.1}
    version = tmp_path / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version, {"train": 24, "validation": 150, "test": 150, "validation_unique": 8,
                                      "test_unique": 8}, image_px=32, seed=2, models=models)
    truth = tmp_path / "ground_truth" / "models.json"
    truth.parent.mkdir()
    truth.write_text(json.dumps({f"org/{m}": {"quality": q, "rank": r} for r, (m, q) in
                                 enumerate(sorted(models.items(), key=lambda kv: -kv[1]), 1)}))
    clip, processor = build_model(tiny_config(version, tmp_path / "run"),
                                  (f"a {c} cube" for c in ["red", "blue"] * 20))
    clip.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    result = generator_leaderboard(version.parent / "latest", tmp_path / "m", truth, num_workers=0, device="cpu")
    assert result.n_pairs == 300 and result.models == ["sim-a", "sim-b", "sim-c"]
    assert sorted(result.models, key=lambda m: -result.human_elo[m]) == ["sim-a", "sim-b", "sim-c"]
    assert result.spearman_human_truth == pytest.approx(1.0)
    assert result.chart_path.read_bytes()[:4] == b"\x89PNG"
    meta = result.metadata()
    json.dumps(meta)
    assert "| 1 | sim-a |" in meta["leaderboard"]
