"""Fix33i: the defects of review rev33i (``tests/unit/test_hostile_rev33i.py``) and their neighbours.

- the uids the byte search finds in a day's images file are held in a ``pipelines.ingest.uidset.UidSet`` (spilled in
  sorted runs past a bound, merged in passes), and the uid index and the ``.image_exports`` record are written from it
  streamed: memory is flat in the uids of bad lines; the record keeps its bytes where it has one row group;
- ``lines.iter_lines`` keeps a line's pieces and joins them once it ends: linear in a line cut into tiny chunks;
- an integer past Python's int-from-string limit is a number as written (``invalid_value`` in an integer field, its
  key kept); no Python hint in a detail;
- a line nested too deep for the decoder, or not UTF-8, keeps its key where it reads one way, so the key's other
  versions are quarantined as ``conflicting_primary_key``.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import pickle
import random
import uuid

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.files import PARQUET_OPTIONS
from formats.home import DataHome
from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp
from pipelines.ingest import uidindex, uidset
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.reader import read_table

DAY = "2023-03-01"


def _parser(table: str) -> rp.LineParser:
    return IngestConfig().line_parser(table, dt.date.fromisoformat(DAY))


def _uids(rng: random.Random, n: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]


# --- iter_lines: linear, and the same lines as before ------------------------------------------------------------

def _reference_lines(data: bytes, limit: int) -> list:
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [(i, p if len(p) <= limit else raw_lines.OverlongLine(p, len(p), hashlib.sha256(p).hexdigest()))
            for i, p in enumerate(parts, 1)]


def _as_plain(cut: list, limit: int) -> list:
    """``cut`` with each overlong line's prefix held to the bytes read when it was found overlong (the limit + 1 at
    least: the limit is under ``RAW_TEXT_BYTES`` here)."""
    return [(n, d if type(d) is bytes else ("long", d.prefix[:limit + 1], d.length, d.sha256)) for n, d in cut]


def test_iter_lines_gives_the_lines_of_any_chunking():
    rng = random.Random(33)
    limit = 200
    for _ in range(300):
        lines = [bytes(rng.choice(b"ab{}") for _ in range(rng.choice([0, 1, 5, 150, 199, 200, 201, 450])))
                 for _ in range(rng.randint(0, 6))]
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        chunks, at = [], 0
        while at < len(data):
            step = rng.choice([0, 1, 2, 7, 64, 300])
            chunks.append(data[at:at + step])
            at += step
        assert _as_plain(list(raw_lines.iter_lines(chunks, limit)), limit) == \
            _as_plain(_reference_lines(data, limit), limit), (chunks, limit)


def test_an_overlong_line_in_tiny_chunks_keeps_its_prefix_length_and_digest():
    line = bytes(range(256)) * 1200                          # 307,200 bytes, no newline byte among them but one
    line = line.replace(b"\n", b"x")
    data = b"ok\n" + line + b"\nlast"
    chunks = [data[i:i + 5] for i in range(0, len(data), 5)]
    cut = list(raw_lines.iter_lines(chunks, 100_000))
    assert cut[0] == (1, b"ok") and cut[2] == (3, b"last")
    number, long = cut[1]
    assert number == 2 and long.length == len(line) and long.prefix == line[:raw_lines.RAW_TEXT_BYTES]
    assert long.sha256 == hashlib.sha256(line).hexdigest()
    # a limit cut the stream: the unfinished tail is no line
    assert list(raw_lines.iter_lines([b"a\nb", b"c"], 10, lambda: True)) == [(1, b"a")]


# --- integers past Python's digit limit ----------------------------------------------------------------------------

def _download(**over) -> dict:
    base = {"download_id": 5, "created_at": f"{DAY} 10:00:00", "user_id": 3,
            "image_uid": "0" * 8 + "-0000-4000-8000-" + "0" * 12, "prompt": "a cat"}
    base.update(over)
    return base


def _reject(parser: rp.LineParser, line: bytes) -> rp.Reject:
    with pytest.raises(rp.Reject) as caught:
        parser.parse(line)
    return caught.value


@pytest.mark.parametrize("digits", [641, 4300, 4301, 20_000])
def test_a_long_integer_in_an_integer_field_is_invalid_value_with_its_key(digits):
    parser = _parser("downloads")
    for sign in ("", "-"):
        huge = sign + "9" * digits
        line = json.dumps(_download()).replace('"user_id": 3', f'"user_id": {huge}').encode()
        exc = _reject(parser, line)
        assert (exc.reason, exc.key) == (rp.INVALID_VALUE, 5), exc
        assert "sys." not in exc.detail and len(exc.detail) < 200


def test_a_long_integer_elsewhere_is_judged_as_its_field_judges_a_number():
    parser = _parser("downloads")
    huge = "1" + "0" * 5000
    as_key = json.dumps(_download()).replace('"download_id": 5', f'"download_id": {huge}').encode()
    exc = _reject(parser, as_key)
    assert (exc.reason, exc.key) == (rp.INVALID_VALUE, None)            # no key: a key is at most 2^53
    as_text = json.dumps(_download()).replace('"prompt": "a cat"', f'"prompt": {huge}').encode()
    exc = _reject(parser, as_text)
    assert (exc.reason, exc.key) == (rp.WRONG_TYPE, 5) and "1000" in exc.detail and len(exc.detail) < 200
    images = _parser("images")
    image = DayBuilder(DAY, seed=1).image(user_id=3)
    for field, reason in (("gs", rp.INVALID_VALUE), ("seed", rp.INVALID_VALUE)):
        line = json.dumps(image).replace(f'"{field}": {json.dumps(image[field])}', f'"{field}": {huge}').encode()
        assert huge.encode() in line
        exc = _reject(images, line)
        assert (exc.reason, exc.key) == (reason, image["image_uid"]), exc
    # nested in an unexpected member: still an unexpected_field line with its key
    exc = _reject(parser, json.dumps(_download(extra=[1])).replace("[1]", f"[{huge}]").encode())
    assert (exc.reason, exc.key) == (rp.UNEXPECTED_FIELD, 5)
    # with a NaN too: the lenient read takes the long integer as well
    exc = _reject(parser, json.dumps(_download(user_id=float("nan"), extra=1)).replace('"extra": 1',
                                                                                       f'"extra": {huge}').encode())
    assert (exc.reason, exc.key) == (rp.INVALID_VALUE, 5)


# --- keys of lines nested too deep or not UTF-8 ------------------------------------------------------------------

def _deep(parser_line: dict, depth: int, tail: str = "") -> bytes:
    text = json.dumps(parser_line)
    return (text[:-1] + ', "junk": ' + "[" * depth + "1" + "]" * depth + tail + "}").encode()


def test_a_line_nested_too_deep_keeps_a_key_that_reads_one_way():
    parser = _parser("downloads")
    exc = _reject(parser, _deep(_download(), 100_000))
    assert (exc.reason, exc.detail, exc.key) == (rp.MALFORMED_JSON, "nesting too deep", 5)
    mixed = json.dumps(_download())[:-1] + ', "junk": ' + '[{"a": ' * 3000 + "1" + "}]" * 3000 + "}"
    assert _reject(parser, mixed.encode()).key == 5
    # no key where it does not read one way, or where the line is not one JSON object
    assert _reject(parser, _deep(_download(), 5000).replace(b'"junk"', b'"download_id"')).key is None
    assert _reject(parser, _deep(_download(), 5000)[:-2] + b"}").key is None           # a bracket short
    assert _reject(parser, _deep(_download(), 5000) + b" x").key is None               # extra data
    assert _reject(parser, b"[" * 5000 + b"]" * 5000).key is None
    assert _reject(parser, _deep(_download(download_id=0), 5000)).key is None          # not a valid id
    # a NaN beside the depth: the lenient read takes it as null, the key still reads one way
    line = _deep(_download(), 5000)[:-1] + b', "x": NaN}'
    assert _reject(parser, line).key == 5


def test_shallow_members_agree_with_the_lenient_read():
    rng = random.Random(7)

    def value(depth: int):
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice([0, -2.5, 1e-7, "s\u00e9\"\\", None, True, False, 10 ** 30, ""])
        if roll < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 3))}

    for _ in range(500):
        text = json.dumps({f"m{i}": value(1) for i in range(rng.randint(0, 4))}, indent=rng.choice([None, 1]))
        lenient = rp.lenient_members(text)
        shallow = rp._shallow_members(text)
        assert [(n, "nested" if isinstance(v, list) else v) for n, v in lenient] == \
               [(n, "nested" if v is rp._NESTED else v) for n, v in shallow]
        cut = rng.randrange(len(text))
        broken = text[:cut] + text[cut + 1:]
        assert (rp._shallow_members(broken) is None) == (rp.lenient_members(broken) is None), broken


def test_an_invalid_utf8_line_keeps_its_key():
    parser = _parser("downloads")
    line = json.dumps(_download(prompt="a cat")).encode().replace(b"a cat", b"a \xff cat")
    exc = _reject(parser, line)
    assert (exc.reason, exc.key) == (rp.INVALID_UTF8, 5)
    # the invalid byte in the key itself, or a line that is no JSON object once read: no key
    images = _parser("images")
    image = DayBuilder(DAY, seed=2).image()
    bad_uid = json.dumps(image).encode().replace(image["image_uid"][:4].encode(), b"\xc0\xaf" + b"00", 1)
    assert _reject(images, bad_uid).key is None
    assert _reject(parser, b'{"download_id": 5, \xff}').key is None
    # with a member named twice alike: read leniently, the key reads one way
    twice = json.dumps(_download()).encode()[:-1] + b', "prompt": "\xfe"}'
    exc = _reject(parser, twice)
    assert (exc.reason, exc.key) == (rp.INVALID_UTF8, 5)


def test_versions_of_a_key_refused_for_depth_or_utf8_quarantine_the_others(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=33).populate(users=3, images=6, rankings=4, downloads=2)
    deep_one, utf8_one = builder.download(download_id=900_001), builder.download(download_id=900_002)
    first = builder.add("downloads", deep_one)
    deep = builder.add("downloads", _deep(dict(deep_one, prompt="another"), 50_000))
    second = builder.add("downloads", utf8_one)
    bad = builder.add("downloads", json.dumps(dict(utf8_one, prompt="x")).encode().replace(b'"x"', b'"\xff"'))
    builder.write(home)
    report = ingest_day(home, DAY, IngestConfig(workers=1))
    assert report.reconciled
    kept = pq.read_table(home.partition_file("downloads", DAY), columns=["download_id"]).column(0).to_pylist()
    assert 900_001 not in kept and 900_002 not in kept
    rows = {r["line_number"]: r["reason"] for r in pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
            if r["table"] == "downloads"}
    assert rows[first] == rows[second] == rp.CONFLICTING_PRIMARY_KEY
    assert (rows[deep], rows[bad]) == (rp.MALFORMED_JSON, rp.INVALID_UTF8)


# --- the uid set that spills ------------------------------------------------------------------------------------

def test_uid_set_spills_and_reads_back_the_same_set(tmp_path, monkeypatch):
    monkeypatch.setattr(uidset, "MERGE_FAN", 3)            # several merge passes
    rng = random.Random(5)
    every = _uids(rng, 3000)
    held = uidset.UidSet(tmp_path / "spill", max_memory=100)
    for uid in every + every[:500]:                          # repeats across runs
        held.add(uid)
    held.update(every[-50:])
    assert len(held.runs) > 9 and len(held.memory) < 100
    wanted = set(rng.sample(every, 200)) | set(_uids(rng, 50))
    assert held.intersection(wanted) == wanted & set(every)
    copy = pickle.loads(pickle.dumps(held))                  # a worker's set travels to the parent
    assert copy.intersection(wanted) == wanted & set(every)
    assert list(copy.sorted()) == sorted(set(every))
    assert len(copy.runs) <= 3                               # merged in passes, the old runs removed
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == sorted(p.split("/")[-1] for p in copy.runs)
    assert copy.intersection(wanted) == wanted & set(every)
    in_memory = uidset.UidSet(None, max_memory=10)           # no spill folder: kept in memory
    in_memory.update(every[:40])
    assert in_memory.runs == [] and list(in_memory.sorted()) == sorted(every[:40])


def test_the_exports_record_streamed_keeps_its_bytes(tmp_path):
    rng = random.Random(9)
    for found_n, accepted_n in ((0, 0), (20, 5), (3000, 1000)):
        found = set(_uids(rng, found_n))
        accepted = rng.sample(sorted(found), min(accepted_n, len(found))) + _uids(rng, 2)
        table = uidindex.exports_record(found, accepted, "f00d")
        pq.write_table(table, tmp_path / "whole.parquet", **PARQUET_OPTIONS)
        spilled = uidset.UidSet(tmp_path / "spill", max_memory=64)
        for uid in sorted(found, reverse=True):
            spilled.add(uid)
        uidindex.write_exports_record(spilled, accepted, "f00d", tmp_path / "streamed.parquet")
        assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
        rows = table.to_pylist()
        assert [r["image_uid"] for r in rows] == sorted((found - set(accepted)) | (set(accepted) - found))
        assert all(r["exported"] == (r["image_uid"] in found) for r in rows)


def test_a_day_whose_bad_lines_hold_many_uids_records_and_resolves_them(fast_tmp, monkeypatch):
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 64)        # spill at once
    monkeypatch.setattr(uidindex, "WRITE_BATCH", 50)          # several row groups
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=3).populate(users=3, images=5, rankings=3, downloads=0)
    nested = _uids(random.Random(4), 400)
    builder.add("images", json.dumps({"junk": [{"image_uid": uid} for uid in nested]}))
    builder.add("downloads", builder.download(image_uid=nested[123]))   # resolved by a quarantined line's uid
    builder.add("downloads", builder.download(image_uid=_uids(random.Random(8), 1)[0]))
    builder.write(home)
    report = ingest_day(home, DAY, IngestConfig(workers=1))
    assert report.reconciled and report.tables["downloads"].accepted == 1
    record = pq.read_table(uidindex.exports_record_path(home, DAY))
    assert record.column("image_uid").to_pylist() == sorted(nested) and pq.ParquetFile(
        uidindex.exports_record_path(home, DAY)).num_row_groups == 8
    index = pq.read_table(home.raw_image_uid_index(DAY)).column("image_uid").to_pylist()
    images = pq.read_table(home.partition_file("images", DAY), columns=["image_uid"]).column(0).to_pylist()
    assert index == sorted(set(nested) | set(images))
    assert not list((home.cache / "tmp").glob("ingest-*"))    # the runs went with the scratch folder
    # another day's look-up searches the file again (no index) with the same bounded set, and writes the same index
    home.raw_image_uid_index(DAY).unlink()
    assert uidindex.raw_image_uids(home, DAY, {nested[0], nested[399], "x"}) == {nested[0], nested[399]}
    assert pq.read_table(home.raw_image_uid_index(DAY)).column("image_uid").to_pylist() == index
    assert not list((home.cache / "tmp").glob("ingest-*"))


def test_a_clean_images_file_never_spills_its_uids(fast_tmp, monkeypatch):
    """The accepted rows raise the set's memory allowance (they are held anyway): only bad lines' uids spill."""
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 50)
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=6).populate(users=2, images=200, rankings=0, downloads=0)
    builder.write(home)
    path = home.raw_file(DAY, "images")
    lines = builder.lines["images"]
    path.write_bytes(b"".join(gzip.compress(b"".join(line + b"\n" for line in lines[i:i + 20]), mtime=0)
                              for i in range(0, len(lines), 20)))       # 10 members: 10 chunks of 20 uids
    spill = fast_tmp / "spill"
    found = uidset.UidSet(spill)
    run = read_table(home, DAY, "images", _parser("images"), IngestConfig(), found, (0, 1), spill)
    assert len(run.rows) == 200 and found.runs == [] and found.memory == set(builder.image_uids)
    # the same file with a bad line of 300 nested uids: those spill, the set is the same
    nested = _uids(random.Random(2), 300)
    with gzip.open(path, "ab") as out:
        out.write(json.dumps({"junk": [{"image_uid": uid} for uid in nested]}).encode() + b"\n")
    found = uidset.UidSet(spill)
    read_table(home, DAY, "images", _parser("images"), IngestConfig(), found, (0, 1), spill)
    assert found.runs and list(found.sorted()) == sorted(set(builder.image_uids) | set(nested))
