"""What is missing or stale in a data home: the data versions its inputs give now vs what Dagster recorded.

Every asset records a data version (``dagster/data_version``) when it materializes: a digest of its code
version, its output-affecting settings and the data versions of its inputs (``dagster_project.versions``,
``pipelines.provenance``). Raw days are observed as ``raw_app_logs`` partitions whose data version is the
content digest of their files. An asset is

- *missing* when it never materialized (or its output files are gone),
- *stale* when the version its inputs give now differs from the recorded one: a raw file changed, a
  setting that changes its output changed, its code version was bumped, an upstream asset changed, a blob
  its features rejected landed or changed (``missing_blob``, or ``truncated_image`` and the like for a blob seen
  half copied: the version's ``+missing-blobs:`` mark, :func:`expected_missing_mark`), or its last
  materialization failed a blocking check (recorded as ``<version>-failed-checks``); also a day whose rewrite
  by another day's ingest a crash interrupted (:mod:`pipelines.ingest.rewrites`),
- *fresh* otherwise, and then a build leaves it alone.

:func:`plan_build` turns that into the Dagster runs a build needs; the assets call :func:`runtime_version`
to record their own version from the versions Dagster recorded for their inputs.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import dagster as dg
from dagster._core.events import DagsterEventType

from dagster_project.steplog import step_warning
from dagster_project.versions import (
    BY_NAME,
    DAILY,
    DATA_VERSION_TAG,
    FAILED_SUFFIX,
    GLOBAL,
    LATE_MARK,
    PARTITIONS,
    RAW_ASSET,
    STAGES,
    Stage,
    late_days_of,
)
from formats import dataset
from formats.home import DataHome
from formats.settings import Settings, config_digest
from pipelines.ingest import rewrites
from pipelines.provenance import RawDigests, RejectedBlobs, combine, files_digest
from pipelines.provenance import begun_days as _begun_days
from training import runs

Lookup = Callable[[str, "str | None"], "str | None"]


def moderation_files(home: DataHome, curation_config) -> list[Path]:
    """The moderation lists the decisions stage reads under ``curation_config``."""
    return [home.moderation_list(curation_config.banned_users_file, home.banned_users_file),
            home.moderation_list(curation_config.phrases_file, home.nsfw_phrases_file)]


def stage_version(stage: Stage, home: DataHome, stage_config, upstream: Lookup, days: Iterable[str],
                  raw: RawDigests, day: str | None = None, late: Sequence[str] = ()) -> str:
    """The data version of ``stage`` (for ``day`` when partitioned) given its inputs' versions.

    ``late``: for ingest, the later raw days whose images export the day's rankings or downloads used
    (``ingest.late_image_days``); they are inputs of the day and are named in its version (``LATE_MARK``).
    """
    days = sorted(days)
    late = sorted(set(late))
    if stage.name == "app_export":
        inputs: list = [raw.day(day)]   # what it wrote: the database is only known by exporting it
    elif stage.name == "ingest":
        inputs = [raw.day(day)] + ([[d, raw.day(d)] for d in late] if late else [])
    elif stage.name == "features":
        inputs = [upstream("ingest", day)]
    elif stage.name == "dedup":
        inputs = [[d, upstream("features", d)] for d in days]
    elif stage.name == "decisions":
        inputs = [files_digest(moderation_files(home, stage_config)), upstream("dedup", None),
                  [[d, upstream("ingest", d), upstream("features", d)] for d in days]]
    else:
        previous = STAGES[STAGES.index(stage) - 1]
        inputs = [upstream(previous.name, None)]
    version = combine(stage.name, stage.code_version, config_digest(stage.section, stage_config, home.root), inputs)
    return version + LATE_MARK + ",".join(late) if stage.name == "ingest" and late else version


class RecordedVersions:
    """The data versions Dagster recorded, per stage (and day), read in a few queries."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._daily: dict[str, dict[str, str | None]] = {}
        self._global: dict[str, str | None] = {}

    def days(self, stage_name: str) -> dict[str, str | None]:
        """day -> recorded version of a daily stage (None when its assets disagree)."""
        if stage_name not in self._daily:
            per_asset = [self._tags(asset, DagsterEventType.ASSET_MATERIALIZATION) for asset in BY_NAME[stage_name].assets]
            days = set().union(*per_asset)
            self._daily[stage_name] = {d: _same([tags.get(d) for tags in per_asset]) for d in days}
        return self._daily[stage_name]

    def get(self, stage_name: str, day: str | None) -> str | None:
        """The recorded version of a stage (of ``day`` for a daily stage); None when missing."""
        stage = BY_NAME[stage_name]
        if stage.partitioned:
            return self.days(stage_name).get(day)
        if stage_name not in self._global:
            event = self.instance.get_latest_materialization_event(dg.AssetKey(stage.assets[0]))
            tags = event.asset_materialization.tags if event and event.asset_materialization else None
            self._global[stage_name] = (tags or {}).get(DATA_VERSION_TAG)
        return self._global[stage_name]

    def observed_raw(self) -> dict[str, str]:
        """day -> the raw day's last observed content version."""
        return self._tags(RAW_ASSET, DagsterEventType.ASSET_OBSERVATION)

    def _tags(self, asset: str, event_type: DagsterEventType) -> dict[str, str]:
        tags = self.instance.event_log_storage.get_latest_tags_by_partition(
            dg.AssetKey(asset), event_type, [DATA_VERSION_TAG])
        return {day: values[DATA_VERSION_TAG] for day, values in tags.items() if DATA_VERSION_TAG in values}


