"""Hostile review rev36c: a second pass over fix35d (a parallel ingest's overlong lines scanned once, by worker 0, whose
``reader.OverlongMembers`` records the other workers and a table's redo read) and fix35g (the app export's fast key
match reads only the plain form, ``export._key_re`` / ``_named_again``; every other line is decoded by ``_scan_key``).

How: the real code. fix35d: real gzip raw days (``DayBuilder``) through the real ``ingest_day`` with ``workers`` 1, 2
and 3 (real forked workers, ``parallel_min_bytes`` = 1, ``max_line_bytes`` = 1,000) on a hostile day: an overlong
first line behind a BOM, overlong lines whose key member is spelled ``download\\u005fid`` / ``\\u0069mage_id``, named
twice alike and twice with two values, exact repeats of an overlong line, an overlong version of a key whose short
version is written ``N.0`` (the keys split between workers, so the table is redone in one process, reading worker 0's
records strictly), a top-level array, a key string past ``MemberScan.CAP``. fix35g: ``_piece_key`` and ``_scan_key``
against the ingest's ``LineParser.parse`` / ``overlong_key`` on hand-made lines and 40,000 mutated lines (tokens:
escaped names, ``05``, ``tru``, brackets, quotes, backslashes, invalid UTF-8, the name again), ``vanishing_rows``
(what a re-export keeps), and a real PostgreSQL server (``tests/postgres_server.py``) driving ``export_day`` as a hot
standby over a day another exporter rewrote.

Held up (no test): the ingest's outputs were byte-identical with 1, 2 and 3 workers on that day (2.0 s, 0.4 s, 0.5 s
here), every overlong line quarantined ``line_too_long`` (exact repeats as one row, ``line_count`` 2) and every short
version of an overlong key ``conflicting_primary_key``, the same with any number of workers; the redo's strict read of
worker 0's records matched; a failed or killed worker 0 cannot leave the others waiting (``read_table``'s ``finally``
writes the end record, and ``future.result()`` of worker 0 is awaited first, so ``worker_pool`` stops the rest: as
rev35c ran); the members file is fresh per compute (``mkdtemp`` + ``O_EXCL``), private (0600 in the private spill
folder), and bounded per record (``MemberScan.CAP`` x ``SPELLINGS``); a redo over a raw file changed since the workers
read it raises "changed while it was ingested", as ``_merge_parts`` and ``fill_pending`` already did. fix35g: the fast
path and ``_scan_key`` agreed on every one of the 40,000 mutated lines and every hand-made one (escaped names in
either hex case, the name in a string value, nested ``download_id``, ``-0``, 40-digit ids, the name after ``\\u0000``).

Measured: of the 40,000 mutated download lines (mutations after the id, each line whole, ending in a newline), 27,110
were keyed 5 by the export and keyless in the ingest (malformed_json, no key): a re-export holding row 5 drops them.

Noticed, not filed: trailing text after the object (``{...} x``) and a raw control character in a string are keyed by
the export and keyless in the ingest: rev35c noticed both and left them (the export keys its own cut lines, its decoder
is lenient on purpose); the tests below are lines ending in a newline whose member after the id is no JSON value at
all, or whose id is named again, which fix35g's README text ("the export reads the ingest's key wherever either reads a
valid one") covers.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All fixed the same day (fix36c, ``tests/unit/test_fix36c.py``): ``_piece_key`` reads a
whole line as the ingest reads its key (``parse.load_json`` and its lenient reading; text after the object and raw
control characters included, which a replica's re-export also dropped) and keys no line longer than its 1 MiB piece;
the markers are removed.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from pathlib import Path

import psycopg
import pytest

from formats.home import DataHome
from pipelines.appdb import export as export_module
from pipelines.appdb.export import UNREADABLE, _piece_key, export_day, vanishing_rows
from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

DAY = "2023-03-01"
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
REST = ('"user_id":1,"image_uid":"00000000-0000-0000-0000-000000000001","created_at":"2023-03-01 12:00:00",'
        '"prompt":"x"')
_counter = iter(range(10**6))


def _ingest_key(line: bytes, table: str = "downloads") -> object:
    """The ingest's key of a line: its accepted row's id, or the key its rejection names (None: none)."""
    parser = IngestConfig().line_parser(table, dt.date.fromisoformat(DAY))
    try:
        return parser.parse(line)[parser.names.index(parser.key_name)]
    except rp.Reject as exc:
        return exc.key


def _vanishing(tmp_path: Path, old_line: bytes) -> tuple[int, list[str]]:
    """``vanishing_rows`` of an old day file of ``old_line`` against a re-export holding the app's row 5."""
    old, new = tmp_path / "old.jsonl.gz", tmp_path / "new.jsonl.gz"
    old.write_bytes(gzip.compress(old_line + b"\n", mtime=0))
    new.write_bytes(gzip.compress(('{"download_id": 5, ' + REST + '}\n').encode(), mtime=0))
    return vanishing_rows(old, new, "download_id")


