"""What a trained scorer has learned, against the simulator's ground truth (run by hand).

    .venv/bin/python -m benchmarks.scorer_diagnosis --home HOME --model RUN_DIR/best [--split test]

Prints, for one published version of a simulated home:
- the expected tie-aware accuracy of user-agnostic oracle scorers over every labelled 2-image ranking
  (score = 1.5 * (match + quality), match only, quality only; threshold chosen on the same rankings),
  next to the Bayes-optimal accuracy, all from the simulator's outcome probabilities;
- the trained model's score difference on each pair of ``--split`` regressed on the pair's true
  differences in attribute match and image quality (the simulator's utility weights them equally);
- how much of the true image quality a held-out ridge regression reads from hand-made high-frequency
  statistics of the model's own input, and from the model's pooled vision features.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training import metric


def oracle_accuracy(home: Path) -> dict[str, float]:
    """Expected tie-aware accuracy of the oracle scorers and of the Bayes-optimal rule."""
    images = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    rankings = pq.read_table(home / "ground_truth" / "rankings.parquet").to_pandas()
    rankings = rankings[(rankings.n_shown == 2) & rankings.labelled]
    p0, p1, pt = rankings.p_0.values, rankings.p_1.values, rankings.p_tie.values
    uids = np.array(rankings.image_uids.tolist())
    out = {"bayes_optimal": float(np.mean(np.maximum.reduce([p0 + 0.5 * pt, p1 + 0.5 * pt, pt + 0.5 * (p0 + p1)])))}
    terms = {"match_and_quality": images.match + images.quality, "match_only": images.match,
             "quality_only": images.quality}
    for name, utility in terms.items():
        scores = 1.5 * np.stack([utility.loc[uids[:, 0]].values, utility.loc[uids[:, 1]].values], axis=1)
        p = metric._probs(scores)
        gap = np.abs(p[:, 0] - p[:, 1])
        best = 0.0
        for t in metric.THRESHOLDS:
            pred = np.where(gap <= t + 1e-12, 2, np.where(p[:, 0] > p[:, 1], 0, 1))
            credit = np.where(pred == 2, pt + 0.5 * (p0 + p1), np.where(pred == 0, p0 + 0.5 * pt, p1 + 0.5 * pt))
            best = max(best, float(credit.mean()))
        out[f"oracle_{name}"] = best
    return out


def score_regression(home: Path, model_dir: Path, split: str) -> dict[str, float]:
    """Coefficients of score_0 - score_1 on (match_0 - match_1, quality_0 - quality_1, 1) over ``split``."""
    from training.evaluate import score_split
    from training.model import PairScorer, load_model

    clip, processor = load_model(model_dir)
    data = home / "datasets" / "pickapic" / "latest"
    scores = score_split(PairScorer(clip), processor, data, split, bf16=False)
    sidecars = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(str(data / split / "*.parquet")))])
    rows = sidecars.to_pandas().set_index("key").loc[scores.keys]
    images = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    d_match = images.loc[rows.image_0_uid].match.values - images.loc[rows.image_1_uid].match.values
    d_quality = images.loc[rows.image_0_uid].quality.values - images.loc[rows.image_1_uid].quality.values
    d_score = scores.scores[:, 0] - scores.scores[:, 1]
    design = np.stack([d_match, d_quality, np.ones_like(d_match)], axis=1)
    coef, *_ = np.linalg.lstsq(design, d_score, rcond=None)
    residual = d_score - design @ coef
    return {"pairs": len(d_score), "coef_match": float(coef[0]), "coef_quality": float(coef[1]),
            "r2": float(1 - residual.var() / d_score.var()),
            "corr_match": float(np.corrcoef(d_score, d_match)[0, 1]),
            "corr_quality": float(np.corrcoef(d_score, d_quality)[0, 1])}


def _cv_r2(features: np.ndarray, target: np.ndarray, ridge: float) -> float:
    """R^2 on a held-out half of a ridge regression fitted on the other half (fixed split)."""
    order = np.random.default_rng(0).permutation(len(target))
    fit, held = order[: len(order) // 2], order[len(order) // 2:]
    design = np.c_[features[fit], np.ones(len(fit))]
    weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ target[fit])
    predicted = np.c_[features[held], np.ones(len(held))] @ weights
    return float(1 - ((target[held] - predicted) ** 2).mean() / target[held].var())


def quality_probe(home: Path, model_dir: Path, split: str, limit: int = 3000) -> dict[str, float]:
    """Can image quality be read linearly from the model's input, and from its vision features?

    For the first image of up to ``limit`` pairs of ``split``: the true quality regressed on (a) a few
    hand-made high-frequency statistics of the preprocessed model input (mean |Laplacian|, its square,
    pixel std, mean |horizontal difference|, per channel) and (b) the vision tower's pooled output.
    """
    import tarfile

    import torch

    from training import data as D
    from training.model import load_model

    clip, processor = load_model(model_dir)
    clip.eval()
    spec = D.ImageSpec.from_processor(processor.image_processor)
    images = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    pixels, quality = [], []
    for tar in sorted(glob.glob(str(home / "datasets" / "pickapic" / "latest" / split / "*.tar"))):
        uids = pq.read_table(tar[:-4] + ".parquet", columns=["key", "image_0_uid"]).to_pandas().set_index("key")
        with tarfile.open(tar) as archive:
            for member in archive:
                if member.name.endswith(".0.jpg") and len(pixels) < limit:
                    pixels.append(D.preprocess_image(archive.extractfile(member).read(), spec))
                    quality.append(images.loc[uids.loc[member.name[:-6]].image_0_uid].quality)
    x = np.stack(pixels)
    target = np.array(quality)
    lap = np.abs(4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:])
    hand = np.c_[lap.mean((2, 3)), (lap ** 2).mean((2, 3)), x.std((2, 3)), np.abs(np.diff(x, axis=3)).mean((2, 3))]
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=torch.from_numpy(x)).pooler_output.numpy()
    return {"images": len(target), "input_size": int(x.shape[-1]),
            "r2_quality_from_input_statistics": _cv_r2(hand, target, 1e-3),
            "r2_quality_from_vision_features": _cv_r2(pooled, target, 1.0)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a simulated data home with ground_truth/")
    parser.add_argument("--model", type=Path, help="a saved scorer (a run's best/ folder)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    result = {"oracle": oracle_accuracy(args.home)}
    if args.model:
        result["regression"] = score_regression(args.home, args.model, args.split)
        result["quality_probe"] = quality_probe(args.home, args.model, args.split)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
