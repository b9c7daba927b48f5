"""Fix36i: one reading of a raw line's key, the ingest's, for a re-export's replacing and for the late-row check.

Review rev36i: a line longer than the export's 1 MiB piece was never keyed (``_piece_key``), so a replica's re-export
kept the old version of an edited long row beside the new one and the ingest, which keys such a line by
``lines.MemberScan``, quarantined the app's row as a key conflict; and the late-row check read lines leniently from
their first MiB (``_written_key``), so a line the ingest quarantines with no key held its row and the day was never
re-exported. Now ``export.KeyReading`` reads each line whole as the ingest does at its ``max_line_bytes`` (the home's
setting; the run's in an export): within it with the ingest's decoder, over it by ``MemberScan`` as the line streams.
The one exception, the export's own cut line of an oversized row (its line start, then a JSON object cut short): a
re-export replaces it by its row, and the late-row check counts it as its row's when it is the cut a re-export writes
again (``max_line_bytes + 1`` bytes). The counts cache keeps the limit its entry was read at (``COUNTS_READING`` 4).

Small in-process calls on real gzip files, compared with the real ingest (``lines.iter_lines``, ``LineParser``).
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest

from formats.home import DataHome
from pipelines.appdb import export
from pipelines.appdb.export import (
    COUNTS_CACHE,
    COUNTS_READING,
    PIECE_BYTES,
    UNREADABLE,
    KeyReading,
    _file_counts,
    _file_holds,
    _keep_absent_rows,
    _line_keys,
    _piece_key,
    id_digest,
    raw_day_state,
    vanishing_rows,
)
from pipelines.ingest import lines as rl
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig

DAY = "2023-03-01"
NAME = "download_id"
REST = ('"user_id":1,"image_uid":"00000000-0000-0000-0000-000000000001","created_at":"2023-03-01 12:00:00",'
        '"prompt":"x"')
MIB = 1 << 20
PARSER = IngestConfig().line_parser("downloads", dt.date.fromisoformat(DAY))


def _row(key: int, prompt: str = "x") -> bytes:
    return (f'{{"download_id": {key}, ' + REST[:-3] + json.dumps(prompt) + "}\n").encode()


def _gz(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    return path


def _ingest_keys(lines: list[bytes], limit: int) -> list[object]:
    """The key the real ingest reads for each line at ``limit`` (None: none), as reader.py reads a file."""
    out = []
    for number, data in rl.iter_lines([b"".join(lines)], limit, member=NAME):
        if type(data) is not bytes:
            out.append(PARSER.overlong_key(data))
            continue
        try:
            values = PARSER.parse(data)
        except rp.Reject as exc:
            out.append(exc.key)
        else:
            out.append(values[PARSER.names.index(NAME)])
    return out


def _cut(key: int, limit: int) -> bytes:
    """The export's own cut line of row ``key`` with a prompt over ``limit`` (``_cut_oversized``)."""
    return _row(key, "p" * (limit + 50))[:limit + 1] + b"\n"


LONG = "q" * (MIB + 300)          # a row's line past the export's piece and the default limit


# --- the reading: the ingest's, whole lines, both sides of the limit -------------------------------------------------

@pytest.mark.parametrize("limit", [MIB, 2 * MIB], ids=["1MiB", "2MiB"])
def test_long_lines_are_keyed_as_the_ingest_keys_them_at_its_limit(tmp_path, limit):
    lines = [
        _row(3),
        _row(5, LONG),                                            # keyed: 5
        _row(6, LONG)[:-2] + b', "download_id": 7}\n',             # two ids: no key
        _row(8, LONG)[:-1] + b" x\n",                              # text after the object: no key
        _row(9, LONG).replace(b"qqq", b"q\tq", 1),                 # a raw tab in a string: no key
        b'{"user_id": 1, "note": "' + b"n" * (MIB + 10) + b'", "download_id": 10}\n',   # the id past 1 MiB
    ]
    got = list(_line_keys(_gz(tmp_path / "d.jsonl.gz", lines), name=NAME, reading=KeyReading(limit)))
    ingest = _ingest_keys(lines, limit)
    assert [None if k is UNREADABLE else k for k in got] == ingest == [3, 5, None, None, None, 10]
    # the whole-line function agrees with the streamed reading
    assert [_piece_key(line, NAME, limit) for line in lines] == got


