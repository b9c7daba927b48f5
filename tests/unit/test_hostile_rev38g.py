"""Hostile review rev38g of fix38c (``PublishedSplitPairs``: the published ``split_pairs`` hashed once per splits
build; one JSON reader / writer for the coverage records of ``pipelines/splits/coverage.py``).

What held (run against the real code, no test needed): the three records are written byte for byte as the parent
commit's code wrote them, with the same modes under umasks 022, 077 and 002, and a link, a FIFO, a folder at their
paths or a file at ``cache/`` end the same as before (old and new code run side by side on the same homes); the
readers answer as before on 19 damaged or foreign contents (empty, ``null``, UTF-16, a BOM, 5000-digit numbers,
wrong field types, duplicate keys) except the intended one, a salts record nested 3000 deep (``None`` where it
raised ``RecursionError``); ``split_pairs`` rewritten in place with other bytes of the same size and its mtime put
back with ``os.utime`` keeps its device, inode, size and mtime but not its ctime on ext4, so the memo hashes it
again and no longer takes it for ``latest``'s source.

Defect found:

1. ``test_a_publish_record_nested_past_the_parser_stops_no_splits_build``: fix38c made the salts record nested past
   the JSON parser's depth read as a record this tool did not write, where it raised ``RecursionError`` and stopped
   the build, but the sibling reader of the same module, ``coverage._read_record`` (the publish record
   ``cache/published_split_pairs.json``, read by ``latest_source`` at the start of every splits build), still
   catches only ``ValueError``. A record of ``"[" * 3000`` (4000 bytes, under its 4096-byte cap) makes
   ``latest_source`` and then ``build_splits`` raise ``RecursionError: maximum recursion depth exceeded while
   decoding a JSON array from a unicode string``, where a record that is not JSON at all (``b"not json"``) is read
   as no record: the build goes on and reads the sidecars.
"""
from __future__ import annotations

from splits_fixtures import publish_recorded
from test_fix38c import QUIET, SECRET, V1, _write

from formats.home import DataHome
from pipelines.splits import coverage
from pipelines.splits.assign import SplitConfig, build_splits


def test_a_publish_record_nested_past_the_parser_stops_no_splits_build(tmp_path):
    home = DataHome(tmp_path / "home")
    _write(home)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    publish_recorded(home, V1)
    record = coverage.record_file(home)
    assert coverage.latest_source(home)[1] is not None            # the record names latest's split_pairs
    record.write_bytes(b"not json")                                # a damaged record: read as none, the build goes on
    assert coverage.latest_source(home) == (V1, None)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    nested = b"[" * 3000 + b"]" * 1000
    assert len(nested) <= coverage.RECORD_MAX_BYTES
    record.write_bytes(nested)                                     # nested past the parser: as damaged, not a crash
    assert coverage.latest_source(home) == (V1, None)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    assert record.read_bytes() == nested
