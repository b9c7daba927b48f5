"""Evaluation: score a split, choose the tie threshold on validation_unique, report test_unique accuracy."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from formats import dataset
from training.config import TrainConfig
from training.data import (
    EvalPairStream,
    ImageSpec,
    LoaderBatches,
    PairCollator,
    iter_captions,
    make_loader,
    split_shards,
)
from training.device import autocast, cpu_threads, resolve_device
from training.metric import THRESHOLDS, choose_random_threshold, choose_threshold, random_baseline, tie_aware_accuracy
from training.model import PairScorer, build_model, load_model, shown_path, text_positions


@dataclass
class SplitScores:
    """Scores of every pair of a split, sorted by sample key."""

    keys: list[str]
    scores: np.ndarray   # [N, 2] logit_scale * cosine
    labels: np.ndarray   # [N, 2]
    weights: np.ndarray  # [N]
    model_0: list[str]
    model_1: list[str]


@torch.no_grad()
def score_split(scorer: PairScorer, processor: Any, data_dir: str | os.PathLike, split: str, *,
                batch_size: int = 64, num_workers: int = 1, draft: bool = False,
                device: torch.device | None = None, bf16: bool = True, max_length: int | None = None) -> SplitScores:
    """Scores of every pair in ``split`` with the model's own preprocessing geometry.

    Evaluation decodes every JPEG exactly (``draft=False``, the preprocessing ``CLIPImageProcessor`` and
    ``training.scoring.Scorer`` apply); the DCT-scaled draft decode is a training-speed trade only.
    Captions are truncated to ``max_length`` tokens (the run's ``max_length``; default: as many as the
    model's text tower takes, ``text_config.max_position_embeddings``, 77 for CLIP).
    """
    device = device or next(scorer.parameters()).device
    shards = split_shards(data_dir, split)
    if not shards:
        raise FileNotFoundError(f"split {split!r} of {data_dir} has no shards")
    if max_length is None:
        max_length = text_positions(scorer.clip)
    stream = EvalPairStream(shards, batch_size, PairCollator(processor.tokenizer, max_length),
                              ImageSpec.from_processor(processor.image_processor), draft)
    was_training = scorer.training
    scorer.eval()
    keys, scores, labels, weights, m0, m1 = [], [], [], [], [], []
    with LoaderBatches(make_loader(stream, num_workers)) as batches:   # its workers end with the block, also on
        for batch in batches:                                           # an error (review rev37e)
            with autocast(device, bf16):
                out = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             batch["pixel_values"].to(device))
            scores.append(out.float().cpu().numpy())
            labels.append(batch["labels"].numpy())
            weights.append(batch["weights"].numpy())
            keys += batch["keys"]
            m0 += batch["model_0"]
            m1 += batch["model_1"]
    scorer.train(was_training)
    if not keys:
        raise ValueError(f"split {split!r} of {dataset.resolve_data_dir(data_dir)} yielded no samples "
                         f"from its {len(shards)} shards in {shards[0].parent}")
    sizes = dataset.read_sizes(shards[0].parent)
    if sizes is not None and len(keys) != sum(sizes.values()):
        raise ValueError(f"split {split!r} of {dataset.resolve_data_dir(data_dir)}: read {len(keys)} samples but "
                         f"{shards[0].parent / dataset.SIZES_FILE} lists {sum(sizes.values())}")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if len(set(keys)) != len(keys):
        raise ValueError(f"split {split!r} holds duplicate sample keys")
    return SplitScores([keys[i] for i in order], np.concatenate(scores)[order], np.concatenate(labels)[order],
                       np.concatenate(weights)[order], [m0[i] for i in order], [m1[i] for i in order])


def read_bayes_optimal(ground_truth: str | os.PathLike | None, split: str = "test_unique") -> float | None:
    """``bayes_optimal_accuracy`` from the simulator's ``summary.json`` (a file or the ground_truth dir)."""
    if ground_truth is None:
        return None
    path = Path(ground_truth)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("bayes_optimal_accuracy")
    if isinstance(value, dict):  # tolerate a per-split mapping
        value = value.get(split, value.get("overall"))
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{path}: bayes_optimal_accuracy={value!r} is not a probability")
    return float(value)


@dataclass
class EvalResult:
    """Tie-aware accuracy of a model on the test split at the threshold chosen on the selection split."""

    split_for_threshold: str
    split: str
    n_selection: int
    n_test: int
    test_ties: int
    threshold: float
    selection_accuracy: float
    test_accuracy: float
    random_baseline: float           # a random scorer at the model's threshold: the number to compare with
    random_threshold: float          # the threshold a random scorer would choose itself (1.0 with any ties)
    random_baseline_best: float      # a random scorer at that threshold (the paper's "random 56.8")
    test_accuracy_by_threshold: dict[float, float] = field(default_factory=dict)
    model_dir: str = ""
    untrained_test_accuracy: float | None = None
    untrained_threshold: float | None = None
    bayes_optimal_accuracy: float | None = None
    fraction_of_bayes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (threshold keys as strings)."""
        out = asdict(self)
        out["test_accuracy_by_threshold"] = {f"{t:.1f}": v for t, v in self.test_accuracy_by_threshold.items()}
        return out

    def metadata(self) -> dict[str, Any]:
        """Dagster-ready metadata: numbers plus a markdown metrics table (rows this result measured)."""
        rows = [(f"test accuracy on {self.split} (trained)", self.test_accuracy),
                (f"tie threshold (chosen on {self.split_for_threshold})", self.threshold),
                (f"random baseline at that threshold (t = {self.threshold:.1f})", self.random_baseline),
                (f"random baseline at its own best threshold (t = {self.random_threshold:.1f})",
                 self.random_baseline_best),
                ("untrained model accuracy", self.untrained_test_accuracy),
                ("Bayes-optimal accuracy", self.bayes_optimal_accuracy), ("fraction of Bayes", self.fraction_of_bayes)]
        table = "| metric | value |\n|---|---|\n" + "\n".join(
            f"| {name} | {value:.4f} |" for name, value in rows if value is not None)
        meta = {k: v for k, v in self.to_dict().items() if k != "test_accuracy_by_threshold"}
        meta["metrics_table"] = table
        return meta


def evaluate_scores(selection: SplitScores, test: SplitScores, split_for_threshold: str, split: str) -> EvalResult:
    """Choose the threshold on ``selection``, apply it to ``test``; the random baseline at that threshold, and at
    the threshold a random scorer would choose on ``selection`` itself."""
    choice = choose_threshold(selection.scores, selection.labels)
    random_t = choose_random_threshold(selection.labels)
    ties = int((test.labels[:, 0] == test.labels[:, 1]).sum())
    return EvalResult(
        split_for_threshold=split_for_threshold, split=split, n_selection=len(selection.keys), n_test=len(test.keys),
        test_ties=ties, threshold=choice.threshold, selection_accuracy=choice.accuracy,
        test_accuracy=tie_aware_accuracy(test.scores, test.labels, choice.threshold),
        random_baseline=random_baseline(test.labels, choice.threshold), random_threshold=random_t,
        random_baseline_best=random_baseline(test.labels, random_t),
        test_accuracy_by_threshold={t: tie_aware_accuracy(test.scores, test.labels, t) for t in THRESHOLDS})


def evaluate_loaded(clip: Any, processor: Any, data_dir: str | os.PathLike, split_for_threshold: str = "validation_unique",
                    split: str = "test_unique", *, batch_size: int = 64, num_workers: int = 1,
                    device: str = "auto", max_length: int | None = None) -> EvalResult:
    """``evaluate_model`` for an in-memory CLIP model + processor (captions truncated as :func:`score_split`)."""
    dev = resolve_device(device)
    scorer = PairScorer(clip).to(dev)
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, device=dev, max_length=max_length)
    with cpu_threads(dev, num_workers=num_workers):
        return evaluate_scores(score_split(scorer, processor, data_dir, split_for_threshold, **kwargs),
                               score_split(scorer, processor, data_dir, split, **kwargs), split_for_threshold, split)


def evaluate_untrained(config: TrainConfig, split_for_threshold: str = "validation_unique",
                       split: str = "test_unique", tokenizer: Any = None) -> EvalResult:
    """The same evaluation for the initial model of ``config`` (seeded scratch init or the init checkpoint).

    For 'scratch' the trainer's saved ``output_dir/init`` is used when present; otherwise the seeded init is
    rebuilt, with ``tokenizer`` (e.g. the trained model's) or one trained again on the train captions.
    """
    init_dir = Path(config.output_dir) / "init" if config.output_dir else None
    if config.init_from == "scratch" and init_dir is not None and (init_dir / "config.json").is_file():
        clip, processor = load_model(init_dir)  # the exact initial model the trainer saved
    else:
        captions = (iter_captions(config.data_dir, "train", config.tokenizer_max_captions)
                    if config.init_from == "scratch" and tokenizer is None else None)
        clip, processor = build_model(config, captions, tokenizer)
    result = evaluate_loaded(clip, processor, config.data_dir, split_for_threshold, split,
                             batch_size=config.eval_batch_size, num_workers=config.num_workers,
                             device=config.device, max_length=config.max_length)
    result.model_dir = f"untrained:{shown_path(config.init_from)}"
    return result


def evaluate_model(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                   split_for_threshold: str = "validation_unique", split: str = "test_unique", *,
                   ground_truth: str | os.PathLike | None = None, include_untrained: bool = True,
                   batch_size: int = 64, num_workers: int = 1, device: str = "auto") -> EvalResult:
    """Evaluate a saved model; with its ``train_config.json``, also its untrained initial model.

    The model is loaded by ``training.scoring.Scorer``, the API ``pickapic score`` / ``rerank`` use, so the
    evaluation asset and the scoring commands read a checkpoint the same way (and refuse the same folders).
    """
    # the version is read under a shared lock on its folder (the publish's retention keeps it meanwhile), and
    # resolved once: a `latest` that moves meanwhile does not mix two versions in one evaluation
    with dataset.reading_data_dir(data_dir) as version_dir:
        return _evaluate_model(model_dir, version_dir, split_for_threshold, split, ground_truth=ground_truth,
                               include_untrained=include_untrained, batch_size=batch_size, num_workers=num_workers,
                               device=device)


def _evaluate_model(model_dir: str | os.PathLike, data_dir: Path, split_for_threshold: str, split: str, *,
                    ground_truth: str | os.PathLike | None, include_untrained: bool, batch_size: int,
                    num_workers: int, device: str) -> EvalResult:
    from training.scoring import Scorer  # scoring imports this module

    scorer = Scorer(model_dir, device=device)
    clip, processor = scorer.clip, scorer.processor
    config_file = Path(model_dir) / "train_config.json"
    # paths in it are home-relative: the home is the run folder's, else the data's
    config = (TrainConfig.load(Path(model_dir), home=dataset.home_of(dataset.resolve_data_dir(data_dir)))
              if config_file.is_file() else None)
    result = evaluate_loaded(clip, processor, data_dir, split_for_threshold, split, batch_size=batch_size,
                             num_workers=num_workers, device=device,   # captions truncated as its training did
                             max_length=scorer.max_length)   # (Scorer: the run's recorded max_length)
    result.model_dir = str(model_dir)
    if include_untrained and config is not None:
        untrained = evaluate_untrained(config.replace(data_dir=str(data_dir), num_workers=num_workers,
                                                      eval_batch_size=batch_size, device=device),
                                       split_for_threshold, split, tokenizer=processor.tokenizer)
        result.untrained_test_accuracy, result.untrained_threshold = untrained.test_accuracy, untrained.threshold
    result.bayes_optimal_accuracy = read_bayes_optimal(ground_truth, split)
    if result.bayes_optimal_accuracy:
        result.fraction_of_bayes = result.test_accuracy / result.bayes_optimal_accuracy
    return result
