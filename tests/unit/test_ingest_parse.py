"""Line-level rules of the ingest: prompt transformations, every per-line reason, gzip streaming."""
from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest
from test_ingest_fixtures import DayBuilder, hostile_lines

from pipelines.ingest import lines as raw_lines
from pipelines.ingest import parse as rp

DAY = "2023-03-01"


def parser(table: str, **over) -> rp.LineParser:
    options = dict(max_id=2**53, max_prompt_chars=2000, max_name_chars=256, gs_range=(0.0, 50.0),
                   ts_range=(dt.datetime(2022, 1, 1), dt.datetime(2023, 3, 4)))
    options.update(over)
    return rp.LineParser(table, **options)


def as_bytes(line) -> bytes:
    if isinstance(line, bytes):
        return line
    if isinstance(line, str):
        return line.encode("utf-8")
    return json.dumps(line, ensure_ascii=False, allow_nan=True).encode("utf-8")


@pytest.mark.parametrize("raw, prompt, negative", [
    ("a cat", "a cat", None),
    ("  a cat  ", "a cat", None),
    ("don[single_quote]t stop", "don't stop", None),
    ("a cat [blurry] on a mat", "a cat on a mat", "blurry"),
    ("[ugly]a dog[low quality, dark]", "a dog", "ugly, low quality, dark"),
    ("a [single_quote]quoted[single_quote] word [ bad ]", "a 'quoted' word", "bad"),
    ("unbalanced [bracket", "unbalanced [bracket", None),
    ("empty [] brackets", "empty brackets", None),
    ("[only negative]", "", "only negative"),
])
def test_split_prompt(raw, prompt, negative):
    assert rp.split_prompt(raw) == (prompt, negative)


def test_unescape_leaves_other_brackets():
    assert rp.unescape("it[single_quote]s [x]") == "it's [x]"
    assert rp.unescape("plain") == "plain"


def test_clean_lines_parse_to_typed_values():
    b = DayBuilder(DAY).populate(users=2, images=4, rankings=3, downloads=2)
    for table, lines in b.lines.items():
        p = parser(table)
        for line in lines:
            values = p.parse(line)
            assert len(values) == len(p.names)
    image = parser("images").parse(as_bytes(b.image(gs=7, steps=25.0, prompt="x")))
    assert image[7] == 7.0 and type(image[7]) is float  # integer gs accepted as a number
    assert image[8] == 25 and type(image[8]) is int     # 25.0 accepted as the integer 25


def test_every_hostile_line_gets_its_reason():
    b = DayBuilder(DAY).populate()
    for table, line, reason in hostile_lines(b):
        if reason == "unknown_image_reference":
            continue  # decided per day, not per line (see test_ingest_day)
        data = as_bytes(line)
        if len(data) > (1 << 20):
            chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
            [(number, long_line)] = list(raw_lines.iter_lines(chunks, 1 << 20))
            assert isinstance(long_line, raw_lines.OverlongLine) and long_line.length == len(data)
            continue
        with pytest.raises(rp.Reject) as caught:
            parser(table).parse(data)
        assert caught.value.reason == reason, (table, line if len(data) < 300 else data[:80], caught.value.detail)


def test_fast_path_agrees_with_reference_rules():
    """The compiled fast path accepts only what ``validate`` accepts, with identical values."""
    b = DayBuilder(DAY, seed=3).populate(users=10, images=30, rankings=30, downloads=10)
    corpus = [(t, line) for t, lines in b.lines.items() for line in lines]
    corpus += [(t, as_bytes(line)) for t, line, _ in hostile_lines(b) if len(as_bytes(line)) < 10_000]
    corpus += [("images", as_bytes(b.image(gs=5))), ("images", as_bytes(b.image(seed=None, idx=None))),
               ("rankings", as_bytes(b.ranking(best_image_uid="none"))), ("users", as_bytes(b.user(name="Zoë")))]
    agreed = 0
    for table, data in corpus:
        p = parser(table)
        try:
            obj = rp.load_json(data.decode("utf-8"))
        except (rp.Reject, UnicodeDecodeError):
            continue
        if type(obj) is not dict:
            continue
        try:
            fast = p._fast(obj)
        except ValueError:
            fast = None
        try:
            slow = p.validate(obj)
        except rp.Reject:
            slow = None
        if fast is not None:
            assert fast == slow, (table, data[:120])
            agreed += 1
    assert agreed > 50


