"""Daily ingest: one day of raw app exports -> validated Parquet tables + quarantine, nothing lost.

``ingest_day(home, day)`` reads ``raw/app_logs/dt=DAY/{users,images,rankings,downloads}.jsonl.gz``
and writes, for that day, ``warehouse/{users,images,rankings,downloads,quarantine,ingest_files}/dt=DAY/
part-0.parquet``. Every input line ends in exactly one place: its table or ``quarantine`` (with the
table, day, file, 1-based line number, reason, detail, the first 64 KiB of the line as lossy UTF-8,
its byte length and sha256). Identical bad lines (same reason, detail, length and sha256) share one
quarantine row: ``line_number`` is the first, ``last_line_number`` the last, ``line_count`` how many
(``pipelines.ingest.quarantine``: rows stream to ``cache/tmp`` in bounded batches, so memory is flat
in the number of bad lines). Outputs are sorted by primary key, so the same raw files and config always give
byte-identical Parquet; all six files are written under temporary names and renamed only once every
one of them is complete, so a crash leaves the previous version readable. Every stored path and
detail names files relative to the data home, never its absolute location. Each ingest also rewrites
``warehouse/raw_zone_problems/data.parquet``: the raw-zone entries that are not days
(``formats.rawzone``: misnamed or linked-out ``dt=`` folders, stray files), skipped, never fatal.

The rules: per line in :mod:`pipelines.ingest.parse` (the reasons in the order they are checked), per
file in :mod:`pipelines.ingest.reader`, image references in :mod:`pipelines.ingest.references`, the
transformations of accepted rows in :mod:`pipelines.ingest.builders`.

Reconciliation: for every table, lines_in = accepted + quarantined (quarantined = the summed
``line_count`` of its line-level rows), stated by ``IngestReport.reconciled`` and checked again from
the written files by the ``ingest_files`` contract.

Speed: each line is decoded with the standard ``json`` scanner and checked by a compiled fast path
(falling back to the reference rules for anything unusual). A day whose raw files total at least
``parallel_min_bytes`` (16 MiB compressed, about 60,000 rankings) is read by ``workers`` (2) forked
processes: each reads every file but validates only the lines whose primary key, as written in the
raw bytes, routes to it (crc32 of the key; a line whose key cannot be read that way goes to worker
0), and the parent merges the parts (an overlong line's key members are scanned once, by worker 0, and read by the
others: ``reader.OverlongMembers``). If versions of one key still reach two workers, that table is
redone in one process; if the workers read different bytes of one file (delivered again between their opens:
each hashes the whole file), the day is read again in one process (review rev27b). The reference check reads other days through a per-day index of their raw
images files' uids (``cache/raw_image_uids/dt=DAY.parquet``, written by that day's ingest, trusted
while the raw file has the recorded size and times, else its recorded sha256; otherwise the file is
searched again), so a day's check does not decompress the whole history. None of this changes a
byte of the output.

Other days rewritten: a day's ingest rewrites the earlier days within ``late_image_days`` whose waiting
references its images export resolves, and the later days whose quarantine waits for one of its images
(a day landing after later days were built), and the later days whose rows resolve otherwise now
(:mod:`pipelines.ingest.earlierimages`). Each rewritten day does its own whole look at other days as well (its
export may have been delivered again since its own run: review rev24i), each day rewritten at most once per
ingest (every day written in one ingest is computed from the raw zone as it is), so a cascade ends. Each such
rewrite is recorded first
(``warehouse/.ingest_rewrites/dt=DAY``, :mod:`pipelines.ingest.rewrites`) and the record cleared after its
six renames, so a crash between them is redone by the next ingest of any day. The write of a day and the
look at other days run under the home's ingest lock (``.locks/ingest.lock``), and a day whose raw zone changed
since its compute is computed again first (:func:`ingest_day`), so parallel ingests give the bytes of a build
from scratch.

Command line: ``python -m pipelines.ingest`` (:mod:`pipelines.ingest.__main__`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Collection, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import (
    PARQUET_OPTIONS,
    atomic_path,
    cast_to_schema,
    is_real_folder,
    sweep_temps,
    sweep_temps_of,
    write_parquet_atomic,
)
from formats.home import DataHome
from formats.locks import held_scratch_folder, hold_lock, sweep_scratch_folders
from formats.processes import worker_pool
from formats.rawzone import RawZoneScan
from formats.text import terminal_text
from pipelines import faults
from pipelines.ingest import earlierimages, rewrites
from pipelines.ingest.builders import BUILDERS, ingest_files_table
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig, IngestReport, TableReport, parse_day, shift_day
from pipelines.ingest.quarantine import QuarantineSink, write_quarantine
from pipelines.ingest.reader import SEEN_OVERFLOW, fill_pending, read_table
from pipelines.ingest.references import REFERENCE_FIELDS, check_references, late_window_end
from pipelines.ingest.uidindex import (
    EXPORTS_FOLDER,
    exports_record_path,
    prepare_exports_folder,
    raw_image_uids,
    reference_days,
    stat_key,
    write_exports_record,
    write_uid_index,
)
from pipelines.ingest.uidset import UidSet
from pipelines.ingest.waiting import Unreadable, WaitingIndex, read_waiting
from schemas import get_schema
from schemas.raw import PRIMARY_KEYS, RAW_TABLES


def write_raw_zone_problems(home: DataHome, scan: RawZoneScan) -> Path:
    """Record the raw zone's skipped entries (``warehouse/raw_zone_problems/data.parquet``), sorted by path."""
    problems = scan.problems
    table = pa.table({
        "path": pa.array([p.path for p in problems], pa.string()),
        "entry": pa.array([p.entry for p in problems], pa.string()),
        "reason": pa.array([p.reason for p in problems], pa.string()),
        "detail": pa.array([p.detail for p in problems], pa.string()),
        "file_bytes": pa.array([p.file_bytes for p in problems], pa.int64()),
    })
    return write_parquet_atomic(table, home.table_file("raw_zone_problems"), get_schema("raw_zone_problems"))


