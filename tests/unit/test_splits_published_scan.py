"""The splits build reads the latest version's sidecars only when they can hold a user the ledger lacks: a normal
night (latest published from a split_pairs this ledger wrote) skips them; a restored older ledger, a ledger edited
by hand, a missing or damaged publish record, or a latest switched by other means reads them as before."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from splits_fixtures import ledger_splits, publish_splits, user_rows, write_pairs
from test_publish_fixtures import make_home

from formats import dataset
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import publish_dataset
from pipelines.splits import assign, coverage
from pipelines.splits.assign import LedgerKeysChanged, SplitConfig, build_splits
from schemas import get_schema

CFG = SplitConfig(min_unique_rows=2)
QUIET = dict(log=lambda message: None)


def _published(home: DataHome) -> dict[str, str]:
    version = dataset.resolve_version(home)
    rows = pq.read_table([str(p) for s in ("train", "validation", "test") for p in dataset.split_sidecars(version, s)],
                         columns=["user_id", "split"]).to_pylist()
    return {r["user_id"]: r["split"] for r in rows}


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every sidecar scan (``read_published`` with a version published), by the version it read."""
    calls: list[str] = []
    real = assign.read_published

    def counted(home, keys=True):
        found = real(home, keys)
        if found.version is not None:
            calls.append(found.version)
        return found

    monkeypatch.setattr(assign, "read_published", counted)
    return calls


def _publish(home: DataHome, name: str) -> None:
    """The fixture's stand-in publish, with the record the publish stage writes after switching ``latest``."""
    publish_splits(home, name)
    sha = hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest()
    coverage.write_published_source(home, home.datasets / name, sha)


def _night(home: DataHome, rows: list[dict], config: SplitConfig = CFG):
    write_pairs(home, rows)
    return build_splits(home, config, **QUIET)


def test_a_nightly_build_after_a_real_publish_reads_no_sidecar(tmp_path, monkeypatch):
    """Splits, the publish stage itself, splits again: the second build never reads the sidecars, and checks the
    ledger against the version the publish just wrote (its record outside the version)."""
    home = make_home(tmp_path / "h", num_rankings=150, seed=5, days=3)
    table = pq.read_table(home.table_file("split_pairs"))
    table = table.filter(pc.invert(pc.ends_with(table.column("split"), "_unique")))
    pairs = table.select(get_schema("pairs").names).sort_by("pair_id")
    last = max(pairs.column("dt").to_pylist())
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)
    write_parquet_atomic(pairs.filter(pc.not_equal(pairs.column("dt"), pa.scalar(last, pa.date32()))),
                         home.table_file("pairs"), get_schema("pairs"))
    first = build_splits(home, CFG, **QUIET)
    assert first.published_version is None and not first.published_sidecars_read
    split_pairs_sha = hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest()
    version = publish_dataset(home, config).path
    record = json.loads(coverage.record_file(home).read_text())
    assert record == {"version": version.name, "split_pairs_sha256": split_pairs_sha,
                      "manifest_sha256": hashlib.sha256((version / dataset.MANIFEST_FILE).read_bytes()).hexdigest()}
    verify_version(version, checksums=True)          # the record is no file of the version
    older_ledger = home.table_file("split_ledger").read_bytes()

    def no_scan(home, keys=True):
        raise AssertionError("the nightly build read the published sidecars")

    monkeypatch.setattr(assign, "read_published", no_scan)
    write_parquet_atomic(pairs, home.table_file("pairs"), get_schema("pairs"))     # the next night
    messages: list[str] = []
    nightly = build_splits(home, CFG, log=messages.append)
    assert not nightly.published_sidecars_read and messages == []
    assert nightly.metadata()["ledger_checked_against"] == version.name
    assert nightly.metadata()["ledger_published_sidecars_read"] is False
    assert set(_published(home)) <= set(ledger_splits(home))
    second = publish_dataset(home, config).path
    assert second != version
    build_splits(home, CFG, **QUIET)                  # and the night after it
    # a ledger restored from before the last publish: its record names older split_pairs, so the scan runs
    monkeypatch.undo()
    home.table_file("split_ledger").write_bytes(older_ledger)
    calls: list[str] = []
    real = assign.read_published
    monkeypatch.setattr(assign, "read_published", lambda h, keys=True: calls.append(1) or real(h, keys))
    restored = build_splits(home, CFG, **QUIET)
    assert calls == [1] and restored.published_sidecars_read
    assert restored.metadata()["ledger_checked_against"] == second.name
    # having read them, the ledger's record covers that version: the night after skips again
    assert not build_splits(home, CFG, **QUIET).published_sidecars_read and calls == [1]


def test_a_ledger_restored_from_an_older_copy_reads_the_sidecars_and_reseeds(tmp_path, reads):
    home = DataHome(tmp_path)
    _night(home, user_rows(range(1, 41)))
    _publish(home, "2023-03-03-00000000aa")
    older = tmp_path / "ledger-backup.parquet"
    shutil.copyfile(home.table_file("split_ledger"), older)
    report = _night(home, user_rows(range(1, 61)))             # 20 new users, skip: latest is night 1's
    assert reads == [] and not report.published_sidecars_read and report.metadata()["ledger_reseeded_users"] == 0
    _publish(home, "2023-03-04-00000000bb")
    published = _published(home)
    assert len(published) == 60
    shutil.copyfile(older, home.table_file("split_ledger"))  # restored: the 20 newer users are missing
    report = _night(home, user_rows(range(1, 71)))
    assert reads == ["2023-03-04-00000000bb"] and report.published_sidecars_read
    assert report.metadata()["ledger_reseeded_users"] == 20
    after = ledger_splits(home)
    assert {u: after[u] for u in published} == published      # everybody keeps the split they were published in


