"""Fixes of review rev27f (``tests/unit/test_hostile_rev27f.py``): the daily ingest's raw-file reader after fix27e.

- a read the survey stopped as "could not be checked" (the member a limit cuts ends past the check budget, which the
  limits set) depends on the limits: ``RawFile.limited`` says so (as it does for ``cut``), and neither the ingest
  nor ``raw_image_uids`` keeps the day's uid index from it;
- the survey counts the line limit as reached where the read stops (the first byte after the ``max_file_lines``-th
  newline), not at one more newline: members without a newline after the last allowed line are not inflated;
- a raw file that is a link out of the raw zone (refused unread) is named ``link-out-of-zone`` in the day's version,
  as ``RawDigests.file`` names such a path: unchanged it stays fresh, a real file put there makes the day stale.
"""
from __future__ import annotations

import gzip
import os
import zlib

from test_fix27e import _Counting, _read  # the same reader and counting zlib as fix27e's tests
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import lines as raw_lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.reader import open_raw
from pipelines.ingest.uidindex import raw_image_uids
from pipelines.provenance import RawDigests

DAY = "2023-03-01"
UID = "33333333-3333-4333-8333-333333333333"


def _body(tag: str, count: int) -> bytes:
    return b"".join(f'{{"{tag}": {i}}}\n'.encode() for i in range(count))


# --------------------------------------------------------------------------- 1. a read the budget stopped

def test_a_read_the_check_budget_stopped_is_limited_but_not_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(raw_lines, "LIMIT_CHECK_BYTES", 1 << 14)
    first = _body("a", 10)
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(first, mtime=0) + gzip.compress(_body("b", 20_000), mtime=0))
    got, raw = _read(path, max_bytes=len(first) + 100, max_chunk=1 << 12, read_bytes=1 << 12)
    assert got == first.splitlines() and "could not be checked" in raw.error
    assert raw.limited and not raw.cut      # depends on the limits; the lines before it are whole (no tail dropped)
    got, raw = _read(path, max_chunk=1 << 12, read_bytes=1 << 12)             # no limit: read whole, not limited
    assert len(got) == 20_010 and raw.status == "ok" and not raw.limited and not raw.cut


def test_a_damaged_member_or_a_cut_sets_limited_only_where_the_limits_matter(tmp_path):
    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    stored = packer.compress(_body("b", 50)) + packer.flush()
    at = stored.index(b'"b": 7}')
    damaged = stored[:at] + b"Z" + stored[at + 1:]
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(_body("a", 10), mtime=0) + damaged)
    _, raw = _read(path)                                   # damaged whatever the limits: the same read
    assert raw.status == "unreadable" and "integrity" in raw.error and not raw.limited
    path.write_bytes(gzip.compress(_body("a", 100), mtime=0))
    _, raw = _read(path, max_lines=10)
    assert raw.cut and raw.limited


def test_neither_reader_keeps_a_uid_index_from_a_read_the_budget_stopped(fast_tmp, monkeypatch):
    monkeypatch.setattr(raw_lines, "LIMIT_CHECK_BYTES", 1 << 14)
    home = DataHome(fast_tmp / "home")
    paths = DayBuilder(DAY, seed=2771).populate(users=3, images=6, rankings=5, downloads=2).write(home)
    first = gzip.decompress(paths["images"].read_bytes())
    late = b'{"image_uid": "%s", "pad": "%s"}\n' % (UID.encode(), b"p" * 200) * 20_000   # 4.7 MB: past 2 chunks
    paths["images"].write_bytes(gzip.compress(first, mtime=0) + gzip.compress(late, mtime=0))
    limited = IngestConfig(max_file_bytes=len(first) + 100, workers=1)
    index = home.raw_image_uid_index(DAY)
    report = ingest_day(home, DAY, limited)
    assert "could not be checked" in report.tables["images"].error and not index.exists()
    assert raw_image_uids(home, DAY, {UID}, limited) == set() and not index.exists()
    assert raw_image_uids(home, DAY, {UID}, IngestConfig()) == {UID} and index.exists()   # whole: kept
    assert raw_image_uids(home, DAY, {UID}, IngestConfig()) == {UID}


