"""Fixes of fix35b (the command line): ``pickapic query --format json`` writes an INTERVAL as DuckDB's own text
(``1 year 2 months 3 days 04:05:06.5``, as csv, parquet and a table write it) at any depth, never the anonymous
``[months, days, nanoseconds]`` list; every other DuckDB type keeps its documented lossless, valid JSON form."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import published_home

from formats.home import DataHome
from pipelines.query import engine, output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("fix35b") / "home")


def _run(home: DataHome, sql: str, fmt: str, target: Path | None = None) -> bytes:
    out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, sql, fmt=fmt, output=target, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return target.read_bytes() if target is not None else out.getvalue().encode("utf-8")


def _strict(text: str | bytes) -> object:
    def refuse(word: str) -> object:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


INTERVALS = ("SELECT INTERVAL '1 year 2 months 3 days 04:05:06.5' AS i, [to_days(1), NULL] AS l, "
             "{'x': -to_months(14)} AS s, MAP {1: to_hours(3000000)} AS m, to_hours(3000000) AS big")


def test_json_writes_an_interval_as_duckdbs_text_at_any_depth(home: DataHome) -> None:
    rows = _strict(_run(home, INTERVALS, "json"))
    assert rows == [{"i": "1 year 2 months 3 days 04:05:06.5", "l": ["1 day", None], "s": {"x": "-1 year -2 months"},
                     "m": [[1, "3000000:00:00"]], "big": "3000000:00:00"}]
    # the text reads back exactly as the value it was
    con = duckdb.connect()
    assert con.execute("SELECT $t::INTERVAL = INTERVAL '1 year 2 months 3 days 04:05:06.5'",
                       {"t": rows[0]["i"]}).fetchone()[0]


def test_csv_and_parquet_json_text_write_a_nested_interval_as_its_text(home: DataHome, tmp_path: Path) -> None:
    row = list(csv.reader(io.StringIO(_run(home, INTERVALS, "csv").decode())))[1]
    assert row == ["1 year 2 months 3 days 04:05:06.5", '["1 day", null]', '{"x": "-1 year -2 months"}',
                   '[[1, "3000000:00:00"]]', "3000000:00:00"]
    # parquet holds the texts in the column's own shape (a list of text is a list, no longer JSON text)
    read = pq.read_table(io.BytesIO(_run(home, INTERVALS, "parquet", tmp_path / "i.parquet")))
    assert read.to_pylist() == [{"i": "1 year 2 months 3 days 04:05:06.5", "l": ["1 day", None],
                                 "s": {"x": "-1 year -2 months"}, "m": [(1, "3000000:00:00")], "big": "3000000:00:00"}]


def test_write_result_of_an_arrow_interval_writes_its_text() -> None:
    """An Arrow interval handed to write_result itself (not selected by the query as text) is written the same."""
    table = duckdb.sql("SELECT to_days(3) + to_microseconds(1500000) AS i, [to_months(13)] AS l").to_arrow_table()
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), "json", sink)
    assert _strict(sink.getvalue()) == [{"i": "3 days 00:00:01.5", "l": ["1 year 1 month"]}]
    sink = io.BytesIO()
    output.write_result(table.schema, iter(table.to_batches()), "csv", sink)
    assert sink.getvalue().decode().splitlines()[1] == '"3 days 00:00:01.5","[""1 year 1 month""]"'


def test_every_other_type_has_its_documented_lossless_json_form(home: DataHome) -> None:
    sql = ("SELECT TIME '12:34:56.789' AS t, TIMETZ '12:00:00+05' AS tz, "
           "'4ac7a9e9-607c-4c8a-84f3-843f0191a3fd'::UUID AS u, 123.4500::DECIMAL(10,4) AS d, unhex('00ff41') AS b, "
           "170141183460469231731687303715884105727::HUGEINT AS h, 18446744073709551615::UBIGINT AS ub, "
           "MAP {'k': 1} AS m, {'a': [1, NULL]} AS s, 'nan'::DOUBLE AS nan, ['-inf'::DOUBLE] AS l")
    assert _strict(_run(home, sql, "json")) == [{
        "t": "12:34:56.789000", "tz": "12:00:00+05", "u": "4ac7a9e9-607c-4c8a-84f3-843f0191a3fd",
        "d": "123.4500", "b": "00ff41", "h": "170141183460469231731687303715884105727",
        "ub": 18446744073709551615, "m": [["k", 1]], "s": {"a": [1, None]}, "nan": None, "l": [None]}]


# --------------------------------------------------------------------------- an up-to-date build shows no bar
def test_a_progress_bar_that_started_no_run_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    from dagster_project.progress import build_progress

    with build_progress(None) as progress:
        progress.total(0)
    assert capsys.readouterr().out == ""
    with build_progress(None) as progress:
        progress.total(2)
        progress("ingest + fingerprint 2023-03-01")
        progress("curate, split and publish")
    shown = capsys.readouterr().out
    assert "done" in shown and "2/2 runs" in shown


def test_a_build_of_an_up_to_date_home_prints_only_that_it_is(built_home: DataHome, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """The demo's home built with the model; a plain build plans (its stamp was the demo's) and runs nothing."""
    from dagster_project.cli import main
    from tests.conftest import copy_home

    home = copy_home(built_home, tmp_path / "home")
    capsys.readouterr()
    assert main(["build", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("up to date: every asset of"), out
    assert "runs" not in out.replace("nothing ran", "") and "done" not in out, out


# --------------------------------------------------------------------------- a demo run again reuses its home
def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_simulation_run_again_leaves_the_files_holding_its_bytes_as_they_were(tmp_path: Path) -> None:
    from simulator import SimConfig, simulate
    from simulator.export import write_unless_same

    home = DataHome.at(tmp_path / "home")
    sim = SimConfig(days=1, users=6, rankings_per_day=10, image_size=32, seed=3, workers=1)
    simulate(home, sim)
    before = _files(home.raw)
    assert any(name.startswith("images/") for name in before) and any("app_logs" in name for name in before)
    simulate(home, sim)
    assert _files(home.raw) == before
    # a file with other bytes, or a link, is still replaced
    target = tmp_path / "f"
    target.write_bytes(b"old")
    assert write_unless_same(target, b"new") and target.read_bytes() == b"new"
    assert not write_unless_same(target, b"new")
    (tmp_path / "other").write_bytes(b"new")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "other")
    assert write_unless_same(link, b"new") and not link.is_symlink() and link.read_bytes() == b"new"


def test_a_demo_run_again_on_its_home_runs_nothing_and_says_what_it_reused(built_home: DataHome, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    import dagster as dg

    from dagster_project.cli import main
    from tests.conftest import DEMO_ARGS, copy_home

    home = copy_home(built_home, tmp_path / "home")

    def runs() -> int:
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
            return len(instance.get_run_records())

    recorded, raw, latest = runs(), _files(home.raw), (home.root / "datasets").rglob("manifest.json")
    capsys.readouterr()
    assert main(["demo", "--home", str(home.root), *DEMO_ARGS]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert runs() == recorded
    assert _files(home.raw) == raw
    assert "up to date: the raw zone was already this simulation's" in said and "nothing ran" in said, said
    assert sorted((home.root / "datasets").rglob("manifest.json")) == sorted(latest)