def _same(values: list[str | None]) -> str | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def runtime_version(instance: dg.DagsterInstance, stage_name: str, home: DataHome, stage_config,
                    day: str | None = None, late: Sequence[str] = (),
                    read: dict[str, str | None] | None = None) -> str:
    """The version an asset records now: its inputs are what Dagster recorded for its upstream assets; ``read``:
    the digests of ``day``'s raw files as the stage read them (``IngestReport.read_digests``), used instead of the
    files as they are now (:meth:`RawDigests.pin`)."""
    stage = BY_NAME[stage_name]
    recorded = RecordedVersions(instance)
    raw = RawDigests(home)
    if read is not None and day is not None:
        raw.pin(day, read)
    days = sorted(set(recorded.days("features")) | set(recorded.days("ingest"))) if not stage.partitioned else []
    version = stage_version(stage, home, stage_config, recorded.get, days, raw, day, late)
    raw.save()
    return version


def settled_version(context, before: str, after: str) -> str:
    """The version a step records: ``before``, computed from its upstream assets' records when it
    started, not ``after``, computed when it ended.

    Another run (a UI launch beside the nightly) may record a new upstream version while this step runs;
    recording ``after`` would claim inputs the step never read, and the asset would look fresh while
    built from older ones. ``before`` is what it read, or older: at worst the asset looks stale and
    runs once more. A difference is logged."""
    if before != after:
        step_warning(context.log, "the inputs' recorded versions changed while this step ran (another run "
                                  "materialized an upstream asset): recording the versions it started from, so "
                                  "the asset shows stale and the next build or tick runs it again")
    return before


def version_at_start(context, stage_name: str, home: DataHome, stage_config, day: str | None = None) -> Callable[[], str]:
    """Compute the step's version now, before it reads its inputs; the returned function, called when the
    step ends, gives the version to record (:func:`settled_version` of this one and one computed then)."""
    before = runtime_version(context.instance, stage_name, home, stage_config, day)
    return lambda: settled_version(context, before, runtime_version(context.instance, stage_name, home, stage_config, day))


def outputs_present(home: DataHome, stage: Stage, day: str | None) -> bool:
    """Whether the files a fresh record stands for are still there."""
    if stage.partitioned:
        return all(home.partition_file(dataset, day).is_file() for dataset in stage.assets)
    if stage.name == "publish":
        return dataset.is_published(home)
    if stage.name == "model":
        return runs.is_evaluated(home)
    if stage.name == "splits":
        return all(home.table_file(d).is_file()
                   for d in ("split_pairs", "split_rejects", "split_ledger", "split_key_owners"))
    return home.table_file(stage.assets[0]).is_file()


