"""Fixes of review rev27d (``tests/unit/test_hostile_rev27d.py``) of ``pickapic query``'s output: values DuckDB's
Arrow export cannot carry (INTERVALs beyond ~292 years of time, BIT, BIGNUM, VARIANT, TIMETZ, UHUGEINT, at any
depth) selected as DuckDB's own text (an INTERVAL in every format since fix35b); NaN / infinities in csv's and
parquet's JSON text as ``null``; ``--param n:int=`` with thousands of leading zeros; a linear ``n:double=``."""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import published_home

from formats.home import DataHome
from pipelines.query import engine, output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("fix27d") / "home")


def _run(home: DataHome, sql: str, fmt: str, target: Path | None = None) -> bytes:
    out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, sql, fmt=fmt, output=target, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return target.read_bytes() if target is not None else out.getvalue().encode("utf-8")


def _arrow_path(home: DataHome, sql: str, fmt: str) -> bytes:
    """What ``write_result`` writes of the query's plain Arrow result (the path every column took before)."""
    table = engine.execute(home, sql)
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), fmt, sink)
    return sink.getvalue()


def _strict(text: str | bytes) -> object:
    def refuse(word: str) -> object:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def _params(*texts: str) -> dict:
    parser = argparse.ArgumentParser()
    engine.add_arguments(parser)
    return dict(parser.parse_args([*(arg for text in texts for arg in ("--param", text)), "SELECT 1"]).param)


# --------------------------------------------------------------------------- unchanged where nothing was wrong
PLAIN = ("SELECT range AS n, range::VARCHAR AS t, [range, NULL] AS l, {'x': range / 3, 'y': 'a'} AS s, "
         "MAP {range::VARCHAR: [1.5]} AS m, unhex('00ff') AS b, DATE '2020-01-01' + range::INTEGER AS d, "
         "'x'::ENUM('x', 'y') AS e, union_value(a := range) AS u, 10::HUGEINT AS h FROM range(5)")
IN_RANGE = ("SELECT to_months(r) + to_days(3 * r) + to_microseconds(r * 123456789) AS i, [to_days(r), NULL] AS l, "
            "MAP {r: to_hours(r)} AS m, {'a': to_minutes(r), 'e': 'a'::ENUM('a', 'b')} AS s, "
            "[to_days(r)]::INTERVAL[1] AS arr FROM range(-5, 5) AS t(r)")


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
@pytest.mark.parametrize("sql", [PLAIN, "SELECT * FROM pairs ORDER BY key", "SELECT * FROM images ORDER BY ALL"])
def test_a_result_without_such_types_is_written_as_before(home: DataHome, sql: str, fmt: str) -> None:
    assert _run(home, sql, fmt) == _arrow_path(home, sql, fmt)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_intervals_arrow_carries_are_written_as_before(home: DataHome, fmt: str) -> None:
    assert _run(home, IN_RANGE, fmt) == _arrow_path(home, IN_RANGE, fmt)


@pytest.mark.parametrize("sql", [PLAIN])   # IN_RANGE: fix35b writes an INTERVAL as its text at any depth
def test_parquet_without_values_arrow_gets_wrong_is_written_as_before(home: DataHome, sql: str,
                                                                      tmp_path: Path) -> None:
    expected = _arrow_path(home, sql, "parquet")
    assert _run(home, sql, "parquet", tmp_path / "x.parquet") == expected


# --------------------------------------------------------------------------- intervals beyond Arrow's range
def test_an_interval_beyond_arrows_range_keeps_each_formats_shape(home: DataHome, tmp_path: Path) -> None:
    sql = ("SELECT to_hours(3000000) AS i, [to_hours(3000000), NULL] AS l, "
           "{'x': to_hours(-3000000) - to_months(14)} AS s, MAP {1: to_hours(3000000)} AS m")
    # fix35b: DuckDB's text at any depth in every format (json wrote [months, days, nanoseconds])
    row = list(csv.reader(io.StringIO(_run(home, sql, "csv").decode())))[1]
    assert row == ["3000000:00:00", '["3000000:00:00", null]', '{"x": "-1 year -2 months -3000000:00:00"}',
                   '[[1, "3000000:00:00"]]']
    assert _strict(_run(home, sql, "json")) == [{"i": "3000000:00:00", "l": ["3000000:00:00", None],
                                                 "s": {"x": "-1 year -2 months -3000000:00:00"},
                                                 "m": [[1, "3000000:00:00"]]}]
    read = pq.read_table(io.BytesIO(_run(home, sql, "parquet", tmp_path / "i.parquet")))
    assert read.to_pylist()[0] == {"i": "3000000:00:00", "l": ["3000000:00:00", None],
                                   "s": {"x": "-1 year -2 months -3000000:00:00"}, "m": [(1, "3000000:00:00")]}
    table = _run(home, sql, "table").decode()
    assert "3000000:00:00" in table and '["3000000:00:00", null]' in table and "MonthDayNano" not in table


def test_an_interval_inside_a_union_is_its_text(home: DataHome) -> None:
    """A union's value reaches Python without its member's name: an INTERVAL member is DuckDB's text."""
    sql = "SELECT union_value(k := to_hours(3000000)) AS u, [union_value(k := to_days(2))] AS l"
    assert _strict(_run(home, sql, "json")) == [{"u": "3000000:00:00", "l": ["2 days"]}]
    assert list(csv.reader(io.StringIO(_run(home, sql, "csv").decode())))[1] == ['"3000000:00:00"', '["2 days"]']


