"""``pickapic query``: read-only DuckDB over one published version.

Views (all over the chosen version only; ``latest`` is resolved once, at start):

- ``pairs``: every sidecar (one row per sample: key, shard, member offsets, every pair column,
  ``split``) with its ``num_example_per_prompt`` from ``<split>/prompt_counts.parquet``, ``shards``: one row per tar shard, ``images``: per-image features (no personal
  data), ``decisions``: keep/drop decisions, ``quarantine``: rejected raw lines (no raw text),
  ``splits_summary``: one row per split.

The connection can read only the version's own directory (``allowed_directories`` +
``enable_external_access = false`` + ``lock_configuration``) and only ``SELECT`` statements
(``DESCRIBE``, ``SUMMARIZE``, ``FROM ...`` included) and ``EXPLAIN [ANALYZE]`` of a ``SELECT`` run
(``EXPLAIN ANALYZE`` executes what it explains), and the parsed tree of the statement may hold only
SELECT nodes (DuckDB runs ``WITH x AS (COPY ... TO 'f') SELECT ...`` although it calls it a SELECT),
so a query can neither write files nor read anything else. DuckDB's spill folder is a private
temporary folder made for the query (by default DuckDB uses ``.tmp`` in the working directory and lets
queries read it). Every query runs under a time limit, a memory limit and a spill limit
(:class:`QueryLimits`), and results stream: a table shows the first 1,000 rows and counts the rest,
other formats write batch by batch. ``--output`` must be a new path or a regular file outside every
data home (see :func:`formats.outputs.open_output_file`).

Plain DuckDB, no pipeline installed::

    SELECT split, count(*) FROM read_parquet('HOME/datasets/pickapic/latest/*/pickapic-*.parquet') GROUP BY split;
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, TextIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from formats.dataset import PROMPT_COUNTS_FILE, prompt_counts_glob, resolve_version, sidecar_glob
from formats.files import PARQUET_OPTIONS
from formats.home import DataHome
from formats.outputs import check_output_file, open_output_file
from pipelines.sqlrun import sql_text

FORMATS = ("table", "csv", "json", "parquet")
ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")
META_VIEWS = ("shards", "images", "decisions", "quarantine", "splits_summary")
TABLE_MAX_ROWS = 1000
BATCH_ROWS = 65_536
_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


class QueryRefused(ValueError):
    """A statement that is not a read-only query."""


class QueryFailed(RuntimeError):
    """A query that DuckDB could not finish (error, time limit, memory limit); the message says which."""


@dataclass(frozen=True)
class QueryLimits:
    """What one query may use: wall time, DuckDB memory, and DuckDB spill space in its private temp folder."""

    timeout_s: float = 300.0        # 0: no time limit
    memory_limit: str = "2GB"
    spill_limit: str = "4GB"

    def validate(self) -> "QueryLimits":
        """Raise ValueError naming the flag of a bad limit."""
        if not self.timeout_s >= 0:
            raise ValueError(f"--timeout must be >= 0 seconds (0: none), got {self.timeout_s}")
        for flag, value in (("--memory-limit", self.memory_limit), ("--spill-limit", self.spill_limit)):
            if not _SIZE.match(str(value).strip()):
                raise ValueError(f"{flag} must be a size such as 512MB or 4GB, got {value!r}")
        return self


@contextlib.contextmanager
def connect(home: DataHome, version: str | None = None,
            limits: QueryLimits | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """An in-memory, read-only DuckDB connection with the version's views and limits, and the version path."""
    limits = (limits or QueryLimits()).validate()
    path = resolve_version(home, version)
    root = str(path).replace("'", "''")
    # DuckDB's default spill folder is `.tmp` in the working directory, and it adds it to the readable
    # allowed_directories: a private folder instead keeps `read_text('.tmp/...')` refused everywhere.
    spill = tempfile.mkdtemp(prefix="pickapic-query-")
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    try:
        spill_sql = spill.replace("'", "''")   # a temp path: quoted like any other path put into SQL
        con.execute(f"SET temp_directory = '{spill_sql}'")
        con.execute(f"SET memory_limit = '{limits.memory_limit.strip()}'")
        con.execute(f"SET max_temp_directory_size = '{limits.spill_limit.strip()}'")
        con.execute("SET enable_progress_bar = false")  # it would print into csv/json on stdout
        if any(path.glob(f"*/{PROMPT_COUNTS_FILE}")):   # the loss weight's count lives outside the shards
            con.execute(f"CREATE VIEW pairs AS SELECT p.*, c.num_example_per_prompt "
                        f"FROM read_parquet('{sidecar_glob(root)}') AS p "
                        f"LEFT JOIN read_parquet('{prompt_counts_glob(root)}') AS c "
                        f"ON p.split = c.split AND p.prompt_key = c.prompt_key")
        else:
            con.execute(f"CREATE VIEW pairs AS SELECT * FROM read_parquet('{sidecar_glob(root)}')")
        for name in META_VIEWS:   # a table is one file, or a folder of per-day files (meta/images/)
            source = f"{root}/meta/{name}/*.parquet" if (path / "meta" / name).is_dir() else f"{root}/meta/{name}.parquet"
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{source}')")
        con.execute(f"SET allowed_directories = ['{root}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con, path
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def named_queries() -> dict[str, str]:
    """Named query -> its one-line description (first header comment line of ``sql/queries/<name>.sql``)."""
    out = {}
    folder = resources.files("sql").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            out[entry.name[: -len(".sql")]] = first.lstrip("- ").strip()
    return out


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT / EXPLAIN statement (COPY, ATTACH, CREATE, SET, INSTALL ...)."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryRefused(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in ALLOWED_STATEMENTS:
        raise QueryRefused(f"{kind} statements are refused: queries are read-only (allowed: {', '.join(ALLOWED_STATEMENTS)})")
    if kind == "EXPLAIN":
        # EXPLAIN ANALYZE executes what it explains (EXPLAIN ANALYZE COPY ... TO writes a file), so the
        # explained statement itself must be a SELECT.
        sql = _explained_text(sql)
        inner = con.extract_statements(sql)
        inner_kind = inner[0].type.name if len(inner) == 1 else f"{len(inner)} statements"
        if inner_kind != "SELECT":
            raise QueryRefused(f"EXPLAIN of {inner_kind} is refused: only SELECT statements may be explained")
    _check_query_tree(con, sql)


# Query nodes a read-only SELECT is made of. DuckDB types `WITH x AS (COPY ... TO 'f') SELECT ...` and
# `WITH x AS (INSERT ... RETURNING *) SELECT ...` as SELECT statements and runs the COPY / INSERT, so
# the parsed tree is checked too: anything else (COPY_QUERY_NODE, INSERT_QUERY_NODE, ...) is refused.
READ_ONLY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})