def test_the_scan_is_skipped_while_latest_stays_on_an_older_version(tmp_path, reads):
    """A night whose publish was refused (or not run) leaves latest on a version of an earlier split_pairs: the
    ledger's record keeps the one latest was published from, so the nights after skip too."""
    home = DataHome(tmp_path)
    _night(home, user_rows(range(1, 41)))
    _publish(home, "2023-03-03-00000000aa")
    for users in (50, 60, 70):
        assert not _night(home, user_rows(range(1, users))).published_sidecars_read
    assert reads == []


def _edit_ledger_keeping_its_record(home: DataHome, drop: set[str]) -> None:
    path = home.table_file("split_ledger")
    table = pq.read_table(path)
    keep = pa.array([u not in drop for u in table.column("user_id").to_pylist()])
    pq.write_table(table.filter(keep), path)                  # pyarrow keeps the schema's key-value metadata
    assert coverage.LEDGER_KEY in pq.read_schema(path).metadata


def test_a_ledger_edited_by_hand_keeping_its_record_reads_the_sidecars(tmp_path, reads):
    home = DataHome(tmp_path)
    _night(home, user_rows(range(1, 41)))
    _publish(home, "2023-03-03-00000000aa")
    published = _published(home)
    dropped = set(sorted(published)[:5])
    _edit_ledger_keeping_its_record(home, dropped)
    report = _night(home, user_rows(range(1, 41)))
    assert reads == ["2023-03-03-00000000aa"] and report.metadata()["ledger_reseeded_users"] == 5
    assert {u: ledger_splits(home)[u] for u in dropped} == {u: published[u] for u in dropped}


def _damage(home: DataHome, how: str) -> None:
    path = coverage.record_file(home)
    record = json.loads(path.read_text())
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"\x00not json")
    elif how == "other version":
        path.write_text(json.dumps({**record, "version": "2023-03-02-00000000ff"}))
    elif how == "manifest changed":
        manifest = dataset.resolve_version(home) / dataset.MANIFEST_FILE
        manifest.write_text(manifest.read_text() + " ")
    elif how == "bad digest":
        path.write_text(json.dumps({**record, "split_pairs_sha256": "XYZ"}))
    elif how == "symlink":
        target = path.with_name("elsewhere.json")
        path.rename(target)
        path.symlink_to(target)
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "ledger record":
        ledger = home.table_file("split_ledger")
        table = pq.read_table(ledger)
        pq.write_table(table.replace_schema_metadata({coverage.LEDGER_KEY: b"{not json"}), ledger)


@pytest.mark.parametrize("how", ["missing", "garbage", "other version", "manifest changed", "bad digest", "symlink",
                                 "fifo", "ledger record"])
def test_a_missing_or_damaged_record_means_reading_the_sidecars(tmp_path, reads, how):
    """Worst case of a record lost or tampered with: the sidecars are read, as before the records."""
    home = DataHome(tmp_path)
    _night(home, user_rows(range(1, 41)))
    _publish(home, "2023-03-03-00000000aa")
    assert not _night(home, user_rows(range(1, 41))).published_sidecars_read and reads == []   # undamaged: skipped
    _damage(home, how)
    report = _night(home, user_rows(range(1, 51)))
    assert reads == ["2023-03-03-00000000aa"] and report.published_sidecars_read
    assert report.metadata()["ledger_reseeded_users"] == 0


def test_a_new_secret_is_still_refused_when_the_scan_is_skipped(tmp_path, reads):
    home = DataHome(tmp_path)
    _night(home, user_rows(range(1, 41), "old-secret"))
    _publish(home, "2023-03-03-00000000aa")
    ledger = home.table_file("split_ledger").read_bytes()
    write_pairs(home, user_rows(range(1, 41), "new-secret"))
    with pytest.raises(LedgerKeysChanged):
        build_splits(home, CFG, **QUIET)
    assert reads == [] and home.table_file("split_ledger").read_bytes() == ledger


def test_nothing_published_reads_nothing_and_the_record_is_deterministic(tmp_path, reads):
    first, second = DataHome(tmp_path / "a"), DataHome(tmp_path / "b")
    for home in (first, second):
        report = _night(home, user_rows(range(1, 41)))
        assert report.published_version is None and not report.published_sidecars_read
    assert first.table_file("split_ledger").read_bytes() == second.table_file("split_ledger").read_bytes()
    record = json.loads(pq.read_schema(first.table_file("split_ledger")).metadata[coverage.LEDGER_KEY])
    assert record["split_pairs_sha256"] == [hashlib.sha256(first.table_file("split_pairs").read_bytes()).hexdigest()]
    assert record["users_sha256"] == coverage.users_digest(ledger_splits(first))
    assert reads == []
