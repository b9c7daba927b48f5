"""The ingest's data contracts: columns match the schemas, rules pass on ingested data, planted violations fail."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder, hostile_lines

from data_contracts.engine import evaluate, load_contract
from formats.home import DataHome
from pipelines.ingest.config import OUTPUT_DATASETS
from pipelines.ingest.day import ingest_day
from pipelines.sqlrun import connect
from schemas import get_schema

DAY = "2023-03-01"
RAW = ("raw_users", "raw_images", "raw_rankings", "raw_downloads")
UID = "0f0e0d0c-0b0a-4908-8706-050403020100"


@pytest.mark.parametrize("dataset", RAW + OUTPUT_DATASETS)
def test_contract_columns_match_schema(dataset):
    contract = load_contract(dataset)
    schema = get_schema(dataset)
    assert list(contract.columns) == schema.names
    for field in schema:
        column = contract.columns[field.name]
        assert column["physicalType"] == str(field.type)
        assert column["required"] is (not field.nullable)
        assert column["description"]


@pytest.mark.parametrize("dataset", RAW)
def test_raw_contracts_have_no_view_rules(dataset):
    contract = load_contract(dataset)
    assert contract.rules == ()
    assert "no quality rules" in contract.description


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A day with every defect planted and one 4-image ranking, ingested."""
    home = DataHome(tmp_path_factory.mktemp("contracts") / "home")
    b = DayBuilder(DAY, seed=5).populate(users=5, images=40, rankings=30, downloads=6)
    for table, line, _ in hostile_lines(b):
        b.add(table, line)
    b.add("rankings", b.ranking(image_0_uid=b.image_uids[0], image_1_uid=b.image_uids[1], image_2_uid=b.image_uids[2],
                                image_3_uid=b.image_uids[3], best_image_uid="none"))
    b.write(home, skip=("downloads",))  # a missing file too
    ingest_day(home, DAY)
    return home, {ds: pq.read_table(home.partition_file(ds, DAY)) for ds in OUTPUT_DATASETS}


def run_rules(tables: dict[str, pa.Table]) -> dict[str, dict[str, bool]]:
    """Register the six tables as views (Arrow, so a planted dt is not overridden by a hive path), evaluate."""
    return evaluate_all(connect(dict(tables)))


def evaluate_all(con) -> dict[str, dict[str, bool]]:
    outcome = {}
    for dataset in OUTPUT_DATASETS:
        results = evaluate(load_contract(dataset), con)
        for result in results:
            assert result.error is None, (result.rule.name, result.error)
        outcome[dataset] = {r.rule.name: r.passed for r in results}
    return outcome


def test_rules_pass_on_ingested_partition(ingested):
    home, tables = ingested
    assert tables["quarantine"].num_rows > 40 and tables["rankings"].num_rows > 20
    outcome = evaluate_all(connect({ds: home.partition_file(ds, DAY) for ds in OUTPUT_DATASETS}))
    failed = [(ds, rule) for ds, rules in outcome.items() for rule, ok in rules.items() if not ok]
    assert failed == []
    assert sum(len(rules) for rules in outcome.values()) >= 40


def mutate(table: pa.Table, change) -> pa.Table:
    rows = table.to_pylist()
    rows = change(rows)
    return pa.Table.from_pylist(rows, schema=table.schema)


def first(column: str, value):
    def change(rows):
        rows[0] = dict(rows[0], **{column: value})
        return rows
    return change


def last_line_row(column: str, value):
    def change(rows):
        i = max(i for i, r in enumerate(rows) if r["line_number"] > 0)
        rows[i] = dict(rows[i], **{column: value})
        return rows
    return change


def duplicate_first(rows):
    return rows + [dict(rows[0])]


def drop_first(rows):
    return rows[1:]


def two_way(rows):
    return [dict(r, image_2_uid=None, image_3_uid=None, num_shown=2) if r["num_shown"] == 4 else r for r in rows]


