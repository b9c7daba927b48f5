"""Quarantine rows stream to disk and identical bad lines collapse: memory is flat in the number of bad
lines, and the file's bytes do not depend on spilling, batching or the worker split."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder, hostile_lines

from formats.home import DataHome
from pipelines.ingest import quarantine, reader
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day

DAY = "2023-03-01"
REPO = Path(__file__).resolve().parents[2]


def read(home: DataHome, dataset: str) -> list[dict]:
    return pq.read_table(home.partition_file(dataset, DAY)).to_pylist()


def snapshot(home: DataHome) -> dict[str, bytes]:
    return {ds: home.partition_file(ds, DAY).read_bytes() for ds in OUTPUT_DATASETS}


def noisy_day(home: DataHome) -> DayBuilder:
    """Every line-level reason, runs of identical bad lines, exact repeats and key conflicts."""
    b = DayBuilder(DAY, seed=12).populate(users=5, images=40, rankings=40, downloads=10)
    for table, line, reason in hostile_lines(b):
        if reason != "line_too_long":
            b.add(table, line)
    for i in range(300):
        b.add("downloads", b"")                                    # blank lines, one run
        b.add("rankings", b"[%d]" % (i % 7))                       # 7 distinct arrays, interleaved
        b.add("images", b'{"image_id": %d}' % i)                   # 300 distinct missing-field lines
    repeated = b.lines["rankings"][0]
    for _ in range(50):
        b.add("rankings", repeated)                                # exact duplicates of an accepted row
    conflict = json.loads(b.lines["users"][0])
    for i in range(30):                                            # a key with 31 versions
        b.add("users", dict(conflict, created_at=f"{DAY} 00:00:{i:02d}"))
    b.add("users", b.lines["users"][0])
    b.write(home)
    return b


def test_identical_bad_lines_share_one_row(tmp_path):
    home = DataHome(tmp_path / "home")
    b = noisy_day(home)
    report = ingest_day(home, DAY)
    assert report.reconciled
    rows = read(home, "quarantine")
    blank = [q for q in rows if q["table"] == "downloads" and q["detail"] == "blank line"]
    assert len(blank) == 1 and blank[0]["line_count"] == 300
    assert blank[0]["last_line_number"] - blank[0]["line_number"] == 299
    arrays = [q for q in rows if q["table"] == "rankings" and q["reason"] == "not_an_object"]
    assert sorted(q["line_count"] for q in arrays if q["raw_text"].startswith("[") and len(q["raw_text"]) <= 3) \
        == [42, 43, 43, 43, 43, 43, 43]
    duplicates = [q for q in rows if q["reason"] == "duplicate_row" and q["table"] == "rankings"]
    assert [q["line_count"] for q in duplicates] == [50]
    conflicts = [q for q in rows if q["table"] == "users" and q["reason"] == "conflicting_primary_key"]
    # 30 different versions plus the first line twice (identical bytes): 31 rows, 32 lines
    assert len(conflicts) == 31 and sum(q["line_count"] for q in conflicts) == 32
    assert all("has 32 lines with different content (lines 1, " in q["detail"] and "... 22 more" in q["detail"]
               for q in conflicts)
    files = {f["table"]: f for f in read(home, "ingest_files")}
    for table, lines in b.lines.items():
        line_rows = [q for q in rows if q["table"] == table and q["line_number"] > 0]
        assert files[table]["quarantined"] == sum(q["line_count"] for q in line_rows) == report.tables[table].quarantined
        assert files[table]["lines_in"] == len(lines)
    assert report.asset_metadata("quarantine")["dagster/row_count"] == len(rows)


def test_spilling_changes_no_byte(tmp_path, monkeypatch):
    """Tiny memory bounds (every few rows spilled, merged in passes) give the same files as the default."""
    home = DataHome(tmp_path / "home")
    noisy_day(home)
    ingest_day(home, DAY, IngestConfig(workers=1))
    expected = snapshot(home)
    spills: list[int] = []
    real_batches = quarantine.QuarantineSink.batches

    def counting(self):
        spills.append(len(self.spills))
        return real_batches(self)

    monkeypatch.setattr(quarantine.QuarantineSink, "batches", counting)
    monkeypatch.setattr(reader, "SINK_LIMITS", quarantine.SinkLimits(max_rows=3, max_text_bytes=64, sort_rows=4,
                                                                      sort_text_bytes=64))
    monkeypatch.setattr(reader._RepeatLog, "max_events", 4)
    monkeypatch.setattr(quarantine, "FAN_IN", 2)           # merges in several passes
    monkeypatch.setattr(quarantine, "RUN_BATCH_ROWS", 2)
    ingest_day(home, DAY, IngestConfig(workers=1))
    assert snapshot(home) == expected
    assert spills and all(n > 2 for n in spills)   # every table went through several spilled runs
    ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert snapshot(home) == expected


def test_row_groups_depend_on_the_rows_only():
    text = pa.array([("x" * n) if n else None for n in [5, 0, 9, 3, 7, 1, 0, 8, 2, 6] * 30], pa.string())
    table = pa.table({"raw_text": text, "detail": pa.array([""] * len(text)), "n": pa.array(range(len(text)))})
    old = quarantine.ROW_GROUP_ROWS, quarantine.ROW_GROUP_TEXT_BYTES
    quarantine.ROW_GROUP_ROWS, quarantine.ROW_GROUP_TEXT_BYTES = 17, 40
    try:
        whole = [g.num_rows for g in quarantine._row_groups([table])]
        pieces = [g.num_rows for g in quarantine._row_groups(table.slice(i, 7) for i in range(0, table.num_rows, 7))]
        groups = list(quarantine._row_groups(table.slice(i, 1) for i in range(table.num_rows)))
    finally:
        quarantine.ROW_GROUP_ROWS, quarantine.ROW_GROUP_TEXT_BYTES = old
    assert whole == pieces == [g.num_rows for g in groups] and sum(whole) == table.num_rows
    assert max(whole) <= 17
    for group in groups[:-1]:
        lengths = [len(t or "") for t in group.column("raw_text").to_pylist()]
        assert sum(lengths) >= 40 or group.num_rows == 17
        assert sum(lengths[:-1]) < 40
    assert pa.concat_tables(groups).column("n").to_pylist() == list(range(table.num_rows))


# VmHWM is this process's own peak RSS (ru_maxrss would carry pytest's peak over the fork).
_MEASURE = textwrap.dedent("""
    import gzip, json, sys
    from pathlib import Path
    def peak_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    from formats.home import DataHome
    from pipelines.ingest.day import ingest_day
    home, day, n = DataHome(Path(sys.argv[1])), "2023-03-01", int(sys.argv[2])
    folder = home.raw_day(day)
    folder.mkdir(parents=True)
    for table in ("users", "images", "rankings"):
        (folder / f"{table}.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    (folder / "downloads.jsonl.gz").write_bytes(gzip.compress(b"\\n" * 10, 9, mtime=0))
    ingest_day(home, day)                       # warm-up: imports, Arrow pools, DuckDB (a few lines)
    before = peak_kib()
    (folder / "downloads.jsonl.gz").write_bytes(gzip.compress(b"\\n" * n, 9, mtime=0))
    (folder / "users.jsonl.gz").write_bytes(gzip.compress(b"[1]\\n" * n, 9, mtime=0))
    report = ingest_day(home, day)
    after = peak_kib()
    print(json.dumps({"growth_kib": after - before, "lines": report.quarantined, "rows": report.quarantine_rows}))
""")


def test_memory_is_flat_in_the_number_of_bad_lines(tmp_path):
    """200,000 blank lines and 200,000 identical bad lines (a few hundred bytes of gzip each): the old
    code kept every one as a row (about 350 MB here); the peak now grows by a small, fixed amount."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "home"), "200000"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lines"] == 400_000 and result["rows"] == 2
    assert result["growth_kib"] < 60 * 1024, result


