"""Model group: the CLIP preference trainer, its tie-aware evaluation, the generator leaderboard and best-of-n."""

import json
from pathlib import Path

import dagster as dg

from dagster_project.metadata import png_markdown, report_metadata, to_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import runtime_version
from dagster_project.versions import CODE_VERSIONS
from formats import dataset
from formats.home import DataHome

_BaseTrainRunConfig = config_class("train", "_BaseTrainRunConfig")


class TrainRunConfig(_BaseTrainRunConfig):
    """Trainer knobs (demo preset by default); data_dir/output_dir default to `latest` and HOME/models."""


def latest_version_dir(home: DataHome) -> Path:
    """The version directory `latest` points to, or a clear error when nothing is published."""
    try:
        return dataset.resolve_version(home)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; materialize published_dataset first") from None


def model_run_dir(home: DataHome, version_dir: Path) -> Path:
    """One training run directory per published dataset version (resumable in place)."""
    return home.models / "preference_model" / version_dir.name


def _trained_model_dir(home: DataHome) -> tuple[Path, Path]:
    version_dir = latest_version_dir(home)
    best = model_run_dir(home, version_dir) / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"no trained model for {version_dir.name} at {best}; materialize preference_model first")
    return version_dir, best


def true_quality_by_pair_name(home: DataHome, out: Path) -> Path | None:
    """The simulator's model quality keyed by the short names pairs use (None without ground truth)."""
    from pipelines.curation.decisions import short_model_name

    source = home.ground_truth / "models.json"
    if not source.is_file():
        return None
    models = json.loads(source.read_text())
    table = {short_model_name(model_id): {"quality": entry["true_quality"], "model_id": model_id}
             for model_id, entry in sorted(models.items()) if entry.get("true_quality") is not None}
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return out


@dg.asset(deps=["published_dataset"], group_name="model", kinds={"pytorch", "webdataset"},
          code_version=CODE_VERSIONS["model"])
def preference_model(context: dg.AssetExecutionContext, config: TrainRunConfig, data_home: PickapicHome):
    """A PickScore-objective CLIP preference model trained on the `latest` dataset version."""
    home = data_home.home()
    version_dir = latest_version_dir(home)
    train_config = stage_config("train", config, home)
    train_config = train_config.replace(
        data_dir=train_config.data_dir or str(version_dir),
        output_dir=train_config.output_dir or str(model_run_dir(home, version_dir)),
    )
    from training.train import train

    def progress(event: dict) -> None:
        if "step" in event and "loss" in event:
            context.log.info(f"step {event['step']}: loss {event['loss']:.4f}")

    result = train(train_config, progress=progress)
    # the curve once, as a picture (``curve_png`` would embed it a second time)
    metadata = to_metadata({k: v for k, v in result.metadata().items() if k != "curve_png"})
    metadata["training_curve"] = png_markdown(result.curve_path, "training curve")
    metadata["curve_path"] = dg.MetadataValue.path(str(result.curve_path))
    metadata["dataset_version"] = version_dir.name
    version = runtime_version(context.instance, "model", home, train_config)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def preference_model_eval(data_home: PickapicHome):
    """Tie-aware test_unique accuracy vs the random baseline, the untrained model and the Bayes optimum."""
    from training.evaluate import evaluate_model

    home = data_home.home()
    version_dir, best = _trained_model_dir(home)
    summary = home.ground_truth / "summary.json"
    result = evaluate_model(best, version_dir, ground_truth=summary if summary.is_file() else None)
    out = best.parent / "eval.json"
    out.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    return dg.MaterializeResult(metadata={**report_metadata(result), "eval_json": str(out)})


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def generator_leaderboard(data_home: PickapicHome):
    """Bradley-Terry ratings of the generator models: humans vs the trained scorer vs (simulated) truth."""
    from training.leaderboard import generator_leaderboard as rank_generators

    home = data_home.home()
    version_dir, best = _trained_model_dir(home)
    truth = true_quality_by_pair_name(home, best.parent / "true_quality.json")
    result = rank_generators(version_dir, best, truth, chart_path=best.parent / "leaderboard.png")
    metadata = to_metadata({k: v for k, v in result.metadata().items() if k != "chart_png"})
    if result.chart_path:
        metadata["chart"] = png_markdown(result.chart_path, "generator leaderboard")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def best_of_n(data_home: PickapicHome):
    """Best-of-n on simulated candidates: true utility the trained scorer's pick gains over a random pick."""
    from simulator.best_of_n import run_best_of_n, untrained_model_dir

    home = data_home.home()
    version_dir, best = _trained_model_dir(home)
    if not (home.ground_truth / "images.parquet").is_file():
        return dg.MaterializeResult(metadata={"status": dg.MetadataValue.text(
            f"not measured: {home.ground_truth / 'images.parquet'} is missing (best-of-n needs the simulator's "
            "ground truth to know each candidate's true utility)")})
    result = run_best_of_n(home.root, version_dir, best, best.parent / "best_of_n", untrained_dir=untrained_model_dir(best))
    metadata = to_metadata(result.metadata())
    metadata["chart"] = png_markdown(Path(result.chart_path), "best-of-n gain over a random pick")
    if result.contact_sheet:
        metadata["contact_sheet"] = png_markdown(Path(result.contact_sheet), "trained scorer's best-of-n choices")
    return dg.MaterializeResult(metadata=metadata)