@dataclass
class PlannedRun:
    """One Dagster run a build launches: its job, partition, the ops to run and why."""

    job: str
    ops: list[str]
    partition: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.partition or {"rebuild_dataset_job": "rebuild", "train_model_job": "model"}[self.job]


@dataclass
class BuildPlan:
    """What a build must run, and the raw observations to record first."""

    days: list[str]                                  # raw days of the home
    runs: list[PlannedRun]
    observations: dict[str, str]                     # day -> raw content version to record
    expected: dict[tuple[str, str | None], str]

    @property
    def up_to_date(self) -> bool:
        return not self.runs

    def describe(self, followers: Callable[[PlannedRun], list[str]] | None = None) -> list[str]:
        """One line per run: what and why (``followers``: the other assets a run materializes, named after its ops:
        ``dagster_project.build.describe_plan``)."""
        return [f"{run.label}: {', '.join(run.ops + (followers(run) if followers else []))} "
                f"({'; '.join(run.reasons)})" for run in self.runs]


def plan_build(home: DataHome, settings: Settings, instance: dg.DagsterInstance, *, selected_days: list[str] | None = None,
               force: bool = False, with_model: bool = False, ignore_days: Iterable[str] = ()) -> BuildPlan:
    """The runs that make every asset fresh (``selected_days`` and ``force`` recompute on request).

    ``ignore_days``: raw days planned as if their folder were gone (what was built from them is kept and
    nothing waits for them): the nightly schedule's incomplete days, which it never ingests. The rows of every
    day it does not run (those, the days whose raw folder is gone, the days not begun) are settled as they are
    when the days after them are judged (``RejectedBlobs(home, planned=...)``: the days it runs, one notion;
    review rev31b).
    """
    recorded = RecordedVersions(instance)
    raw = RawDigests(home)
    ignored = set(ignore_days)
    raw_days = [day for day in begun_days(home.raw_days()) if day not in ignored]
    configs = {stage.section: settings.config(stage.section) for stage in STAGES}
    built_days = set(recorded.days("features")) | set(recorded.days("ingest"))
    all_days = sorted(set(raw_days) | built_days)
    expected: dict[tuple[str, str | None], str] = {}

    def lookup(stage_name: str, day: str | None) -> str | None:
        key = (stage_name, day)
        return expected[key] if key in expected else recorded.get(stage_name, day)

    observed = recorded.observed_raw()
    observations = {}
    blobs = RejectedBlobs(home, planned=raw_days)   # the days it does not run are settled (provenance.days_not_run)
    blob_base = configs["features"].base(home.root)
    forced_days = set(raw_days if force and selected_days is None else selected_days or [])
    runs: list[PlannedRun] = []
    for day in all_days:
        if day not in raw_days:
            continue  # its raw folder is gone: keep what was built from it (lookup falls back to the record)
        raw_version = raw.day(day)
        if observed.get(day) != raw_version:
            observations[day] = raw_version
        ops, reasons, versions = [], [], {}
        for stage in DAILY:
            late = late_days_of(recorded.get(stage.name, day)) if stage.name == "ingest" else ()
            version = stage_version(stage, home, configs[stage.section], lambda n, d: versions.get(n) or lookup(n, d),
                                    all_days, raw, day, late)
            landed = False
            if stage.name == "features":
                mark, landed = expected_missing_mark(blobs, day, blob_base)
                version += mark
            versions[stage.name] = version
            reason = _why(recorded.get(stage.name, day), version, home, stage, day, bool(ops),
                          day in forced_days, raw_changed=day in observations and day in observed,
                          blobs_landed=landed)
            if reason:
                ops.append(stage.op)
                reasons.append(f"{stage.name}: {reason}")
        if ops and selected_days is not None and day not in selected_days:
            continue  # stale but outside --from/--to: the global stages will read what was built before
        expected.update({(name, day): version for name, version in versions.items()})
        if ops:
            runs.append(PlannedRun(DAILY[0].job, ops, day, reasons))
    upstream_runs = False
    global_ops, global_reasons = [], []
    for stage in GLOBAL:
        version = stage_version(stage, home, configs[stage.section], lookup, all_days, raw)
        expected[(stage.name, None)] = version
        reason = _why(recorded.get(stage.name, None), version, home, stage, None, upstream_runs, force)
        if reason:
            global_ops.append(stage.op)
            global_reasons.append(f"{stage.name}: {reason}")
            upstream_runs = True
    if global_ops:
        runs.append(PlannedRun(GLOBAL[0].job, global_ops, None, global_reasons))
    if with_model:
        stage = BY_NAME["model"]
        version = stage_version(stage, home, configs[stage.section], lookup, all_days, raw)
        expected[("model", None)] = version
        reason = _why(recorded.get("model", None), version, home, stage, None, upstream_runs, force)
        if reason:
            # the run also materializes the job's reports on the model (automation.asset_keys)
            runs.append(PlannedRun(stage.job, [stage.op], None, [f"model: {reason}"]))
    raw.save()
    blobs.save()
    return BuildPlan(days=raw_days, runs=runs, observations=observations, expected=expected)


