"""What a trained scorer has learned, against the simulator's ground truth (run by hand).

    .venv/bin/python -m benchmarks.scorer_diagnosis --home HOME --model RUN_DIR/best [--split test]
        [--supervised-steps 2000 [--supervised-target quality|laplacian|pixel_std|shape|count|style]
         [--supervised-patch 4] [--supervised-variant clip|no_pre_layernorm|mean_pool]]

Prints, for one published version of a simulated home:
- the expected tie-aware accuracy of user-agnostic oracle scorers over every labelled 2-image ranking
  (score = 1.5 * (match + quality), match only, quality only, the two colours a prompt names with and
  without quality; threshold chosen on the same rankings),
  next to the Bayes-optimal accuracy, all from the simulator's outcome probabilities;
- the trained model's score difference on each pair of ``--split`` regressed on the pair's true
  differences in attribute match and image quality (the simulator's utility weights them equally);
- the same difference regressed on each term of the true utility (each attribute drawn as asked, blur,
  noise, artefacts), next to the simulator's weights;
- how much of the true image quality a held-out ridge regression reads from hand-made high-frequency
  statistics of the model's own input, and from the model's pooled vision features;
- with ``--supervised-steps N``: whether a fresh vision tower of the model's architecture learns the true
  quality (or, ``--supervised-target``, the rendered shape, count or style, or a plain statistic of its
  input as a control) when trained on it directly (held-out R^2 or accuracy along the way).
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from formats import dataset
from formats.home import DataHome
from simulator import world
from training import metric


def _attributes_right(images: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per simulator attribute, 1.0 where an image drew it as its prompt asked, else 0.0."""
    return {a: (images[f"rendered_{a}"].values == images[f"target_{a}"].values).astype(float) for a in world.ATTRIBUTES}


def oracle_accuracy(home: Path) -> dict[str, float]:
    """Expected tie-aware accuracy of the oracle scorers and of the Bayes-optimal rule."""
    images = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    rankings = pq.read_table(home / "ground_truth" / "rankings.parquet").to_pandas()
    rankings = rankings[(rankings.n_shown == 2) & rankings.labelled]
    p0, p1, pt = rankings.p_0.values, rankings.p_1.values, rankings.p_tie.values
    uids = np.array(rankings.image_uids.tolist())
    out = {"bayes_optimal": float(np.mean(np.maximum.reduce([p0 + 0.5 * pt, p1 + 0.5 * pt, pt + 0.5 * (p0 + p1)])))}
    right = {a: pd.Series(w * drawn, index=images.index)
             for (a, drawn), w in zip(_attributes_right(images).items(), world.MATCH_WEIGHTS)}
    terms = {"match_and_quality": images.match + images.quality, "match_only": images.match,
             "quality_only": images.quality,
             # what a scorer that reads only colours (prompt colour and background) would reach, then + quality,
             # then + the attributes the vision tower can learn when told them directly (count, style)
             "colour_and_background": right["colour"] + right["background"],
             "colour_background_and_quality": right["colour"] + right["background"] + images.quality,
             "colour_background_count": right["colour"] + right["background"] + right["count"],
             "colour_background_count_style": right["colour"] + right["background"] + right["count"] + right["style"]}
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
    data = dataset.latest_link(DataHome(home))
    scores = score_split(PairScorer(clip), processor, data, split, bf16=False)
    sidecars = pa.concat_tables([pq.read_table(f) for f in dataset.split_sidecars(data, split)])
    rows = sidecars.to_pandas().set_index("key").loc[scores.keys]
    images = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    d_match = images.loc[rows.image_0_uid].match.values - images.loc[rows.image_1_uid].match.values
    d_quality = images.loc[rows.image_0_uid].quality.values - images.loc[rows.image_1_uid].quality.values
    d_score = scores.scores[:, 0] - scores.scores[:, 1]
    design = np.stack([d_match, d_quality, np.ones_like(d_match)], axis=1)
    coef, *_ = np.linalg.lstsq(design, d_score, rcond=None)
    residual = d_score - design @ coef
    # per term: each attribute drawn as asked (0/1) and each degradation, against the simulator's weights
    first, second = images.loc[rows.image_0_uid], images.loc[rows.image_1_uid]
    first_right, second_right = _attributes_right(first), _attributes_right(second)
    terms = {f"{a}_right": first_right[a] - second_right[a] for a in world.ATTRIBUTES}
    terms.update({name: first[name].values.astype(float) - second[name].values.astype(float)
                  for name in ("blur", "noise", "artefacts")})
    design = np.stack([*terms.values(), np.ones_like(d_score)], axis=1)
    per_term, *_ = np.linalg.lstsq(design, d_score, rcond=None)
    return {"pairs": len(d_score), "coef_match": float(coef[0]), "coef_quality": float(coef[1]),
            "r2": float(1 - residual.var() / d_score.var()),
            "corr_match": float(np.corrcoef(d_score, d_match)[0, 1]),
            "corr_quality": float(np.corrcoef(d_score, d_quality)[0, 1]),
            "per_term": {name: round(float(c), 3) for name, c in zip(terms, per_term)},
            "true_per_term": {**{f"{a}_right": float(w) for a, w in zip(world.ATTRIBUTES, world.MATCH_WEIGHTS)},
                              **{name: -world.QUALITY_WEIGHTS[key] for name, key in
                                 (("blur", "blur"), ("noise", "noise"), ("artefacts", "artefact"))}}}