_Writer = tuple[pa.Table, pa.Schema] | Callable[[Path], None]


def write_tables_atomic(paths_writers: dict[Path, _Writer]) -> None:
    """Write every file under a temporary name first (a table cast to its schema, or a function that
    writes the temporary path itself); rename them all only when all are written."""
    items = list(paths_writers.items())
    with contextlib.ExitStack() as stack:
        for index, (final, writer) in enumerate(items):
            if index == len(items) - 1 and index > 0:
                # exits run last-in first-out: this fires after the last file's rename, before the others'
                stack.callback(faults.maybe_crash, "ingest.after_first_rename")
            tmp = stack.enter_context(atomic_path(final))
            if callable(writer):
                writer(tmp)
            else:
                table, schema = writer
                pq.write_table(cast_to_schema(table, schema), tmp, **PARQUET_OPTIONS)



_TableResult = tuple[pa.Table, QuarantineSink, TableReport, set]


def _ingest_tables(home: DataHome, day: str, tables: Sequence[str], config: IngestConfig, raw_days: Sequence[str],
                   part: tuple[int, int] = (0, 1), spill_dir: Path | None = None, *,
                   overlong: Path | None = None) -> dict[str, _TableResult]:
    """Read, validate, de-duplicate and reference-check ``tables`` of one day; no writing.

    Returns, per table, its sorted Arrow table, its quarantine sink (closed: spilled rows are in
    ``spill_dir``), its report and the primary keys it saw. With ``part`` = (index, parts) only the
    lines routed to that part are validated (a worker of a large day); ``_merge_parts`` combines them.
    ``overlong``: the folder of the tables' shared overlong-line members (``reader.OverlongMembers``, one file a
    table): each overlong line is scanned once, by part 0.
    """
    date = parse_day(day)
    parsers = {table: config.line_parser(table, date) for table in tables}
    # what the byte search finds in today's images file (quarantined lines' uids too): spilled past a bound, so memory
    # is flat in the uids of bad lines (review rev33i)
    known_today: UidSet | None = UidSet(spill_dir) if "images" in tables else None
    runs = {}
    for table in tables:
        uid_sink = known_today if table == "images" else None
        indexing = uid_sink is not None and part[0] == 0   # one part writes today's uid index
        stat = stat_key(home.raw_file(day, table)) if indexing else None
        runs[table] = read_table(home, day, table, parsers[table], config, uid_sink, part, spill_dir,
                                 overlong=overlong / f"{table}.members" if overlong is not None else None)
        if indexing and not runs[table].limited:   # a read that depends on the limits is not kept for other limits
            write_uid_index(home, day, known_today, runs[table].report.file_sha256, stat,
                            runs[table].report.status in ("ok", "empty"))
    check_references(runs, parsers, known_today, home, day, raw_days, config.late_image_days, config)
    if known_today is not None:   # what the byte search found, recorded with the day's files (review rev29e)
        runs["images"].report.exported_uids = known_today
    results = {}
    for table, run in runs.items():
        fill_pending(run, config)
        run.quarantine.close()
        report = run.report
        report.accepted = len(run.rows)
        _tally(report, run.quarantine)
        built = BUILDERS[table](home, [values for _, values in run.rows.values()], date).sort_by(PRIMARY_KEYS[table])
        results[table] = (built, run.quarantine, report, run.seen)
    return results


def _merge_parts(table: str, parts: list[_TableResult]) -> tuple[pa.Table, QuarantineSink, TableReport]:
    """One table's result from its parts: rows and quarantine rows of every part (only part 0
    reports file-level problems), the file facts once (every part read the whole file)."""
    built = pa.concat_tables([p[0] for p in parts]).sort_by(PRIMARY_KEYS[table])
    sink = parts[0][1]
    for other in parts[1:]:
        sink.merge(other[1])
    sink.close()
    report = parts[0][2]
    if not _same_file(parts) or any(p[2].lines_in != report.lines_in for p in parts):
        raise RuntimeError(f"{report.file} changed while it was ingested: its parts read different files; "
                           "ingest the day again")
    report.accepted = built.num_rows
    report.accepted_late_image = sum(p[2].accepted_late_image for p in parts)
    report.late_image_days = sorted({d for p in parts for d in p[2].late_image_days})
    _tally(report, sink)
    return built, sink, report


