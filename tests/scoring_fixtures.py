"""What the score / rerank tests share: a tiny local CLIP checkpoint saved by the project's own code, and a scorer
stand-in for the logic around the model (nothing downloads)."""
from __future__ import annotations

from pathlib import Path

import torch

SIZES = {"train": 24, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 12}


def tiny_checkpoint(root: Path, logit_scale: float | None = None, save_run_config: bool = False) -> Path:
    """A tiny CLIP checkpoint (image_size 32, random weights, a BPE trained on synthetic captions) in ``root/best``;
    loads in well under a second. ``logit_scale`` sets that weight; ``save_run_config`` saves the run's config too."""
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint
    from training.synthetic import tiny_config, write_synthetic_version

    version = write_synthetic_version(root / "home" / "datasets" / "pickapic" / "v1", SIZES, image_px=64,
                                      seed=5).version_dir
    config = tiny_config(version, root / "run")
    clip, processor = build_model(config, iter_captions(version, "train"))
    torch.manual_seed(1)
    if logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(logit_scale)
    save_checkpoint(root / "best", clip, processor)
    if save_run_config:
        config.save(root / "best")
    return root / "best"


class FakeScorer:
    """Stands in for training.scoring.Scorer (any constructor arguments): scores 1.0, 2.0, ... in input order."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def score_pairs(self, pairs, groups=None):
        from training.scoring import ImageScore, ranks_within, softmax_within

        pairs = list(pairs)
        rows = [ImageScore(prompt=p, image=str(i), score=1.0 + n) for n, (p, i) in enumerate(pairs)]
        groups = list(groups) if groups is not None else [r.prompt for r in rows]
        scores = [r.score for r in rows]
        for row, p, r in zip(rows, softmax_within(groups, scores), ranks_within(groups, scores)):
            row.preference, row.rank = p, r
        return rows


def processor_variant(model_dir: Path, target: Path, **image_processor) -> Path:
    """A copy of ``model_dir`` at ``target`` whose image processor settings are updated with ``image_processor``
    (in both processor_config.json and preprocessor_config.json)."""
    import json
    import shutil

    shutil.copytree(model_dir, target)
    for name, section in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        config = json.loads((target / name).read_text())
        (config[section] if section else config).update(image_processor)
        (target / name).write_text(json.dumps(config))
    return target


class BuiltTooMuch(Exception):
    """Raised by :func:`count_encoder_layers`'s stand-in once loading builds far more than any CLIP checkpoint has."""


def count_encoder_layers(monkeypatch, most: int = 200) -> None:
    """Make building a CLIP encoder layer count, and raise :class:`BuiltTooMuch` past ``most`` (ViT-H / PickScore
    has 32 + 24 layers; the tiny checkpoint 2 + 2): a config claiming a million layers is caught while building
    instead of building them all."""
    from transformers.models.clip import modeling_clip

    built, init = [0], modeling_clip.CLIPEncoderLayer.__init__

    def counting_init(self, *args, **kwargs):
        built[0] += 1
        if built[0] > most:
            raise BuiltTooMuch(f"{built[0]} encoder layers built for a checkpoint that holds a few")
        init(self, *args, **kwargs)

    monkeypatch.setattr(modeling_clip.CLIPEncoderLayer, "__init__", counting_init)
