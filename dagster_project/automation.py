"""Jobs, the nightly schedule, the raw-day sensor, the rebuild sensor, weekly training, freshness checks.

The nightly path runs by itself wherever a Dagster daemon runs for the home (``pickapic serve``):

- ``raw_partition_sensor`` (every minute, ``schedules.sensor_interval_s``): a complete raw day that is new,
  or whose files changed, is added as a partition, observed (``raw_app_logs``) and ingested + fingerprinted;
- ``rebuild_when_inputs_change`` (same interval): when the plan says curation, splits and publish are stale and
  no run is queued or running and no day is still to build, they run once (``rebuild_sensor``);
- ``nightly_schedule`` (``schedules.nightly_cron``, 02:00 UTC): the catch-all. It plans exactly as
  ``pickapic build`` does and requests what is missing or stale: the daily partitions first, then (on a
  night with none) the global stages a changed setting or code version made stale; it first removes the
  sensors' and schedules' tick logs older than a week (``dagster_project/ticklogs.py``: a quiet sensor tick
  writes none, but Dagster never removes those it keeps);
- ``weekly_training_schedule`` (``schedules.train_cron``, Sunday 04:00 UTC): trains on ``latest`` when no
  model exists for it yet;
- ``app_export_schedule`` (``schedules.app_export_cron``, 01:00 UTC): where the app's PostgreSQL database
  is the source (``PICKAPIC_APP_DB_DSN`` set), exports the newest closed day and the lookback days into
  the raw zone, adding them as partitions, and before them up to ``CATCH_UP_DAYS`` days the raw zone lacks
  (missed nights, failed exports; see ``missing_days``) and the days an earlier export found lacking rows
  committed after their last export (``pipelines.appdb.export.late_rows``) or marked for rows moved there,
  raw days or days the raw zone lacks after its first real day, whatever their age (fix38i); the raw-day
  sensor then ingests the days whose files changed.

While a `pickapic build` holds the home's build lock, the nightly and both sensors request nothing and say so
(:func:`build_skip_reason`; review rev32e: between the build's runs they saw nothing running and requested its days
and its rebuild beside it).

The crons are settings of the home (``[schedules]`` of HOME/pickapic.toml, validated as five-field cron
strings), read when Dagster loads these definitions for the home ($PICKAPIC_HOME): that section alone, so a refused
value of another section is logged and said in each schedule's and sensor's description instead of stopping the
load (:func:`home_crons_and_warning`; review rev29f); the environment
variables ``PICKAPIC_NIGHTLY_CRON``, ``PICKAPIC_TRAIN_CRON`` and ``PICKAPIC_APP_EXPORT_CRON`` override
them, validated the same way.

All of them start switched on. ``PICKAPIC_AUTOMATION=off`` in the environment of the webserver and the
daemon (``pickapic serve --no-automation``) starts them switched off; a switch flipped in the UI is
stored in the home's instance and wins over either default.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import stat
import warnings
from typing import TYPE_CHECKING, Iterable, Mapping

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.launcher import WorkerStatus

from dagster_project.home_settings import ScheduleConfig
from dagster_project.resources import PickapicHome
from dagster_project.staleness import (
    BuildPlan,
    PlannedRun,
    begun_days,
    plan_build,
    raw_observation,
    record_observations,
)
from dagster_project.ticklogs import prune_home_tick_logs, quiet_freshness_sensor, raw_zone_report, say_raw_zone
from dagster_project.versions import FEATURE_DATASETS, PARTITIONS, STAGES
from formats import dataset
from formats.home import DataHome
from formats.locks import try_lock
from formats.rawzone import RAW_ZONE_SAID
from formats.settings import load
from pipelines.appdb.scheduled import CATCH_UP_DAYS, CATCH_UP_HORIZON_DAYS, STRAY_DAY_ROWS, newest_closed, real_days  # noqa: F401
from pipelines.provenance import RAW_TABLE_FILES, raw_day_complete
from training import runs

if TYPE_CHECKING:  # the type of Definitions.resolve_asset_graph(), not exported by dagster
    from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph

# schedules.<name> -> the environment variable that overrides it (documented in the README)
CRON_ENV = {"nightly_cron": "PICKAPIC_NIGHTLY_CRON", "train_cron": "PICKAPIC_TRAIN_CRON",
            "app_export_cron": "PICKAPIC_APP_EXPORT_CRON", "sensor_interval_s": "PICKAPIC_SENSOR_INTERVAL_S"}
AUTOMATION_ENV = "PICKAPIC_AUTOMATION"
# every status Dagster counts as in progress: CANCELING too (a terminated run still runs its step until the
# interrupt reaches it: review rev21f)
_UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
BUILD_TAG = "pickapic/launched_by"       # the tag `pickapic build` puts on its runs ...
BUILD_TAG_VALUE = "pickapic build"       # ... with this value


def automation_on() -> bool:
    """Whether schedules and sensors start switched on (``PICKAPIC_AUTOMATION=off`` turns them off)."""
    return os.environ.get(AUTOMATION_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if automation_on() else dg.DefaultSensorStatus.STOPPED
SCHEDULE_STATUS = dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED

# What each job runs: the one definition the jobs, the schedules, the sensors and `pickapic build` use.
JOB_SELECTIONS: dict[str, dg.AssetSelection] = {
    "daily_partition_job": dg.AssetSelection.groups("ingest", "features"),
    "rebuild_dataset_job": dg.AssetSelection.groups("curation", "splits", "publish"),
    "app_export_job": dg.AssetSelection.groups("app_export"),
    "train_model_job": dg.AssetSelection.groups("model"),
}

daily_partition_job = dg.define_asset_job(
    "daily_partition_job", selection=JOB_SELECTIONS["daily_partition_job"],
    description="Ingest and fingerprint one day's raw export.",
)
rebuild_dataset_job = dg.define_asset_job(
    "rebuild_dataset_job", selection=JOB_SELECTIONS["rebuild_dataset_job"],
    description="Re-cluster, re-decide, re-split over all days and publish a new dataset version.",
)
app_export_job = dg.define_asset_job(
    "app_export_job", selection=JOB_SELECTIONS["app_export_job"],
    description="Export one day of the app's PostgreSQL database into the raw zone (the raw sensor ingests it).",
)
train_model_job = dg.define_asset_job(
    "train_model_job", selection=JOB_SELECTIONS["train_model_job"],
    description="Train the preference model on `latest`, evaluate it and rank the generators.",
)


def home_crons(home: DataHome | None = None, environ: Mapping[str, str] = os.environ) -> ScheduleConfig:
    """The schedules' crons and the sensors' interval: the home's ``[schedules]`` settings, then $PICKAPIC_*_CRON
    and $PICKAPIC_SENSOR_INTERVAL_S, each validated like a setting (the error names the variable). Only
    ``[schedules]`` is read (:func:`home_crons_and_warning`): a refused value of another section is no reason
    for the schedules to stop."""
    return home_crons_and_warning(home, environ)[0]


def home_crons_and_warning(home: DataHome | None = None, environ: Mapping[str, str] = os.environ
                           ) -> tuple[ScheduleConfig, str | None]:
    """:func:`home_crons` and a one-line warning (None when there is nothing to say).

    The crons come from ``[schedules]`` of ``HOME/pickapic.toml`` alone, checked as a setting (a bad cron or an
    unknown ``schedules.`` key raises ``SettingsError`` naming it, as before). A file that cannot be read or parsed
    at all (a syntax error, not UTF-8, a link whose target is gone) gives the default crons instead, with a warning;
    a value of another section that the settings refuse (``[publish] keep_versions = 0``, written by hand) leaves
    the crons as the file gives them, with a warning too: every run still refuses the file, naming the value, but
    the definitions load, so the UI, the sensors and the schedules are there to show it (review rev29f: one bad
    value anywhere stopped the code location of ``pickapic serve`` / ``ui`` from loading)."""
    from formats.settings import SETTINGS_FILE, Settings, SettingsError, parse_text, quoted, read_text, settings_path

    root = (home or DataHome.at(None)).root
    path = settings_path(root)
    source = f"{SETTINGS_FILE} of the data home"
    settings, warning = Settings(), None
    try:
        if path.is_file():
            document = parse_text(read_text(path, source), source)
        elif os.path.lexists(path):
            raise SettingsError(f"{source} ({path}) is there but is not a file (a link whose target is gone, or a "
                                "folder)")
        else:
            document = {}
    except Exception as exc:   # noqa: BLE001 - whatever reading it raises: the definitions still load (review rev23c)
        reason = str(exc) if isinstance(exc, (SettingsError, OSError)) else f"{type(exc).__name__}: {quoted(str(exc))}"
        document, warning = {}, (f"{path} cannot be read ({reason}): the schedules use the default crons until it is "
                                 "fixed and the definitions are reloaded; every run refuses the file meanwhile")
    table = document.get("schedules", {})
    if not isinstance(table, dict):
        raise SettingsError(f"settings file {source}: 'schedules' must be a [section] table, e.g. [schedules] then "
                            'nightly_cron = "0 2 * * *"')
    if table:
        settings = settings.with_values({f"schedules.{name}": value for name, value in table.items()}, source,
                                        strict=True)
    if warning is None and document:
        try:                        # the rest of the file, as every run will read it: said, never fatal here
            load(root)
        except SettingsError as exc:
            warning = (f"{path} holds a value the settings refuse ({exc}): every run refuses it until it is fixed "
                       "(pickapic settings --set KEY=VALUE --write); the schedules use its [schedules] values")
        except Exception as exc:   # noqa: BLE001 - whatever else reading it raises (review rev23c)
            warning = (f"{path} cannot be read ({type(exc).__name__}: {quoted(str(exc))}): every run refuses it "
                       "until it is fixed; the schedules use its [schedules] values")
    for name, variable in CRON_ENV.items():
        text = environ.get(variable, "").strip()
        if text:
            settings = settings.with_values({f"schedules.{name}": text}, f"${variable}")
    return settings.config("schedules"), warning


# Read once, when Dagster loads these definitions for the home: a bad cron stops the load, naming the key; a refused
# value elsewhere in the file is logged and said in each schedule's and sensor's description (CRONS_NOTE)
CRONS, CRONS_WARNING = home_crons_and_warning()
if CRONS_WARNING:
    import logging

    logging.getLogger(__name__).warning("pickapic: %s", CRONS_WARNING)
CRONS_NOTE = f" WARNING (when these definitions were loaded): {CRONS_WARNING}" if CRONS_WARNING else ""


def app_export_settings(home: DataHome) -> dict:
    """Lag and lookback of the scheduled export: $PICKAPIC_APP_EXPORT_LAG_MINUTES / _LOOKBACK_DAYS, else the
    home's ``[app_export]`` settings (validated like every setting)."""
    settings = load(home.root)
    values = {}
    for name, variable in (("lag_minutes", "PICKAPIC_APP_EXPORT_LAG_MINUTES"),
                           ("lookback_days", "PICKAPIC_APP_EXPORT_LOOKBACK_DAYS")):
        text = os.environ.get(variable, "").strip()
        if text:
            settings = settings.with_values({f"app_export.{name}": text}, f"${variable}")
        values[name] = getattr(settings.config("app_export"), name)
    return values


