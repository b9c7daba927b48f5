"""Hostile review rev36i: a second pass over fix36c (``export._piece_key`` keys a raw line only as the ingest keys it,
reading the whole line with ``parse.load_json`` / ``lenient_members``, and keys no line longer than its 1 MiB piece;
``_written_key``, the old first-piece reading, kept for the late-row check and a merge's order; app_export code v6).

How: a real PostgreSQL server (``tests/postgres_server.py``), the real ``export_day`` (first as a primary, then as a
hot standby, ``check_standby`` patched as in ``test_hostile_rev36c.py``) and the real ``ingest_day`` over the day it
published: an app row whose prompt makes its line longer than 1 MiB, edited in the app to a short prompt, re-exported.

Found: a line longer than the export's 1 MiB piece is now never keyed, so a replica's re-export keeps the old version
of an edited row beside the new one (``kept: unreadable 1``), and the ingest reads the old line's key all the same
(``lines.MemberScan``): the app's current row is quarantined ``conflicting_primary_key`` and leaves the training set,
on every re-export, for good. At the DEFAULT ``ingest.max_line_bytes`` (1 MiB) this happens to a row whose text is
under 1 MiB but whose line is over it through JSON escaping (600,000 ``"`` -> a 1.2 MB line, not cut by
``_cut_oversized``, which measures values, not lines); with ``max_line_bytes`` 2 MiB (the fixer's case) to any row
between 1 and 2 MiB. Before fix36c the first-piece reading keyed such a line by its id and the new row replaced it.

Held up (no test): the export's own cut line at the default limit (a value over 1 MiB: ``_cut_oversized`` writes
1,048,577 bytes): the re-export keeps it beside the edited row too, but the ingest quarantines it ``line_too_long``
without a key conflict and the app's new row 2 is ingested (a stale quarantine row stays: noted, not filed). An
unedited long row re-exported: one unkeyed line old, one new, nothing kept.

Found too: the late-row check (``_missing``, ``_file_counts``, ``_file_holds``) still keys raw lines with
``_written_key``, which keys a line the ingest quarantines with no key (another exporter's line with a raw tab in a
string, or text after the object): a day whose row 2 only such a line holds is called whole night after night and the
app's row 2 never reaches the ingest (deleting the line instead marks the day late at once: the control, run).

Measured: keying a 400,000-line downloads day (``_line_keys``, shared 2-CPU machine): ``_written_key`` 5.8 s,
``_piece_key`` 8.3 s, ``vanishing_rows`` (both files keyed) flat too; maxrss 93 MiB either way and tracemalloc's
peak 0.1 MiB while keying (``vanishing_rows``: 3.2 MiB, its 8-byte-a-row index): memory does not grow with the day.

Noticed, not filed: at the default limit the export's own cut line of an edited row stays beside the new row as a
stale ``line_too_long`` quarantine row, every re-export (no data loss). The fuzz of ``test_fix36c.py`` builds only
lines shorter than 1 MiB, so it never reaches the overlong branch where defect 1 lives. Not tried: a merge's order
when ``_written_key`` and ``_piece_key`` disagree on a kept line (determinism of the raw bytes held in the tests run).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both fixed the same day (fix36i, ``tests/unit/test_fix36i.py``) and the markers removed:
one reading of a raw line's key, the ingest's (``export.KeyReading``: a line within ``ingest.max_line_bytes`` read
whole with its decoder, a longer one by ``lines.MemberScan`` as it streams), both for a re-export's replacing and for
the late-row check; the export's own cut line is its row's for both (the late-row check: only the cut a re-export
writes again, ``max_line_bytes + 1`` bytes).
"""
from __future__ import annotations

import datetime as dt
import gzip
import os

import psycopg
import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.export import AppExportConfig, export_day
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

DAY = "2023-03-01"
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
UIDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(4)]
_counter = iter(range(10**6))


# --- 1. a replica keeps the old version of an edited long row: the app's row is quarantined as a key conflict ------

