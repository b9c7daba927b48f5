"""Fixes of review rev32b (``tests/unit/test_hostile_rev32b.py``): the consumer side of a published version.

- Every DuckDB ``read_parquet`` the project runs or documents says ``hive_partitioning = false``
  (``formats.duck.NO_HIVE``): a folder named ``split=...`` or ``dt=...`` above the data is no column. Tested on a
  home below both: the publish (its gate's caches), the splits stage's reads of published sidecars, the sqlrun
  views of a warehouse table, ``pickapic query`` with ``$TMPDIR`` below such a folder, and a scan of the sources.
- ``pickapic query`` reads exactly the files the manifest lists (a stray file in a split's or ``meta/images``'s
  folder is not read; a listed name with a glob character or ``..`` is refused in one line).
- The checksum advice (``formats.dataset.republish``) names ``python -m pipelines.publish --version <version>``,
  which checks that version alone and publishes nothing.
- The README's ``flock`` recipe opens the version read-only (``9<"$V"``): run after retention it creates nothing.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_project.cli import main as pickapic
from formats import dataset
from formats.home import DataHome

REPO = Path(__file__).resolve().parents[2]
ODD = ("split=train", "dt=2026-12-07")          # the folders above the home: both names DuckDB would guess from


@pytest.fixture(scope="module")
def odd_home(tmp_path_factory) -> DataHome:
    """A seeded home (60 rankings) below ``split=train/dt=2026-12-07/``, published once (read-only: copy it)."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("fix32b").joinpath(*ODD, "home"), num_rankings=60, seed=5)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))   # the gate's rule counts read the sidecars
    return home


def _copy(home: DataHome, root: Path) -> DataHome:
    shutil.copytree(home.root, root, symlinks=True)
    return DataHome(root)


def _sidecars(version: Path) -> pa.Table:
    """Every listed sidecar of ``version`` read by pyarrow (no folder name involved)."""
    files = dataset.read_manifest(version)["files"]
    return pa.concat_tables([pq.read_table(version / rel) for rel in sorted(files)
                             if rel.split("/")[-1].startswith("pickapic-") and rel.endswith(".parquet")])


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# --- hive partitioning --------------------------------------------------------------------------------------------

def test_every_read_parquet_of_the_code_and_the_docs_turns_hive_partitioning_off() -> None:
    """A scan of what the project runs or documents: each ``read_parquet(...)`` call states the option."""
    sources = [p for folder in ("pipelines", "formats", "dagster_project", "sql", "data_contracts", "training",
                                "benchmarks", "schemas") for p in (REPO / folder).rglob("*")
               if p.suffix in (".py", ".sql", ".md", ".yaml")]
    sources += [REPO / "README.md", *REPO.glob("*.md")]
    bad = []
    for path in sorted(set(sources)):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"(?<![\w.])read_parquet\(", text):
            call = text[match.start():match.start() + 400]
            depth, end = 0, len(call)
            for i, char in enumerate(call):
                depth += char == "("
                depth -= char == ")"
                if depth == 0 and char == ")":
                    end = i
                    break
            if "hive_partitioning" not in call[:end] and "NO_HIVE" not in call[:end]:
                bad.append(f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}")
    assert not bad, bad


def test_the_manifest_statement_states_the_option_and_reads_each_samples_own_columns(odd_home) -> None:
    import duckdb

    version = dataset.resolve_version(odd_home)
    manifest = dataset.read_manifest(version)
    assert manifest["read_parquet"].endswith(", hive_partitioning = false)")
    statement = manifest["read_parquet"].replace("HOME/", f"{odd_home.root}/", 1)
    got = duckdb.sql(f"SELECT split, dt, count(*) FROM ({statement}) GROUP BY ALL ORDER BY ALL").fetchall()
    table = _sidecars(version)
    want = Counter(zip(table.column("split").to_pylist(), table.column("dt").to_pylist()))
    assert Counter({(s, d): n for s, d, n in got}) == want
    assert "train" in {s for s, _ in want} and len({s for s, _ in want}) > 1       # held-out splits there too


