"""Fixes of review rev27e (``tests/unit/test_hostile_rev27e.py``): the daily ingest after fix27b.

- a raw path that was no regular file when the ingest read it (a folder, a FIFO, a dangling link) is named in the
  day's version as it was read (``RawFile.unread_as``: "not-a-file" / "missing", as ``RawDigests`` names them), so
  a real file landing there later leaves the day stale, and an unchanged one leaves it fresh;
- the survey checks the gzip member a limit (``ingest.max_file_bytes`` / ``max_file_lines``) cuts to its end before
  any of it is read, within ``lines.LIMIT_CHECK_BYTES`` (or the bytes before the cut) more: a damaged one, or one
  whose end lies further, yields no line; then it stops, so the line limit bounds the survey's work again.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import dagster as dg
import pytest
from test_ingest_fixtures import DayBuilder

from dagster_project.assets.ingest import ingest_day_assets
from dagster_project.resources import PickapicHome
from dagster_project.staleness import plan_build
from formats.home import DataHome
from formats.settings import load
from pipelines.ingest import lines as raw_lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.provenance import RawDigests

DAY = "2023-03-01"


def _stored(payload: bytes) -> bytes:
    """A gzip member of stored blocks (a flipped byte is found only by its CRC-32)."""
    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    return packer.compress(payload) + packer.flush()


def _flip(member: bytes, needle: bytes) -> bytes:
    at = member.index(needle)
    return member[:at] + b"Z" + member[at + 1:]


def _read(path: Path, **limits) -> tuple[list[bytes], raw_lines.RawFile]:
    raw = raw_lines.RawFile(path, **limits)
    got = [data for _, data in raw_lines.iter_lines(raw.chunks(), 1 << 20, lambda: raw.cut)]
    return got, raw


def _body(tag: str, count: int) -> bytes:
    return b"".join(f'{{"{tag}": {i}}}\n'.encode() for i in range(count))


# --------------------------------------------------------------------------- 1. what was read, no regular file

def _no_regular_file(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(path.with_name("gone.jsonl.gz"))


@pytest.mark.parametrize("kind, named", [("folder", "not-a-file"), ("fifo", "not-a-file"), ("dangling", "missing")])
def test_a_path_that_is_no_regular_file_is_named_as_raw_digests_names_it(fast_tmp, kind, named):
    home = DataHome(fast_tmp / "home")
    paths = DayBuilder(DAY, seed=2711).populate(users=3, images=6, rankings=5, downloads=2).write(home)
    _no_regular_file(paths["rankings"], kind)
    report = ingest_day(home, DAY, IngestConfig())
    assert report.tables["rankings"].status == "unreadable" and report.reconciled
    read = report.read_digests()
    assert read["rankings"] == named
    assert RawDigests(home).file(home.raw_file(DAY, "rankings")) == named   # unchanged: the same name, no loop
    assert "unread_as" not in report.metadata()["files"]["rankings"]        # not in the report's JSON
    assert all(len(read[t]) == 64 for t in ("users", "images", "downloads"))


def test_a_folder_left_in_place_leaves_the_day_fresh_and_a_file_landing_there_stale(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=2712).populate(users=3, images=6, rankings=5, downloads=2)
    paths = builder.write(home)
    delivered = paths["rankings"].read_bytes()
    _no_regular_file(paths["rankings"], "folder")
    (fast_tmp / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(fast_tmp / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        resources = {"data_home": PickapicHome(root=str(home.root))}
        assert dg.materialize([ingest_day_assets], instance=instance, partition_key=DAY, resources=resources).success

        def planned() -> bool:
            plan = plan_build(home, load(home.root), instance)
            return any(run.partition == DAY and "ingest_day" in run.ops for run in plan.runs)

        assert not planned()                          # the folder is still there: nothing to ingest again
        paths["rankings"].rmdir()
        paths["rankings"].write_bytes(delivered)
        assert planned()                              # the real file landed: the day is stale


# --------------------------------------------------------------------------- 2. the member a limit cuts, checked

def test_a_damaged_member_cut_by_the_line_limit_yields_no_line(tmp_path):
    good = gzip.compress(_body("a", 10), mtime=0)
    damaged = _flip(_stored(_body("b", 5000)), b'"b": 7}')
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(good + damaged)
    got, raw = _read(path, max_lines=100, max_chunk=1 << 12, read_bytes=1 << 12)
    assert got == _body("a", 10).splitlines()         # the member before the damaged one, not a line of it
    assert raw.status == "unreadable" and "integrity check" in raw.error and not raw.cut


def test_an_intact_member_cut_by_a_limit_reads_as_before(tmp_path):
    body = _body("a", 5000)
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(body, mtime=0) + gzip.compress(_body("c", 3), mtime=0))
    got, raw = _read(path, max_lines=100, max_chunk=1 << 12, read_bytes=1 << 12)
    assert got == body.splitlines()[:100] and raw.cut and "max_file_lines" in raw.error
    got, raw = _read(path, max_bytes=1000, max_chunk=1 << 12, read_bytes=1 << 12)
    assert b"\n".join(got) + b"\n" == body[:body.rindex(b"\n", 0, 1000) + 1]
    assert raw.cut and "max_file_bytes" in raw.error


def test_a_member_whose_end_lies_past_the_check_budget_yields_no_line(tmp_path, monkeypatch):
    monkeypatch.setattr(raw_lines, "LIMIT_CHECK_BYTES", 1 << 14)
    first = gzip.compress(_body("a", 10), mtime=0)
    long = gzip.compress(_body("b", 20_000), mtime=0)     # ~200 KB: past the cut (100 B) + max(16 KiB, 100 B)
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(first + long)
    got, raw = _read(path, max_bytes=len(_body("a", 10)) + 100, max_chunk=1 << 12, read_bytes=1 << 12)
    assert got == _body("a", 10).splitlines()
    assert raw.status == "unreadable" and "could not be checked" in raw.error
    assert raw.file_sha256 is not None and raw.file_bytes == len(first + long)   # the whole file still hashed
    monkeypatch.setattr(raw_lines, "LIMIT_CHECK_BYTES", 1 << 20)            # within the budget: read to the cut
    got, raw = _read(path, max_bytes=len(_body("a", 10)) + 100, max_chunk=1 << 12, read_bytes=1 << 12)
    assert len(got) > 10 and raw.cut and "max_file_bytes" in raw.error


def test_a_truncated_last_member_cut_by_a_limit_still_yields_its_bytes_before_the_cut(tmp_path):
    member = gzip.compress(_body("a", 5000), mtime=0)
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(member[:len(member) // 2])            # no end to check: a truncated file, as without a limit
    got, raw = _read(path, max_lines=50, max_chunk=1 << 12, read_bytes=1 << 12)
    assert got == _body("a", 50).splitlines() and raw.cut and "max_file_lines" in raw.error


# --------------------------------------------------------------------------- 3. the survey stops at the limit

class _Counting:
    error = zlib.error

    def __init__(self) -> None:
        self.produced = 0

    def decompressobj(self, *args, **kwargs):
        inner, owner = zlib.decompressobj(*args, **kwargs), self

        class Wrapped:
            def decompress(self, data, max_length=0):
                out = inner.decompress(data, max_length)
                owner.produced += len(out)
                return out

            def flush(self, *a):
                out = inner.flush(*a)
                owner.produced += len(out)
                return out

            def __getattr__(self, name):
                return getattr(inner, name)

        return Wrapped()


@pytest.mark.parametrize("limit", [{"max_lines": 10}, {"max_bytes": 10}])
def test_the_survey_stops_after_the_member_a_limit_cuts(tmp_path, monkeypatch, limit):
    member = gzip.compress(b"x\n" * (32 << 10), mtime=0)     # 64 KiB a member
    damaged_later = _flip(_stored(_body("b", 100)), b'"b": 7}')
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(member * 256 + damaged_later)         # 16 MiB, a damaged member far past the cut
    counter = _Counting()
    monkeypatch.setattr(raw_lines, "zlib", counter)
    got, raw = _read(path, max_chunk=1 << 16, **limit)
    assert raw.cut and raw.status == "unreadable" and "integrity" not in raw.error   # never reached: not named
    assert counter.produced <= 4 << 16                     # the first member twice at most, not the 16 MiB
    assert raw.file_bytes == path.stat().st_size           # still hashed whole
