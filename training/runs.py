"""Training runs of a data home: one run folder per published version, trained, evaluated and ranked in place.

``HOME/models/preference_model/<version>/`` holds the run on that version (resumable): ``best/`` (the
model), ``eval.json`` (tie-aware test accuracy), ``leaderboard.png``. Ground truth is never looked up
here: a caller that has a simulation's truth passes its files in (``summary.json``, ``models.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from formats import dataset
from formats.files import write_bytes_atomic
from formats.home import DataHome
from formats.progress import Progress

if TYPE_CHECKING:  # torch is slow to import; the functions import these when they run
    from training.config import TrainConfig
    from training.evaluate import EvalResult
    from training.leaderboard import LeaderboardResult
    from training.train import TrainResult

MODEL_NAME = "preference_model"
EVAL_FILE = "eval.json"


def run_dir(home: DataHome, version_dir: Path) -> Path:
    """The run folder of the model trained on ``version_dir`` (one per published version)."""
    return home.models / MODEL_NAME / Path(version_dir).name


def latest_version_dir(home: DataHome) -> Path:
    """The version folder `latest` points to, or a clear error when nothing is published."""
    try:
        return dataset.resolve_version(home)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; publish a dataset version first (pickapic build)") from None


def is_evaluated(home: DataHome) -> bool:
    """Whether the `latest` version has a trained and evaluated model."""
    latest = dataset.latest_link(home)
    return latest.exists() and (run_dir(home, latest.resolve()) / EVAL_FILE).is_file()


def trained_model(home: DataHome) -> tuple[Path, Path]:
    """(version folder, ``best/`` model folder) of the model trained on `latest`; an error when there is none."""
    version_dir = latest_version_dir(home)
    best = run_dir(home, version_dir) / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"no trained model for {version_dir.name} at {best}; train one first "
                                "(pickapic build --with-model)")
    return version_dir, best


def train_latest(home: DataHome, config: "TrainConfig",
                 progress: Progress | None = None) -> tuple[Path, "TrainConfig", "TrainResult"]:
    """Train (or resume) on `latest` into its run folder unless ``config`` names other folders.

    Returns (version folder, the config the run used, the result); ``progress`` hears one line per logged step.
    """
    from training.train import train

    version_dir = latest_version_dir(home)
    config = config.replace(data_dir=config.data_dir or str(version_dir),
                            output_dir=config.output_dir or str(run_dir(home, version_dir)))

    def on_event(event: dict[str, Any]) -> None:
        if progress is not None and "step" in event and "loss" in event:
            progress(f"step {event['step']}: loss {event['loss']:.4f}")

    return version_dir, config, train(config, on_event=on_event)


def evaluate_latest(home: DataHome, summary: Path | None = None) -> tuple["EvalResult", Path]:
    """Evaluate the model trained on `latest` and write its ``eval.json``.

    ``summary``: a simulation's ``summary.json``, for the Bayes-optimal accuracy (None: not reported).
    """
    from training.config import home_relative
    from training.evaluate import evaluate_model

    version_dir, best = trained_model(home)
    result = evaluate_model(best, version_dir, ground_truth=summary)
    result.model_dir = home_relative(str(best), home.root)  # as metrics.json: no absolute path of the home
    out = best.parent / EVAL_FILE
    write_bytes_atomic(out, (json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return result, out


def true_quality_table(models_json: Path, pair_name: Callable[[str], str], out: Path) -> Path:
    """A simulation's ``models.json`` keyed by the names pairs use (``pair_name(model_id)``), written to ``out``."""
    models: Mapping[str, Any] = json.loads(Path(models_json).read_text(encoding="utf-8"))
    table = {pair_name(model_id): {"quality": entry["true_quality"], "model_id": model_id}
             for model_id, entry in sorted(models.items()) if entry.get("true_quality") is not None}
    write_bytes_atomic(out, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return out


def rank_latest(home: DataHome, true_quality: Path | None = None) -> "LeaderboardResult":
    """The generator leaderboard of the model trained on `latest` (``true_quality``: a ``true_quality_table``)."""
    from training.leaderboard import generator_leaderboard

    version_dir, best = trained_model(home)
    return generator_leaderboard(version_dir, best, true_quality, chart_path=best.parent / "leaderboard.png")