def expected_missing_mark(blobs: RejectedBlobs, day: str, base: str) -> tuple[str, bool]:
    """(the ``MISSING_MARK`` suffix of a day's features version now, whether a blob its output rejects as
    missing has landed since). The recorded version names the blobs its output rejects for a reason a change of
    the blob heals, as the run left them (the asset appends :meth:`~pipelines.provenance.RejectedBlobs.recorded_mark`);
    now it names those still missing and the others as they are, so a blob that landed or changed (one seen half
    copied, then whole) makes the day stale, and its new version makes the global stages stale (reviews rev23a,
    rev23g)."""
    return blobs.expected_mark(day, base)


def begun_days(days: Iterable[str], today: str | None = None) -> list[str]:
    """The days that have begun (UTC): a folder named after a later day is an export error, never ingested
    (:func:`pipelines.provenance.begun_days`, on this module's clock)."""
    return _begun_days(days, today or dt.datetime.now(dt.timezone.utc).date().isoformat())


def _why(recorded: str | None, expected: str, home: DataHome, stage: Stage, day: str | None, upstream_runs: bool,
         forced: bool, raw_changed: bool = False, blobs_landed: bool = False) -> str | None:
    """Why a stage must run (None: it is fresh)."""
    if forced:
        return "recompute requested"
    if recorded is None:
        return "never built"
    if recorded.endswith(FAILED_SUFFIX):
        return "its last run failed a blocking check"
    if upstream_runs:
        return "an input is recomputed"
    if recorded != expected:
        if stage.name == "ingest" and raw_changed:
            return "raw files changed"
        if blobs_landed:
            return "an image blob it rejected as missing_blob is there now"
        if stage.name == "features":
            return "inputs changed (an upstream version, a setting, the code version, or an image blob it rejected changed)"
        return "inputs changed (an upstream version, a setting or the code version)"
    if not outputs_present(home, stage, day):
        return "output files missing"
    if stage.name == "ingest" and day is not None and rewrites.is_pending(home, day):
        return "a rewrite of its files by another day's ingest was interrupted (a crash)"
    return None


def raw_observation(day: str, version: str) -> dg.AssetObservation:
    """The observation recording a raw day's content version."""
    return dg.AssetObservation(asset_key=RAW_ASSET, partition=day, tags={DATA_VERSION_TAG: version},
                               metadata={"raw_day": day})


def record_observations(instance: dg.DagsterInstance, observations: dict[str, str]) -> None:
    """Register the raw days as partitions and record their content versions (no run needed)."""
    if observations:
        instance.add_dynamic_partitions(PARTITIONS, sorted(observations))
    for day, version in sorted(observations.items()):
        instance.report_runless_asset_event(raw_observation(day, version))
