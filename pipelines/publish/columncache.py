"""The version-wide contract rules that read a few sidecar columns, over those columns kept per sidecar.

``shard_samples.key_unique`` needs every key of the version and ``prompt_counts.counts_match_samples``
every sample's (split, prompt_key): neither is a sum over sidecars, so the count cache
(:mod:`pipelines.publish.rulecache`) cannot answer them, and they read every sidecar each night. But
they read only those three columns. The publish keeps them, for every sidecar of the last version
checked, in ``HOME/cache/contract_columns/shard_samples.parquet``: one row per sample, its sidecar's
identity (the count cache's: sha256 in the manifest, inode, size, mtime) and ``key``, ``split``,
``prompt_key``, in the view's order (sidecars in path order, rows in file order). A night takes the
rows of the sidecars whose identity is recorded, reads the three columns of the others (its own), and
answers those rules over a view of this narrow table (:func:`data_contracts.engine.reads_only_columns`
says which rules may be: no ``*``, no reader's columns, nothing whose value depends on the rows' order;
a rule that does not bind there reads every sidecar as before). Then the cache is rewritten with
exactly this version's sidecars.

The narrow view must read what the whole view reads. DuckDB reads a version's sidecars as the first
file's schema, casting a column of another type and failing on a missing one, so the narrow view is
used only when every sidecar has one Parquet schema: the cache records the schema its sidecars share
(a sidecar's schema is a function of its bytes), and each new sidecar's footer is compared with it.
The new sidecars are read by DuckDB itself (its decoding and UTF-8 checks), and the columns must come
back as strings (VARCHAR in both views).

Trust and fallbacks are the count cache's: a cache that is a symlink or a folder, fails its page
checksums, has another layout or records a sidecar twice counts as empty (every sidecar's columns are
read once more); a version whose view's files are not its manifest's sidecars, or that holds one
sidecar identity twice, is answered by the whole view, with a note; a cache that cannot be written
costs only the next night. The cache is outside the version: deleting it changes no published byte.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_contracts.engine import Rule, fused_query, load_contract, reads_only_columns, row_condition
from pipelines.publish.rulecache import FILE_COLUMN, read_trusted, write_trusted
from pipelines.sqlrun import NO_HIVE, connect, literal_glob, offline_connection

DATASET = "shard_samples"
COLUMNS = ("key", "split", "prompt_key")        # what key_unique and counts_match_samples read
SIDECAR_COLUMN = "sidecar"                      # each row's sidecar identity (dictionary-encoded)
SCHEMA_KEY = b"pickapic.sidecar_schema"         # the cache's metadata: the schema its sidecars share


@dataclass
class ColumnValues:
    """What :func:`version_values` did: dataset -> rule name -> value for the rules answered from the
    narrow view, sidecars whose columns were read and those taken from the cache, and a note when
    something fell short (why every sidecar was read, a rule that did not bind, the cache not written)."""

    values: dict[str, dict[str, object]] = field(default_factory=dict)
    scanned: int = 0
    cached: int = 0
    note: str = ""

    @property
    def rules(self) -> list[str]:
        return [f"{dataset}.{name}" for dataset, names in self.values.items() for name in names]


@dataclass
class _Cached:
    schema: bytes                          # the Parquet schema every recorded sidecar has
    runs: dict[str, tuple[int, int]]       # sidecar identity -> its rows [start, stop) in data
    data: pa.Table                         # key, split, prompt_key


def cache_file(cache_root: Path) -> Path:
    """Where the columns are kept under a data home's ``cache/`` folder."""
    return cache_root / "contract_columns" / f"{DATASET}.parquet"


def narrow_rules(views: Mapping[str, object], skip: set[str] = frozenset()) -> list[Rule]:
    """The rules of the views' contracts (but ``skip``: ``dataset.rule`` names answered already) that
    may be answered from a ``shard_samples`` view holding only :data:`COLUMNS`."""
    tables = frozenset(views)
    return [rule for dataset in views for rule in load_contract(dataset).rules
            if f"{dataset}.{rule.name}" not in skip and reads_only_columns(rule, DATASET, frozenset(COLUMNS), tables)]


