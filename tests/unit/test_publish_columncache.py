"""The gate's key/prompt rules read only the night's sidecars' columns, with the full scan's values."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish_rulecache import CONFIG, _link_copy, _nights, _rewrite_sidecar, _values

from data_contracts.engine import Rule, evaluate, load_contract, reads_only_columns
from pipelines.publish import columncache, rulecache
from pipelines.publish.version import check_contracts, publish_dataset, version_views
from pipelines.sqlrun import connect

NARROW = ["shard_samples.key_unique", "prompt_counts.counts_match_samples"]


def _check(version: Path, home) -> tuple[list, rulecache.SidecarCounts, columncache.ColumnValues]:
    """The gate with both caches: results, what the count cache did, what the column cache did."""
    counted, narrow = rulecache.SidecarCounts({}), columncache.ColumnValues()
    results = check_contracts(version, rulecache.cache_file(home.cache), counted,
                              columncache.cache_file(home.cache), narrow)
    return results, counted, narrow


def _full(version: Path) -> dict[str, float | None]:
    """Every rule's value over the whole views (no cache), without raising on a failed rule."""
    views = version_views(version)
    con = connect(views, uniform=views)
    try:
        return _values([r for dataset in views for r in evaluate(load_contract(dataset), con)])
    finally:
        con.close()


def _sidecars(version: Path) -> list[Path]:
    return sorted(version.glob("*/pickapic-*.parquet"), key=str)


def test_the_night_reads_only_its_sidecars_columns_and_gets_the_full_values(tmp_path: Path) -> None:
    home, first, nightly = _nights(tmp_path)
    assert first.contract_column_rules == NARROW and first.contract_columns_note == ""
    assert first.contract_column_sidecars_scanned == len(_sidecars(first.path))
    # the night: key_unique and counts_match_samples read only the sidecars it wrote
    assert nightly.contract_column_rules == NARROW and nightly.contract_columns_note == ""
    assert nightly.contract_column_sidecars_scanned == nightly.shards_written > 0
    assert nightly.contract_column_sidecars_cached == nightly.shards_linked > 0
    assert _values(nightly.contract_results) == _full(nightly.path)
    metadata = nightly.metadata()
    assert metadata["contract_column_rules"] == NARROW and metadata["contract_column_sidecars_cached"] > 0
    # the cache: exactly the night's sidecars' rows, in the view's order (sidecars by path, rows by file)
    cache = pq.read_table(columncache.cache_file(home.cache))
    con = duckdb.connect()
    view = con.sql("SELECT key, split, prompt_key FROM read_parquet($files)",
                   params={"files": [str(p) for p in _sidecars(nightly.path)]}).to_arrow_table()
    assert cache.select(list(columncache.COLUMNS)).equals(view)
    identities = rulecache.version_sidecars(nightly.path)
    expected = [identities[p] for p in _sidecars(nightly.path) for _ in range(pq.read_metadata(p).num_rows)]
    assert cache.column("sidecar").cast(pa.string()).to_pylist() == expected


