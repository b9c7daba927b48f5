"""Fix34a: the defects of review rev34a (``tests/unit/test_hostile_rev34a.py``) and their neighbours.

- a line over ``ingest.max_line_bytes`` (never decoded) keeps its key: its top-level key members are read from its
  bytes as they stream (``lines.MemberScan``, ``OverlongLine.members``, ``LineParser.overlong_key``), so the key's
  other versions are quarantined as ``conflicting_primary_key``; such a line is routed to a worker by that key;
- ``LineParser.key_of`` judges an id as ``validate`` does, as written (``9007199254740993.0`` is 2^53 + 1), and two
  values of a member named twice are alike only when they are the same number as written;
- a worker's accepted images row raises its uid set's allowance by the number of workers: a clean file spills in no
  worker, the uids of bad lines still do.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import shutil

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp
from pipelines.ingest import uidset
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.reader import read_table

DAY = "2023-03-01"


def _scan(data: bytes, name: str = "k", step: int | None = None, bom: bool = False):
    scan = raw_lines.MemberScan(name, bom=bom)
    step = step or max(len(data), 1)
    for i in range(0, len(data), step):
        scan.feed(data[i:i + step])
    return scan.result()


# --- MemberScan: the top-level members of one name, from the bytes in any pieces ----------------------------------

def _random_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 3 else 5)
    if pick == 0:
        return rng.choice([0, 7, -3, 2**60, 1.5, -2.5e-3])
    if pick == 1:
        return rng.choice([True, False, None])
    if pick in (2, 3, 4):
        return "".join(rng.choice('ab "\\/[]{},:\u00e9\n\t\u2028k') for _ in range(rng.randrange(6)))
    if pick in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["k", "a", "b", "x y"]): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_line(rng: random.Random) -> tuple[bytes, tuple]:
    """A JSON object (member ``k`` written 0-3 times, its name sometimes escaped, blanks around tokens) and the
    values of its top-level ``k`` members as written, each spelling once (None for a container)."""
    members, expected = [], []
    for _ in range(rng.randrange(7)):
        name = rng.choice(["k", "k", "a", "b", "kk", "K"])
        value = _random_value(rng)
        written_name = json.dumps(name)
        if name == "k" and rng.random() < 0.3:
            written_name = '"\\u006b"'
        written = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        members.append((written_name, written))
        if name == "k":
            spelled = None if isinstance(value, (list, dict)) else written.encode()
            if spelled not in expected:
                expected.append(spelled)
    blank = rng.choice(["", " ", " \t", "\r\n "[1:]])
    text = "{" + blank + ("," + blank).join(f"{n}{blank}:{blank}{v}" for n, v in members) + blank + "}"
    return text.encode(), tuple(expected)


def test_member_scan_reads_the_top_level_members_of_random_objects_in_any_pieces():
    rng = random.Random(34)
    for _ in range(400):
        data, expected = _random_line(rng)
        for step in (None, 1, 2, 3, 7):
            assert _scan(data, step=step) == expected, (data, step)


@pytest.mark.parametrize("text", [
    b'{"k":1', b'[1]', b'"k"', b'{"k":1}x', b'{"k":1}}', b'{"a":[1]]],"k":2}', b'{"k":1,}', b'{,"k":1}',
    b'{"k" 1}', b'{"k":}', b'{"a":{"k":1}', b'', b'  ', b'{"k":"unclosed}', b'{"k":1 "a":2}',
])
def test_member_scan_refuses_what_is_not_one_object(text):
    for step in (None, 1, 2):
        assert _scan(text, step=step) is None


def test_member_scan_keeps_a_bom_on_a_first_line_only_and_caps_what_it_keeps():
    assert _scan(b"\xef\xbb\xbf{\"k\":1}", step=1, bom=True) == (b"1",)
    assert _scan(b"\xef\xbb\xbf{\"k\":1}", bom=False) is None
    assert _scan(b'{"k":"' + b"x" * 300 + b'"}') == (None,)          # too long to be a key: no value kept
    assert _scan(b'{"' + b"k" * 300 + b'":1,"k":2}') == (b"2",)     # a long name is never the one wanted
    # each spelling once, at most SPELLINGS of them: memory bounded whatever the line repeats
    assert _scan(b"{" + b'"k":1,' * 1000 + b'"k":1.0,"k":1}') == (b"1", b"1.0")
    many = _scan(b"{" + b",".join(b'"k":%d' % i for i in range(1000)) + b"}")
    assert len(many) == raw_lines.MemberScan.SPELLINGS + 1 and many[-1] is None
    # a name spelled with escapes, a value with escapes, strings holding brackets and quotes
    assert _scan(b'{"a":"]}\\"[","\\u006b":"x\\"y","b":[{"k":3}]}', step=1) == (b'"x\\"y"',)


def test_member_scan_follows_long_hostile_structures_in_linear_steps():
    """Shapes a single regular-expression step skips (arrays of numbers, flat containers, members of other names) and
    shapes read token by token (escaped names, deep nesting): the key after them is found whatever the pieces."""
    n = 1 << 14
    shapes = [b'{"a":[' + b"1," * n + b'1],"k":5}',
              b'{"a":[' + b"[]," * n + b'[]],"k":5}',
              b"{" + b'"a":1,' * n + b'"k":5}',
              b"{" + b'"\\u0061":1,' * n + b'"k":5}',
              b'{"a":' + b"[" * n + b"]" * n + b',"k":5}',
              b'{"a":' + b"[[]," * n + b"]" * n + b',"k":5}']
    for data in shapes:
        assert _scan(data, step=4096) == (b"5",)
        assert _scan(data, step=4093) == (b"5",)


# --- iter_lines: an overlong line's members, found whole or streamed ------------------------------------------------

def test_iter_lines_records_the_members_of_overlong_lines_however_the_chunks_fall():
    long_last = json.dumps({"prompt": "x" * 100_000, "download_id": 42}).encode()   # the key past the 64 KiB prefix
    long_first = json.dumps({"download_id": 7, "prompt": "y" * 3_000}).encode()
    cut = b'{"download_id": 9, "prompt": "' + b"z" * 3_000                           # not one object
    data = b"\xef\xbb\xbf" + long_first + b"\n{}\n" + long_last + b"\n" + cut
    for size in (7, 997, 4096, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        got = list(raw_lines.iter_lines(chunks, 1_000, member="download_id"))
        assert [n for n, _ in got] == [1, 2, 3, 4]
        assert got[0][1].members == (b"7",)        # line 1: its BOM skipped
        assert got[1][1] == b"{}"
        assert got[2][1].members == (b"42",) and got[2][1].length == len(long_last)
        assert got[3][1].members is None
    plain = list(raw_lines.iter_lines([data], 1_000))
    assert all(type(d) is bytes or d.members is None for _, d in plain)   # no member asked: none read


# --- the ingest: an overlong version of a key --------------------------------------------------------------------

def _kept_and_reasons(home: DataHome, table: str, key: str) -> tuple[list, dict[int, str]]:
    kept = pq.read_table(home.partition_file(table, DAY), columns=[key]).column(0).to_pylist()
    reasons = {r["line_number"]: r["reason"] for r in pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
               if r["table"] == table}
    return kept, reasons


def _overlong_day(home: DataHome) -> dict[str, int]:
    """Downloads of several keys with an overlong version each, in tiny gzip members (the line streamed)."""
    builder = DayBuilder(DAY, seed=3).populate(users=3, images=6, rankings=2, downloads=4)
    lines = {}
    for key in range(900_001, 900_009):          # key written last, after a prompt past the 64 KiB prefix
        version = builder.download(download_id=key)
        lines[f"short{key}"] = builder.add("downloads", version)
        del version["download_id"]
        lines[f"long{key}"] = builder.add("downloads", dict(version, prompt="p" * 70_000, download_id=key))
    twice = builder.download(download_id=910_001)                     # key written twice, differently: no key
    lines["twice_short"] = builder.add("downloads", twice)
    lines["twice_long"] = builder.add("downloads", json.dumps(dict(twice, prompt="q" * 2_000))[:-1]
                                      + ', "download_id": 910002}')
    nested = builder.download(download_id=920_001)                    # the key only in a nested object: no key
    lines["nested_short"] = builder.add("downloads", nested)
    lines["nested_long"] = builder.add("downloads", {"x": {"download_id": 920_001}, "prompt": "r" * 2_000})
    builder.write(home)
    path, raw = home.raw_file(DAY, "downloads"), builder.lines["downloads"]
    payload = b"".join(line + b"\n" for line in raw)
    path.write_bytes(b"".join(gzip.compress(payload[i:i + 1024], mtime=0) for i in range(0, len(payload), 1024)))
    return lines


def test_an_overlong_version_written_key_last_in_tiny_members_quarantines_the_other(fast_tmp):
    home = DataHome(fast_tmp / "home")
    lines = _overlong_day(home)
    report = ingest_day(home, DAY, IngestConfig(workers=1, max_line_bytes=1_000))
    assert report.reconciled
    kept, reasons = _kept_and_reasons(home, "downloads", "download_id")
    for key in range(900_001, 900_009):
        assert key not in kept
        assert reasons[lines[f"long{key}"]] == rp.LINE_TOO_LONG
        assert reasons[lines[f"short{key}"]] == rp.CONFLICTING_PRIMARY_KEY
    # no key read one way: the line is no version of a key, the other line stands
    assert reasons[lines["twice_long"]] == rp.LINE_TOO_LONG and lines["twice_short"] not in reasons
    assert reasons[lines["nested_long"]] == rp.LINE_TOO_LONG and lines["nested_short"] not in reasons
    assert 910_001 in kept and 920_001 in kept


def test_overlong_versions_give_the_same_files_for_one_two_and_three_workers(fast_tmp):
    base = DataHome(fast_tmp / "base")
    _overlong_day(base)
    outputs = []
    for workers in (1, 2, 3):
        home = DataHome(fast_tmp / f"w{workers}")
        shutil.copytree(base.root, home.root)
        report = ingest_day(home, DAY, IngestConfig(workers=workers, parallel_min_bytes=1, max_line_bytes=1_000))
        assert report.reconciled
        outputs.append([home.partition_file(t, DAY).read_bytes() for t in ("downloads", "quarantine")])
    assert outputs[0] == outputs[1] == outputs[2]


def test_an_overlong_first_line_after_a_bom_keeps_its_key(fast_tmp):
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=4).populate(users=3, images=6, rankings=2, downloads=0)
    version = builder.download(download_id=930_001)
    long = builder.add("downloads", b"\xef\xbb\xbf" + json.dumps(dict(version, prompt="s" * 2_000)).encode())
    short = builder.add("downloads", version)
    builder.write(home)
    assert ingest_day(home, DAY, IngestConfig(workers=1, max_line_bytes=1_000)).reconciled
    kept, reasons = _kept_and_reasons(home, "downloads", "download_id")
    assert (long, reasons[long], reasons[short]) == (1, rp.LINE_TOO_LONG, rp.CONFLICTING_PRIMARY_KEY)
    assert 930_001 not in kept


# --- key_of: an id as written -----------------------------------------------------------------------------------------

def _downloads_parser(max_id: int) -> rp.LineParser:
    return IngestConfig(max_id=max_id).line_parser("downloads", dt.date.fromisoformat(DAY))


@pytest.mark.parametrize("written, max_id, key", [
    ("9007199254740993.0", 2**62, 2**53 + 1),
    ("90071992547409930e-1", 2**62, 2**53 + 1),
    ("9007199254740993.0", 2**53, None),          # outside [1, max_id]
    ("9007199254740992.5", 2**62, None),          # a fraction: no id
    ("1e400", 2**62, None),
    ("1" + "0" * 700, 2**62, None),                # past Python's digit limit
    ("5.0", 2**62, 5),
])
def test_key_of_judges_an_id_as_written(written, max_id, key):
    parser = _downloads_parser(max_id)
    assert parser.key_of(rp.load_json('{"download_id": ' + written + "}")) == key
    line = raw_lines.OverlongLine(b"", 0, "", (written.encode(),))
    assert parser.overlong_key(line) == key


def test_a_member_named_twice_is_one_key_only_when_both_are_the_same_number_as_written():
    parser = _downloads_parser(2**62)
    same = '{"download_id": 9007199254740993.0, "download_id": 9007199254740993.00, "prompt": NaN}'
    other = '{"download_id": 9007199254740993.0, "download_id": 9007199254740992.9, "prompt": NaN}'
    assert parser.decoded_key(same) == 2**53 + 1
    assert parser.decoded_key(other) is None       # one double, two numbers: no key read one way
    assert parser.overlong_key(raw_lines.OverlongLine(b"", 0, "", (b"9007199254740993.0", b"9007199254740992.9"))) \
        is None
    assert parser.overlong_key(raw_lines.OverlongLine(b"", 0, "", (b"3", b"3"))) == 3
    assert parser.overlong_key(raw_lines.OverlongLine(b"", 0, "", (b"3", None))) is None
    assert parser.overlong_key(raw_lines.OverlongLine(b"", 0, "", ())) is None


# --- the uid set's allowance in a worker ------------------------------------------------------------------------------

def _images_file(home: DataHome, builder: DayBuilder) -> None:
    builder.write(home)
    path, lines = home.raw_file(DAY, "images"), builder.lines["images"]
    path.write_bytes(b"".join(gzip.compress(b"".join(line + b"\n" for line in lines[i:i + 20]), mtime=0)
                              for i in range(0, len(lines), 20)))


def test_a_clean_images_file_read_by_three_workers_never_spills(fast_tmp, monkeypatch):
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 60)
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=8).populate(users=2, images=300, rankings=0, downloads=0)
    _images_file(home, builder)
    parser = IngestConfig().line_parser("images", dt.date.fromisoformat(DAY))
    accepted = 0
    for index in range(3):
        found = uidset.UidSet(fast_tmp / "spill")
        accepted += len(read_table(home, DAY, "images", parser, IngestConfig(), found, (index, 3), fast_tmp).rows)
        assert found.runs == [] and set(found.sorted()) == set(builder.image_uids)
    assert accepted == 300


def test_the_uids_of_a_bad_line_still_spill_in_every_worker(fast_tmp, monkeypatch):
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 50)
    home = DataHome(fast_tmp / "home")
    builder = DayBuilder(DAY, seed=9).populate(users=2, images=20, rankings=0, downloads=0)
    nested = [builder.uid() for _ in range(400)]
    builder.add("images", dict(builder.image(), extra=[{"image_uid": uid} for uid in nested]))   # unexpected_field
    _images_file(home, builder)
    parser = IngestConfig().line_parser("images", dt.date.fromisoformat(DAY))
    for index in (0, 1):
        found = uidset.UidSet(fast_tmp / f"spill{index}")
        read_table(home, DAY, "images", parser, IngestConfig(), found, (index, 2), fast_tmp)
        assert found.runs, f"worker {index} held the 400 uids of a bad line in memory"
        assert len(found.memory) < 50 + 2 * 21
        assert set(found.sorted()) >= set(nested) | set(builder.image_uids[:20])