def version_values(sidecars: dict[Path, str] | None, views: Mapping[str, str], cache: Path,
                   skip: set[str] = frozenset()) -> ColumnValues:
    """:func:`narrow_values` over a version's sidecars (:func:`pipelines.publish.rulecache.version_sidecars`),
    or nothing (the whole view answers) and a note where that could not name them (None)."""
    rules = narrow_rules(views, skip)
    if not rules:
        return ColumnValues()
    if sidecars is None:
        return ColumnValues(note="every sidecar read instead: the view's files are not the manifest's sidecars")
    return narrow_values(sidecars, cache, {name: glob for name, glob in views.items() if name != DATASET}, rules)


def narrow_values(sidecars: dict[Path, str], cache: Path, others: Mapping[str, str], rules: list[Rule]) -> ColumnValues:
    """Each rule's value over the other views (``others``, registered as the gate does) and a
    ``shard_samples`` view of :data:`COLUMNS` of ``sidecars`` (path -> identity, in the view's order)
    (:func:`narrow_table`). A rule that fails there (a column the narrow view lacks) is left out: the
    whole view answers it, and the note names it."""
    if not sidecars or not rules:
        return ColumnValues()
    table, scanned, note = narrow_table(sidecars, cache)
    if table is None:
        return ColumnValues(note=note)
    out = ColumnValues(scanned=scanned, cached=len(sidecars) - scanned)
    notes = [note] if note else []
    con = connect({**others, DATASET: table}, uniform=others, required=others)
    try:
        for rule in rules:
            # a row count's value is its FILTER form, as engine.evaluate gives it
            query = fused_query([rule]) if row_condition(rule) is not None else rule.sql()
            try:
                row = con.execute(query).fetchone()
            except duckdb.Error as exc:
                notes.append(f"{rule.dataset}.{rule.name} read every sidecar: {type(exc).__name__}")
                continue
            out.values.setdefault(rule.dataset, {})[rule.name] = row[0] if row else None
    finally:
        con.close()
    out.note = "; ".join(notes)
    return out


def narrow_table(sidecars: dict[Path, str], cache: Path) -> tuple[pa.Table | None, int, str]:
    """:data:`COLUMNS` of every sidecar, in the view's order: the recorded rows of those whose identity
    the cache holds, the others read. Then the cache is rewritten with exactly these sidecars.
    Returns the table (None: the whole view must answer), the sidecars read and a note."""
    ids = list(sidecars.values())
    if len(set(ids)) != len(ids):
        return None, 0, "every sidecar read instead: two of the view's files have one identity"
    known = _read(cache)
    paths = list(sidecars)
    fresh = [path for path in paths if known is None or sidecars[path] not in known.runs]
    try:
        schemas = {_schema_of(path) for path in fresh}
        if known is not None and len(fresh) < len(paths):
            schemas.add(known.schema)
        if len(schemas) > 1:
            return None, 0, "every sidecar read instead: the sidecars have more than one schema"
        read, at = _read_fresh(fresh)
    except (duckdb.Error, OSError, pa.ArrowException, ValueError) as exc:
        return None, 0, f"every sidecar read instead: {type(exc).__name__}: {exc}"
    # each sidecar's rows: (source, start, stop), the recorded table or the one just read; the
    # sidecars kept from the last version are mostly neighbours there too, so their rows are joined
    # into few slices and the table is those slices (no copy)
    spans = [(1, *at[path]) if path in at else (0, *known.runs[sidecars[path]]) for path in paths]
    lengths = np.array([stop - start for _, start, stop in spans], dtype=np.int64)
    slices: list[list[int]] = []
    for source, start, stop in spans:
        if slices and slices[-1][0] == source and slices[-1][2] == start:
            slices[-1][2] = stop
        elif stop > start:
            slices.append([source, start, stop])
    sources = (known.data if known is not None else _empty(), read)
    table = pa.concat_tables([_empty()] + [sources[source].slice(start, stop - start) for source, start, stop in slices])
    note = ""
    try:
        _write(cache, table, ids, lengths, schemas.pop() if schemas else b"")
    except OSError as exc:          # a folder in its place, a full disk: only the next night pays
        note = f"columns not recorded: {exc}"
    return table, len(fresh), note


def _schema_of(path: Path) -> bytes:
    """A sidecar's Parquet schema as DuckDB reads it: its columns, physical and logical types and
    repetition, and the Arrow schema pyarrow stored beside them."""
    metadata = pq.read_metadata(path)
    tree = str(metadata.schema).partition("\n")[2]       # the first line names the Python object
    arrow = (metadata.metadata or {}).get(b"ARROW:schema", b"")
    return hashlib.sha256(tree.encode("utf-8") + b"\0" + arrow).hexdigest().encode()