def _same_file(parts: list[_TableResult]) -> bool:
    """Whether the parts of one table read the same file: the same bytes (sha256 and size of the whole file, which
    every part hashes) and the same outcome."""
    facts = {(p[2].status, p[2].error, p[2].file_sha256, p[2].file_bytes) for p in parts}
    return len(facts) == 1


def _tally(report: TableReport, sink: QuarantineSink) -> None:
    """Set ``report``'s quarantined line count and its lines per reason (one per file-level row)."""
    report.quarantined = sink.lines
    report.reasons = dict(sorted(sink.reasons.items()))


def _split_keys(parts: list[_TableResult]) -> bool:
    """True when one primary key was seen by two parts (the parts cannot be merged): a key of an accepted row, or of
    a rejected line (a version of its key all the same), or a part that kept too many of the latter to tell."""
    seen: set = set()
    for part in parts:
        if SEEN_OVERFLOW in part[3] or not seen.isdisjoint(part[3]):
            return True
        seen |= part[3]
    return False


def _raw_size(home: DataHome, day: str) -> int:
    return sum(path.stat().st_size for path in (home.raw_file(day, t) for t in RAW_TABLES) if path.is_file())


# The ingest's scratch folders in HOME/cache/tmp (tempfile's names): swept when no process holds them
SPILL_FOLDER_RE = re.compile(r"ingest-[0-9]{4}-[0-9]{2}-[0-9]{2}-[A-Za-z0-9_]{1,64}")


@contextlib.contextmanager
def _spill_folder(home: DataHome, day: str) -> Iterator[Path]:
    """A private scratch folder inside the data home's ``cache/`` for quarantine spills; removed after.

    Its holder keeps an exclusive ``flock`` on the folder while it runs (taken before the folder gets its
    ``ingest-DAY-XXXX`` name: :func:`formats.locks.held_scratch_folder`), so a folder that a crashed ingest left (its
    spills hold raw text of hostile lines) is told from a running one and removed by the next ingest
    (:func:`sweep_spill_folders`, review rev25f)."""
    with held_scratch_folder(home.cache / "tmp", f"ingest-{day}-") as folder:
        yield folder


def sweep_ingest_temps(home: DataHome) -> list[str]:
    """Remove the temporary files (``.NAME.<hex>.tmp``) that the ingest's writers outside the day's partition
    folders (which :func:`clear_partition_folders` empties) left when killed mid-write: ``raw_zone_problems``'s,
    written only under the ingest lock, which the caller holds; and in ``cache/`` the disposable caches' (the raw-day
    digests, the raw image-uid index, ...: :func:`pipelines.cachesweep.sweep_cache_temps`), whose writers (a plan,
    a check, any day's ingest: no stage lock) write only while holding the cache-writers lock shared, swept only
    when it is free (:func:`formats.locks.sweep_exclusively`), so no live writer's file is ever removed (review
    rev29b: each crash left one for good). Says what it left on stderr;
    returns those notes."""
    from pipelines.cachesweep import sweep_cache_temps

    notes = sweep_temps_of([home.table_file("raw_zone_problems")])
    # the records of the days' images exports, written with each day's files under the ingest lock (never through
    # a link at their folder)
    notes += sweep_temps(home.warehouse / EXPORTS_FOLDER, r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}\.parquet")[1]
    notes += sweep_cache_temps(home)
    for note in notes:
        print(f"warning: {terminal_text(note)}", file=sys.stderr, flush=True)
    return notes


def sweep_spill_folders(home: DataHome) -> list[str]:
    """Remove the scratch folders (``cache/tmp/ingest-DAY-XXXX``, only those names) that no running ingest holds:
    what a crashed ingest left behind (:func:`formats.locks.sweep_scratch_folders`). Run under the ingest lock;
    returns the names removed."""
    return sweep_scratch_folders(home.cache / "tmp", SPILL_FOLDER_RE)


class PartitionFolderRefused(NotADirectoryError):
    """A day's partition folder (``warehouse/<table>/dt=DAY/``) is a symbolic link or not a folder: the ingest
    writes nothing through it and nothing was written (review rev25i)."""


def check_partition_folders(home: DataHome, day: str, outputs: Collection[Path]) -> None:
    """Refuse (:class:`PartitionFolderRefused`, one line naming the first such folder, escaped) when a partition
    folder of the day is there but is not a real folder: a symbolic link (an admin moved a big day to another disk)
    or a file. The ingest would write ``part-0.parquet`` through the link, replacing a file outside the data home,
    and leave the link's other files in place, and the refusal of curation that follows could never be cured by
    re-ingesting (review rev25i). Called before the day is computed and again under the ingest lock, before
    anything is written."""
    for output in outputs:
        folder = output.parent
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            continue
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        shown = terminal_text(folder.relative_to(home.root).as_posix() if folder.is_relative_to(home.root)
                              else str(folder))
        raise PartitionFolderRefused(
            f"cannot ingest {day}: the partition folder {shown} is {what}: the ingest writes nothing through a link "
            f"or over what it did not make, and nothing was written; move the day's files back into a real folder "
            f"at that name (or remove it: a link's removal leaves what it names) and ingest the day again")


