"""Fix35d: every worker of a parallel day scanned every overlong line.

A day of ``ingest.workers`` forked workers (``parallel_min_bytes`` reached) has each worker read every file and
validate the lines routed to it. An overlong line (over ``ingest.max_line_bytes``) is routed by its top-level key
members as written, read by ``lines.MemberScan`` (up to ``MemberScan.BUDGET`` = 64 MiB of a line, about 1.5 s of CPU
a MiB at worst), so every worker ran that scan over every overlong line: the work times the workers. Confirmed before
the fix: two workers fed the scan twice the overlong lines' bytes (one process: once).

Now worker 0 scans each overlong line and writes its members (``reader.OverlongMembers``, a file in the ingest's
scratch folder); the other workers read them (the line's length and sha256 must match), and so does a table's redo in
one process after its keys split between workers. The output is byte for byte what one process writes.

How: real gzip raw files (``DayBuilder``) through the real ``ingest_day`` with ``workers`` = 2 / 3 and
``parallel_min_bytes`` = 1 (real forked workers); every ``MemberScan`` made and every byte fed to one, in any process,
appended to a log file (the forked workers inherit the patched class).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import day as ingest_day_module
from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp
from pipelines.ingest import reader
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day

DAY = "2023-03-01"
MAX_LINE = 1_000


@pytest.fixture
def scans(fast_tmp, monkeypatch) -> Path:
    """A log of every MemberScan (``new``) and every byte fed to one (``fed N``), in this process and its forks."""
    log = fast_tmp / "scans.log"
    init, feed = raw_lines.MemberScan.__init__, raw_lines.MemberScan.feed

    def note(text: str) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode() + b"\n")
        finally:
            os.close(fd)

    def counted_init(self, *args, **kwargs):
        note("new")
        init(self, *args, **kwargs)

    def counted_feed(self, piece):
        note(f"fed {len(piece)}")
        return feed(self, piece)

    monkeypatch.setattr(raw_lines.MemberScan, "__init__", counted_init)
    monkeypatch.setattr(raw_lines.MemberScan, "feed", counted_feed)
    return log


def _counts(log: Path) -> tuple[int, int]:
    """(MemberScans made, bytes fed to them) since the last call; the log is emptied."""
    if not log.exists():
        return 0, 0
    entries = log.read_text().split()
    log.unlink()
    made = entries.count("new")
    fed = sum(int(entries[i + 1]) for i, word in enumerate(entries) if word == "fed")
    return made, fed


def _routed_to(parts: int, index: int, start: int) -> int:
    """An id from ``start`` on whose line ``reader._route`` sends to part ``index`` of ``parts``."""
    value = start
    while zlib.crc32(str(value).encode()) % parts != index:
        value += 1
    return value


def _day(builder: DayBuilder) -> dict[str, list[int]]:
    """Overlong lines in two tables, routed to every worker: distinct keys, a key with a short version too (conflict),
    one that is no JSON object, and one longer than a chunk of the raw file (scanned as it streams)."""
    overlong: dict[str, list[int]] = {"downloads": [], "images": []}
    for index in range(3):
        download_id = _routed_to(3, index, 800_000 + 1_000 * index)
        overlong["downloads"].append(builder.add("downloads", builder.download(download_id=download_id,
                                                                               prompt="x" * 3_000)))
    twin = builder.download(download_id=_routed_to(2, 1, 810_000))
    builder.add("downloads", twin)
    overlong["downloads"].append(builder.add("downloads", dict(twin, prompt="y" * 2_000)))
    overlong["downloads"].append(builder.add("downloads", b"[" + b"1," * 2_000 + b"1]"))
    overlong["downloads"].append(builder.add("downloads", builder.download(prompt="z" * (1_200_000))))
    overlong["images"].append(builder.add("images", builder.image(prompt="w" * 4_000)))
    return overlong


def _outputs(home: DataHome) -> dict[str, bytes]:
    return {name: home.partition_file(name, DAY).read_bytes() for name in OUTPUT_DATASETS}


def _overlong_bytes(builder: DayBuilder, overlong: dict[str, list[int]]) -> int:
    return sum(len(builder.lines[table][number - 1]) for table, numbers in overlong.items() for number in numbers)


@pytest.mark.parametrize("workers", [2, 3])
def test_each_overlong_line_is_scanned_once_by_the_workers_and_the_output_is_unchanged(fast_tmp, scans, workers):
    builder = DayBuilder(DAY, seed=3).populate(users=3, images=6, rankings=3, downloads=4)
    overlong = _day(builder)
    lines = sum(len(numbers) for numbers in overlong.values())
    homes = {}
    for count in (1, workers):
        home = homes[count] = DataHome(fast_tmp / f"home{count}")
        builder.write(home)
        report = ingest_day(home, DAY, IngestConfig(workers=count, parallel_min_bytes=1, max_line_bytes=MAX_LINE))
        assert report.reconciled
        # each overlong line scanned once, whole: one process, or the workers all together
        assert _counts(scans) == (lines, _overlong_bytes(builder, overlong)), count
    assert _outputs(homes[workers]) == _outputs(homes[1])
    quarantine = pq.read_table(homes[workers].partition_file("quarantine", DAY)).to_pylist()
    reasons = {(row["table"], row["line_number"]): row["reason"] for row in quarantine}
    for table, numbers in overlong.items():
        assert all(reasons[(table, number)] == rp.LINE_TOO_LONG for number in numbers)
    # the overlong version's key was read from its bytes, so its short version (routed to worker 1) is quarantined
    assert reasons[("downloads", overlong["downloads"][3] - 1)] == rp.CONFLICTING_PRIMARY_KEY
    assert not any(path.name.startswith("overlong-") for path in (homes[workers].cache / "tmp").rglob("*"))


_tables_redone: list[tuple] = []


def _recording_ingest_tables(home, day, tables, config, raw_days, part=(0, 1), spill_dir=None, *, overlong=None):
    if part == (0, 1):
        _tables_redone.append(tuple(tables))
    return _real_ingest_tables(home, day, tables, config, raw_days, part, spill_dir, overlong=overlong)


_real_ingest_tables = ingest_day_module._ingest_tables


def test_a_table_redone_in_one_process_uses_the_members_the_workers_scanned(fast_tmp, scans, monkeypatch):
    """Versions of one key routed to two workers (written ``N`` and ``N.0``: only the first is routed by its key) make
    the table read again in one process; its overlong lines are not scanned again, and the output is unchanged."""
    builder = DayBuilder(DAY, seed=4).populate(users=3, images=6, rankings=3, downloads=4)
    overlong = _day(builder)
    key = _routed_to(2, 1, 820_000)
    version = builder.download(download_id=key)
    builder.add("downloads", version)
    builder.add("downloads", json.dumps(version).replace(f'"download_id": {key},',
                                                                f'"download_id": {key}.0,'))
    lines = sum(len(numbers) for numbers in overlong.values())
    homes = {}
    monkeypatch.setattr(ingest_day_module, "_ingest_tables", _recording_ingest_tables)
    for count in (1, 2):
        home = homes[count] = DataHome(fast_tmp / f"home{count}")
        builder.write(home)
        _tables_redone.clear()
        report = ingest_day(home, DAY, IngestConfig(workers=count, parallel_min_bytes=1, max_line_bytes=MAX_LINE))
        assert report.reconciled
        assert _counts(scans) == (lines, _overlong_bytes(builder, overlong)), count
    assert _tables_redone == [("downloads",)]    # the two workers' keys split: downloads was read again
    assert _outputs(homes[2]) == _outputs(homes[1])


def test_a_reader_of_the_members_takes_none_for_other_bytes(fast_tmp):
    """A worker whose overlong line is not the one worker 0 scanned (another length or sha256: the workers read two
    versions of the file, and the day is read again in one process) takes no members; a redo in one process refuses."""
    path = fast_tmp / "downloads.members"
    writer = reader.OverlongMembers(path)
    writer.open_for_writing()
    scanned = raw_lines.OverlongLine(b"{", 5_000, "a" * 64, (b"7",))
    writer.publish(3, scanned)
    writer.finish()
    other = raw_lines.OverlongLine(b"{", 5_000, "b" * 64, None)
    worker = reader.OverlongMembers(path)
    assert worker.members(3, scanned).members == (b"7",)
    assert worker.members(5, other).members is None     # past the end record: none
    worker.close()
    worker = reader.OverlongMembers(path)
    assert worker.members(3, other).members is None
    worker.close()
    redo = reader.OverlongMembers(path, strict=True)
    with pytest.raises(RuntimeError, match="changed while it was ingested"):
        redo.members(3, other)
    redo.close()