# --- 1. a replica's re-export drops a line the ingest keys no row, named again with another id -----------------------

def test_a_replicas_re_export_keeps_a_line_naming_its_id_again_after_a_value_that_is_not_json(postgres_server,  # noqa: F811
                                                                                            tmp_path, monkeypatch):
    """Another exporter's line names ranking_id 1, then a member that is no JSON value, then ranking_id 9: the ingest
    reads no key (malformed_json), so it quarantines the line whatever the app holds; the fix35g README says the
    export then reads no id either and a re-export keeps such a line as it was (counted as unreadable). It is read as
    row 1 instead: a hot standby's re-export holding row 1 drops it from the raw zone."""
    dsn = create_app_database(postgres_server, f"rev36c_{os.getpid()}_{next(_counter)}")
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        for ranking_id in (1, 2):
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, 1, %s)",
                         (ranking_id, f"{DAY} 12:00", f"r{ranking_id}"))
    export_day(home, dsn, DAY, now=NOW)
    path = home.raw_file(DAY, "rankings")
    compact = [json.dumps(json.loads(line), separators=(",", ":")).encode()
               for line in gzip.decompress(path.read_bytes()).splitlines()]
    hostile = compact[0][:-1] + b',"x":tru,"ranking_id":9}'
    assert _ingest_key(hostile + b"\n", "rankings") is None          # the ingest: malformed_json, no key
    staged = path.with_name(".other.tmp")
    staged.write_bytes(gzip.compress(b"".join(line + b"\n" for line in compact + [hostile])))
    os.replace(staged, path)
    monkeypatch.setattr(export_module, "check_standby", lambda *args: "a hot standby")
    report = export_day(home, dsn, DAY, now=NOW)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert hostile in lines                                          # kept as it was, as any line with no id
    assert report.kept == {"rankings": {"rows": 0, "first_ids": [], "unreadable": 1}}
    assert _piece_key(hostile + b"\n", "ranking_id") is UNREADABLE


# --- 2. a whole line whose member after the id is no JSON value ------------------------------------------------------

@pytest.mark.parametrize("rest", [',"x":tru}', ',"x":[1,2}', ',"x":"\\u005"}', ',"x":"\\q"}', ',"x" 1}', ',7:1}',
                                  ',"x":1,}', ',"x":tru,"download\\u005fid":6}'])
def test_a_whole_line_that_is_not_json_after_its_id_is_kept_by_a_re_export(tmp_path, rest):
    line = ('{"download_id":5,' + REST + rest).encode()
    assert _ingest_key(line + b"\n") is None                          # the ingest: malformed_json, no key
    assert _vanishing(tmp_path, ('{"download_id":"5",' + REST + '}').encode()) == (1, [])   # a keyless line: kept
    assert _piece_key(line + b"\n", "download_id") is UNREADABLE
    assert _vanishing(tmp_path, line) == (1, [])                      # dropped today as the app's row 5


# --- 3. the id named again past the line's first MiB ------------------------------------------------------------------

def test_an_overlong_line_naming_its_id_again_past_the_first_mib_is_kept_by_a_re_export(tmp_path):
    """A line of another exporter over ``ingest.max_line_bytes`` (1 MiB) names download_id 5, a long note, then
    download_id 6: the ingest reads both (``OverlongLine.members``) and keys no row; the export, which reads the
    first MiB only, takes it for row 5, and a re-export holding row 5 drops it."""
    line = ('{"download_id":5,' + REST + ',"note":"' + "n" * (1 << 20) + '","download_id":6}').encode()
    [(_, overlong)] = list(raw_lines.iter_lines(iter([line + b"\n"]), 1 << 20, lambda: False, "download_id"))
    parser = IngestConfig().line_parser("downloads", dt.date.fromisoformat(DAY))
    assert overlong.members == (b"5", b"6") and parser.overlong_key(overlong) is None     # the ingest: no key
    assert _vanishing(tmp_path, line) == (1, [])                      # dropped today as the app's row 5