@dg.schedule(job=app_export_job, cron_schedule=CRONS.app_export_cron, execution_timezone="UTC",
             default_status=SCHEDULE_STATUS,
             description=f"Nightly ({CRONS.app_export_cron} UTC, schedules.app_export_cron): export the newest day closed for the lag "
                         "and re-export the lookback days before it; skipped unless PICKAPIC_APP_DB_DSN is set."
                         + CRONS_NOTE)
def app_export_schedule(context: dg.ScheduleEvaluationContext, data_home: PickapicHome):
    """One run per day: the newest day that ended at least lag_minutes ago and the lookback days before it."""
    from pipelines.appdb.connection import DSN_ENV

    if not os.environ.get(DSN_ENV, "").strip():
        return dg.SkipReason(f"{DSN_ENV} is not set: the app database is not a source of this deployment")
    settings = app_export_settings(data_home.home())
    tick = context.scheduled_execution_time.astimezone(dt.timezone.utc)
    # the newest day closed by the tick: the clock the export's ScheduledDays counts its gap horizon from (fix38f)
    newest = dt.date.fromisoformat(newest_closed(tick, settings["lag_minutes"]))
    days = [(newest - dt.timedelta(days=k)).isoformat() for k in range(settings["lookback_days"], -1, -1)]
    raw_days = data_home.home().raw_days()      # the raw zone listed once a tick (review rev37b)
    lacking = missing_days(data_home.home(), days[0], raw_days)
    missed = lacking[:CATCH_UP_DAYS]
    if missed:
        left = len(lacking) - len(missed)
        context.log.warning(f"app export: catching up {len(missed)} day(s) missing from the raw zone "
                            f"({missed[0]} .. {missed[-1]}; at most {CATCH_UP_DAYS} a night, oldest first)"
                            + (f"; {left} more on the next nights" if left else ""))
    # days an earlier export found lacking rows committed after their last export (pipelines.appdb.export.late_rows)
    from pipelines.appdb.export import late_days

    window, held = set(days), set(raw_days)     # review rev37b: not set(raw_days()) once per marked day
    # fix38i: and the marked days the raw zone lacks (a gap a moved row was marked into: ScheduledDays), closed
    # (before the window), whatever their age: the catch-up's horizon follows the clock, so after an outage longer
    # than the slack of SCHEDULED_GAP_DAYS it no longer reached such a gap, and the row was in no raw day. Not
    # before the raw zone's first day: no export marks one (fix36n: its rows are remembered), and exporting an
    # old marker's day there would start the history anew, a year of empty days caught up after it; nor before the
    # first real day (review rev38h: an old marker after a stray first day made the stray the history's start)
    from pipelines.appdb.export import raw_day_counts

    real = real_days(data_home.home(), [day for day in raw_days if day < days[0]], days[0], raw_day_counts)
    opened = real[0] if real else days[0]
    late = [day for day in late_days(data_home.home()) if day not in window and day not in missed
            and (day in held or (opened < day < days[0] and calendar_day(day)))][:CATCH_UP_DAYS]
    if late:
        context.log.warning(f"app export: re-exporting {len(late)} day(s) whose raw files lack rows committed after "
                            f"their last export ({', '.join(late[:5])}{', ...' if len(late) > 5 else ''})")
    days = sorted(set(missed) | set(late)) + days
    context.instance.add_dynamic_partitions(PARTITIONS, days)  # the export's partitions are the raw days it makes
    run_config = {"ops": {"app_export": {"config": settings}}}
    return [dg.RunRequest(run_key=f"app-export-{day}-{tick:%Y%m%dT%H%M}", partition_key=day, run_config=run_config)
            for day in days]


