"""Hostile review rev34a: a second pass over fix33i's ingest changes (README section 9's rev33i bullet, section 2):
``pipelines/ingest/uidset.py`` (the uid set spilling sorted runs past 8,192, merged 32 at a time),
``pipelines/ingest/lines.py`` (``iter_lines``, ``RawFile.ended_early``), ``pipelines/ingest/uidindex.py`` (the
streamed uid index and ``.image_exports`` record) and ``pipelines/ingest/parse.py`` (long integers, keys of lines
nested too deep or not UTF-8).

How: real gzip raw files in small data homes (``DayBuilder``) driven through the real ``ingest_day`` (one process and
``ingest.workers`` = 2 / 3 with ``parallel_min_bytes`` = 1: real forked workers), ``read_table`` with a real
``UidSet`` for one worker's part, and the real line parser (``IngestConfig.line_parser``); peak memory of a later day's
ingest measured as ``ru_maxrss`` of a fresh child process.

What held up (no test), run: the warehouse files, the ``.image_exports`` record and the uid index (its rows, row
groups and footer less the ``stat`` key) are the same for workers 1, 2 and 3 on a day whose 500 nested uids in a bad
line spill (``MAX_MEMORY_UIDS`` 64, ``WRITE_BATCH`` 50); an ingest SIGKILLed right after writing its first run left
its scratch folder, which the next ingest swept; a worker SIGKILLed there stopped its ingest with
``WorkerProcessDied`` and left nothing; a UTF-8 BOM before a line 1 whose ``image_uid`` member name is written with
an escape (the byte search misses it; ``json.loads`` of the bytes skips the BOM) still has its uid in the index and
no record row; ``_shallow_members`` (the read of a line nested too deep) gave the same members as the recursive
lenient read, and refused the same texts, on 300,000 random and mutated small texts. Read, not run: an exception
while merging leaves the old runs listed (merged runs replace them only once all are written) and the folder goes
with its ``ExitStack``/``held_scratch_folder``; run files are 0600 (``mkstemp``) in a held folder of a random name
(nothing to plant); an invalid UTF-8 byte never eats an ASCII byte of a key (Python's "replace"); a key first written
on a nested member routes its line to another worker, and the ``seen`` check then redoes the table.

Measured: a later day's ingest that looks up an earlier day whose uid index holds 400,000 uids of bad lines peaked at
267-275 MiB against 298 MiB for the control (other member name): no growth visible at that size (the index is read
whole by ``_image_uids``: about 40 bytes a uid, against 290 before fix33i). The earlier day's ingest took 5.2 s
against 0.6 s for the control.

Noticed, not filed: a merge pass keeps duplicates (a uid repeated across runs is written again at each pass, dropped
only in the final merge) and copies a lone last group unchanged, and removes the old runs only after the whole pass
(disk peak twice the runs): cost, not output; ``iter_lines`` keeps a line's pieces as the chunks brought them (the
fix33i change), so a 1 MiB line in 2-byte chunks (2-byte gzip members) peaked at 45.5 MiB under tracemalloc against
6.5 MiB in 16-byte and 2.0 MiB in 4,096-byte chunks: about 43 bytes a piece, bounded by ``ingest.max_line_bytes``
(not by the amount of bad input), so not filed; ``kept_image_uids``'s fallback (a pruned day without its record) reads
the whole ``raw_text`` column of the day's quarantined images lines at once (legacy path, rev29a).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions state
the correct behaviour. All three were fixed the same day (fix34a, ``tests/unit/test_fix34a.py``: an overlong line's
top-level key members read from its bytes as they stream, ``lines.MemberScan``; ``key_of`` judges an id as written;
a worker's accepted images row raises its uid set's allowance by the number of workers) and the markers removed.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import parse as rp
from pipelines.ingest import uidset
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.reader import read_table

DAY = "2023-03-01"


def _kept_and_reasons(home: DataHome, table: str, key: str) -> tuple[list, dict[int, str]]:
    kept = pq.read_table(home.partition_file(table, DAY), columns=[key]).column(0).to_pylist()
    reasons = {r["line_number"]: r["reason"] for r in pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
               if r["table"] == table}
    return kept, reasons


# 1. wrong accept: a line over ingest.max_line_bytes loses its key (line_too_long keeps only a prefix, length and digest
# and no key), so the other version of that key is accepted: a guess between two versions, which the key rule forbids
# ("one key, different contents: every version quarantined, none guessed"). fix33i made lines nested too deeply or not
# UTF-8 keep their key for this very reason; an overlong line is the remaining sibling (the whole line here is one valid
# JSON object with its key written once, first).
def test_an_overlong_version_of_a_key_quarantines_the_other(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=1).populate(users=3, images=6, rankings=3, downloads=2)
    version = builder.download(download_id=900_001)
    short = builder.add("downloads", version)
    long = builder.add("downloads", dict(version, prompt="x" * 2_000))    # the same key, another (longer) prompt
    builder.write(home)
    report = ingest_day(home, DAY, IngestConfig(workers=1, max_line_bytes=1_000))
    assert report.reconciled
    kept, reasons = _kept_and_reasons(home, "downloads", "download_id")
    assert reasons[long] == rp.LINE_TOO_LONG
    assert 900_001 not in kept
    assert reasons[short] == rp.CONFLICTING_PRIMARY_KEY


# 2. wrong accept: an id above 2**53 (ingest.max_id may be raised to 2**63) written with a fraction of zeros
# (``9007199254740993.0``, as a float-minded exporter writes a bigint) is the id 9007199254740993 to ``validate``
# (``_written_integer``: "judged as written"), but ``key_of`` (the key a rejected line keeps) takes only an int or a
# plain float, so a rejected version of that key is keyless and the accepted version stays: the key read two ways.
def test_a_rejected_version_of_a_big_id_written_with_a_fraction_keeps_its_key(fast_tmp):
    big = 2**53 + 1
    config = IngestConfig(workers=1, max_id=2**62)
    parser = config.line_parser("downloads", dt.date.fromisoformat(DAY))
    builder = DayBuilder(DAY, seed=1).populate(users=3, images=6, rankings=3, downloads=2)
    version = builder.download(download_id=1)

    def spelled(obj: dict) -> bytes:
        return json.dumps(obj).replace('"download_id": 1,', f'"download_id": {big}.0,').encode()

    good, bad = spelled(version), spelled(dict(version, prompt="a\u0007b"))
    assert parser.parse(good)[parser.names.index("download_id")] == big      # accepted as the id 2**53 + 1
    with pytest.raises(rp.Reject) as refused:
        parser.parse(bad)
    assert refused.value.reason == rp.CONTROL_CHARACTERS
    home = DataHome(fast_tmp / "home")
    first, second = builder.add("downloads", good), builder.add("downloads", bad)
    builder.write(home)
    report = ingest_day(home, DAY, config)
    assert report.reconciled
    kept, reasons = _kept_and_reasons(home, "downloads", "download_id")
    assert reasons[second] == rp.CONTROL_CHARACTERS
    assert refused.value.key == big
    assert big not in kept and reasons[first] == rp.CONFLICTING_PRIMARY_KEY


# 3. misleading documentation and needless spills: README (section 2) and ``UidSet`` say the accepted images rows raise
# the set's memory allowance "so a clean day never spills". With ingest.workers (default 2, used for days from 16 MiB)
# every worker taps every line's uid but accepts only the rows routed to it, so its allowance is about 1/n of the uids
# it holds: a clean large day spills in every worker (each writes its share of runs, part 0 merges them for the index).
def test_a_clean_images_file_read_by_two_workers_never_spills(fast_tmp, monkeypatch):
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 50)
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=6).populate(users=2, images=200, rankings=0, downloads=0)
    builder.write(home)
    path, lines = home.raw_file(DAY, "images"), builder.lines["images"]
    path.write_bytes(b"".join(gzip.compress(b"".join(line + b"\n" for line in lines[i:i + 20]), mtime=0)
                              for i in range(0, len(lines), 20)))       # 10 members: 10 chunks of 20 uids
    parser = IngestConfig().line_parser("images", dt.date.fromisoformat(DAY))
    spill = fast_tmp / "spill"
    whole = uidset.UidSet(spill)
    read_table(home, DAY, "images", parser, IngestConfig(), whole, (0, 1), spill)
    assert whole.runs == []                                  # one process: as documented
    accepted = 0
    for index in (0, 1):
        found = uidset.UidSet(spill)
        run = read_table(home, DAY, "images", parser, IngestConfig(), found, (index, 2), spill)
        accepted += len(run.rows)
        assert set(found.sorted()) == set(builder.image_uids)
        assert found.runs == [], f"worker {index} of 2 spilled {len(found.runs)} runs of a clean file"
    assert accepted == 200
