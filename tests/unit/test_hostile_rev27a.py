"""Hostile review rev27a of commit 8a28bde: the analyst's side of the published dataset, as other accounts and other
tools use it over a year.

Reviewed, by running the real ``pickapic query`` CLI (``dagster_project.cli``), ``pipelines.query.engine`` and
``pipelines.query.output``, the named queries of ``sql/queries/`` and plain DuckDB over a real published version
(``tests/unit/test_publish_fixtures.published_home``): query names and ``--param`` values (odd names, values that
look like numbers or like SQL), result types (intervals, blobs, NaN, duplicate column names) in every
``--format``, huge results (peak RSS of 20 million rows to csv/parquet and 2 million to json stays ~140-160 MB),
the sandbox (``query()``, ``getenv``, ``read_text``/``glob`` outside the version, ``duckdb_secrets``), homes and
``$TMPDIR`` whose paths hold glob characters, quotes, commas, braces and backslashes, the query run as another
account (``nobody``, forked after the imports), a version held by another tool's exclusive ``flock``, and
``--output`` onto existing files, links and paths inside the home.

Checked and found sound (no test): ``--param`` values are bound, never spliced (``'); COPY ... --`` comes back as
text); ``query('COPY ...')``/``query('SET ...')`` are refused by DuckDB; names that differ only in case are refused;
every named query runs as ``nobody`` on a 0644/0755 version; sizes.json, manifest ``splits``, ``meta/shards`` and the
sidecars agree; a refused or failed ``--output`` leaves no temporary file; no secret reaches a query's error (the
command reads no settings). Left alone as designed: a replaced 0600 ``--output`` file gets the umask's mode (tested
in test_output_paths.py); errors name files by the query's private alias path (README section 7).

Filed below (each confirmed by running; every test stated the correct behaviour as a strict xfail; all fixed the same day by fix27a).
"""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import published_home

from formats.dataset import resolve_version
from formats.home import DataHome
from pipelines.query import engine

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return published_home(tmp_path_factory.mktemp("rev27a") / "home")


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _run(home: DataHome, sql: str, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = engine.run_query(home, sql, stdout=out, stderr=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def _run_args(home: DataHome, *argv: str) -> tuple[int, str, str]:
    """``pickapic query ARGV`` parsed by the command's own parser (``--param`` as the CLI converts it)."""
    parser = argparse.ArgumentParser()
    engine.add_arguments(parser)
    args = parser.parse_args(list(argv))
    params = dict(args.param) or None
    return _run(home, args.sql, fmt=args.fmt, params=params)


# --------------------------------------------------------------------------- wrong results
def test_a_param_that_only_looks_like_a_number_keeps_its_text(home: DataHome) -> None:
    code, out, err = _run_args(home, "--format", "csv", "--param", "u=0123456789012345", "--param", "e=12e3",
                               "--param", "n=nan", "SELECT $u::VARCHAR AS u, $e::VARCHAR AS e, $n::VARCHAR AS n")
    assert code == 0, err
    assert out.splitlines()[1] == '"0123456789012345","12e3","nan"'
    code, out, err = _run_args(home, "--format", "csv", "--param", "u=0123",
                               "SELECT count(*) AS n FROM (VALUES ('0123'), ('4de4153595c0977d')) AS t(user_id) "
                               "WHERE user_id = $u")
    assert code == 0, err
    assert out.splitlines()[1] == "1"


def test_json_output_is_valid_json_when_a_value_is_nan_or_infinite(home: DataHome) -> None:
    code, out, err = _run(home, "SELECT split, corr(label_0, 1.0) AS c, 'inf'::DOUBLE AS big FROM pairs "
                                "WHERE split = 'train' GROUP BY split", fmt="json")
    assert code == 0, err

    def refuse(word: str) -> float:
        raise ValueError(f"not JSON: {word}")

    rows = json.loads(out, parse_constant=refuse)
    assert rows[0]["split"] == "train"
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in rows[0].values())


def test_parquet_output_with_a_duplicate_column_name_is_refused_or_readable(home: DataHome, tmp_path: Path) -> None:
    target = tmp_path / "joined.parquet"
    code, _, err = _run(home, "SELECT * FROM pairs AS p JOIN images AS i ON i.image_uid = p.image_0_uid",
                        fmt="parquet", output=target)
    if code == 0:
        table = pq.read_table(target)
        assert len(set(table.column_names)) == table.num_columns and table.num_rows > 0
    else:
        assert code == 2 and "dt" in err and not target.exists(), err


# --------------------------------------------------------------------------- crashes
def test_csv_output_of_an_interval_is_written(home: DataHome, tmp_path: Path) -> None:
    target = tmp_path / "span.csv"
    run = _cli("query", "--home", str(home.root), "--format", "csv", "--output", str(target),
               "SELECT max(created_at) - min(created_at) AS span FROM pairs")
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    assert target.read_text().splitlines()[0] == '"span"' and len(target.read_text().splitlines()) == 2


def test_parquet_output_of_an_interval_is_written_or_refused_in_one_line(home: DataHome, tmp_path: Path) -> None:
    target = tmp_path / "span.parquet"
    run = _cli("query", "--home", str(home.root), "--format", "parquet", "--output", str(target),
               "SELECT max(created_at) - min(created_at) AS span FROM pairs")
    assert "Traceback" not in run.stderr, run.stderr
    if run.returncode == 0:
        assert pq.read_table(target).num_rows == 1
    else:
        assert run.returncode in (1, 2) and "span" in run.stderr and len(run.stderr.strip().splitlines()) == 1
        assert not target.exists()


# --------------------------------------------------------------------------- limits and environment
def test_timeout_bounds_the_wait_for_a_version_held_exclusively(home: DataHome) -> None:
    version = resolve_version(home)
    foreign = os.open(version, os.O_RDONLY | os.O_DIRECTORY)   # another tool's exclusive flock
    fcntl.flock(foreign, fcntl.LOCK_EX)
    proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "query", "--home", str(home.root),
                             "--timeout", "1", "--format", "csv", "SELECT count(*) AS n FROM pairs"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            out, err = proc.communicate(timeout=20)   # a liveness bound far beyond --timeout 1, not a measurement
            ended_by_itself = True
        except subprocess.TimeoutExpired:
            ended_by_itself = False
    finally:
        os.close(foreign)                             # the query, if still waiting, goes on now
        if proc.poll() is None:
            out, err = proc.communicate(timeout=120)
    assert ended_by_itself, f"the query under --timeout 1 still waited after 20 s: {err!r}"
    assert proc.returncode == 1 and "--timeout" in err, (proc.returncode, out, err)


def test_query_answers_with_a_backslash_in_tmpdir(home: DataHome, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp\\dir"
    tmpdir.mkdir()
    run = _cli("query", "--home", str(home.root), "--format", "csv", "SELECT count(*) AS n FROM pairs",
               env={**ENV, "TMPDIR": str(tmpdir)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ['"n"', "90"]


# --------------------------------------------------------------------------- clarity
def test_csv_output_of_a_binary_column_is_written(home: DataHome) -> None:
    code, out, err = _run(home, "SELECT unhex(sha256_0) AS digest, '\\x00ab'::BLOB AS small FROM pairs LIMIT 2",
                          fmt="csv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == '"digest","small"' and len(lines) == 3
    assert "\x00" not in out
