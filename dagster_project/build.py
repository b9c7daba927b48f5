"""Run the asset graph for the raw partitions present, recorded in the data home's Dagster instance."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg

from pipelines.home import DataHome

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_DAGSTER_YAML = "telemetry:\n  enabled: false\n"


class BuildError(RuntimeError):
    """A build could not start or one of its runs failed; the message says which and why."""


@dataclass
class BuildResult:
    days: list[str]
    run_ids: dict[str, str] = field(default_factory=dict)   # run label -> Dagster run id


@contextlib.contextmanager
def build_lock(home: DataHome, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the data home; a second build waits (``wait``) or refuses."""
    home.root.mkdir(parents=True, exist_ok=True)
    with open(home.lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise BuildError(f"another build is running on {home.root} (pid {holder}, lock {home.lock_file}); "
                             "wait for it to finish or pass --wait") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def use_home(home: DataHome) -> Path:
    """Point this process's Dagster and pipeline at ``home`` (DAGSTER_HOME lives inside it)."""
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    config = home.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    os.environ["PICKAPIC_HOME"] = str(home.root)
    return home.dagster_home


def select_days(home: DataHome, start: str | None = None, end: str | None = None,
                warn: Callable[[str], None] | None = None) -> list[str]:
    """Raw days present, limited to [start, end]; errors when there are none.

    Raw-zone entries that are not days (misnamed or linked-out folders, stray files) and days outside
    the daily partitions are skipped, each named through ``warn``; they never stop the other days.
    """
    warn = warn or (lambda message: None)
    scan = home.scan_raw_zone()
    for line in scan.summary():
        warn(f"skipped {line}")
    days = scan.days
    if not days:
        problems = f" ({len(scan.summary())} entries there are not days: {'; '.join(scan.summary()[:3])})" \
            if scan.problems else ""
        raise BuildError(f"no raw partitions under {home.raw_logs}{problems}; run `pickapic simulate --home "
                         f"{home.root}` or copy an app export there first")
    chosen = [d for d in days if (start is None or d >= start) and (end is None or d <= end)]
    if not chosen:
        raise BuildError(f"no raw partition between {start or 'the first day'} and {end or 'the last day'}; "
                         f"present: {days[0]} .. {days[-1]}")
    from dagster_project.partitions import PARTITIONS_START, daily

    valid = set(daily.get_partition_keys())
    outside = [d for d in chosen if d not in valid]
    message = (f"raw day(s) {', '.join(outside)} fall outside the daily partitions ({PARTITIONS_START} up to "
               "yesterday, UTC): set PICKAPIC_PARTITIONS_START or wait until the day has ended")
    if outside and len(outside) == len(chosen):
        raise BuildError(message)
    if outside:
        warn(f"skipped {message}")
    return [d for d in chosen if d in valid]


def select_app_db_days(start: str | None = None, end: str | None = None) -> list[str]:
    """Days of the app database ($PICKAPIC_APP_DB_DSN) with activity, closed for the export lag, within [start, end]."""
    from dagster_project.partitions import daily
    from pipelines.appdb.connection import DSN_ENV, dsn_from_env
    from pipelines.appdb.export import AppExportConfig, app_day_range, closed_days

    bounds = app_day_range(dsn_from_env(), source=f"${DSN_ENV}")
    if bounds is None:
        raise BuildError(f"the app database in ${DSN_ENV} has no rows in users, images, rankings or downloads")
    first, last = max(bounds[0], start or bounds[0]), min(bounds[1], end or bounds[1])
    valid = set(daily.get_partition_keys())
    days = [d for d in closed_days(first, last, AppExportConfig().lag_minutes) if d in valid]
    if not days:
        raise BuildError(f"no day of the app database ({bounds[0]} .. {bounds[1]}) between {start or 'the first day'} "
                         f"and {end or 'the last day'} is closed for the export lag and inside the daily partitions")
    return days


def _execute(job_name: str, instance: dg.DagsterInstance, run_config: dict, partition_key: str | None = None) -> str:
    from dagster_project.definitions import defs

    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, run_config=run_config, partition_key=partition_key,
                                    raise_on_error=False, tags={"pickapic/launched_by": "pickapic build"})
    if not result.success:
        failures = [event for event in result.all_events if event.is_step_failure]
        detail = "; ".join(f"{e.step_key}: {_root_cause(e.event_specific_data.error)}"
                           for e in failures if getattr(e.event_specific_data, "error", None))
        detail = detail or "see the run in `pickapic ui`"
        where = f" for partition {partition_key}" if partition_key else ""
        raise BuildError(f"{job_name}{where} failed (run {result.run_id}): {detail}")
    return result.run_id


def _root_cause(error) -> str:
    """The innermost error message of a Dagster SerializableErrorInfo chain, on one line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = error.message.strip().splitlines()
    return lines[-1] if lines else error.cls_name or "unknown error"


def run_build(
    home: DataHome,
    days: list[str],
    *,
    with_model: bool = False,
    run_config: dict | None = None,
    wait: bool = False,
    progress: Callable[[str], None] | None = None,
    from_app_db: bool = False,
) -> BuildResult:
    """Materialize every daily partition in ``days``, then the global rebuild (and the model if asked).

    ``from_app_db``: export each day from the app database (``app_export_job``) before ingesting it.
    """
    run_config = run_config or {}
    note = progress or (lambda message: None)
    use_home(home)
    result = BuildResult(days=list(days))
    with build_lock(home, wait=wait), dg.DagsterInstance.get() as instance:
        for day in days:
            if from_app_db:
                note(f"export {day} from the app database")
                result.run_ids[f"export-{day}"] = _execute("app_export_job", instance,
                                                           _config_for(run_config, "app_export"), day)
            note(f"ingest + fingerprint {day}")
            result.run_ids[day] = _execute("daily_partition_job", instance, _config_for(run_config, "daily"), day)
        note("curate, split and publish")
        result.run_ids["rebuild"] = _execute("rebuild_dataset_job", instance, _config_for(run_config, "rebuild"))
        if with_model:
            note("train, evaluate, rank generators")
            result.run_ids["model"] = _execute("train_model_job", instance, _config_for(run_config, "model"))
    return result


_OPS = {
    "app_export": ("app_export",),
    "daily": ("ingest_day", "fingerprint_images"),
    "rebuild": ("duplicate_clusters", "decisions", "pairs", "split_pairs", "published_dataset"),
    "model": ("preference_model", "preference_model_eval", "generator_leaderboard"),
}


def _config_for(run_config: dict, job: str) -> dict:
    """Quiet console logs plus the op configs (keyed by op name) that belong to ``job``."""
    ops = {name: cfg for name, cfg in run_config.get("ops", {}).items() if name in _OPS[job]}
    return {**QUIET_LOGS, **({"ops": ops} if ops else {})}
