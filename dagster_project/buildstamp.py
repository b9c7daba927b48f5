"""The fast "up to date" answer of `pickapic build`: a stamp of everything a build's plan depends on.

After a build that left every asset fresh, ``HOME/cache/build_stamp.json`` records a digest of what the
plan read: the code versions, the settings file and the command's overrides, the raw zone (each file's
size, mtime and inode), every output (warehouse files, the ``latest`` link, the model) and, per day whose
``image_rejects`` rejects blobs for a reason a change of the blob heals, what those blobs are (missing or
there, size and times; past ``CACHED_BLOBS`` a day, the folders that hold them). A later build whose digest
matches has nothing to do and says so without loading Dagster or any stage (well under a second); anything
else, including a run launched from the UI or by the daemon (it rewrites outputs), falls through to the full
plan against the data versions Dagster recorded. The inputs part, the rejected blobs and ``until`` are taken
when the build plans (:func:`plan_view`), not when it ends: a raw day that lands or begins during a build is
new to the next one. A stamp written while a raw day folder was skipped because the day had not begun (UTC)
holds that day as its ``until``: from then on it is not trusted. Deleting the stamp only costs that full plan
once. No Dagster import here: this is the path that must stay cheap.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dagster_project.versions import code_versions
from formats import dataset
from formats.files import write_bytes_atomic
from formats.home import DataHome
from formats.settings import MAX_FILE_BYTES, SettingsError, parse_assignment, parse_text, read_text, settings_path
from pipelines.provenance import (
    RejectedBlobs,
    changed_since,
    combine,
    days_not_run,
    planned_days,
    raw_stats,
    read_cache,
    stat_key,
    writing_cache,
)

STAMP = "build_stamp.json"
STAMP_MAX_BYTES = 64 << 10   # a stamp is about 100 bytes: a larger file is not ours (read as no stamp)


def _file_text(path: Path | None) -> str | None:
    """A settings file's text for the stamp (at most ``MAX_FILE_BYTES`` + 1 bytes: ``load`` refuses a larger one)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1).decode("utf-8", errors="replace")
    except OSError:
        return "unreadable"


def stamp_key(home: DataHome, *, assignments: Iterable[str] = (), config_file: Path | None = None,
              with_model: bool = False) -> str:
    """Digest of everything a build's plan depends on, as the home is now (see the module docstring)."""
    return _key(_inputs(home, assignments, config_file, with_model), _outputs(home, with_model),
                _blob_watches(home, assignments, config_file))


UNTRUSTED = "untrusted:"   # a key the stamp cannot vouch for (a day's rejected blobs in too many folders, a day's
                           # rows stale): never up to date
STALE_ROWS = {"copied_rows": "changed"}   # in a day's watch: a row of it is not what a run of it writes now


def _key(inputs: list, outputs: list, watches: list, stale: bool | None = None) -> str:
    """The stamp's key; untrusted where a day's rejected blobs are unwatched or a day's rows are stale (``stale``,
    default: as ``watches`` say): the plan would run that day (review rev30h), so such a state is never up to
    date."""
    digest = combine("build-stamp", inputs, outputs, watches)
    unwatched = any(isinstance(watch, list) and watch and watch[-1] == "unwatched" for _, watch in watches)
    if stale is None:
        stale = any(isinstance(watch, list) and STALE_ROWS in watch for _, watch in watches)
    return UNTRUSTED + digest if unwatched or stale else digest


def _inputs(home: DataHome, assignments: Iterable[str], config_file: Path | None, with_model: bool) -> list:
    """What the build reads and does not write: code versions (the card's in the publish's: review rev31l),
    settings, the raw zone, the moderation lists."""
    assignments = list(assignments)
    return [code_versions(), _file_text(settings_path(home.root)), assignments, _file_text(config_file), with_model,
            raw_stats(home), _moderation_elsewhere(home, assignments, config_file)]


def _outputs(home: DataHome, with_model: bool) -> list:
    """What the build writes: the warehouse files, the ``latest`` link and its manifest, the model."""
    outputs = []
    if home.warehouse.is_dir():
        for folder, _, files in sorted(os.walk(home.warehouse)):
            for name in sorted(files):
                if name.endswith(".parquet"):
                    path = Path(folder) / name
                    outputs.append([str(path.relative_to(home.warehouse)), stat_key(path)])
    latest = dataset.latest_link(home)
    target = dataset.latest_version(latest.parent)     # a relative or an absolute link, as the publish reads it
    model = None
    if with_model and target:
        model = stat_key(home.models / "preference_model" / target / "eval.json")
    return [outputs, target, stat_key(latest / dataset.MANIFEST_FILE) if target else None, model]


