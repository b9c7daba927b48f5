"""``pickapic query``: a ``--param`` name given twice, and a ``--param`` given to a ``--named`` query (none takes one),
are refused in one line with exit 2 before anything runs (the last value silently won; DuckDB answered "argument
count mismatch")."""
from __future__ import annotations

import argparse

import pytest
from test_publish_fixtures import published_home

from pipelines.query import engine as query


def _run(home, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    return query.run_from_args(parser.parse_args(argv), home=home)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return published_home(tmp_path_factory.mktemp("params-once"))


def test_a_param_given_twice_is_refused(home, capsys) -> None:
    assert _run(home, ["SELECT $u::VARCHAR AS u", "--param", "u=1", "--param", "u:text=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--param u given more than once" in err


def test_a_param_to_a_named_query_is_refused(home, capsys) -> None:
    assert _run(home, ["--named", "drop_reasons", "--param", "a=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'drop_reasons' takes no --param" in err and "mismatch" not in err


def test_distinct_params_still_run(home, capsys) -> None:
    assert _run(home, ["SELECT $u::VARCHAR || $v::VARCHAR AS uv", "--param", "u=1", "--param", "v=0123",
                       "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == '"10123"'
