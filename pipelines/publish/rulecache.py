"""Row-local contract rules over a version's sidecars, counted once per sidecar content.

Most ``shard_samples`` rules count the rows that break a condition on the row alone
(:func:`data_contracts.engine.row_local`). Their value over a version is the sum of their values
over its sidecars, and a sidecar's value depends on its bytes alone. A nightly version shares all
but the night's new sidecars with the version before it (hard links, the same bytes), so the
publish keeps each sidecar's counts under its sha256 (the manifest's) and only the sidecars
without recorded counts are read for those rules: one night's, instead of a year's. The rules that
need the whole version (``key_unique``, and the others that are not row-local) still read every
sidecar.

The counts live in ``HOME/cache/contract_counts/shard_samples.parquet``: one row per (sidecar
sha256, rule key, rows), the rule key being the sha256 of the DuckDB version, the dataset and the
rule's condition, so a rule whose text changes, or another DuckDB, counts afresh. The file holds
the sidecars of the last version checked (it is rewritten, pruned, after each check) and is a
cache: deleting it changes no result, only the time (every sidecar is read once more). A cache
that cannot be read is treated as empty.

Trust: a sidecar's identity is its sha256 in the version's manifest. For the sidecars a publish
writes, that is the hash of the bytes it wrote; for the ones it hard-links, the older version's
record, checked by size before the gate (``verify_version``) and by content with
``publish.verify_checksums``, the same trust as the manifest's own reuse.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.engine import Rule, load_contract, row_condition, row_local
from formats.dataset import MANIFEST_FILE, sidecar_glob
from formats.files import write_parquet_atomic

DATASET = "shard_samples"
SCHEMA = pa.schema([pa.field("sha256", pa.string(), nullable=False), pa.field("rule_key", pa.string(), nullable=False),
                    pa.field("rows", pa.int64(), nullable=False)])
FILE_COLUMN = "_contract_sidecar_file"   # the file name column of the per-file scan (no sidecar column has it)


@dataclass
class SidecarCounts:
    """What :func:`row_local_values` did: rule name -> value over the version, sidecars read for
    those rules and sidecars whose counts came from the cache."""

    values: dict[str, float]
    scanned: int = 0
    cached: int = 0


def rule_key(rule: Rule) -> str:
    """The cache key of a row-local rule's counts: DuckDB's version, the dataset, the condition."""
    text = f"{duckdb.__version__}\0{rule.dataset}\0{row_condition(rule)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_file(cache_root: Path) -> Path:
    """Where the counts are kept under a data home's ``cache/`` folder."""
    return cache_root / "contract_counts" / f"{DATASET}.parquet"


def version_sidecars(version: Path) -> dict[Path, str]:
    """Every sidecar of a version with its sha256 from the version's manifest (every file on disk is
    in it: ``verify_version`` ran before)."""
    files = json.loads((version / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    out = {}
    for name in sorted(glob.glob(sidecar_glob(version))):
        rel = str(Path(name).relative_to(version))
        out[Path(name)] = files[rel]["sha256"]
    return out


def row_local_values(sidecars: dict[Path, str], cache: Path, rules: list[Rule] | None = None) -> SidecarCounts:
    """The value over ``sidecars`` (path -> sha256) of every row-local ``shard_samples`` rule.

    Sidecars with recorded counts for every such rule are not read; the others are read in one scan
    (a count per file and rule) and their counts recorded. The cache is then rewritten with exactly
    the counts of ``sidecars``. If that scan fails (a sidecar that lacks a column, say), nothing is
    returned and nothing recorded: the caller runs those rules over the whole view, which reports
    the error against its rule.
    """
    rules = [r for r in (load_contract(DATASET).rules if rules is None else rules) if row_local(r)]
    if not rules or not sidecars:
        return SidecarCounts({})
    keys = [rule_key(r) for r in rules]
    known = _read(cache)
    totals = [0] * len(rules)
    fresh: list[Path] = []
    kept: dict[tuple[str, str], int] = {}
    cached = 0
    for path, sha in sidecars.items():
        counts = [known.get((sha, key)) for key in keys]
        if any(c is None for c in counts):
            fresh.append(path)
            continue
        cached += 1
        for i, c in enumerate(counts):
            totals[i] += c
            kept[(sha, keys[i])] = c
    if fresh:
        try:
            per_file = _scan(fresh, rules)
        except duckdb.Error:
            return SidecarCounts({})
        for path in fresh:
            counts = per_file.get(str(path), [0] * len(rules))    # an empty sidecar has no group
            for i, c in enumerate(counts):
                totals[i] += c
                kept[(sidecars[path], keys[i])] = c
    _write(cache, kept)
    return SidecarCounts({r.name: float(t) for r, t in zip(rules, totals)}, scanned=len(fresh), cached=cached)


def _scan(files: list[Path], rules: list[Rule]) -> dict[str, list[int]]:
    """Per file of ``files`` (read as one schema, as the version's view), each rule's count."""
    counts = ",\n".join(f"count(*) FILTER (WHERE (\n{row_condition(rule)}\n))" for rule in rules)
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            f"SELECT {FILE_COLUMN},\n{counts}\nFROM read_parquet($files, filename = '{FILE_COLUMN}') AS {DATASET}\n"
            f"GROUP BY {FILE_COLUMN}", {"files": [str(f) for f in files]}).fetchall()
    finally:
        con.close()
    return {row[0]: [int(v) for v in row[1:]] for row in rows}


def _read(cache: Path) -> dict[tuple[str, str], int]:
    """The recorded counts; empty if there are none or the file is not a readable cache (a symlink,
    a folder, damaged bytes, another schema)."""
    try:
        if not stat.S_ISREG(os.lstat(cache).st_mode):
            return {}
        table = pq.read_table(cache, schema=SCHEMA)
    except (OSError, pa.ArrowException, ValueError):
        return {}
    return {(sha, key): int(rows) for sha, key, rows in zip(*(table.column(n).to_pylist() for n in SCHEMA.names))
            if sha is not None and key is not None and rows is not None and rows >= 0}


def _write(cache: Path, counts: dict[tuple[str, str], int]) -> None:
    """Replace the cache with ``counts``, sorted (atomically; the folder is made if need be)."""
    items = sorted(counts.items())
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(pa.table({"sha256": [k[0] for k, _ in items], "rule_key": [k[1] for k, _ in items],
                                   "rows": [v for _, v in items]}, schema=SCHEMA), cache)
