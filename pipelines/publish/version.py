"""Publish a dataset version: shards + sidecars, query snapshots, manifest, atomic ``latest`` switch.

Layout of ``HOME/datasets/pickapic/``::

    <version>/<split>/pickapic-<split>-<segment>-<digest>.{tar,parquet,_stats.json}
    <version>/<split>/sizes.json, prompt_counts.parquet
    <version>/meta/{shards,decisions,quarantine,splits_summary}.parquet, meta/images/images-<day>.parquet
    <version>/README.md              dataset card (Hugging Face ``configs`` + datasheet)
    <version>/manifest.json          counts, sources, config, contract versions, sha256 of every file
    latest -> <version>              a relative symlink, replaced with os.replace

The version id is ``<max dt>-<sha256[:10] of inputs + config>``: equal inputs give the same
version and byte-identical files. Shards are content-stable (:mod:`pipelines.publish.plan`): a shard
whose planned content equals a shard of an older complete version is hard-linked from it (copied
across file systems) with its sidecar and stats, so a nightly version writes only new and changed
shards and older versions share the rest of their bytes. A version is written under
``.partial-<version>`` (hidden: no glob or reader sees it), verified, renamed into place, and only
then does ``latest`` move. Older versions beyond ``keep_versions`` are deleted after the switch
(deleting a name never touches a newer version's links). A crash leaves the previous ``latest``
untouched; the rerun resumes from the shards whose stats were committed.

Readers resolve ``latest`` once (:func:`resolve_version`) and read through the resolved path, so
a switch during a read never mixes versions. Plain DuckDB over every sidecar of ``latest``::

    SELECT * FROM read_parquet('HOME/datasets/pickapic/latest/*/pickapic-*.parquet');

(the ``pickapic-*`` part keeps ``meta/*.parquet`` out of the glob).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_contracts.engine import evaluate, load_contract
from formats.dataset import (
    FORMAT_VERSION,
    LATEST,
    MANIFEST_FILE,
    PROMPT_COUNTS_FILE,
    SIZES_FILE,
    SPLITS,
    list_versions,
    shard_paths,
    sidecar_glob,
    sizes_json,
)
from formats.files import cast_to_schema, sha256_file, write_bytes_atomic, write_parquet_atomic
from formats.home import DataHome
from formats.settings import check_fields, knob
from pipelines import faults
from pipelines.publish import datacard, jpgdigests, shards
from pipelines.publish import plan as shardplan
from pipelines.splits.assign import require_trainable
from pipelines.sqlrun import connect, run_sql, sql_text
from schemas import get_schema
from schemas.publish import SAMPLE_COLUMNS

META_TABLES = ("shards", "images", "decisions", "quarantine", "splits_summary")
META_SCHEMAS = {"shards": "shards", "images": "image_features", "decisions": "decisions",
                "quarantine": "published_quarantine", "splits_summary": "splits_summary"}
CONTRACT_DATASETS = ("split_pairs", "shard_samples", "prompt_counts", "shards", "splits_summary", "image_features",
                     "decisions", "published_quarantine")
LINK_FALLBACK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class PublishConfig:
    """Knobs of the publish stage (the ones marked 'output' change the version id)."""

    seed: int = knob(42, "salt of the content-defined shard boundaries")
    max_samples_per_shard: int = knob(10_000, "most samples in one shard", min=1)
    max_shard_bytes: int = knob(256 * 1024 * 1024, "most tar bytes in one shard", min=1)
    min_shards_per_split: int = knob(4, "least shards per split (when it has that many samples), for GPUs x loader "
                                        "workers", min=1)
    keep_versions: int = knob(3, "complete versions kept; older ones are deleted after the switch", min=1, output=False)
    workers: int = knob(0, "shard writer processes; 0 = one per CPU, 1 = in-process", min=0, output=False)
    fsync: bool = knob(True, "fsync every file before it is renamed into place", output=False)
    verify_checksums: bool = knob(False, "re-read every file and compare its sha256 with the manifest before "
                                         "switching latest", output=False)
    reuse_shards: bool = knob(True, "hard-link shards whose content is unchanged from an older version (false: "
                                    "write every shard)", output=False)

    def __post_init__(self) -> None:
        check_fields(self)

    def output_fields(self) -> dict:
        """The fields that change the bytes written (they go into the version id)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("output")}

    def worker_count(self) -> int:
        """Processes (and hashing threads) to use."""
        return self.workers or os.cpu_count() or 1


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
    shards_linked: int = 0           # hard-linked (or copied) unchanged from an older version
    bytes_written: int = 0           # tar + sidecar bytes of the shards written by this run
    jpgs_hashed: int = 0             # training JPEGs read to learn their sha256 (not in the digest cache)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def mb_per_s(self) -> float:
        """Shard bytes written per second of shard writing (0 when nothing was written)."""
        return self.bytes_written / 1e6 / self.write_seconds if self.shards_written and self.write_seconds > 0 else 0.0

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
            "shards_linked": self.shards_linked,
            "shards_resumed": self.shards_resumed,
            "bytes_written": self.bytes_written,
            "jpgs_hashed": self.jpgs_hashed,
            "write_mb_per_s": round(self.mb_per_s, 1),
            "write_seconds": round(self.write_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "deleted_versions": list(self.deleted_versions),
            "splits": "| split | pairs | shards | MB |\n|---|---|---|---|\n" + rows,
        }


