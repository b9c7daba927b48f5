"""Hostile review rev27e of fix27b (commit ccc7d43, merged as 587db37): the daily ingest's answer to review rev27b
(README section 2 "File-level", section 9 "Fixed since (twenty-seventh session"): ``lines.RawFile`` surveys the whole
file first (hash + inflate every gzip member to find the first damaged one) and yields only the members before it;
the lock-time look covers the day's own four files; workers that read two deliveries make the day read again in one
process; the ingest asset records the sha256 of the bytes read (``IngestReport.read_digests``, ``RawDigests.pin``);
``unexpected_field`` details bounded and counted by the quarantine's bounds.

What held (run, not read): a damaged member first / in the middle / last, CRC, ISIZE and bad-block damage, trailing
garbage (a lone ``\\x1f``, a partial header, NULs, random bytes), truncated last members, concatenated empty members
(a 400-file fuzz against a reference decoder at four buffer sizes: no difference); a file grown, or rewritten in
place with equal size and mtime, between the two passes (1 and 2 workers: the day computes again, reconciled,
its sha256 that of the bytes now there); workers=1 and workers=2 byte-identical outputs on damaged files; the data
version of a day with damaged, truncated, garbage-tailed and symlinked files fresh right after its ingest (no
re-ingest loop); a later day's images file re-delivered between an earlier day's ingest and its recorded version
(the cascade re-ingests the later day and rewrites the earlier one as from scratch); the survey's peak RSS flat
(24 MiB for 512 MiB of one line).

Each test below is one confirmed defect, filed as a strict xfail stating the correct behaviour (all three fixed the same day by fix27e). Ranked by severity.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib

import dagster as dg
import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

import dagster_project.assets.ingest as ingest_asset
from dagster_project.assets.ingest import ingest_day_assets
from dagster_project.resources import PickapicHome
from dagster_project.staleness import plan_build
from formats.home import DataHome
from formats.settings import load
from pipelines.ingest import lines as raw_lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day

DAY = "2023-03-01"


def _stored_member(payload: bytes) -> bytes:
    """A gzip member of stored blocks: a flipped byte stays one wrong byte, found only by the member's CRC-32."""
    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    return packer.compress(payload) + packer.flush()


def _planned_ingest(home: DataHome, instance) -> bool:
    plan = plan_build(home, load(home.root), instance)
    return any(run.partition == DAY and "ingest_day" in run.ops for run in plan.runs)


# 1. wrong published data / data never ingested: a raw path that was not a regular file when the ingest read it
#    (a folder, a FIFO, a dangling link: a broken delivery) and is a regular file by the time the asset records its
#    version is recorded fresh: the version falls back to the file as it is now, never to what was read

def test_a_path_that_was_no_regular_file_when_read_and_is_one_now_leaves_the_day_stale(fast_tmp, monkeypatch):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=2705).populate(users=3, images=10, rankings=12, downloads=3)
    paths = builder.write(home)
    delivered = paths["rankings"].read_bytes()
    paths["rankings"].unlink()
    paths["rankings"].mkdir()                       # a broken delivery: a folder at the file's name
    plain = ingest_asset.ingest_day

    def ingest_then_deliver(*args, **kwargs):
        report = plain(*args, **kwargs)
        path = home.raw_file(DAY, "rankings")
        if path.is_dir():                           # the real file lands after the ingest's last look
            path.rmdir()
            aside = path.with_name(".delivery")
            aside.write_bytes(delivered)
            os.replace(aside, path)
        return report

    monkeypatch.setattr(ingest_asset, "ingest_day", ingest_then_deliver)
    (fast_tmp / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(fast_tmp / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        resources = {"data_home": PickapicHome(root=str(home.root))}
        assert dg.materialize([ingest_day_assets], instance=instance, partition_key=DAY, resources=resources).success
        files = {row["table"]: row for row in pq.read_table(home.partition_file("ingest_files", DAY)).to_pylist()}
        assert files["rankings"]["status"] == "unreadable"
        assert pq.read_table(home.partition_file("rankings", DAY)).num_rows == 0
        assert _planned_ingest(home, instance)      # the delivered rankings were never read: the day is stale


# 2. wrong published data: the lines of a damaged gzip member are accepted when the member reaches past
#    ingest.max_file_bytes (the survey stops inflating at the limit, so that member's CRC-32 is never checked)

def test_a_damaged_member_that_reaches_past_max_file_bytes_yields_no_line(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=2706).populate(users=3, images=10, rankings=3, downloads=3)
    for _ in range(12_000):                           # ~3.7 MB of rankings: more than the 1 MiB read/inflate buffers
        builder.add("rankings", builder.ranking())
    builder.write(home)
    body = b"".join(line + b"\n" for line in builder.lines["rankings"])
    member = _stored_member(body)
    prompt = json.loads(builder.lines["rankings"][1])["prompt"].encode()
    at = member.find(b'"prompt": "' + prompt)
    assert at > 0
    at += len(b'"prompt": "')
    damaged = member[:at] + b"Z" + member[at + 1:]    # line 2's prompt, one byte: the member's CRC-32 fails
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress(damaged)
    home.raw_file(DAY, "rankings").write_bytes(damaged)

    report = ingest_day(home, DAY, IngestConfig(max_file_bytes=1_500_000))
    assert report.tables["rankings"].status == "unreadable" and report.reconciled
    prompts = pq.read_table(home.partition_file("rankings", DAY)).column("prompt").to_pylist()
    assert not any(p.startswith("Z") for p in prompts), "a line of a member that fails its CRC-32 was accepted"
    assert report.tables["rankings"].accepted == 0    # as without the limit: the file's only member is damaged


# 3. time: ingest.max_file_lines no longer bounds the work of a read: the survey inflates up to max_file_bytes

class _CountingZlib:
    """``zlib`` as lines.py uses it, counting the bytes every decompressor of the module produced."""

    error = zlib.error

    def __init__(self) -> None:
        self.produced = 0

    def decompressobj(self, *args, **kwargs):
        return _CountingDecompressor(self, zlib.decompressobj(*args, **kwargs))


class _CountingDecompressor:
    def __init__(self, owner: _CountingZlib, inner) -> None:
        self.owner, self.inner = owner, inner

    def decompress(self, data, max_length=0):
        out = self.inner.decompress(data, max_length)
        self.owner.produced += len(out)
        return out

    def flush(self, *args):
        out = self.inner.flush(*args)
        self.owner.produced += len(out)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_survey_stops_where_max_file_lines_stops_the_read(tmp_path, monkeypatch):
    path = tmp_path / "blank.jsonl.gz"
    member = gzip.compress(b"\n" * (64 << 10), compresslevel=9, mtime=0)
    path.write_bytes(member * 1024)                   # 64 MiB of blank lines in 1,024 members of 64 KiB, ~100 KB
    counter = _CountingZlib()
    monkeypatch.setattr(raw_lines, "zlib", counter)
    raw = raw_lines.RawFile(path, max_bytes=4 << 30, max_lines=1000, max_chunk=1 << 16)
    lines = sum(1 for _ in raw_lines.iter_lines(raw.chunks(), 1 << 20, lambda: raw.cut))
    assert lines <= 1000 and raw.status == "unreadable" and "max_file_lines" in raw.error
    # the line limit falls in the first member: checking it whole costs 64 KiB, not the 64 MiB after it
    assert counter.produced <= 4 << 20, f"{counter.produced} bytes inflated to read 1,000 blank lines"