def _check_query_tree(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse a SELECT whose parsed tree holds a data-modifying node (a writing WITH clause)."""
    tree = json.loads(con.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchall()[0][0])
    if tree.get("error"):
        raise QueryRefused(f"cannot verify that the statement is read-only: {tree.get('error_message')}")
    found: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and kind.endswith("_NODE"):
                found.add(kind)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    writing = sorted(found - READ_ONLY_NODES)
    if writing:
        names = ", ".join(k.removesuffix("_NODE").removesuffix("_QUERY") for k in writing)
        raise QueryRefused(f"{names} inside a query is refused: queries are read-only (a WITH clause may only SELECT)")


def _explained_text(sql: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE | (options)]`` (comments skipped by DuckDB's tokenizer)."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    ends = [pos for pos, _ in tokens[1:]] + [len(sql)]
    words = [sql[pos:end].strip() for (pos, _), end in zip(tokens, ends)]
    operator = duckdb.token_type.operator
    i = 1  # tokens[0] is EXPLAIN
    if i < len(words) and words[i].upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    elif i < len(words) and tokens[i][1] == operator and words[i].startswith("("):
        depth = 0
        while i < len(words):
            if tokens[i][1] == operator:  # parentheses inside string literals do not count
                depth += words[i].count("(") - words[i].count(")")
            i += 1
            if depth <= 0:
                break
    return sql[tokens[i][0]:] if i < len(tokens) else ""


class _Deadline:
    """Interrupts the connection's running query once ``seconds`` have passed (0: never)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self.seconds, self.fired = seconds, False
        self._con = con
        self._timer = threading.Timer(seconds, self._fire) if seconds > 0 else None

    def _fire(self) -> None:
        self.fired = True
        self._con.interrupt()

    def __enter__(self) -> "_Deadline":
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def failure(self, exc: BaseException, limits: QueryLimits) -> QueryFailed:
        """The error to report for ``exc``, naming the limit that stopped the query."""
        if self.fired:
            return QueryFailed(f"the query was stopped at the time limit of {self.seconds:g} s "
                               "(--timeout SECONDS raises it; 0 means none)")
        message = str(exc)
        if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in message:
            message = (message.split("\n")[0] + f" (limits: --memory-limit {limits.memory_limit}, "
                       f"--spill-limit {limits.spill_limit})")
        return QueryFailed(message)


@contextlib.contextmanager
def stream(home: DataHome, sql: str, version: str | None = None, params: Mapping[str, Any] | None = None,
           limits: QueryLimits | None = None,
           batch_rows: int | None = None) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """Run one read-only statement under ``limits``; yield its schema and its record batches as they come.

    Raises QueryRefused (not read-only), FileNotFoundError (no such version) or QueryFailed (DuckDB error,
    time or memory limit), also while the batches are read.
    """
    limits = limits or QueryLimits()
    with connect(home, version, limits) as (con, _):
        try:
            check_read_only(con, sql)
        except duckdb.Error as exc:  # a parser error
            raise QueryFailed(str(exc)) from None
        with _Deadline(con, limits.timeout_s) as deadline:
            try:
                relation = con.sql(sql, params=dict(params)) if params else con.sql(sql)
                reader = relation.to_arrow_reader(batch_rows or BATCH_ROWS)
            except duckdb.Error as exc:
                raise deadline.failure(exc, limits) from None

            def batches() -> Iterator[pa.RecordBatch]:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except (OSError, pa.ArrowException, duckdb.Error) as exc:  # DuckDB errors surface through Arrow
                        raise deadline.failure(exc, limits) from None
                    yield batch

            yield reader.schema, batches()


def execute(home: DataHome, sql: str, version: str | None = None,
            params: Mapping[str, Any] | None = None, limits: QueryLimits | None = None) -> pa.Table:
    """Run one read-only statement over a version and return Arrow (raises QueryRefused / QueryFailed)."""
    with stream(home, sql, version, params, limits) as (schema, batches):
        return pa.Table.from_batches(list(batches), schema=schema)


def run_query(home: DataHome, sql: str | None = None, named: str | None = None, version: str | None = None,
              fmt: str = "table", output: Path | None = None, params: Mapping[str, Any] | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None, limits: QueryLimits | None = None) -> int:
    """Run a query (SQL text or a named one) and print/write the result; returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if (sql is None) == (named is None):
        print("error: give either SQL text or --named NAME (see --list)", file=stderr)
        return 2
    if fmt not in FORMATS:
        print(f"error: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", file=stderr)
        return 2
    if fmt == "parquet" and output is None:
        print("error: --format parquet needs --output FILE", file=stderr)
        return 2
    try:
        limits = (limits or QueryLimits()).validate()
        if output is not None:
            check_output_file(output, [home.root], "--output")  # before running: refuse early
    except ValueError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    if named is not None:
        known = named_queries()
        if named not in known:
            print(f"error: no named query {named!r}; known: {', '.join(known)}", file=stderr)
            return 2
        sql = sql_text(f"queries/{named}")
    try:
        with stream(home, sql, version, params, limits) as (schema, batches):
            if output is None:
                try:
                    write_result(schema, batches, fmt, _TextSink(stdout), to_terminal=stdout.isatty())
                    stdout.flush()
                except BrokenPipeError:  # the reader stopped early (`| head`): what it wanted was delivered
                    _silence(stdout)
                return 0
            else:
                with open_output_file(output, [home.root], "--output") as handle:
                    rows = write_result(schema, batches, fmt, handle)
    except (FileNotFoundError, ValueError) as exc:  # no such version / refused statement / refused output
        print(f"error: {exc}", file=stderr)
        return 2
    except QueryFailed as exc:
        print(f"error: {exc}", file=stderr)
        return 1
    if output is not None:
        print(f"wrote {rows} row{'' if rows == 1 else 's'} ({fmt}) to {output}", file=stderr)
    return 0


def _silence(stdout: TextIO) -> None:
    """Point a closed pipe's stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):  # a StringIO has no descriptor
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())


