"""Fixes of review rev27b (``tests/unit/test_hostile_rev27b.py``): the daily ingest fed hostile app exports.

- a raw file delivered again during (or right after) an ingest: the day computes again when one of its own files
  changed since its compute, and the version the asset records names the bytes the ingest read, so a delivery
  after the ingest returned leaves the day stale (``IngestReport.read_digests``, ``RawDigests.pin``);
- the workers of a large day that read two deliveries of one file: the day is read again in one process
  (``day._same_file``), and ``_merge_parts`` refuses parts of different files;
- a gzip member that fails its integrity check yields none of its bytes (``lines.RawFile``: a survey pass first),
  for every reader of raw files (the uid index too); a file rewritten in place between the passes is unreadable;
- an ``unexpected_field`` detail is bounded, and the quarantine's memory and row-group bounds count details.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import time
import zlib
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

import dagster_project.assets.ingest as ingest_asset
from dagster_project.assets.ingest import ingest_day_assets
from dagster_project.resources import PickapicHome
from dagster_project.staleness import plan_build
from formats.home import DataHome
from formats.settings import load
from pipelines.ingest import day as ingest
from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp
from pipelines.ingest import quarantine as quarantine_module
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.quarantine import QuarantineSink, SinkLimits
from pipelines.ingest.uidindex import raw_image_uids
from pipelines.provenance import RawDigests

DAY = "2023-03-01"
CORRECTED = "the corrected prompt"


def _day(home: DataHome, rankings: int = 8) -> DayBuilder:
    builder = DayBuilder(DAY, seed=271).populate(users=3, images=10, rankings=rankings, downloads=3)
    builder.write(home)
    return builder


def _corrected(builder: DayBuilder) -> bytes:
    return gzip.compress(b"".join(json.dumps(dict(json.loads(line), prompt=CORRECTED)).encode() + b"\n"
                                  for line in builder.lines["rankings"]), mtime=0)


def _redeliver(path: Path, payload: bytes) -> None:
    aside = path.with_name(".redelivery")
    aside.write_bytes(payload)
    os.replace(aside, path)


def _prompts(home: DataHome) -> set[str]:
    return set(pq.read_table(home.partition_file("rankings", DAY)).column("prompt").to_pylist())


def _planned(home: DataHome, instance) -> bool:
    plan = plan_build(home, load(home.root), instance)
    return any(run.partition == DAY and "ingest_day" in run.ops for run in plan.runs)


# ----------------------------------------------------------------------------------- 1. a delivery during the ingest

def test_a_day_computes_again_when_its_own_file_is_delivered_again_after_the_compute(fast_tmp, monkeypatch):
    home = DataHome(fast_tmp / "home")
    builder = _day(home)
    corrected = _corrected(builder)
    compute, calls = ingest._compute, []

    def compute_then_redeliver(*args, **kwargs):
        calls.append(1)
        out = compute(*args, **kwargs)
        if len(calls) == 1:
            _redeliver(home.raw_file(DAY, "rankings"), corrected)
        return out

    monkeypatch.setattr(ingest, "_compute", compute_then_redeliver)
    report = ingest_day(home, DAY)
    assert len(calls) == 2 and _prompts(home) == {CORRECTED}
    assert report.tables["rankings"].file_sha256 == hashlib.sha256(corrected).hexdigest()
    assert report.reconciled


def test_a_delivery_after_the_ingest_returned_leaves_the_day_stale_until_ingested_again(fast_tmp, monkeypatch):
    home = DataHome(fast_tmp / "home")
    builder = _day(home)
    corrected = _corrected(builder)
    plain = ingest_asset.ingest_day

    def ingest_then_redeliver(*args, **kwargs):
        report = plain(*args, **kwargs)
        path = home.raw_file(DAY, "rankings")
        if CORRECTED.encode() not in gzip.decompress(path.read_bytes()):
            _redeliver(path, corrected)       # lands between the ingest's last look and the recorded version
        return report

    monkeypatch.setattr(ingest_asset, "ingest_day", ingest_then_redeliver)
    (fast_tmp / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(fast_tmp / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        resources = {"data_home": PickapicHome(root=str(home.root))}
        assert dg.materialize([ingest_day_assets], instance=instance, partition_key=DAY, resources=resources).success
        assert CORRECTED not in _prompts(home)
        assert _planned(home, instance)                    # the recorded version names the bytes read: stale
        monkeypatch.setattr(ingest_asset, "ingest_day", plain)
        assert dg.materialize([ingest_day_assets], instance=instance, partition_key=DAY, resources=resources).success
        assert _prompts(home) == {CORRECTED}
        assert not _planned(home, instance)                # and fresh once the new bytes were ingested


def test_the_version_of_the_bytes_read_equals_the_raw_zone_version_when_nothing_changed(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=272).populate(users=3, images=10, rankings=8, downloads=3)
    paths = builder.write(home, skip=("downloads",))                  # missing
    paths["rankings"].write_bytes(b"this is not gzip\n")              # unreadable, hashed
    paths["users"].write_bytes(b"")                                   # empty
    report = ingest_day(home, DAY, IngestConfig(max_file_lines=3))    # images cut by a limit, hashed whole
    assert {t: r.status for t, r in report.tables.items()} == {
        "users": "empty", "images": "unreadable", "rankings": "unreadable", "downloads": "missing"}
    pinned = RawDigests(home)
    pinned.pin(DAY, report.read_digests())
    assert report.read_digests()["downloads"] == "missing"
    assert pinned.day(DAY) == RawDigests(home).day(DAY)


# ------------------------------------------------------------------------- 2. the workers read two deliveries

def test_workers_that_read_two_deliveries_of_a_file_give_the_day_of_one_delivery(fast_tmp, monkeypatch):
    home = DataHome(fast_tmp / "home")
    builder = _day(home, rankings=40)
    original = home.raw_file(DAY, "rankings").read_bytes()
    flag = fast_tmp / "part-1-has-read-rankings"
    read_table = ingest.read_table

    def part_0_reads_after_a_redelivery(home_, day, table, parser, config, uid_sink=None, part=(0, 1),
                                        spill_dir=None, **options):
        if table == "rankings" and part == (0, 2):
            deadline = time.monotonic() + 60
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            _redeliver(home_.raw_file(day, "rankings"), _corrected(builder))
        run = read_table(home_, day, table, parser, config, uid_sink, part, spill_dir, **options)
        if table == "rankings" and part == (1, 2):
            flag.write_text("read")
        return run

    monkeypatch.setattr(ingest, "read_table", part_0_reads_after_a_redelivery)
    report = ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert _prompts(home) == {CORRECTED} and report.tables["rankings"].accepted == 40
    files = {row["table"]: row for row in pq.read_table(home.partition_file("ingest_files", DAY)).to_pylist()}
    assert files["rankings"]["file_sha256"] == hashlib.sha256(_corrected(builder)).hexdigest()
    assert files["rankings"]["file_sha256"] != hashlib.sha256(original).hexdigest()


def test_merging_parts_of_two_different_files_is_refused():
    def part(sha: str):
        report = ingest.TableReport("rankings", "raw/app_logs/dt=2023-03-01/rankings.jsonl.gz", file_sha256=sha,
                                    file_bytes=10, lines_in=5)
        return (pa.table({"ranking_id": pa.array([], pa.int64())}), QuarantineSink("rankings", report.file, None),
                report, set())

    assert ingest._same_file([part("a" * 64), part("a" * 64)])
    assert not ingest._same_file([part("a" * 64), part("b" * 64)])
    with pytest.raises(RuntimeError, match="rankings.jsonl.gz changed while it was ingested"):
        ingest._merge_parts("rankings", [part("a" * 64), part("b" * 64)])


# ------------------------------------------------------------------------------ 3. a member that fails its check

def _stored_member(payload: bytes) -> bytes:
    packer = zlib.compressobj(0, zlib.DEFLATED, 31)          # stored blocks: a flipped byte stays one byte
    return packer.compress(payload) + packer.flush()


def _damaged(member: bytes, needle: bytes, byte: bytes) -> bytes:
    at = member.find(needle)
    assert at > 0
    return member[:at] + byte + member[at + 1:]


def _read(path: Path, **kwargs) -> tuple[raw_lines.RawFile, bytes]:
    raw = raw_lines.RawFile(path, read_bytes=7, max_chunk=5, **kwargs)   # tiny buffers: every refill path
    return raw, b"".join(raw.chunks())


@pytest.mark.parametrize("damage", ["crc", "length", "block"])
def test_a_damaged_member_yields_nothing_and_the_members_before_it_everything(tmp_path, damage):
    first = b"".join(b'{"n": %d}\n' % i for i in range(50))
    second = b"".join(b'{"m": %d}\n' % i for i in range(50))
    if damage == "crc":
        bad = _damaged(_stored_member(second), b'"m": 7}', b"!")
    elif damage == "length":                                       # the ISIZE of the trailer
        member = gzip.compress(second, mtime=0)
        bad = member[:-1] + bytes([member[-1] ^ 1])
    else:                                                          # a deflate stream damaged mid-member
        member = gzip.compress(second * 20, mtime=0)
        bad = member[:10] + b"\xff" * 8 + member[18:]
    path = tmp_path / "f.jsonl.gz"
    content = gzip.compress(first, mtime=0) + bad + gzip.compress(b'{"after": 1}\n', mtime=0)
    path.write_bytes(content)
    raw, data = _read(path)
    assert data == first
    assert raw.status == "unreadable"
    start = len(gzip.compress(first, mtime=0))
    assert f"nothing from compressed byte {start} on was read" in raw.error
    assert raw.file_sha256 == hashlib.sha256(content).hexdigest() and raw.file_bytes == len(content)


def test_a_truncated_last_member_still_yields_its_bytes_before_the_cut(tmp_path):
    payload = b"".join(b'{"n": %d}\n' % i for i in range(500))
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(payload, mtime=0)[:-30])
    raw, data = _read(path)
    assert raw.status == "unreadable" and "truncated" in raw.error and data and payload.startswith(data)


def test_a_file_rewritten_in_place_between_the_two_passes_is_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "f.jsonl.gz"
    old, new = _stored_member(b'{"n": 1}\n' * 100), _stored_member(b'{"n": 2}\n' * 100)
    assert len(old) == len(new)
    path.write_bytes(old)
    survey = raw_lines.RawFile._survey

    def survey_then_rewrite(self, handle):
        bad = survey(self, handle)
        with open(path, "r+b") as out:      # same inode, same size: rsync --inplace
            out.write(new)
        return bad

    monkeypatch.setattr(raw_lines.RawFile, "_survey", survey_then_rewrite)
    raw, data = _read(path)
    assert data == b'{"n": 2}\n' * 100
    assert raw.status == "unreadable" and "changed while it was read" in raw.error
    assert raw.file_sha256 == hashlib.sha256(new).hexdigest()      # the bytes the lines came from


def test_the_uid_index_and_the_day_agree_on_a_damaged_images_member(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = _day(home)
    hidden = builder.image(image_uid="12345678-1234-4234-8234-123456789abc")
    good = b"".join(line + b"\n" for line in builder.lines["images"])
    padding = b" " * (3 << 20)        # past the read and inflate buffers: the member's first bytes inflate early
    bad = _damaged(_stored_member(json.dumps(hidden).encode() + b"\n" + padding), b'"seed"', b"S")
    home.raw_file(DAY, "images").write_bytes(gzip.compress(good, mtime=0) + bad)
    assert raw_image_uids(home, DAY, {hidden["image_uid"]}) == set()          # searched: not in a damaged member
    report = ingest_day(home, DAY)
    assert report.tables["images"].status == "unreadable" and report.tables["images"].accepted == 10
    assert report.reconciled
    assert raw_image_uids(home, DAY, {hidden["image_uid"], builder.image_uids[0]}) == {builder.image_uids[0]}


# ---------------------------------------------------------------------------- 4. the unexpected_field detail

def test_an_unexpected_field_detail_names_ten_keys_then_how_many_more():
    parser = IngestConfig().line_parser("downloads", dt.date(2023, 3, 1))
    base = {"download_id": 5, "created_at": "2023-03-01 10:00:00", "user_id": 3,
            "image_uid": "12345678-1234-4234-8234-123456789abc", "prompt": "a cat"}
    names = [f"x{i:02d}" for i in range(25)]
    details = set()
    for order in (names, names[::-1]):
        with pytest.raises(rp.Reject) as caught:
            parser.parse(json.dumps(dict(base, **dict.fromkeys(order, 0))).encode())
        assert caught.value.reason == rp.UNEXPECTED_FIELD
        details.add(caught.value.detail)
    assert details == {"unexpected " + ", ".join(repr(name) for name in names[:10]) + ", ... 15 more"}
    with pytest.raises(rp.Reject) as caught:
        parser.parse(json.dumps(dict(base, zz=1, aa=2)).encode())
    assert caught.value.detail == "unexpected 'aa', 'zz'"


def test_the_quarantine_bounds_count_details(tmp_path, monkeypatch):
    sink = QuarantineSink("rankings", "f", tmp_path, SinkLimits(max_text_bytes=1000))
    sink.add(1, rp.UNEXPECTED_FIELD, "d" * 600, None, 5, "a" * 64)
    assert not sink.spills
    sink.add(2, rp.UNEXPECTED_FIELD, "e" * 600, None, 5, "b" * 64)
    assert len(sink.spills) == 1                       # 1,200 bytes of details: spilled
    monkeypatch.setattr(quarantine_module, "ROW_GROUP_TEXT_BYTES", 1000)
    table = pa.table({"raw_text": pa.array([None] * 4, pa.string()), "detail": pa.array(["d" * 600] * 4)})
    assert [group.num_rows for group in quarantine_module._row_groups([table])] == [2, 2]
