"""Privacy and safety of what a build publishes, over the shared built home (read-only).

Every published byte (shards, sidecars, sizes, meta, manifest), a PickScore export and every query
view is scanned for the simulator's emails, names and raw user ids; the query CLI must refuse to read
or write outside the published version (the per-statement cases on a small fixture live in
tests/unit/test_query_cli.py; here the real CLI runs over a real build).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.dataset import resolve_version
from formats.home import DataHome
from pipelines.query import engine as query
from pipelines.query.export import export_pickscore_parquet

# "user_id: string '24'", "user_id = 24", "user_id 24 has", '"user_id": 24' (a number right after the field name)
USER_ID_IN_TEXT = re.compile(r"""user_id['"]?(?::\s*[a-z]+\s+|\s*[:=]\s*|\s+)['"]?(-?\d+)""")
PSEUDONYM = re.compile(r"[0-9a-f]{16}")


class Secrets:
    """The simulator's personal data: every email, name and raw user id of ground_truth/users.parquet."""

    def __init__(self, home: DataHome):
        users = pq.read_table(home.ground_truth / "users.parquet", columns=["user_id", "email", "name"]).to_pylist()
        assert users, "the simulator wrote no users"
        self.emails = sorted({u["email"] for u in users if u["email"]})
        self.names = sorted({u["name"] for u in users if u["name"]})
        self.ids = {int(u["user_id"]) for u in users}
        assert self.emails and self.names
        needles = [e.lower() for e in self.emails] + [n.lower() for n in self.names]
        needles += [e.split("@")[0].lower() for e in self.emails]           # the email's local part too
        self.text = re.compile("|".join(re.escape(n) for n in sorted(set(needles), key=len, reverse=True)))
        self.raw = [n.encode() for n in set(needles)]

    def in_text(self, text: str) -> list[str]:
        return self.text.findall(text.lower())

    def in_bytes(self, data: bytes) -> list[bytes]:
        low = data.lower()
        return [n for n in self.raw if n in low]