def _read_fresh(files: list[Path]) -> tuple[pa.Table, dict[Path, tuple[int, int]]]:
    """:data:`COLUMNS` of ``files`` read by DuckDB as one schema (as the view reads them), in file
    order then row order, and each file's rows [start, stop) in it. A file the result does not name
    must have no rows (its footer says so); the columns must be strings."""
    if not files:
        return _empty(), {}
    con = offline_connection()
    try:
        selected = ", ".join(f'"{c}"' for c in COLUMNS)
        table = con.sql(
            f"SELECT {FILE_COLUMN}, {selected} FROM read_parquet($files, filename = '{FILE_COLUMN}', "
            f"file_row_number = true, {NO_HIVE}) ORDER BY {FILE_COLUMN}, file_row_number",
            params={"files": [literal_glob(f) for f in files]}).to_arrow_table()   # names, not globs
    finally:
        con.close()
    if any(not pa.types.is_string(table.schema.field(c).type) for c in COLUMNS):
        raise ValueError(f"the sidecars' {', '.join(COLUMNS)} are not all strings: {table.schema}")
    runs = pc.run_end_encode(table.column(FILE_COLUMN).combine_chunks()) if table.num_rows else None
    names = runs.values.to_pylist() if runs is not None else []
    stops = runs.run_ends.to_numpy().tolist() if runs is not None else []
    given = {str(f): f for f in files}
    if len(set(names)) != len(names) or set(names) - set(given):
        raise ValueError("the read named files it was not given, or one file twice")
    at = {given[name]: (start, stop) for name, start, stop in zip(names, [0] + stops[:-1], stops)}
    for path in files:
        if path not in at:
            if pq.read_metadata(path).num_rows != 0:
                raise ValueError(f"the read returned no rows for {path}, which has rows")
            at[path] = (0, 0)
    return table.select(list(COLUMNS)), at


def _empty() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in COLUMNS})


def _read(cache: Path) -> _Cached | None:
    """The recorded columns, or None if there are none or the file is no trustworthy cache: a
    symlink, a folder, failing page checksums, not parsing (:func:`read_trusted`), another layout,
    no recorded schema, a row without its sidecar, a sidecar whose rows are not together (recorded
    twice)."""
    table = read_trusted(cache, use_threads=True, read_dictionary=[SIDECAR_COLUMN])
    if table is None:
        return None
    try:
        schema = (table.schema.metadata or {}).get(SCHEMA_KEY)
        if (table.schema.names != [SIDECAR_COLUMN, *COLUMNS] or not schema
                or table.schema.field(SIDECAR_COLUMN).type != pa.dictionary(pa.int32(), pa.string())
                or any(table.schema.field(c).type != pa.string() for c in COLUMNS)):
            return None
        table = table.unify_dictionaries().combine_chunks()
        column = table.column(SIDECAR_COLUMN)
        if column.null_count:
            return None
        if not table.num_rows:
            return _Cached(schema, {}, table.select(list(COLUMNS)))
        sidecar = column.chunk(0)
        indices = sidecar.indices.to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(np.diff(indices)) + 1])
        stops = np.concatenate([starts[1:], [len(indices)]])
        names = sidecar.dictionary.take(pa.array(indices[starts]))
        if names.null_count or pc.count_distinct(names).as_py() != len(names):
            return None
        runs = dict(zip(names.to_pylist(), zip(starts.tolist(), stops.tolist())))
        return _Cached(schema, runs, table.select(list(COLUMNS)))
    except Exception:   # noqa: BLE001 - whatever a damaged file raises, it is no cache
        return None


def _write(cache: Path, table: pa.Table, ids: list[str], lengths: np.ndarray, schema: bytes) -> None:
    """Replace the cache with ``table``'s rows, each with its sidecar's identity (``lengths[i]`` rows
    of ``ids[i]``, in order; a sidecar without rows has none, and is read again next time)."""
    sidecar = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(np.arange(len(ids), dtype=np.int32), lengths)), pa.array(ids, pa.string()))
    out = pa.table({SIDECAR_COLUMN: sidecar, **{c: table.column(c) for c in COLUMNS}})
    write_trusted(cache, out.replace_schema_metadata({SCHEMA_KEY: schema}))
