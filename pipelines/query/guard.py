"""The read-only guard of ``pickapic query``: one SELECT (or EXPLAIN of one), nothing that writes.

DuckDB types ``WITH x AS (COPY ... TO 'f') SELECT ...`` as a SELECT and runs the COPY, so besides the
statement's type the parsed tree is checked: it may hold only SELECT nodes.
"""
from __future__ import annotations

import json
from typing import Any

import duckdb

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")


class QueryRefused(ValueError):
    """A statement that is not a read-only query."""


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
