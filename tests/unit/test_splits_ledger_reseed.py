"""The split ledger against the published record: a lost ledger is re-seeded from the latest published version, a
build under a new pseudonym secret refuses, and ``pipelines.splits.rekey`` carries the ledger across the new secret."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from splits_fixtures import ledger_splits, publish_splits, user_rows, write_pairs

from data_contracts.engine import evaluate, load_contract
from formats.files import write_parquet_atomic
from formats.home import DataHome
from formats.settings import write_settings
from pipelines.curation.pseudonym import pseudonymize
from pipelines.splits.assign import LedgerKeysChanged, SplitConfig, build_splits
from pipelines.sqlrun import connect
from schemas import get_schema

REPO = Path(__file__).resolve().parents[2]
CFG = SplitConfig(min_unique_rows=2)
QUIET = dict(log=lambda message: None)


def _build(home: DataHome, rows: list[dict], config: SplitConfig = CFG):
    write_pairs(home, rows)
    return build_splits(home, config, **QUIET)


def test_a_lost_ledger_is_reseeded_from_the_published_version_and_keeps_its_contract(tmp_path):
    home = DataHome(tmp_path)
    rows = user_rows(range(1, 41), "s")
    _build(home, rows)
    publish_splits(home, "2023-03-03-00000000aa")
    before = ledger_splits(home)
    home.table_file("split_ledger").unlink()                          # the warehouse's ledger lost
    messages: list[str] = []
    write_pairs(home, rows + user_rows(range(41, 61), "s", day=3))    # and a new night on top
    report = build_splits(home, CFG, log=messages.append)
    after = ledger_splits(home)
    assert {u: after[u] for u in before} == before
    assert report.metadata()["ledger_reseeded_users"] == 40
    assert report.metadata()["ledger_checked_against"] == "2023-03-03-00000000aa"
    assert sum(report.new_users.values()) == 20                        # the re-seeded users are not new users
    assert any("re-seeded from the published version 2023-03-03-00000000aa: 40 users" in m for m in messages)
    rules = {r["rule"] for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}
    assert "published" in rules
    con = connect({"split_ledger": str(home.table_file("split_ledger"))})
    assert [r.rule.name for r in evaluate(load_contract("split_ledger"), con) if not r.passed] == []
    # the next night finds nothing to re-seed and says nothing
    messages.clear()
    assert build_splits(home, CFG, log=messages.append).metadata()["ledger_reseeded_users"] == 0
    assert messages == []


def test_a_new_salt_still_reshuffles_and_is_not_taken_for_a_new_secret(tmp_path):
    """A user the ledger holds under another salt is not re-seeded under the new one: the salt is the one deliberate
    reshuffle; and a new secret together with a new salt is not refused."""
    home = DataHome(tmp_path)
    rows = user_rows(range(1, 201), "s")
    _build(home, rows, SplitConfig())
    publish_splits(home, "2023-03-03-00000000aa")
    salted = SplitConfig(salt="another-salt")
    report = _build(home, rows, salted)
    assert report.metadata()["ledger_reseeded_users"] == 0
    by_salt = {(r["user_id"], r["salt"]): r["rule"] for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}
    assert "published" not in by_salt.values()
    _build(home, user_rows(range(1, 201), "new-secret"), SplitConfig(salt="a third salt"))   # not refused


def test_growth_and_bans_are_not_taken_for_a_new_secret(tmp_path):
    home = DataHome(tmp_path)
    _build(home, user_rows(range(1, 13), "s"))
    publish_splits(home, "2023-03-03-00000000aa")
    _build(home, user_rows(range(1, 100), "s"))          # eight times the users at once: a backfill
    _build(home, user_rows(range(7, 100), "s"))          # half of the first users banned


def test_a_lost_ledger_and_a_new_secret_refuse_without_writing(tmp_path):
    home = DataHome(tmp_path)
    _build(home, user_rows(range(1, 41), "old-secret-xyz"))
    publish_splits(home, "2023-03-03-00000000aa")
    home.table_file("split_ledger").unlink()
    write_pairs(home, user_rows(range(1, 41), "new-secret-xyz"))
    with pytest.raises(LedgerKeysChanged, match="pipelines.splits.rekey") as refused:
        build_splits(home, CFG, **QUIET)
    assert "secret-xyz" not in str(refused.value)
    assert not home.table_file("split_ledger").exists()


def _warehouse(home: DataHome, users) -> None:
    """Ingested rankings and users tables holding the raw ids."""
    t = dt.datetime(2023, 3, 1)
    rankings = [{"ranking_id": u, "created_at": t, "user_id": u, "image_0_uid": "a", "image_1_uid": "b", "num_shown": 2,
                 "is_tie": False, "prompt": "p", "dt": t.date()} for u in users]
    write_parquet_atomic(pa.Table.from_pylist(rankings, schema=get_schema("rankings")),
                         home.partition_file("rankings", "2023-03-01"))
    write_parquet_atomic(pa.Table.from_pylist([{"user_id": u, "created_at": t, "dt": t.date()} for u in users],
                                              schema=get_schema("users")), home.partition_file("users", "2023-03-01"))


def _rekey(home: DataHome, old_secret: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PICKAPIC_OLD_PSEUDONYM_SECRET"}
    if old_secret is not None:
        env["PICKAPIC_OLD_PSEUDONYM_SECRET"] = old_secret
    return subprocess.run([sys.executable, "-m", "pipelines.splits.rekey", "--home", str(home.root)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_rekey_command_carries_a_lost_and_published_ledger_across_a_new_secret(tmp_path):
    old, new = "the-old-secret-0123", "the-new-secret-4567"
    users = range(1001, 1201)
    home = DataHome(tmp_path)
    _warehouse(home, users)
    write_settings(home.root, {"curation.pseudonym_secret": new})
    _build(home, user_rows(users, old), SplitConfig())
    publish_splits(home, "2023-03-03-00000000aa")
    before = {u: ledger_splits(home)[pseudonymize(u, old)] for u in users}
    home.table_file("split_ledger").unlink()                     # lost, too: the published version holds the record

    missing = _rekey(home, None)
    assert missing.returncode == 2 and "PICKAPIC_OLD_PSEUDONYM_SECRET" in missing.stderr
    wrong = _rekey(home, "not-the-old-secret")
    assert wrong.returncode == 2 and "maps none" in wrong.stderr
    assert not home.table_file("split_ledger").exists()

    done = _rekey(home, old)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rekeyed"] == 200 and report["reseeded"] == 200
    for text in (done.stdout, done.stderr, wrong.stderr, home.table_file("split_ledger").read_bytes().decode("latin-1")):  # noqa: E501
        assert old not in text and new not in text
    stored = pq.read_table(home.table_file("split_ledger")).to_pylist()
    assert {r["user_id"] for r in stored} == {pseudonymize(u, new) for u in users}

    result = _build(home, user_rows(users, new), SplitConfig())  # the next night: nothing moves, nothing re-seeded
    assert {u: ledger_splits(home)[pseudonymize(u, new)] for u in users} == before
    assert result.metadata()["ledger_reseeded_users"] == 0 and len(ledger_splits(home)) == 200
