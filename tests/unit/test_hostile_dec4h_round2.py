"""Hostile review dec4h (round 2) of the day's fixes: the split ledger (published record, coverage skip,
new-secret refusal, rekey), the version 4 prompt key and moderation phrases, and the app DB export
(blob cap, oversized text, the whole-folder day swap). Each test reproduces a confirmed defect and is a
strict xfail: it passes today and fails the day the defect is fixed (then drop the mark).

Held (tried, no defect): the coverage skip after restoring warehouse/ and cache/ together from an older
backup (the record names an older version than ``latest``, or the restored ledger does not cover latest's
``split_pairs``: the sidecars are read and the users re-seeded), a backup of cache/ newer than the
warehouse's, a ledger edited by hand (its users' digest differs), a salt change with a covered ledger
(users known under another salt are not re-seeded either way), a sidecar holding a user in train and
validation (held-out wins), rekey killed midway (one atomic write under the ledger lock) and rekey output
(counts only, old secret only from the environment), circled digits and letters (read as themselves),
a nested DSN's password (redacted), the uid spill (unnamed, in the staging folder, closed before the swap).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil

import duckdb
import pyarrow as pa
import pytest

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb import export as export_module
from pipelines.appdb.export import AppExportReport, TableExport, export_day
from pipelines.curation.decisions import phrase_matches
from pipelines.curation.pseudonym import key_check
from pipelines.splits.assign import LedgerKeysChanged, check_keys, normalize_prompt
from tests.postgres_server import postgres_server  # noqa: F401 - fixture
from tests.unit.test_app_export import DAYS, app_db, simulated_template  # noqa: F401 - fixtures

# --- splits: the new-secret refusal ------------------------------------------------------------------

def test_a_night_of_new_users_after_a_ban_wave_is_not_taken_for_a_new_secret():
    # A young app: 30 accounts in the ledger, 20 of them a spam wave banned since (their rows left pairs, the
    # ledger keeps them, as it must); tonight 15 real users join. Same secret, same pseudonyms: pairs and the
    # ledger record the same key check of it (fixed: the check is exact, no longer a heuristic on the users).
    ledger = {f"user{i}" for i in range(30)}
    kept = {f"user{i}" for i in range(10)}               # the 10 legitimate old users, still in pairs
    tonight = {f"newcomer{i}" for i in range(15)}
    same = key_check("the one secret")
    try:
        check_keys(kept | tonight, ledger, set(), pairs_key=same, ledger_key=same)
    except LedgerKeysChanged as exc:
        pytest.fail(f"a legitimate night refused: {exc}")


# --- prompt key and moderation -------------------------------------------------------------------------

def _matches(prompts: list[str], phrases: list[str]) -> set[tuple[int, str]]:
    con = duckdb.connect()
    con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                           "prompt": pa.array(prompts, pa.string())}))
    return {(row["ranking_id"], row["phrase"]) for row in phrase_matches(con, phrases).to_pylist()}


def test_a_moderation_phrase_with_an_emoji_is_not_hidden_by_a_lookalike_or_invisible():
    prompts = ["peach 🍑 on a table", "p\u0435ach 🍑 on a table", "peach\u200b 🍑 on a table",
               "ＰＥＡＣＨ 🍑 on a table"]
    assert _matches(prompts, ["peach 🍑"]) == {(i, "peach 🍑") for i in range(len(prompts))}


def test_a_moderation_phrase_with_a_number_is_not_hidden_by_keycap_digits():
    prompts = ["a 12 year old", "a 1\ufe0f\u20e32\ufe0f\u20e3 year old", "a \u2460\u2461 year old"]
    assert _matches(prompts, ["12 year old"]) == {(i, "12 year old") for i in range(len(prompts))}


def test_a_moderation_phrase_in_regional_indicator_letters_is_matched():
    spelled = "\u200b".join(chr(0x1F1E6 + ord(c) - ord("a")) for c in "nude")
    prompts = ["a nude woman", f"a {spelled} woman", "a \U0001F17D\U0001F184\U0001F173\U0001F174 woman"]
    assert _matches(prompts, ["nude"]) == {(i, "nude") for i in range(len(prompts))}


def test_numbers_typed_as_keycaps_keep_their_value_in_the_prompt_key():
    assert normalize_prompt("3\ufe0f\u20e3 cats") != normalize_prompt("7\ufe0f\u20e3 cats")
    assert normalize_prompt("3\ufe0f\u20e3 cats") == normalize_prompt("3 cats")


def test_cjk_square_words_read_as_their_words():
    assert normalize_prompt("\u337bの写真") == normalize_prompt("平成の写真")
    assert normalize_prompt("\u337bの写真") != normalize_prompt("\u32ffの写真")
    assert normalize_prompt("トヨタ\u337f") == normalize_prompt("トヨタ株式会社")


# --- app DB export: blobs -----------------------------------------------------------------------------

def test_a_capped_copy_is_completed_when_max_bytes_is_raised(tmp_path):
    store, target = tmp_path / "store", tmp_path / "home" / "raw" / "images"
    store.mkdir()
    target.mkdir(parents=True)
    uid = "0b6a2a2e-4a4f-4b7e-9a58-2f1c1f0c9a11"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (store / f"{uid}.png").write_bytes(data)
    assert blobs._copy_one(str(store), uid, target, max_bytes=100) == "too_large"
    assert (target / f"{uid}.png").stat().st_size == 101
    outcome = blobs._copy_one(str(store), uid, target, max_bytes=10_000)     # the operator raised the limit
    assert outcome != "differs_in_store"                 # the object did not change in the store
    assert (target / f"{uid}.png").read_bytes() == data  # the feature stage can now read the whole image
    assert not (target / ".capped" / f"{uid}.png").exists()    # whole now: no longer marked as capped


def test_a_capped_copy_is_kept_when_max_bytes_is_lowered_or_the_object_changed(tmp_path):
    store, target = tmp_path / "store", tmp_path / "home" / "raw" / "images"
    store.mkdir()
    target.mkdir(parents=True)
    uid = "0b6a2a2e-4a4f-4b7e-9a58-2f1c1f0c9a11"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (store / f"{uid}.png").write_bytes(data)
    assert blobs._copy_one(str(store), uid, target, max_bytes=100) == "too_large"
    copy = (target / f"{uid}.png").read_bytes()
    assert blobs._copy_one(str(store), uid, target, max_bytes=50) == "present"    # still over the (lower) limit
    (store / f"{uid}.png").write_bytes(b"other" + data)                            # replaced in the store
    assert blobs._copy_one(str(store), uid, target, max_bytes=10_000) == "differs_in_store"
    assert (target / f"{uid}.png").read_bytes() == copy                           # the exported bytes stay
    assert sorted(p.name for p in target.iterdir()) == [".capped", f"{uid}.png"]   # no temporary file left


def test_a_whole_copy_of_an_object_that_grew_stays_frozen_after_max_bytes_is_raised(tmp_path):
    store, target = tmp_path / "store", tmp_path / "home" / "raw" / "images"
    store.mkdir()
    target.mkdir(parents=True)
    uid = "0b6a2a2e-4a4f-4b7e-9a58-2f1c1f0c9a11"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (store / f"{uid}.png").write_bytes(data[:500])                     # copied whole, then the object grew
    assert blobs._copy_one(str(store), uid, target, max_bytes=1_000) == "copied"
    (store / f"{uid}.png").write_bytes(data)
    assert blobs._copy_one(str(store), uid, target, max_bytes=10_000) == "differs_in_store"
    assert (target / f"{uid}.png").read_bytes() == data[:500]


def test_a_capped_copy_is_not_replaced_by_an_object_changed_while_it_is_completed(tmp_path, monkeypatch):
    store, target = tmp_path / "store", tmp_path / "home" / "raw" / "images"
    store.mkdir()
    target.mkdir(parents=True)
    uid = "0b6a2a2e-4a4f-4b7e-9a58-2f1c1f0c9a11"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (store / f"{uid}.png").write_bytes(data)
    assert blobs._copy_one(str(store), uid, target, max_bytes=100) == "too_large"
    copy = (target / f"{uid}.png").read_bytes()
    real = blobs._matches_copy

    def matched_then_replaced(*args, **kwargs):           # the app replaces the object right after the check
        outcome = real(*args, **kwargs)
        (store / f"{uid}.png").write_bytes(b"other" + data)
        return outcome

    monkeypatch.setattr(blobs, "_matches_copy", matched_then_replaced)
    assert blobs._copy_one(str(store), uid, target, max_bytes=10_000) == "differs_in_store"
    assert (target / f"{uid}.png").read_bytes() == copy
    assert sorted(p.name for p in target.iterdir()) == [".capped", f"{uid}.png"]


# --- app DB export: oversized text ------------------------------------------------------------------

def test_a_multibyte_text_over_the_line_limit_in_bytes_is_counted():
    limit = 1000
    name = "名" * 600                       # 600 characters, 1800 bytes of UTF-8: longer than the limit
    row = (7, "2023-02-13 10:00:00.000000", "someone@example.com", name)
    lines = [export_module.format_row("users", row)]
    assert len(lines[0]) > limit
    found: dict = {}
    export_module._cut_oversized("users", [row], lines, limit, found)
    assert found.get("users", {}).get("rows") == 1


def test_a_huge_ingest_line_limit_does_not_fail_every_export(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "pickapic.toml").write_text("[ingest]\nmax_line_bytes = 2147483647\n")
    report = export_day(home, app_db, DAYS[0])
    assert report.published == "new day"


# --- app DB export: the whole-folder day swap ---------------------------------------------------------

def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def test_a_foreign_file_replaced_during_the_swap_is_not_lost(tmp_path, monkeypatch):
    home = DataHome.at(tmp_path / "home")
    day = DAYS[0]
    final = home.raw_day(day)
    final.mkdir(parents=True)
    staging = home.raw_logs / f".dt={day}.export-test"
    staging.mkdir()
    report = AppExportReport(day=day, server={})
    for table in ("users", "images", "rankings", "downloads"):
        (final / f"{table}.jsonl.gz").write_bytes(_gz(f"old {table}\n"))
        new = _gz(f"{'new' if table == 'rankings' else 'old'} {table}\n")
        (staging / f"{table}.jsonl.gz").write_bytes(new)
        report.tables[table] = TableExport(rows=1, bytes=len(new), sha256=hashlib.sha256(new).hexdigest())
    (final / "NOTES.txt").write_text("operator's note, first version\n")
    real_exchange = export_module.exchange
    edited: list[bool] = []

    def exchange_after_an_edit(first, second):
        if not edited:                                         # the operator's editor saves: write, rename over
            edited.append(True)
            (final / "NOTES.txt.saving").write_text("operator's note, SECOND version\n")
            os.replace(final / "NOTES.txt.saving", final / "NOTES.txt")
        return real_exchange(first, second)

    monkeypatch.setattr(export_module, "exchange", exchange_after_an_edit)
    try:
        export_module._publish(home, day, staging, report)
    except export_module.DayFolderRefused:
        pass                                                   # refusing keeps the promise too
    finally:
        shutil.rmtree(staging, ignore_errors=True)             # what export_day's cleanup does
    assert (final / "NOTES.txt").read_text() == "operator's note, SECOND version\n"