def calendar_day(name: str) -> bool:
    """Whether ``name`` (YYYY-MM-DD digits, as ``late_days`` lists markers) is a day of the calendar: a marker
    named 2023-02-30 (not the export's) is never requested (its export would fail every night)."""
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def missing_days(home: DataHome, first: str, raw_days: list[str] | None = None) -> list[str]:
    """Every day before ``first`` (the first day of the night's lookback window) that the raw zone lacks,
    oldest first, from the day after its first real day (at most CATCH_UP_HORIZON_DAYS before ``first``).

    Gaps, not only the days after the raw zone's last one: a night's catch-up also exports the window's
    days, so after the first catch-up night of a long outage the last raw day before the next window is
    one of those, and the days between what was caught up and that window were never exported; and a
    day whose export failed stayed missing for good once newer days existed. A raw zone without days
    before ``first`` (a new deployment) misses nothing: history is exported with ``pickapic build
    --from-app-db --from DAY``. A day with no app activity is exported as a day of empty files, as the
    nightly export of a quiet day is, so the gap does not come back.

    The first real day: the raw zone's first day that is not a stray (``pipelines.appdb.scheduled.real_days``,
    ``stray_day``, the definition the export's moved rows use too, fix36g: a lone day,
    more than CATCH_UP_DAYS before the next raw day, with 1 to STRAY_DAY_ROWS - 1 rows), so one row dated
    by a wrong clock long before the app existed does not make the schedule export up to a year of empty
    days before it. The days between a stray and the first real day are not caught up (there is nothing
    the app did then; `pickapic build --from-app-db --from DAY` exports them if wanted).

    ``raw_days``: the raw zone's days as the caller listed them (``app_export_schedule`` lists it once a tick,
    review rev37b); None lists it here. A gap older than the horizon is exported by no night's catch-up: the
    export's moved rows remember a row moved there rather than mark its day (``ScheduledDays``, review rev37b);
    a gap marked while within it is requested by ``app_export_schedule`` as a marked day, whatever its age by
    then (fix38i)."""
    from pipelines.appdb.export import raw_day_counts  # the export's module is heavy: only when needed

    start = dt.date.fromisoformat(first)
    listed = home.raw_days() if raw_days is None else raw_days
    present = set(real_days(home, sorted(day for day in listed if day < first), first, raw_day_counts))
    if not present:
        return []
    day = max(dt.date.fromisoformat(min(present)) + dt.timedelta(days=1),
              start - dt.timedelta(days=CATCH_UP_HORIZON_DAYS))
    out = []
    while day < start:
        if day.isoformat() not in present:
            out.append(day.isoformat())
        day += dt.timedelta(days=1)
    return out


