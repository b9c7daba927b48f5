"""Fixes of review rev27a (``tests/unit/test_hostile_rev27a.py``) of ``pickapic query``: ``--param`` values bound
as numbers only where they are the number's own spelling (``NAME:TYPE=`` to choose), NaN/Infinity as ``null`` in
``--format json``, duplicate names refused by ``--format parquet``, INTERVAL / UNION / BLOB columns written by
csv and parquet, ``--timeout`` bounding the wait for the version's lock, and a backslash in ``$TMPDIR``."""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import math
import os
import tempfile

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import published_home

from formats import dataset
from formats.home import DataHome
from pipelines.query import engine, output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("fix27a") / "home")


def _run(home: DataHome, sql: str, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, sql, stdout=out, stderr=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def _params(*texts: str) -> dict:
    parser = argparse.ArgumentParser()
    engine.add_arguments(parser)
    return dict(parser.parse_args([*(arg for text in texts for arg in ("--param", text)), "SELECT 1"]).param)


def _write(table: pa.Table, fmt: str) -> bytes:
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), fmt, sink)
    return sink.getvalue()


# --------------------------------------------------------------------------- --param
@pytest.mark.parametrize(("text", "bound"), [
    ("n=42", 42), ("n=-7", -7), ("n=0", 0), ("n=0.5", 0.5), ("n=-1.25", -1.25), ("n=1.0", 1.0),
    ("n=9223372036854775807", 2**63 - 1), ("n=-9223372036854775808", -2**63),
    # not the number's own spelling: text, as typed
    ("n=0123", "0123"), ("n=12e3", "12e3"), ("n=1234e567", "1234e567"), ("n=nan", "nan"), ("n=inf", "inf"),
    ("n=-Infinity", "-Infinity"), ("n=1_0", "1_0"), ("n=+5", "+5"), ("n=-0", "-0"), ("n=1.10", "1.10"),
    ("n=.5", ".5"), ("n= 5", " 5"), ("n=9223372036854775808", "9223372036854775808"), ("n=", ""),
    ("n=0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"), ("n=a=b", "a=b"),
    # the type asked for
    ("n:text=42", "42"), ("n:text=0.5", "0.5"), ("n:int=0123", 123), ("n:int=+5", 5), ("n:double=12e3", 12000.0),
    ("n:double=-inf", float("-inf")), ("n:double=5", 5.0),
])
def test_a_param_is_a_number_only_where_it_is_the_numbers_own_spelling(text: str, bound: object) -> None:
    value = _params(text)["n"]
    assert value == bound and type(value) is type(bound)


def test_a_double_param_may_be_nan() -> None:
    value = _params("n:double=nan")["n"]
    assert isinstance(value, float) and math.isnan(value)


@pytest.mark.parametrize("text", ["n:int=x", "n:int=1.5", "n:int=9223372036854775808", "n:int=1_0",
                                  "n:double=x", "n:double=1e999", "n:double=1_0", "n:bool=1", "n:=1", "1n=2", "n",
                                  "n:int=" + "9" * 5000])
def test_a_bad_param_is_one_short_usage_error(text: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        _params(text)
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --param: --param '" in error and len(error) < 300, error


def test_a_number_param_reads_back_as_typed_and_a_text_param_compares_with_text(home: DataHome) -> None:
    params = _params("i=42", "d=0.5", "z=0123", "u:text=123", "e=12e3")
    code, out, err = _run(home, "SELECT $i + 1 AS i, $d * 2 AS d, $i::VARCHAR AS it, $d::VARCHAR AS dt, $z AS z, "
                                "$e AS e, (SELECT count(*) FROM (VALUES ('123'), ('4de4153595c0977d')) AS t(user_id) "
                                "WHERE user_id = $u) AS hits", fmt="json", params=params)
    assert code == 0, err
    assert json.loads(out) == [{"i": 43, "d": 1.0, "it": "42", "dt": "0.5", "z": "0123", "e": "12e3", "hits": 1}]


# --------------------------------------------------------------------------- json
def test_json_writes_nan_and_infinity_as_null_at_any_depth() -> None:
    table = duckdb.sql("SELECT 'nan'::DOUBLE AS a, 'inf'::FLOAT AS b, [1.5, '-inf'::DOUBLE] AS l, "
                       "{'x': 'nan'::DOUBLE, 'y': 2.0::DOUBLE} AS s, 3.5::DOUBLE AS c").to_arrow_table()

    def refuse(word: str) -> float:
        raise ValueError(word)

    rows = json.loads(_write(table, "json"), parse_constant=refuse)
    assert rows == [{"a": None, "b": None, "l": [1.5, None], "s": {"x": None, "y": 2.0}, "c": 3.5}]


# --------------------------------------------------------------------------- parquet
def test_parquet_refuses_duplicate_names_before_writing() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["dt", "dt"])
    sink = io.BytesIO()
    with pytest.raises(ValueError, match=r"--format parquet: the result has more than one column named 'dt'"):
        output.write_result(table.schema, iter(table.to_batches()), "parquet", sink)
    assert sink.getvalue() == b""