def _blob_watches(home: DataHome, assignments: Iterable[str] = (), config_file: Path | None = None) -> list:
    """Per day whose ``image_rejects`` rejects blobs for a reason a change of the blob heals (``missing_blob``,
    ``truncated_image``, ...), what they are now (:meth:`pipelines.provenance.RejectedBlobs.stamp_watch`): a blob
    that lands or changes after its day was fingerprinted changes no raw day file, yet makes the day stale
    (reviews rev23a, rev23g). One ``stat`` per rejected blob, or per folder that holds them when a day has more
    than ``CACHED_BLOBS``; the paths come from the bounded cache (the partition is read only when it changed).
    A day `pickapic build` does not run (:func:`pipelines.provenance.days_not_run`: its raw folder gone, or not
    begun; an incomplete day it ingests as it is, so it is watched) is not watched: its rejected blobs and rows are
    settled as built (review rev30j: its stale rows kept the stamp untrusted for good); its partitions are among
    the outputs, and the days copying from it are watched, judged as the build's plan judges them (the same
    days settled: review rev31b)."""
    days = home.partition_days("image_rejects")
    if not days:
        return []
    planned = planned_days(home, incomplete=True, today=_today())   # the days `pickapic build` runs
    gone = days_not_run(home, days, planned)
    days = [day for day in days if day not in gone]
    blobs = RejectedBlobs(home, planned=planned)
    base = _named_settings(home, assignments, config_file, "features", ("blob_base",)).get("blob_base")
    base = base if isinstance(base, str) and base and "\x00" not in base else str(home.root)
    out = []
    for day in days:
        watch = blobs.stamp_watch(day, base)
        if watch is not None:
            out.append([day, watch])
    blobs.save()
    return out


CHANGED_DURING_BUILD = "changed-during-the-build"


@dataclass
class PlanView:
    """What a build's plan saw, taken just before it plans (:func:`plan_view`): the stamp the build writes at its
    end records this, not the home as it is then (review rev23g: a raw day that landed while the build ran, or
    a day that began past midnight UTC, was stamped as built, and the next build answered "up to date")."""

    inputs: list
    watches: list
    until: str | None
    taken_ns: int
    assignments: list[str]
    config_file: Path | None
    with_model: bool

    def key_after_build(self, home: DataHome) -> str:
        """The stamp's key once the build's runs are done: the inputs the plan saw, the outputs as the runs left
        them, and the rejected blobs as the plan saw them where the build left a day's rejects alone; a day whose
        rejects the build rewrote is watched as the run left it, unless a blob or folder changed since the plan
        (then the next check differs and plans in full).

        A day whose rows the runs left stale (:class:`pipelines.provenance.CopiedRows`: :data:`STALE_ROWS`) makes
        the key untrusted (:func:`_key`): the next build plans in full and runs it. A run of one day can make
        another stale (review rev30h: a day backfilled late, run alone, holds a picture a later day computed
        afresh; the later day, with no watch before the build, was stamped as the build left it, stale, and every
        later build said up to date while ``--dry-run`` planned it): the stamp never records a state the plan
        would still run something in."""
        before = {day: watch for day, watch in self.watches}
        watches = []
        left_stale = False
        for day, watch in _blob_watches(home, self.assignments, self.config_file):
            left_stale = left_stale or STALE_ROWS in watch
            earlier = before.get(day)
            if earlier is not None and earlier[0] == watch[0]:
                watches.append([day, earlier])
            elif _changed_since(watch, self.taken_ns):
                watches.append([day, CHANGED_DURING_BUILD])
            else:
                watches.append([day, watch])
        return _key(self.inputs, _outputs(home, self.with_model), watches, left_stale)


def plan_view(home: DataHome, *, assignments: Iterable[str] = (), config_file: Path | None = None,
              with_model: bool = False, not_begun: Iterable[str] | None = None) -> PlanView:
    """Take what the build's plan is about to see (call it before planning): the inputs part of the key, the
    rejected blobs, and ``until``, the first raw day folder that has not begun (UTC) now, which the plan skips
    (``not_begun``: those days as the build's own clock sees them; else this module's)."""
    assignments = list(assignments)
    taken = time.time_ns()
    if not_begun is None:
        today = _today()
        not_begun = [day for day in home.raw_days() if day > today]
    not_begun = sorted(not_begun)
    return PlanView(inputs=_inputs(home, assignments, config_file, with_model),
                    watches=_blob_watches(home, assignments, config_file), until=not_begun[0] if not_begun else None,
                    taken_ns=taken, assignments=assignments, config_file=config_file, with_model=with_model)


