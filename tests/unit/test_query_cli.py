"""``pickapic query``: views over one version, named queries, formats, errors, and no writes."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import SECRET_EMAIL, make_home

from formats.dataset import resolve_version
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import engine as query
from pipelines.query import output

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit is not a package: reach tests/
from tests.hostile_corpus import HOSTILE_QUERIES  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("query") / "home", num_rankings=90, seed=21)
    old = publish_dataset(home, PublishConfig(workers=1, fsync=False, seed=1))
    new = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home, old, new


def _run(home, *args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = query.run_query(home, *args, stdout=out, stderr=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_views_cover_the_version(built) -> None:
    home, _, new = built
    counts = query.execute(home, "SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM shards) AS shards, "
                                 "(SELECT count(*) FROM splits_summary) AS splits, (SELECT count(*) FROM images) AS images, "
                                 "(SELECT count(*) FROM decisions) AS decisions, (SELECT count(*) FROM quarantine) AS q").to_pylist()[0]
    assert counts["pairs"] == sum(new.pairs.values()) and counts["shards"] == sum(new.shards.values())
    assert counts["splits"] == len(new.pairs) and counts["images"] > 0 and counts["decisions"] == 3 and counts["q"] == 2
    summary = query.execute(home, "SELECT split, num_pairs FROM splits_summary").to_pylist()
    per_split = {r["split"]: r["num_pairs"] for r in summary}
    assert per_split == new.pairs
    columns = query.execute(home, "DESCRIBE quarantine").column("column_name").to_pylist()
    assert "raw_text" not in columns


def test_every_named_query_runs(built) -> None:
    home, _, _ = built
    names = query.named_queries()
    for required in ("win_rate_by_model", "tie_rate_by_split", "users_prompts_per_split", "leakage_audit", "drop_reasons"):
        assert required in names and names[required]
    for name in names:
        code, out, err = _run(home, named=name)
        assert code == 0, (name, err)
        assert "┃" in out and "row" in out, name
    leakage = query.execute(home, query.sql_text("queries/leakage_audit")).to_pylist()
    assert [(r["split_a"], r["split_b"]) for r in leakage] == [("train", "validation"), ("train", "test"), ("validation", "test")]
    assert all(r["shared_prompts"] == 0 for r in leakage)        # the fixture splits by prompt
    ties = {r["split"]: r for r in query.execute(home, query.sql_text("queries/tie_rate_by_split")).to_pylist()}
    direct = query.execute(home, "SELECT split, count(*) FILTER (WHERE label_0 = 0.5) AS t FROM pairs GROUP BY split").to_pylist()
    assert {r["split"]: r["t"] for r in direct} == {s: r["ties"] for s, r in ties.items()}


def test_formats(built, tmp_path: Path) -> None:
    home, _, new = built
    sql = "SELECT split, key, created_at, label_0, jpg_0_size FROM pairs ORDER BY key"
    code, out, _ = _run(home, sql, fmt="csv")
    assert code == 0 and pacsv.read_csv(io.BytesIO(out.encode())).num_rows == sum(new.pairs.values())
    code, out, _ = _run(home, sql, fmt="json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == sum(new.pairs.values()) and isinstance(rows[0]["label_0"], float)
    assert "T" in rows[0]["created_at"]
    target = tmp_path / "out.parquet"
    assert _run(home, sql, fmt="parquet", output=target)[0] == 0
    assert pq.read_table(target).num_rows == sum(new.pairs.values())
    assert _run(home, sql, fmt="parquet")[0] == 2                    # parquet needs --output
    text_file = tmp_path / "t.txt"
    assert _run(home, "SELECT * FROM images LIMIT 3", fmt="csv", output=text_file)[0] == 0
    assert text_file.read_text().count("\n") == 4                    # header + 3 rows; nested columns as JSON
    code, out, _ = _run(home, "SELECT 1 AS a, 'x' AS b")
    lines = out.splitlines()
    assert code == 0 and len({len(line) for line in lines[:-1]}) == 1     # aligned


def test_version_selection(built) -> None:
    home, old, new = built
    assert resolve_version(home).name == new.version
    code, out, _ = _run(home, "SELECT count(*) AS n FROM shards", version=old.version, fmt="json")
    assert code == 0 and json.loads(out)[0]["n"] == sum(old.shards.values())
    code, _, err = _run(home, "SELECT 1", version="2020-01-01-nothere")
    assert code == 2 and "not a complete published version" in err


def test_sql_errors_exit_nonzero_with_duckdb_message(built) -> None:
    home, _, _ = built
    code, out, err = _run(home, "SELECT no_such_column FROM pairs")
    assert code == 1 and out == "" and "no_such_column" in err and "Binder Error" in err
    code, _, err = _run(home, "SELEC 1")
    assert code == 1 and "Parser Error" in err
    code, _, err = _run(home, named="no_such_query")
    assert code == 2 and "win_rate_by_model" in err


@pytest.mark.parametrize("sql", [
    "COPY (SELECT * FROM pairs) TO '{root}/leak.csv'",
    "COPY (SELECT * FROM pairs) TO '/tmp/pickapic-leak.csv'",
    "CREATE TABLE t AS SELECT * FROM pairs",
    "CREATE TABLE t AS SELECT * FROM read_csv('{root}/../../../../../etc/passwd')",
    "ATTACH '{root}/x.duckdb' AS x",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "EXPORT DATABASE '{root}/dump'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_parquet('{home}/warehouse/split_pairs/data.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT 1; COPY (SELECT 1) TO '/tmp/pickapic-leak2.csv'",
])
def test_writes_and_outside_reads_are_refused(built, sql: str) -> None:
    home, _, _ = built
    root = resolve_version(home)
    before = sorted(p.name for p in root.rglob("*"))
    code, out, err = _run(home, sql.format(root=root, home=home.root))
    assert code != 0 and out == "" and err.startswith("error:")
    assert sorted(p.name for p in root.rglob("*")) == before
    assert not Path("/tmp/pickapic-leak.csv").exists() and not Path("/tmp/pickapic-leak2.csv").exists()


def test_query_results_hold_no_personal_data(built) -> None:
    home, _, _ = built
    code, out, _ = _run(home, "SELECT * FROM quarantine", fmt="json")
    assert code == 0 and SECRET_EMAIL not in out
    code, out, _ = _run(home, "SELECT * FROM decisions", fmt="json")
    assert code == 0 and SECRET_EMAIL not in out and "<email>" in out


def test_argparse_entry_point(built, capsys: pytest.CaptureFixture) -> None:
    home, _, new = built
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    assert query.run_from_args(parser.parse_args(["--list"]), home) == 0
    assert "leakage_audit" in capsys.readouterr().out
    args = parser.parse_args(["SELECT count(*) AS n FROM pairs WHERE split = $s", "--param", "s=train", "--format", "json"])
    assert query.run_from_args(args, home) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == new.pairs["train"]
    assert query.main(["--home", str(home.root), "--named", "tie_rate_by_split", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith('"split","pairs","ties","tie_rate"')


# --------------------------------------------------------------------------- limits, spill folder, streaming
def test_working_directory_tmp_is_not_readable(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's default spill folder `.tmp` (relative to the working directory) is readable by default; ours is private."""
    home, _, _ = built
    plain = tmp_path / "plain"
    (plain / ".tmp").mkdir(parents=True)
    (plain / ".tmp" / "secret.txt").write_text("top secret\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".tmp").symlink_to("/etc")
    for cwd in (plain, linked):
        monkeypatch.chdir(cwd)
        for name, sql, words in HOSTILE_QUERIES:
            if "cwd_tmp" not in name:
                continue
            code, out, err = _run(home, sql.format(cwd=cwd))
            assert code == 1 and out == "" and words in err, (cwd.name, name, err)
            assert "top secret" not in out + err and "passwd" not in out + err
        assert sorted(p.name for p in cwd.iterdir()) == [".tmp"]


def test_time_limit_stops_never_ending_queries(built) -> None:
    home, _, _ = built
    for name, sql, words in HOSTILE_QUERIES:
        if words != "time limit":
            continue
        started = time.monotonic()
        code, out, err = _run(home, sql, limits=query.QueryLimits(timeout_s=1))
        assert code == 1 and out == "" and "time limit of 1 s" in err and "--timeout" in err, (name, err)
        assert time.monotonic() - started < 30, name


def test_the_time_limit_also_counts_while_the_result_is_written(built) -> None:
    # DuckDB may be done long before the caller has written what it produced (a hostile review: 22 s of
    # rendering under --timeout 2): the next batch asked for after the limit is refused
    home, _, _ = built
    limits = query.QueryLimits(timeout_s=0.5)
    got = 0
    with pytest.raises(query.QueryFailed, match="time limit of 0.5 s"):
        with query.stream(home, "SELECT range FROM range(100000)", limits=limits, batch_rows=1000) as (_, batches):
            for batch in batches:
                got += batch.num_rows
                time.sleep(0.3)        # a slow writer
    assert 0 < got < 100000


def test_a_table_shows_at_most_a_thousand_characters_of_a_value() -> None:
    import pyarrow as pa

    text = output.render_table(pa.table({"s": ["x" * 2_000_000, "short"]}))
    assert len(text) < 20_000 and "(2000000 characters; --format csv|json|parquet for all)" in text and "short" in text


def test_a_wide_table_shows_the_rows_that_fit_in_its_character_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    table = pa.table({f"c{k}": [f"{k}-{i}-" + "x" * 90 for i in range(50)] for k in range(10)})   # ~1,000 chars a row
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 9_500)     # 5 rows as printed: 9 lines of ~990 characters
    text = output.render_table(table, total_rows=700)
    assert text.rstrip().endswith("700 rows, first 5 shown (use --format csv|json|parquet for all)")
    assert "0-4-" in text and "0-5-" not in text
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 10)      # one row and one column are always shown
    assert output.render_table(table).rstrip().endswith(
        "50 rows, first 1 shown; first 1 of 10 columns shown (use --format csv|json|parquet for all)")
    monkeypatch.setattr(output, "TABLE_MAX_CHARS", 10**9)
    assert output.render_table(table).rstrip().endswith("\n50 rows")
    assert output.render_table(table.select([])).rstrip().endswith("\n50 rows")   # no columns: every row "shown"


