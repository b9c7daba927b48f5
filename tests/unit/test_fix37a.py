"""Fix37a: the regression the thirty-sixth session's last CI found (``tests/unit/test_hostile_rev30b.py``, the
erasure test): fix36f kept a key owner pin while a retained version publishes its key, and README 1a's erasure builds
*before* the versions published earlier are deleted, so the erased account's prompt keys and image uids stayed in
``warehouse/split_key_owners``.

Now a retained version's row of an account the warehouse no longer holds keeps no pin (``assign.Accounts``): the
row's ``user_id`` pseudonym is neither a user of ``pairs`` nor the pseudonym of an id of the warehouse's ``users``
table, keyed under the curation's ``pseudonym_secret``, which the splits step is given (the Dagster asset reads it
from the run's curation config, ``python -m pipelines.splits.assign`` from the home's settings) and uses only when
``pairs`` records that secret's key check. A deleted generation of an account that is still there keeps its pin
(rev36f), and so does every pin when the account cannot be told (no secret, another secret, no key check, no
``users`` table).
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from splits_fixtures import keyed_users, pair_row, publish_recorded, write_warehouse

from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.pseudonym import KEY_CHECK_METADATA, key_check, pseudonymize
from pipelines.splits.assign import SplitConfig, build_splits, main, normalize_prompt
from schemas import get_schema

QUIET = {"log": lambda message: None}
SECRET = "a-private-secret-of-this-home"
P = "a red fox in the snow"
V1, V2 = "2023-03-01-0000000ea1", "2023-03-02-0000000ea2"


(T_ID, T), (V_ID, V) = keyed_users(SECRET, 2)


def _write(home: DataHome, rows: list[dict], accounts: list[int], pairs_key: str | None) -> None:
    """``pairs`` as ``rows`` (recording ``pairs_key`` as the curation does), and the warehouse's rankings, images
    and users as the app holds them: those of ``rows``, and the ``accounts`` ids."""
    schema = get_schema("pairs")
    if pairs_key:
        schema = schema.with_metadata({KEY_CHECK_METADATA: pairs_key.encode("ascii")})
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), home.table_file("pairs"))
    write_warehouse(home, rows, accounts)


def _night(home: DataHome, rows: list[dict], accounts: list[int], publish: str | None = None,
           secret: str | None = SECRET, pairs_key: str | None = key_check(SECRET)) -> dict[tuple[str, str], str]:
    _write(home, rows, accounts, pairs_key)
    build_splits(home, SplitConfig(), pseudonym_secret=secret, **QUIET)
    if publish:
        publish_recorded(home, publish)
    return {(r["kind"], r["key"]): r["owner"] for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}


NIGHT1 = [pair_row(1, T, "a prompt of T", "c1a", "c1b"), pair_row(2, V, P, "c2a", "c2b")]
V_KEYS = {("prompt", normalize_prompt(P)), ("image", "2-0-a"), ("image", "2-0-b")}


def _published(home: DataHome) -> None:
    """Night 1 built and published as V1: V, filled into validation, types P (the next build pins its keys from
    V1's sidecars)."""
    _night(home, NIGHT1, [T_ID, V_ID], publish=V1)
    kept = {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
            if r["split"] in ("train", "validation", "test")}
    assert kept == {"1_0": "train", "2_0": "validation"}


def test_an_erased_accounts_pins_go_at_the_erasure_build_though_a_retained_version_shows_them(tmp_path):
    home = DataHome(tmp_path / "home")
    _published(home)
    # the erasure: V's rows and its users row leave the raw zone and so the warehouse; V1 is still on disk (README
    # 1a deletes it after this build)
    pins = _night(home, NIGHT1[:1], [T_ID])
    assert (home.datasets / V1).is_dir()
    assert V_KEYS.isdisjoint(pins)
    assert pins[("prompt", normalize_prompt("a prompt of T"))] == "train"          # T's pins stay


def test_a_deleted_generation_of_an_account_still_there_keeps_its_pins(tmp_path):
    """rev36f's case, with the secret given: V deleted its only generation, its account stays (users holds it)."""
    home = DataHome(tmp_path / "home")
    _published(home)
    pins = _night(home, NIGHT1[:1], [T_ID, V_ID])
    assert {pins[key] for key in V_KEYS} == {"validation"}


@pytest.mark.parametrize("secret, pairs_key", [
    (None, key_check(SECRET)),                  # the step not given the secret
    ("another-secret", key_check(SECRET)),      # a secret that did not key pairs
    (SECRET, None),                             # pairs recording no key check
])
def test_an_account_that_cannot_be_told_gone_keeps_its_pins(tmp_path, secret, pairs_key):
    home = DataHome(tmp_path / "home")
    _published(home)
    pins = _night(home, NIGHT1[:1], [T_ID], secret=secret, pairs_key=pairs_key)
    assert {pins[key] for key in V_KEYS} == {"validation"}


def test_a_warehouse_naming_no_account_keeps_the_pins(tmp_path):
    """No users table and rankings without user_id (a home fed by hand): no account to judge by."""
    home = DataHome(tmp_path / "home")
    _published(home)
    _write(home, NIGHT1[:1], [T_ID], key_check(SECRET))
    for part in home.table_dir("users").rglob("*.parquet"):
        part.unlink()
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    pins = {(r["kind"], r["key"]) for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}
    assert V_KEYS <= pins


def test_a_key_an_erased_and_a_remaining_account_published_keeps_its_pin(tmp_path):
    """P published by V (erased) and by W (its generation deleted, its account there): W's row keeps P's pin."""
    (W_ID, W), = keyed_users(SECRET, 1, home="validation")
    home = DataHome(tmp_path / "home")
    rows = NIGHT1 + [pair_row(3, W, P, "c3a", "c3b")]
    _night(home, rows, [T_ID, V_ID, W_ID], publish=V1)
    kept = {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
            if r["split"] in ("train", "validation", "test")}
    assert kept == {"1_0": "train", "2_0": "validation", "3_0": "validation"}
    pins = _night(home, NIGHT1[:1], [T_ID, W_ID])
    assert pins[("prompt", normalize_prompt(P))] == "validation"
    assert ("image", "2-0-a") not in pins and ("image", "3-0-a") in pins      # V's images go, W's stay


def test_the_command_line_stage_reads_the_secret_from_the_homes_settings(tmp_path, capsys):
    home = DataHome(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "pickapic.toml").write_text(f'[curation]\npseudonym_secret = "{SECRET}"\n')
    _published(home)
    _write(home, NIGHT1[:1], [T_ID], key_check(SECRET))
    main(["--home", str(home.root)])
    assert SECRET not in capsys.readouterr().out
    pins = {(r["kind"], r["key"]) for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}
    assert V_KEYS.isdisjoint(pins)


# --- rev37a's part: versions under another secret, accounts beyond users, the secret never shown ------------------

def test_the_accounts_record_never_shows_the_secret(tmp_path):
    from pipelines.splits.assign import Accounts

    accounts = Accounts.of(DataHome(tmp_path / "home"), [T], SECRET, key_check(SECRET))
    assert accounts.secret == SECRET and SECRET not in repr(accounts)
    assert Accounts.of(DataHome(tmp_path / "home"), [T], SECRET, key_check("another")).secret is None


def _quarantined(table: str, text: str) -> dict:
    return {"table": table, "dt": dt.date(2023, 3, 1), "file": f"raw/2023-03-01/{table}.jsonl.gz", "line_number": 2,
            "last_line_number": 2, "line_count": 1, "reason": "line_too_long", "detail": "cut", "raw_text": text,
            "raw_length": len(text), "raw_sha256": "0" * 64}


def _with_quarantine(home: DataHome, rows: list[dict]) -> None:
    path = home.partition_file("quarantine", "2023-03-01")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=get_schema("quarantine")), path)