def catch_up_days(home: DataHome, first: str) -> list[str]:
    """The first CATCH_UP_DAYS of :func:`missing_days`: what one night exports besides its lookback window
    (nights the daemon was down longer than Dagster catches up, about 5 ticks, or failed exports). The
    next nights go on with the rest, since each looks for every gap again."""
    return missing_days(home, first)[:CATCH_UP_DAYS]


def build_running(home: DataHome) -> bool:
    """Whether a `pickapic build` is running on ``home``: whether anyone holds its build lock (the ``flock``, never
    the pid the lock records, which names nothing in another PID namespace or on another host over NFS, and
    names another process once reused: review rev21g). Probed with a shared lock taken and dropped at once (a
    build starting in those microseconds finds it held and tries again for ``build.PROBE_GRACE_S`` before it
    refuses or waits, so it takes it: review rev33e); a lock file this account may not read counts as a running
    build (unknown), a missing one, a link or anything not a regular file as none (a build refuses those)."""
    return _build_lock_state(home) is not False


def build_holds_lock(home: DataHome) -> bool:
    """Whether a `pickapic build` is known to hold ``home``'s build lock (:func:`build_running`, where a lock file
    this account may not read counts as none: the automation is not stopped for good by a lock file a root build
    left 0600). While it does, the nightly, the raw-day sensor and the rebuild sensor request nothing
    (:func:`build_skip_reason`; review rev32e): the build runs what it planned, and the daemon would otherwise run
    the same days, or the same rebuild, beside it."""
    return _build_lock_state(home) is True


