"""Model group: the CLIP preference trainer, its tie-aware evaluation, the generator leaderboard and best-of-n.

The work is ``training.runs``; ground truth reaches it only when the home's ``evaluation.ground_truth``
names a simulation's folder (``pickapic demo`` sets it): otherwise no truth_* metadata is reported.
"""

from pathlib import Path

import dagster as dg

from dagster_project.home_settings import ground_truth_dir
from dagster_project.metadata import png_markdown, report_metadata, to_metadata
from dagster_project.resources import PickapicHome
from dagster_project.runconfig import config_class, stage_config
from dagster_project.staleness import runtime_version
from dagster_project.steplog import step_warner
from dagster_project.versions import CODE_VERSIONS
from formats import dataset
from formats.settings import load
from training import runs

_BaseTrainRunConfig = config_class("train", "_BaseTrainRunConfig")


class TrainRunConfig(_BaseTrainRunConfig):
    """Trainer knobs (demo preset by default); data_dir/output_dir default to `latest` and its run folder in
    HOME/models (a data_dir alone: that version's run folder); an output_dir is checked as `pickapic train
    --output-dir` is."""


def _truth_file(truth: Path | None, name: str) -> Path | None:
    """``truth/name`` when a ground-truth folder is configured and holds that file."""
    return truth / name if truth is not None and (truth / name).is_file() else None


@dg.asset(deps=["published_dataset"], group_name="model", kinds={"pytorch", "webdataset"},
          code_version=CODE_VERSIONS["model"])
def preference_model(context: dg.AssetExecutionContext, config: TrainRunConfig, data_home: PickapicHome):
    """A PickScore-objective CLIP preference model trained on the `latest` dataset version."""
    home = data_home.home()
    keep_runs = load(home.root).config("models").keep_runs
    # progress at INFO; what retention could not do, an unrecorded run, a diverged run trained over, an eval split of
    # ties only (rev33f) are warnings of the step: `pickapic build --with-model` prints each on stderr (review rev31l)
    trained = runs.train_latest(home, stage_config("train", config, home, context), progress=context.log.info,
                                keep_runs=keep_runs, warn=step_warner(context.log))
    version_dir, train_config, result = trained.version_dir, trained.config, trained.result
    # the curve once, as a picture (``curve_png`` would embed it a second time)
    metadata = to_metadata({k: v for k, v in result.metadata().items() if k != "curve_png"})
    metadata["training_curve"] = png_markdown(result.curve_path, "training curve")
    metadata["curve_path"] = dg.MetadataValue.path(str(result.curve_path))
    metadata["dataset_version"] = version_dir.name
    if trained.retention is not None:
        metadata["model_runs_kept"] = dg.MetadataValue.int(len(trained.retention.kept))
        metadata["model_runs_deleted"] = dg.MetadataValue.text(", ".join(trained.retention.deleted) or "none")
    version = runtime_version(context.instance, "model", home, train_config)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def preference_model_eval(data_home: PickapicHome):
    """Tie-aware accuracy on the run's test_split (threshold on its eval_split) vs the random baseline, the untrained
    model and (with truth) the Bayes optimum."""
    home = data_home.home()
    result, out = runs.evaluate_latest(home, summary=_truth_file(ground_truth_dir(home), "summary.json"))
    return dg.MaterializeResult(metadata={**report_metadata(result), "eval_json": str(out)})


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def generator_leaderboard(data_home: PickapicHome):
    """Bradley-Terry ratings of the generator models: humans vs the trained scorer vs (with truth) true quality."""
    from pipelines.curation.decisions import short_model_name

    home = data_home.home()
    models = _truth_file(ground_truth_dir(home), "models.json")
    # both files are published together, only when no training changed the model meanwhile (runs.publishing)
    result = runs.rank_latest(home, models_json=models, pair_name=short_model_name)
    metadata = to_metadata({k: v for k, v in result.metadata().items() if k != "chart_png"})
    if result.chart_path:
        metadata["chart"] = png_markdown(result.chart_path, "generator leaderboard")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=["preference_model"], group_name="model", kinds={"pytorch"})
def best_of_n(data_home: PickapicHome):
    """Best-of-n on simulated candidates: true utility the trained scorer's pick gains over a random pick."""
    home = data_home.home()
    truth = ground_truth_dir(home)
    if _truth_file(truth, "images.parquet") is None:
        return dg.MaterializeResult(metadata={"status": dg.MetadataValue.text(
            "not measured: best-of-n needs a simulation's ground truth (each candidate's true utility); set "
            "evaluation.ground_truth in the home's pickapic.toml to its folder (pickapic demo does)")})
    # only a simulated home gets here: the user asked for the simulation's measurements
    from simulator.best_of_n import run_best_of_n, untrained_model_dir

    # the run's lock held throughout (runs.publishing): no training changes the model while best_of_n/ is written
    # and the version held for reading (a shared lock on its folder: the publish's retention keeps it meanwhile)
    with runs.publishing_for_model(home, "best_of_n", hold=True) as published, \
            dataset.reading_resolved(lambda: published.version_dir, False) as version_dir:
        result = run_best_of_n(truth, version_dir, published.best, published.path("best_of_n"),
                               untrained_dir=untrained_model_dir(published.best))
    metadata = to_metadata(result.metadata())
    metadata["chart"] = png_markdown(Path(result.chart_path), "best-of-n gain over a random pick")
    if result.contact_sheet:
        metadata["contact_sheet"] = png_markdown(Path(result.contact_sheet), "trained scorer's best-of-n choices")
    return dg.MaterializeResult(metadata=metadata)