class _TextSink(io.RawIOBase):
    """A binary sink writing UTF-8 text to a text stream (stdout); writes always end on a character."""

    def __init__(self, text: TextIO) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._text.write(bytes(data).decode("utf-8"))
        return len(data)


def write_result(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, sink: BinaryIO,
                 to_terminal: bool = False) -> int:
    """Write batches as an aligned table, CSV, JSON (an array of objects) or Parquet; returns the row count."""
    if fmt == "parquet":
        rows = 0
        with pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    if fmt == "table":
        shown, rows = [], 0
        for batch in batches:  # keep the first rows, count the rest without holding them
            if rows < TABLE_MAX_ROWS:
                shown.append(batch.slice(0, TABLE_MAX_ROWS - rows))
            rows += batch.num_rows
        table = pa.Table.from_batches(shown, schema=schema)
        sink.write(render_table(table, to_terminal, total_rows=rows).encode("utf-8"))
        return rows
    if fmt == "csv":
        return _write_csv(schema, batches, sink)
    return _write_json(batches, sink)


def _write_csv(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    rows = 0
    for batch in batches:
        buffer = io.BytesIO()  # one complete CSV chunk per batch: text never splits inside a character
        pacsv.write_csv(_flatten_nested(pa.Table.from_batches([batch])), buffer,
                        pacsv.WriteOptions(include_header=rows == 0 and batch.num_rows > 0))
        if batch.num_rows:
            sink.write(buffer.getvalue())
        rows += batch.num_rows
    if rows == 0:
        buffer = io.BytesIO()
        pacsv.write_csv(_flatten_nested(schema.empty_table()), buffer)
        sink.write(buffer.getvalue())
    return rows


def _write_json(batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> int:
    """``json.dumps(rows, indent=1)``, written one row at a time."""
    rows = 0
    for batch in batches:
        for row in batch.to_pylist():
            text = json.dumps(row, ensure_ascii=False, default=_json_default, indent=1)
            sink.write((("[\n" if rows == 0 else ",\n") + " " + text.replace("\n", "\n ")).encode("utf-8"))
            rows += 1
    sink.write(b"[]\n" if rows == 0 else b"\n]\n")
    return rows


def render_table(table: pa.Table, to_terminal: bool = False, max_rows: int = TABLE_MAX_ROWS,
                 total_rows: int | None = None) -> str:
    """An aligned text table (rich), at most ``max_rows`` rows, then the row count (``total_rows`` if given)."""
    from rich.console import Console
    from rich.table import Table

    shown = table.slice(0, max_rows)
    cells = [[_cell(v) for v in row.values()] for row in shown.to_pylist()]
    total = table.num_rows if total_rows is None else total_rows
    out = Table(show_lines=False)
    for i, name in enumerate(table.column_names):
        kind = table.schema.field(i).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        out.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        out.add_row(*row)
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(table.column_names)]
    width = None if to_terminal else max(40, sum(widths) + 3 * len(widths) + 4)
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                      highlight=False, emoji=False, markup=False)
    console.print(out)
    # the row count on its own line: as a caption rich would wrap it to the width of a narrow table
    return console.file.getvalue() + _row_note(total, shown.num_rows) + "\n"