def build_skip_reason(home: DataHome) -> str | None:
    """The skip reason of a tick while a `pickapic build` holds ``home``'s build lock (None when none does)."""
    if not build_holds_lock(home):
        return None
    return (f"a `pickapic build` holds the build lock of {home.root} ({home.lock_file.name}): it runs what is stale "
            "itself, so nothing is requested beside it; the sensors look again at their first tick after it ends")


def _build_lock_state(home: DataHome) -> bool | None:
    """True: someone holds ``home``'s build lock; False: nobody does (or there is no lock file, or a link, or not a
    regular file: a build refuses those); None: unknown (a lock file this account may not read)."""
    try:
        fd = os.open(home.lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        return False if exc.errno == errno.ELOOP else None   # a link: no build takes it; unreadable: unknown
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return not try_lock(fd, fcntl.LOCK_SH)  # released when the file is closed below
    finally:
        os.close(fd)


def unfinished_runs(instance: dg.DagsterInstance, home: DataHome | None = None) -> list[dg.DagsterRun]:
    """Runs that are queued or running. With ``home``, a run of a `pickapic build` that is no longer running
    (SIGKILLed, OOM-killed, a reboot: its run stays STARTED, nothing ends it) is left out, so it does not hold back
    every later rebuild and nightly for good (review rev21f); the next `pickapic build` marks it failed."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED))
    if home is not None and any(_from_a_build(run) for run in runs) and not build_running(home):
        runs = [run for run in runs if not _from_a_build(run)]
    return [run for run in runs if run.status != dg.DagsterRunStatus.CANCELING or not _cancel_dead(instance, run)]


def _cancel_dead(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Mark canceled a CANCELING run whose worker is gone (the home's launcher says so: dagster_project/launcher.py),
    and say so. Dagster's own cancel timeout is off in the home's dagster.yaml (it marked a run canceled 180 s after
    the request while its step still ran, review rev22b); a canceled run whose machine went down meanwhile would
    otherwise count as running for good."""
    launcher = instance.run_launcher
    if not launcher.supports_check_run_worker_health:
        return False
    try:
        health = launcher.check_run_worker_health(run)
    except Exception:   # noqa: BLE001 - no answer is no proof: it still counts as running
        return False
    if health.status in (WorkerStatus.RUNNING, WorkerStatus.SUCCESS):
        return False
    now = instance.get_run_by_id(run.run_id)      # it may have ended while its worker was asked after (rev22c)
    if now is None or now.status != dg.DagsterRunStatus.CANCELING:
        return now is None or now.is_finished
    instance.report_run_canceled(now, f"canceled: its run worker is gone ({health.msg})")
    return True


def _from_a_build(run: dg.DagsterRun) -> bool:
    return run.tags.get(BUILD_TAG) == BUILD_TAG_VALUE


def failing_days(instance: dg.DagsterInstance, days: Iterable[str]) -> set[str]:
    """The days of ``days`` whose latest daily run failed (or was canceled): the nightly retries them, and the
    rebuild does not wait for them (it reads what was ingested), so one day that fails on every try does not
    hold back, for good, the rebuild of every other day and of a settings or code change (review rev21h)."""
    failing = set()
    for day in days:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": day}), limit=5)
        latest = next((run for run in runs if run.job_name != app_export_job.name), None)
        if latest is not None and latest.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            failing.add(day)
    return failing


def plan_complete_days(home: DataHome, instance: dg.DagsterInstance) -> tuple[BuildPlan, list[str]]:
    """The plan of `pickapic build`, with the incomplete raw days (a file still landing, or never coming) planned
    as if they were not there, and those days: no automation ingests them, and they must not hold back, night
    after night, the rebuild a setting or code change asks for (the rebuild reads what was ingested). What was
    built from them is kept, and their rows are settled as they are when the later days' copies are judged
    (``plan_build`` passes the days it runs to ``RejectedBlobs``: review rev31b). The nightly, the raw-day sensor
    and the rebuild sensor all plan with it."""
    incomplete = [day for day in begun_days(home.raw_days()) if not raw_day_complete(home, day)]
    return plan_build(home, load(home.root), instance, ignore_days=incomplete), incomplete


def days_before_rebuild(plan: BuildPlan, instance: dg.DagsterInstance) -> list[str]:
    """The planned days a rebuild waits for: those to build, less the days whose latest run failed
    (:func:`failing_days`)."""
    planned = [run.partition for run in plan.runs if run.partition is not None]
    failing = failing_days(instance, planned)
    return sorted(day for day in planned if day not in failing)


def planned_rebuild(plan: BuildPlan) -> PlannedRun | None:
    """The plan's run of the global stages, if they are stale."""
    return next((run for run in plan.runs if run.job == rebuild_dataset_job.name), None)


def unfinished_partitions(instance: dg.DagsterInstance, home: DataHome | None = None) -> set[str | None]:
    """Partitions (None: unpartitioned) of runs that are queued or running (see :func:`unfinished_runs`)."""
    return {run.tags.get("dagster/partition") for run in unfinished_runs(instance, home)}


def asset_keys(run: PlannedRun, graph: BaseAssetGraph) -> list[dg.AssetKey]:
    """The asset keys a planned run materializes: the assets of its stale stages, then the assets of its
    job (``JOB_SELECTIONS``) downstream of them that no stage owns (the model's evaluation reports)."""
    by_op = {stage.op: stage.assets for stage in STAGES}
    planned = [dg.AssetKey(asset) for op in run.ops for asset in by_op.get(op, (op,))]
    owned = dg.AssetSelection.assets(*(asset for stage in STAGES for asset in stage.assets))
    followers = (dg.AssetSelection.assets(*planned).downstream() & JOB_SELECTIONS[run.job]) - owned
    return planned + sorted(followers.resolve(graph) - set(planned), key=lambda key: key.to_user_string())


def daily_requests(plan: BuildPlan, busy: set[str | None], prefix: str, graph: BaseAssetGraph,
                   instance: dg.DagsterInstance, days: set[str] | None = None) -> list[dg.RunRequest]:
    """One run request per stale or missing day (not already running), keyed by what it will produce and by
    the day's last fingerprint materialization (its event's storage id, which only grows): Dagster's daemon
    drops a request whose run key an earlier run of the sensor carried, so a key of the expected version alone
    (or with the version the day had) came back for a day delivered as A, B, A (B) again, and the day kept the
    other delivery's rows (reviews rev21b, rev21c). A run that fails records nothing: the sensor asks for it
    once, the nightly retries it."""
    wanted = [run for run in plan.runs
              if run.partition is not None and run.partition not in busy and (days is None or run.partition in days)]
    if not wanted:
        return []
    marks = instance.event_log_storage.get_latest_storage_id_by_partition(
        dg.AssetKey(FEATURE_DATASETS[0]), DagsterEventType.ASSET_MATERIALIZATION, {run.partition for run in wanted})
    requests = []
    for run in wanted:
        version = plan.expected.get(("features", run.partition), "")
        key = f"{prefix}-{run.partition}-{version}-after-{marks.get(run.partition, 0)}"
        requests.append(dg.RunRequest(run_key=key, partition_key=run.partition, asset_selection=asset_keys(run, graph),
                                      tags={"pickapic/why": "; ".join(run.reasons)[:200]}))
    return requests


@dg.schedule(cron_schedule=CRONS.nightly_cron, execution_timezone="UTC", default_status=SCHEDULE_STATUS,
             target=JOB_SELECTIONS["daily_partition_job"] | JOB_SELECTIONS["rebuild_dataset_job"],
             description=f"Nightly ({CRONS.nightly_cron} UTC, schedules.nightly_cron): request what is missing or stale, the daily partitions first, then the global "
                         "stages made stale by a setting or code change (the rebuild after new days follows by "
                         "itself)." + CRONS_NOTE)
def nightly_schedule(context: dg.ScheduleEvaluationContext, data_home: PickapicHome):
    """Plan like `pickapic build` and request the runs that make the home fresh; first remove the sensors' and
    schedules' tick logs older than Dagster keeps skipped ticks (:func:`dagster_project.ticklogs.prune_tick_logs`)."""
    prune_home_tick_logs(context)
    home = data_home.home()
    if not home.raw_days():
        return dg.SkipReason(f"no raw day under {home.raw_logs} yet")
    held = build_skip_reason(home)
    if held:    # the build runs the days and the rebuild it planned; the sensors catch up after it (review rev32e)
        return dg.SkipReason(held)
    plan, incomplete = plan_complete_days(home, context.instance)
    complete = set(plan.days)
    _record(context.instance, plan, complete)
    busy = unfinished_partitions(context.instance, home)
    graph = context.repository_def.asset_graph
    requests = daily_requests(plan, busy, "nightly", graph, context.instance, complete)
    rebuild = planned_rebuild(plan)
    if rebuild is not None and None not in busy and not days_before_rebuild(plan, context.instance):
        version = plan.expected.get(("publish", None), "")
        requests.append(dg.RunRequest(run_key=f"nightly-rebuild-{version}", asset_selection=asset_keys(rebuild, graph),
                                      tags={"pickapic/why": "; ".join(rebuild.reasons)[:200]}))
    if requests:
        return requests
    return dg.SkipReason(_nightly_skip_message(home, plan, incomplete, busy))


def _nightly_skip_message(home: DataHome, plan: BuildPlan, incomplete: list[str], busy: set[str | None]) -> str:
    """Why the nightly requests nothing, naming what holds it: runs still going, incomplete raw days."""
    parts = []
    running = sorted({"the rebuild" if run.partition is None else f"dt={run.partition}" for run in plan.runs
                      if run.partition in busy})
    if plan.runs:
        parts.append(f"its stale parts are already running ({', '.join(running)})" if running
                     else "its stale parts wait for a running daily run")
    if incomplete:
        day = incomplete[0]
        missing = [name for name in RAW_TABLE_FILES if not (home.raw_day(day) / name).is_file()]
        also = f" (also {', '.join('dt=' + d for d in incomplete[1:4])}{', ...' if len(incomplete) > 4 else ''})" \
            if len(incomplete) > 1 else ""
        parts.append(f"{len(incomplete)} incomplete raw day(s) wait for their files and are not ingested by the "
                     f"nightly: dt={day} lacks {', '.join(missing)}{also}; `pickapic build` ingests a day as it is")
    if not parts:
        return f"{home.root} is up to date"
    return f"{home.root}: nothing to request: " + "; ".join(parts)


def _record(instance: dg.DagsterInstance, plan: BuildPlan, days: set[str]) -> None:
    """Add the complete raw days as partitions and record their content versions."""
    record_observations(instance, {day: version for day, version in plan.observations.items() if day in days})
    instance.add_dynamic_partitions(PARTITIONS, sorted(days))


@dg.sensor(job=daily_partition_job, minimum_interval_seconds=CRONS.sensor_interval_s, default_status=SENSOR_STATUS,
           description="Starts the daily run when a raw day lands complete, or when its files change." + CRONS_NOTE)
def raw_partition_sensor(context: dg.SensorEvaluationContext, data_home: PickapicHome):
    """Partitions, observations and one run request for each complete raw day that is new or changed."""
    home = data_home.home()
    scan = home.scan_raw_zone()
    # skipped, never fatal to the other days; said once when it changes (a tick's log is a file Dagster keeps: review
    # rev26b), named in every skip reason; every build warns of each and records them (raw_zone_problems)
    report = raw_zone_report(scan, sorted(set(scan.days) - set(begun_days(scan.days))))
    cursor = say_raw_zone(context, report, home.cache / RAW_ZONE_SAID, home=home)
    note = report.note()
    complete = [day for day in begun_days(scan.days) if raw_day_complete(home, day)]
    if not complete:
        return dg.SensorResult(skip_reason=f"no complete raw partition under {home.raw_logs}{note}", cursor=cursor)
    held = build_skip_reason(home)
    if held:    # the build ingests the days it planned; this sensor asks again after it (review rev32e)
        return dg.SensorResult(skip_reason=held + note, cursor=cursor)
    # planned as the nightly plans (review rev31b: planned with the incomplete days as days it runs, a day copying
    # a risky row of one was stale at every tick, and its run key, naming its last materialization, new each time)
    plan, _ = plan_complete_days(home, context.instance)
    known = set(context.instance.get_dynamic_partitions(PARTITIONS))
    new_days = [day for day in complete if day not in known]
    events = [raw_observation(day, version) for day, version in sorted(plan.observations.items()) if day in complete]
    requests = daily_requests(plan, unfinished_partitions(context.instance, home), "raw", context.repository_def.asset_graph,
                              context.instance, set(complete))
    return dg.SensorResult(
        run_requests=requests, asset_events=events,
        dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(PARTITIONS, new_days)] if new_days else [],
        skip_reason=None if requests else f"every complete raw day under {home.raw_logs} is ingested and fresh{note}",
        cursor=cursor,
    )