VIOLATIONS = [
    ("users", duplicate_first, "users_primary_key_unique"),
    ("users", first("user_id", -3), "users_ids_in_range"),
    ("users", first("dt", dt.date(2023, 3, 2)), "users_dt_is_the_partition_day"),
    ("images", duplicate_first, "images_primary_key_unique"),
    ("images", first("image_uid", "../../etc/passwd"), "images_uids_canonical"),
    ("images", first("blob_path", "/etc/passwd"), "images_blob_path_from_uid"),
    ("images", first("gs", 75.0), "images_generation_settings_valid"),
    ("images", first("idx", 9), "images_generation_settings_valid"),
    ("images", first("prompt", "it[single_quote]s"), "images_prompt_clean"),
    ("images", first("prompt", "cat [blurry]"), "images_prompt_clean"),
    ("images", first("prompt", "cat\u202e"), "images_prompt_clean"),
    ("images", first("prompt", " cat"), "images_prompt_clean"),
    ("rankings", duplicate_first, "rankings_primary_key_unique"),
    ("rankings", first("num_shown", 3), "rankings_num_shown_matches_images"),
    ("rankings", first("image_2_uid", UID), "rankings_num_shown_matches_images"),
    ("rankings", lambda rows: [dict(rows[0], image_1_uid=rows[0]["image_0_uid"])] + rows[1:],
     "rankings_shown_images_distinct"),
    ("rankings", first("best_image_uid", UID), "rankings_best_is_shown"),
    ("rankings", lambda rows: [dict(rows[0], is_tie=not rows[0]["is_tie"])] + rows[1:], "rankings_tie_iff_no_best"),
    ("rankings", first("created_at", dt.datetime(2031, 1, 1)), "rankings_created_at_plausible"),
    ("rankings", first("user_id", 2**60), "rankings_ids_in_range"),
    ("downloads", lambda rows: rows + [{"download_id": 1, "created_at": dt.datetime(2023, 3, 1), "user_id": 1,
                                        "image_uid": "NOT-A-UID", "prompt": None, "dt": dt.date(2023, 3, 1)}],
     "downloads_uids_canonical"),
    ("quarantine", duplicate_first, "quarantine_primary_key_unique"),
    ("quarantine", first("reason", "because"), "quarantine_reason_known"),
    ("quarantine", last_line_row("line_number", 0), "quarantine_file_rows_at_line_zero"),
    ("quarantine", last_line_row("raw_text", None), "quarantine_file_rows_at_line_zero"),
    ("quarantine", first("raw_sha256", "xyz"), "quarantine_raw_fields_valid"),
    ("quarantine", last_line_row("line_count", 0), "quarantine_line_span_valid"),
    ("quarantine", last_line_row("last_line_number", 10**6), "quarantine_line_span_valid"),
    ("quarantine", lambda rows: rows + [dict(rows[-1], line_number=10**6, last_line_number=10**6)],
     "quarantine_identical_lines_collapsed"),
    ("quarantine", last_line_row("line_count", 3), "ingest_files_quarantined_matches_quarantine"),
    ("quarantine", first("file", "raw/app_logs/dt=2023-03-01/other.jsonl.gz"), "quarantine_file_matches_table"),
    ("ingest_files", first("lines_in", 10**6), "ingest_files_lines_reconcile"),
    ("ingest_files", drop_first, "ingest_files_one_row_per_table"),
    ("ingest_files", first("status", "fine"), "ingest_files_status_valid"),
    ("ingest_files", first("accepted_late_image", -1), "ingest_files_late_images_valid"),
    ("ingest_files", lambda rows: [dict(r, accepted_late_image=r["accepted"] + 1) for r in rows],
     "ingest_files_late_images_valid"),
    # a row lost between the table and its count: the reconciliation against the views fails
    ("rankings", drop_first, "ingest_files_accepted_matches_tables"),
    ("images", duplicate_first, "ingest_files_accepted_matches_tables"),
    ("quarantine", lambda rows: rows[:-1], "ingest_files_quarantined_matches_quarantine"),
    ("quarantine", lambda rows: [r for r in rows if r["reason"] != "missing_file"],
     "ingest_files_file_problems_quarantined"),
]


@pytest.mark.parametrize("dataset, change, rule", VIOLATIONS, ids=[f"{v[2]}-{i}" for i, v in enumerate(VIOLATIONS)])
def test_planted_violation_fails_its_rule(ingested, dataset, change, rule):
    _, tables = ingested
    tables = dict(tables)
    if dataset == "rankings" and rule == "rankings_num_shown_matches_images":
        tables["rankings"] = mutate(tables["rankings"], two_way)  # start from 2-image rows only
    tables[dataset] = mutate(tables[dataset], change)
    outcome = run_rules(tables)
    owner = rule.split("_")[0] if not rule.startswith("ingest_files") else "ingest_files"
    assert outcome[owner][rule] is False


def test_rules_pass_when_files_are_missing_empty_or_unreadable(tmp_path):
    import gzip
    import os

    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY, seed=6).populate(users=3, images=10, rankings=8, downloads=3)
    paths = b.write(home, skip=("downloads",))
    data = paths["images"].read_bytes()
    paths["images"].write_bytes(data[: len(data) // 2])
    paths["rankings"].write_bytes(b"")
    outside = tmp_path / "outside.gz"
    outside.write_bytes(gzip.compress(b"{}\n", mtime=0))
    paths["users"].unlink()
    os.symlink(outside, paths["users"])
    report = ingest_day(home, DAY)
    assert {t: r.status for t, r in report.tables.items()} == {
        "users": "unreadable", "images": "unreadable", "rankings": "empty", "downloads": "missing"}
    outcome = evaluate_all(connect({ds: home.partition_file(ds, DAY) for ds in OUTPUT_DATASETS}))
    failed = [(ds, rule) for ds, rules in outcome.items() for rule, ok in rules.items() if not ok]
    assert failed == []
