"""The one shared helper for SQL stages: register views, run a ``sql/*.sql`` file, cast, write."""
from __future__ import annotations

import glob
import os
import re
from importlib import resources
from pathlib import Path
from typing import Collection, Mapping, Sequence

import duckdb
import pyarrow as pa

from formats.duck import NO_HIVE, OFFLINE, offline_connection  # noqa: F401 - re-exported: the pipeline's name for it
from formats.files import cast_to_schema, write_parquet_atomic
from schemas import get_schema


def sql_text(name: str) -> str:
    """Text of ``sql/<name>.sql`` (``queries/x`` for a named query), from the installed package."""
    resource = resources.files("sql").joinpath(*f"{name}.sql".split("/"))
    if not resource.is_file():
        raise FileNotFoundError(f"no SQL file sql/{name}.sql in the installed package")
    return resource.read_text(encoding="utf-8")


def connect(views: Mapping[str, str | Path | Sequence[Path] | pa.Table], *, threads: int | None = None,
            uniform: Collection[str] = (), required: Collection[str] = ()) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per entry: a Parquet path/glob, a list of files or an Arrow table (see
    :func:`register_views`)."""
    con = offline_connection()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    register_views(con, views, uniform, required)
    return con


def literal_glob(path: str | os.PathLike) -> str:
    """``path`` as a glob pattern that matches exactly that path, in Python's ``glob`` and DuckDB's alike:
    ``*``, ``?`` and ``[`` become ``[*]``, ``[?]``, ``[[]`` (:func:`glob.escape`). Every path put into a glob
    goes through it: a data home at ``/data/pickapic[1]/home`` or ``/mnt/disk [ssd]`` would otherwise be a
    character class there, matching no file (review rev24c)."""
    return glob.escape(os.fspath(path))


def glob_under(folder: str | os.PathLike, pattern: str) -> str:
    """A glob of ``pattern`` (``**/*.parquet``, ``*/pickapic-*.parquet``) under the literal ``folder``."""
    return f"{literal_glob(folder)}/{pattern}"


class NoFilesMatch(FileNotFoundError):
    """A view that must read files (``required``) whose path or glob matches none."""


def register_views(con: duckdb.DuckDBPyConnection, views: Mapping[str, str | Path | Sequence[Path] | pa.Table],
                   uniform: Collection[str] = (), required: Collection[str] = ()) -> None:
    """Register each view: an Arrow table as it is; a :class:`~pathlib.Path` is one file (its name taken
    literally, whatever characters it holds); a list (or tuple) of paths is those files, each taken literally
    (a daily table's files: :meth:`formats.home.DataHome.table_files`, review rev31k); a ``str`` is a glob
    pattern whose literal parts are escaped (:func:`glob_under`, :func:`literal_glob`), or a file's name where
    such a file exists. A path is read with ``read_parquet``, never guessing hive partitions from folder names
    (:data:`formats.duck.NO_HIVE`: a home below ``/x/split=train/`` read every row's ``split`` as train, review
    rev32b); a daily table's ``dt`` is its files' own column.

    Where nothing matches, a view named in ``required`` is an error (:class:`NoFilesMatch`): a version's
    sidecars or prompt counts that match no file must never read as an empty table, which every contract
    rule over it passes (review rev24c). Any other view is then the dataset's empty schema (a warehouse
    table not written yet).

    A glob's files are read by column name (``union_by_name``: days written before a column was
    added read as null there), except for the views named in ``uniform``, whose files all have one
    schema (a published version's sidecars): to build the union DuckDB reads every file's footer
    before the query, which for a year of sidecars (23,000 files) took 2 GB of memory
    (``benchmarks/sidecar_scan.py``). There, a file with another schema fails the query.
    """
    for name, source in views.items():
        if isinstance(source, pa.Table):
            con.register(name, source)
            continue
        if isinstance(source, (list, tuple)):           # files just listed: an empty list matches nothing
            patterns = [literal_glob(path) for path in source]
            empty, shown = not patterns, "its list of files (empty)"
        else:
            patterns = [_pattern(source)]
            empty = _matches_nothing(patterns[0])
            shown = re.sub(r"\[([*?\[])\]", r"\1", patterns[0])      # the path as the user knows it
        if empty:
            if name in required:
                raise NoFilesMatch(f"no file matches {shown} (the {name} table): it must have files, and is never "
                                   f"read as an empty table")
            con.register(name, get_schema(name).empty_table() if _known(name) else pa.table({}))
            continue
        listed = ", ".join("'" + pattern.replace("'", "''") + "'" for pattern in patterns)
        files = f"[{listed}]" if isinstance(source, (list, tuple)) else listed
        union = "" if name in uniform else ", union_by_name = true"
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({files}{union}, {NO_HIVE})")


def _pattern(source: str | os.PathLike) -> str:
    """The glob pattern DuckDB and Python are given for a view source: a Path (or a str naming an existing
    file) escaped to match itself only, any other str as it is."""
    if not isinstance(source, str) or os.path.isfile(source):
        return literal_glob(source)
    return source


def _known(name: str) -> bool:
    try:
        get_schema(name)
        return True
    except KeyError:
        return False


def _matches_nothing(source: str) -> bool:
    return not glob.glob(source, recursive=True)


def run_sql(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object] | None = None) -> pa.Table:
    """Run ``sql/<name>.sql`` with named ``$params`` and return an Arrow table."""
    text = sql_text(name)
    try:
        return con.sql(text, params=dict(params or {})).to_arrow_table()
    except duckdb.Error as exc:
        raise RuntimeError(f"sql/{name}.sql failed: {exc}") from exc


def run_to_parquet(
    con: duckdb.DuckDBPyConnection,
    name: str,
    dataset: str,
    output: Path,
    params: Mapping[str, object] | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
) -> pa.Table:
    """Run ``sql/<name>.sql``, cast to ``dataset``'s schema (plus the key-value ``metadata``), write ``output``
    atomically."""
    table = cast_to_schema(run_sql(con, name, params), get_schema(dataset))
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    write_parquet_atomic(table, output)
    return table
