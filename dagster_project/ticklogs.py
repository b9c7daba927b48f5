"""What the sensors write to their tick logs, and how long those logs are kept.

Whatever a sensor or schedule writes to ``context.log`` (Dagster opens the log at its first use) is a file of its own
per tick, ``<compute logs>/<repository>/<sensor or schedule>/<tick id>.err`` (``HOME/dagster/storage/__repository__/
...``), which Dagster keeps for good: it purges the ticks that requested nothing after 7 days, never their log files
(review rev26b: the freshness sensor's every tick, every 30 s, and every raw-day sensor tick over a stray raw-zone
entry left a file, about a million a year; a raw-day tick wrote one warning per day folder holding an exporter's
``_SUCCESS`` marker, 130 GB a year). So:

- a quiet tick writes no log: the raw-day sensor says what it skips in the raw zone once, when that changes, in one
  line (:func:`raw_zone_report`: a count and the first few, the state it said kept in its cursor), and names them
  in every tick's skip reason (stored with the tick, which Dagster purges); the freshness sensor
  (:func:`quiet_freshness_sensor`) logs a check's state only when it changes or a run of it is requested;
- the nightly schedule removes the tick logs older than :func:`tick_log_days` (Dagster's retention of skipped sensor
  ticks, 7 days by default) of the home's sensors and schedules (:func:`prune_tick_logs`), whatever the tick's
  status: a tick Dagster keeps longer (one that requested a run) keeps its record and its runs, not its log.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from formats.home import DataHome
from formats.rawzone import EXPORT_MARKERS, UNEXPECTED_FILE, RawZoneScan

SHOWN = 3                 # descriptions in the raw-day sensor's line and skip reason ...
SHOWN_CHARS = 200         # ... each at most this long
CURSOR_PREFIX = "raw-zone-said:"
NOTHING_SAID = CURSOR_PREFIX + "none"

DEFAULT_TICK_LOG_DAYS = 7        # Dagster's retention of skipped sensor ticks (its default)
MAX_PRUNED = 50_000              # tick logs one call removes at most (a backlog goes over the next nights) ...
PRUNE_SECONDS = 10.0             # ... and the time it spends at most (a slow file system: the schedule's tick waits)
_TICK_LOG_NAME = re.compile(r"[0-9][0-9_]*\.(?:err|out|complete)(?:\.partial)?")   # <tick id>.err, legacy keys too


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


@dataclass(frozen=True)
class RawZoneReport:
    """What the raw-day sensor says of the entries it skips: their count, one description per kind (the entries
    that are not days one each; a file name found in day folders once, with how many folders hold it; a day to come
    one each), and ``state``, a digest of the kinds (not of their counts), which its cursor keeps."""

    entries: int
    parts: tuple[str, ...]
    markers_only: bool
    state: str
    markers: int = 0            # exporters' marker files left alone (their day folders are ingested: review rev26f)

    def shown(self) -> str:
        more = len(self.parts) - SHOWN
        return "; ".join(self.parts[:SHOWN]) + (f"; and {more} more" if more > 0 else "")

    def _counts(self) -> str:
        counts = [f"{self.entries} {'entry' if self.entries == 1 else 'entries'} not ingested"] if self.entries else []
        if self.markers:
            counts.append(f"{self.markers} exporter marker file{'' if self.markers == 1 else 's'} left alone")
        return ", ".join(counts)

    def line(self) -> str:
        """The one line the sensor logs when ``state`` changed."""
        if not self.entries and not self.markers:
            return "raw zone: every entry is a day again (the entries skipped before are gone)"
        return f"raw zone: {self._counts()}: {self.shown()} (each build warns of each and records them in raw_zone_problems)"

    def note(self) -> str:
        """What the sensor's skip reason adds (stored with each tick, never a file)."""
        counts = [f"skipped {self.entries} raw zone entries that are not days"] if self.entries else []
        if self.markers:
            counts.append(f"left alone {self.markers} exporter marker file{'' if self.markers == 1 else 's'}")
        return f"; {', '.join(counts)}: {self.shown()}" if counts else ""