def _changed_since(watch: list, since_ns: int) -> bool:
    """Whether a blob or folder of a stamp watch may have changed at or after ``since_ns`` (its ctime says so)."""
    for part in watch[1:]:
        if isinstance(part, list):
            for _, identity in part:
                if isinstance(identity, list) and isinstance(identity[-1], int) and changed_since(identity[-1], since_ns):
                    return True
    return False


_MODERATION_KNOBS = ("phrases_file", "banned_users_file")


def _named_settings(home: DataHome, assignments: Iterable[str], config_file: Path | None, section: str,
                    knobs: Iterable[str]) -> dict[str, object]:
    """The values of ``section.knob`` the build's settings name (the home's file, then ``--config``, then
    ``--set``, as :func:`formats.settings.load` applies them), read without validating (the plan's own
    ``load`` reports a bad value)."""
    knobs = tuple(knobs)
    named: dict[str, object] = {}
    for path in (settings_path(home.root), config_file):
        if path is None:
            continue
        try:
            table = parse_text(read_text(Path(path)), str(path)).get(section, {})
        except SettingsError:
            continue
        if isinstance(table, dict):
            named.update({name: table[name] for name in knobs if name in table})
    for assignment in assignments:
        try:
            key, value = parse_assignment(assignment)
        except SettingsError:
            continue
        part, _, name = key.partition(".")
        if part == section and name in knobs:
            named[name] = value
    return named


def _moderation_elsewhere(home: DataHome, assignments: Iterable[str] = (), config_file: Path | None = None) -> list:
    """The moderation lists the build's settings name (the home's file, then ``--config``, then ``--set``, as
    :func:`formats.settings.load` applies them), by size/mtime/inode/ctime. Read without validating (the
    plan's own ``load`` reports a bad value): a ``curation`` that is not a table names none, never a
    traceback, and a list named by ``--set`` / ``--config`` is watched too (review rev21c: only the home's
    file was read, so an edited list named on the command line answered "up to date"). The files are read
    as ``load`` reads them (:func:`formats.settings.read_text`, ``parse_text``): a huge or deeply nested one
    names none here and ``load`` refuses it naming the file (review rev22e: a bare RecursionError here)."""
    named = _named_settings(home, assignments, config_file, "curation", _MODERATION_KNOBS)
    return [[name, stat_key(home.moderation_list(value, home.root))] for name, value in sorted(named.items())
            if isinstance(value, str) and value and "\x00" not in value]   # a NUL: load refuses it, naming the key


def is_up_to_date(home: DataHome, key: str) -> bool:
    """Whether the last fresh build left exactly this state, and no raw day it skipped as not begun has
    begun since (the stamp's ``until``)."""
    if key.startswith(UNTRUSTED):
        return False
    # read as the plan's other caches: a FIFO, a link, a device or a huge file there is no stamp (review rev31b)
    stamp = read_cache(home.cache / STAMP, STAMP_MAX_BYTES)
    if not isinstance(stamp, dict) or stamp.get("key") != key:
        return False
    until = stamp.get("until")
    return until is None or (isinstance(until, str) and _today() < until)


def _today() -> str:
    """Today (UTC), as a day name."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def write_stamp(home: DataHome, key: str, until: str | None = None) -> None:
    """Record that the home is fresh in state ``key``; ``until``: the first raw day the build skipped because it had
    not begun (UTC), from which day on the stamp is not trusted (review rev23a: the raw zone does not change when
    a day begins, so the stamp kept answering "up to date" and the day was never ingested)."""
    if key.startswith(UNTRUSTED):
        clear_stamp(home)
        return
    body = {"key": key, **({"until": until} if until else {})}
    with writing_cache(home) as held:   # its temporary file is swept under it exclusively (review rev30c)
        if held:
            write_bytes_atomic(home.cache / STAMP, (json.dumps(body) + "\n").encode())


def clear_stamp(home: DataHome) -> None:
    """Forget the fresh state (a build is about to change the home)."""
    try:
        (home.cache / STAMP).unlink()
    except FileNotFoundError:
        pass