def test_parquet_writes_intervals_and_unions_as_text_and_the_rest_as_is(tmp_path) -> None:
    table = duckdb.sql("SELECT INTERVAL '1 year 2 months 3 days 04:05:06.5' AS span, union_value(a := 7) AS u, "
                       "[INTERVAL 2 DAY] AS l, {'x': union_value(a := 1)} AS s, 5 AS n, 'x' AS t").to_arrow_table()
    read = pq.read_table(io.BytesIO(_write(table, "parquet")))
    assert read.schema.field("n").type == pa.int32() and read.schema.field("span").type == pa.string()
    assert read.to_pylist() == [{"span": "1 year 2 months 3 days 04:05:06.5", "u": "7",
                                 "l": '["2 days"]', "s": '{"x": 1}', "n": 5, "t": "x"}]
    empty = duckdb.sql("SELECT union_value(a := 7) AS u, INTERVAL 1 DAY AS span LIMIT 0").to_arrow_table()
    read = pq.read_table(io.BytesIO(_write(empty, "parquet")))
    assert read.num_rows == 0 and read.schema.names == ["u", "span"]


def test_parquet_without_such_columns_is_written_as_before() -> None:
    table = duckdb.sql("SELECT range AS n, range::VARCHAR AS t, unhex('00ff') AS b FROM range(5)").to_arrow_table()
    expected = io.BytesIO()
    from formats.files import PARQUET_OPTIONS
    with pq.ParquetWriter(expected, table.schema, **PARQUET_OPTIONS) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    assert _write(table, "parquet") == expected.getvalue()


# --------------------------------------------------------------------------- csv
@pytest.mark.parametrize(("months", "days", "micros"), [
    (0, 0, 0), (14, 3, 14_706_789_000), (-14, 0, 0), (-1, 0, 0), (12, 0, 0), (1, 1, 1), (-1, -1, -1),
    (0, 0, 90_000_000_000), (0, -1, -1_500_000), (0, 0, 500_000), (5, -40, 86_399_999_999), (-25, 1, -10**15),
])
def test_an_interval_is_written_as_duckdb_writes_it(months: int, days: int, micros: int) -> None:
    table = duckdb.connect().sql("SELECT to_months($m) + to_days($d) + to_microseconds($u) AS span, "
                                 "span::VARCHAR AS text", params={"m": months, "d": days, "u": micros}).to_arrow_table()
    interval, text = table.select(["span"]), table.column("text")[0].as_py()
    assert output.interval_text(*interval.column(0)[0].as_py()) == text
    assert _write(interval, "csv").decode().splitlines() == ['"span"', f'"{text}"']


def test_csv_writes_blobs_as_hex_as_json_does() -> None:
    table = duckdb.sql("SELECT * FROM (VALUES (unhex('00ff10'), 1), (NULL, 2), (''::BLOB, 3), ('\\x00ab'::BLOB, 4)) "
                       "AS t(b, n)").to_arrow_table()
    lines = _write(table, "csv").decode().splitlines()
    assert lines == ['"b","n"', '"00ff10",1', ",2", '"",3', '"006162",4']
    assert [row["b"] for row in json.loads(_write(table, "json"))] == ["00ff10", None, "", "006162"]
    sliced = table.slice(1, 3)   # an array with an offset into its buffers
    assert _write(sliced, "csv").decode().splitlines() == ['"b","n"', ",2", '"",3', '"006162",4']
    fixed = pa.table({"b": pa.array([b"\x01\x02", None], pa.binary(2))})
    assert _write(fixed, "csv").decode().splitlines() == ['"b"', '"0102"', ""]


def test_csv_of_an_empty_result_with_a_union_is_its_header() -> None:
    table = duckdb.sql("SELECT union_value(a := 7) AS u, INTERVAL 1 DAY AS span, 1 AS n LIMIT 0").to_arrow_table()
    assert _write(table, "csv") == b'"u","span","n"\n'


# --------------------------------------------------------------------------- the version's lock, $TMPDIR
def test_hold_for_reading_waits_at_most_wait_s(home: DataHome) -> None:
    version = dataset.resolve_version(home)
    foreign = os.open(version, os.O_RDONLY | os.O_DIRECTORY)   # another open file description: conflicts here too
    fcntl.flock(foreign, fcntl.LOCK_EX)
    try:
        with pytest.raises(dataset.VersionBusy, match=r"still held exclusively by pid \d+"):
            dataset.hold_for_reading(version, wait_s=0.05)
        with pytest.raises(dataset.VersionBusy), dataset.reading_version(home, wait_s=0):
            pass
        with pytest.raises(engine.QueryFailed, match=r"time limit of 0\.1 s while it waited to read the version.*"
                                                     r"--timeout SECONDS raises it"):
            engine.execute(home, "SELECT 1", limits=engine.QueryLimits(timeout_s=0.1))
    finally:
        os.close(foreign)
    fd = dataset.hold_for_reading(version, wait_s=0.05)   # free now: taken at once
    assert fd is not None
    os.close(fd)
    assert engine.execute(home, "SELECT count(*) AS n FROM pairs",
                          limits=engine.QueryLimits(timeout_s=30)).column("n").to_pylist() == [90]


def test_the_private_folder_avoids_a_backslash_in_tmpdir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = tmp_path / "t\\mp"
    odd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(odd))
    folder = engine._private_folder()
    try:
        assert "\\" not in folder and os.path.dirname(folder) == "/tmp"
    finally:
        os.rmdir(folder)
    assert list(odd.iterdir()) == []   # the one tried there was removed