def _walk(value: Any, path: str, key: str | None = None) -> Iterator[tuple[str, str | None, Any]]:
    """(path, enclosing key, leaf) for every leaf and dict key; JSON held in strings is decoded and walked too."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield f"{path}.{name}", None, name
            yield from _walk(item, f"{path}.{name}", str(name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", key)
    else:
        if isinstance(value, str) and value[:1] in "{[":
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = None
            if isinstance(decoded, (dict, list)):
                yield from _walk(decoded, f"{path}<json>")
        yield path, key, value


def _leaks(secrets: Secrets, rows: list[dict], where: str) -> list[str]:
    """Every email/name found in any text, and every raw user id under a user_id key or named in text."""
    found = []
    for i, row in enumerate(rows):
        for path, key, leaf in _walk(row, f"{where}[{i}]"):
            if isinstance(leaf, bytes):
                hits = secrets.in_bytes(leaf)
                if hits:
                    found.append(f"{path}: {hits}")
                continue
            if isinstance(leaf, str):
                hits = secrets.in_text(leaf)
                if hits:
                    found.append(f"{path}: {hits}")
                for match in USER_ID_IN_TEXT.finditer(leaf):
                    if int(match.group(1)) in secrets.ids:
                        found.append(f"{path}: raw user id in text {leaf[:120]!r}")
            if key is not None and key.lower() == "user_id" and leaf is not None:
                text = str(leaf)
                if isinstance(leaf, (int, float)) or text.lstrip("-").isdigit():
                    found.append(f"{path}: user_id {leaf!r} is a number, not a pseudonym")
                elif not PSEUDONYM.fullmatch(text):
                    found.append(f"{path}: user_id {leaf!r} is not a pseudonym")
    return found


def _table_rows(table: pa.Table, where: str) -> list[dict]:
    for field in table.schema:
        if field.name.lower() == "user_id":
            assert pa.types.is_string(field.type) or pa.types.is_large_string(field.type), f"{where}: user_id is {field.type}"
    return table.to_pylist()


@pytest.fixture(scope="module")
def secrets(built_home: DataHome) -> Secrets:
    return Secrets(built_home)


@pytest.fixture(scope="module")
def version(built_home: DataHome) -> Path:
    return resolve_version(built_home)


def test_every_published_file_is_free_of_personal_data(built_home: DataHome, secrets: Secrets, version: Path) -> None:
    files = sorted(p for p in version.rglob("*") if p.is_file())
    kinds = {p.suffix for p in files}
    assert {".tar", ".parquet", ".json"} <= kinds, kinds
    leaks: list[str] = []
    members = 0
    for path in files:
        rel = path.relative_to(version).as_posix()
        data = path.read_bytes()
        leaks += [f"{rel}: bytes {h!r}" for h in secrets.in_bytes(data)]      # every raw byte, tars included
        if path.suffix == ".parquet":
            leaks += _leaks(secrets, _table_rows(pq.read_table(path), rel), rel)
        elif path.suffix == ".json":
            leaks += _leaks(secrets, [json.loads(data)], rel)
        elif path.suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    members += 1
                    assert member.uname == "" or member.uname not in secrets.names
                    body = tar.extractfile(member).read()
                    name = f"{rel}:{member.name}"
                    leaks += [f"{name}: name {h}" for h in secrets.in_text(member.name)]
                    if member.name.endswith(".json"):
                        leaks += _leaks(secrets, [json.loads(body)], name)
                    elif member.name.endswith((".txt", ".cls")):
                        leaks += _leaks(secrets, [{"text": body.decode("utf-8")}], name)
    assert members > 0
    assert not leaks, leaks[:20]


def test_pickscore_export_is_free_of_personal_data(built_home: DataHome, secrets: Secrets, tmp_path: Path) -> None:
    report = export_pickscore_parquet(built_home, None, tmp_path / "export")
    assert sum(report.rows.values()) > 0
    leaks: list[str] = []
    for split, file in report.files.items():
        table = pq.read_table(file)
        assert "user_id" in table.column_names
        leaks += _leaks(secrets, _table_rows(table, split), f"export/{split}")
        leaks += [f"export/{split}: bytes {h!r}" for h in secrets.in_bytes(Path(file).read_bytes())]
    assert not leaks, leaks[:20]


def test_every_query_view_is_free_of_personal_data(built_home: DataHome, secrets: Secrets) -> None:
    views = ["pairs", *query.META_VIEWS]
    leaks: list[str] = []
    for view in views:
        table = query.execute(built_home, f"SELECT * FROM {view}")
        assert table.num_rows > 0 or view == "quarantine", view
        leaks += _leaks(secrets, _table_rows(table, view), view)
    for name in query.named_queries():
        table = query.execute(built_home, query.sql_text(f"queries/{name}"))
        leaks += _leaks(secrets, table.to_pylist(), f"named:{name}")
    assert not leaks, leaks[:20]


def test_the_scanner_finds_planted_personal_data(secrets: Secrets) -> None:
    """The scan above is only as good as its detector: it must flag each kind of leak."""
    email, name, uid = secrets.emails[0], secrets.names[0], sorted(secrets.ids)[0]
    planted = [
        {"caption": f"contact {email.upper()}"},
        {"evidence": json.dumps({"who": name})},
        {"user_id": uid},
        {"json": json.dumps({"nested": [{"user_id": str(uid)}]})},
        {"detail": f"user_id: string '{uid}', expected integer"},
        {"blob": f"xx{email}yy".encode()},
    ]
    for row in planted:
        assert _leaks(secrets, [row], "planted"), row
    assert not _leaks(secrets, [{"user_id": "0123456789abcdef", "caption": "a red circle"}], "clean")


# ------------------------------------------------------------------ the query CLI stays inside the version

def _cli(home: DataHome, *args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = query.main(["--home", str(home.root), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


OUTSIDE = [
    ("read_csv('/etc/passwd')", "SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("read_text of the raw zone", "SELECT * FROM read_text('{home}/raw/moderation/banned_users.txt')", "Permission Error"),
    ("read_parquet of the warehouse", "SELECT user_id FROM read_parquet('{home}/warehouse/users/*/*.parquet')", "Permission Error"),
    ("../ out of the version", "SELECT * FROM read_parquet('{root}/../../../warehouse/users/**/*.parquet')", "Permission Error"),
    ("ground truth via ..", "SELECT * FROM read_json_auto('{root}/meta/../../../../ground_truth/summary.json')", "Permission Error"),
    ("glob of the home", "SELECT * FROM glob('{home}/**')", "Permission Error"),
    ("parquet_metadata of the warehouse", "SELECT * FROM parquet_metadata('{home}/warehouse/users/*/*.parquet')", "Permission Error"),
    ("COPY TO inside the version", "COPY (SELECT * FROM pairs) TO '{root}/leak.csv'", "COPY statements are refused"),
    ("COPY TO outside", "COPY (SELECT * FROM pairs) TO '{tmp}/leak.parquet' (FORMAT parquet)", "COPY statements are refused"),
    ("EXPLAIN ANALYZE COPY executes the COPY", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/leak.csv'", "EXPLAIN of COPY is refused"),
    ("EXPLAIN (ANALYZE) COPY", "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{tmp}/leak.csv'", "EXPLAIN of COPY is refused"),
    ("ATTACH the warehouse", "ATTACH '{home}/warehouse/x.duckdb' AS w", "ATTACH statements are refused"),
    ("INSTALL", "INSTALL httpfs", "statements are refused"),
    ("LOAD", "LOAD httpfs", "LOAD statements are refused"),
    ("a CTE before COPY", "WITH x AS (SELECT * FROM pairs) COPY (SELECT * FROM x) TO '{tmp}/cte.csv'", "Parser Error"),
    # DuckDB types these as SELECT statements and runs the COPY / INSERT inside the WITH clause
    ("a CTE that copies into the version", "WITH x AS (COPY (SELECT * FROM pairs) TO '{root}/leak.csv') SELECT 1",
     "COPY inside a query is refused"),
    ("a CTE that copies outside", "WITH x AS (COPY (SELECT * FROM pairs) TO '{tmp}/cte.csv') SELECT * FROM pairs",
     "COPY inside a query is refused"),
    ("a CTE that inserts", "WITH x AS (INSERT INTO pairs SELECT * FROM pairs RETURNING *) SELECT count(*) FROM x",
     "INSERT inside a query is refused"),
    ("EXPLAIN ANALYZE of a CTE that copies", "EXPLAIN ANALYZE WITH x AS (COPY (SELECT 1) TO '{root}/leak.csv') SELECT 1",
     "COPY inside a query is refused"),
    ("a writing statement inside query()", "SELECT * FROM query('COPY (SELECT 1) TO ''{tmp}/q.csv''')", "Error"),
    ("SET re-enabling access", "SET enable_external_access = true", "SET statements are refused"),
    ("SELECT then COPY", "SELECT 1; COPY (SELECT 1) TO '{tmp}/two.csv'", "exactly one statement"),
    ("CREATE a table from a file", "CREATE TABLE t AS SELECT * FROM read_csv('/etc/passwd')", "CREATE statements are refused"),
]


@pytest.mark.parametrize("label,sql,message", OUTSIDE, ids=[o[0] for o in OUTSIDE])
def test_query_cli_cannot_read_or_write_outside_the_version(private_home: DataHome, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture, label: str, sql: str,
                                                           message: str) -> None:
    version = resolve_version(private_home)
    before = _snapshot(private_home.root)
    code, out, err = _cli(private_home, sql.format(home=private_home.root, root=version, tmp=tmp_path), capsys=capsys)
    assert code != 0 and out == "", (label, code, out)
    assert err.startswith("python -m pipelines.query.engine: error:") and message in err, (label, err)
    assert _snapshot(private_home.root) == before
    assert list(tmp_path.iterdir()) == []


def test_query_cli_output_cannot_overwrite_the_published_version(built_home: DataHome, version: Path,
                                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    before = _snapshot(built_home.datasets)
    for target in (version / "meta" / "images.parquet", built_home.datasets / "latest" / "new.csv", version):
        code, out, err = _cli(built_home, "SELECT 1 AS a", "--format", "csv", "--output", str(target), capsys=capsys)
        assert code == 2 and "read-only" in err, (target, err)
    assert _snapshot(built_home.datasets) == before
    ok = tmp_path / "result.csv"
    assert _cli(built_home, "SELECT 1 AS a", "--format", "csv", "--output", str(ok), capsys=capsys)[0] == 0
    assert ok.read_text().splitlines() == ['"a"', "1"]


def test_read_only_queries_still_work(built_home: DataHome, capsys: pytest.CaptureFixture) -> None:
    for sql in ("SELECT count(*) AS n FROM pairs", "EXPLAIN SELECT * FROM pairs", "EXPLAIN ANALYZE SELECT count(*) FROM shards",
                "DESCRIBE pairs", "SUMMARIZE splits_summary", "FROM decisions LIMIT 1"):
        code, out, err = _cli(built_home, sql, "--format", "json", capsys=capsys)
        assert code == 0 and json.loads(out), (sql, err)


def test_pickapic_query_command_refuses_with_exit_code(built_home: DataHome) -> None:
    """The installed `pickapic` entry point: a refused statement exits non-zero with the reason on stderr."""
    pickapic = Path(sys.executable).with_name("pickapic")
    command = [str(pickapic)] if pickapic.exists() else [sys.executable, "-m", "dagster_project.cli"]
    done = subprocess.run([*command, "query", "--home", str(built_home.root), "SELECT * FROM read_csv('/etc/passwd')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert "Permission Error" in done.stderr and "/etc/passwd" in done.stderr