def test_a_files_last_long_line_without_its_newline_is_keyed_whole(tmp_path):
    path = _gz(tmp_path / "d.jsonl.gz", [_row(3), _row(5, LONG)[:-1]])
    assert list(_line_keys(path, name=NAME)) == [3, 5]


# --- a re-export's replacing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [MIB, 2 * MIB], ids=["1MiB", "2MiB"])
def test_an_edited_long_row_is_replaced_and_a_long_line_the_ingest_cannot_key_kept_whole(tmp_path, limit):
    reading = KeyReading(limit)
    bad = _row(8, LONG)[:-1] + b" x\n"                            # the ingest: malformed_json, no key
    old = _gz(tmp_path / "old.jsonl.gz", [_row(3), _row(5, LONG), bad, _row(9)])
    new = _gz(tmp_path / "new.jsonl.gz", [_row(3), _row(5), _row(8), _row(9)])
    assert vanishing_rows(old, new, NAME, reading) == (1, [])    # the unkeyable line only, counted apart
    out = tmp_path / "out.jsonl.gz"
    assert _keep_absent_rows(old, new, out, NAME, reading=reading) == (1, [])
    # the long line of row 5 was spilled as read and taken back; the kept line is copied byte for byte, at the place
    # of the id it starts with (a merge's order, _written_key)
    assert gzip.decompress(out.read_bytes()).splitlines(keepends=True) == [_row(3), _row(5), _row(8), bad, _row(9)]


def test_a_long_line_of_a_row_the_new_file_lacks_is_kept_whole_in_its_place(tmp_path):
    old = _gz(tmp_path / "old.jsonl.gz", [_row(3), _row(5, LONG), _row(9)])
    new = _gz(tmp_path / "new.jsonl.gz", [_row(3), _row(9)])
    out = tmp_path / "out.jsonl.gz"
    assert _keep_absent_rows(old, new, out, NAME) == (1, ["5"])
    assert gzip.decompress(out.read_bytes()).splitlines(keepends=True) == [_row(3), _row(5, LONG), _row(9)]