@dataclass
class _Written:
    """What the shard phase did."""

    stats: list[dict]
    resumed: int = 0
    linked: int = 0
    written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


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
    _splits_in(table)
    jpgs = jpgdigests.index_jpgs(home, {c: table.column(c) for c in ("jpg_0_key", "jpg_1_key")},
                                 workers=config.worker_count())
    meta_sources = _meta_sources(home)
    sources = _source_digests(home, meta_sources)
    version = _version_id(table, source, jpgs, sources, config)

    home.datasets.mkdir(parents=True, exist_ok=True)
    with _publish_lock(home):
        final = home.datasets / version
        if (final / MANIFEST_FILE).is_file():
            manifest = verify_version(final, checksums=config.verify_checksums)
            os.utime(final)  # counts as the newest version for retention
            switch_latest(home, version)
            deleted = apply_retention(home, config.keep_versions)
            return _report(manifest, final, True, _Written([]), time.perf_counter() - started, deleted, jpgs.hashed)
        for stale in home.datasets.glob(".partial-*"):
            if stale.name != f".partial-{version}":
                shutil.rmtree(stale)
        for stale in home.datasets.glob(".deleting-*"):
            shutil.rmtree(stale)
        staging = home.datasets / f".partial-{version}"
        staging.mkdir(exist_ok=True)
        for leftover in sorted(staging.rglob(".*"), reverse=True):  # temp files of a writer killed mid-write
            leftover.unlink()
        try:
            written = _stage_version(home, table, jpgs, meta_sources, sources, staging, version, config, progress)
        except BaseException as exc:
            _clean_failed_staging(staging)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "no space left on device at" not in str(exc):
                raise shards.no_space_error(exc, Path(exc.filename) if exc.filename else staging) from exc
            raise
        faults.maybe_crash("publish.before_rename")  # tests: staged version complete, not in place
        os.rename(staging, final)
        _fsync_dir(home.datasets, config.fsync)
        faults.maybe_crash("publish.before_switch")  # tests: version in place, latest not switched
        switch_latest(home, version)
        deleted = apply_retention(home, config.keep_versions)
        manifest = json.loads((final / MANIFEST_FILE).read_text(encoding="utf-8"))
    return _report(manifest, final, False, written, time.perf_counter() - started, deleted, jpgs.hashed)


def _stage_version(home: DataHome, table: pa.Table, jpgs: jpgdigests.JpgIndex, meta_sources: dict[str, list[Path]],
                   sources: dict[str, dict[str, str]], staging: Path, version: str, config: PublishConfig,
                   progress: Progress | None) -> _Written:
    """Write every file of ``version`` into ``staging``, verified and checked against its contracts."""
    tasks = _plan(home, _sample_table(table, jpgs), jpgs, staging, config)
    previous = _previous_versions(home, version) if config.reuse_shards else []
    written = _write_shards(tasks, previous, config, progress)
    faults.maybe_crash("publish.after_shards")  # tests: every shard committed, no manifest

    for split in _splits_in(table):
        sizes = {s["shard"]: s["num_samples"] for s in written.stats if s["split"] == split}
        write_bytes_atomic(staging / split / SIZES_FILE, sizes_json(sizes))
        write_parquet_atomic(prompt_counts(table, split), staging / split / PROMPT_COUNTS_FILE, get_schema("prompt_counts"))
    plans = _write_meta(staging, written.stats, meta_sources, sources["image_features"], previous, config.fsync)
    datacard.write_card(staging, version, _splits_in(table), _card_sources(table, meta_sources))
    _write_manifest(staging, version, table, written.stats, sources, plans, config)
    verify_version(staging, checksums=config.verify_checksums)
    check_contracts(staging)
    _fsync_tree(staging, config.fsync)
    return written