# --------------------------------------------------------------------------- 2. the survey's line limit

def test_the_survey_stops_in_the_member_after_the_last_allowed_line(tmp_path, monkeypatch):
    lines = _body("a", 10)
    bomb = gzip.compress(b"\0" * (16 << 20), mtime=0)     # 16 MiB of zeros, no newline
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(lines + b"x" * 100, mtime=0) + bomb)   # bytes after line 10 in its member
    counter = _Counting()
    monkeypatch.setattr(raw_lines, "zlib", counter)
    got, raw = _read(path, max_lines=10, max_chunk=1 << 16)
    assert got == lines.splitlines() and raw.cut and "max_file_lines" in raw.error
    assert counter.produced <= 4 * (len(lines) + 100)      # that member twice at most, never the bomb
    assert raw.file_bytes == path.stat().st_size


def test_a_file_of_exactly_max_file_lines_lines_is_read_whole(tmp_path):
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(_body("a", 5), mtime=0) + gzip.compress(_body("b", 5), mtime=0)
                     + gzip.compress(b"", mtime=0))      # ends at newline 10, then an empty member
    got, raw = _read(path, max_lines=10)
    assert got == (_body("a", 5) + _body("b", 5)).splitlines()
    assert raw.status == "ok" and not raw.cut and not raw.limited
    path.write_bytes(path.read_bytes() + gzip.compress(b"{", mtime=0))    # one byte more: cut there
    got, raw = _read(path, max_lines=10)
    assert len(got) == 10 and raw.cut and "max_file_lines" in raw.error


# --------------------------------------------------------------------------- 3. a link out of the raw zone

def test_a_link_out_of_the_raw_zone_is_named_as_raw_digests_names_it(fast_tmp):
    home = DataHome(fast_tmp / "home")
    paths = DayBuilder(DAY, seed=2772).populate(users=3, images=6, rankings=5, downloads=2).write(home)
    outside = fast_tmp / "outside.jsonl.gz"
    os.replace(paths["rankings"], outside)
    paths["rankings"].symlink_to(outside)
    assert open_raw(home, paths["rankings"]).unread_as == raw_lines.LINK_OUT_OF_ZONE
    report = ingest_day(home, DAY, IngestConfig())
    assert report.tables["rankings"].status == "unreadable" and report.reconciled
    assert report.read_digests()["rankings"] == raw_lines.LINK_OUT_OF_ZONE
    assert RawDigests(home).file(paths["rankings"]) == raw_lines.LINK_OUT_OF_ZONE
    assert "unread_as" not in report.metadata()["files"]["rankings"]
    inside = paths["users"].with_name("copy.jsonl.gz")     # a link that stays in the zone: the file's sha256
    inside.write_bytes(outside.read_bytes())
    paths["rankings"].unlink()
    paths["rankings"].symlink_to(inside.name)
    assert len(RawDigests(home).file(paths["rankings"])) == 64


def test_a_link_swapped_in_after_the_path_checks_is_named_as_read(fast_tmp):
    zone = fast_tmp / "raw"
    zone.mkdir()
    outside = fast_tmp / "outside.jsonl.gz"
    outside.write_bytes(gzip.compress(_body("a", 3), mtime=0))
    link = zone / "f.jsonl.gz"
    link.symlink_to(outside)
    raw = raw_lines.RawFile(link, zone_root=str(zone.resolve()))      # the path checks passed; the open refuses
    assert list(raw.chunks()) == [] and "outside the raw zone" in raw.error
    assert raw.unread_as == raw_lines.LINK_OUT_OF_ZONE and raw.file_sha256 is None
