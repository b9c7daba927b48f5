"""Settings of the Dagster layer itself: ``[schedules]`` (cron strings) and ``[evaluation]`` (ground truth).

Both are sections of HOME/pickapic.toml like the stages' (``formats.settings.SECTIONS``); this module
imports no Dagster, so ``pickapic settings`` lists them without loading it. Neither changes a byte of
what the pipeline publishes (``output=False``): the crons decide when runs start, the ground truth only
feeds the model assets' metadata and the dedup report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from formats.home import DataHome
from formats.settings import check_fields, knob, quoted


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a five-field cron string (minute hour day month weekday), or None when it is.

    croniter (the parser Dagster's own schedules use) judges the fields; Dagster also refuses six- or
    seven-field strings and a February 30/31 that never comes, and so does this check.
    """
    from croniter import CroniterError, croniter

    fields = text.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, expected 5 (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
    try:
        expanded = croniter.expand(text)[0]
    except CroniterError as error:   # one short line: croniter quotes the whole string, or a whole traceback
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        text = lines[-1] if lines else type(error).__name__
        return text if len(text) <= 160 else text[:157] + "..."
    if expanded[3] == [2] and set(expanded[2]) <= {30, 31}:
        return f"day {fields[2]} of February never comes"
    return None


def check_cron(value: str, key: str) -> str:
    """``value`` when it is a valid cron string; else ``ValueError`` naming ``key`` and the problem."""
    problem = cron_problem(value)
    if problem:
        raise ValueError(f"{key} = {quoted(value)} is not a cron string: {problem}")
    return value


@dataclass(frozen=True)
class ScheduleConfig:
    """When the schedules tick (UTC); read when Dagster loads the definitions of the home."""

    nightly_cron: str = knob("0 2 * * *", "cron (UTC) of nightly_schedule: request what is missing or stale.",
                             output=False)
    train_cron: str = knob("0 4 * * 0", "cron (UTC) of weekly_training_schedule: train on `latest` when it has no "
                                        "model yet.", output=False)
    app_export_cron: str = knob("0 1 * * *", "cron (UTC) of app_export_schedule: export the app database's newest "
                                             "closed day.", output=False)
    sensor_interval_s: int = knob(60, "seconds between ticks of raw_partition_sensor and rebuild_when_inputs_change.",
                                  min=1, max=86400, output=False)

    def validate(self) -> "ScheduleConfig":
        """Raise ``ValueError`` naming the first bad cron string; return self."""
        check_fields(self)
        for name in ("nightly_cron", "train_cron", "app_export_cron"):
            check_cron(getattr(self, name), f"schedules.{name}")
        return self


@dataclass(frozen=True)
class EvaluationConfig:
    """Where the model and dedup reports find ground truth: empty (production) means nothing reads any."""

    ground_truth: str = knob("", "folder of a simulation's ground truth (models.json, summary.json, duplicates.parquet, "
                                 "images.parquet), relative to the data home; empty = none (production): truth_* "
                                 "metadata, Bayes-optimal accuracy and best-of-n are left out. `pickapic demo` sets "
                                 "it to ground_truth.", output=False)

    def validate(self) -> "EvaluationConfig":
        """Raise ``ValueError`` on a value that is not a plain relative folder; return self."""
        check_fields(self)
        if self.ground_truth and (Path(self.ground_truth).is_absolute() or ".." in Path(self.ground_truth).parts):
            raise ValueError(f"evaluation.ground_truth = {quoted(self.ground_truth)} must be a folder inside the data "
                             "home (a relative path without '..')")
        return self

    def truth_dir(self, home: DataHome) -> Path | None:
        """The ground-truth folder, None when none is configured; a configured folder that is missing is an error."""
        if not self.ground_truth:
            return None
        folder = home.root / self.ground_truth
        if not folder.is_dir():
            raise FileNotFoundError(f"evaluation.ground_truth = {quoted(self.ground_truth)}: {folder} is not a folder "
                                    "(simulate into this home, or set evaluation.ground_truth = \"\" for none)")
        return folder


def ground_truth_dir(home: DataHome) -> Path | None:
    """The home's configured ground-truth folder (``evaluation.ground_truth``), None in production."""
    from formats.settings import load

    return load(home.root).config("evaluation").truth_dir(home)
