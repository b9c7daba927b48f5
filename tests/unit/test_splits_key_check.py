"""The new-pseudonym-secret check of the splits build is exact: ``pairs`` (written by the curation) and the split
ledger record the key check of the secret their pseudonyms are under; equal never refuses, different refuses
naming the re-keying, which records the new secret's check; a ledger from before the check falls back on the
heuristic and records the check once it passes."""
from __future__ import annotations

import pyarrow as pa
import pytest
from curation_fixtures import HomeBuilder, build_all
from splits_fixtures import ledger_splits, pair_row

from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.pseudonym import KEY_CHECK_METADATA, key_check, pseudonymize
from pipelines.splits.assign import LedgerKeysChanged, SplitConfig, build_splits, check_keys, file_key_check
from pipelines.splits.rekey import RekeyRefused, rekey_ledger
from schemas import get_schema

CFG = SplitConfig(min_unique_rows=2)
QUIET = dict(log=lambda message: None)
OLD, NEW = "old-secret-k1", "new-secret-k2"


def _write_pairs(home: DataHome, users, secret: str, *, recorded: bool = True) -> None:
    """The pairs the curation writes under ``secret`` (with its key check, unless ``recorded`` is False: a pairs
    table from before the check was recorded)."""
    rows = [pair_row(u, pseudonymize(u, secret), f"prompt of user {u}", f"c{u}a", f"c{u}b", day=u % 3) for u in users]
    schema = get_schema("pairs")
    if recorded:
        schema = schema.with_metadata({**(schema.metadata or {}), KEY_CHECK_METADATA: key_check(secret).encode()})
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), home.table_file("pairs"), schema)


def _build(home: DataHome, users, secret: str, *, recorded: bool = True):
    _write_pairs(home, users, secret, recorded=recorded)
    return build_splits(home, CFG, **QUIET)


def test_the_key_check_says_nothing_of_the_secret_and_tells_secrets_apart():
    check = key_check(OLD)
    assert check == key_check(OLD) and check != key_check(NEW) and len(check) == 64
    assert OLD not in check and check[:16] not in {pseudonymize(u, OLD) for u in range(1000)}
    with pytest.raises(ValueError):
        key_check("")


def test_check_keys_is_exact_when_both_record_the_check():
    ledger = {f"user{i}" for i in range(30)}
    night = {f"user{i}" for i in range(10)} | {f"newcomer{i}" for i in range(15)}   # a ban wave, then newcomers
    check_keys(night, ledger, set(), key_check(OLD), key_check(OLD))                   # same secret: never refused
    with pytest.raises(LedgerKeysChanged, match="pipelines.splits.rekey") as refused:
        check_keys(ledger, ledger, set(), key_check(NEW), key_check(OLD))              # even with the same users
    assert OLD not in str(refused.value) and key_check(OLD) not in str(refused.value)
    with pytest.raises(LedgerKeysChanged):
        check_keys({"a"}, {"b"}, set(), key_check(NEW), key_check(OLD))                 # a small ledger too
    check_keys({"a"}, set(), set(), key_check(NEW), key_check(OLD))                     # nothing under this salt
    with pytest.raises(LedgerKeysChanged):                                               # no check: the heuristic
        check_keys(night, ledger, set())
    with pytest.raises(LedgerKeysChanged):
        check_keys(night, ledger, set(), key_check(OLD), None)


def test_the_curation_records_the_secret_check_in_pairs(tmp_path):
    builder = HomeBuilder(tmp_path)
    builder.pair(1, user=7)
    home = builder.write()
    build_all(home, pseudonym_secret=OLD)
    assert file_key_check(home.table_file("pairs")) == key_check(OLD)
    assert OLD.encode() not in home.table_file("pairs").read_bytes()


def test_a_ban_wave_then_a_night_of_new_users_builds_under_the_same_secret(tmp_path):
    home = DataHome(tmp_path)
    _build(home, range(1, 31), OLD)
    assert file_key_check(home.table_file("split_ledger")) == key_check(OLD)
    before = ledger_splits(home)
    _build(home, list(range(1, 11)) + list(range(100, 115)), OLD)     # 20 banned, 15 newcomers: not refused
    after = ledger_splits(home)
    assert {u: after[u] for u in before} == before and len(after) == 45
    assert file_key_check(home.table_file("split_ledger")) == key_check(OLD)


def test_a_changed_secret_refuses_even_a_small_ledger_and_rekey_records_the_new_check(tmp_path):
    home = DataHome(tmp_path)
    users = range(1, 7)                                   # fewer users than the heuristic could tell anything from
    _build(home, users, OLD)
    before = {u: ledger_splits(home)[pseudonymize(u, OLD)] for u in users}
    ledger_bytes = home.table_file("split_ledger").read_bytes()
    with pytest.raises(LedgerKeysChanged, match="pipelines.splits.rekey"):
        _build(home, users, NEW)
    assert home.table_file("split_ledger").read_bytes() == ledger_bytes        # nothing written
    with pytest.raises(RekeyRefused, match="key check"):                        # not the ledger's old secret
        rekey_ledger(home, users, "a-mistyped-secret", NEW, CFG.salt, **QUIET)
    assert home.table_file("split_ledger").read_bytes() == ledger_bytes
    report = rekey_ledger(home, users, OLD, NEW, CFG.salt, **QUIET)
    assert report["rekeyed"] == 6
    assert file_key_check(home.table_file("split_ledger")) == key_check(NEW)
    build_splits(home, CFG, **QUIET)                       # pairs under NEW: now accepted, nothing moved
    assert {u: ledger_splits(home)[pseudonymize(u, NEW)] for u in users} == before
    assert file_key_check(home.table_file("split_ledger")) == key_check(NEW)


def test_a_ledger_from_before_the_check_falls_back_on_the_heuristic_then_records_it(tmp_path):
    home = DataHome(tmp_path)
    _build(home, range(1, 31), OLD, recorded=False)       # an old build: neither table records the check
    assert file_key_check(home.table_file("split_ledger")) is None
    _write_pairs(home, list(range(1, 11)) + list(range(100, 115)), OLD)
    with pytest.raises(LedgerKeysChanged):                 # nothing to compare: the heuristic, as before
        build_splits(home, CFG, **QUIET)
    assert file_key_check(home.table_file("split_ledger")) is None
    _build(home, range(1, 41), OLD)                        # growth passes the heuristic: the check is recorded
    assert file_key_check(home.table_file("split_ledger")) == key_check(OLD)
    _build(home, list(range(1, 11)) + list(range(100, 115)), OLD)   # and from now on the check is exact


def test_a_new_salt_under_a_new_secret_records_no_check(tmp_path):
    """Not refused (nothing under the new salt), but the old salt's entries keep the old pseudonyms: the ledger then
    records no check, and a build back under the old salt falls back on the heuristic."""
    home = DataHome(tmp_path)
    _build(home, range(1, 31), OLD)
    _write_pairs(home, range(1, 31), NEW)
    build_splits(home, SplitConfig(min_unique_rows=2, salt="another-salt"), **QUIET)
    assert file_key_check(home.table_file("split_ledger")) is None
    with pytest.raises(LedgerKeysChanged):
        build_splits(home, CFG, **QUIET)
