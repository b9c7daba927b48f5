"""Fixes of review rev24j beyond its strict xfails (tests/unit/test_hostile_rev24j.py): the query's private alias
of the version, the export's size check before any read, the columns the meta snapshots read, the ingest lock
around the warehouse reads of a publish, and the names the sweep removes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import make_home, published_home

from formats.dataset import ChecksumError, open_listed_file, read_manifest, resolve_version
from formats.files import write_parquet_atomic
from formats.locks import open_lock_file, try_lock
from pipelines.ingest.day import ingest_lock_path
from pipelines.publish import meta, samples, versions
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import engine
from schemas import get_schema

FAST = PublishConfig(workers=1, fsync=False)


# --------------------------------------------------------------------------- query: a private alias of the version
def test_a_query_reads_the_version_through_a_private_alias_without_glob_characters(tmp_path: Path, monkeypatch) -> None:
    home = published_home(tmp_path / "h[1]*" / "home")
    odd_tmp = tmp_path / "tmp[x]"
    odd_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(odd_tmp))     # $TMPDIR with a glob character: /tmp instead
    with engine.connect(home) as (con, path):
        assert path == resolve_version(home)
        (allowed,) = con.execute("SELECT current_setting('allowed_directories')").fetchone()
        assert f"{path}/" in allowed and not any("[[]" in folder for folder in allowed)   # never the escaped text
        (spill,) = [folder for folder in allowed if folder.endswith("/spill/")]
        private = Path(spill).parent
        assert private.parent == Path("/tmp") and private.name.startswith("pickapic-query-")
        assert os.readlink(private / "version") == str(path) and private.stat().st_mode & 0o777 == 0o700
        sidecar_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("*/pickapic-*.parquet"))
        assert con.execute("SELECT count(*) FROM pairs").fetchone()[0] == sidecar_rows > 0
        for name in engine.META_VIEWS:
            assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] >= 0
        with pytest.raises(Exception, match="Permission Error"):      # beside the version: refused
            con.execute(f"SELECT * FROM read_text('{home.root}/warehouse/**')").fetchall()
    assert not os.path.lexists(private)                               # gone with the query


# --------------------------------------------------------------------------- export: size first, hash streaming
def test_a_listed_file_is_checked_by_size_before_any_read_then_by_sha256(tmp_path: Path) -> None:
    home = published_home(tmp_path / "home")
    path = resolve_version(home)
    rel = "train/prompt_counts.parquet"
    recorded = read_manifest(path)["files"][rel]["bytes"]
    with open_listed_file(path, rel, why="the loss weight") as handle:       # intact: its rows, from the start
        assert handle.tell() == 0 and pq.read_table(handle).num_rows > 0
    data = (path / rel).read_bytes()
    (path / rel).unlink()                      # a version's files may be links shared with others: a new file
    (path / rel).write_bytes(data + b"x")
    oversized = rf"has {recorded + 1} bytes but its manifest.json records {recorded}: it changed after publishing " \
        r"\(the loss weight\)"
    with pytest.raises(ChecksumError, match=oversized), open_listed_file(path, rel, why="the loss weight"):
        pytest.fail("an oversized file was opened for reading")
    (path / rel).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))                 # the same size, other bytes
    with pytest.raises(ChecksumError, match=r"has sha256 [0-9a-f]{64} but its manifest.json records"), \
            open_listed_file(path, rel):
        pytest.fail("an edited file was opened for reading")


# --------------------------------------------------------------------------- meta: the columns a snapshot reads
def test_the_meta_sources_are_read_without_raw_text_and_checked_against_their_sha256(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    files = samples.meta_sources(home)["quarantine"]
    digests = samples.source_digests(home, {"quarantine": files})["quarantine"]
    table = meta.read_sources("quarantine", files, digests)
    assert "raw_text" not in table.column_names and table.num_rows == sum(pq.read_table(f).num_rows for f in files)
    assert meta.read_sources("split_rejects", [], None).column_names == ["reason"]
    old = tmp_path / "warehouse" / "quarantine" / "dt=2023-01-01" / "part-0.parquet"   # a file before `detail`
    old.parent.mkdir(parents=True)
    full = pq.read_table(files[0])
    pq.write_table(full.drop_columns(["detail"]), old)
    mixed = meta.read_sources("quarantine", [old, files[0]], None)
    assert mixed.num_rows == 2 * full.num_rows and mixed.column("detail").null_count == full.num_rows
    write_parquet_atomic(full.slice(0, 1), files[0], get_schema("quarantine"))
    with pytest.raises(meta.SourceChanged, match="changed while the publish ran"):
        meta.read_sources("quarantine", files, digests)


# --------------------------------------------------------------------------- the ingest lock around the reads
def _ingest_lock_free(home) -> bool:
    fd = open_lock_file(ingest_lock_path(home), "test")
    try:
        return try_lock(fd)
    finally:
        os.close(fd)


def test_the_publish_holds_the_ingest_lock_while_it_reads_the_warehouse_and_not_while_it_writes_shards(
        tmp_path: Path, monkeypatch) -> None:
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    seen: dict[str, bool] = {}
    real_sources, real_snapshots, real_shards = samples.meta_sources, meta.write_source_snapshots, \
        version_module.write_shards

    def listing(at):
        seen["listing"] = _ingest_lock_free(at)
        return real_sources(at)

    def snapshots(*args, **kwargs):
        seen["snapshots"] = _ingest_lock_free(home)
        return real_snapshots(*args, **kwargs)

    def shards(*args, **kwargs):
        seen["shards"] = _ingest_lock_free(home)
        return real_shards(*args, **kwargs)

    monkeypatch.setattr(samples, "meta_sources", listing)
    monkeypatch.setattr(meta, "write_source_snapshots", snapshots)
    monkeypatch.setattr(version_module, "write_shards", shards)
    report = publish_dataset(home, FAST)
    assert seen == {"listing": False, "snapshots": False, "shards": True}
    assert _ingest_lock_free(home) and resolve_version(home) == report.path
    quarantine = samples.meta_sources(home)["quarantine"]        # the snapshot is made of the files it records
    recorded = read_manifest(report.path)["sources"]["quarantine"]
    assert recorded == samples.source_digests(home, {"quarantine": quarantine})["quarantine"]
    assert pq.read_table(report.path / "meta" / "quarantine.parquet").num_rows == \
        sum(pq.read_table(f).num_rows for f in quarantine)


# --------------------------------------------------------------------------- the sweep: a publish's names only
def test_the_sweep_removes_the_names_a_publish_makes_and_names_the_rest(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    version = "2023-03-02-0123456789"
    ours = [f".partial-{version}", f".deleting-{version}", f".deleting-{version}.7"]
    theirs = [".deleting-notes", ".partial-backup", f".partial-{version}-mine", f".deleting-{version}.123",
              ".deleting-2023-03-02-ABCDEF0123"]
    for name in ours + theirs + [".partial-2023-03-03-0123456789"]:
        (datasets / name).mkdir()
        (datasets / name / "f").write_text("x")
    notes = versions.sweep_stale(datasets, ".partial-2023-03-03-0123456789")     # the running publish's staging
    assert sorted(os.listdir(datasets)) == sorted(theirs + [".partial-2023-03-03-0123456789"])
    assert len(notes) == len(theirs) and all(any(str(datasets / n) in note for note in notes) for n in theirs)
    assert all((datasets / name / "f").read_text() == "x" for name in theirs)


def test_a_publish_waiting_for_an_ingest_says_so_then_publishes(tmp_path: Path, capsys) -> None:
    """An ingest holds the home's ingest lock: the publish says on stderr that it waits for it (it used to wait
    silently), and publishes once the lock is free."""
    import threading
    import time

    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    fd = open_lock_file(ingest_lock_path(home), "test")
    assert try_lock(fd)                 # another open file description: the publish's flock must wait for it
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(report=publish_dataset(home, FAST)))
    worker.start()
    said = ""
    deadline = time.monotonic() + 60
    try:
        while "waiting for an ingest on this home" not in said and time.monotonic() < deadline:
            time.sleep(0.05)
            said += capsys.readouterr().err
        assert "waiting for an ingest on this home" in said and worker.is_alive()
        assert "report" not in result
    finally:
        os.close(fd)
    worker.join(120)
    assert resolve_version(home) == result["report"].path
