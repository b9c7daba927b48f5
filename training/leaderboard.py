"""Generator leaderboard: Bradley-Terry (Elo-scale) ratings of the image generators from human labels on
held-out rankings, next to ratings from the trained scorer's preferences on the same pairs, and to the
simulator's true model quality when available; Spearman correlations between the three.

Bradley-Terry is fitted by Hunter's MM algorithm (order-independent, unlike sequential Elo updates); a
tie counts half a win to each side; ratings are shown on the Elo scale (1000 + 400 log10 strength,
geometric mean strength 1). The paper's PickScore-to-human Elo correlation was 0.790.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from formats import dataset
from training.config import recorded_max_length
from training.device import cpu_threads, resolve_device
from training.evaluate import score_split
from training.figures import pyplot, save_figure
from training.model import PairScorer, load_model


def bradley_terry(names: Sequence[str], model_0: Sequence[str], model_1: Sequence[str], outcome_0: np.ndarray,
                  prior: float = 0.1, iters: int = 10_000, tol: float = 1e-10) -> dict[str, float]:
    """Elo-scale Bradley-Terry ratings; ``outcome_0`` = 1 / 0 / 0.5 when model_0 wins / loses / ties, NaN for a
    pair without an outcome (a scorer's NaN or infinite score: no game, no win for either side)."""
    index = {n: i for i, n in enumerate(names)}
    m = len(names)
    wins = np.zeros((m, m))
    for a, b, o in zip(model_0, model_1, np.asarray(outcome_0, dtype=np.float64)):
        if a == b or o != o:
            continue
        wins[index[a], index[b]] += o
        wins[index[b], index[a]] += 1.0 - o
    games = wins + wins.T
    wins = wins + prior * (games > 0)  # keeps never-winning / never-losing models finite
    games = wins + wins.T
    strength = np.ones(m)
    total_wins = wins.sum(axis=1)
    for _ in range(iters):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1), 1.0)
        new = new / np.exp(np.log(new).mean())
        done = np.max(np.abs(new - strength) / strength) < tol
        strength = new
        if done:
            break
    return {n: float(1000 + 400 * np.log10(strength[i])) for n, i in index.items()}


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):  # average ranks for ties
        same = values == v
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined."""
    x, y = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def load_true_quality(path: str | os.PathLike | None, names: Sequence[str]) -> dict[str, float] | None:
    """Simulator quality per pair model name from ``models.json`` (keys or model_id / short_name / name fields;
    ``quality`` or ``true_quality``, else ``-rank``)."""
    if path is None or not Path(path).is_file():
        return None
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = raw.items() if isinstance(raw, dict) else ((e.get("model_id") or e.get("name"), e) for e in raw)
    quality: dict[str, float] = {}
    for key, entry in entries:
        if isinstance(entry, (int, float)):
            value, aliases = float(entry), [key]
        elif isinstance(entry, dict):
            if entry.get("quality", entry.get("true_quality")) is not None:
                value = float(entry.get("quality", entry.get("true_quality")))
            elif "rank" in entry:
                value = -float(entry["rank"])  # only a rank: better rank -> higher value
            else:
                raise ValueError(f"{path}: entry {key!r} has neither quality nor rank")
            aliases = [key, *(entry.get(f) for f in ("model_id", "short_name", "name", "model"))]
        else:
            raise ValueError(f"{path}: entry {key!r} is {type(entry).__name__}, expected an object")
        for alias in aliases:
            if alias:
                quality.setdefault(str(alias), value)
                quality.setdefault(str(alias).split("/")[-1], value)
    matched = {n: quality.get(n, quality.get(n.split("/")[-1])) for n in names}
    return {n: q for n, q in matched.items() if q is not None} or None


@dataclass
class LeaderboardResult:
    """Ratings of every generator by humans, by the scorer, and (optionally) their true quality."""

    models: list[str]
    n_pairs: int
    human_elo: dict[str, float]
    scorer_elo: dict[str, float]
    true_quality: dict[str, float] | None
    spearman_scorer_human: float | None
    spearman_human_truth: float | None
    spearman_scorer_truth: float | None
    chart_path: Path | None = None
    splits: tuple[str, ...] = ()
    pairs_per_model: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown table sorted by human rating."""
        lines = ["| rank | model | human Elo | scorer Elo | true quality | pairs |", "|---|---|---|---|---|---|"]
        for i, m in enumerate(sorted(self.models, key=lambda m: (-self.human_elo[m], m)), 1):
            truth = self.true_quality.get(m) if self.true_quality else None
            lines.append(f"| {i} | {m} | {self.human_elo[m]:.0f} | {self.scorer_elo.get(m, float('nan')):.0f} | "
                         f"{'n/a' if truth is None else f'{truth:.3f}'} | {self.pairs_per_model.get(m, 0)} |")
        return "\n".join(lines)

    def metadata(self) -> dict[str, Any]:
        """Dagster-ready metadata."""
        return {"n_models": len(self.models), "n_pairs": self.n_pairs, "splits": list(self.splits),
                "spearman_scorer_vs_human": self.spearman_scorer_human,
                "spearman_human_vs_truth": self.spearman_human_truth,
                "spearman_scorer_vs_truth": self.spearman_scorer_truth,
                "human_elo": self.human_elo, "scorer_elo": self.scorer_elo, "true_quality": self.true_quality,
                "chart_png": str(self.chart_path) if self.chart_path else None, "leaderboard": self.table()}


