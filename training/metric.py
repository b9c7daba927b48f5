"""The tie-aware preference accuracy of the Pick-a-Pic paper, its threshold choice and random baseline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def _probs(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _label_class(labels: np.ndarray) -> np.ndarray:
    """0 = image 0 preferred, 1 = image 1, 2 = tie."""
    labels = np.asarray(labels, dtype=np.float64)
    return np.where(labels[:, 0] == labels[:, 1], 2, np.where(labels[:, 0] > labels[:, 1], 0, 1))


def only_ties(labels: np.ndarray) -> bool:
    """Whether every pair of a non-empty set is a tie: there every model scores 1.0 at the threshold 1.0, so the
    set cannot choose between models (a selection split of ties only keeps the first one evaluated)."""
    return len(labels) > 0 and bool((_label_class(labels) == 2).all())


def pair_credit(scores: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per pair: 1 if prediction == label, 0.5 if exactly one of them is a tie, else 0; 0 for a pair with a
    NaN or infinite score (no prediction: every comparison with NaN is false, which read as "image 1")."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores).all(axis=1)
    p = _probs(np.where(finite[:, None], scores, 0.0))
    # a tiny tolerance so that |p0 - p1| == t is a tie despite float noise (the paper's "<= t")
    pred = np.where(np.abs(p[:, 0] - p[:, 1]) <= threshold + 1e-12, 2, np.where(p[:, 0] > p[:, 1], 0, 1))
    truth = _label_class(labels)
    credit = np.where(pred == truth, 1.0, np.where((pred == 2) ^ (truth == 2), 0.5, 0.0))
    return np.where(finite, credit, 0.0)


def tie_aware_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Mean credit over pairs (``scores``, ``labels`` of shape [N, 2])."""
    if len(scores) == 0:
        raise ValueError("tie_aware_accuracy of an empty set of pairs")
    return float(pair_credit(scores, labels, threshold).mean())


def random_baseline(labels: np.ndarray, threshold: float) -> float:
    """Expected accuracy of uniform random p0: ties/total * (t + (1-t)/2) + 0.5 * non_ties/total."""
    truth = _label_class(labels)
    ties = float((truth == 2).sum())
    total = float(len(truth))
    return ties / total * (threshold + (1 - threshold) / 2) + 0.5 * (total - ties) / total


@dataclass(frozen=True)
class ThresholdChoice:
    """Accuracy at every threshold on the selection split and the chosen one (smallest best)."""

    threshold: float
    accuracy: float
    by_threshold: dict[float, float]


def choose_threshold(scores: np.ndarray, labels: np.ndarray,
                     thresholds: tuple[float, ...] = THRESHOLDS) -> ThresholdChoice:
    """The threshold with the best tie-aware accuracy (ties broken towards the smaller threshold)."""
    by = {t: tie_aware_accuracy(scores, labels, t) for t in thresholds}
    best = max(by.values())
    chosen = min(t for t, acc in by.items() if acc == best)
    return ThresholdChoice(chosen, best, by)


def choose_random_threshold(labels: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> float:
    """The threshold a random scorer would pick on ``labels`` (smallest best), for its baseline."""
    by = {t: random_baseline(labels, t) for t in thresholds}
    best = max(by.values())
    return min(t for t, acc in by.items() if abs(acc - best) <= 1e-12)
