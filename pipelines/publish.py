"""Publish a dataset version: shards + sidecars, query snapshots, manifest, atomic ``latest`` switch.

Layout of ``HOME/datasets/pickapic/``::

    <version>/<split>/pickapic-<split>-NNNNNN.{tar,parquet,_stats.json}, sizes.json
    <version>/meta/{shards,images,decisions,quarantine,splits_summary}.parquet
    <version>/manifest.json          counts, sources, config, contract versions, sha256 of every file
    latest -> <version>              a relative symlink, replaced with os.replace

The version id is ``<max dt>-<sha256[:10] of inputs + config>``: equal inputs give the same
version and byte-identical files. A version is written under ``.partial-<version>`` (hidden:
no glob or reader sees it), verified, renamed into place, and only then does ``latest`` move.
Older versions beyond ``keep_versions`` are deleted after the switch. A crash leaves the
previous ``latest`` untouched; the rerun resumes from the shards whose stats were committed.

Readers resolve ``latest`` once (:func:`resolve_version`) and read through the resolved path, so
a switch during a read never mixes versions. Plain DuckDB over every sidecar of ``latest``::

    SELECT * FROM read_parquet('HOME/datasets/pickapic/latest/*/pickapic-*.parquet');

(the ``pickapic-*`` part keeps ``meta/*.parquet`` out of the glob).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import faults, shards
from pipelines.home import DataHome
from pipelines.splits import require_trainable
from pipelines.sqlrun import connect, run_sql
from pipelines.storage import cast_to_schema, sha256_file, write_bytes_atomic, write_parquet_atomic
from schemas import get_schema

FORMAT_VERSION = "pickapic-wds/1"
META_TABLES = ("shards", "images", "decisions", "quarantine", "splits_summary")
META_SCHEMAS = {"shards": "shards", "images": "image_features", "decisions": "decisions",
                "quarantine": "published_quarantine", "splits_summary": "splits_summary"}
CONTRACT_DATASETS = ("split_pairs", "shard_samples", "shards", "splits_summary", "image_features",
                     "decisions", "published_quarantine")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class PublishConfig:
    """Knobs of the publish stage (the ones marked 'output' change the version id)."""

    seed: int = field(default=42, metadata={"help": "output: seed of the within-split shuffle"})
    max_samples_per_shard: int = field(default=10_000, metadata={"help": "output: most samples in one shard"})
    max_shard_bytes: int = field(default=256 * 1024 * 1024, metadata={"help": "output: most tar bytes in one shard"})
    min_shards_per_split: int = field(default=4, metadata={
        "help": "output: least shards per split (when it has that many samples), for GPUs x loader workers"})
    keep_versions: int = field(default=3, metadata={"help": "complete versions kept; older ones are deleted after the switch"})
    workers: int = field(default=0, metadata={"help": "shard writer processes; 0 = one per CPU, 1 = in-process"})
    fsync: bool = field(default=True, metadata={"help": "fsync every file before it is renamed into place"})
    verify_checksums: bool = field(default=False, metadata={
        "help": "re-read every file and compare its sha256 with the manifest before switching latest"})

    def __post_init__(self) -> None:
        for name in ("max_samples_per_shard", "max_shard_bytes", "min_shards_per_split", "keep_versions"):
            if getattr(self, name) < 1:
                raise ValueError(f"PublishConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.workers < 0:
            raise ValueError(f"PublishConfig.workers must be >= 0, got {self.workers!r}")

    def output_fields(self) -> dict:
        """The fields that change the bytes written (they go into the version id)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if str(f.metadata.get("help", "")).startswith("output:")}