def test_a_file_cut_short_inside_a_long_line_keeps_the_whole_lines_before_it(tmp_path):
    tail = gzip.compress(_row(5, LONG * 3), mtime=0)
    old = tmp_path / "old.jsonl.gz"
    old.write_bytes(gzip.compress(_row(2) + _row(4), mtime=0) + tail[:len(tail) // 2])   # cut inside row 5's line
    new = _gz(tmp_path / "new.jsonl.gz", [_row(4)])
    out = tmp_path / "out.jsonl.gz"
    assert _keep_absent_rows(old, new, out, NAME) == (1, ["2"])   # row 5's partial line: no line at all
    assert gzip.decompress(out.read_bytes()).splitlines(keepends=True) == [_row(2), _row(4)]


@pytest.mark.parametrize("limit", [MIB, 4096], ids=["1MiB", "4KiB"])
def test_the_exports_own_cut_line_is_replaced_by_its_edited_row(tmp_path, limit):
    cut = _cut(7, limit)
    assert _piece_key(cut, NAME, limit) is UNREADABLE            # the ingest: line_too_long, no key
    assert vanishing_rows(_gz(tmp_path / "o.jsonl.gz", [_row(5), cut]), _gz(tmp_path / "n.jsonl.gz", [_row(5), _row(7)]),
                          NAME, KeyReading(limit)) == (0, [])
    # a cut at another limit (the setting changed since; to the ingest a short malformed line, or a longer one
    # cut short): no row's, kept as it was (the ingest quarantines it keyless: nothing read twice, nothing lost)
    for written, read in ((4096, MIB), (MIB, 4096)):
        assert vanishing_rows(_gz(tmp_path / "o.jsonl.gz", [_row(5), _cut(7, written)]),
                              _gz(tmp_path / "n.jsonl.gz", [_row(5), _row(7)]), NAME, KeyReading(read)) == (1, [])


@pytest.mark.parametrize("line", [
    b'{"user_id": 1, "download_id": 7, "prompt": "' + b"p" * (MIB + 10) + b"\n",     # not the export's line start
    b'{"download_id": 7, "prompt": "a\tb' + b"p" * (MIB + 10) + b"\n",               # a raw tab: not JSON, not cut
    b'{"download_id": 7, "download_id": 8, "prompt": "' + b"p" * (MIB + 10) + b"\n",  # the id named again
    b'{"download_id": 7, "prompt": "x"} {"' + b"p" * (MIB + 10) + b"\n",             # an object, then text
    b'{"download_id": 7, "x": [1}, "prompt": "' + b"p" * MIB + b"\n",                 # a bracket that does not match
], ids=["id-not-first", "raw-tab", "named-again", "text-after", "bracket"])
def test_a_line_not_in_the_exports_cut_form_is_never_taken_for_its_row(tmp_path, line):
    line = line[:MIB + 1] + b"\n"                                 # the cut's length: only its form differs
    old = _gz(tmp_path / "o.jsonl.gz", [_row(5), line])
    new = _gz(tmp_path / "n.jsonl.gz", [_row(5), _row(7)])
    assert vanishing_rows(old, new, NAME, KeyReading(MIB)) == (1, [])
    assert _file_counts(old, NAME, KeyReading(MIB)) == (2, 5, id_digest([5]))


# --- the late-row check --------------------------------------------------------------------------------------------

def test_the_late_check_counts_only_lines_the_ingest_keys_and_the_exports_own_cut(tmp_path):
    late = KeyReading(MIB)
    tab = _row(6, "a\tb").replace(b"\\t", b"\t")                 # raw tab: malformed_json, no key
    path = _gz(tmp_path / "d.jsonl.gz", [_row(5, LONG), tab, _cut(7, MIB), _row(8)])
    assert _file_counts(path, NAME, late) == (4, 8, id_digest([5, 7, 8]))
    ids = export.array.array("q", [5, 7, 8])
    assert _file_holds(path, NAME, ids, late)
    assert not _file_holds(path, NAME, export.array.array("q", [6]), late)
    # a cut line of another limit (the setting changed since): not the cut a re-export writes, not its row's (the
    # day is re-exported once, which writes the row as the limit now has it)
    other = _gz(tmp_path / "o.jsonl.gz", [_cut(7, 4096)])
    assert _file_counts(other, NAME, KeyReading(MIB)) == (1, None, 0)
    assert _file_counts(other, NAME, KeyReading(4096)) == (1, 7, id_digest([7]))


def test_the_counts_cache_keeps_the_limit_it_was_read_at(tmp_path):
    home = DataHome.at(tmp_path / "home")
    path = home.raw_file(DAY, "downloads")
    path.parent.mkdir(parents=True)
    _gz(path, [_row(5), _cut(7, 4096)])
    state = raw_day_state(home, DAY)["downloads"]
    assert (state.rows, state.top) == (2, 5)                      # at the default 1 MiB: a short malformed line
    entry = json.loads((home.cache / COUNTS_CACHE / f"dt={DAY}.json").read_bytes())["downloads"]
    assert entry[8:] == [COUNTS_READING, MIB] and COUNTS_READING == 4
    (home.root / "pickapic.toml").write_text("[ingest]\nmax_line_bytes = 4096\n")
    state = raw_day_state(home, DAY)["downloads"]                 # the file unchanged, the limit not: recounted
    assert (state.rows, state.top, state.digest) == (2, 7, id_digest([5, 7]))
    entry = json.loads((home.cache / COUNTS_CACHE / f"dt={DAY}.json").read_bytes())["downloads"]
    assert entry[8:] == [COUNTS_READING, 4096]


def test_a_line_of_several_pieces_within_the_limit_is_held_and_read_whole(tmp_path):
    # 2 MiB limit: a 1.5 MiB line comes in two pieces and is read with the ingest's decoder, as the ingest reads it
    body = _row(5, "r" * (MIB + MIB // 2))
    assert len(body) > PIECE_BYTES
    trailing = body[:-1] + b" x\n"
    path = _gz(tmp_path / "d.jsonl.gz", [body, trailing])
    assert list(_line_keys(path, name=NAME, reading=KeyReading(2 * MIB))) == [5, UNREADABLE]
    assert _ingest_keys([body, trailing], 2 * MIB) == [5, None]