def test_a_cut_quarantined_line_names_its_account_and_an_escaped_prompt_names_none(tmp_path):
    """A quarantined ranking line cut mid-prompt (not JSON) names its user (V: a ranking of V the app still holds,
    so V is no erased account and keeps its pins); a prompt that spells a user_id member names no one (a JSON string
    escapes its quotes): V, erased, still loses its pins."""
    home = DataHome(tmp_path / "home")
    _published(home)
    _write(home, NIGHT1[:1], [T_ID], key_check(SECRET))
    _with_quarantine(home, [_quarantined("rankings", '{"ranking_id": 9, "user_id": %d, "prompt": "a long one' % V_ID)])
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    pins = {(r["kind"], r["key"]) for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}
    assert V_KEYS <= pins

    home = DataHome(tmp_path / "other")
    _published(home)
    _write(home, NIGHT1[:1], [T_ID], key_check(SECRET))
    forged = '{"ranking_id": 9, "prompt": "x\\", \\"user_id\\": %d, and on' % V_ID
    assert '\\"user_id\\": %d' % V_ID in forged
    _with_quarantine(home, [_quarantined("rankings", forged)])
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    pins = {(r["kind"], r["key"]) for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}
    assert V_KEYS.isdisjoint(pins)


def test_an_erasure_after_a_secret_rotation_keeps_the_old_versions_pins_until_they_are_deleted(tmp_path):
    """V1 keyed under the old secret: none of its pseudonyms is an account under the new one, so its rows cannot be
    told and V's keys keep their pins (README 1a: they go once V1 is deleted)."""
    import shutil

    from pipelines.splits.rekey import rekey_ledger

    new = "the-new-secret"
    home = DataHome(tmp_path / "home")
    _published(home)
    rekey_ledger(home, [T_ID, V_ID], SECRET, new, SplitConfig().salt, **QUIET)
    t_new = pseudonymize(T_ID, new)
    rows = [dict(NIGHT1[0], user_id=t_new)]
    pins = _night(home, rows, [T_ID], secret=new, pairs_key=key_check(new))          # V erased
    assert {pins[key] for key in V_KEYS} == {"validation"}
    shutil.rmtree(home.datasets / V1)
    pins = _night(home, rows, [T_ID], secret=new, pairs_key=key_check(new))
    assert V_KEYS.isdisjoint(pins)