def test_limits_come_from_the_config():
    b = DayBuilder(DAY).populate()
    line = as_bytes(b.ranking(prompt="x" * 50))
    with pytest.raises(rp.Reject, match="prompt_too_long"):
        parser("rankings", max_prompt_chars=10).parse(line)
    with pytest.raises(rp.Reject, match="bad_timestamp"):
        parser("rankings", ts_range=(dt.datetime(2022, 1, 1), dt.datetime(2023, 3, 1))).parse(line)


def test_iter_lines_numbers_and_keeps_tail():
    chunks = [b'{"a"', b": 1}\n\n{", b'"b": 2}\n{"trunc']
    lines = list(raw_lines.iter_lines(chunks, 100))
    assert lines == [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}'), (4, b'{"trunc')]


def test_iter_lines_overlong_spanning_chunks():
    big = b"y" * 300
    chunks = [b"ok\n" + big[:100], big[100:250], big[250:] + b"\nnext\n"]
    lines = list(raw_lines.iter_lines(chunks, 64))
    assert lines[0] == (1, b"ok")
    number, long_line = lines[1]
    assert number == 2 and isinstance(long_line, raw_lines.OverlongLine)
    assert long_line.length == 300 and long_line.prefix.startswith(b"yyy")
    assert long_line.sha256 == rp.raw_fields(big)[2]
    assert lines[2] == (3, b"next")


def read_all(path) -> tuple[raw_lines.RawFile, bytes]:
    raw = raw_lines.RawFile(path, read_bytes=7, max_chunk=5)  # tiny buffers exercise every refill path
    data = b"".join(raw.chunks())
    return raw, data


def test_rawfile_statuses(tmp_path):
    payload = b"".join(b'{"n": %d}\n' % i for i in range(200))
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(payload, mtime=0))
    raw, data = read_all(good)
    assert (raw.status, data) == ("ok", payload)
    assert raw.file_bytes == good.stat().st_size

    multi = tmp_path / "multi.gz"
    multi.write_bytes(gzip.compress(payload[:100], mtime=0) + gzip.compress(payload[100:], mtime=0))
    raw, data = read_all(multi)
    assert (raw.status, data) == ("ok", payload)

    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good.read_bytes()[:-30])
    raw, data = read_all(truncated)
    assert raw.status == "unreadable" and "truncated" in raw.error
    assert payload.startswith(data) and len(data) > 0

    plain = tmp_path / "plain.gz"
    plain.write_bytes(payload)
    raw, data = read_all(plain)
    assert raw.status == "unreadable" and data == b"" and raw.file_sha256 is not None

    garbage_tail = tmp_path / "tail.gz"
    garbage_tail.write_bytes(good.read_bytes() + b"garbage")
    raw, data = read_all(garbage_tail)
    assert raw.status == "unreadable" and data == payload

    for name, content in (("zero.gz", b""), ("nothing.gz", gzip.compress(b"", mtime=0))):
        path = tmp_path / name
        path.write_bytes(content)
        raw, data = read_all(path)
        assert (raw.status, data) == ("empty", b"")

    missing = raw_lines.RawFile(tmp_path / "absent.gz")
    assert not missing.check() and missing.status == "missing"
    folder = raw_lines.RawFile(tmp_path)
    assert not folder.check() and folder.status == "unreadable"


def test_decompression_bomb_streams_in_bounded_chunks(tmp_path):
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(b"\0" * (24 << 20), compresslevel=9, mtime=0))
    raw = raw_lines.RawFile(bomb)
    sizes = [len(chunk) for chunk in raw.chunks()]
    assert sum(sizes) == 24 << 20 and max(sizes) <= raw.max_chunk
    lines = list(raw_lines.iter_lines(raw_lines.RawFile(bomb).chunks(), 1 << 20))
    assert len(lines) == 1 and lines[0][1].length == 24 << 20


def test_tap_image_uids_finds_members_across_chunk_borders():
    uid = "12345678-1234-4234-8234-123456789abc"
    text = ('{"image_uid": "%s", "prompt": "\\"image_uid\\": \\"%s\\""}' % (uid, uid.replace("1", "2"))).encode()
    for cut in range(1, len(text)):
        sink: set[str] = set()
        assert b"".join(raw_lines.tap_image_uids([text[:cut], text[cut:]], sink)) == text
        assert sink == {uid}  # the escaped look-alike inside the prompt is not a member