def raw_zone_report(scan: RawZoneScan, not_begun: Sequence[str]) -> RawZoneReport:
    """The raw zone's entries that are not ingested (``scan.problems``, and the day folders in ``not_begun``),
    summarised in a size that does not grow with the number of days: a file in a day folder is described by its
    name, once for every folder holding one (a `_SUCCESS` marker in each of 365 day folders is one description).
    Problems come first, then the days to come, then the exporters' markers (:data:`EXPORT_MARKERS`: a file of that
    name in a day folder or beside them, in ``raw/app_logs``, where an export partitioned by day writes it)."""
    problems: dict[tuple[str, str], list] = {}       # (kind, name) -> [its first problem, the folders, files]
    skipped, markers_left = set(), 0                  # the entries not ingested; the marker files left alone
    for problem in scan.problems:
        if problem.reason == UNEXPECTED_FILE:                  # a file of a day folder: by its name
            name, folder = problem.path[len(problem.entry) + 1:].split("/")[0] or problem.path, problem.entry
            key = ("marker" if name in EXPORT_MARKERS else UNEXPECTED_FILE, name)
        elif problem.path == problem.entry and problem.file_bytes is not None \
                and problem.entry.rpartition("/")[2] in EXPORT_MARKERS:     # a marker beside the day folders
            folder = problem.entry.rpartition("/")[0]
            key = ("marker", problem.entry.rpartition("/")[2])
        else:
            folder, key = problem.entry, (problem.reason, problem.entry)
        if key[0] == "marker":
            markers_left += 1
        else:
            skipped.add(problem.entry)
        group = problems.setdefault(key, [problem, [], 0])
        if not group[1] or group[1][-1] != folder:
            group[1].append(folder)
        group[2] += problem.file_bytes is not None
    parts, markers = [], []
    for (kind, name), (first, folders, files) in problems.items():
        shown = f"({folders[0]}{', ...' if len(folders) > 1 else ''})"
        if kind == "marker":
            markers.append(_short(f"{name!r}, an exporter's completion marker, in {len(folders)} folder(s) {shown}: "
                                  "left alone, not a table"))
        elif kind == UNEXPECTED_FILE:
            parts.append(_short(f"{name!r} in {len(folders)} day folder(s) {shown}: not one of the four table files; "
                                "not ingested"))
        else:
            what = f"; {files} file(s) not ingested" if files else ""
            parts.append(_short(f"{name}: {kind}: {first.detail}{what}"))
    parts += [f"dt={day}: the day has not begun (UTC); not ingested" for day in not_begun]
    keys = sorted(f"{kind}\x1f{name}" for kind, name in problems) + sorted(f"not_begun\x1f{day}" for day in not_begun)
    state = (CURSOR_PREFIX + hashlib.sha256("\x1e".join(keys).encode("utf-8", "surrogateescape")).hexdigest()[:16]
             if keys else NOTHING_SAID)
    entries = len(skipped) + len(not_begun)
    return RawZoneReport(entries, tuple(parts + markers), bool(markers) and not parts, state, markers_left)


def say_raw_zone(context: dg.SensorEvaluationContext, report: RawZoneReport, memory: os.PathLike | None = None,
                 home: DataHome | None = None) -> str:
    """Log ``report``'s line when what it says differs from what the sensor said last (its cursor; a cursor of
    another form, or none, counts as nothing said), as a warning unless it names markers alone; the cursor to keep.
    ``memory``, a small file of the home's cache, keeps what was said too: a tick that fails after this (a settings
    file that does not parse) stores no cursor, and its line was said again on every failing tick, a file each
    (review rev26f). ``home``: the data home whose cache holds it, written under its cache-writers lock so that the
    cache sweep removes what a killed write left (review rev31c)."""
    said = context.cursor if context.cursor and context.cursor.startswith(CURSOR_PREFIX) else NOTHING_SAID
    remembered = _remembered(memory)
    if report.state != said and report.state != remembered:
        (context.log.info if report.markers_only or not (report.entries or report.markers)
         else context.log.warning)(report.line())
    if memory is not None and report.state != remembered:
        from pathlib import Path

        from formats.files import write_bytes_atomic
        from pipelines.provenance import writing_cache

        try:
            Path(memory).parent.mkdir(parents=True, exist_ok=True)
            # in the home's cache: its temporary file is swept under the cache-writers lock (pipelines.cachesweep)
            with writing_cache(home) if home is not None else contextlib.nullcontext(True) as held:
                if held:
                    write_bytes_atomic(Path(memory), report.state.encode("ascii"))
        except OSError:         # a cache: the cursor still says it on the ticks that succeed
            pass
    return report.state