def clear_partition_folders(outputs: Collection[Path]) -> list[Path]:
    """The ingest of a day owns its partition folders (``warehouse/<table>/dt=DAY/``): every entry in them but the
    file it writes there (``part-0.parquet``) is removed before it writes, so a stray file (a copy, a crashed
    writer's temporary file) never reaches the readers' ``dt=DAY/*.parquet`` glob, and re-ingesting a day cures what
    curation's ``IngestNotReconciled`` reports (review rev25f). A folder that is a link is left alone (never a
    file outside the home; :func:`check_partition_folders` refuses it first). An entry that cannot be removed yet
    (EBUSY: on NFS, the ``.nfsXXXX`` name of a replaced partition file a reader still holds open) is left with a
    warning on stderr, and the next ingest of the day tries again: the ingest never fails on it (review rev25i; a
    ``.nfs`` name is no ``*.parquet`` file the readers count). Returns what was removed."""
    removed = []
    for output in outputs:
        folder = output.parent
        if not is_real_folder(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name == output.name:
                continue
            entry = folder / name
            try:
                if is_real_folder(entry):
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            except OSError as exc:
                print(terminal_text(f"ingest: {entry} (not written by the ingest) could not be removed from the "
                                    f"partition folder ({exc.strerror or exc}): left as it is; the next ingest of the "
                                    f"day tries again"), file=sys.stderr, flush=True)
                continue
            removed.append(entry)
    return removed


def _compute(home: DataHome, day: str, config: IngestConfig, raw_days: Sequence[str],
             spill_dir: Path) -> dict[str, tuple[pa.Table, QuarantineSink, TableReport]]:
    """The day's six outputs, computed from the raw zone (``raw_days``: the days its scan listed); no writing but
    the uid index cache and the quarantine spills in ``spill_dir``."""
    if config.workers > 1 and _raw_size(home, day) >= config.parallel_min_bytes:
        # every worker reads every file and validates the lines whose primary key routes to it
        # fork: a spawned child would re-import the caller's __main__; the child only parses and
        # builds Arrow arrays (Arrow re-creates its thread pools after fork)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        # worker 0 scans the key members of the overlong lines and writes them here; the other workers, and a table's
        # redo below, read them (each overlong line scanned once per compute, review fix35d)
        overlong = Path(tempfile.mkdtemp(dir=spill_dir, prefix="overlong-"))
        try:
            return _compute_parallel(home, day, config, raw_days, spill_dir, context, overlong)
        finally:
            shutil.rmtree(overlong, ignore_errors=True)
    return {table: value[:3] for table, value
            in _ingest_tables(home, day, RAW_TABLES, config, raw_days, spill_dir=spill_dir).items()}


def _compute_parallel(home: DataHome, day: str, config: IngestConfig, raw_days: Sequence[str], spill_dir: Path,
                      context, overlong: Path) -> dict[str, tuple[pa.Table, QuarantineSink, TableReport]]:
    """The day read by ``config.workers`` forked workers (``_compute``), merged, or read again in one process."""
    n = config.workers
    # worker_pool: the workers die with this process (a fork shares its open lock files: the build lock, the
    # spill folder's; a build SIGKILLed here left them held for good, review rev33e)
    with worker_pool(n, context) as pool:
        futures = [pool.submit(_ingest_tables, home, day, RAW_TABLES, config, raw_days, (i, n), spill_dir,
                               overlong=overlong) for i in range(n)]
        parts = [future.result() for future in futures]
    if not all(_same_file([p[table] for p in parts]) for table in RAW_TABLES):
        # a raw file was delivered again between the workers' opens: their rows are of two deliveries (review
        # rev27b); read the day again in one process, each file once (its overlong lines scanned again: other bytes)
        return {table: value[:3] for table, value
                in _ingest_tables(home, day, RAW_TABLES, config, raw_days, spill_dir=spill_dir).items()}
    results = {}
    for table in RAW_TABLES:
        table_parts = [p[table] for p in parts]
        if _split_keys(table_parts):  # versions of one key met different workers: redo it whole
            # with the members worker 0 scanned (the same bytes read again: none scanned twice)
            results[table] = _ingest_tables(home, day, (table,), config, raw_days, spill_dir=spill_dir,
                                            overlong=overlong)[table][:3]
        else:
            results[table] = _merge_parts(table, table_parts)
    return results


def _raw_inputs(home: DataHome, scan: RawZoneScan, day: str) -> list:
    """What a day's ingest read: the raw zone's days and each one's images file by size and times (one ``stat`` a
    day: the reference check), and ``day``'s own four files by device, inode, size and times (review rev27b: a
    rankings file delivered again during the compute was looked at by none of these). Equal before and after a
    write: no day landed or changed in between."""
    return [[d, stat_key(home.raw_file(d, "images"))] for d in scan.days] + [_identity(home.raw_file(day, table))
                                                                            for table in RAW_TABLES]


def _identity(path: Path) -> list | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode]


MAX_RECOMPUTES = 3   # under the ingest lock: the raw zone changing at each look is left to the landing days' own ingests