GLOBAL_ASSET_KEYS = frozenset(dg.AssetKey(asset) for stage in STAGES if not stage.partitioned and stage.name != "model"
                              for asset in stage.assets)


def _runs_global_stages(run: dg.DagsterRun) -> bool:
    """Whether a run builds global stages: the rebuild job, or an asset run a schedule or the UI started
    (Dagster names those ``__ASSET_JOB`` / ``__anonymous_asset_job_...``: review rev21d)."""
    return run.job_name == rebuild_dataset_job.name or bool(run.asset_selection and run.asset_selection & GLOBAL_ASSET_KEYS)


@dg.sensor(name="rebuild_when_inputs_change", job=rebuild_dataset_job, minimum_interval_seconds=CRONS.sensor_interval_s,
           default_status=SENSOR_STATUS,
           description="Runs curation, splits and publish when the plan says they are stale and nothing runs: "
                       "once after a night's daily runs, once after a day that landed during a rebuild." + CRONS_NOTE)
def rebuild_sensor(context: dg.SensorEvaluationContext, data_home: PickapicHome):
    """The global stages rebuilt when they are stale and nothing runs, decided as ``pickapic build`` decides:
    the plan's full data versions (recorded against expected), never events seen between ticks.

    It waits while any rebuild (the job, or an asset run building a global asset) or any daily run is queued
    or running, and while days are still to build (incomplete raw days left alone, as the nightly does); then
    a stale global stage gets one request, keyed by the version it will publish and the last publish's event
    (``rebuild-<version>-after-<storage id>``: a rebuild that fails is not asked for again, the nightly retries
    it; a state reached twice is rebuilt twice). This replaced an automation-condition
    sensor (``since_last_handled``) that forgot a daily run ending during a rebuild, could request a stage
    while a rebuild was still running later ones, and, with the event-window sensor that tried to patch it,
    missed or doubled rebuilds around short runs and re-runs (reviews rev21b-rev21e)."""
    instance = context.instance
    home = data_home.home()
    held = build_skip_reason(home)
    if held:    # a build between its runs, or planning: it rebuilds what it changes itself (review rev32e)
        return dg.SkipReason(held)
    unfinished = unfinished_runs(instance, home)
    if any(_runs_global_stages(run) for run in unfinished):
        return dg.SkipReason("a rebuild is queued or running")
    if any(run.tags.get("dagster/partition") for run in unfinished):
        return dg.SkipReason("daily runs are queued or running: the rebuild follows them")
    if not home.raw_days():
        return dg.SkipReason(f"no raw day under {home.raw_logs} yet")
    plan, _ = plan_complete_days(home, instance)
    pending = days_before_rebuild(plan, instance)
    if pending:
        return dg.SkipReason(f"{len(pending)} day(s) to build first ({', '.join(pending[:3])}): the raw-day sensor "
                             "or the nightly runs them, and the rebuild follows")
    rebuild = planned_rebuild(plan)
    if rebuild is None:
        return dg.SkipReason("curation, splits and publish are fresh")
    version = plan.expected.get(("publish", None), "")
    # and the last publish's event: a state reached twice (a day delivered A, B, then A again; a setting changed
    # and changed back) gets a new key, which Dagster's daemon would otherwise drop as already run
    last = instance.fetch_materializations(dg.AssetKey("published_dataset"), limit=1).records
    after = last[0].storage_id if last else 0
    return dg.RunRequest(run_key=f"rebuild-{version}-after-{after}",
                         asset_selection=asset_keys(rebuild, context.repository_def.asset_graph),
                         tags={"pickapic/why": "; ".join(rebuild.reasons)[:200]})


