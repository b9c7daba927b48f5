"""Row-local contract rules over a version's sidecars, counted once per sidecar file.

Most ``shard_samples`` rules count the rows that break a condition on the row alone
(:func:`data_contracts.engine.row_local`). Their value over a version is the sum of their values
over its sidecars, and a sidecar's value depends on its bytes alone. A nightly version shares all
but the night's new sidecars with the version before it (hard links: the same files), so the
publish keeps each sidecar's counts and only the sidecars without recorded counts are read for
those rules: one night's, instead of a year's. The rules that need the whole version
(``key_unique``, and the others that are not row-local) still read every sidecar.

The counts live in ``HOME/cache/contract_counts/shard_samples.parquet``, one row per sidecar and
its rows and a count column per rule (``rule_<rule key>``), written with page checksums:
- a sidecar is its sha256 in the version's manifest together with its file's inode, size and
  modification time, so a file written again (another inode) or changed in place (another mtime
  or size) is read again;
- the rule key is the sha256 of the DuckDB version, the session's ``TimeZone`` and ``Calendar``,
  the dataset and the rule's condition, so a rule whose text changes, another DuckDB or another
  time zone counts afresh.
The file holds the sidecars of the last version checked (rewritten, pruned, after each check). It
is a cache: deleting it only costs time (every sidecar is read once more). A cache that cannot be
read or trusted (failing its checksums, a symlink, another layout, a count below 0 or above the
sidecar's rows, a sidecar recorded twice) counts as empty; a missing count only means that sidecar
is read again. One that cannot be written (a folder in its place, a full disk) is noted and skipped.

Trust: what the cache cannot see is a sidecar's bytes changing with its inode, size and mtime
kept (bit rot, or a writer that restores the mtime); the gate then judges the recorded counts.
That is the trust the version's manifest already gives a reused shard (checked by size, by
content only with ``publish.verify_checksums``), and ``verify_checksums`` re-reads every sidecar
against its sha256 before the gate.
"""
from __future__ import annotations

import glob
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_contracts.engine import Rule, filter_counts, load_contract, row_condition, row_local
from formats.dataset import sidecar_glob
from formats.files import PARQUET_OPTIONS, atomic_path, is_real_folder, make_real_folder
from pipelines.publish.reuse import read_manifest
from pipelines.sqlrun import NO_HIVE, literal_glob, offline_connection

DATASET = "shard_samples"
ROWS_COLUMN = "rows"                      # a sidecar's rows, the bound of every count
RULE_PREFIX = "rule_"                     # a rule's column in the cache: rule_<rule key>
FILE_COLUMN = "_contract_sidecar_file"   # the file name column of the per-file scan (no sidecar column has it)


@dataclass
class SidecarCounts:
    """What :func:`row_local_values` did: rule name -> value over the version, sidecars read for
    those rules, sidecars whose counts came from the cache, and a note when something fell short:
    why every sidecar was read instead (no values), or why the counts were not recorded."""

    values: dict[str, float]
    scanned: int = 0
    cached: int = 0
    note: str = ""


def session_settings() -> str:
    """The DuckDB settings a row's verdict may still meet (an implicit cast to a time zone type)."""
    con = offline_connection()
    try:
        return "\0".join(str(v) for v in con.execute(
            "SELECT current_setting('TimeZone'), current_setting('Calendar')").fetchone())
    finally:
        con.close()


def rule_key(rule: Rule, settings: str | None = None) -> str:
    """The cache key of a row-local rule's counts: DuckDB's version and time settings, the dataset,
    the condition."""
    settings = session_settings() if settings is None else settings
    text = f"{duckdb.__version__}\0{settings}\0{rule.dataset}\0{row_condition(rule)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_file(cache_root: Path) -> Path:
    """Where the counts are kept under a data home's ``cache/`` folder."""
    return cache_root / "contract_counts" / f"{DATASET}.parquet"


