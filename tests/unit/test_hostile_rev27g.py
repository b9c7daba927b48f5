"""Hostile review rev27g of fix27d (commit b261203): ``pickapic query`` re-selecting, by position, the columns whose
DuckDB types Arrow cannot carry (``pipelines/query/duck_types.py``; ``engine.stream(..., fmt=, revive=)``).

Attacked with real DuckDB through ``engine.run_query`` on a real published version: WITH / UNION ALL / VALUES /
DESCRIBE / SUMMARIZE / EXPLAIN, params bound inside the re-selected query, column names that collide or look like
``#1``, ENUM / DECIMAL(38) / HUGEINT / TIMESTAMP_NS / TIMESTAMPTZ / JSON / GEOMETRY next to re-selected values at
any depth, maps keyed by TIMETZ / BIT / UHUGEINT, unnamed structs, order of large ordered results, the time limit
during the re-select, peak RSS of 2,000,000-row results (flat), interval text fuzzed against DuckDB (exact), and
results without such types against the parent commit 5623287 (byte-identical in all four formats). What broke:
DuckDB's ``relation.project`` splices the user's SQL text into ``SELECT * FROM (\\n<sql>\\n)``, so a statement
that runs on its own (a trailing ``;`` followed by a comment) is refused with a parser error once it has such a
column, and DuckDB's error positions name a line of that wrapper instead of the user's line.
Both fixed the same day (``engine.statement_body``: the re-select wraps the statement itself, without its ending
semicolons and comments, its select list on the query's first line).
"""
from __future__ import annotations

import io
import json

import pytest
from test_publish_fixtures import published_home

from formats.home import DataHome
from pipelines.query import engine


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("rev27g") / "home")


def _run(home: DataHome, sql: str, fmt: str = "json") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, sql, fmt=fmt, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_trailing_semicolon_and_comment_survive_the_reselect(home: DataHome) -> None:
    for tail in ("; -- done", "; /* done */", ";\n-- done\n"):
        code, out, err = _run(home, "SELECT INTERVAL 1 DAY AS i, '101'::BIT AS b" + tail)
        assert code == 0, err
        assert json.loads(out) == [{"i": "1 day", "b": "101"}]
    # the same ending without a re-selected column: runs (control)
    code, out, err = _run(home, "SELECT 1 AS i; -- done")
    assert (code, json.loads(out)) == (0, [{"i": 1}]), err


def test_error_position_names_the_users_line(home: DataHome) -> None:
    code, out, err = _run(home, "SELECT INTERVAL 1 DAY AS i,\n'x'::INT AS n")
    assert code == 1 and out == ""
    assert "Could not convert string 'x'" in err
    assert "LINE 2:" in err and "LINE 4:" not in err, err