@dg.schedule(job=train_model_job, cron_schedule=CRONS.train_cron, execution_timezone="UTC",
             default_status=SCHEDULE_STATUS, name="weekly_training_schedule",
             description=f"Weekly ({CRONS.train_cron} UTC, schedules.train_cron): train and evaluate on `latest` when it has no model yet."
                         + CRONS_NOTE)
def train_schedule(context: dg.ScheduleEvaluationContext, data_home: PickapicHome):
    """One training run per published version (none while nothing is published)."""
    home = data_home.home()
    latest = dataset.latest_link(home)
    if not dataset.is_published(home):
        return dg.SkipReason(f"nothing published yet at {latest}: no dataset to train on")
    version = latest.resolve().name
    if runs.is_evaluated(home):
        return dg.SkipReason(f"version {version} already has a trained and evaluated model")
    return dg.RunRequest(run_key=f"train-{version}")


# Freshness checks (rather than the newer FreshnessPolicy, still behind a feature flag in OSS) give a
# visible pass/fail check on the asset page and run from their own sensor.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.SupersessionWarning if hasattr(dg, "SupersessionWarning") else Warning)
    freshness_checks = dg.build_last_update_freshness_checks(
        assets=["published_dataset"], lower_bound_delta=dt.timedelta(hours=26), blocking=False,
    )
# Dagster's freshness sensor, logging only what changes (its every 30 s tick logged a line, a file each: rev26b)
freshness_sensor = quiet_freshness_sensor(freshness_checks, "published_dataset_freshness", SENSOR_STATUS)