def scorer_outcomes(scores: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """The scorer's vote per pair: 1 / 0 for image 0 / 1, 0.5 when |p0 - p1| <= threshold; NaN (no vote: the pair
    earns neither side anything, as the tie-aware accuracy gives it no credit) when a score is NaN or infinite."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores).all(axis=1)
    safe = np.where(finite[:, None], scores, 0.0)
    with np.errstate(over="ignore"):   # a finite difference beyond ~709 overflows exp to inf: p0 = 0, as it should
        p0 = 1.0 / (1.0 + np.exp(safe[:, 1] - safe[:, 0]))
    votes = np.where(np.abs(2 * p0 - 1) <= threshold, 0.5, (p0 > 0.5).astype(np.float64))
    return np.where(finite, votes, np.nan)


def leaderboard_from_outcomes(model_0: Sequence[str], model_1: Sequence[str], human_outcome_0: np.ndarray,
                              scorer_outcome_0: np.ndarray, true_quality: dict[str, float] | None = None,
                              splits: tuple[str, ...] = ()) -> LeaderboardResult:
    """Ratings and correlations from per-pair outcomes (pure; no model, no files)."""
    names = sorted(set(model_0) | set(model_1))
    usable = [i for i, (a, b) in enumerate(zip(model_0, model_1)) if a != b]
    human = bradley_terry(names, model_0, model_1, human_outcome_0)
    scorer = bradley_terry(names, model_0, model_1, scorer_outcome_0)
    counts = {n: 0 for n in names}
    for i in usable:
        counts[model_0[i]] += 1
        counts[model_1[i]] += 1

    def rho(a: dict[str, float], b: dict[str, float] | None) -> float | None:
        common = [n for n in names if b is not None and n in b]
        return spearman([a[n] for n in common], [b[n] for n in common]) if len(common) >= 2 else None

    return LeaderboardResult(names, len(usable), human, scorer, true_quality, rho(scorer, human),
                             rho(human, true_quality), rho(scorer, true_quality), None, splits, counts)


def write_chart(result: LeaderboardResult, path: Path) -> Path:
    """Grouped bar chart of human / scorer Elo (and true quality on a second axis) per generator."""
    plt = pyplot()
    models = sorted(result.models, key=lambda m: (-result.human_elo[m], m))
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(models)), 4))
    ax.bar(x - 0.2, [result.human_elo[m] - 1000 for m in models], 0.4, label="humans (BT Elo - 1000)")
    ax.bar(x + 0.2, [result.scorer_elo[m] - 1000 for m in models], 0.4, label="scorer (BT Elo - 1000)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, models, rotation=20, ha="right")
    ax.set_ylabel("rating - 1000")
    if result.true_quality:
        twin = ax.twinx()
        twin.plot(x, [result.true_quality.get(m, np.nan) for m in models], "kD", label="true quality")
        twin.set_ylabel("simulator quality")
        twin.legend(loc="upper right")
    rho = result.spearman_scorer_human
    ax.set_title(f"generator leaderboard ({result.n_pairs} pairs; Spearman scorer~human "
                 f"{'n/a' if rho is None else f'{rho:.2f}'})")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def generator_leaderboard(data_dir: str | os.PathLike, model_dir: str | os.PathLike,
                          ground_truth_models_json: Path | None = None,
                          splits: tuple[str, ...] = ("validation", "test"), *, chart_path: Path | None = None,
                          scorer_threshold: float = 0.0, batch_size: int = 64, num_workers: int = 1,
                          device: str = "auto") -> LeaderboardResult:
    """Leaderboard over the held-out ``splits`` of ``data_dir``, scored by the model in ``model_dir`` (captions
    truncated as :class:`training.scoring.Scorer` does: to the run's recorded ``max_length`` for a run's checkpoint)."""
    # the version is read under a shared lock on its folder (the publish's retention keeps it meanwhile), and
    # resolved once: every split from the same version
    with dataset.reading_data_dir(data_dir) as version_dir:
        return _generator_leaderboard(version_dir, model_dir, ground_truth_models_json, splits, chart_path,
                                      scorer_threshold, batch_size, num_workers, device)


def _generator_leaderboard(data_dir: Path, model_dir: str | os.PathLike, ground_truth_models_json: Path | None,
                           splits: tuple[str, ...], chart_path: Path | None, scorer_threshold: float,
                           batch_size: int, num_workers: int, device: str) -> LeaderboardResult:
    max_length = recorded_max_length(model_dir)
    clip, processor = load_model(model_dir)
    dev = resolve_device(device)
    scorer = PairScorer(clip).to(dev)
    model_0, model_1, human, scores = [], [], [], []
    for split in splits:
        with cpu_threads(dev, num_workers=num_workers):
            got = score_split(scorer, processor, data_dir, split, batch_size=batch_size, num_workers=num_workers,
                              max_length=max_length)
        model_0 += got.model_0
        model_1 += got.model_1
        human.append(got.labels[:, 0])  # label_0: 1 / 0 / 0.5 is exactly model_0's BT outcome
        scores.append(got.scores)
    if not model_0:
        raise ValueError(f"no pairs in splits {splits} of {data_dir}")
    if any(not m for m in model_0 + model_1):
        raise ValueError("pairs without model_0/model_1 names cannot be rated")
    names = sorted(set(model_0) | set(model_1))
    result = leaderboard_from_outcomes(model_0, model_1, np.concatenate(human),
                                       scorer_outcomes(np.concatenate(scores), scorer_threshold),
                                       load_true_quality(ground_truth_models_json, names), tuple(splits))
    result.chart_path = write_chart(result, chart_path or Path(model_dir) / "leaderboard.png")
    return result