def switch_latest(home: DataHome, version: str) -> None:
    """Point ``latest`` at ``version`` atomically (a temp symlink renamed over the old one)."""
    link = home.datasets / LATEST
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
    link = home.datasets / LATEST
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
    manifest_path = path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    expected = manifest["files"]
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()} - {MANIFEST_FILE}
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
        "shard_samples": sidecar_glob(path),
        "prompt_counts": str(path / "*" / PROMPT_COUNTS_FILE),
        "shards": str(path / "meta" / "shards.parquet"),
        "splits_summary": str(path / "meta" / "splits_summary.parquet"),
        "published_quarantine": str(path / "meta" / "quarantine.parquet"),
    }


def check_contracts(path: Path) -> None:
    """Evaluate the blocking contract rules of a version's datasets; raise naming every failure."""
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
    unknown = sorted(present - set(SPLITS))
    if unknown:
        raise ValueError(f"split_pairs has unknown split values {unknown}; expected {list(SPLITS)}")
    return [s for s in SPLITS if s in present]


def _with_keys(table: pa.Table) -> pa.Table:
    """Add the WebDataset ``key`` column; keys must be unique within the version."""
    keys = [shards.sample_key(pair_id, split)
            for pair_id, split in zip(table.column("pair_id").to_pylist(), table.column("split").to_pylist())]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"sample key {duplicate!r} occurs twice in split_pairs (pair_id repeated within a split)")
    return table.append_column("key", pa.array(keys, pa.string()))


def _sample_table(table: pa.Table, jpgs: jpgdigests.JpgIndex) -> pa.Table:
    """The published sample columns (``SAMPLE_COLUMNS``, with each JPEG's own sha256) plus ``key``."""
    columns = {name: table.column(name) for name in SAMPLE_COLUMNS.names if name in table.column_names}
    for side in ("0", "1"):
        columns[f"jpg_{side}_sha256"] = jpgs.sha256.take(pa.array(jpgs.positions(table.column(f"jpg_{side}_key"))))
    samples = cast_to_schema(pa.table(columns), SAMPLE_COLUMNS)
    return samples.append_column("key", table.column("key"))


def prompt_counts(table: pa.Table, split: str) -> pa.Table:
    """``num_example_per_prompt`` of every prompt_key of ``split`` (it must be one value per prompt)."""
    rows = table.filter(pc.equal(table.column("split"), split))
    grouped = rows.group_by("prompt_key").aggregate([("num_example_per_prompt", "min"), ("num_example_per_prompt", "max")])
    differ = pc.not_equal(grouped.column("num_example_per_prompt_min"), grouped.column("num_example_per_prompt_max"))
    if pc.any(differ).as_py():
        bad = grouped.filter(differ).column("prompt_key")[0].as_py()
        raise ValueError(f"split_pairs: prompt_key {bad!r} has different num_example_per_prompt values in split {split!r}")
    grouped = grouped.take(pc.sort_indices(grouped, sort_keys=[("prompt_key", "ascending")]))
    return pa.table({"split": pa.array([split] * grouped.num_rows, pa.string()),
                     "prompt_key": grouped.column("prompt_key"),
                     "num_example_per_prompt": grouped.column("num_example_per_prompt_min")})


def _meta_sources(home: DataHome) -> dict[str, list[Path]]:
    """Warehouse files the query snapshots and the dataset card are built from, sorted."""
    return {name: sorted(home.table_dir(name).glob("**/*.parquet"))
            for name in ("image_features", "decisions", "quarantine", "split_rejects")}


def _source_digests(home: DataHome, meta_sources: dict[str, list[Path]]) -> dict[str, dict[str, str]]:
    """sha256 of every warehouse file the snapshots are built from: dataset -> {path in the dataset: sha256}."""
    return {name: {str(path.relative_to(home.table_dir(name))): sha256_file(path) for path in files}
            for name, files in meta_sources.items()}


