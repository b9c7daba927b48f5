"""Fixes of hostile review rev25b (the README as a contract), fast checks beside the review's own tests.

- ``users_prompts_per_split`` counts each pair once (it counted both image sides);
- the warehouse quarantine masks the emails and names of quarantined users lines (raw_text and detail), a line
  too broken to parse included, keeping what finds the line in the raw zone;
- the rules of split_ledger / split_key_owners / split_rejects / raw_zone_problems are asset checks of the assets
  that write those tables, and a failed blocking one fails the asset's data version;
- ``pipelines.ingest.rawrecord``: every build names the raw-zone entries it skips and records them in
  raw_zone_problems when they differ from what is stored (never in a home whose ingest never ran, never while
  another process holds the ingest lock).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import hashlib
import json
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import rawrecord
from pipelines.ingest.day import ingest_day, ingest_lock_path
from pipelines.ingest.lines import RAW_TEXT_BYTES
from pipelines.ingest.parse import PERSONAL_TEXT_CHARS, REDACTED, redact_personal
from schemas import get_schema

ROOT = Path(__file__).resolve().parents[2]
DAY = "2023-03-01"
EMAIL, NAME = "hana.okafor7@example.com", "Hana Okafor"


# --- users_prompts_per_split ----------------------------------------------------------------------------------

def test_users_prompts_per_split_counts_each_pair_once() -> None:
    pairs = pa.table({
        "split": ["train", "train", "train", "test"],
        "ranking_id": [1, 1, 2, 3],
        "user_id": ["a", "a", "b", "c"],
        "prompt_key": ["p", "p", "q", "r"],
        "image_0_uid": ["i1", "i1", "i3", "i5"],
        "image_1_uid": ["i2", "i3", "i4", "i5"],
    })
    con = duckdb.connect()
    con.register("pairs", pairs)
    sql = (ROOT / "sql" / "queries" / "users_prompts_per_split.sql").read_text()
    rows = {r[0]: r[1:] for r in con.sql(sql).fetchall()}
    # split: pairs, rankings, users, prompts, images (distinct over both sides)
    assert rows == {"train": (3, 2, 2, 2, 4), "test": (1, 1, 1, 1, 1)}
    assert [r[0] for r in con.sql(sql).fetchall()] == ["train", "test"]      # the documented order


# --- emails and names stay in the raw zone -------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    json.dumps({"user_id": 17, "created_at": "2023-03-01 10:00:00", "email": EMAIL, "name": NAME}),
    f'{{"user_id": 17, "created_at": "2023-03-01 10:00:00", "email": "{EMAIL}", "name": "{NAME}',   # cut
    f'{{"user_id": 17, "em\\u0061il": ["{EMAIL}"], "name": {{"first": "{NAME}"}}}}',
    f"user 17 {EMAIL} {NAME}",                                                                        # not JSON
    f'["{EMAIL}", "{NAME}", 5, true, null]',
    f'{{"user_id": "{EMAIL}", "created_at": "{NAME}"}}',                                              # misplaced
    f'{{"user_id": 17, "{EMAIL}": "{NAME}"}}',
    f'"{EMAIL}\\',
])
def test_redaction_masks_any_email_and_name(text: str) -> None:
    masked = redact_personal(text)
    assert EMAIL not in masked and NAME not in masked and "Hana" not in masked and "example" not in masked
    assert REDACTED in masked
    assert redact_personal(text) == masked          # deterministic


def test_redaction_keeps_the_shape_ids_and_times() -> None:
    line = '{"user_id": 17, "created_at": "2023-03-01 10:00:00.5", "email": null, "name": "X Y", "n": -1.5e3}'
    assert redact_personal(line) == ('{"user_id": 17, "created_at": "2023-03-01 10:00:00.5", "email": null, '
                                     '"name": "[redacted]", "[redacted]": -1.5e3}')


def test_redaction_is_bounded_whatever_the_line() -> None:
    text = ('"a",' * (RAW_TEXT_BYTES // 4))[:RAW_TEXT_BYTES]       # many short strings: each grows when masked
    masked = redact_personal(text)
    assert masked == redact_personal(text[:PERSONAL_TEXT_CHARS]) and len(masked) <= RAW_TEXT_BYTES
    assert masked.count(REDACTED) == PERSONAL_TEXT_CHARS // 4


def _users_home(tmp_path: Path) -> tuple[DataHome, DayBuilder, dict[str, int]]:
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=1)
    lines = {
        "wrong_type": b.add("users", b.user(email=[EMAIL], name=NAME)),
        "unexpected": b.add("users", b.user(**{"Hana Okafor": EMAIL})),
        "broken": b.add("users", f'{{"user_id": 90, "created_at": "{DAY} 10:00:00", "email": "{EMAIL}", "name": "{NAME}'),
        "not_json": b.add("users", f"user 91 {EMAIL} {NAME}"),
        "misplaced": b.add("users", b.user(user_id=EMAIL, name=NAME)),
        "bad_time": b.add("users", b.user(created_at=NAME, email=EMAIL)),
    }
    dup = b.user(email=EMAIL, name=NAME)
    lines["duplicate"] = b.add("users", dup)
    b.add("users", dup)
    conflict = b.user(email=EMAIL, name=NAME)
    lines["conflict"] = b.add("users", conflict)
    b.add("users", {**conflict, "name": NAME + " Jr"})
    b.add("images", b.image(prompt=f"a portrait of {NAME}", seed="x"))     # another table: its prompt as written
    b.write(home)
    return home, b, lines


def test_the_warehouse_quarantine_masks_users_lines_and_keeps_how_to_find_them(tmp_path: Path) -> None:
    home, b, lines = _users_home(tmp_path)
    report = ingest_day(home, DAY)
    assert report.reconciled
    rows = pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
    users = [r for r in rows if r["table"] == "users"]
    quarantined = set(lines.values()) - {lines["duplicate"]} | {lines["duplicate"] + 1}   # a duplicate's first is kept
    assert {r["line_number"] for r in users} == quarantined | {lines["conflict"] + 1}
    for row in users:
        stored = json.dumps(row, default=str)
        assert EMAIL not in stored and NAME not in stored and "Hana" not in stored, row
        line = b.lines["users"][row["line_number"] - 1]       # found in the raw zone by line number and sha256
        assert row["raw_sha256"] == hashlib.sha256(line).hexdigest() and row["raw_length"] == len(line)
        assert row["file"] == f"raw/app_logs/dt={DAY}/users.jsonl.gz"
        assert row["raw_text"] == redact_personal(line.decode("utf-8", "replace"))
    by_line = {r["line_number"]: r for r in users}
    assert by_line[lines["wrong_type"]]["detail"] == "email: array <value>, expected string"
    assert by_line[lines["misplaced"]]["detail"] == "user_id: string <value>, expected integer"
    assert by_line[lines["unexpected"]]["detail"] == "unexpected <value>"
    assert by_line[lines["duplicate"] + 1]["reason"] == "duplicate_row"
    assert by_line[lines["conflict"]]["reason"] == "conflicting_primary_key"
    image = next(r for r in rows if r["table"] == "images")
    # another table's prompt is kept as written (a prompt is the app's content); a string where the table reads a
    # number, an id or a time is masked in it too (review rev25h: an email typed into user_id)
    assert NAME in image["raw_text"] and image["detail"] == "seed: string <value>, expected integer"
    assert '"seed": "[redacted]"' in image["raw_text"]
    # nothing else in the warehouse holds them either
    for path in sorted(home.warehouse.rglob("*.parquet")):
        if "quarantine" not in path.parts:
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
            assert EMAIL not in text, path


def test_the_masked_quarantine_is_byte_identical_run_to_run(tmp_path: Path) -> None:
    a, _, _ = _users_home(tmp_path / "a")
    b, _, _ = _users_home(tmp_path / "b")
    ingest_day(a, DAY)
    ingest_day(b, DAY)
    assert a.partition_file("quarantine", DAY).read_bytes() == b.partition_file("quarantine", DAY).read_bytes()


# --- the warehouse contracts as asset checks -------------------------------------------------------------------

def test_every_rule_of_the_stage_written_tables_is_a_check_of_the_writing_asset() -> None:
    from dagster_project.definitions import defs
    from data_contracts.engine import load_contract

    graph = defs.resolve_asset_graph()
    keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    for asset, dataset in (("split_pairs", "split_ledger"), ("split_pairs", "split_key_owners"),
                           ("split_pairs", "split_rejects"), ("ingest_files", "raw_zone_problems")):
        for rule in load_contract(dataset).rules:
            key = dg.AssetCheckKey(dg.AssetKey(asset), f"{dataset}__{rule.check_name}")
            assert (asset, key.name) in keys
            assert graph.get_check_spec(key).blocking == rule.blocking


class _Report:
    def metadata(self) -> dict:
        return {}


def _ledger(home: DataHome, users: list[str]) -> None:
    n = len(users)
    table = pa.table({"user_id": users, "split": ["train"] * n, "rule": ["first_user"] * n,
                      "position": list(range(n)), "first_dt": [dt.date(2023, 3, 1)] * n, "salt": ["s"] * n,
                      "settings": [None] * n},
                     schema=get_schema("split_ledger"))
    home.table_dir("split_ledger").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, home.table_file("split_ledger"))


def test_a_duplicated_split_ledger_fails_a_blocking_check_of_split_pairs(tmp_path: Path) -> None:
    from dagster_project.assets.splits import SPLIT_RECORDS
    from dagster_project.contracts import materialize_and_check

    home = DataHome(tmp_path / "home")

    def results() -> tuple[str, dict[str, dg.AssetCheckResult]]:
        out = list(materialize_and_check(home, ["split_pairs"], _Report(), data_version="v1",
                                         also={"split_pairs": SPLIT_RECORDS}))
        version = next(r for r in out if isinstance(r, dg.MaterializeResult)).data_version.value
        return version, {r.check_name: r for r in out if isinstance(r, dg.AssetCheckResult)}

    _ledger(home, ["a", "b"])
    version, checks = results()
    assert version == "v1" and all(c.passed for c in checks.values()), [n for n, c in checks.items() if not c.passed]
    assert {n.split("__")[0] for n in checks if "__" in n} == set(SPLIT_RECORDS)
    _ledger(home, ["a", "a"])
    version, checks = results()
    failed = checks["split_ledger__split_ledger_primary_key_unique"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.asset_key == dg.AssetKey("split_pairs")
    assert version.endswith("-failed-checks")


def test_raw_zone_problems_are_a_warehouse_view_of_the_checks(tmp_path: Path) -> None:
    from dagster_project.contracts import warehouse_views

    views = warehouse_views(DataHome(tmp_path / "home"))
    assert "raw_zone_problems" in views and not any(name in views for name in ("raw_users", "raw_rankings"))


# --- raw-zone entries: named and recorded by every build -------------------------------------------------------

def _ingested_home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    ingest_day(home, DAY)
    assert pq.read_table(home.table_file("raw_zone_problems")).num_rows == 0
    return home


def test_note_raw_zone_warns_and_records_new_entries_once(tmp_path: Path) -> None:
    home = _ingested_home(tmp_path)
    (home.raw_logs / "junk").mkdir()
    (home.raw_logs / "stray.txt").write_text("x\n")
    table = home.table_file("raw_zone_problems")
    warned: list[str] = []
    rawrecord.note_raw_zone(home, warned.append, record=False)        # a dry run: named, nothing written
    assert [w.split(":")[0] for w in warned] == ["skipped raw/app_logs/junk", "skipped raw/app_logs/stray.txt"]
    assert pq.read_table(table).num_rows == 0
    rawrecord.note_raw_zone(home, warned.append)
    recorded = pq.read_table(table).to_pylist()
    assert [r["path"] for r in recorded] == ["raw/app_logs/junk", "raw/app_logs/stray.txt"]
    assert recorded == pq.read_table(table).to_pylist()
    inode = table.stat().st_ino
    assert not rawrecord.record_raw_zone_problems(home)                 # unchanged: not rewritten
    assert table.stat().st_ino == inode
    # what an ingest writes for the same raw zone is the same table, byte for byte
    written = table.read_bytes()
    ingest_day(home, DAY)
    assert table.read_bytes() == written
    # an entry removed is removed from the record too
    (home.raw_logs / "junk").rmdir()
    (home.raw_logs / "stray.txt").unlink()
    assert rawrecord.record_raw_zone_problems(home)
    assert pq.read_table(table).num_rows == 0


def test_nothing_is_recorded_where_no_ingest_ran_or_while_another_holds_the_ingest_lock(tmp_path: Path) -> None:
    fresh = DataHome(tmp_path / "fresh")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(fresh)
    (fresh.raw_logs / "junk").mkdir()
    warned: list[str] = []
    rawrecord.note_raw_zone(fresh, warned.append)
    assert warned and not fresh.warehouse.exists()                      # the first ingest writes the table

    home = _ingested_home(tmp_path)
    (home.raw_logs / "junk").mkdir()
    path = ingest_lock_path(home)
    with open(path, "a+b") as held:                                     # another process's ingest, as flock sees it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert not rawrecord.record_raw_zone_problems(home)
        assert pq.read_table(home.table_file("raw_zone_problems")).num_rows == 0
    assert rawrecord.record_raw_zone_problems(home)
    assert pq.read_table(home.table_file("raw_zone_problems")).column("entry").to_pylist() == ["raw/app_logs/junk"]


def test_the_raw_users_file_is_read_back_unchanged(tmp_path: Path) -> None:
    """The raw zone keeps the line as written: the warehouse's masked copy points at it."""
    home, _, lines = _users_home(tmp_path)
    ingest_day(home, DAY)
    raw = gzip.decompress(home.raw_file(DAY, "users").read_bytes()).split(b"\n")
    assert EMAIL.encode() in raw[lines["broken"] - 1]