def ingest_day(home: DataHome, day: str, config: IngestConfig = IngestConfig(), *,
               refresh_earlier: bool = True) -> IngestReport:
    """Ingest one day of raw exports into the warehouse partitions of ``day``; returns the counts.

    With ``refresh_earlier``, other days are ingested again where this one changes them, so a day's
    partitions never depend on the order in which the days were ingested: the earlier days within
    ``late_image_days`` whose quarantine waits for an image this day's export brings (or whose late rows
    lost theirs: ``refresh_late_references``), and the later days whose quarantine waits for one
    (``refresh_later_days``). First, every day whose rewrite a crash interrupted is ingested again
    (``repair_interrupted_rewrites``). All of them are in ``IngestReport.refreshed``.

    Parallel ingests (the raw-day sensor starts one run per landed day): the day is computed without a lock,
    then written and the other days refreshed under the home's ingest lock (``.locks/ingest.lock``,
    :func:`ingest_lock`), so one ingest's writes and looks at other days never interleave with another's.
    Under the lock the raw zone is looked at again (:func:`_raw_inputs`, before and after the write): when a
    day landed or changed since the compute, the day is computed again first (review rev23g: an earlier day
    ingested meanwhile looked at this day before it was written, and this day never saw that one), and so when
    one of the day's own files was delivered again (review rev27b). A day that lands after that look is ingested
    later by its own run, whose look at later days then sees this one; a file of the day delivered again after it
    is named by its sha256 as read in the report (``IngestReport.read_digests``, the version the asset records),
    so the day shows stale and is ingested again.
    """
    started = time.perf_counter()
    date = parse_day(day)
    check_day_begun(day)
    scan = home.scan_raw_zone()
    if day not in scan.days:
        raise RawDayGone(_gone_message(home, day, scan))
    outputs = {name: home.partition_file(name, day) for name in OUTPUT_DATASETS}
    check_partition_folders(home, day, outputs.values())    # a linked partition folder: refused first (rev25i)
    with _spill_folder(home, day) as spill_dir:
        seen = _raw_inputs(home, scan, day)
        results = _compute(home, day, config, scan.days, spill_dir)
        written: dict[str, int] = {}
        with ingest_lock(home):
            sweep_spill_folders(home)   # what crashed ingests left (raw text of hostile lines)
            sweep_ingest_temps(home)    # and the temporary files of its writers killed mid-write
            unwritten = True
            for attempt in range(MAX_RECOMPUTES + 1):
                # looked at before the write and again after it: an ingest of another day in this process can run
                # during the write (the lock is reentrant), a day landing without its ingest anywhere
                scan = home.scan_raw_zone()
                if day not in scan.days:
                    raise RawDayGone(_gone_message(home, day, scan))
                now = _raw_inputs(home, scan, day)
                if now != seen and attempt < MAX_RECOMPUTES:
                    seen, unwritten = now, True   # a day landed or changed since the compute: compute again, as it is now
                    results = _compute(home, day, config, scan.days, spill_dir)
                    continue
                if not unwritten:
                    break
                check_partition_folders(home, day, outputs.values())   # before anything is written
                check_exports_folder(home, day)
                write_raw_zone_problems(home, scan)
                clear_partition_folders(list(outputs.values()))
                _write_day(results, date, outputs, written, exports_record_path(home, day))
                unwritten = False
            reports = {table: results[table][2] for table in RAW_TABLES}
            # an interrupted rewrite of this day is now complete
            rewrites.finish(home, day, [*outputs.values(), exports_record_path(home, day)])
            refreshed: dict[str, IngestReport] = {}
            if refresh_earlier:
                done = _Written({day})   # the days written in this ingest: each rewritten at most once (rev24i)
                refreshed.update(repair_interrupted_rewrites(home, day, config, done=done))
                refreshed.update(refresh_late_references(home, day, config, scan.days, skip=done))
                refreshed.update(refresh_later_days(home, day, config, scan.days, skip=done))
                refreshed.update(_drain(home, config, scan.days, done))
    return IngestReport(
        day=day,
        tables=reports,
        outputs={name: path.relative_to(home.root).as_posix() for name, path in outputs.items()},
        seconds=time.perf_counter() - started,
        raw_zone_problems=scan.summary(),
        quarantine_rows=written["quarantine"],
        refreshed=dict(sorted(refreshed.items())),
    )


def _write_day(results: dict, date, outputs: dict[str, Path], written: dict[str, int], exports: Path) -> None:
    """Write the day's six files and the record of its images export (``exports``,
    :func:`pipelines.ingest.uidindex.exports_record`), all under temporary names, then renamed."""
    reports = {table: results[table][2] for table in RAW_TABLES}
    sinks = [results[table][1] for table in RAW_TABLES]
    images = reports["images"]
    found = images.__dict__.pop("exported_uids", None)   # not kept in the report (a day's uids)
    files: dict[Path, _Writer] = {}
    if found is not None:
        accepted = results["images"][0].column("image_uid").to_pylist()
        files[exports] = lambda tmp: write_exports_record(found, accepted, images.file_sha256, tmp)
    else:   # never so (the images file is always read): no record of another file is left beside the new one
        exports.unlink(missing_ok=True)

    def quarantine_writer(tmp: Path) -> None:
        written["quarantine"] = write_quarantine(sinks, date, tmp)

    writers: dict[Path, _Writer] = {outputs[table]: (results[table][0], get_schema(table)) for table in RAW_TABLES}
    writers[outputs["quarantine"]] = quarantine_writer
    writers[outputs["ingest_files"]] = (ingest_files_table(list(reports.values()), date), get_schema("ingest_files"))
    # the record first: the six files keep their order (a crash after the first rename is tested on them)
    write_tables_atomic({**files, **{path: writers[path] for path in (outputs[name] for name in OUTPUT_DATASETS)}})