def version_sidecars(version: Path) -> dict[Path, str] | None:
    """Every file the version's ``shard_samples`` view reads (DuckDB's own glob of it), each with its
    identity: its sha256 in the version's manifest, inode, size and mtime. None if the view reads a
    file the manifest does not list as that version's, or if DuckDB's glob and Python's (which
    :func:`pipelines.sqlrun.register_views` asks whether anything matches) disagree."""
    files = read_manifest(version).get("files")
    if not isinstance(files, dict):
        return None
    con = offline_connection()
    try:
        names = sorted(row[0] for row in con.execute("SELECT file FROM glob(?)", [sidecar_glob(version)]).fetchall())
    finally:
        con.close()
    if set(names) != set(glob.glob(sidecar_glob(version))):
        return None      # the view decides "no files" by Python's glob, which skips hidden folders
    out = {}
    for name in names:
        path = Path(name)
        try:
            rel = path.relative_to(version).as_posix()
            info = os.lstat(path)
        except (ValueError, OSError):
            return None
        if rel not in files or not stat.S_ISREG(info.st_mode):
            return None
        out[path] = f"{files[rel]['sha256']}/{info.st_ino}/{info.st_size}/{info.st_mtime_ns}"
    return out


def version_counts(sidecars: dict[Path, str] | None, cache: Path) -> SidecarCounts:
    """:func:`row_local_values` over a version's sidecars (:func:`version_sidecars`), or, where that
    could not name them (None), nothing (every sidecar is read) and a note saying why."""
    if sidecars is None:
        return SidecarCounts({}, note="every sidecar read instead: the view's files are not the manifest's sidecars")
    return row_local_values(sidecars, cache)


def row_local_values(sidecars: dict[Path, str], cache: Path, rules: list[Rule] | None = None) -> SidecarCounts:
    """The value over ``sidecars`` (path -> identity) of every row-local ``shard_samples`` rule.

    Sidecars with recorded counts for every such rule are not read; the others are read in one scan
    (their rows and a count per rule) and recorded. The cache is then rewritten with exactly the
    counts of ``sidecars``; if it cannot be written, the values still hold and ``note`` says why. If
    the scan fails (a sidecar that lacks a column, say), nothing is returned and nothing recorded:
    the caller runs those rules over the whole view, which reports the error against its rule. The
    cache is one row per sidecar (its rows, then a count column per rule key), and the lookups are
    Arrow arrays: a year of sidecars (23,000, 8 rules) is under a MB on disk.
    """
    rules = [r for r in (load_contract(DATASET).rules if rules is None else rules) if row_local(r)]
    if not rules or not sidecars:
        return SidecarCounts({})
    settings = session_settings()
    columns = [f"{RULE_PREFIX}{rule_key(r, settings)}" for r in rules]
    paths = list(sidecars)
    ids = pa.array([sidecars[p] for p in paths], pa.string())
    known = _read(cache)
    at = pc.index_in(ids, value_set=known.column("sidecar"))
    counts = [pc.take(known.column(c), at) if c in known.column_names else pa.nulls(len(paths), pa.int64())
              for c in [ROWS_COLUMN] + columns]   # each sidecar's rows and recorded counts, null if none
    missing = np.zeros(len(paths), dtype=bool)
    for column in counts:
        missing |= column.is_null().to_numpy(zero_copy_only=False)
    fresh = [paths[i] for i in np.flatnonzero(missing)]
    have = pa.array(~missing)
    kept = [pc.filter(column, have).cast(pa.int64()) for column in counts]
    totals = [sum(column.to_pylist()) for column in kept[1:]]     # Python integers: no wrap-around
    parts = [pa.table({"sidecar": pc.filter(ids, have), **dict(zip([ROWS_COLUMN] + columns, kept))})]
    if fresh:
        try:
            scanned = _scan(fresh, rules)
        except (duckdb.Error, OSError, pa.ArrowException, ValueError) as exc:
            return SidecarCounts({}, note=f"every sidecar read instead: {type(exc).__name__}: {exc}")
        for i in range(len(rules)):
            totals[i] += sum(row[1 + i] for row in scanned)
        parts.append(pa.table({"sidecar": pa.array([sidecars[path] for path in fresh], pa.string()),
                               **{c: pa.array([row[i] for row in scanned], pa.int64())
                                  for i, c in enumerate([ROWS_COLUMN] + columns)}}))
    note = ""
    try:
        _write(cache, pa.concat_tables(parts))
    except OSError as exc:              # a folder in its place, a full disk: only the next night pays
        note = f"counts not recorded: {exc}"
    return SidecarCounts({r.name: float(t) for r, t in zip(rules, totals)}, scanned=len(fresh),
                         cached=len(paths) - len(fresh), note=note)