# --------------------------------------------------------------------------- types Arrow cannot carry
def test_types_arrow_cannot_carry_are_duckdbs_text_at_any_depth(home: DataHome, tmp_path: Path) -> None:
    sql = ("SELECT {'b': '0101'::BIT, 't': ['12:00:00+05'::TIMETZ], 'e': 'x'::ENUM('x', 'y''z'), 'n': 7} AS s, "
           "MAP {340282366920938463463374607431768211455::UHUGEINT: 123456789012345678901234567890::BIGNUM} AS m, "
           "union_value(v := 42::VARIANT) AS u, ['1'::BIT, NULL]::BIT[2] AS a, '12:00:00-03:30'::TIMETZ AS t")
    expected = {"s": {"b": "0101", "t": ["12:00:00+05"], "e": "x", "n": 7},
                "m": [["340282366920938463463374607431768211455", "123456789012345678901234567890"]],
                "u": "42", "a": ["1", None], "t": "12:00:00-03:30"}
    assert _strict(_run(home, sql, "json")) == [expected]
    row = list(csv.reader(io.StringIO(_run(home, sql, "csv").decode())))[1]
    assert [_strict(cell) for cell in row[:4]] == [expected[k] for k in "smua"] and row[4] == "12:00:00-03:30"
    read = pq.read_table(io.BytesIO(_run(home, sql, "parquet", tmp_path / "t.parquet"))).to_pylist()[0]
    assert read["s"] == expected["s"] and read["t"] == "12:00:00-03:30" and read["a"] == ["1", None]
    table = _run(home, sql, "table").decode()
    assert "12:00:00-03:30" in table and '"0101"' in table and "340282366920938463463374607431768211455" in table


def test_duplicate_names_params_and_empty_results_survive_the_cast(home: DataHome, tmp_path: Path) -> None:
    code_out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, "SELECT to_hours($h::INTEGER) AS a, $b::BIT AS a, 1 AS n", fmt="csv",
                            params={"h": 3000000, "b": "0101"}, stdout=code_out, stderr=err)
    assert code == 0, err.getvalue()
    assert code_out.getvalue().splitlines() == ['"a","a","n"', '"3000000:00:00","0101",1']
    empty = "SELECT to_hours(1) AS i, '1'::BIT AS b, [to_days(1)] AS l LIMIT 0"
    assert _run(home, empty, "csv") == b'"i","b","l"\n'
    assert _strict(_run(home, empty, "json")) == []
    read = pq.read_table(io.BytesIO(_run(home, empty, "parquet", tmp_path / "e.parquet")))
    # fix35b: a list of INTERVALs is a list of their texts (it was JSON text of [months, days, nanoseconds])
    assert read.num_rows == 0 and read.schema.names == ["i", "b", "l"]
    assert read.schema.types == [pa.string(), pa.string(), pa.list_(pa.string())]


def test_statements_that_are_not_plain_selects_are_unchanged(home: DataHome) -> None:
    for sql in ("EXPLAIN SELECT to_hours(1)", "DESCRIBE SELECT to_hours(1) AS i, '1'::BIT AS b"):
        assert _run(home, sql, "json") == _arrow_path(home, sql, "json")


# --------------------------------------------------------------------------- NaN in csv's / parquet's JSON text
def test_nested_nan_is_null_in_csv_and_parquet_json_text() -> None:
    table = duckdb.sql("SELECT ['nan'::DOUBLE, 1.5] AS l, union_value(a := '-inf'::FLOAT) AS u, "
                       "{'x': 'inf'::DOUBLE} AS s, 'nan'::DOUBLE AS d").to_arrow_table()
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), "csv", sink)
    assert sink.getvalue().decode().splitlines()[1] == '"[null, 1.5]","null","{""x"": null}",nan'
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), "parquet", sink)
    assert pq.read_table(io.BytesIO(sink.getvalue())).column("u").to_pylist() == ["null"]


# --------------------------------------------------------------------------- --param
@pytest.mark.parametrize(("text", "bound"), [
    ("n:int=" + "0" * 5000 + "1", 1), ("n:int=-" + "0" * 5000 + "9223372036854775808", -(2**63)),
    ("n:int=+" + "0" * 5000, 0), ("n:int=-" + "0" * 5000, 0), ("n:double=" + "0" * 5000 + "1.5", 1.5),
])
def test_an_int_with_many_leading_zeros_binds_its_number(text: str, bound: object) -> None:
    value = _params(text)["n"]
    assert value == bound and type(value) is type(bound)


@pytest.mark.parametrize("text", [
    "n:int=" + "0" * 5000 + "9223372036854775808", "n:int=" + "0" * 5000 + "x", "n:int=" + "7" * 200_000,
    "n:double=" + "1" * 200_000 + "x", "n:double=." + "1" * 200_000 + "e5x", "n:double=1." + "1" * 200_000 + "ex",
])
def test_a_long_bad_number_is_refused_at_once_in_one_short_line(text: str, capsys: pytest.CaptureFixture) -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        _params(text)
    # generous: the quadratic pattern took ~10 s for 32,000 digits, so hours for these 200,000
    assert time.monotonic() - started < 5
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "error: argument --param: --param '" in error and len(error) < 300, error