# --- rev37i's part: which secret each retained version is under is recorded, not guessed ------------------------

def test_each_versions_key_check_is_learned_once_it_is_latest_and_a_version_not_recorded_keeps_its_pins(tmp_path):
    import json
    import shutil

    from pipelines.splits.coverage import VERSION_KEYS_FILE, read_version_keys

    home = DataHome(tmp_path / "home")
    _published(home)                                       # V1 published; learned at the next build
    _night(home, NIGHT1, [T_ID, V_ID], publish=V2)
    _night(home, NIGHT1, [T_ID, V_ID])                     # V2 learned
    assert read_version_keys(home) == {V1: key_check(SECRET), V2: key_check(SECRET)}
    record = home.cache / VERSION_KEYS_FILE
    assert SECRET not in record.read_text()
    # the record lost (a cache): V2, latest, is learned again from split_pairs; V1 cannot be told
    record.unlink()
    pins = _night(home, NIGHT1[:1], [T_ID])                # V erased: its rows are in V1 and V2
    assert read_version_keys(home) == {V2: key_check(SECRET)}
    assert {pins[key] for key in V_KEYS} == {"validation"}  # V1's rows keep them
    shutil.rmtree(home.datasets / V1)
    pins = _night(home, NIGHT1[:1], [T_ID])
    assert V_KEYS.isdisjoint(pins) and read_version_keys(home) == {V2: key_check(SECRET)}
    # a damaged or foreign record names nothing, and is never followed through a link
    record.write_text("{not json")
    assert read_version_keys(home) == {}
    record.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"what": "x", "keys": {V2: key_check(SECRET)}}))
    record.symlink_to(elsewhere)
    assert read_version_keys(home) == {}


def test_a_version_of_the_erased_account_alone_loses_its_pins(tmp_path):
    """rev37i: V the only user of the retained version: the record, not its users, says which secret keyed it."""
    home = DataHome(tmp_path / "home")
    only_v = [dict(NIGHT1[1], ranking_id=2)]
    _night(home, only_v, [V_ID], publish=V1)
    _night(home, only_v, [V_ID])
    pins = _night(home, NIGHT1[:1], [T_ID])
    assert V_KEYS.isdisjoint(pins)