def test_memory_limit_and_private_spill_folder(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, _, _ = built
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    code, _, err = _run(home, "SELECT list(range) AS l FROM range(60000000)",
                        limits=query.QueryLimits(memory_limit="64MB", spill_limit="64MB"))
    assert code == 1 and "Out of Memory" in err and "--memory-limit 64MB" in err, err
    # a sort larger than the memory limit spills to the private folder and finishes. On DuckDB's 2 threads of a
    # 2-core machine: each thread pins blocks of its own, and the 16 threads of a 16-core one run out of 48 MB
    # before they spill (an "Out of Memory" that names --memory-limit), so the test sets the thread count
    real_connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, config=None, **k: real_connect(*a, config={**(config or {}),
                                                                                                 "threads": 2}, **k))
    code, out, err = _run(home, "SELECT sum(r * i) AS s FROM (SELECT range AS r, row_number() OVER (ORDER BY hash(range)) AS i "
                                "FROM range(3000000))", fmt="json", limits=query.QueryLimits(memory_limit="48MB"))
    assert code == 0, err
    expected = duckdb.sql("SELECT sum(r * i) AS s FROM (SELECT range AS r, row_number() OVER (ORDER BY hash(range)) AS i "
                          "FROM range(3000000))").fetchall()[0][0]
    assert int(json.loads(out)[0]["s"]) == expected
    assert list(spill_root.iterdir()) == []                           # the spill folder went with the query