@dataclass
class PublishReport:
    """What one publish did: the version, per-split counts, bytes and speed."""

    version: str
    path: Path
    reused: bool
    pairs: dict[str, int]
    shards: dict[str, int]
    bytes: dict[str, int]
    shards_written: int
    shards_resumed: int
    write_seconds: float
    total_seconds: float
    deleted_versions: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def mb_per_s(self) -> float:
        """Tar bytes written per second of shard writing (0 when nothing was written)."""
        return self.total_bytes / 1e6 / self.write_seconds if self.shards_written and self.write_seconds > 0 else 0.0

    def metadata(self) -> dict:
        """JSON-able values and a markdown table for Dagster."""
        rows = "\n".join(f"| {s} | {self.pairs[s]} | {self.shards[s]} | {self.bytes[s] / 1e6:.1f} |" for s in self.pairs)
        return {
            "version": self.version,
            "path": str(self.path),
            "reused_existing_version": self.reused,
            "num_pairs": sum(self.pairs.values()),
            "num_shards": sum(self.shards.values()),
            "num_bytes": self.total_bytes,
            "pairs_per_split": dict(self.pairs),
            "shards_per_split": dict(self.shards),
            "shards_written": self.shards_written,
            "shards_resumed": self.shards_resumed,
            "write_mb_per_s": round(self.mb_per_s, 1),
            "write_seconds": round(self.write_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "deleted_versions": list(self.deleted_versions),
            "splits": "| split | pairs | shards | MB |\n|---|---|---|---|\n" + rows,
        }


def publish_dataset(home: DataHome, config: PublishConfig = PublishConfig(), progress: Progress | None = None) -> PublishReport:
    """Publish ``split_pairs`` as a new dataset version and point ``latest`` at it (idempotent)."""
    started = time.perf_counter()
    source = home.table_file("split_pairs")
    if not source.is_file():
        raise FileNotFoundError(f"split_pairs not found at {source}: run the splits stage first")
    table = cast_to_schema(pq.read_table(source), get_schema("split_pairs"))
    if table.num_rows == 0:
        raise ValueError(f"{source} has no rows: refusing to publish an empty dataset")
    require_trainable(table)  # an empty split is no version at all for a trainer: latest stays where it is
    table = _with_keys(table)
    jpg_sizes = _jpg_sizes(home, table)
    meta_sources = _meta_sources(home)
    version = _version_id(table, source, jpg_sizes, meta_sources, config, home.warehouse)

    home.datasets.mkdir(parents=True, exist_ok=True)
    with _publish_lock(home):
        final = home.datasets / version
        if (final / "manifest.json").is_file():
            manifest = verify_version(final, checksums=config.verify_checksums)
            os.utime(final)  # counts as the newest version for retention
            switch_latest(home, version)
            deleted = apply_retention(home, config.keep_versions)
            return _report(manifest, final, True, 0, 0, 0.0, time.perf_counter() - started, deleted)
        for stale in home.datasets.glob(".partial-*"):
            if stale.name != f".partial-{version}":
                shutil.rmtree(stale)
        for stale in home.datasets.glob(".deleting-*"):
            shutil.rmtree(stale)
        staging = home.datasets / f".partial-{version}"
        staging.mkdir(exist_ok=True)
        for leftover in sorted(staging.rglob(".*"), reverse=True):  # temp files of a writer killed mid-write
            leftover.unlink()

        tasks = _plan(home, table, jpg_sizes, staging, config)
        write_started = time.perf_counter()
        stats, resumed = _write_shards(tasks, config, progress)
        write_seconds = time.perf_counter() - write_started
        faults.maybe_crash("publish.after_shards")  # tests: every shard committed, no manifest

        for split in _splits_in(table):
            split_stats = [s for s in stats if s["split"] == split]
            sizes = {s["shard"]: s["num_samples"] for s in split_stats}
            write_bytes_atomic(staging / split / "sizes.json", (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode())
        _write_meta(staging, stats, meta_sources)
        _write_manifest(staging, version, table, stats, meta_sources, config)
        verify_version(staging, checksums=config.verify_checksums)
        check_contracts(staging)
        _fsync_tree(staging, config.fsync)
        faults.maybe_crash("publish.before_rename")  # tests: staged version complete, not in place
        os.rename(staging, final)
        _fsync_dir(home.datasets, config.fsync)
        faults.maybe_crash("publish.before_switch")  # tests: version in place, latest not switched
        switch_latest(home, version)
        deleted = apply_retention(home, config.keep_versions)
        manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
    return _report(manifest, final, False, len(tasks) - resumed, resumed, write_seconds,
                   time.perf_counter() - started, deleted)


def resolve_version(home: DataHome, version: str | None = None) -> Path:
    """The real directory of ``version`` (default: what ``latest`` points to now); must be complete."""
    if version is None:
        link = home.datasets / "latest"
        if not link.exists():
            raise FileNotFoundError(f"no published dataset: {link} does not exist (run the publish stage)")
        path = link.resolve()
    else:
        if not version or "/" in version or "\\" in version or version.startswith("."):
            raise ValueError(f"version {version!r} is not a version name")
        path = (home.datasets / version).resolve()
    if path.parent != home.datasets.resolve() or not (path / "manifest.json").is_file():
        available = ", ".join(list_versions(home)) or "none"
        raise FileNotFoundError(f"version {version or 'latest'!r} is not a complete published version (available: {available})")
    return path


def list_versions(home: DataHome) -> list[str]:
    """Complete version names, oldest first (by the time they were last published)."""
    if not home.datasets.is_dir():
        return []
    found = [p for p in home.datasets.iterdir()
             if not p.name.startswith(".") and not p.is_symlink() and p.is_dir() and (p / "manifest.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))]


def switch_latest(home: DataHome, version: str) -> None:
    """Point ``latest`` at ``version`` atomically (a temp symlink renamed over the old one)."""
    link = home.datasets / "latest"
    if link.is_symlink() and os.readlink(link) == version:
        return
    tmp = home.datasets / f".latest.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(version, tmp)
    os.replace(tmp, link)
    _fsync_dir(home.datasets, True)


def apply_retention(home: DataHome, keep: int) -> list[str]:
    """Delete complete versions beyond the newest ``keep`` (never the one ``latest`` points to)."""
    link = home.datasets / "latest"
    current = os.readlink(link) if link.is_symlink() else None
    versions = [v for v in list_versions(home) if v != current]
    doomed = versions[: max(0, len(versions) - (keep - 1 if current else keep))]
    for name in doomed:
        hidden = home.datasets / f".deleting-{name}"
        os.rename(home.datasets / name, hidden)  # disappears atomically, then goes
        shutil.rmtree(hidden)
    return doomed


def verify_version(path: Path, checksums: bool = False) -> dict:
    """Check that ``path`` holds exactly the manifest's files with their sizes (and sha256s)."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    expected = manifest["files"]
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()} - {"manifest.json"}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise RuntimeError(f"version {path.name}: files differ from its manifest: missing {missing[:5]}, unexpected {extra[:5]}")
    for rel, info in expected.items():
        size = (path / rel).stat().st_size
        if size != info["bytes"]:
            raise RuntimeError(f"version {path.name}: {rel} has {size} bytes, manifest says {info['bytes']}")
        if checksums and sha256_file(path / rel) != info["sha256"]:
            raise RuntimeError(f"version {path.name}: {rel} does not match its manifest sha256")
    return manifest


def version_views(path: Path) -> dict[str, str]:
    """Contract dataset name -> Parquet glob of that dataset inside a version directory."""
    return {
        "shard_samples": str(path / "*" / "pickapic-*.parquet"),
        "shards": str(path / "meta" / "shards.parquet"),
        "splits_summary": str(path / "meta" / "splits_summary.parquet"),
        "published_quarantine": str(path / "meta" / "quarantine.parquet"),
    }


def check_contracts(path: Path) -> None:
    """Evaluate the blocking contract rules of a version's datasets; raise naming every failure."""
    from data_contracts.engine import evaluate, load_contract

    views = version_views(path)
    con = connect(views)
    try:
        failures = [f"{r.rule.dataset}.{r.rule.name} = {r.value} ({r.error or r.rule.expectation()})"
                    for dataset in views for r in evaluate(load_contract(dataset), con)
                    if r.rule.blocking and not r.passed]
    finally:
        con.close()
    if failures:
        raise RuntimeError(f"version {path.name} fails its contracts, not publishing: {'; '.join(failures)}")


# --- planning ---------------------------------------------------------------------------------

def _splits_in(table: pa.Table) -> list[str]:
    present = set(table.column("split").unique().to_pylist())
    unknown = sorted(present - set(shards.SPLITS))
    if unknown:
        raise ValueError(f"split_pairs has unknown split values {unknown}; expected {list(shards.SPLITS)}")
    return [s for s in shards.SPLITS if s in present]


def _with_keys(table: pa.Table) -> pa.Table:
    """Add the WebDataset ``key`` column; keys must be unique within the version."""
    keys = [shards.sample_key(pair_id, split)
            for pair_id, split in zip(table.column("pair_id").to_pylist(), table.column("split").to_pylist())]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"sample key {duplicate!r} occurs twice in split_pairs (pair_id repeated within a split)")
    return table.append_column("key", pa.array(keys, pa.string()))


def _jpg_sizes(home: DataHome, table: pa.Table) -> dict[str, int]:
    """Size of every training JPEG referenced; unsafe keys, then missing files, are errors."""
    keys = {column: table.column(column).unique().to_pylist() for column in ("jpg_0_key", "jpg_1_key")}
    for column, values in keys.items():
        for rel in values:
            if not shards.jpg_key_is_safe(rel):
                raise ValueError(f"split_pairs.{column} value {rel!r} is not a safe path inside the data home")
    sizes: dict[str, int] = {}
    for column, values in keys.items():
        for rel in values:
            if rel in sizes:
                continue
            try:
                sizes[rel] = os.stat(home.root / rel).st_size
            except OSError as exc:
                raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column}) is missing: {exc}") from exc
    return sizes


def _meta_sources(home: DataHome) -> dict[str, list[Path]]:
    """Warehouse files the query snapshots are built from, sorted."""
    return {name: sorted(home.table_dir(name).glob("**/*.parquet"))
            for name in ("image_features", "decisions", "quarantine")}


def _version_id(table: pa.Table, source: Path, jpg_sizes: dict[str, int],
                meta_sources: dict[str, list[Path]], config: PublishConfig, warehouse: Path) -> str:
    """``<max dt>-<sha256[:10]>`` over the input bytes, JPEG sizes, config and format version."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    digest.update(json.dumps(config.output_fields(), sort_keys=True).encode())
    digest.update(b"split_pairs\0" + sha256_file(source).encode())
    for name, files in meta_sources.items():
        for path in files:
            digest.update(f"{name}\0{path.relative_to(warehouse)}\0".encode())
            digest.update(sha256_file(path).encode())
    for rel in sorted(jpg_sizes):
        digest.update(f"{rel}\0{jpg_sizes[rel]}\0".encode())
    max_dt = max(table.column("dt").to_pylist()).isoformat()
    return f"{max_dt}-{digest.hexdigest()[:10]}"


def _plan(home: DataHome, table: pa.Table, jpg_sizes: dict[str, int], staging: Path,
          config: PublishConfig) -> list[shards.ShardTask]:
    """One task per shard: each split shuffled (seeded), then cut into equal-count shards."""
    tasks = []
    config_text = json.dumps(config.output_fields(), sort_keys=True) + FORMAT_VERSION
    split_column = table.column("split")
    all_sample_bytes = shards.estimate_sample_bytes(table, jpg_sizes)
    for split in _splits_in(table):
        members = np.flatnonzero(pc.equal(split_column, split).to_numpy(zero_copy_only=False))
        order = members[shards.shuffle_order(table.column("key").take(pa.array(members)).to_pylist(), config.seed)]
        # one contiguous copy in shard order, column by column (a take from a chunked table
        # concatenates it on every call; a whole-table take is slower than its columns' takes)
        indices = pa.array(order)
        rows = pa.table({name: table.column(name).take(indices).combine_chunks() for name in table.column_names},
                        schema=table.schema)
        sample_bytes = all_sample_bytes[order]
        bounds = shards.plan_bounds(sample_bytes, config.max_samples_per_shard, config.max_shard_bytes,
                                    config.min_shards_per_split)
        for index, (start, stop) in enumerate(bounds):
            part = rows.slice(start, stop - start)  # zero-copy; ShardTask pickles only the slice
            digest = shards.plan_digest(part.column("key").to_pylist(),
                                        part.column("jpg_0_key").to_pylist() + part.column("jpg_1_key").to_pylist(),
                                        config_text)
            tasks.append(shards.ShardTask(split, index, str(staging / split), str(home.root), part, digest, config.fsync))
    return tasks


def _write_shards(tasks: list[shards.ShardTask], config: PublishConfig,
                  progress: Progress | None) -> tuple[list[dict], int]:
    """Run every shard task (a process pool unless ``workers == 1``); stats in plan order."""
    resumed = sum(1 for t in tasks if shards._committed_stats(
        Path(t.out_dir) / f"{shards.shard_name(t.split, t.index)}_stats.json", t.plan_sha256) is not None)
    workers = config.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks)))
    results: list[dict | None] = [None] * len(tasks)
    if workers == 1:
        for i, task in enumerate(tasks):
            results[i] = shards.write_shard(task)
            if progress:
                progress("shards", i + 1, len(tasks))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(shards.write_shard, task): i for i, task in enumerate(tasks)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    results[futures[future]] = future.result()
                if progress:
                    progress("shards", len(tasks) - len(pending), len(tasks))
    return [r for r in results if r is not None], resumed


# --- meta, manifest ---------------------------------------------------------------------------

def _write_meta(staging: Path, stats: list[dict], meta_sources: dict[str, list[Path]]) -> None:
    """Snapshot the query tables under ``meta/`` (no raw text, no emails)."""
    meta = staging / "meta"
    shard_rows = [{name: s[name] for name in get_schema("shards").names} for s in stats]
    shards_table = pa.Table.from_pylist(shard_rows, schema=get_schema("shards"))
    write_parquet_atomic(shards_table, meta / "shards.parquet", get_schema("shards"))
    views = {name: _glob_of(files) for name, files in meta_sources.items()}
    views["pairs"] = str(staging / "*" / "pickapic-*.parquet")
    views["shards"] = shards_table
    con = connect(views)
    try:
        for table_name, sql_name in (("images", "publish_images"), ("decisions", "publish_decisions"),
                                     ("quarantine", "publish_quarantine"), ("splits_summary", "publish_splits_summary")):
            result = run_sql(con, sql_name)
            write_parquet_atomic(result, meta / f"{table_name}.parquet", get_schema(META_SCHEMAS[table_name]))
    finally:
        con.close()


def _glob_of(files: list[Path]) -> str | pa.Table:
    """A view source for a list of warehouse files (their dataset's glob), or an empty marker."""
    if not files:
        return "/nonexistent-pickapic-empty/*.parquet"  # sqlrun registers the dataset's empty schema
    dataset_dir = next(p for p in files[0].parents if p.parent.name == "warehouse")
    return str(dataset_dir / "**" / "*.parquet")


def _write_manifest(staging: Path, version: str, table: pa.Table, stats: list[dict],
                    meta_sources: dict[str, list[Path]], config: PublishConfig) -> None:
    """``manifest.json``: counts, source partitions, config, contract versions, sha256 of every file."""
    known = {}
    for s in stats:
        split_dir = staging / s["split"]
        known[str((split_dir / s["shard"]).relative_to(staging))] = (s["num_bytes"], s["sha256"])
        known[str((split_dir / s["sidecar"]).relative_to(staging))] = (s["sidecar_bytes"], s["sidecar_sha256"])
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = str(path.relative_to(staging))
        if rel == "manifest.json":
            continue
        size, digest = known.get(rel) or (path.stat().st_size, sha256_file(path))
        files[rel] = {"bytes": size, "sha256": digest}
    splits = {}
    for split in _splits_in(table):
        split_stats = [s for s in stats if s["split"] == split]
        splits[split] = {"pairs": sum(s["num_samples"] for s in split_stats), "shards": len(split_stats),
                         "bytes": sum(s["num_bytes"] for s in split_stats)}
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    manifest = {
        "format": FORMAT_VERSION,
        "version": version,
        "splits": splits,
        "sources": {
            "split_pairs": {"days": days, "rows": table.num_rows},
            **{name: sorted(str(p.parent.name) for p in files) for name, files in meta_sources.items()},
        },
        "config": config.output_fields(),
        "contracts": _contract_versions(),
        "read_parquet": f"SELECT * FROM read_parquet('HOME/datasets/pickapic/{version}/*/pickapic-*.parquet')",
        "files": files,
    }
    write_bytes_atomic(staging / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _contract_versions() -> dict[str, str | None]:
    from data_contracts.engine import load_contract

    versions: dict[str, str | None] = {}
    for dataset in CONTRACT_DATASETS:
        try:
            versions[dataset] = load_contract(dataset).version
        except FileNotFoundError:
            versions[dataset] = None
    return versions


def _report(manifest: dict, path: Path, reused: bool, written: int, resumed: int, write_seconds: float,
            total_seconds: float, deleted: list[str]) -> PublishReport:
    splits = dict(sorted(manifest["splits"].items(), key=lambda item: shards.SPLITS.index(item[0])))
    return PublishReport(
        version=manifest["version"], path=path, reused=reused,
        pairs={s: v["pairs"] for s, v in splits.items()}, shards={s: v["shards"] for s, v in splits.items()},
        bytes={s: v["bytes"] for s, v in splits.items()}, shards_written=written, shards_resumed=resumed,
        write_seconds=write_seconds, total_seconds=total_seconds, deleted_versions=deleted)


# --- file system helpers ----------------------------------------------------------------------

@contextlib.contextmanager
def _publish_lock(home: DataHome) -> Iterator[None]:
    """One publish at a time per data home; a second one waits for the first."""
    with open(home.datasets / ".publish.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(path: Path, enabled: bool) -> None:
    if not enabled:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path, enabled: bool) -> None:
    """fsync every directory under ``root`` (files were fsynced as they were written)."""
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path, enabled)
