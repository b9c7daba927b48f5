"""fix34e: the defects of review rev34e (``tests/unit/test_hostile_rev34e.py``), tested beyond the review's tests.

- A user-given output that replaces one of the user's own files keeps that file's permission bits and group
  (:func:`formats.outputs.give_replaced_mode`): ``query --output``, ``score --output`` and the files of an
  ``export`` / ``rerank`` folder; the temporary file is 0600 while it is written over an existing file; a new file
  (or another account's) gets ``0666 & ~umask``.
- A signal while DuckDB computes a result that has no row yet (an aggregate) ends the query as Ctrl-C does
  (:func:`pipelines.query.engine._stop_if_signalled`), not with ``RuntimeError('Query interrupted')``; a time
  limit still names ``--timeout``.
- A ``PIVOT`` whose values DuckDB finds from the data (a MULTI statement) is checked as the same statement with a
  placeholder ``IN`` list (:func:`pipelines.query.guard._pivot_values_spelt`) and runs; a writing statement that
  holds one is still refused.

Real DuckDB, a small published home (``make_home`` + ``publish_dataset``), real subprocesses for the signal.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from test_publish_fixtures import make_home

from formats.outputs import open_output_file, open_output_files
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import engine as query
from pipelines.query.guard import PIVOT_VALUES_PLACEHOLDER, QueryRefused, _pivot_values_spelt, check_read_only

HEAVY = "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("fix34e") / "home", num_rankings=40, seed=34)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home


def _query(home, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    return query.run_from_args(parser.parse_args(list(argv)), home)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# --------------------------------------------------------------------------- modes of replaced outputs
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o755, 0o666])
def test_a_replaced_file_keeps_its_permission_bits(tmp_path: Path, umask022, mode: int) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(mode)
    with open_output_file(target) as handle:
        handle.write(b"new\n")
    assert target.read_text() == "new\n" and _mode(target) == mode


def test_special_bits_are_not_carried_over(tmp_path: Path, umask022) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(0o4755)
    with open_output_file(target) as handle:
        handle.write(b"new\n")
    assert _mode(target) == 0o755


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_still_gets_the_umask_mode(tmp_path: Path, umask: int, expected: int) -> None:
    old = os.umask(umask)
    try:
        with open_output_file(tmp_path / "new.csv") as handle:
            handle.write(b"x\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.csv") == expected


def test_the_temporary_file_is_private_while_it_replaces_a_file(tmp_path: Path, umask022) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(0o600)
    with open_output_file(target) as handle:
        handle.write(b"secret rows\n")
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1 and _mode(temps[0]) == 0o600
    assert _mode(target) == 0o600


def test_a_chmod_while_the_result_is_written_counts(tmp_path: Path, umask022) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(0o644)
    with open_output_file(target) as handle:
        handle.write(b"new\n")
        target.chmod(0o600)            # the user makes it private while the query runs
    assert _mode(target) == 0o600


def test_a_failed_write_leaves_the_file_and_its_mode(tmp_path: Path, umask022) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(0o600)
    with pytest.raises(RuntimeError), open_output_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("query failed")
    assert target.read_text() == "old\n" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file a group this account is not in")
def test_the_group_is_kept_too(tmp_path: Path, umask022) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    other_gid = os.getegid() + 4242
    os.chown(target, -1, other_gid)
    target.chmod(0o640)
    with open_output_file(target) as handle:
        handle.write(b"new\n")
    assert os.lstat(target).st_gid == other_gid and _mode(target) == 0o640


def test_a_folder_of_outputs_keeps_each_files_mode(tmp_path: Path, umask022) -> None:
    folder = tmp_path / "export"
    for _ in range(2):
        with open_output_files(folder, ["a.parquet", "b.parquet"]) as open_file:
            for name in ("a.parquet", "b.parquet"):
                with open_file(name) as handle:
                    handle.write(name.encode())
        (folder / "a.parquet").chmod(0o600)
    assert _mode(folder / "a.parquet") == 0o600 and _mode(folder / "b.parquet") == 0o644


def test_score_output_over_a_private_file_stays_private(tmp_path: Path, umask022) -> None:
    from training.score_cli import write_rows

    target = tmp_path / "scores.parquet"
    target.write_bytes(b"earlier scores")
    target.chmod(0o600)
    schema = pa.schema([("image", pa.string()), ("score", pa.float64())])
    write_rows([{"image": "a.png", "score": 0.5}], schema, target, user_given=[])
    assert _mode(target) == 0o600
    assert pa.parquet.read_table(target).to_pylist() == [{"image": "a.png", "score": 0.5}]


def test_query_output_json_over_a_group_readable_file(published, tmp_path: Path, umask022,
                                                      capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "r.json"
    target.write_text("[]")
    target.chmod(0o640)
    assert _query(published, "SELECT count(*) AS n FROM pairs", "--format", "json", "--output", str(target)) == 0
    capsys.readouterr()
    assert '"n"' in target.read_text() and _mode(target) == 0o640


# --------------------------------------------------------------------------- signals while DuckDB computes
def test_a_query_interrupted_runtime_error_becomes_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt):
        query._stop_if_signalled(RuntimeError("Query interrupted"))
    query._stop_if_signalled(RuntimeError("something else"))       # not ours: left to the caller
    query._stop_if_signalled(duckdb.InterruptException("INTERRUPT Error: Interrupted!"))   # a time limit's


def _default_signals() -> None:
    """In the child: SIGINT, SIGTERM and SIGHUP as a shell's foreground command finds them (the test process may
    hold them ignored or blocked: a blocked SIGINT waited for the time limit)."""
    ending = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for sig in ending:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ending)


def _aggregate_child(published, tmp_path: Path, entry: str) -> subprocess.Popen:
    out_dir, spill_root = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    spill_root.mkdir()
    if entry == "cli":
        code = ("import sys; from dagster_project.cli import main; sys.exit(main(['query', '--home', sys.argv[1], "
                f"{HEAVY!r}, '--timeout', '120', '--format', 'csv', '--output', sys.argv[2]]))")
    else:
        code = ("import sys; from formats.commands import run_command; from pipelines.query.engine import main; "
                "sys.exit(run_command('python -m pipelines.query.engine', main, ['--home', sys.argv[1], "
                f"{HEAVY!r}, '--timeout', '120', '--format', 'csv', '--output', sys.argv[2]]))")
    child = subprocess.Popen([sys.executable, "-c", code, str(published.root), str(out_dir / "out.csv")],
                             env={**os.environ, "TMPDIR": str(spill_root)}, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_default_signals)
    deadline = time.monotonic() + 120
    while not list(spill_root.iterdir()) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert child.poll() is None
    return child


@pytest.mark.parametrize("entry, sig, code, line", [
    ("cli", signal.SIGINT, 130, "interrupted"),
    ("cli", signal.SIGHUP, 129, "hung up"),
    ("module", signal.SIGINT, 130, "interrupted"),
])
def test_other_signals_during_an_aggregate(published, tmp_path: Path, entry: str, sig: int, code: int,
                                           line: str) -> None:
    child = _aggregate_child(published, tmp_path, entry)
    child.send_signal(sig)
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail("no exit after the signal:\n" + child.communicate()[1][-3000:])
    assert "Traceback" not in err, err[-2000:]
    assert child.returncode == code and line in err, (child.returncode, err[-2000:])
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []


def test_a_time_limit_during_an_aggregate_still_names_the_flag(published, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert _query(published, HEAVY, "--timeout", "1", "--format", "csv", "--output", str(tmp_path / "o.csv")) == 1
    err = capsys.readouterr().err
    assert "time limit of 1 s" in err and "--timeout" in err
    assert not (tmp_path / "o.csv").exists()


# --------------------------------------------------------------------------- PIVOT without an IN list
@pytest.mark.parametrize("sql, spelt", [
    ("PIVOT t ON a USING count(*)", f"PIVOT t ON a {PIVOT_VALUES_PLACEHOLDER}USING count(*)"),
    ("PIVOT t ON a, b", f"PIVOT t ON a{PIVOT_VALUES_PLACEHOLDER}, b{PIVOT_VALUES_PLACEHOLDER}"),
    ("PIVOT t ON a IN ('x'), b GROUP BY c", f"PIVOT t ON a IN ('x'), b {PIVOT_VALUES_PLACEHOLDER}GROUP BY c"),
    ("SELECT * FROM (PIVOT t ON a) p", f"SELECT * FROM (PIVOT t ON a{PIVOT_VALUES_PLACEHOLDER}) p"),
    ("PIVOT t ON a -- 'ON b'", f"PIVOT t ON a{PIVOT_VALUES_PLACEHOLDER} -- 'ON b'"),
    ("PIVOT t ON a;", f"PIVOT t ON a{PIVOT_VALUES_PLACEHOLDER};"),
    ("SELECT 'PIVOT t ON a'", "SELECT 'PIVOT t ON a'"),
    ("FROM t PIVOT (count(*) FOR a IN ('x'))", "FROM t PIVOT (count(*) FOR a IN ('x'))"),
])
def test_pivot_values_spelt(sql: str, spelt: str) -> None:
    assert _pivot_values_spelt(sql) == spelt


@pytest.fixture
def con():
    connection = duckdb.connect()
    connection.execute("CREATE TABLE pairs AS SELECT 'train' AS split, true AS has_label")
    yield connection
    connection.close()


@pytest.mark.parametrize("sql", [
    "PIVOT pairs ON split USING count(*)",
    "WITH p AS (PIVOT pairs ON split USING count(*)) SELECT * FROM p",
    "EXPLAIN PIVOT pairs ON split USING count(*)",
    "SELECT * FROM (PIVOT pairs ON split) a JOIN (PIVOT pairs ON has_label) b ON true",
])
def test_read_only_pivots_pass_the_guard(con, sql: str) -> None:
    assert con.extract_statements(sql)[0].type.name == "MULTI"
    check_read_only(con, sql)


@pytest.mark.parametrize("sql, said", [
    ("COPY (PIVOT pairs ON split USING count(*)) TO 'x.csv'", "COPY statements are refused"),
    ("CREATE TABLE x AS PIVOT pairs ON split USING count(*)", "statements are refused"),
    ("WITH w AS (COPY (PIVOT pairs ON split) TO 'x.csv') SELECT 1", "refused"),
    ("PIVOT pairs ON split || '(' USING count(*)", "spell the values out"),
])
def test_writing_pivots_are_still_refused(con, sql: str, said: str) -> None:
    with pytest.raises((QueryRefused, duckdb.Error)) as caught:
        check_read_only(con, sql)
    assert said in str(caught.value)


def test_pivots_run_in_every_form(published, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "p.csv"
    sql = "SELECT * FROM (PIVOT pairs ON split USING count(*) GROUP BY has_label) ORDER BY has_label"
    assert _query(published, sql, "--format", "csv", "--output", str(target)) == 0
    header = target.read_text().splitlines()[0].replace('"', "").split(",")
    assert header[0] == "has_label" and {"train", "test", "validation"} <= set(header)
    # a column DuckDB gives as text (INTERVAL): the re-selected statement is a MULTI one too, written as a plain one
    assert _query(published, "SELECT INTERVAL 1 DAY AS d", "--format", "json") == 0
    plain = json.loads(capsys.readouterr().out)[0]["d"]
    assert _query(published, "PIVOT (SELECT split, INTERVAL 1 DAY AS d FROM pairs) ON split USING first(d)",
                  "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)[0]["train"] == plain
    # the table: one column per value
    assert _query(published, "PIVOT pairs ON split USING count(*)") == 0
    assert "validation_unique" in capsys.readouterr().out
    # parameters in its source: DuckDB's own message, which says to list the values
    assert _query(published, "PIVOT (SELECT * FROM pairs WHERE has_label = $h) ON split USING count(*)",
                  "--param", "h:text=true") == 1
    assert "PIVOT values must be manually specified" in capsys.readouterr().err