def test_the_splits_stages_reads_of_published_sidecars_keep_each_rows_split_and_day(odd_home) -> None:
    """``read_published``, ``read_retained_users`` and ``read_retained_keys`` of a home below ``split=train`` and
    ``dt=2026-12-07``: each user's split and first day as the sidecars hold them (the folder's split was every
    user's, the folder's date every key's first day)."""
    import datetime as dt

    from pipelines.splits.assign import read_published, read_retained_keys, read_retained_users

    version = dataset.resolve_version(odd_home)
    table = _sidecars(version).to_pylist()
    main = [r for r in table if r["split"] in ("train", "validation", "test")]
    rank = {"test": 0, "validation": 1, "train": 2}       # a user in two splits counts as held out, test first
    expected: dict[str, tuple[str, object]] = {}
    for row in sorted(main, key=lambda r: (rank[r["split"]], r["dt"])):
        expected.setdefault(row["user_id"], (row["split"], row["dt"]))
    published = read_published(odd_home)
    assert published.version == version.name
    assert published.users == expected
    retained = read_retained_users(odd_home, [version.name])[version.name]
    assert retained == published.users
    for keys in (published.keys, read_retained_keys(odd_home, [version.name])):
        days = set(keys.column("first_dt").to_pylist())
        assert days <= {r["dt"] for r in main} and dt.date(2026, 12, 7) not in days
        owners = dict(zip(keys.column("key").to_pylist(), keys.column("owner").to_pylist()))
        assert {owners[r["prompt_key"]] for r in main if r["split"] == "test"} == {"test"}


def test_a_warehouse_view_below_such_folders_reads_the_files_columns_only(fast_tmp) -> None:
    """The sqlrun views (every stage's and every contract's reads): no ``split`` column made up from a folder above
    the home, a day's ``dt`` the file's own (an explicit list and a glob alike)."""
    from pipelines.sqlrun import connect

    home = DataHome(fast_tmp.joinpath(*ODD, "home"))
    path = home.partition_file("quarantine_like", "2023-03-01")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"n": [1, 2], "dt": pa.array([19417, 19417], pa.date32())}), path)
    con = connect({"listed": [path], "globbed": home.table_glob("quarantine_like")})
    for view in ("listed", "globbed"):
        assert [c[0] for c in con.execute(f"DESCRIBE {view}").fetchall()] == ["n", "dt"], view
        assert {str(d) for (d,) in con.execute(f"SELECT DISTINCT dt FROM {view}").fetchall()} == {"2023-03-01"}


def test_pickapic_query_with_its_temporary_folder_below_such_folders(odd_home, fast_tmp, monkeypatch, capsys) -> None:
    """The review's noticed case: ``pickapic query``'s private alias lies under ``$TMPDIR``; below ``split=train``
    every pair read as train there."""
    tmp = fast_tmp.joinpath(*ODD, "tmp")
    tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    capsys.readouterr()
    assert pickapic(["query", "--home", str(odd_home.root), "--format", "csv",
                     "SELECT split, count(*) AS n FROM pairs GROUP BY split"]) == 0
    got = {row["split"]: int(row["n"]) for row in _csv(capsys.readouterr().out)}
    manifest = dataset.read_manifest(dataset.resolve_version(odd_home))
    assert got == {split: info["pairs"] for split, info in manifest["splits"].items()}


# --- pickapic query reads the manifest's files ---------------------------------------------------------------------

def test_pickapic_query_reads_no_stray_file_of_a_split_or_meta_folder(odd_home, fast_tmp, capsys) -> None:
    home = _copy(odd_home, fast_tmp / "home")
    version = dataset.resolve_version(home)
    files = dataset.read_manifest(version)["files"]
    capsys.readouterr()
    assert pickapic(["query", "--home", str(home.root), "--format", "csv",
                     "SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images"]) == 0
    before = _csv(capsys.readouterr().out)
    for split in ("train", "test"):                                   # a copy of a sidecar, of a prompt count file
        sidecar = sorted((version / split).glob(f"pickapic-{split}-*.parquet"))[0]
        shutil.copyfile(sidecar, sidecar.with_name("pickapic-copy.parquet"))
    images = [rel for rel in files if rel.startswith("meta/images")]
    source = version / images[0]
    target = (source.parent / "stray.parquet") if source.parent.name == "images" else source.with_name("images-x.parquet")
    shutil.copyfile(source, target)
    assert pickapic(["query", "--home", str(home.root), "--format", "csv",
                     "SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images"]) == 0
    assert _csv(capsys.readouterr().out) == before