def _row_note(total: int, shown: int) -> str:
    if shown < total:
        return f"{total} rows, first {shown} shown (use --format csv|json|parquet for all)"
    return f"{total} row" + ("" if total == 1 else "s")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _flatten_nested(table: pa.Table) -> pa.Table:
    """CSV has no nested types: lists, structs and maps become JSON strings."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_nested(field.type):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=_json_default)
                               for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected NAME=VALUE")
    for convert in (int, float):
        try:
            return name, convert(value)
        except ValueError:
            pass
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pickapic query``."""
    parser.add_argument("sql", nargs="?", help="one SELECT statement over the views pairs, shards, images, "
                        "decisions, quarantine, splits_summary")
    parser.add_argument("--named", metavar="NAME", help="run sql/queries/NAME.sql instead (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named queries and exit")
    parser.add_argument("--version", dest="dataset_version", metavar="V", help="published version (default: latest)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the result to FILE instead of stdout (a new path or a regular file outside the "
                             "data home; says on stderr how many rows it wrote)")
    parser.add_argument("--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                        help="a $NAME parameter for the query (repeatable)")
    defaults = QueryLimits()
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, metavar="SECONDS",
                        help=f"stop the query after SECONDS (default {defaults.timeout_s:g}; 0: no limit)")
    parser.add_argument("--memory-limit", default=defaults.memory_limit, metavar="SIZE",
                        help=f"DuckDB memory limit (default {defaults.memory_limit}); beyond it DuckDB spills to a "
                             "private temporary folder")
    parser.add_argument("--spill-limit", default=defaults.spill_limit, metavar="SIZE",
                        help=f"most disk the query may spill to (default {defaults.spill_limit})")


def run_from_args(args: argparse.Namespace, home: DataHome | None = None) -> int:
    """Entry point for ``pickapic query`` (``args`` from :func:`add_arguments`)."""
    if args.list:
        for name, description in named_queries().items():
            print(f"{name:28s} {description}")
        return 0
    home = home or DataHome.at(getattr(args, "home", None))
    limits = QueryLimits(args.timeout, args.memory_limit, args.spill_limit)
    return run_query(home, args.sql, args.named, args.dataset_version, args.fmt, args.output, dict(args.param) or None,
                     limits=limits)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.query.engine [--home HOME] "SQL" ...``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.query.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $PICKAPIC_HOME or ./data)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