def test_bad_limits_name_the_flag(built) -> None:
    home, _, _ = built
    code, _, err = _run(home, "SELECT 1", limits=query.QueryLimits(memory_limit="lots"))
    assert code == 2 and "--memory-limit" in err and "'lots'" in err
    code, _, err = _run(home, "SELECT 1", limits=query.QueryLimits(timeout_s=-1))
    assert code == 2 and "--timeout" in err


def test_table_output_streams(built, tmp_path: Path) -> None:
    """A 100M-row result printed as a table holds 1,000 rows, not 100M (measured as the child's peak RSS)."""
    home, _, _ = built
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
             "print(done.stdout[-300:]); print(done.stderr[-500:])")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "pipelines.query.engine", "--home", str(home.root),
                           "SELECT range FROM range(100000000)"], capture_output=True, text=True, timeout=300)
    code, peak_mb = map(int, done.stdout.split("\n", 1)[0].split())
    assert code == 0 and "100000000 rows, first 1000 shown" in done.stdout, done.stdout
    assert peak_mb < 450, f"peak RSS {peak_mb} MB for a streamed 100M-row table"


def test_streamed_formats_match_whole_table_writers(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-by-batch CSV / JSON / Parquet give what writing the whole table at once gave."""
    home, _, _ = built
    monkeypatch.setattr(query, "BATCH_ROWS", 7)                      # many batches
    sql = "SELECT * FROM pairs ORDER BY key"
    whole = query.execute(home, sql)
    code, out, _ = _run(home, sql, fmt="json")
    assert code == 0 and out == json.dumps(whole.to_pylist(), ensure_ascii=False, default=output._json_default,
                                           indent=1) + "\n"
    code, out, _ = _run(home, sql, fmt="csv")
    buffer = io.BytesIO()
    pacsv.write_csv(output._flatten_nested(whole), buffer)
    assert code == 0 and out == buffer.getvalue().decode("utf-8")
    target = tmp_path / "all.parquet"
    assert _run(home, sql, fmt="parquet", output=target)[0] == 0
    assert pq.read_table(target).equals(whole)
    empty = "SELECT key, label_0 FROM pairs WHERE false"
    assert _run(home, empty, fmt="json")[1] == "[]\n"
    assert _run(home, empty, fmt="csv")[1] == '"key","label_0"\n'
    assert _run(home, empty)[1].endswith("0 rows\n")


def test_output_says_how_many_rows_it_wrote(built, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home, _, new = built
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    target = tmp_path / "pairs.csv"
    assert query.run_from_args(parser.parse_args(["SELECT key FROM pairs", "--format", "csv", "--output", str(target),
                                                  "--timeout", "60", "--memory-limit", "512MB"]), home) == 0
    captured = capsys.readouterr()
    total = sum(new.pairs.values())
    assert captured.out == "" and captured.err == f"wrote {total} rows (csv) to {target}\n"
    assert len(target.read_text().splitlines()) == total + 1


def test_reader_that_stops_early_is_not_an_error(built) -> None:
    """`pickapic query ... | head -2`: streaming meets a closed pipe; exit 0, no traceback."""
    home, _, _ = built
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.query.engine", "--home", str(home.root), "--format", "csv",
                             "SELECT range FROM range(5000000)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = [proc.stdout.readline(), proc.stdout.readline()]
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and first == [b'"range"\n', b"0\n"] and err == b"", err[-2000:]


def test_limits_out_of_range_are_one_line_errors(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits DuckDB cannot parse, too little memory to open the views, timers past threading's limit: refused up front."""
    home, _, _ = built
    for limits, flag in ((query.QueryLimits(memory_limit="99999999999999999999TB"), "--memory-limit"),
                         (query.QueryLimits(spill_limit="99999999999999999999TB"), "--spill-limit"),
                         (query.QueryLimits(memory_limit="0GB"), "--memory-limit"),
                         (query.QueryLimits(memory_limit="1KiB"), "--memory-limit"),
                         (query.QueryLimits(timeout_s=float("inf")), "--timeout"),
                         (query.QueryLimits(timeout_s=1e10), "--timeout"),
                         (query.QueryLimits(timeout_s=float("nan")), "--timeout")):
        code, out, err = _run(home, "SELECT 1 AS a", limits=limits)
        assert code == 2 and out == "" and err.startswith(f"error: {flag} must be") and err.count("\n") == 1, err
    assert query.QueryLimits(timeout_s=0, memory_limit="16MB", spill_limit="0GB").validate()
    # whatever DuckDB still refuses while the connection is set up is a one-line QueryFailed, not a traceback
    monkeypatch.setattr(query.QueryLimits, "validate", lambda self: self)
    code, _, err = _run(home, "SELECT 1 AS a", limits=query.QueryLimits(memory_limit="99999999999999999999TB"))
    assert code == 1 and "could not be opened" in err and err.count("\n") == 1, err


def test_dates_python_cannot_hold_are_written_as_text(built) -> None:
    home, _, _ = built
    sql = ("SELECT 'infinity'::TIMESTAMP AS ts, '-infinity'::DATE AS d, '12000-01-02 03:04:05.5'::TIMESTAMP AS far, "
           "['infinity'::TIMESTAMP, '2020-01-01'::TIMESTAMP] AS l, {'a': 'infinity'::DATE} AS s")
    code, out, err = _run(home, sql, fmt="json")
    assert code == 0, err
    assert json.loads(out) == [{"ts": "infinity", "d": "-infinity", "far": "12000-01-02 03:04:05.5",
                                "l": ["infinity", "2020-01-01T00:00:00"], "s": {"a": "infinity"}}]
    code, out, err = _run(home, sql, fmt="table")
    assert code == 0 and "infinity" in out and "12000-01-02" in out, err
    code, out, err = _run(home, sql, fmt="csv")
    assert code == 0, err
    assert out.splitlines()[1].startswith('"infinity","-infinity","12000-01-02 03:04:05.5",'
                                          '"[""infinity"", ""2020-01-01T00:00:00""]",')


def test_json_refuses_duplicate_column_names(built, tmp_path: Path) -> None:
    home, _, _ = built
    code, out, err = _run(home, "SELECT 1 AS a, 2 AS a, 3 AS b", fmt="json")
    assert code == 2 and out == "" and "more than one column named 'a'" in err and err.count("\n") == 1, err
    code, _, err = _run(home, "SELECT 1 AS a, 2 AS a", fmt="json", output=tmp_path / "r.json")
    assert code == 2 and not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())
    code, out, _ = _run(home, "SELECT 1 AS a, 2 AS a", fmt="csv")     # CSV keeps both
    assert code == 0 and out.splitlines() == ['"a","a"', "1,2"]
    code, out, _ = _run(home, "SELECT 1 AS a, 2 AS a", fmt="table")
    assert code == 0 and "│ 1 │ 2 │" in out