def _remembered(memory: os.PathLike | None) -> str | None:
    """The state ``memory`` keeps (:func:`say_raw_zone`), or None (absent, unreadable, not of its form)."""
    if memory is None:
        return None
    from formats.files import read_small_file

    data = read_small_file(memory, 256)
    text = data.decode("ascii", "replace") if data else ""
    return text if text.startswith(CURSOR_PREFIX) else None


class _Held(logging.Handler):
    """Keeps the records a logger is given, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _freshness_cursor(cursor: str | None, keys: Sequence[dg.AssetCheckKey]) -> tuple[dg.AssetCheckKey | None, dict]:
    """(the check Dagster's loop left off after, each check's state said last) from the sensor's cursor: JSON of
    ours, or Dagster's own (the key it left off after) as an earlier version stored it."""
    try:
        value = json.loads(cursor) if cursor else {}
    except (ValueError, RecursionError):    # not JSON, or nested past the parser's depth (a cursor set by hand)
        value = {"left_off": cursor}
    if not isinstance(value, dict):
        value = {}
    left_off = value.get("left_off")
    known = {key.to_user_string(): key for key in keys}
    said = value.get("said")
    return known.get(left_off) if isinstance(left_off, str) else None, said if isinstance(said, dict) else {}


def quiet_freshness_sensor(freshness_checks: Sequence[dg.AssetChecksDefinition], name: str,
                           default_status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    """Dagster's ``build_sensor_for_freshness_checks`` (the same decisions, made by Dagster's own loop over the
    checks, and the same interval), but its log is written only for a check whose state changed since the sensor
    last said it (never run, passed, failed: kept in the cursor) or that it requests a run of: Dagster's sensor logs
    "previously passed, but cannot be overdue again until ... Skipping" on every tick, a file each (review rev26b)."""
    from dagster._core.definitions.asset_checks.asset_check_factories.freshness_checks import sensor as dagster_sensor
    from dagster._time import get_current_datetime, get_current_timestamp

    keys = sorted((spec.key for check in freshness_checks for spec in check.check_specs),
                  key=lambda key: key.to_user_string())

    description = " ".join(dagster_sensor.FRESHNESS_SENSOR_DESCRIPTION.split())

    @dg.sensor(name=name, asset_selection=dg.AssetSelection.checks(*freshness_checks), default_status=default_status,
               description=f"{description} Logs a check's state when it changes or a run is requested, never on a "
                           "quiet tick (dagster_project/ticklogs.py).")
    def sensor(context: dg.SensorEvaluationContext):
        left_off, said = _freshness_cursor(context.cursor, keys)
        held = _Held()
        # a logger of this tick's own, never registered (getLogger's would be kept, its handlers with it, for good)
        log = logging.Logger(f"pickapic.{name}")  # noqa: LOG001
        log.addHandler(held)
        quiet = types.SimpleNamespace(instance=context.instance, sensor_name=context.sensor_name, log=log)
        start = get_current_datetime()
        decisions = dagster_sensor.freshness_checks_get_evaluations_iter(
            context=quiet, start_time=start, left_off_asset_check_key=left_off, freshness_checks=freshness_checks)
        requested, lines = [], {}
        check_key, evaluate = next(decisions, (None, False))
        while check_key and get_current_timestamp() - start.timestamp() < dagster_sensor.MAXIMUM_RUNTIME_SECONDS:
            lines[check_key] = (evaluate, held.messages[-1] if held.messages else "")
            if evaluate:
                requested.append(check_key)
            held.messages.clear()
            check_key, evaluate = next(decisions, (None, False))
        summaries = context.instance.event_log_storage.get_asset_check_summary_records(list(lines)) if lines else {}
        said = {check: state for check, state in said.items() if check in {key.to_user_string() for key in keys}}
        for key, (evaluate, message) in lines.items():
            last = summaries[key].last_completed_check_execution_record if key in summaries else None
            passed = last.event.asset_check_evaluation.passed if last and last.event and \
                last.event.asset_check_evaluation else None
            state = "requested" if evaluate else {True: "passed", False: "failed", None: "not evaluated"}[passed]
            if evaluate or said.get(key.to_user_string()) != state:
                context.log.info(message or f"Freshness check {key.to_user_string()}: {state}")
            said[key.to_user_string()] = state
        context.update_cursor(json.dumps({"left_off": check_key.to_user_string() if check_key else None,
                                          "said": said}, sort_keys=True))
        if requested:
            return dg.RunRequest(asset_check_keys=requested)
        return dg.SkipReason("No freshness checks need to be evaluated at this time, since all checks are either "
                             "currently evaluating, have failed, or are not yet overdue.")

    return sensor


def tick_log_days(instance: dg.DagsterInstance) -> int | None:
    """How many days tick logs are kept: Dagster's retention of skipped sensor ticks (``retention: sensor:
    purge_after_days: skipped`` of dagster.yaml; 7 by default); None where it keeps them for good (-1: the logs are
    kept for good too, review rev26f), 7 where it gives none or 0."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    settings = instance.get_tick_retention_settings(InstigatorType.SENSOR)
    days = settings.get(TickStatus.SKIPPED, DEFAULT_TICK_LOG_DAYS)
    if days is not None and days < 0:
        return None
    return days if days else DEFAULT_TICK_LOG_DAYS


def _open_folder(base: str, parts: Iterable[str]) -> int | None:
    """A descriptor of ``base/<parts>``, each part a real folder (a link is never followed), or None."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(base, flags)
    except OSError:
        return None
    for part in parts:
        try:
            inner = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = inner
    return fd


def prune_tick_logs(instance: dg.DagsterInstance, repository: str, names: Iterable[str], now: float | None = None,
                    days: int | None = None, limit: int = MAX_PRUNED, seconds: float = PRUNE_SECONDS) -> int:
    """Remove the tick logs of the sensors and schedules ``names`` of ``repository`` (``<tick id>.err`` and the like,
    in the instance's local compute logs) last written more than ``days`` (:func:`tick_log_days`) before ``now``, at
    most ``limit`` of them, for at most ``seconds``; the number removed. Only this account's regular files with a tick
    log's name are removed, never through a link; a file that cannot be removed is left (the next night tries again)."""
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    manager = instance.compute_log_manager
    base = getattr(manager, "_base_dir", None)
    if not isinstance(manager, LocalComputeLogManager) or not isinstance(base, str):
        return 0
    days = tick_log_days(instance) if days is None else days
    if days is None:                        # Dagster keeps the ticks for good: their logs too
        return 0
    cutoff = (time.time() if now is None else now) - days * 86400
    removed, until = 0, time.monotonic() + seconds
    for name in sorted(set(names)):
        if removed >= limit or time.monotonic() > until or name in (".", "..") or "/" in name:
            continue
        fd = _open_folder(base, (repository, name))
        if fd is None:
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if removed >= limit or time.monotonic() > until:
                        break
                    if not _TICK_LOG_NAME.fullmatch(entry.name):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mtime < cutoff:
                            os.unlink(entry.name, dir_fd=fd)
                            removed += 1
                    except OSError:
                        continue
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def prune_home_tick_logs(context: dg.ScheduleEvaluationContext, now: float | None = None) -> int:
    """:func:`prune_tick_logs` for every sensor and schedule of the code location ``context`` evaluates (what the
    nightly schedule runs first); never fails the schedule (the error is logged, as a tick log)."""
    try:
        repository = context.repository_def
        names = [definition.name for definition in (*repository.sensor_defs, *repository.schedule_defs)]
        return prune_tick_logs(context.instance, repository.name, names, now=now)
    except Exception as exc:  # noqa: BLE001 - housekeeping: the night's requests go on
        context.log.warning(f"tick logs not pruned: {type(exc).__name__}: {exc}")
        return 0

