"""The read-only guard of ``pickapic query``: one SELECT (or EXPLAIN of one), nothing that writes.

DuckDB types ``WITH x AS (COPY ... TO 'f') SELECT ...`` as a SELECT and runs the COPY, so besides the
statement's type the parsed tree is checked: it may hold only SELECT nodes. A PIVOT whose values DuckDB finds
from the data is a MULTI statement (an ENUM type of the values, then the query): it is checked as the same text
with a placeholder list of values (:func:`_pivot_values_spelt`).
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
    if kind == "MULTI":
        # DuckDB expands a PIVOT whose values it must find (no `IN (...)` list) into statements that make an
        # ENUM type of those values, then the query (review rev34e: refused as a write). The same text with a
        # placeholder list after each such ON column is one plain statement: checked instead, it decides.
        spelt = _pivot_values_spelt(sql)
        again = con.extract_statements(spelt) if spelt != sql else statements
        if len(again) == 1 and again[0].type.name != "MULTI":
            check_read_only(con, spelt)
            return
        raise QueryRefused("MULTI statements are refused: queries are read-only (DuckDB expands this statement into "
                           "several; a PIVOT whose values are found from the data is allowed, or spell the values "
                           "out: ON column IN (...))")
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


PIVOT_VALUES_PLACEHOLDER = " IN ('') "
_ON_LIST_ENDS = frozenset({"USING", "GROUP", "ORDER", "LIMIT", "OFFSET"})


def _pivot_values_spelt(sql: str) -> str:
    """``sql`` with :data:`PIVOT_VALUES_PLACEHOLDER` after every ON column of a ``PIVOT ... ON ...`` statement
    form that has no ``IN (...)`` list (``ON a, b IN (...)``: after ``a``): for the read-only check only, never
    run. Tokens come from DuckDB's tokenizer (strings, quoted names and comments are never searched); the
    standard form after a table, ``t PIVOT (agg FOR col IN (...))``, always lists its values and is left alone. A list found in
    the wrong place leaves the statement a MULTI one or unparsable, which is refused."""
    every = duckdb.tokenize(sql)
    ends = {pos: end for (pos, _), end in zip(every, [pos for pos, _ in every[1:]] + [len(sql)])}
    tokens = [(pos, kind) for pos, kind in every if kind != duckdb.token_type.comment]
    words = [sql[pos:ends[pos]].rstrip() for pos, _ in tokens]
    keyword, operator = duckdb.token_type.keyword, duckdb.token_type.operator
    depths, depth = [], 0               # the depth of parentheses each token starts at
    for (_, kind), word in zip(tokens, words):
        depths.append(depth)
        if kind == operator:
            depth += word.count("(") - word.count(")")
    inserts: list[int] = []
    for i, ((_, kind), word) in enumerate(zip(tokens, words)):
        if kind != keyword or word.upper() not in ("PIVOT", "PIVOT_WIDER"):
            continue
        if i > 0 and (tokens[i - 1][1] == duckdb.token_type.identifier
                      or tokens[i - 1][1] == operator and words[i - 1].endswith(")")):
            continue                    # `t PIVOT (agg FOR col IN (...))`, after a table: its IN list is required
        level = depths[i]
        on = next((j for j in range(i + 1, len(tokens)) if depths[j] < level or (
            depths[j] == level and tokens[j][1] == keyword and words[j].upper() == "ON")), None)
        if on is None or depths[on] < level:
            continue
        listed = False                  # the current ON column has an IN list
        for j in range(on + 1, len(tokens) + 1):
            if j == len(tokens):
                if not listed and tokens:
                    inserts.append(tokens[-1][0] + len(words[-1]))
                break
            (pos, kind), word, depth = tokens[j], words[j], depths[j]
            if depth == level and kind == keyword and word.upper() in _ON_LIST_ENDS:
                if not listed:
                    inserts.append(pos)
                break
            if depth == level and kind == keyword and word.upper() == "IN":
                listed = True
            if kind != operator:
                continue
            inner, done = depth, False  # an operator token may hold several characters: "),", ");"
            for k, char in enumerate(word):
                if char == "(":
                    inner += 1
                elif char == ")":
                    inner -= 1
                    if inner < level:
                        done = True
                elif inner == level and char in ",;":
                    if not listed:
                        inserts.append(pos + k)
                    listed = False
                    done = char == ";"
                if done:
                    if char == ")" and not listed:
                        inserts.append(pos + k)
                    break
            if done:
                break
    for at in sorted(set(inserts), reverse=True):
        sql = sql[:at] + PIVOT_VALUES_PLACEHOLDER + sql[at:]
    return sql


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