def _cv_r2(features: np.ndarray, target: np.ndarray, ridge: float) -> float:
    """R^2 on a held-out half of a ridge regression fitted on the other half (fixed split)."""
    order = np.random.default_rng(0).permutation(len(target))
    fit, held = order[: len(order) // 2], order[len(order) // 2:]
    design = np.c_[features[fit], np.ones(len(fit))]
    weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ target[fit])
    predicted = np.c_[features[held], np.ones(len(held))] @ weights
    return float(1 - ((target[held] - predicted) ** 2).mean() / target[held].var())


def _inputs_and_truth(home: Path, split: str, processor, limit: int,
                      images_per_pair: tuple[str, ...] = ("0",)) -> tuple[np.ndarray, pd.DataFrame]:
    """Preprocessed model inputs [N, 3, H, W] of up to ``limit`` images of ``split``, and each one's
    ground-truth row (``ground_truth/images.parquet``) in the same order."""
    import tarfile

    from training.data import ImageSpec, preprocess_image

    spec = ImageSpec.from_processor(processor.image_processor)
    truth = pq.read_table(home / "ground_truth" / "images.parquet").to_pandas().set_index("image_uid")
    pixels, uids = [], []
    for tar in sorted(glob.glob(str(dataset.latest_link(DataHome(home)) / split / dataset.shard_glob(split)))):
        pair_uids = pq.read_table(tar[:-4] + ".parquet", columns=["key", "image_0_uid", "image_1_uid"]).to_pandas()
        pair_uids = pair_uids.set_index("key")
        with tarfile.open(tar) as archive:
            for member in archive:
                index = member.name[-5]
                if member.name.endswith(".jpg") and index in images_per_pair and len(pixels) < limit:
                    pixels.append(preprocess_image(archive.extractfile(member).read(), spec))
                    uids.append(pair_uids.loc[member.name[:-6]][f"image_{index}_uid"])
    return np.stack(pixels), truth.loc[uids]