def check_exports_folder(home: DataHome, day: str) -> None:
    """Refuse (:class:`PartitionFolderRefused`, one line) when ``warehouse/.image_exports`` is a symbolic link or not
    a folder: the record of the day's images export is never written through it; nothing was written."""
    try:
        prepare_exports_folder(home)
    except NotADirectoryError:
        raise PartitionFolderRefused(
            f"cannot ingest {day}: warehouse/{EXPORTS_FOLDER} is a symbolic link or not a folder: the ingest writes "
            "nothing through a link or over what it did not make, and nothing was written; remove it (a link's "
            "removal leaves what it names) and ingest the day again") from None


INGEST_LOCK = "ingest.lock"   # in HOME/.locks
_held = threading.local()     # the ingest locks this thread holds (an ingest's rewrites of other days run inside it)


def ingest_lock_path(home: DataHome) -> Path:
    """The home's ingest lock file (``.locks/ingest.lock``, outside the disposable cache)."""
    return home.locks / INGEST_LOCK


@contextlib.contextmanager
def ingest_lock(home: DataHome, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the home's ingest lock (an exclusive ``flock``, :mod:`formats.locks`), waiting for another ingest's
    writes and looks at other days to end (``on_wait(holder_pid)`` is called first when it must wait, e.g. to say
    so). Reentrant in one thread: a day's rewrites of other days are ingests run while it holds the lock."""
    path = ingest_lock_path(home)
    key = os.path.realpath(path)
    held: set[str] = getattr(_held, "paths", None) or set()
    _held.paths = held
    if key in held:
        yield
        return
    with hold_lock(path, "the ingest of the data home", on_wait or (lambda _holder: None)):   # waits for the holder
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


class DayNotBegun(ValueError):
    """The day has not begun (UTC): its raw folder is an export error, never ingested (review rev32e)."""


def check_day_begun(day: str, today: str | None = None) -> None:
    """Raise :class:`DayNotBegun` for a day after ``today`` (UTC), before anything is read or written: a folder named
    after a later day is an export error (``pipelines.provenance.begun_days``), which `pickapic build`, the nightly
    and the sensors skip; a run of it launched by hand (the UI's "Add partition", ``python -m pipelines.ingest
    --day``) is refused here, since every reader of the warehouse takes each calendar-dated partition folder
    (review rev32e: such a run wrote the six tables' ``dt=9999-12-31`` partitions)."""
    today = today or dt.datetime.now(dt.timezone.utc).date().isoformat()
    if day > today:
        raise DayNotBegun(f"day {day} has not begun (UTC; today is {today}): a raw folder named after a later day is "
                          "an export error and is never ingested (nothing was written); ingest it once it has begun")


def day_begun(day: str) -> bool:
    """Whether ``day`` has begun (UTC), by :func:`check_day_begun`'s clock: the days one day's ingest looks at and
    may rewrite (the later days waiting for its images, the interrupted rewrites) are only those (review rev33e: a
    day that has not begun is an export error, never ingested; a rewrite of one raised :class:`DayNotBegun` inside
    another day's ingest and left its rewrite record pending, and every later ingest failed on it)."""
    try:
        check_day_begun(day)
    except DayNotBegun:
        return False
    return True


class RawDayGone(FileNotFoundError):
    """The day has no raw folder in the raw zone (retention removed it, or it never landed): nothing is
    ingested and nothing rewritten, as the build plan keeps what was built from a gone day."""


def _gone_message(home: DataHome, day: str, scan: RawZoneScan) -> str:
    folder = home.raw_day(day).relative_to(home.root).as_posix()
    problem = next((p for p in scan.problems if p.path == folder), None)
    why = f"{folder} is not a day of the raw zone ({problem.reason})" if problem else f"{folder} is gone"
    built = [name for name in OUTPUT_DATASETS if home.partition_file(name, day).exists()]
    if built:
        return (f"cannot ingest {day}: {why}; its raw folder is gone: keep what was built from it "
                f"(the {', '.join(built)} partitions of {day} were left as they are, nothing was rewritten)")
    return f"cannot ingest {day}: {why}; nothing to ingest (nothing was written)"


class _Written(set):
    """The days written in one top-level ingest (each from the raw zone as it is, so none is rewritten twice and
    a cascade ends), and those of them whose look at other days is still to do (:func:`_drain`: a worklist, so a
    long cascade is no deep recursion)."""

    def __init__(self, days: Collection[str] = ()) -> None:
        super().__init__(days)
        self.looks: list[str] = []


def _written(skip: Collection[str]) -> tuple[_Written, bool]:
    """``skip`` as the ingest's :class:`_Written` (and whether this call made it, so must drain it)."""
    return (skip, False) if isinstance(skip, _Written) else (_Written(skip), True)


def _rewrite(home: DataHome, other: str, config: IngestConfig, cause: str, done: _Written) -> dict[str, IngestReport]:
    """Ingest ``other`` again because of ``cause``: the intent is recorded first (:mod:`pipelines.ingest.rewrites`),
    so a crash between the renames of its six files is redone by the next ingest, whichever day it is. Returns its
    new report by day; its look at other days is queued in ``done`` (:func:`_again`)."""
    done.add(other)
    rewrites.begin(home, other, cause)
    return _again(home, other, config, done)


def _again(home: DataHome, other: str, config: IngestConfig, done: _Written) -> dict[str, IngestReport]:
    """Ingest ``other`` again and queue its whole look at other days, as its own ingest does (:func:`_drain`): the
    earlier days waiting for an image its export brings or whose late rows lost theirs, the later days waiting for
    one, and the later days that take images from it (its raw files may have changed since its last own ingest:
    reviews rev24e, rev24i)."""
    done.add(other)
    reports = {other: ingest_day(home, other, config, refresh_earlier=False)}   # its last step clears the record
    done.looks.append(other)
    return reports


def _drain(home: DataHome, config: IngestConfig, days: Sequence[str], done: _Written) -> dict[str, IngestReport]:
    """Do the looks at other days that the rewrites of ``done`` queued, and those their own rewrites queue, until
    none is left; returns the new reports by day. Each day is rewritten at most once, so it ends."""
    reports: dict[str, IngestReport] = {}
    while done.looks:
        other = done.looks.pop(0)
        reports.update(refresh_late_references(home, other, config, days, skip=done))
        reports.update(refresh_later_days(home, other, config, days, skip=done))
    return dict(sorted(reports.items()))


def repair_interrupted_rewrites(home: DataHome, day: str, config: IngestConfig,
                                done: set[str] | None = None) -> dict[str, IngestReport]:
    """Ingest again every day whose rewrite by another day's ingest was begun and never finished (a crash
    between its renames left its six files mixed); returns the new reports by day. A day whose raw folder
    is gone cannot be redone: its record stays (``pickapic build`` keeps what was built from a gone day); so for
    a day that has not begun (:func:`day_begun`, review rev33e): never ingested, it is redone once it begins."""
    done, own = _written({day} if done is None else done)
    repaired: dict[str, IngestReport] = {}
    for other in rewrites.pending(home):
        if other == day or other in done:
            continue   # this day's own files were just written as a whole (its record is cleared)
        if not day_begun(other):
            continue   # recorded before fix33e: left, its record too, until the day begins (or is removed)
        try:
            repaired.update(_again(home, other, config, done))
        except RawDayGone:
            continue
    if own:
        repaired.update(_drain(home, config, home.raw_days(), done))
    return dict(sorted(repaired.items()))


def refresh_late_references(home: DataHome, day: str, config: IngestConfig,
                            raw_days: Sequence[str] | None = None,
                            skip: Collection[str] = ()) -> dict[str, IngestReport]:
    """Ingest again each ingested day in [day - late_image_days, day) whose quarantine names, as the
    missing image of a ranking or download, a uid that ``day``'s raw images export holds, or that
    accepted a row through a later export and now names an image no export within its reach holds
    (``day`` delivered again without an image the earlier day's late rows used: :func:`_late_image_gone`).
    Days in ``skip`` (ingested again already) are left alone. Each day rewritten does its whole look at other days
    too (:func:`_again`, :func:`_drain`), each day at most once.

    Exact: a later export changes an earlier day's output only by resolving the uid that one of its
    ``unknown_image_reference`` rows names (the first unknown image of the row), or by no longer holding
    an image one of its accepted rows names or one that a quarantined ranking names before its first unknown
    image (the detail would name that one: review rev24i), so every other day is already what a build over all
    days gives. Returns the new reports by day.
    """
    if not config.late_image_days:
        return {}
    days = home.raw_days() if raw_days is None else raw_days
    first = shift_day(parse_day(day), -config.late_image_days).isoformat()
    done, own = _written(skip)
    refreshed: dict[str, IngestReport] = {}
    for earlier in (d for d in days if first <= d < day):
        if earlier in done:
            continue
        path = home.partition_file("quarantine", earlier)
        if not path.is_file():
            continue   # never ingested: its own ingest will look ahead
        try:
            waiting: set[str] | None = read_waiting(path)
        except Unreadable:
            waiting = None   # unreadable partition: ingesting it again repairs it
        if waiting is None or (waiting and raw_image_uids(home, day, waiting, config)) \
                or _late_image_gone(home, earlier, day, days, config):
            refreshed.update(_rewrite(home, earlier, config, day, done))
    if own:
        refreshed.update(_drain(home, config, days, done))
    return dict(sorted(refreshed.items()))


def refresh_later_days(home: DataHome, day: str, config: IngestConfig, raw_days: Sequence[str] | None = None,
                       skip: Collection[str] = ()) -> dict[str, IngestReport]:
    """Ingest again each ingested day after ``day`` whose quarantine names, as the missing image of a ranking
    or download, a uid that ``day``'s raw images export holds: ``day`` landed (a backfill, an export retried
    the next night) or was delivered again after those days were built, and a build from scratch would
    have found the image in it (the reference check looks at every earlier day). Review rev23a: the later
    days kept those rows quarantined for good.

    Bounded: only the later days whose quarantine waits for some image are read (``WaitingIndex``: the others
    cost one ``stat`` each), and their uids are looked up in ``day``'s uid index together, one read of it for
    all of them (review rev23g: one read per later day made re-ingesting a year read indexes ~days^2/2 times);
    more than ``LOOKUP_BATCH`` waiting uids in all are looked up a batch at a time, so memory stays bounded.
    Days in ``skip`` are left alone, and so are the days that have not begun (:func:`day_begun`: an export error,
    never ingested; review rev33e: it raised inside this day's ingest). Each day rewritten does its whole look at other days too (:func:`_again`,
    :func:`_drain`), each day at most once, so a day rewritten from an export delivered again since its own run
    resolves the later days waiting for an image it brings now (review rev24i). Returns the new reports by day.
    """
    days = home.raw_days() if raw_days is None else raw_days
    done, own = _written(skip)
    later = [d for d in days if d > day and d not in done and day_begun(d)]   # a day not begun: left alone
    if not later:
        return {}
    index = WaitingIndex(home)
    refreshed: dict[str, IngestReport] = {}
    batch: list[tuple[str, set[str]]] = []
    size = 0

    def look_up() -> None:
        wanted = set().union(*(uids for _, uids in batch))
        found = raw_image_uids(home, day, wanted, config) if wanted else set()
        for other, uids in batch:
            if not uids.isdisjoint(found) and other not in done:
                refreshed.update(_rewrite(home, other, config, day, done))
        batch.clear()

    try:
        for other in later:
            if other in done:
                continue
            try:
                waiting = index.uids(other)
            except Unreadable:
                refreshed.update(_rewrite(home, other, config, day, done))   # ingesting it again repairs it
                continue
            if waiting:
                batch.append((other, waiting))
                size += len(waiting)
                if size >= LOOKUP_BATCH:
                    look_up()
                    size = 0
        if batch:
            look_up()
    finally:
        index.save()
    refreshed.update(_refresh_users_of(home, day, config, days, [d for d in later if d not in done], done))
    if own:
        refreshed.update(_drain(home, config, days, done))
    return dict(sorted(refreshed.items()))


def _refresh_users_of(home: DataHome, day: str, config: IngestConfig, days: Sequence[str],
                      later: Sequence[str], done: _Written) -> dict[str, IngestReport]:
    """Ingest again each of the ingested days ``later`` whose rows resolve otherwise now that ``day`` was ingested
    (:mod:`pipelines.ingest.earlierimages`: an image taken from ``day``'s export that no export within reach holds
    any more, one taken late that ``day`` now holds, ...). Each rewrite does that day's whole look too (its export
    may have been delivered again since its own run), once per day of ``done``."""
    index = earlierimages.EarlierImages(home, days, config)
    try:
        stale = index.changes(day, later)
    finally:
        index.save()
    refreshed: dict[str, IngestReport] = {}
    for other in stale:
        if other not in done:
            refreshed.update(_rewrite(home, other, config, day, done))
    return refreshed


LOOKUP_BATCH = 200_000   # waiting uids of later days looked up in one read of a day's uid index


def _late_image_gone(home: DataHome, earlier: str, day: str, days: Sequence[str], config: IngestConfig) -> bool:
    """Whether ``earlier`` (ingested) accepted a row through a later export and one of its accepted rows now
    names an image that no raw images export of ``earlier``'s reach holds (its own, any earlier day's, and the
    ``late_image_days`` after it): ``day`` was delivered again without it (review rev21a: the earlier day
    kept the row, a build from scratch quarantines it); likewise an image one of its quarantined rankings names
    before its first unknown image (the detail would name that one: review rev24i). The accepted rows are looked
    at only in days with ``accepted_late_image`` rows, and the uids are looked up in the days' uid indexes
    (``raw_image_uids``), ``day`` first."""
    try:
        files = pq.read_table(home.partition_file("ingest_files", earlier), columns=["accepted_late_image"])
        named: set[str] = earlierimages.quarantined_first_uids(home, earlier, config)
        if pc.sum(files.column(0)).as_py():
            for table, fields in REFERENCE_FIELDS.items():
                rows = pq.read_table(home.partition_file(table, earlier), columns=list(fields))
                for column in rows.columns:
                    named.update(pc.unique(column.drop_null()).to_pylist())
    except (OSError, pa.ArrowException, earlierimages.Stale):
        return True   # unreadable partitions: ingesting the day again repairs them
    last = late_window_end(earlier, config.late_image_days)
    days = reference_days(home, days)   # a pruned day gives what the warehouse keeps of it (review rev29a)
    for other in [day] + sorted((d for d in days if d <= last and d != day), reverse=True):
        if not named:
            return False
        named -= raw_image_uids(home, other, named, config)
    return bool(named)
