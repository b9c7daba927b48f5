"""A raw file that decompresses to more than ``ingest.max_file_bytes`` or holds more than ``ingest.max_file_lines``
lines (a gzip bomb: 19 KB of gzip is 20 million blank lines) is read up to the limit: the lines before it are
ingested, the file gets one ``unreadable_file`` quarantine row naming the limit, counts reconcile, and the run
takes time bounded by the limit, not by what the bomb expands to."""
from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from formats.settings import SettingsError, load
from pipelines.ingest import lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day

DAY = "2023-03-01"


def _raw(tmp_path: Path, data: bytes, **caps) -> tuple[bytes, lines.RawFile]:
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(data, mtime=0))
    raw = lines.RawFile(path, read_bytes=7, max_chunk=5, **caps)     # tiny chunks: caps fall inside chunks
    return b"".join(raw.chunks()), raw


@pytest.mark.parametrize("data, max_lines, kept, cut", [
    (b"a\nb\nc\n", 3, b"a\nb\nc\n", False),          # exactly the limit
    (b"a\nb\nc", 3, b"a\nb\nc", False),              # the last line without its newline still counts once
    (b"a\nb\nc\nd", 3, b"a\nb\nc\n", True),          # one line too many
    (b"a\nb\nc\n\n", 3, b"a\nb\nc\n", True),         # a blank fourth line counts
    (b"\n" * 100, 10, b"\n" * 10, True),
])
def test_lines_are_cut_after_the_limit(tmp_path: Path, data: bytes, max_lines: int, kept: bytes, cut: bool) -> None:
    out, raw = _raw(tmp_path, data, max_lines=max_lines)
    assert out == kept
    assert (raw.status == "unreadable") == cut
    if cut:
        assert "more than" in raw.error and "ingest.max_file_lines" in raw.error
    assert raw.file_sha256 is not None and raw.file_bytes == (tmp_path / "f.jsonl.gz").stat().st_size


def test_bytes_are_cut_at_the_limit(tmp_path: Path) -> None:
    out, raw = _raw(tmp_path, b"0123456789" * 10, max_bytes=33)
    assert out == (b"0123456789" * 10)[:33] and raw.status == "unreadable" and "ingest.max_file_bytes" in raw.error
    out, raw = _raw(tmp_path, b"0123456789" * 10, max_bytes=100)
    assert len(out) == 100 and raw.status == "ok"


def test_a_gzip_bomb_of_blank_lines_is_ingested_up_to_the_limit(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY, seed=3).populate(users=2, images=3, rankings=2, downloads=1)
    paths = b.write(home)
    rankings = paths["rankings"]
    good = gzip.decompress(rankings.read_bytes())
    rankings.write_bytes(gzip.compress(good + b"\n" * 20_000_000, 9, mtime=0))   # ~20 KB more of gzip
    report = ingest_day(home, DAY, IngestConfig(max_file_lines=1000))
    assert report.reconciled
    quarantine = pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
    file_rows = [q for q in quarantine if q["reason"] == "unreadable_file"]
    assert len(file_rows) == 1 and "ingest.max_file_lines" in file_rows[0]["detail"]
    accepted = pq.read_table(home.partition_file("rankings", DAY)).num_rows
    assert accepted == 2                                  # the good lines before the blank ones


def test_the_limits_are_settings(tmp_path: Path) -> None:
    settings = load(tmp_path, assignments=["ingest.max_file_lines=10", "ingest.max_file_bytes=1000"])
    assert (settings.config("ingest").max_file_lines, settings.config("ingest").max_file_bytes) == (10, 1000)
    with pytest.raises(SettingsError, match="ingest.max_file_lines"):
        load(tmp_path, assignments=["ingest.max_file_lines=0"])