@pytest.mark.parametrize("seed", range(3))
def test_spilled_merge_equals_the_in_memory_rows(tmp_path, monkeypatch, seed):
    """Random bad lines, many repeated far apart: tiny bounds and 2-way merges give the same rows."""
    import random

    rng = random.Random(seed)
    lines = [(n, rng.choice(["malformed_json", "wrong_type"]), f"detail {rng.randrange(5)}",
              rng.choice([None, "x" * rng.randrange(40)]), rng.randrange(50)) for n in range(1, 800)]
    events = [(n, reason, detail, text, length, f"{length:064x}") for n, reason, detail, text, length in lines]
    big = quarantine.QuarantineSink("users", "f", tmp_path / "big")
    monkeypatch.setattr(quarantine, "FAN_IN", 3)
    monkeypatch.setattr(quarantine, "RUN_BATCH_ROWS", 3)
    small = quarantine.QuarantineSink("users", "f", tmp_path / "small",
                                      quarantine.SinkLimits(max_rows=20, max_text_bytes=200, sort_rows=30,
                                                            sort_text_bytes=300))
    for n, reason, detail, text, length, sha in events:
        text = (text or "") + str(length)          # one text per (sha, length), as for real lines
        big.add(n, reason, detail, text, length, sha)
        small.add(n, reason, detail, text, length, sha)
    assert small.spills and not big.spills
    assert list(small.rows_in_line_order()) == list(big.rows_in_line_order())
    assert small.lines == big.lines == len(events) and small.reasons == big.reasons
    assert not list((tmp_path / "small").iterdir())   # every run file was removed once read
