"""Fix of review rev27g: the re-select of columns Arrow cannot carry wraps the statement without its ending
semicolons and comments (``engine.statement_body``), on the query's own first line."""
from __future__ import annotations

import duckdb
import pytest

from pipelines.query.engine import statement_body


@pytest.mark.parametrize("sql, body", [
    ("SELECT 1 AS i", "SELECT 1 AS i"),
    ("SELECT 1 AS i;", "SELECT 1 AS i"),
    ("SELECT 1 AS i;;  ", "SELECT 1 AS i"),
    ("SELECT 1 AS i; -- done", "SELECT 1 AS i"),
    ("SELECT 1 AS i; /* done */\n-- and this\n", "SELECT 1 AS i"),
    ("SELECT 1 AS i -- c\n;", "SELECT 1 AS i"),
    ("SELECT 'a; -- b' AS s;", "SELECT 'a; -- b' AS s"),
    ("SELECT $$x;y$$ AS s; -- z", "SELECT $$x;y$$ AS s"),
    ("SELECT 1 /* inside */ + 2 AS n", "SELECT 1 /* inside */ + 2 AS n"),
    ("SELECT 1 AS i -- only a comment", "SELECT 1 AS i"),
])
def test_the_body_drops_only_what_ends_the_statement(sql: str, body: str) -> None:
    assert statement_body(sql) == body


def test_a_wrapped_body_runs_and_keeps_the_users_lines() -> None:
    con = duckdb.connect()
    sql = "SELECT INTERVAL 1 DAY AS i,\n'x'::INT AS n; -- done"
    wrapped = f"SELECT CAST(#1 AS VARCHAR) AS i, #2 AS n FROM ({statement_body(sql)}\n) AS q"
    with pytest.raises(duckdb.Error, match="LINE 2"):
        con.sql(wrapped).fetchall()
    assert con.sql(f"SELECT CAST(#1 AS VARCHAR) AS i FROM ({statement_body('SELECT INTERVAL 1 DAY; -- c')}\n) AS q"
                   ).fetchall() == [("1 day",)]