def test_pickapic_query_refuses_a_listed_name_that_the_publish_never_writes(odd_home, fast_tmp, capsys) -> None:
    home = _copy(odd_home, fast_tmp / "home")
    version = dataset.resolve_version(home)
    path = version / dataset.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    rel = next(r for r in manifest["files"] if r.startswith("train/pickapic-") and r.endswith(".parquet"))
    manifest["files"]["train/pickapic-train-[0-9]*.parquet"] = manifest["files"].pop(rel)
    path.chmod(0o644)
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert pickapic(["query", "--home", str(home.root), "SELECT count(*) FROM pairs"]) != 0
    err = capsys.readouterr().err
    assert "not a name the publish writes" in err and "pickapic-train-[0-9]*.parquet" in err and len(
        err.strip().splitlines()) == 1, err


# --- the advice names the version that failed ----------------------------------------------------------------------

def test_the_advice_names_the_version_and_its_home() -> None:
    advice = dataset.republish(Path("/srv/my home/datasets/pickapic/20230302-abc"))
    assert "`python -m pipelines.publish --home '/srv/my home' --verify-checksums --version 20230302-abc`" in advice
    elsewhere = dataset.republish(Path("/mirror/20230302-abc"))           # a copy outside a home: HOME to fill in
    assert "--home HOME --verify-checksums --version 20230302-abc`" in elsewhere


def test_the_version_check_publishes_nothing_and_names_what_differs(odd_home, fast_tmp, capsys) -> None:
    from pipelines.publish.__main__ import run as publish

    home = _copy(odd_home, fast_tmp / "home")
    version = dataset.resolve_version(home)
    listing = sorted(str(p.relative_to(home.root)) for p in home.root.rglob("*"))
    capsys.readouterr()
    assert publish(["--home", str(home.root), "--verify-checksums", "--version", version.name]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"version": version.name, "files": len(dataset.read_manifest(version)["files"]),
                       "checked": "sha256", "differ": 0}
    assert publish(["--home", str(home.root), "--version", "latest"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == "bytes"
    assert sorted(str(p.relative_to(home.root)) for p in home.root.rglob("*")) == listing   # nothing written

    sizes = version / "test" / dataset.SIZES_FILE
    sizes.chmod(0o644)
    sizes.write_bytes(sizes.read_bytes().replace(b"1", b"2", 1))          # same size, other bytes
    assert publish(["--home", str(home.root), "--version", version.name]) == 0       # sizes alone: unseen
    capsys.readouterr()
    assert publish(["--home", str(home.root), "--verify-checksums", "--version", version.name]) == 1
    err = capsys.readouterr().err
    assert "test/sizes.json does not match its manifest sha256" in err, err
    assert publish(["--home", str(home.root), "--version", "no-such-version"]) == 1
    assert "is not a complete published version" in capsys.readouterr().err


# --- the README's flock recipe ---------------------------------------------------------------------------------------

def test_the_readmes_flock_recipe_creates_nothing_where_the_version_was_deleted(fast_tmp) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    recipe = re.search(r'\( flock -s 9 && \[ -f "\$V/manifest.json" \] && cmd \) 9<"\$V"', text).group(0)
    assert not re.search(r'^flock -s "\$V"', text, re.MULTILINE)
    script = recipe.replace("cmd", "echo read")
    version = fast_tmp / "datasets" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{}")
    run = subprocess.run(["bash", "-c", script], env={**os.environ, "V": str(version)}, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "read\n", run
    shutil.rmtree(version)                                               # retention deleted it meanwhile
    run = subprocess.run(["bash", "-c", script], env={**os.environ, "V": str(version)}, capture_output=True, text=True)
    assert run.returncode != 0 and not run.stdout and not os.path.lexists(version), run