def _laplacian(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of [N, C, H, W] images (the border dropped)."""
    return 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]


def quality_probe(home: Path, model_dir: Path, split: str, limit: int = 3000) -> dict[str, float]:
    """Can image quality be read linearly from the model's input, and from its vision features?

    For the first image of up to ``limit`` pairs of ``split``: the true quality regressed on (a) a few
    hand-made high-frequency statistics of the preprocessed model input (mean |Laplacian|, its square,
    pixel std, mean |horizontal difference|, per channel) and (b) the vision tower's pooled output.
    """
    import torch

    from training.model import load_model

    clip, processor = load_model(model_dir)
    clip.eval()
    x, truth = _inputs_and_truth(home, split, processor, limit)
    target = truth.quality.values
    lap = np.abs(_laplacian(x))
    hand = np.c_[lap.mean((2, 3)), (lap ** 2).mean((2, 3)), x.std((2, 3)), np.abs(np.diff(x, axis=3)).mean((2, 3))]
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=torch.from_numpy(x)).pooler_output.numpy()
    return {"images": len(target), "input_size": int(x.shape[-1]),
            "r2_quality_from_input_statistics": _cv_r2(hand, target, 1e-3),
            "r2_quality_from_vision_features": _cv_r2(pooled, target, 1.0)}


SUPERVISED_TARGETS = ("quality", "laplacian", "pixel_std", "shape", "count", "style")
TOWER_VARIANTS = ("clip", "no_pre_layernorm", "mean_pool")


def _supervised_target(name: str, x: np.ndarray, truth) -> tuple[np.ndarray, int]:
    """(target, classes): a standardised regression target (classes 0) or class ids (classes > 0)."""
    if name in ("shape", "count", "style"):
        labels = truth[f"rendered_{name}"].values.astype(np.int64)
        return labels, int(labels.max()) + 1
    if name == "quality":
        values = truth.quality.values.astype(np.float64)
    elif name == "laplacian":  # log mean |Laplacian| of the model input: a pure high-frequency statistic
        values = np.log(np.abs(_laplacian(x)).mean((1, 2, 3)))
    elif name == "pixel_std":
        values = x.std((1, 2, 3)).astype(np.float64)
    else:
        raise ValueError(f"supervised target {name!r} is not one of {SUPERVISED_TARGETS}")
    return ((values - values.mean()) / values.std()).astype(np.float32), 0


def supervised_probe(home: Path, model_dir: Path, steps: int, target_name: str = "quality",
                     patch_size: int | None = None, variant: str = "clip", batch: int = 64, limit: int = 20_000,
                     report_every: int = 250) -> dict:
    """Can the model's vision architecture learn ``target_name`` at all when trained on it directly?

    A freshly initialised vision tower of the model's own config (``patch_size`` overrides the patch;
    ``variant`` ``no_pre_layernorm`` replaces its pre-LayerNorm by the identity, ``mean_pool`` reads the
    mean patch token instead of the class token), with a linear head, is trained on up to ``limit`` train
    images (both images of each pair; AdamW lr 1e-3, batch ``batch``, seed 0): by MSE on a standardised
    target (the true image quality; ``laplacian``, ``pixel_std``: statistics of the input itself, as
    controls that the probe can learn), or by cross-entropy on a class (the rendered ``shape``, ``count`` or
    ``style``). Held-out R^2 (or accuracy, next to the majority class's) on the last 20% every
    ``report_every`` steps. Direct targets carry far more signal per image than preference labels: what
    this cannot learn, the preference objective does not either.
    """
    import copy

    import torch
    from transformers import CLIPVisionModel

    from training.model import load_model

    if variant not in TOWER_VARIANTS:
        raise ValueError(f"tower variant {variant!r} is not one of {TOWER_VARIANTS}")
    clip, processor = load_model(model_dir)
    x, truth = _inputs_and_truth(home, "train", processor, limit, images_per_pair=("0", "1"))
    target, classes = _supervised_target(target_name, x, truth)
    config = copy.deepcopy(clip.config.vision_config)
    if patch_size is not None:
        config.patch_size = patch_size
    torch.manual_seed(0)
    tower, head = CLIPVisionModel(config), torch.nn.Linear(config.hidden_size, max(classes, 1))
    if variant == "no_pre_layernorm":
        tower.pre_layrnorm = torch.nn.Identity()

    def predict(pixels: torch.Tensor) -> torch.Tensor:
        out = tower(pixel_values=pixels)
        features = out.last_hidden_state[:, 1:].mean(1) if variant == "mean_pool" else out.pooler_output
        return head(features) if classes else head(features)[:, 0]

    def loss_of(predicted: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(predicted, wanted) if classes else ((predicted - wanted) ** 2).mean()

    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.01)
    held = np.arange(len(target)) >= int(len(target) * 0.8)
    fit_x, fit_y = torch.from_numpy(x[~held]), torch.from_numpy(target[~held])
    held_x, held_y = torch.from_numpy(x[held]), target[held]
    generator, curve = torch.Generator().manual_seed(0), []
    for step in range(steps + 1):
        if step % report_every == 0 or step == steps:
            tower.eval()
            with torch.no_grad():
                predicted = torch.cat([predict(held_x[i:i + 256]) for i in range(0, len(held_x), 256)]).numpy()
            score = (float((predicted.argmax(1) == held_y).mean()) if classes
                     else float(1 - ((predicted - held_y) ** 2).mean() / held_y.var()))
            curve.append({"step": step, "heldout_accuracy" if classes else "heldout_r2": round(score, 3)})
            tower.train()
        if step == steps:
            break
        index = torch.randint(0, len(fit_y), (batch,), generator=generator)
        loss = loss_of(predict(fit_x[index]), fit_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = {"target": target_name, "variant": variant, "images": len(target), "input_size": int(x.shape[-1]),
              "patch_size": config.patch_size, "hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
              "batch": batch, "curve": curve}
    if classes:
        result["majority_class_accuracy"] = round(float(np.bincount(held_y).max() / len(held_y)), 3)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a simulated data home with ground_truth/")
    parser.add_argument("--model", type=Path, help="a saved scorer (a run's best/ folder)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--supervised-steps", type=int, default=0,
                        help="also train a fresh copy of the model's vision tower directly on --supervised-target "
                             "for this many steps (0 = skip)")
    parser.add_argument("--supervised-target", default="quality", choices=SUPERVISED_TARGETS)
    parser.add_argument("--supervised-patch", type=int, default=None, help="patch size of that fresh tower")
    parser.add_argument("--supervised-variant", default="clip", choices=TOWER_VARIANTS)
    args = parser.parse_args(argv)
    result = {"oracle": oracle_accuracy(args.home)}
    if args.model:
        result["regression"] = score_regression(args.home, args.model, args.split)
        result["quality_probe"] = quality_probe(args.home, args.model, args.split)
        if args.supervised_steps > 0:
            result["supervised_probe"] = supervised_probe(args.home, args.model, args.supervised_steps,
                                                          args.supervised_target, args.supervised_patch,
                                                          args.supervised_variant)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
