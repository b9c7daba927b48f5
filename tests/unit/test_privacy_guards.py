"""Guards found by the hostile/privacy e2e tests: published quarantine redaction, EXPLAIN ANALYZE, --output."""
from __future__ import annotations

import datetime as dt
import io

import duckdb
import pyarrow as pa
import pytest

from formats.home import DataHome
from pipelines.query import engine as query
from pipelines.query import guard
from pipelines.sqlrun import sql_text

DETAILS = [
    # (table, internal detail, published detail)
    ("users", "user_id: string '24', expected integer", "user_id: string <value>, expected integer"),
    ("users", "user_id 17 has 2 lines with different content (lines 6, 8)",
     "user_id <value> has 2 lines with different content (lines 6, 8)"),
    ("users", "user_id = 1000000000000000000000000000000 outside [1, 9007199254740992]",
     "user_id = <value> outside [1, 9007199254740992]"),
    ("users", "name: array ['Hana Okafor'], expected string", "name: array <value>, expected string"),
    ("users", "email: array ['hana.okafor1@example.com'], expected string", "email: array <value>, expected string"),
    ("users", "duplicate key 'Hana Okafor'", "duplicate key <value>"),
    ("users", "unexpected 'Hana Okafor'", "unexpected <value>"),
    ("images", "user_id: string \"O'24\", expected integer", "user_id: string <value>, expected integer"),
    ("rankings", "user_id = 42.5 outside [1, 9007199254740992]", "user_id = <value> outside [1, 9007199254740992]"),
    ("rankings", "user_id: string '7', expected integer, expected integer", "user_id: string <value>, expected integer"),
    # non-personal details keep their values (they are what an operator needs)
    ("images", "seed: string '991940969', expected integer", "seed: string '991940969', expected integer"),
    ("downloads", "download_id 6 has 2 lines with different content (lines 6, 8)",
     "download_id 6 has 2 lines with different content (lines 6, 8)"),
    ("rankings", "missing user_id", "missing user_id"),
    ("rankings", "prompt has U+202E at 6", "prompt has U+202E at 6"),
    ("images", "contact me at bob.smith@example.com", "contact me at <email>"),
]


def test_published_quarantine_redacts_user_ids_and_users_values() -> None:
    n = len(DETAILS)
    table = pa.table({
        "table": [d[0] for d in DETAILS], "dt": [dt.date(2023, 2, 13)] * n, "file": ["f"] * n,
        "line_number": list(range(1, n + 1)), "last_line_number": list(range(1, n + 1)), "line_count": [1] * n,
        "reason": ["wrong_type"] * n, "detail": [d[1] for d in DETAILS],
        "raw_text": ["secret"] * n, "raw_length": [1] * n, "raw_sha256": ["0" * 64] * n,
    })
    con = duckdb.connect()
    con.register("quarantine", table)
    out = con.sql(sql_text("publish_quarantine")).to_arrow_table()
    assert "raw_text" not in out.column_names
    published = dict(zip(out.column("line_number").to_pylist(), out.column("detail").to_pylist()))
    assert [published[i + 1] for i in range(n)] == [d[2] for d in DETAILS]


@pytest.mark.parametrize("sql", [
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN /* hidden */ analyse COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN (ANALYZE) COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN (FORMAT ')') COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
])
def test_explain_of_anything_but_select_is_refused(sql: str) -> None:
    con = duckdb.connect()
    with pytest.raises(guard.QueryRefused, match="only SELECT statements may be explained"):
        guard.check_read_only(con, sql)


@pytest.mark.parametrize("sql,word", [
    ("WITH x AS (COPY (SELECT 1) TO 'x.csv') SELECT 1", "COPY"),
    ("WITH a AS (SELECT 1), x AS (COPY (SELECT 1) TO 'x.csv') SELECT * FROM a", "COPY"),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", "INSERT"),
    ("EXPLAIN ANALYZE WITH x AS (COPY (SELECT 1) TO 'x.csv') SELECT 1", "COPY"),
])
def test_a_with_clause_that_writes_is_refused(tmp_path, sql: str, word: str) -> None:
    """DuckDB calls these SELECT statements and would run the COPY / INSERT: the parsed tree is checked."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    assert con.extract_statements(sql)[0].type.name in ("SELECT", "EXPLAIN")
    with pytest.raises(guard.QueryRefused, match=f"{word} inside a query is refused"):
        guard.check_read_only(con, sql)
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(0,)]


@pytest.mark.parametrize("sql", [
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "WITH a AS MATERIALIZED (SELECT 1 AS x) SELECT * FROM a WHERE x IN (SELECT 1 UNION SELECT 2)",
    "SELECT * FROM query('SELECT 1')", "SELECT $p AS p", "SHOW TABLES",
    "EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT 1", "EXPLAIN (FORMAT json) SELECT 1",
    "EXPLAIN ANALYZE SELECT '(' AS a", "DESCRIBE SELECT 1", "SUMMARIZE SELECT 1", "FROM (SELECT 1)",
])
def test_read_only_statements_pass(sql: str) -> None:
    guard.check_read_only(duckdb.connect(), sql)


def test_output_into_the_published_datasets_is_refused(tmp_path) -> None:
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    err = io.StringIO()
    code = query.run_query(home, "SELECT 1", fmt="csv", output=home.datasets / "v" / "x.csv",
                           stdout=io.StringIO(), stderr=err)
    assert code == 2 and "read-only" in err.getvalue()
    assert list(home.datasets.iterdir()) == []
