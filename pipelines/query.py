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
so a query can neither write files nor read anything else; ``--output`` may not point into the
published datasets.

Plain DuckDB, no pipeline installed::

    SELECT split, count(*) FROM read_parquet('HOME/datasets/pickapic/latest/*/pickapic-*.parquet') GROUP BY split;
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, TextIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.home import DataHome
from pipelines.publish import resolve_version
from pipelines.sqlrun import sql_text
from pipelines.storage import write_bytes_atomic, write_parquet_atomic

FORMATS = ("table", "csv", "json", "parquet")
ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")
META_VIEWS = ("shards", "images", "decisions", "quarantine", "splits_summary")
TABLE_MAX_ROWS = 1000


class QueryRefused(ValueError):
    """A statement that is not a read-only query."""


def open_version(home: DataHome, version: str | None = None) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """An in-memory, read-only DuckDB connection with the version's views, and the version path."""
    path = resolve_version(home, version)
    root = str(path).replace("'", "''")
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    if any(path.glob("*/prompt_counts.parquet")):   # the loss weight's count lives outside the shards
        con.execute(f"CREATE VIEW pairs AS SELECT p.*, c.num_example_per_prompt "
                    f"FROM read_parquet('{root}/*/pickapic-*.parquet') AS p "
                    f"LEFT JOIN read_parquet('{root}/*/prompt_counts.parquet') AS c "
                    f"ON p.split = c.split AND p.prompt_key = c.prompt_key")
    else:
        con.execute(f"CREATE VIEW pairs AS SELECT * FROM read_parquet('{root}/*/pickapic-*.parquet')")
    for name in META_VIEWS:   # a table is one file, or a folder of per-day files (meta/images/)
        source = f"{root}/meta/{name}/*.parquet" if (path / "meta" / name).is_dir() else f"{root}/meta/{name}.parquet"
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{source}')")
    con.execute(f"SET allowed_directories = ['{root}/']")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, path


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


def execute(home: DataHome, sql: str, version: str | None = None,
            params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run one read-only statement over a version and return Arrow (raises duckdb.Error / QueryRefused)."""
    con, _ = open_version(home, version)
    try:
        check_read_only(con, sql)
        return con.sql(sql, params=dict(params)).to_arrow_table() if params else con.sql(sql).to_arrow_table()
    finally:
        con.close()


def run_query(home: DataHome, sql: str | None = None, named: str | None = None, version: str | None = None,
              fmt: str = "table", output: Path | None = None, params: Mapping[str, Any] | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
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
    if output is not None and _inside(Path(output), home.datasets):
        print(f"error: --output {output} is inside the published datasets {home.datasets}: "
              "published versions are read-only; write the result elsewhere", file=stderr)
        return 2
    if named is not None:
        known = named_queries()
        if named not in known:
            print(f"error: no named query {named!r}; known: {', '.join(known)}", file=stderr)
            return 2
        sql = sql_text(f"queries/{named}")
    try:
        result = execute(home, sql, version, params)
    except (FileNotFoundError, ValueError) as exc:  # no such version / refused statement
        print(f"error: {exc}", file=stderr)
        return 2
    except duckdb.Error as exc:
        print(f"error: {exc}", file=stderr)
        return 1
    write_result(result, fmt, output, stdout)
    return 0


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (links resolved, need not exist) is ``folder`` or lies under it."""
    target, root = path.resolve(), folder.resolve()
    return target == root or root in target.parents


def write_result(table: pa.Table, fmt: str, output: Path | None, stdout: TextIO) -> None:
    """Write ``table`` as an aligned table, CSV, JSON (an array of objects) or Parquet."""
    if fmt == "parquet":
        assert output is not None
        write_parquet_atomic(table, Path(output))
        return
    if fmt == "table":
        text = render_table(table, to_terminal=output is None and stdout.isatty())
    elif fmt == "csv":
        buffer = io.BytesIO()
        pacsv.write_csv(_flatten_nested(table), buffer)
        text = buffer.getvalue().decode("utf-8")
    else:
        text = json.dumps(table.to_pylist(), ensure_ascii=False, default=_json_default, indent=1) + "\n"
    if output is None:
        stdout.write(text)
        stdout.flush()
    else:
        write_bytes_atomic(Path(output), text.encode("utf-8"))


def render_table(table: pa.Table, to_terminal: bool = False, max_rows: int = TABLE_MAX_ROWS) -> str:
    """An aligned text table (rich), at most ``max_rows`` rows, then a row count."""
    from rich.console import Console
    from rich.table import Table

    shown = table.slice(0, max_rows)
    cells = [[_cell(v) for v in row.values()] for row in shown.to_pylist()]
    out = Table(show_lines=False, caption=_row_note(table.num_rows, shown.num_rows))
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
    return console.file.getvalue()


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
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the result to FILE instead of stdout")
    parser.add_argument("--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                        help="a $NAME parameter for the query (repeatable)")


def run_from_args(args: argparse.Namespace, home: DataHome | None = None) -> int:
    """Entry point for ``pickapic query`` (``args`` from :func:`add_arguments`)."""
    if args.list:
        for name, description in named_queries().items():
            print(f"{name:28s} {description}")
        return 0
    home = home or DataHome.at(getattr(args, "home", None))
    return run_query(home, args.sql, args.named, args.dataset_version, args.fmt, args.output, dict(args.param) or None)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.query [--home HOME] "SQL" ...``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.query", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $PICKAPIC_HOME or ./data)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