@pytest.mark.parametrize("prompt, limit", [
    ('"' * 600_000, 1 << 20),               # the default limit: a 1.2 MB line of a 600 KB prompt (escaped), not cut
    ("p" * ((1 << 20) + 100), 2 << 20),     # ingest.max_line_bytes 2 MiB: a 1 MiB prompt, written whole
], ids=["default-limit-escaped", "limit-2MiB"])
def test_a_replicas_re_export_of_an_edited_long_row_keeps_the_apps_row_in_the_training_set(
        postgres_server, tmp_path, monkeypatch, prompt, limit):  # noqa: F811
    dsn = create_app_database(postgres_server, f"rev36i_{os.getpid()}_{next(_counter)}")
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, %s, 'a@x', 'a')", (f"{DAY} 01:00",))
        for i, uid in enumerate(UIDS):
            conn.execute("INSERT INTO images (image_id, created_at, image_uid, user_id, prompt) "
                         "VALUES (%s, %s, %s, 1, 'a')", (i + 1, f"{DAY} 11:00", uid))
        for ranking_id, text in ((1, "a"), (2, prompt)):
            conn.execute("INSERT INTO rankings VALUES (%s, %s, 1, %s, %s, %s, %s, %s, %s)",
                         (ranking_id, f"{DAY} 12:00", *UIDS, UIDS[0], text))
    config = AppExportConfig(max_line_bytes=limit)
    export_day(home, dsn, DAY, config, now=NOW)
    path = home.raw_file(DAY, "rankings")
    old = gzip.decompress(path.read_bytes()).splitlines()
    assert len(old) == 2 and len(old[1]) > export_module.PIECE_BYTES          # row 2's line, longer than 1 MiB
    with psycopg.connect(dsn) as conn:                                         # the user edits the prompt
        conn.execute("UPDATE rankings SET prompt = 'short' WHERE ranking_id = 2")
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")
    report = export_day(home, dsn, DAY, config, now=NOW)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    ingest_day(home, DAY, IngestConfig(max_line_bytes=limit))
    rankings = pq.read_table(home.partition_file("rankings", DAY)).to_pylist()
    quarantine = pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
    conflicts = [row["reason"] for row in quarantine if row["table"] == "rankings"]
    # the app's current row 2 reaches the training set; the old version is replaced, not kept beside it
    assert "conflicting_primary_key" not in conflicts
    assert sorted((row["ranking_id"], row["prompt"]) for row in rankings) == [(1, "a"), (2, "short")]
    assert old[1] not in lines and len(lines) == 2
    assert not report.kept


# --- 2. the late-row check counts a line the ingest quarantines keyless as the row's: the day is never re-exported ---

def test_the_late_row_check_marks_a_day_whose_row_only_a_line_the_ingest_cannot_key_holds(
        postgres_server, tmp_path):  # noqa: F811
    """Another exporter wrote ranking 2's prompt tab raw (not escaped): the ingest quarantines that line
    malformed_json with no key, so the training set lacks the app's row 2. A raw day lacking a row the app holds is
    what the late-row check is for (deleting the line instead marks the day late on the first check: the control);
    it reads the line with the lenient first-piece reading (``_written_key``: 2) and calls the day whole, night after
    night, where ``_piece_key`` (the ingest's reading, fix36c) reads no key."""
    dsn = create_app_database(postgres_server, f"rev36i_{os.getpid()}_{next(_counter)}")
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users VALUES (1, %s, 'a@x', 'a')", (f"{DAY} 01:00",))
        for i, uid in enumerate(UIDS):
            conn.execute("INSERT INTO images (image_id, created_at, image_uid, user_id, prompt, model_id) "
                         "VALUES (%s, %s, %s, 1, 'a', 'm')", (i + 1, f"{DAY} 11:00", uid))
        for ranking_id, text in ((1, "a"), (2, "a\tb")):
            conn.execute("INSERT INTO rankings VALUES (%s, %s, 1, %s, %s, %s, %s, %s, %s)",
                         (ranking_id, f"{DAY} 12:00", *UIDS, UIDS[0], text))
    export_day(home, dsn, DAY, now=NOW)
    path = home.raw_file(DAY, "rankings")
    lines = [line.replace(b"a\\tb", b"a\tb") for line in gzip.decompress(path.read_bytes()).splitlines(keepends=True)]
    assert export_module._written_key(lines[1], "ranking_id") == 2
    assert export_module._piece_key(lines[1], "ranking_id") is export_module.UNREADABLE     # the ingest: no key
    staged = path.with_name(".other.tmp")
    staged.write_bytes(gzip.compress(b"".join(lines)))
    os.replace(staged, path)
    export_day(home, dsn, "2023-03-04", now=NOW)          # its late-row check compares 2023-03-01 (the control does)
    assert DAY in export_module.late_days(home)