def _scan(files: list[Path], rules: list[Rule]) -> list[list[int]]:
    """Per file of ``files`` (read as one schema, as the version's view), its rows and each rule's count.

    A file the result does not name must have no rows (its Parquet footer says so): anything else
    (DuckDB naming the files otherwise) is an error, never a count of 0.
    """
    counts = f"count(*),\n{filter_counts(rules)}"
    con = offline_connection()
    try:
        rows = con.execute(
            f"SELECT {FILE_COLUMN},\n{counts}\nFROM read_parquet($files, filename = '{FILE_COLUMN}', {NO_HIVE}) "
            f"AS {DATASET}\n"
            f"GROUP BY {FILE_COLUMN}", {"files": [literal_glob(f) for f in files]}).fetchall()   # names, not globs
    finally:
        con.close()
    per_file = {row[0]: [int(v) for v in row[1:]] for row in rows}
    if set(per_file) - {str(f) for f in files}:
        raise ValueError(f"the scan named files it was not given: {sorted(set(per_file) - {str(f) for f in files})[:3]}")
    out = []
    for path in files:
        if str(path) not in per_file and pq.read_metadata(path).num_rows != 0:
            raise ValueError(f"the scan returned no counts for {path}, which has rows")
        out.append(per_file.get(str(path), [0] * (1 + len(rules))))
    return out


def _read(cache: Path) -> pa.Table:
    """The recorded counts: ``sidecar``, ``rows`` (the sidecar's rows) and an int64 column per rule
    key. Empty if there are none or the file is not a trustworthy cache (:func:`read_trusted`, then
    another layout, a missing sidecar or row count, a negative count or one above the sidecar's rows,
    a sidecar recorded twice). (A missing rule count only means that sidecar is read again.)"""
    empty = pa.table({"sidecar": pa.array([], pa.string())})
    table = read_trusted(cache)
    if table is None:
        return empty
    try:
        names = table.schema.names
        if (names[:2] != ["sidecar", ROWS_COLUMN] or not pa.types.is_string(table.schema.field("sidecar").type)
                or len(set(names)) != len(names)
                or any(not pa.types.is_int64(f.type) for f in list(table.schema)[1:])
                or any(not n.startswith(RULE_PREFIX) for n in names[2:])):
            return empty
        sidecar, rows = table.column("sidecar"), table.column(ROWS_COLUMN)
        if sidecar.null_count or rows.null_count or pc.count_distinct(sidecar).as_py() != table.num_rows:
            return empty
        if table.num_rows and pc.min(rows).as_py() < 0:
            return empty
        for column in table.columns[2:]:
            if pc.any(pc.or_kleene(pc.less(column, 0), pc.greater(column, rows))).as_py():
                return empty
    except Exception:   # noqa: BLE001 - whatever a damaged file raises, it is no cache
        return empty
    return table


def read_trusted(cache: Path, use_threads: bool = False, **options) -> pa.Table | None:
    """A cache file's table (``options`` go to ``pq.read_table``), or None where there is none or it
    cannot be trusted as bytes: a symlink, a folder, bytes that fail their page checksums or do not
    parse. Never raises: whatever a damaged file raises, it is no cache. The caller checks the layout."""
    try:
        if not is_real_folder(cache.parent) or not stat.S_ISREG(os.lstat(cache).st_mode):
            return None
        return pq.read_table(cache, use_threads=use_threads, page_checksum_verification=True, **options)
    except Exception:   # noqa: BLE001
        return None


def _write(cache: Path, table: pa.Table) -> None:
    """Replace the cache with ``table``, sorted by sidecar (:func:`write_trusted`)."""
    write_trusted(cache, table.sort_by([("sidecar", "ascending")]))


def write_trusted(cache: Path, table: pa.Table) -> None:
    """Replace a cache file with ``table``, with page checksums (atomically; the folder is made if
    need be). Raises OSError when it cannot be written, and when the cache's own folder (say
    ``cache/contract_counts``) is a symbolic link or not a folder: nothing is written through a link
    planted there (a file in the link's target would be replaced), and :func:`read_trusted` reads
    nothing through one."""
    cache.parent.parent.mkdir(parents=True, exist_ok=True)
    make_real_folder(cache.parent, "the cache")
    with atomic_path(cache) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS, write_page_checksum=True)