def _version_id(table: pa.Table, source: Path, jpgs: jpgdigests.JpgIndex,
                sources: dict[str, dict[str, str]], config: PublishConfig) -> str:
    """``<max dt>-<sha256[:10]>`` over the input bytes, the JPEGs' sizes and sha256s, config and format version."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    digest.update(json.dumps(config.output_fields(), sort_keys=True).encode())
    digest.update(b"split_pairs\0" + sha256_file(source).encode())
    for name, files in sources.items():
        for rel, sha in files.items():
            digest.update(f"{name}\0{rel}\0{sha}\0".encode())
    jpgs.digest_update(digest)
    max_dt = max(table.column("dt").to_pylist()).isoformat()
    return f"{max_dt}-{digest.hexdigest()[:10]}"


def _plan(home: DataHome, samples: pa.Table, jpgs: jpgdigests.JpgIndex, staging: Path,
          config: PublishConfig) -> list[shards.ShardTask]:
    """One task per shard of the content-stable plan (:mod:`pipelines.publish.plan`), with its digest."""
    tasks = []
    split_column = samples.column("split")
    all_sample_bytes = shards.estimate_sample_bytes(samples, jpgs.sizes[jpgs.positions(samples.column("jpg_0_key"))],
                                                    jpgs.sizes[jpgs.positions(samples.column("jpg_1_key"))])
    for split in _splits_in(samples):
        members = np.flatnonzero(pc.equal(split_column, split).to_numpy(zero_copy_only=False))
        part = _take(samples, pa.array(members))
        indices, plans = shardplan.plan_split(
            part, split, all_sample_bytes[members], max_samples=config.max_samples_per_shard,
            max_bytes=config.max_shard_bytes, min_shards=config.min_shards_per_split, seed=config.seed)
        rows = _take(part, indices)
        digests = shards.json_digests(rows)
        keys = rows.column("key").to_pylist()
        for plan in plans:
            digest = shardplan.plan_digest(plan.name, keys[plan.start:plan.stop], digests[plan.start:plan.stop])
            part_rows = rows.slice(plan.start, plan.stop - plan.start)  # zero-copy; a task pickles only its slice
            tasks.append(shards.ShardTask(split, plan.name, str(staging / split), str(home.root), part_rows, digest,
                                          config.fsync))
    return tasks


def _take(table: pa.Table, indices: pa.Array) -> pa.Table:
    """Rows ``indices`` as one contiguous copy, column by column (a take from a chunked table
    concatenates it on every call; a whole-table take is slower than its columns' takes)."""
    return pa.table({name: table.column(name).take(indices).combine_chunks() for name in table.column_names},
                    schema=table.schema)


# --- shards: resume, reuse, write ---------------------------------------------------------------

def _previous_versions(home: DataHome, version: str) -> list[Path]:
    """Complete versions to reuse shards from: the one ``latest`` names first, then newest first."""
    link = home.datasets / LATEST
    current = os.readlink(link) if link.is_symlink() else None
    names = [v for v in reversed(list_versions(home)) if v != version]
    if current in names:
        names.remove(current)
        names.insert(0, current)
    return [home.datasets / name for name in names]


def _reusable(task: shards.ShardTask, previous: list[Path]) -> Path | None:
    """The stats file of an identical, intact shard in an older version, if there is one."""
    for version_dir in previous:
        stats_path = shard_paths(version_dir / task.split, task.name)[2]
        if shards._committed_stats(stats_path, task.plan_sha256) is not None:
            return stats_path
    return None


def _link_shard(stats_path: Path, task: shards.ShardTask, fsync: bool) -> dict:
    """Hard-link (or copy) a shard's tar, sidecar and stats (last: the commit marker) into the staging folder."""
    Path(task.out_dir).mkdir(parents=True, exist_ok=True)
    for source, target in zip(shard_paths(stats_path.parent, task.name), task.paths()):
        link_or_copy(source, target, fsync)
    return json.loads(stats_path.read_text(encoding="utf-8"))


def link_or_copy(source: Path, target: Path, fsync: bool = True) -> bool:
    """Make ``target`` a hard link to ``source`` (a copy where the file system refuses); True if linked.

    The link is made under a temporary name and renamed, so ``target`` is never half there and no
    existing file is written into.
    """
    if target.exists() and os.path.samefile(source, target):
        return True
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    linked = True
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in LINK_FALLBACK_ERRORS:
            raise
        linked = False
        shutil.copyfile(source, tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
    os.replace(tmp, target)
    return linked


def _write_shards(tasks: list[shards.ShardTask], previous: list[Path], config: PublishConfig,
                  progress: Progress | None) -> _Written:
    """Resume committed shards, link unchanged ones, write the rest (a process pool unless ``workers == 1``)."""
    results: list[dict | None] = [None] * len(tasks)
    out = _Written([])
    todo = []
    for i, task in enumerate(tasks):
        committed = shards._committed_stats(task.paths()[2], task.plan_sha256)
        if committed is not None:
            results[i], out.resumed = committed, out.resumed + 1
            continue
        source = _reusable(task, previous)
        if source is not None:
            results[i], out.linked = _link_shard(source, task, config.fsync), out.linked + 1
            faults.maybe_crash("publish.after_link")  # tests: die with some unchanged shards linked
            continue
        todo.append(i)
    done = len(tasks) - len(todo)
    if progress:
        progress("shards", done, len(tasks))
    started = time.perf_counter()
    workers = max(1, min(config.worker_count(), len(todo)))
    if workers == 1:
        for i in todo:
            results[i] = shards.write_shard(tasks[i])
            done += 1
            if progress:
                progress("shards", done, len(tasks))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(shards.write_shard, tasks[i]): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    results[futures[future]] = future.result()
                if progress:
                    progress("shards", done + len(todo) - len(pending), len(tasks))
    out.seconds = time.perf_counter() - started
    out.written = len(todo)
    out.bytes_written = sum(results[i]["num_bytes"] + results[i]["sidecar_bytes"] for i in todo)
    out.stats = [r for r in results if r is not None]
    return out


def _clean_failed_staging(staging: Path) -> None:
    """After a failed (not killed) publish: drop temporary files and shard files without a commit marker.

    Committed shards stay, so the rerun resumes from them; everything else would be rewritten anyway
    and only holds disk space (which may be what ran out).
    """
    shards.remove_temporary_files(staging)
    for tar in staging.glob("*/*.tar"):
        tar_path, sidecar_path, stats_path = shard_paths(tar.parent, tar.name[: -len(".tar")])
        if not stats_path.exists():
            for path in (tar_path, sidecar_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


# --- meta, card, manifest -------------------------------------------------------------------------

def _write_meta(staging: Path, stats: list[dict], meta_sources: dict[str, list[Path]],
                image_sources: dict[str, str] | None = None, previous: list[Path] = (), fsync: bool = True) -> dict[str, str]:
    """Snapshot the query tables under ``meta/`` (no raw text, no emails); return the images files' plan digests.

    ``images`` is one file per export day (``meta/images/images-<day>.parquet``, from that day's
    features partition): a day whose partition is unchanged is hard-linked from an older version, so
    the snapshot of a growing history costs a nightly version only its new day.
    """
    meta = staging / "meta"
    ordered = sorted(stats, key=lambda s: (SPLITS.index(s["split"]), s["shard"]))
    shard_rows = []
    for s in ordered:
        index = sum(1 for r in shard_rows if r["split"] == s["split"])
        shard_rows.append({**{n: s[n] for n in get_schema("shards").names if n != "shard_index"}, "shard_index": index})
    shards_table = pa.Table.from_pylist(shard_rows, schema=get_schema("shards")) if shard_rows else \
        get_schema("shards").empty_table()
    write_parquet_atomic(shards_table, meta / "shards.parquet", get_schema("shards"))
    if image_sources is None:
        image_sources = {str(p.relative_to(p.parent.parent)): sha256_file(p) for p in meta_sources["image_features"]}
    plans = _write_image_snapshots(meta / "images", meta_sources["image_features"], image_sources, list(previous), fsync)
    views = {name: _glob_of(files) for name, files in meta_sources.items() if name not in ("split_rejects", "image_features")}
    views["pairs"] = sidecar_glob(staging)
    views["shards"] = shards_table
    con = connect(views)
    try:
        for table_name, sql_name in (("decisions", "publish_decisions"), ("quarantine", "publish_quarantine"),
                                     ("splits_summary", "publish_splits_summary")):
            result = run_sql(con, sql_name)
            write_parquet_atomic(result, meta / f"{table_name}.parquet", get_schema(META_SCHEMAS[table_name]))
    finally:
        con.close()
    return plans


def _write_image_snapshots(folder: Path, files: list[Path], digests: dict[str, str], previous: list[Path],
                           fsync: bool) -> dict[str, str]:
    """``images-<day>.parquet`` per features partition, linked from an older version when its plan is equal."""
    sql = sql_text("publish_images")
    earlier = [(version_dir, _manifest_plans(version_dir)) for version_dir in previous]
    plans = {}
    for path in files or [None]:
        day = path.parent.name.removeprefix("dt=") if path is not None else "none"
        name = f"images-{day}.parquet"
        rel = f"meta/images/{name}"
        source = digests[str(path.relative_to(path.parent.parent))] if path is not None else ""
        plans[rel] = hashlib.sha256(f"{FORMAT_VERSION}\0{rel}\0{source}\0{sql}".encode()).hexdigest()
        target = folder / name
        match = next((d / rel for d, p in earlier if p.get(rel) == plans[rel] and (d / rel).is_file()), None)
        if match is not None:
            folder.mkdir(parents=True, exist_ok=True)
            link_or_copy(match, target, fsync)
            continue
        con = connect({"image_features": str(path) if path is not None else "/nonexistent-pickapic-empty/*.parquet"})
        try:
            write_parquet_atomic(run_sql(con, "publish_images"), target, get_schema("image_features"))
        finally:
            con.close()
    return plans


def _manifest_plans(version_dir: Path) -> dict[str, str]:
    """The plan digests recorded in a complete version's manifest (empty for older formats)."""
    try:
        manifest = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest.get("plans", {}) if manifest.get("format") == FORMAT_VERSION else {}


def _glob_of(files: list[Path]) -> str | pa.Table:
    """A view source for a list of warehouse files (their dataset's glob), or an empty marker."""
    if not files:
        return "/nonexistent-pickapic-empty/*.parquet"  # sqlrun registers the dataset's empty schema
    dataset_dir = next(p for p in files[0].parents if p.parent.name == "warehouse")
    return str(dataset_dir / "**" / "*.parquet")


def _card_sources(table: pa.Table, meta_sources: dict[str, list[Path]]) -> datacard.CardSources:
    """What the dataset card counts, beyond the version's own meta tables."""
    rejects = meta_sources.get("split_rejects") or []
    reasons: dict[str, int] = {}
    if rejects:
        column = pq.read_table(rejects, columns=["reason"], partitioning=None).column("reason")
        reasons = {item["values"]: item["counts"] for item in column.value_counts().to_pylist()}
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    return datacard.CardSources(days=days, split_rejects=dict(sorted(reasons.items())))


def _write_manifest(staging: Path, version: str, table: pa.Table, stats: list[dict],
                    sources: dict[str, dict[str, str]], plans: dict[str, str], config: PublishConfig) -> None:
    """``manifest.json``: counts, source partitions, config, contract versions, sha256 of every file."""
    known = {}
    for s in stats:
        split_dir = staging / s["split"]
        known[str((split_dir / s["shard"]).relative_to(staging))] = (s["num_bytes"], s["sha256"])
        known[str((split_dir / s["sidecar"]).relative_to(staging))] = (s["sidecar_bytes"], s["sidecar_sha256"])
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = str(path.relative_to(staging))
        if rel == MANIFEST_FILE:
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
            **{name: dict(sorted(files.items())) for name, files in sources.items()},
        },
        "plans": dict(sorted(plans.items())),
        "config": config.output_fields(),
        "contracts": _contract_versions(),
        "read_parquet": f"SELECT * FROM read_parquet('{sidecar_glob('HOME/datasets/pickapic/' + version)}')",
        "files": files,
    }
    write_bytes_atomic(staging / MANIFEST_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _contract_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dataset in CONTRACT_DATASETS:
        try:
            versions[dataset] = load_contract(dataset).version
        except FileNotFoundError:
            versions[dataset] = None
    return versions


def _report(manifest: dict, path: Path, reused: bool, written: _Written, total_seconds: float,
            deleted: list[str], jpgs_hashed: int) -> PublishReport:
    splits = dict(sorted(manifest["splits"].items(), key=lambda item: SPLITS.index(item[0])))
    return PublishReport(
        version=manifest["version"], path=path, reused=reused,
        pairs={s: v["pairs"] for s, v in splits.items()}, shards={s: v["shards"] for s, v in splits.items()},
        bytes={s: v["bytes"] for s, v in splits.items()}, shards_written=written.written,
        shards_resumed=written.resumed, write_seconds=written.seconds, total_seconds=total_seconds,
        deleted_versions=deleted, shards_linked=written.linked, bytes_written=written.bytes_written,
        jpgs_hashed=jpgs_hashed)


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
