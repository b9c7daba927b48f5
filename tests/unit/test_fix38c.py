"""Fix38c: the first splits build after a publish hashed the home's ``warehouse/split_pairs`` (the file ``latest``
was published from, ~200 MB at Pick-a-Pic size) once for each thing it learned from it: ``latest``'s salt
(``version_salts``), its pseudonym key check (``version_keys``), the key owner pins' check (``update_pins``) and
the salt a re-seed ranks by (``latest_built_under``). Now one build checks that file once
(``assign.PublishedSplitPairs``, memoised by the file's identity within the build: a file replaced in between is
hashed again). And the small cache records of ``pipelines/splits/coverage.py`` (the versions' salts and key checks,
the ledger's versions) are read and written by one JSON reader / writer, byte for byte as before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from splits_fixtures import keyed_users, pair_row, publish_recorded, write_warehouse

from formats.files import sha256_file, write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.pseudonym import KEY_CHECK_METADATA, key_check
from pipelines.splits import assign, coverage
from pipelines.splits.assign import SplitConfig, build_splits
from schemas import get_schema

QUIET = {"log": lambda message: None}
SECRET = "a-private-secret-of-fix38c"
V1 = "2023-03-01-0000000fc1"
(T_ID, T), (V_ID, V) = keyed_users(SECRET, 2)
ROWS = [pair_row(1, T, "a prompt of T", "c1a", "c1b"), pair_row(2, V, "a red fox in the snow", "c2a", "c2b")]


def _write(home: DataHome) -> None:
    schema = get_schema("pairs").with_metadata({KEY_CHECK_METADATA: key_check(SECRET).encode("ascii")})
    write_parquet_atomic(pa.Table.from_pylist(ROWS, schema=schema), home.table_file("pairs"))
    write_warehouse(home, ROWS, [T_ID, V_ID])


def _counting(monkeypatch, home: DataHome) -> list[tuple]:
    """Every sha256_file call of the splits build on the home's split_pairs, as the file's identity at the call."""
    calls: list[tuple] = []
    target = home.table_file("split_pairs")

    def counted(path, *args, **kwargs):
        if Path(path) == target:
            info = os.stat(path)
            calls.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
        return sha256_file(path, *args, **kwargs)

    monkeypatch.setattr(assign, "sha256_file", counted)
    monkeypatch.setattr(coverage, "sha256_file", counted)
    return calls


def _published_then_rebuilt(tmp_path: Path, monkeypatch) -> tuple[DataHome, list[tuple], tuple]:
    home = DataHome(tmp_path / "home")
    _write(home)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    publish_recorded(home, V1)
    # the pins are left uncovered, so this build's pins check reads split_pairs too (as after a lost pins file)
    home.table_file("split_key_owners").unlink()
    info = os.stat(home.table_file("split_pairs"))
    published = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    calls = _counting(monkeypatch, home)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    return home, calls, published


def test_the_first_build_after_a_publish_hashes_the_published_split_pairs_once(tmp_path, monkeypatch):
    home, calls, published = _published_then_rebuilt(tmp_path, monkeypatch)
    assert calls.count(published) == 1, calls
    # what it learned from that one read: latest's salt and key check, recorded as before
    assert coverage.read_version_salts(home) == {V1: SplitConfig().salt}
    assert coverage.read_version_keys(home) == {V1: key_check(SECRET)}
    # and the split_pairs it wrote is hashed once more, for the ledger's record (another file)
    assert len(calls) == 2 and calls[1] != published


def test_the_next_build_hashes_no_split_pairs_it_did_not_write(tmp_path, monkeypatch):
    home, _, _ = _published_then_rebuilt(tmp_path, monkeypatch)
    calls = _counting(monkeypatch, home)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    assert len(calls) == 1          # the new split_pairs, for the ledger's record; nothing learned again


def test_a_split_pairs_replaced_within_a_build_is_hashed_again(tmp_path):
    """The memo is by the file's identity: another file at the path (or the same one rewritten) is checked anew, and
    one not the published file names nothing."""
    home = DataHome(tmp_path / "home")
    _write(home)
    build_splits(home, SplitConfig(), pseudonym_secret=SECRET, **QUIET)
    path = home.table_file("split_pairs")
    source = sha256_file(path)
    check = assign.PublishedSplitPairs(home, source)
    assert check.member(assign.SALT_METADATA) == SplitConfig().salt.encode() and check.is_source()
    table = pq.read_table(path)
    write_parquet_atomic(table.slice(0, 1), path, table.schema)          # replaced: another inode, other bytes
    assert check.member(assign.SALT_METADATA) is None and not check.is_source()
    write_parquet_atomic(table, path, table.schema)                       # the same bytes again: the source again
    assert check.member(assign.SALT_METADATA) == SplitConfig().salt.encode()
    none = assign.PublishedSplitPairs(home, None)                         # no publish record: nothing to learn
    assert none.member(assign.SALT_METADATA) is None and not none.is_source()
    path.unlink()
    assert check.member(assign.SALT_METADATA) is None and not check.is_source()


# the bytes the coverage records were written as before fix38c (its writers' code, copied from the parent commit)
def _keys_before(keys: dict[str, str]) -> bytes:
    body = {"what": coverage.VERSION_KEYS_WHAT, "keys": dict(sorted(keys.items()))}
    return (json.dumps(body, sort_keys=True) + "\n").encode()


def _ledger_versions_before(ledger_sha: str, versions) -> bytes:
    body = {"ledger_sha256": ledger_sha, "versions": sorted(set(versions))}
    return (json.dumps(body, sort_keys=True) + "\n").encode()


def _salts_before(salts: dict[str, str]) -> bytes:
    data = json.dumps({"what": coverage.SALTS_WHAT, "salts": dict(sorted(salts.items()))}, indent=1, sort_keys=True)
    return data.encode() + b"\n"


KEYS = {"2023-03-02-0000000b": "kc-2", "2023-03-01-0000000a": "kc-1", "v\u00e9": "k\u00e9"}


def test_the_coverage_records_are_written_byte_for_byte_as_before_and_read_back(tmp_path):
    home = DataHome(tmp_path / "home")
    coverage.write_version_keys(home, KEYS)
    assert (home.cache / coverage.VERSION_KEYS_FILE).read_bytes() == _keys_before(KEYS)
    assert coverage.read_version_keys(home) == KEYS
    ledger = tmp_path / "ledger.parquet"
    ledger.write_bytes(b"a ledger")
    coverage.record_ledger_versions(home, ledger, ["v2", "v1", "v2"])
    assert (home.cache / coverage.LEDGER_VERSIONS_FILE).read_bytes() == _ledger_versions_before(
        sha256_file(ledger), ["v1", "v2"])
    assert coverage._ledger_versions(home, ledger) == {"v1", "v2"}
    home.datasets.mkdir(parents=True)
    assert coverage.write_version_salts(home, KEYS) is None
    assert coverage.salts_file(home).read_bytes() == _salts_before(KEYS)
    assert coverage.read_version_salts(home) == KEYS


def test_damaged_or_foreign_coverage_records_read_as_before(tmp_path):
    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    home.datasets.mkdir(parents=True)
    keys_file, salts = home.cache / coverage.VERSION_KEYS_FILE, coverage.salts_file(home)
    assert coverage.read_version_keys(home) == {} and coverage.read_version_salts(home) == {}      # none yet
    for data in (b"not json", b"null", b"[]", b'{"what": "another tool", "keys": {"a": "b"}, "salts": {"a": "b"}}',
                 b"[" * 200_000 + b"]" * 200_000):                     # nested past the JSON parser's recursion
        keys_file.write_bytes(data)
        salts.write_bytes(data)
        assert coverage.read_version_keys(home) == {}
        assert coverage.read_version_salts(home) is None                  # not this tool's: left as it is
        assert coverage.write_version_salts(home, KEYS) is not None and salts.read_bytes() == data
    keys_file.write_bytes(json.dumps({"what": coverage.VERSION_KEYS_WHAT, "keys": {"a": "b", "c": 1, "d": None}})
                          .encode())
    assert coverage.read_version_keys(home) == {"a": "b"}
    ledger = tmp_path / "ledger.parquet"
    ledger.write_bytes(b"a ledger")
    (home.cache / coverage.LEDGER_VERSIONS_FILE).write_bytes(_ledger_versions_before("0" * 64, ["v1"]))
    assert coverage._ledger_versions(home, ledger) == set()               # recorded for another ledger file
