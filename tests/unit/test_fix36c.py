"""Fix36c: the export keys a raw line, where a re-export decides whether it may replace it, exactly when and as the
ingest keys it.

Review rev36c: ``export._piece_key`` read a line's members up to the first that was not JSON and let the id found so
far stand, allowed text after the object and raw control characters in strings (a lenient decoder), and looked for the
id named again only in the line's first MiB: a line the ingest quarantines as malformed_json with no key (or, over
``max_line_bytes``, reads two ids in) was taken for the app's row of its first id, and a replica's re-export holding that
row dropped it from the raw zone. Now ``_piece_key`` reads a whole line with the ingest's own decoder
(``parse.load_json``, ``lenient_members`` for a NaN / a member named twice / nesting too deep, U+FFFD for bytes that
are not UTF-8), and a line longer than the export's piece (1 MiB) is not keyed: whether the ingest keys it depends on
bytes the export does not read. The lenient reading is ``_written_key``: the late-row check's (does the raw zone hold
the export's line of a row, its own cut line included) and a merge's order, never whether a line is replaced.

Small in-process calls on real gzip files; the fuzz runs a few thousand mutated lines against the real ``LineParser``.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from pathlib import Path

import pytest

from pipelines.appdb import export
from pipelines.appdb.export import (
    PIECE_BYTES,
    UNREADABLE,
    _file_counts,
    _keep_absent_rows,
    _piece_key,
    _written_key,
    id_digest,
    vanishing_rows,
)
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig

DAY = "2023-03-01"
NAME = "download_id"
REST = ('"user_id":1,"image_uid":"00000000-0000-0000-0000-000000000001","created_at":"2023-03-01 12:00:00",'
        '"prompt":"x"')
PARSER = IngestConfig().line_parser("downloads", dt.date.fromisoformat(DAY))


def _ingest_key(line: bytes) -> object:
    try:
        return PARSER.parse(line.rstrip(b"\n"))[PARSER.names.index(NAME)]
    except rp.Reject as exc:
        return exc.key


def _gz(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    return path


def _row(key: int, rest: str = REST) -> bytes:
    return f'{{"download_id": {key}, {rest}}}\n'.encode()


def _vanishing(tmp_path: Path, old: list[bytes], new: list[bytes] | None = None) -> tuple[int, list[str]]:
    return vanishing_rows(_gz(tmp_path / "old.jsonl.gz", old), _gz(tmp_path / "new.jsonl.gz", new or [_row(5)]), NAME)


class _NoFastPath:
    def raw_decode(self, text: str):
        raise ValueError("the fast path is off")


# --- the ingest's reading, fast path or not ---------------------------------------------------------------------------

TOKENS = ["5", "05", "-0", "tru", "null", "NaN", "1e400", "5.0", '"5"', "[", "]", "{", "}", ",", ":", '"', "\\",
          "\\u005f", "\\q", "\t", "\x01", " x", "\xff", "download_id", '"download_id":6', '"download\\u005fid":5',
          "\ufeff", "1" * 700]


def _mutated(rng: random.Random) -> bytes:
    line = '{"download_id":' + rng.choice(["5", " 5", "5.0", "6"]) + "," + REST + "}"
    for _ in range(rng.randrange(1, 3)):
        at = rng.randrange(len('{"download_id":5'), len(line) + 1)
        line = line[:at] + rng.choice(TOKENS) + line[at + rng.choice([0, 0, 1]):]
    return line.encode("utf-8", "surrogateescape").replace("\xff".encode(), b"\xff") + rng.choice([b"\n", b"\r\n"])


def test_mutated_lines_are_keyed_only_where_the_ingest_keys_them_and_by_its_key(monkeypatch):
    rng = random.Random(36)
    keyed = unkeyed = 0
    lines = [_mutated(rng) for _ in range(4000)]
    fast = [_piece_key(line, NAME) for line in lines]
    monkeypatch.setattr(export, "_PLAIN", _NoFastPath())
    for line, key in zip(lines, fast):
        assert _piece_key(line, NAME) == key or (key is UNREADABLE and _piece_key(line, NAME) is UNREADABLE), line
        ingest = _ingest_key(line)
        if ingest is None:
            unkeyed += 1
            assert key is UNREADABLE or key is None or not 1 <= key <= PARSER.max_id, line
        else:
            keyed += 1
            assert key == ingest, line
    assert keyed > 500 and unkeyed > 1000


@pytest.mark.parametrize("line, key", [
    (b'{"download_id":5,' + REST.encode() + b'} x\n', UNREADABLE),                     # text after the object
    (b'{"download_id":5,' + REST.encode() + b'}}\n', UNREADABLE),
    (b'{"download_id":5,' + REST[:-2].encode() + b'a\tb"}\n', UNREADABLE),              # a raw control character
    (b'{"download_id":5,' + REST.encode() + b',"n":\x01}\n', UNREADABLE),
    (b'{"download_id":5,' + REST.encode() + b',"x":NaN}\n', 5),                        # the ingest keys these
    (b'{"download_id":5,' + REST.encode() + b',"prompt":"y"}\n', 5),                   # another member twice
    (b'{"download_id":5,' + REST.encode() + b',"d":' + b"[" * 5000 + b"]" * 5000 + b"}\n", 5),   # too deep
    (b'{"download_id":5,' + REST.encode() + b',"n":' + b"1" * 5000 + b"}\n", 5),        # past the C digit limit
    (b'{"download_id":5,' + REST[:-2].encode() + b'\xff"}\n', 5),                      # not UTF-8
    (b'{"download_id":5,' + REST.encode() + b'}\r\n', 5),
    (b'{"download_id":5,"download\\u005fid":5,' + REST.encode() + b'}\n', 5),        # named twice alike
    (b'{"download_id":5,"download_id":5.0,' + REST.encode() + b'}\n', UNREADABLE),    # 5 and 5.0: two values
    (b'{"download_id":5,' + REST.encode() + b',"download_id":"5"}\n', UNREADABLE),      # twice, two values
    (b'\xef\xbb\xbf{"download_id":5,' + REST.encode() + b'}\n', UNREADABLE),            # a BOM past line 1
    (b'{"download_id":5,' + REST.encode() + b'}', 5),                                  # a file's last line
    (b'{"download_id":5,' + REST.encode(), UNREADABLE),                                # ... cut short
    (b'{"download_id": null, ' + REST.encode() + b'}\n', None),
    (b'[5]\n', UNREADABLE),
])
def test_a_whole_line_is_keyed_as_the_ingest_keys_it(line, key):
    got = _piece_key(line, NAME)
    assert got == key or (key is UNREADABLE and got is UNREADABLE)
    ingest = _ingest_key(line)
    assert ingest == (key if type(key) is int else None)


def test_the_generic_reading_keys_only_a_first_member_named_as_an_id():
    assert _piece_key(b'{"ranking_id": 50, "x": 1}\n') == 50
    assert _piece_key(b'{"ranking_id":50,"x":NaN}\n') == 50
    for line in (b'{"ranking_id": 05, "x": 1}\n', b'{"x": 1, "ranking_id": 5}\n', b'{"ranking_id": 5} x\n', b"{}\n",
                 b'{"ranking_id": 5, "ranking_id": 6}\n'):
        assert _piece_key(line) is UNREADABLE, line


# --- a line longer than the export's piece ----------------------------------------------------------------------------

def test_a_line_past_the_first_piece_is_keyed_and_the_late_check_reads_the_exports_cut_line(tmp_path):
    # fix36i: the export's own cut line is a JSON object's start (here was '"prompt":""aaa', no cut of the export's:
    # the ingest reads no key from it, review rev36i's reading counts it as no row's)
    cut = (b'{"download_id": 7, ' + REST.encode()[:-2] + b"a" * PIECE_BYTES)[:PIECE_BYTES + 1] + b"\n"
    assert _piece_key(cut[:PIECE_BYTES], NAME) is UNREADABLE       # the ingest: line_too_long, no key
    assert _written_key(cut[:PIECE_BYTES], NAME) == 7                # the row the export cut
    path = _gz(tmp_path / "day.jsonl.gz", [_row(5), cut])
    assert _file_counts(path, NAME) == (2, 7, id_digest([5, 7]))     # the late-row check: row 7 is there
    # a re-export writing the same cut line again replaces the old one (as many unkeyed lines as before)
    assert _vanishing(tmp_path, [_row(5), cut], [_row(5), cut]) == (0, [])
    # the row no longer cut (a shorter prompt): fix36i (review rev36i), the export's own cut line is its row's old
    # version, replaced by the app's row 7 (it was kept beside it, a stale line_too_long quarantine row each night)
    assert _vanishing(tmp_path, [_row(5), cut], [_row(5), _row(7)]) == (0, [])


def test_a_whole_line_of_the_first_piece_is_keyed_and_a_longer_one_too(tmp_path):
    note = PIECE_BYTES - 200
    whole = b'{"download_id":5,' + REST.encode() + b',"note":"' + b"n" * note + b'"}\n'
    assert len(whole) < PIECE_BYTES and _piece_key(whole, NAME) == 5 == _ingest_key(whole)
    assert _vanishing(tmp_path, [whole]) == (0, [])                  # the app's row 5 replaces it
    longer = whole[:-3] + b"n" * 400 + b'"}\n'
    # fix36i (review rev36i): a line over the ingest's limit is keyed as the ingest keys it (lines.MemberScan), so
    # the app's row 5 replaces it too (it was kept: the export read only its first MiB)
    assert _vanishing(tmp_path, [longer]) == (0, [])


def test_a_files_last_line_without_its_newline_is_keyed_whole(tmp_path):
    assert _vanishing(tmp_path, [_row(6), _row(5).rstrip(b"\n")], [_row(5), _row(6)]) == (0, [])
    assert _vanishing(tmp_path, [_row(6), _row(5)[:-5]], [_row(5), _row(6)]) == (1, [])


# --- a replica's re-export of such lines ------------------------------------------------------------------------------

def test_a_merged_re_export_keeps_the_lines_the_ingest_cannot_key_after_the_rows(tmp_path):
    trailing = b'{"download_id": 5, ' + REST.encode() + b"} x\n"
    control = b'{"download_id": 6, ' + REST[:-2].encode() + b'a\tb"}\n'
    old = _gz(tmp_path / "old.jsonl.gz", [_row(4), trailing, control, _row(9)])
    new = _gz(tmp_path / "new.jsonl.gz", [_row(5), _row(6), _row(7)])
    out = tmp_path / "out.jsonl.gz"
    assert _keep_absent_rows(old, new, out, NAME) == (4, ["4", "9"])
    lines = gzip.decompress(out.read_bytes()).splitlines(keepends=True)
    # every line whole; the kept lines where their written ids put them (deterministic: the same bytes again)
    assert sorted(lines) == sorted([_row(4), trailing, control, _row(9), _row(5), _row(6), _row(7)])
    assert [json.loads(line)["download_id"] for line in lines if line not in (trailing, control)] == [4, 5, 6, 7, 9]
    first = out.read_bytes()
    out.unlink()
    _keep_absent_rows(old, new, out, NAME)
    assert out.read_bytes() == first
