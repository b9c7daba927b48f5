"""The gate's row-local sidecar rules read only the sidecars a night wrote, with the same results."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import make_home, write_split_pairs

from data_contracts.engine import Rule, load_contract, row_local
from formats.dataset import MANIFEST_FILE
from formats.files import sha256_file
from pipelines.publish import rulecache
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import check_contracts, publish_dataset

DAYS = 5
CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)
LOCAL = [r.name for r in load_contract("shard_samples").rules if row_local(r)]


def _values(results) -> dict[str, float | None]:
    return {f"{r.rule.dataset}.{r.rule.name}": r.value for r in results}


def _first_night(tmp_path: Path):
    """A home published with DAYS - 1 export days: (home, the whole split_pairs table, the report); writing the
    table back (``write_split_pairs(home, table)``) gives the next night its last day."""
    home = make_home(tmp_path / "h", num_rankings=150, seed=5, days=DAYS)
    table = pq.read_table(home.table_file("split_pairs"))
    last = max(table.column("dt").to_pylist())
    write_split_pairs(home, table.filter(pc.not_equal(table.column("dt"), pa.scalar(last, pa.date32()))))
    return home, table, publish_dataset(home, CONFIG)


def _nights(tmp_path: Path):
    """A home published with DAYS - 1 export days, then with the last one: both reports."""
    home, table, first = _first_night(tmp_path)
    write_split_pairs(home, table)
    return home, first, publish_dataset(home, CONFIG)


def test_the_nightly_gate_reads_only_the_new_sidecars_and_gets_the_full_results(tmp_path: Path) -> None:
    home, first, nightly = _nights(tmp_path)
    sidecars = lambda report: sorted(report.path.glob("*/pickapic-*.parquet"))  # noqa: E731
    # the first version: nothing recorded, every sidecar read once for the row-local rules
    assert first.contract_sidecars_scanned == len(sidecars(first)) and first.contract_sidecars_cached == 0
    # the night: only the sidecars it wrote are read; the linked ones' counts come from the cache
    assert nightly.shards_linked > 0 and nightly.shards_written > 0
    assert nightly.contract_sidecars_scanned == nightly.shards_written
    assert nightly.contract_sidecars_cached == nightly.shards_linked == len(sidecars(nightly)) - nightly.shards_written
    # the same values as every rule over every sidecar (no cache), for every rule of the version
    assert _values(nightly.contract_results) == _values(check_contracts(nightly.path))
    assert len(LOCAL) == 8 and all(f"shard_samples.{n}" in _values(nightly.contract_results) for n in LOCAL)
    # the cache holds exactly the night's sidecars, one count per row-local rule
    cache = pq.read_table(rulecache.cache_file(home.cache))
    shas = {info["sha256"] for rel, info in json.loads((nightly.path / MANIFEST_FILE).read_text())["files"].items()
            if rel.endswith(".parquet") and "/pickapic-" in rel}
    assert {sidecar.split("/")[0] for sidecar in cache.column("sidecar").to_pylist()} == shas
    assert cache.num_rows == len(sidecars(nightly)) and cache.num_columns == 2 + len(LOCAL)
    assert cache.column("rows").to_pylist() == [pq.read_metadata(p).num_rows for p in sorted(
        sidecars(nightly), key=lambda p: rulecache.version_sidecars(nightly.path)[p])]
    metadata = nightly.metadata()
    assert metadata["contract_sidecars_scanned"] == nightly.shards_written


def _rewrite_sidecar(version: Path, sidecar: Path, table: pa.Table) -> None:
    """Replace a sidecar and its manifest entry (a new identity: nothing recorded for it)."""
    sidecar.unlink()    # the file may be shared with an older version: never write it in place
    pq.write_table(table, sidecar)
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    rel = str(sidecar.relative_to(version))
    manifest["files"][rel] = {"bytes": sidecar.stat().st_size, "sha256": sha256_file(sidecar)}
    (version / MANIFEST_FILE).unlink()
    (version / MANIFEST_FILE).write_text(json.dumps(manifest))


def _link_copy(version: Path, to: Path) -> Path:
    """The version again under ``to``, every file a hard link (the same inodes, as a nightly shares them)."""
    shutil.copytree(version, to, copy_function=os.link)
    return to


def test_a_bad_row_in_a_sidecar_without_counts_is_caught_and_counted(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    sidecar = sorted(copy.glob("train/pickapic-*.parquet"))[0]
    table = pq.read_table(sidecar)
    bad = table.set_column(table.schema.get_field_index("jpg_0_size"), "jpg_0_size",
                           pa.array([0] * table.num_rows, pa.int64()))
    _rewrite_sidecar(copy, sidecar, bad)
    counted = rulecache.SidecarCounts({})
    with pytest.raises(RuntimeError, match="jpgs_not_empty"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted)
    assert counted.scanned == 1 and counted.values["jpgs_not_empty"] == table.num_rows
    with pytest.raises(RuntimeError, match="jpgs_not_empty"):     # recorded now, and still failing
        check_contracts(copy, rulecache.cache_file(home.cache), counted)
    assert counted.scanned == 0


def test_a_sidecar_the_scan_cannot_read_falls_back_to_the_whole_view(tmp_path: Path) -> None:
    """A new sidecar that lost a column: the per-file scan fails, nothing is recorded, and the rules
    run over the whole view, which names them as failed queries (as without the cache)."""
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    sidecar = sorted(copy.glob("train/pickapic-*.parquet"))[-1]
    _rewrite_sidecar(copy, sidecar, pq.read_table(sidecar).drop_columns(["jpg_1_size"]))
    before = rulecache.cache_file(home.cache).read_bytes()
    counted = rulecache.SidecarCounts({"x": 1.0})
    with pytest.raises(RuntimeError, match=r"jpgs_not_empty = None \(query failed"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted)
    assert counted.values == {} and rulecache.cache_file(home.cache).read_bytes() == before
    assert "jpg_1_size" in counted.note            # the reason is reported (PublishReport.contract_counts_note)


@pytest.mark.parametrize("damage", ["garbage", "symlink", "folder", "wrong_schema"])
def test_an_unreadable_cache_means_reading_every_sidecar(tmp_path: Path, damage: str) -> None:
    home, _, nightly = _nights(tmp_path)
    cache = rulecache.cache_file(home.cache)
    cache.unlink()
    if damage == "garbage":
        cache.write_bytes(b"PAR1 not parquet at all")
    elif damage == "symlink":
        target = tmp_path / "elsewhere.parquet"
        pq.write_table(pa.table({"sidecar": ["x"], "rows": [1], "rule_y": [1]}), target)
        cache.symlink_to(target)
    elif damage == "folder":
        cache.mkdir()
    else:
        pq.write_table(pa.table({"sha256": [1], "other": ["y"]}), cache)
    counted = rulecache.SidecarCounts({})
    results = check_contracts(nightly.path, cache, counted)
    expected = _values(check_contracts(nightly.path))
    assert _values(results) == expected
    if damage == "folder":          # read as empty, and not replaced: the publish goes on, the note says why
        assert counted.scanned > 0 and "counts not recorded" in counted.note and cache.is_dir()
        return
    assert counted.scanned == len(list(nightly.path.glob("*/pickapic-*.parquet"))) and counted.cached == 0
    assert cache.is_file() and not cache.is_symlink()       # replaced by a valid cache, the link's target untouched
    if damage == "symlink":
        assert pq.read_table(tmp_path / "elsewhere.parquet").num_rows == 1
    again = rulecache.SidecarCounts({})
    check_contracts(nightly.path, cache, again)
    assert again.scanned == 0


def test_counts_are_kept_per_rule_text_and_duckdb(tmp_path: Path) -> None:
    """A rule whose condition changed is counted afresh; the unchanged ones still come from the cache."""
    home, _, nightly = _nights(tmp_path)
    sidecars = rulecache.version_sidecars(nightly.path)
    cache = rulecache.cache_file(home.cache)
    rules = list(load_contract("shard_samples").rules)
    same = rulecache.row_local_values(sidecars, cache, rules)
    assert same.scanned == 0 and same.cached == len(sidecars)
    changed = [Rule(r.dataset, r.name, r.description, r.query.replace("<= 0", "< 0"), r.comparator, r.target,
                    r.blocking) if r.name == "jpgs_not_empty" else r for r in rules]
    assert rulecache.rule_key(changed[[r.name for r in rules].index("jpgs_not_empty")]) not in {
        rulecache.rule_key(r) for r in rules}
    fresh = rulecache.row_local_values(sidecars, cache, changed)
    assert fresh.scanned == len(sidecars) and fresh.values == same.values
    # not row-local: never cached, never given
    subquery = Rule("shard_samples", "sub", "sub", "SELECT count(*) FROM {object} WHERE key IN (SELECT key FROM "
                    "{object} WHERE split = 'test')", "mustBe", 0, True)
    volatile = Rule("shard_samples", "vol", "vol", "SELECT count(*) FROM {object} WHERE random() < 2", "mustBe", 0, True)
    clock = Rule("shard_samples", "now", "now", "SELECT count(*) FROM {object} WHERE now() IS NULL", "mustBe", 0, True)
    assert not any(row_local(r) for r in (subquery, volatile, clock))
    assert rulecache.row_local_values(sidecars, cache, [subquery, volatile, clock]).values == {}


def test_versions_stay_byte_identical_with_or_without_the_cache(tmp_path: Path) -> None:
    """The cache is outside the version: deleting it changes no published byte."""
    home, _, nightly = _nights(tmp_path)
    before = {p.relative_to(nightly.path): p.read_bytes() for p in sorted(nightly.path.rglob("*")) if p.is_file()}
    shutil.rmtree(home.cache / "contract_counts")
    shutil.rmtree(nightly.path)
    (home.datasets / "latest").unlink()
    again = publish_dataset(home, CONFIG)
    assert again.version == nightly.version
    after = {p.relative_to(again.path): p.read_bytes() for p in sorted(again.path.rglob("*")) if p.is_file()}
    assert after == before
    assert again.contract_sidecars_scanned + again.contract_sidecars_cached == len(
        list(again.path.glob("*/pickapic-*.parquet")))


@pytest.mark.parametrize("damage", ["negative", "twice", "no_sidecar", "other_column", "above_rows", "huge"])
def test_bad_cache_rows_mean_reading_every_sidecar(tmp_path: Path, damage: str) -> None:
    """A negative count, a sidecar recorded twice (which row to believe?), a row without its sidecar
    or a column that is not a rule's count makes the whole cache untrusted: every sidecar is read,
    the results are the full ones, and the rewritten cache is the one a clean run writes."""
    home, _, nightly = _nights(tmp_path)
    cache = rulecache.cache_file(home.cache)
    table = pq.read_table(cache)
    rows = table.to_pylist()
    rule = table.column_names[2]
    if damage == "negative":
        rows[0][rule] = -5
    elif damage == "twice":
        rows.append({**rows[0], rule: rows[0][rule] + 3})
    elif damage == "no_sidecar":
        rows[0]["sidecar"] = None
    elif damage == "above_rows":               # more failing rows than the sidecar has
        rows[0][rule] = rows[0]["rows"] + 1
    elif damage == "huge":                     # four of these would wrap an int64 sum to 0
        for row in rows[:4]:
            row[rule] = 2 ** 62
    schema = table.schema if damage != "no_sidecar" else pa.schema([(f.name, f.type) for f in table.schema])
    damaged = pa.Table.from_pylist(rows, schema=schema)
    if damage == "other_column":
        damaged = damaged.append_column("note", pa.array(["x"] * damaged.num_rows))
    pq.write_table(damaged, cache)
    counted = rulecache.SidecarCounts({})
    results = check_contracts(nightly.path, cache, counted)
    assert counted.scanned == len(list(nightly.path.glob("*/pickapic-*.parquet"))) and counted.cached == 0
    assert _values(results) == _values(check_contracts(nightly.path))
    assert pq.read_table(cache).equals(table)


def test_a_missing_count_means_reading_that_sidecar_again(tmp_path: Path) -> None:
    home, _, nightly = _nights(tmp_path)
    cache = rulecache.cache_file(home.cache)
    table = pq.read_table(cache)
    rows = table.to_pylist()
    rows[0][table.column_names[2]] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([(f.name, f.type) for f in table.schema])), cache)
    counted = rulecache.SidecarCounts({})
    results = check_contracts(nightly.path, cache, counted)
    assert counted.scanned == 1 and _values(results) == _values(check_contracts(nightly.path))
    assert pq.read_table(cache).equals(table)


def test_a_sidecar_changed_in_place_is_read_again(tmp_path: Path) -> None:
    """Same size, same manifest entry, but written in place (another mtime): its counts are not
    taken from the cache, and the bad rows in it fail the gate."""
    home, _, nightly = _nights(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(nightly.path, copy)
    counted = rulecache.SidecarCounts({})
    check_contracts(copy, rulecache.cache_file(home.cache), counted)       # the copies: new inodes, read once
    assert counted.scanned == len(list(copy.glob("*/pickapic-*.parquet")))
    sidecar = sorted(copy.glob("train/pickapic-*.parquet"))[0]
    # the first sample's jpg_0_size, an int64 stored plainly (no dictionary, no compression, no
    # statistics for it): overwrite its 8 bytes inside that column's chunk with 0, in place
    meta = pq.read_metadata(sidecar)
    column = meta.row_group(0).column(meta.schema.names.index("jpg_0_size"))
    first = pq.read_table(sidecar, columns=["jpg_0_size"]).column(0)[0].as_py()
    raw = bytearray(sidecar.read_bytes())
    start = column.data_page_offset
    at = raw.find(struct.pack("<q", first), start, start + column.total_compressed_size)
    assert at >= 0
    with open(sidecar, "r+b") as handle:
        handle.seek(at)
        handle.write(bytes(8))
    assert pq.read_table(sidecar, columns=["jpg_0_size"]).column(0)[0].as_py() == 0
    assert sidecar.stat().st_size == len(raw)
    with pytest.raises(RuntimeError, match="jpgs_not_empty"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted)
    assert counted.scanned == 1


def test_a_file_the_view_reads_but_the_manifest_does_not_list_turns_the_cache_off(tmp_path: Path) -> None:
    """DuckDB's glob reads hidden folders (Python's skips them): such a file is not the version's,
    so the row-local rules run over the whole view, as without the cache, and find its bad rows."""
    home, _, nightly = _nights(tmp_path)
    copy = _link_copy(nightly.path, tmp_path / "copy")
    sidecar = sorted(copy.glob("train/pickapic-*.parquet"))[0]
    (copy / ".stale").mkdir()
    table = pq.read_table(sidecar)
    pq.write_table(table.set_column(table.schema.get_field_index("jpg_0_size"), "jpg_0_size",
                                    pa.array([0] * table.num_rows, pa.int64())), copy / ".stale" / sidecar.name)
    counted = rulecache.SidecarCounts({})
    with pytest.raises(RuntimeError, match="jpgs_not_empty"):
        check_contracts(copy, rulecache.cache_file(home.cache), counted)
    assert counted.values == {} and "manifest" in counted.note


def test_a_cache_with_flipped_bits_is_never_believed(tmp_path: Path) -> None:
    """The cache is written with page checksums: a flipped bit anywhere in it either makes it no cache
    (read as empty), or is caught by a checksum, or renames a column (that rule is then counted
    afresh); it never changes a count the gate would use, and never raises."""
    home, _, nightly = _nights(tmp_path)
    cache = rulecache.cache_file(home.cache)
    good = cache.read_bytes()
    clean = rulecache._read(cache)
    believed = 0
    for at in range(0, len(good), 5):
        for bit in (0, 6):
            damaged = bytearray(good)
            damaged[at] ^= 1 << bit
            cache.write_bytes(bytes(damaged))
            table = rulecache._read(cache)          # never raises
            if not table.num_rows:
                continue
            believed += 1
            assert table.column("sidecar").equals(clean.column("sidecar")), at
            for name in set(table.column_names) & set(clean.column_names):
                assert table.column(name).equals(clean.column(name)), (at, name)
    assert believed < 2 * len(range(0, len(good), 5))
    cache.write_bytes(good)
