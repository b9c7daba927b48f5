"""Fix35a: the app-database export's reading of a raw line's key, and the staging lock across releases.

- ``export._scan_key`` (a line not in the export's own form, read as JSON) reads a number as written, as the ingest
  does (``LineParser.key_of``, fix34a): ``9007199254740993.0`` is the id 2^53 + 1, not 2^53 (its double), and
  ``4503599627370497.5`` is a fraction (no id), not 4503599627370498; two lines whose ids share a double are two
  keys, so a re-export never takes one for the other (a row dropped as present) and the identity of a row
  (``row_identity``) reads its integer columns the same way; a counts-cache entry of before (ids read by their
  doubles) is recomputed;
- the staging folder of an export of the release before fix34g (an exclusive ``flock`` with ``LOCK_NB``, run verbatim
  in a child process) is seen held by this release's probe, sweep and raw-zone scan while it runs, and swept once
  its process is gone (a regression test: the reverse version skew deletes nothing, README section 1a).

Small in-process calls, real gzip files, real locks, a real child process.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from formats import rawzone
from formats.home import DataHome
from pipelines.appdb.export import (
    COUNTS_CACHE,
    UNKNOWN_IDENTITY,
    UNREADABLE,
    _piece_key,
    id_digest,
    raw_day_state,
    remove_stale_staging,
    row_identity,
    vanishing_rows,
)
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig

DAY = "2023-03-01"
BIG = 2**53


def _line(written: str, name: str = "download_id") -> bytes:
    """A line not in the export's own form (compact JSON, the id not first): read by ``_scan_key``."""
    return f'{{"created_at":"{DAY} 12:00:00","{name}":{written},"user_id":1}}\n'.encode()


def _ingest_key(written: str) -> object:
    parser = IngestConfig(max_id=2**62).line_parser("downloads", dt.date.fromisoformat(DAY))
    return parser.key_of(rp.load_json(_line(written).decode()))


@pytest.mark.parametrize("written, key", [
    ("9007199254740993.0", BIG + 1),
    ("90071992547409930e-1", BIG + 1),
    ("9007199254740992.0", BIG),
    ("9007199254740993", BIG + 1),
    ("1e30", 10**30),
    ("5.0", 5),
    ("5e0", 5),
    ("-0.0", 0),
    ("4503599627370497.5", UNREADABLE),     # a fraction whose double is 4503599627370498.0
    ("9007199254740992.5", UNREADABLE),
    ("1e400", UNREADABLE),
    ("1e-400", UNREADABLE),
    ("1.5", UNREADABLE),
])
def test_a_lines_id_is_read_as_written(written, key):
    assert _piece_key(_line(written), "download_id") == key
    ingest = _ingest_key(written)
    if ingest is not None:                      # the ingest's key of the same line, where it reads one
        assert ingest == key


def test_ids_that_share_a_double_are_two_keys_and_a_member_named_twice_must_agree_as_written():
    keys = {_piece_key(_line(w), "download_id") for w in ("9007199254740992", "9007199254740993.0", "9007199254740992.0")}
    assert keys == {BIG, BIG + 1}
    twice = b'{"x":1,"download_id":9007199254740993.0,"download_id":%s}\n'
    assert _piece_key(twice % b"9007199254740992.0", "download_id") is UNREADABLE   # one double, two numbers
    assert _piece_key(twice % b"9007199254740993.00", "download_id") == BIG + 1       # one number twice
    assert _piece_key(twice % b"90071992547409930e-1", "download_id") == BIG + 1


def _gz(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    return path


def test_a_row_whose_id_shares_a_double_with_a_new_rows_is_not_taken_for_it(tmp_path: Path):
    old = _gz(tmp_path / "old.jsonl.gz", [_line("9007199254740993.0"), _line("7")])
    new = _gz(tmp_path / "new.jsonl.gz", [_line("9007199254740992"), _line("7.0")])
    assert vanishing_rows(old, new, "download_id") == (1, [str(BIG + 1)])


def test_a_rows_identity_reads_its_integer_columns_as_written():
    line = '{{"image_uid":"u","user_id":{user},"download_id":1}}'
    exact = row_identity(line.format(user=BIG + 1).encode(), "downloads")
    assert exact != UNKNOWN_IDENTITY
    assert row_identity(line.format(user="9007199254740993.0").encode(), "downloads") == exact
    assert row_identity(line.format(user=BIG).encode(), "downloads") != exact
    assert row_identity(line.format(user="9007199254740992.5").encode(), "downloads") == UNKNOWN_IDENTITY


# --- the staging lock of the release before fix34g beside this release ---------------------------------------------

# the previous release's hold (export.hold_staging before fix34g), verbatim, in a child that says so and then waits
_OLD_EXPORT = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""


def test_an_old_releases_running_export_is_never_swept_by_this_release(tmp_path: Path):
    home = DataHome.at(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    staging = home.raw_logs / f".dt={DAY}.export-4242-0badc0de"
    staging.mkdir(mode=0o700)
    (staging / "users.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    child = subprocess.Popen([sys.executable, "-c", _OLD_EXPORT, str(staging)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        old = time.time() - 600
        os.utime(staging, (old, old))
        assert rawzone.staging_in_use(staging)
        assert remove_stale_staging(home) == [] and (staging / "users.jsonl.gz").is_file()
        assert not [p for p in rawzone.scan_raw_zone(home.root).problems if staging.name in p.path]
        assert rawzone.staging_in_use(staging)          # this release's probes left the old hold as it was
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    assert remove_stale_staging(home) == [staging.name] and not staging.exists()


def test_a_counts_cache_entry_of_before_is_recomputed_with_the_ids_as_written(tmp_path: Path):
    home = DataHome.at(tmp_path / "home")
    path = home.raw_file(DAY, "downloads")
    path.parent.mkdir(parents=True)
    _gz(path, [_line("9007199254740993.0"), _line("4503599627370497.5")])
    state = raw_day_state(home, DAY)["downloads"]
    assert (state.rows, state.top, state.digest) == (2, BIG + 1, id_digest([BIG + 1]))
    cache = home.cache / COUNTS_CACHE / f"dt={DAY}.json"
    entries = json.loads(cache.read_bytes())
    before = {t: e[:4] + [2, BIG, id_digest([BIG, 4503599627370498]), [2, 0]] for t, e in entries.items()}
    cache.write_text(json.dumps(before))            # the eight-value entries of before, ids read by their doubles
    state = raw_day_state(home, DAY)["downloads"]
    assert (state.top, state.digest, state.checked) == (BIG + 1, id_digest([BIG + 1]), None)
    assert json.loads(cache.read_bytes()) == entries