def test_sigterm_during_a_query_removes_its_temporary_file_and_spill_folder(built, tmp_path: Path) -> None:
    # kill, timeout(1), a stopped service: before, a 790 MB temp file and the spill folder stayed behind
    import os
    import signal

    home, _, _ = built
    out_dir, spill_root = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    spill_root.mkdir()
    code = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
            "print(*[l for l in open('/proc/self/status').read().splitlines() if l.startswith(('SigBlk', 'SigIgn'))],"
            " file=sys.stderr); "
            "from dagster_project.cli import main; sys.exit(main(['query', '--home', sys.argv[1], "
            "'SELECT * FROM range(10000000000)', '--format', 'csv', '--output', sys.argv[2]]))")
    # a signal's "ignored" disposition is inherited through exec: start the child as a shell would (the
    # test worker may have been told to ignore SIGTERM); a blocked mask is left for the command to undo
    child = subprocess.Popen([sys.executable, "-c", code, str(home.root), str(out_dir / "out.csv")],
                             env={**os.environ, "TMPDIR": str(spill_root)}, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    deadline = time.monotonic() + 180      # a loaded CI machine starts Python slowly
    while not any(out_dir.iterdir()) and time.monotonic() < deadline:   # the temp file is being written
        time.sleep(0.1)
    assert any(out_dir.iterdir()) and list(spill_root.iterdir())
    child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:      # say where it hangs
        child.send_signal(signal.SIGUSR1)
        time.sleep(2)
        child.kill()
        pytest.fail("no exit after SIGTERM:\n" + child.communicate()[1][-5000:])
    assert child.returncode == 143 and "terminated" in err
    assert list(out_dir.iterdir()) == [] and list(spill_root.iterdir()) == []


def test_a_stop_request_ends_the_query_at_its_next_batch_even_if_duckdb_swallowed_the_signal(built) -> None:
    # seen in CI: SIGTERM while DuckDB planned; its handler's exception was lost and the query ran on
    home, _, _ = built
    try:
        with pytest.raises(KeyboardInterrupt):
            with query.stream(home, "SELECT range FROM range(10000000000)", batch_rows=1000) as (_, batches):
                next(batches)
                query.interrupt_active()       # what the SIGTERM handler does, without its own exception
                for _ in batches:
                    pass
    finally:
        query.STOP.clear()
    assert not query.ACTIVE


def test_a_huge_value_beyond_the_memory_limit_fails_the_query_not_the_machine(built) -> None:
    """DuckDB's memory limit bounds its buffer manager only: `repeat('x', 1.5e9)` allocated 1.5 GB under
    `--memory-limit 64MB`. `pickapic query` now caps its own data segment (RLIMIT_DATA) at what it holds +
    the memory limit + 512 MiB, so the allocation fails at once and the query ends with DuckDB's Out of Memory."""
    home, _, _ = built
    command = [sys.executable, "-m", "pipelines.query.engine", "--home", str(home.root), "--memory-limit", "64MB"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([*command, "SELECT length(repeat('x', 1500000000)) AS n"], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert done.returncode == 1 and "Out of Memory" in done.stderr and "--memory-limit 64MB" in done.stderr, \
        (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    done = subprocess.run([*command, "--format", "csv", "SELECT count(*) AS n, max(length(caption)) < 10000 AS ok "
                           "FROM pairs"], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0 and done.stdout.splitlines()[1].endswith(",true"), done.stderr[-2000:]


def test_the_process_memory_cap_is_put_back_after_the_query(built) -> None:
    """rev16e: `pickapic query`'s RLIMIT_DATA cap stayed lowered for the rest of the process (a test runner that
    ran a query in-process kept it for every later test); it now lasts as long as the query."""
    import resource

    home, _, _ = built
    before = resource.getrlimit(resource.RLIMIT_DATA)
    seen = []

    def during(*args, **kwargs):
        seen.append(resource.getrlimit(resource.RLIMIT_DATA)[0])
        return real(*args, **kwargs)

    real = query.write_result
    query.write_result = during
    try:
        args = argparse.Namespace(list=False, home=str(home.root), timeout=60, memory_limit="256MB", spill_limit="1GB",
                                  sql="SELECT count(*) AS n FROM pairs", named=None, dataset_version=None, fmt="csv",
                                  output=None, param=[])
        assert query.run_from_args(args, home) == 0
    finally:
        query.write_result = real
    assert seen and seen[0] != resource.RLIM_INFINITY and seen[0] < 64 * 1024**3     # capped while it ran
    assert resource.getrlimit(resource.RLIMIT_DATA) == before                         # and put back


def test_long_binaries_and_nested_values_are_cut_without_being_converted_whole() -> None:
    import pyarrow as pa

    table = pa.table({"b": [b"q" * 300, b"\0" * 300, b"r" * 5_000_000],
                      "l": [list(range(3)), list(range(1_000_000)), None],
                      "st": [{"a": "y"}, {"a": "x" * 5_000_000}, None]})
    cells = [output._column_texts(column.chunk(0)) for column in table.columns]
    assert cells[0][0] == str(b"q" * 300)                                      # short: as before, whole
    assert cells[0][1] == str(b"\0" * 300)[:1000] + "... (300 bytes; --format csv|json|parquet for all)"
    assert cells[0][2] == str(b"r" * 1001)[:1000] + "... (more than 1000 bytes; --format csv|json|parquet for all)"
    assert cells[1][:1] == ["[0, 1, 2]"] and cells[1][2] == "NULL"
    assert cells[1][1] == json.dumps(list(range(1000)))[:1000] + \
        "... (more than 1000 characters; --format csv|json|parquet for all)"
    assert cells[2][0] == '{"a": "y"}' and cells[2][1].startswith('{"a": "xxx') and len(cells[2][1]) == 1066
    text = output.render_table(table)
    assert text.rstrip().endswith("\n3 rows") and "(more than 1000 bytes;" in text


def test_a_table_written_to_a_file_says_which_rows_it_holds(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, _, _ = built
    target = tmp_path / "t.txt"
    out, err = io.StringIO(), io.StringIO()
    assert query.run_query(home, "SELECT range AS n FROM range(1500)", output=target, stdout=out, stderr=err) == 0
    assert err.getvalue() == (f"wrote the first 1000 of 1500 rows (table) to {target} "
                              "(use --format csv|json|parquet for all)\n")
    assert target.read_text().rstrip().endswith("1500 rows, first 1000 shown (use --format csv|json|parquet for all)")
    err = io.StringIO()
    assert query.run_query(home, "SELECT range AS n FROM range(7)", output=tmp_path / "u.txt", stdout=out,
                           stderr=err) == 0
    assert err.getvalue() == f"wrote 7 rows (table) to {tmp_path / 'u.txt'}\n"
    err = io.StringIO()
    monkeypatch.setattr(output, "TABLE_MAX_CELLS", 100)
    wide = ", ".join(f"1 AS c{k:04d}" for k in range(150))       # more columns than TABLE_MAX_CELLS
    assert query.run_query(home, f"SELECT {wide}", output=tmp_path / "w.txt", stdout=out, stderr=err) == 0
    assert err.getvalue() == (f"wrote 1 row and the first 100 of 150 columns (table) to {tmp_path / 'w.txt'} "
                              "(use --format csv|json|parquet for all)\n")
    assert (tmp_path / "w.txt").read_text().rstrip().endswith(
        "1 row; first 100 of 150 columns shown (use --format csv|json|parquet for all)")


def test_control_and_bidi_override_characters_are_shown_escaped() -> None:
    import pyarrow as pa

    text = output.render_table(pa.table({"p\x1b[2Jname": ["a\x1b]0;title\x07b", "x\u202ey\u2066z", "é plain 漢字"]}))
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\u2066" not in text
    assert "p\\x1b[2Jname" in text and "a\\x1b]0;title\\x07b" in text and "x\\u202ey\\u2066z" in text
    assert "é plain 漢字" in text