def test_a_duplicate_key_in_a_new_sidecar_against_a_cached_one_is_caught(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    old, new = _sidecars(copy)[0], _sidecars(copy)[-1]
    taken = pq.read_table(old, columns=["key"]).column(0)[0].as_py()
    table = pq.read_table(new)
    keys = table.column("key").to_pylist()
    _rewrite_sidecar(copy, new, table.set_column(table.schema.get_field_index("key"), table.schema.field("key"),
                                                 pa.array([taken] + keys[1:], pa.string())))
    with pytest.raises(RuntimeError, match="key_unique"):
        check_contracts(copy)
    full = _full(copy)
    counted, narrow = rulecache.SidecarCounts({}), columncache.ColumnValues()
    with pytest.raises(RuntimeError, match=r"shard_samples.key_unique = 1\.0"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted, columncache.cache_file(home.cache), narrow)
    assert narrow.scanned == 1 and narrow.cached == len(_sidecars(copy)) - 1
    assert narrow.values["shard_samples"]["key_unique"] == 1 == full["shard_samples.key_unique"]


def test_a_prompt_count_that_no_longer_matches_is_caught(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    new = _sidecars(copy)[-1]
    table = pq.read_table(new)
    prompts = table.column("prompt_key").to_pylist()
    _rewrite_sidecar(copy, new, table.set_column(table.schema.get_field_index("prompt_key"), table.schema.field("prompt_key"),
                                                 pa.array(["a prompt nobody counted"] + prompts[1:], pa.string())))
    full = _full(copy)
    assert full["prompt_counts.counts_match_samples"] >= 1
    counted, narrow = rulecache.SidecarCounts({}), columncache.ColumnValues()
    with pytest.raises(RuntimeError, match="counts_match_samples"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted, columncache.cache_file(home.cache), narrow)
    assert narrow.scanned == 1
    assert narrow.values["prompt_counts"]["counts_match_samples"] == full["prompt_counts.counts_match_samples"]


@pytest.mark.parametrize("damage", ["garbage", "symlink", "folder", "wrong_layout", "no_schema", "twice", "no_sidecar"])
def test_a_damaged_or_contradictory_column_cache_means_reading_every_sidecar(tmp_path: Path, damage: str) -> None:
    home, _, nightly = _nights(tmp_path)
    cache = columncache.cache_file(home.cache)
    good = pq.read_table(cache)
    cache.unlink()
    if damage == "garbage":
        cache.write_bytes(b"PAR1 not parquet at all")
    elif damage == "symlink":
        target = tmp_path / "elsewhere.parquet"
        pq.write_table(good, target)
        cache.symlink_to(target)           # a good cache's bytes, but a link: not believed
    elif damage == "folder":
        cache.mkdir()
    elif damage == "wrong_layout":
        pq.write_table(good.drop_columns(["prompt_key"]), cache)
    elif damage == "no_schema":
        pq.write_table(good.replace_schema_metadata({}), cache)
    elif damage == "twice":                # the first sidecar's rows split in two places: which to believe?
        pq.write_table(pa.concat_tables([good.slice(1), good.slice(0, 1)]), cache)
    else:
        rows = good.to_pylist()
        rows[0]["sidecar"] = None
        pq.write_table(pa.Table.from_pylist(rows, schema=good.schema), cache)
    results, _, narrow = _check(nightly.path, home)
    assert _values(results) == _full(nightly.path)
    assert narrow.scanned == len(_sidecars(nightly.path)) and narrow.cached == 0
    if damage == "folder":              # read as empty, not replaced: the publish goes on, the note says why
        assert "columns not recorded" in narrow.note and cache.is_dir()
        return
    assert narrow.note == "" and cache.is_file() and not cache.is_symlink()
    assert pq.read_table(cache).equals(good)
    _, _, again = _check(nightly.path, home)
    assert again.scanned == 0 and again.cached == len(_sidecars(nightly.path))


def test_a_new_sidecar_with_another_schema_means_the_whole_view(tmp_path: Path) -> None:
    """DuckDB reads the sidecars as the first one's schema (casting another type, ignoring an extra
    column): the narrow view is used only when every sidecar has one schema."""
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    new = _sidecars(copy)[-1]
    table = pq.read_table(new)
    _rewrite_sidecar(copy, new, table.append_column("extra", pa.array([1] * table.num_rows)))
    results, _, narrow = _check(copy, home)
    assert "more than one schema" in narrow.note and narrow.values == {}
    assert _values(results) == _full(copy)


def test_a_file_outside_the_manifest_turns_the_column_cache_off(tmp_path: Path) -> None:
    """A hidden folder's sidecar (DuckDB's glob reads it) holding a key of the version: the whole view
    answers key_unique and catches it."""
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    (copy / ".stale").mkdir()
    shutil.copyfile(_sidecars(copy)[0], copy / ".stale" / _sidecars(copy)[0].name)
    counted, narrow = rulecache.SidecarCounts({}), columncache.ColumnValues()
    with pytest.raises(RuntimeError, match="key_unique"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted, columncache.cache_file(home.cache), narrow)
    assert narrow.values == {} and "manifest" in narrow.note


def test_a_sidecar_written_again_in_place_is_read_again(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(nightly.path, copy)           # new inodes: every sidecar read once
    _, _, narrow = _check(copy, home)
    assert narrow.scanned == len(_sidecars(copy))
    sidecar = _sidecars(copy)[0]
    stat = sidecar.stat()
    os.utime(sidecar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    _, _, narrow = _check(copy, home)
    assert narrow.scanned == 1


def test_rules_that_are_not_safe_on_the_narrow_view_use_the_whole_one(tmp_path: Path) -> None:
    """``*``, a reader's column, an order-dependent aggregate, a hidden column, a top-level GROUP BY are
    refused by the parse; a rule that passes it but does not bind on the narrow view is left to the
    whole view, with a note."""
    tables = frozenset(version_views(tmp_path))
    columns = frozenset(columncache.COLUMNS)

    def rule(query: str, dataset: str = "shard_samples") -> Rule:
        return Rule(dataset, "r", "r", query, "mustBe", 0, True)

    refused = ["SELECT count(*) FROM (SELECT * FROM {object})", "SELECT count(COLUMNS(*)) FROM {object}",
               "SELECT count(DISTINCT filename) FROM {object}", "SELECT max(file_row_number) FROM {object}",
               "SELECT count(*) FROM {object} WHERE rowid > 0", "SELECT first(key) FROM {object}",
               "SELECT list(key)[1] FROM {object}", "SELECT string_agg(split, ',') FROM {object}",
               "SELECT count(*) FROM (SELECT key FROM {object} LIMIT 3)", "SELECT count(*) FROM {object} GROUP BY split",
               "SELECT key FROM {object}", "SELECT count(*) FROM {object} WHERE caption = key",
               "SELECT count(*) FROM {object} POSITIONAL JOIN prompt_counts",
               "SELECT count(*) FROM {object} NATURAL JOIN prompt_counts",
               "SELECT count(*) FROM {object} WHERE key IN (SELECT key FROM {object})",
               "SELECT count(*) FROM read_parquet('x'), {object}", "SELECT count(*) FROM main.{object}",
               "SELECT count(*) FROM {object} WHERE now() IS NULL", "SELECT count(*) OVER () FROM {object}",
               "SELECT count(*) FROM {object} USING SAMPLE 5", "SELECT count(*) FROM prompt_counts",
               # a whole row, which over the narrow view has 3 columns (dec4f)
               "SELECT max(length(concat(shard_samples))) FROM {object}",
               "SELECT count(DISTINCT shard_samples) FROM {object}",
               "SELECT count(*) FROM {object} AS a JOIN {object} AS b ON a.key = b.key WHERE a <> b",
               "WITH s AS (SELECT key FROM {object}) SELECT count(DISTINCT s) FROM s",
               "SELECT count(DISTINCT t) FROM (SELECT key, split FROM {object}) AS t"]
    for query in refused:
        assert not reads_only_columns(rule(query), "shard_samples", columns, tables), query
    for query in ["SELECT count(*) - count(DISTINCT key) FROM {object}",
                  "SELECT count(*) FROM (SELECT DISTINCT split, prompt_key FROM {object}) t JOIN prompt_counts "
                  "USING (split, prompt_key)"]:
        assert reads_only_columns(rule(query), "shard_samples", columns, tables), query
    # passes the parse (a prompt_counts column name), does not bind on the narrow view: left to the whole view
    unbound = rule("SELECT count(DISTINCT num_example_per_prompt) FROM {object}")
    assert reads_only_columns(unbound, "shard_samples", columns, tables)
    home, _, nightly = _nights(tmp_path)
    sidecars = rulecache.version_sidecars(nightly.path)
    others = {n: g for n, g in version_views(nightly.path).items() if n != "shard_samples"}
    keys = rule("SELECT count(*) - count(DISTINCT key) FROM {object}")
    out = columncache.narrow_values(sidecars, columncache.cache_file(home.cache), others,
                                    [unbound, dataclasses.replace(keys, name="keys")])
    assert out.values == {"shard_samples": {"keys": 0}} and "shard_samples.r read every sidecar" in out.note


def test_versions_stay_byte_identical_with_or_without_the_column_cache(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    before = {p.relative_to(nightly.path): p.read_bytes() for p in sorted(nightly.path.rglob("*")) if p.is_file()}
    for damaged in (None, b"PAR1 garbage"):
        shutil.rmtree(home.cache / "contract_columns")
        if damaged:
            columncache.cache_file(home.cache).parent.mkdir(parents=True)
            columncache.cache_file(home.cache).write_bytes(damaged)
        shutil.rmtree(nightly.path)
        (home.datasets / "latest").unlink()
        again = publish_dataset(home, CONFIG)
        assert again.version == nightly.version
        after = {p.relative_to(again.path): p.read_bytes() for p in sorted(again.path.rglob("*")) if p.is_file()}
        assert after == before
        assert again.contract_column_sidecars_scanned == len(_sidecars(again.path))


def test_a_column_cache_with_flipped_bits_never_changes_a_value(tmp_path: Path) -> None:
    """Page checksums and the layout checks: a flipped bit anywhere in the cache makes it no cache, or
    leaves every value it would give unchanged; it never raises."""
    home, _, nightly = _nights(tmp_path)
    cache = columncache.cache_file(home.cache)
    good = cache.read_bytes()
    clean = columncache._read(cache)
    believed = 0
    for at in range(0, len(good), 3):
        for bit in (0, 6):
            damaged = bytearray(good)
            damaged[at] ^= 1 << bit
            cache.write_bytes(bytes(damaged))
            known = columncache._read(cache)          # never raises
            if known is None:
                continue
            believed += 1
            used = {name: span for name, span in known.runs.items() if name in clean.runs}
            for name, (start, stop) in used.items():
                first, last = clean.runs[name]
                assert known.data.slice(start, stop - start).equals(clean.data.slice(first, last - first)), at
    assert believed < 2 * len(range(0, len(good), 3))
    cache.write_bytes(good)


def test_a_contract_rule_reading_star_or_a_reader_column_is_answered_by_the_whole_view(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """Rules added to the contracts that read ``*``, ``filename`` or in an order-dependent way are never
    answered from the narrow view: the gate gives them the whole view's values (here failed queries
    and order-free values alike), and the safe rules still come from the cache."""
    home, _, nightly = _nights(tmp_path)
    real = load_contract

    def rule(name: str, query: str, dataset: str = "shard_samples") -> Rule:
        return Rule(dataset, name, name, query, "mustBeGreaterOrEqualTo", 0, False)

    extra = {"shard_samples": [rule("star", "SELECT count(*) FROM (SELECT * FROM {object} WHERE key <> '')"),
                               rule("reader", "SELECT count(DISTINCT filename) FROM {object}"),
                               # refused (string_agg is not order-free), yet one value whatever order the files are read in:
                               # first(key) here made the test compare two reads of a multi-file view in thread order
                               rule("ordered", "SELECT length(string_agg(key, ',' ORDER BY key)) FROM {object}")],
             "prompt_counts": [rule("columns", "SELECT count(*) FROM (SELECT COLUMNS(*) FROM shard_samples)",
                                    "prompt_counts")]}

    def with_extra(dataset: str):
        contract = real(dataset)
        return dataclasses.replace(contract, rules=contract.rules + tuple(extra.get(dataset, [])))

    monkeypatch.setattr("pipelines.publish.version.load_contract", with_extra)
    monkeypatch.setattr("pipelines.publish.columncache.load_contract", with_extra)
    results, _, narrow = _check(nightly.path, home)
    assert narrow.rules == NARROW and narrow.cached > 0
    views = version_views(nightly.path)
    con = connect(views, uniform=views)
    full = _values([r for dataset in views for r in evaluate(with_extra(dataset), con)])
    assert _values(results) == full
    assert full["shard_samples.reader"] is None and full["shard_samples.star"] > 0   # filename: no such column
