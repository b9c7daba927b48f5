"""ingest_day end to end on seeded raw days: reasons, reconciliation, references, idempotence, atomicity."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder, clean_home, hostile_lines

from formats.home import DataHome
from pipelines.ingest import day as ingest
from pipelines.ingest import reader
from pipelines.ingest.__main__ import main as ingest_cli
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.parse import mask_line, redact_personal

DAY = "2023-03-01"


def read(home: DataHome, dataset: str, day: str = DAY) -> list[dict]:
    return pq.read_table(home.partition_file(dataset, day)).to_pylist()


def snapshot(home: DataHome, day: str = DAY) -> dict[str, bytes]:
    return {ds: home.partition_file(ds, day).read_bytes() for ds in OUTPUT_DATASETS}


@pytest.fixture(scope="module")
def hostile_day(tmp_path_factory):
    """One day with every line-level defect planted, plus exact duplicates and key conflicts."""
    home = DataHome(tmp_path_factory.mktemp("hostile") / "home")
    b = DayBuilder(DAY, seed=1).populate(users=6, images=30, rankings=25, downloads=8)
    expected: dict[tuple[str, int], str] = {}
    for table, line, reason in hostile_lines(b):
        expected[(table, b.add(table, line))] = reason
    # exact duplicate of a clean ranking: the first stays, the copy is quarantined
    dup_source = b.lines["rankings"][0]
    expected[("rankings", b.add("rankings", dup_source))] = "duplicate_row"
    # two versions of one image key: every version is quarantined (the clean first one too)
    first = json.loads(b.lines["images"][3])
    expected[("images", 4)] = "conflicting_primary_key"
    expected[("images", b.add("images", dict(first, prompt="a different prompt")))] = "conflicting_primary_key"
    expected[("images", b.add("images", b.lines["images"][3]))] = "conflicting_primary_key"
    # a 4-image ranking, a tie with an escaped, bracketed prompt: accepted and transformed
    four = b.ranking(image_0_uid=b.image_uids[5], image_1_uid=b.image_uids[6], image_2_uid=b.image_uids[7],
                     image_3_uid=b.image_uids[8], best_image_uid=b.image_uids[8], ranking_id=900001)
    tie = b.ranking(best_image_uid="none", prompt=" it[single_quote]s a cat [blurry, dark]  [ugly] ", ranking_id=900002)
    b.add("rankings", four)
    b.add("rankings", tie)
    b.write(home)
    report = ingest_day(home, DAY)
    return home, b, expected, report


def first_and_last_lines(rows: list[dict]) -> dict[tuple[str, int], str]:
    """(table, line) -> reason for the first and the last line of every (collapsed) quarantine row."""
    out = {}
    for q in rows:
        out[(q["table"], q["line_number"])] = out[(q["table"], q["last_line_number"])] = q["reason"]
    return out


def test_every_planted_line_lands_in_quarantine_with_its_reason(hostile_day):
    home, _, expected, report = hostile_day
    rows = read(home, "quarantine")
    assert first_and_last_lines(rows) == expected
    assert sum(q["line_count"] for q in rows) == len(expected)
    # the two byte-identical versions of one conflicting image key (lines 4 and 49) share one row
    [both] = [q for q in rows if q["line_count"] > 1]
    assert (both["table"], both["line_number"], both["last_line_number"], both["line_count"]) == ("images", 4, 49, 2)
    assert set(report.quarantine_by_reason()) == set(expected.values())


def test_counts_reconcile(hostile_day):
    home, b, expected, report = hostile_day
    assert report.reconciled
    files = {row["table"]: row for row in read(home, "ingest_files")}
    for table, lines in b.lines.items():
        planted = sum(1 for (t, _) in expected if t == table)
        row = files[table]
        assert row["lines_in"] == len(lines) == report.tables[table].lines_in
        assert row["quarantined"] == planted
        assert row["accepted"] == len(lines) - planted == len(read(home, table))
        assert row["status"] == "ok" and row["file_sha256"] and row["file_bytes"] > 0


def test_quarantine_rows_keep_the_raw_line(hostile_day):
    home, b, _, _ = hostile_day
    rows = {(q["table"], q["line_number"]): q for q in read(home, "quarantine")}
    import hashlib

    for (table, number), row in rows.items():
        line = b.lines[table][number - 1]
        assert row["raw_length"] == len(line)
        assert row["raw_sha256"] == hashlib.sha256(line).hexdigest()
        text = line[: 64 * 1024].decode("utf-8", "replace")
        # a line may hold emails and names: masked in the warehouse (users lines: review rev25b; every table's:
        # rev25h), the raw line found by its sha256
        assert row["raw_text"] == mask_line(table, text)
        assert row["raw_text"] == (redact_personal(text) if table == "users" else row["raw_text"])
        assert row["file"] == f"raw/app_logs/dt={DAY}/{table}.jsonl.gz" and row["detail"]
    long_row = next(r for r in rows.values() if r["reason"] == "line_too_long")
    # its first 64 KiB (masked as above: not a JSON value a field reads, one bare word)
    assert long_row["raw_length"] > (1 << 20) and 0 < len(long_row["raw_text"]) <= 64 * 1024


def test_accepted_rows_are_transformed_and_sorted(hostile_day):
    home, _, _, _ = hostile_day
    rankings = read(home, "rankings")
    assert [r["ranking_id"] for r in rankings] == sorted(r["ranking_id"] for r in rankings)
    by_id = {r["ranking_id"]: r for r in rankings}
    four, tie = by_id[900001], by_id[900002]
    assert four["num_shown"] == 4 and not four["is_tie"] and four["best_image_uid"] == four["image_3_uid"]
    assert tie["num_shown"] == 2 and tie["is_tie"] and tie["best_image_uid"] is None
    assert tie["prompt"] == "it's a cat" and tie["bracket_negative_prompt"] == "blurry, dark, ugly"
    assert isinstance(tie["created_at"], dt.datetime) and all(r["dt"] == dt.date(2023, 3, 1) for r in rankings)
    images = read(home, "images")
    assert [i["image_uid"] for i in images] == sorted(i["image_uid"] for i in images)
    assert all(i["blob_path"] == f"raw/images/{i['image_uid']}.png" for i in images)
    assert set(read(home, "users")[0]) == {"user_id", "created_at", "dt"}  # no email, no name


def test_metadata_is_json_and_lists_reasons(hostile_day):
    _, _, expected, report = hostile_day
    meta = report.metadata()
    json.dumps(meta)
    assert meta["reconciled"] is True
    assert meta["rows_quarantined"] == len(expected)
    assert meta["lines_in"] == meta["rows_accepted"] + meta["rows_quarantined"]
    assert "| rankings | duplicate_row | 1 |" in meta["quarantine_reasons_md"]


def test_file_level_problems(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=10, rankings=10, downloads=4)
    paths = b.write(home, skip=("downloads",))
    images_gz = paths["images"].read_bytes()
    paths["images"].write_bytes(images_gz[: len(images_gz) * 2 // 3])  # truncated mid-stream
    paths["users"].write_bytes(b"")                                    # empty
    paths["rankings"].write_bytes(b"this is not gzip\n")              # not gzip
    report = ingest_day(home, DAY)
    assert report.reconciled
    status = {t: r.status for t, r in report.tables.items()}
    assert status == {"users": "empty", "images": "unreadable", "rankings": "unreadable", "downloads": "missing"}
    file_rows = {(q["table"], q["reason"]) for q in read(home, "quarantine") if q["line_number"] == 0}
    assert file_rows == {("images", "unreadable_file"), ("rankings", "unreadable_file"), ("downloads", "missing_file")}
    images = report.tables["images"]
    assert 0 < images.accepted < 10 and images.lines_in == images.accepted + images.quarantined
    files = {r["table"]: r for r in read(home, "ingest_files")}
    assert files["downloads"]["file_sha256"] is None and files["downloads"]["lines_in"] == 0
    assert files["users"]["lines_in"] == 0 and files["users"]["file_sha256"] is not None


def test_link_out_of_the_home_is_not_read(tmp_path):
    home, _ = clean_home(tmp_path)
    outside = tmp_path / "secret.jsonl.gz"
    outside.write_bytes(gzip.compress(b'{"user_id": 1}\n', mtime=0))
    target = home.raw_file(DAY, "users")
    target.unlink()
    os.symlink(outside, target)
    report = ingest_day(home, DAY)
    assert report.tables["users"].status == "unreadable" and report.tables["users"].lines_in == 0
    assert report.tables["users"].error == f"path 'raw/app_logs/dt={DAY}/users.jsonl.gz' resolves outside the raw zone"


def test_references_resolve_against_this_earlier_and_late_days(tmp_path):
    home = DataHome(tmp_path / "home")
    day1 = DayBuilder("2023-03-01", seed=1).populate(users=2, images=6, rankings=2, downloads=1)
    late_image = day1.image(created_at="2019-01-01 00:00:00")  # quarantined itself, but it was exported
    day1.add("images", late_image)
    day1.write(home)
    day3 = DayBuilder("2023-03-03", seed=3, id_base=10_000).populate(users=2, images=4, rankings=1, downloads=0)
    day3.write(home)
    day2 = DayBuilder("2023-03-02", seed=2, id_base=5_000).populate(users=2, images=4, rankings=2, downloads=0)
    old, future = day1.image_uids[0], day3.image_uids[0]
    day2.add("rankings", day2.ranking(image_0_uid=old, image_1_uid=day2.image_uids[0], best_image_uid=old))
    day2.add("rankings", day2.ranking(image_0_uid=late_image["image_uid"], image_1_uid=day2.image_uids[1],
                                      best_image_uid="none"))
    future_line = day2.add("rankings", day2.ranking(image_0_uid=future, image_1_uid=day2.image_uids[2],
                                                    best_image_uid="none"))
    day2.add("downloads", day2.download(image_uid=old))
    day2.write(home)
    no_wait = IngestConfig(late_image_days=0)
    report = ingest_day(home, "2023-03-02", no_wait)
    assert report.reconciled
    assert report.tables["rankings"].accepted == 4 and report.tables["downloads"].accepted == 1
    [q] = read(home, "quarantine", "2023-03-02")
    assert (q["table"], q["line_number"], q["reason"]) == ("rankings", future_line, "unknown_image_reference")
    # the result depends on the raw zone only: ingesting other days first changes nothing
    before = snapshot(home, "2023-03-02")
    ingest_day(home, "2023-03-01", no_wait)
    ingest_day(home, "2023-03-03", no_wait)
    ingest_day(home, "2023-03-02", no_wait)
    assert snapshot(home, "2023-03-02") == before
    # by default an image exported up to 2 days later resolves the reference: accepted, counted as late
    report = ingest_day(home, "2023-03-02")
    assert report.tables["rankings"].accepted == 5 and report.tables["rankings"].accepted_late_image == 1
    assert read(home, "quarantine", "2023-03-02") == []
    assert {f["table"]: f["accepted_late_image"] for f in read(home, "ingest_files", "2023-03-02")} == \
        {"users": 0, "images": 0, "rankings": 1, "downloads": 0}


def test_uid_index_is_a_cache_of_the_raw_bytes_only(tmp_path):
    """Earlier days are searched through their uid index; a changed raw file or a broken index
    falls back to the bytes, so the answer never depends on a stale cache."""
    home = DataHome(tmp_path / "home")
    day1 = DayBuilder("2023-03-01", seed=1).populate(users=2, images=6, rankings=2, downloads=0)
    day1.write(home)
    day2 = DayBuilder("2023-03-02", seed=2, id_base=5_000).populate(users=2, images=4, rankings=1, downloads=0)
    old = day1.image_uids[0]
    line = day2.add("rankings", day2.ranking(image_0_uid=old, image_1_uid=day2.image_uids[0], best_image_uid=old))
    day2.write(home)
    index = home.raw_image_uid_index("2023-03-01")

    ingest_day(home, "2023-03-01")
    assert index.is_file() and old in pq.read_table(index).column("image_uid").to_pylist()
    assert ingest_day(home, "2023-03-02").tables["rankings"].accepted == 2
    accepted = snapshot(home, "2023-03-02")

    index.write_bytes(b"not parquet")  # a broken index is searched around and rewritten
    ingest_day(home, "2023-03-02")
    assert snapshot(home, "2023-03-02") == accepted
    assert old in pq.read_table(index).column("image_uid").to_pylist()

    # day 1 is re-exported without that image: the index no longer describes the file
    day1.lines["images"] = [text for text in day1.lines["images"] if old.encode() not in text]
    day1.write(home)
    report = ingest_day(home, "2023-03-02")
    [q] = read(home, "quarantine", "2023-03-02")
    assert (q["line_number"], q["reason"]) == (line, "unknown_image_reference")
    assert report.tables["rankings"].accepted == 1
    assert old not in pq.read_table(index).column("image_uid").to_pylist()

    # deleting the cache changes nothing but speed
    import shutil
    quarantined = snapshot(home, "2023-03-02")
    shutil.rmtree(home.cache)
    ingest_day(home, "2023-03-02")
    assert snapshot(home, "2023-03-02") == quarantined


def test_rerun_is_byte_identical_and_independent_of_the_home_path(tmp_path):
    home_a, _ = clean_home(tmp_path / "a", seed=4)
    home_b, _ = clean_home(tmp_path / "b", seed=4)
    ingest_day(home_a, DAY)
    first = snapshot(home_a)
    ingest_day(home_a, DAY)
    assert snapshot(home_a) == first
    ingest_day(home_b, DAY)
    assert snapshot(home_b) == first


def test_failed_write_keeps_the_previous_version(tmp_path, monkeypatch):
    home, b = clean_home(tmp_path)
    ingest_day(home, DAY)
    before = snapshot(home)
    b.add("rankings", b.ranking())
    b.write(home)
    real_write = ingest.pq.write_table
    calls = []

    def failing_write(table, where, **options):
        calls.append(where)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        return real_write(table, where, **options)

    monkeypatch.setattr(ingest.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ingest_day(home, DAY)
    assert snapshot(home) == before
    leftovers = [p for p in home.warehouse.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []
    monkeypatch.setattr(ingest.pq, "write_table", real_write)
    ingest_day(home, DAY)
    assert len(read(home, "rankings")) == len(b.lines["rankings"])


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_line_bytes"):
        IngestConfig(max_line_bytes=0)
    with pytest.raises(ValueError, match="earliest_created_at"):
        IngestConfig(earliest_created_at="yesterday")
    with pytest.raises(ValueError, match="'2023-3-1'"):
        ingest_day(DataHome(__import__("pathlib").Path("/nonexistent")), "2023-3-1")


def test_command_line(tmp_path, capsys):
    home, b = clean_home(tmp_path)
    assert ingest_cli(["--home", str(home.root), "--day", DAY]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reconciled"] and summary["rows_accepted"] == sum(len(v) for v in b.lines.values())
    assert home.partition_file("ingest_files", DAY).exists()


def test_worker_processes_give_identical_output(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY, seed=8).populate(users=4, images=30, rankings=30, downloads=6)
    for table, line, reason in hostile_lines(b):
        if reason != "line_too_long":
            b.add(table, line)
    b.write(home)
    serial = ingest_day(home, DAY, IngestConfig(workers=1))
    expected = snapshot(home)
    parallel = ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert snapshot(home) == expected
    assert parallel.metadata()["quarantine_by_reason"] == serial.metadata()["quarantine_by_reason"]


def test_worker_parts_split_by_key_and_redo_a_table_whose_key_met_two_workers(tmp_path, monkeypatch):
    """Each worker validates the lines whose primary key (read from the raw bytes) routes to it; a key
    whose versions still reach two workers (here: an escaped uid the router cannot read) makes
    ingest_day redo that table in one process, so the output never depends on the split."""
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY, seed=9).populate(users=4, images=40, rankings=30, downloads=6)
    routed_to_1 = next(u for u in b.image_uids
                       if reader._route(f'"image_uid": "{u}",'.encode(), reader._ROUTE_RE["images"], 2) == 1)
    version = json.loads(next(line for line in b.lines["images"] if routed_to_1.encode() in line))
    escaped = json.dumps(dict(version, prompt="another prompt")).replace(routed_to_1, "\\u00" + routed_to_1[:1].encode().hex() + routed_to_1[1:])
    assert reader._ROUTE_RE["images"].search(escaped.encode()) is None and json.loads(escaped)["image_uid"] == routed_to_1
    b.add("images", escaped.encode())
    b.write(home)
    serial = ingest_day(home, DAY, IngestConfig(workers=1))
    expected = snapshot(home)
    assert serial.tables["images"].reasons.get("conflicting_primary_key") == 2

    verdicts = []
    real = ingest._split_keys

    def spy(parts):
        verdicts.append(real(parts))
        return verdicts[-1]

    monkeypatch.setattr(ingest, "_split_keys", spy)   # runs in the parent, once per table
    parallel = ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert snapshot(home) == expected
    assert dict(zip(ingest.RAW_TABLES, verdicts)) == {"users": False, "images": True, "rankings": False, "downloads": False}
    assert parallel.metadata()["quarantine_by_reason"] == serial.metadata()["quarantine_by_reason"]


def test_asset_metadata_per_dataset(hostile_day):
    home, b, expected, report = hostile_day
    for dataset in OUTPUT_DATASETS:
        meta = report.asset_metadata(dataset)
        json.dumps(meta)
        assert meta["dagster/row_count"] == pq.read_metadata(home.partition_file(dataset, DAY)).num_rows
    rankings = report.asset_metadata("rankings")
    assert rankings["lines_in"] == len(b.lines["rankings"]) and rankings["reconciled"] is True
