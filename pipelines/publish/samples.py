"""What a version holds, decided before anything is written: the sample table, its splits, the version id
and one task per shard of the content-stable plan (:mod:`pipelines.publish.plan`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.dataset import FORMAT_VERSION, SPLITS
from formats.files import cast_to_schema, sha256_file
from formats.home import DataHome
from pipelines.publish import datacard, jpgdigests, shards
from pipelines.publish import plan as shardplan
from pipelines.publish.config import PublishConfig
from pipelines.publish.contracts import contracts_text
from schemas.publish import SAMPLE_COLUMNS


def splits_in(table: pa.Table) -> list[str]:
    present = set(table.column("split").unique().to_pylist())
    unknown = sorted(present - set(SPLITS))
    if unknown:
        raise ValueError(f"split_pairs has unknown split values {unknown}; expected {list(SPLITS)}")
    return [s for s in SPLITS if s in present]


def with_keys(table: pa.Table) -> pa.Table:
    """Add the WebDataset ``key`` column; keys must be unique within the version."""
    keys = [shards.sample_key(pair_id, split)
            for pair_id, split in zip(table.column("pair_id").to_pylist(), table.column("split").to_pylist())]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"sample key {duplicate!r} occurs twice in split_pairs (pair_id repeated within a split)")
    return table.append_column("key", pa.array(keys, pa.string()))


def sample_table(table: pa.Table, jpgs: jpgdigests.JpgIndex) -> pa.Table:
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


def day_volumes(home: DataHome) -> dict[str, int]:
    """Rankings the app logged on each export day: ``YYYY-MM-DD`` -> lines of that day's raw rankings
    export (``lines_in`` of the ``rankings`` rows of its ``ingest_files`` partition). It sets the day's
    shard sizes (:func:`pipelines.publish.plan.anchor_rates`) and nothing after the export changes it:
    not curation, not a late image that lets a quarantined ranking in. A home without ingest records
    (a split table imported on its own) has none: each split then counts its own samples of the day."""
    out: dict[str, int] = {}
    root = home.table_dir("ingest_files")
    # only day folders: a copied ``dt=DAY.bak`` would be a day named "DAY.bak" (review rev25i's glob, fix25i),
    # and only calendar days: ``dt=2023-02-30`` is none (review rev31k)
    for day in home.partition_days("ingest_files"):
        folder = root / f"dt={day}"
        files = sorted(folder.glob("*.parquet"))
        if not files:
            continue
        table = pa.concat_tables(pq.ParquetFile(path).read(columns=["table", "lines_in"]) for path in files)
        lines = table.filter(pc.equal(table.column("table"), "rankings")).column("lines_in")
        if len(lines) and not lines.null_count:   # a null is outside the contract: no volume rather than 0
            out[day] = int(pc.sum(lines).as_py())
    return out


def meta_sources(home: DataHome) -> dict[str, list[Path]]:
    """Warehouse files the query snapshots and the dataset card are built from, sorted: the day partitions'
    files of ``image_features`` and ``quarantine`` (``dt=YYYY-MM-DD/*.parquet`` of the calendar days, as every
    reader of a daily table: :meth:`DataHome.table_files`) and the one file of ``decisions`` and
    ``split_rejects``. A stray Parquet file elsewhere in those folders (``old.parquet``, a ``backup/`` or
    ``dt=DAY.bak/`` copy) is not read: with ``**/*.parquet`` it went into the snapshots and the version's
    ``sources`` (review rev25i, noted by fix25i); nor is a ``dt=2023-02-30/`` folder's (no calendar date: it
    shipped as ``meta/images/images-2023-02-30.parquet``, review rev31k)."""
    out: dict[str, list[Path]] = {}
    for name in ("image_features", "quarantine"):
        out[name] = home.table_files(name)
    for name in ("decisions", "split_rejects"):
        path = home.table_file(name)
        out[name] = [path] if path.is_file() else []
    return {name: out[name] for name in ("image_features", "decisions", "quarantine", "split_rejects")}


def source_digests(home: DataHome, meta_sources: dict[str, list[Path]]) -> dict[str, dict[str, str]]:
    """sha256 of every warehouse file the snapshots are built from: dataset -> {path in the dataset: sha256}."""
    return {name: {str(path.relative_to(home.table_dir(name))): sha256_file(path) for path in files}
            for name, files in meta_sources.items()}


def version_id(table: pa.Table, split_pairs_sha256: str, jpgs: jpgdigests.JpgIndex,
               sources: dict[str, dict[str, str]], config: PublishConfig, contracts: dict[str, str | None]) -> str:
    """``<max dt>-<sha256[:10]>`` over the input bytes (``split_pairs_sha256``: the sha256 of the ``split_pairs``
    bytes ``table`` was read from), the JPEGs' sizes and sha256s, config, format version, the card's code version
    (:data:`pipelines.publish.datacard.CARD_VERSION`: a card written by other code is another version, review rev31d),
    the versions of the data contracts the version is gated by (``contracts``:
    :func:`pipelines.publish.contracts.contract_versions`: a version checked against other rules, whose manifest
    records them, is another version, review rev36e) and the versions of the libraries that write its bytes (``plan.WRITERS``)."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{shardplan.WRITERS}\0card {datacard.CARD_VERSION}".encode())
    digest.update(json.dumps(config.output_fields(), sort_keys=True).encode())
    digest.update(b"contracts\0" + contracts_text(contracts).encode())
    digest.update(b"split_pairs\0" + split_pairs_sha256.encode())
    for name, files in sources.items():
        for rel, sha in files.items():
            digest.update(f"{name}\0{rel}\0{sha}\0".encode())
    jpgs.digest_update(digest)
    max_dt = max(table.column("dt").to_pylist()).isoformat()
    return f"{max_dt}-{digest.hexdigest()[:10]}"


def plan_tasks(home: DataHome, samples: pa.Table, jpgs: jpgdigests.JpgIndex, staging: Path,
               config: PublishConfig, volumes: dict[str, int]) -> list[shards.ShardTask]:
    """One task per shard of the content-stable plan (:mod:`pipelines.publish.plan`), with its digest.

    ``volumes``: :func:`day_volumes` as the version id saw them (read once, so the same id always
    means the same shards)."""
    tasks = []
    split_column = samples.column("split")
    at = [jpgs.positions(samples.column(f"jpg_{side}_key")) for side in (0, 1)]
    all_sample_bytes = shards.estimate_sample_bytes(samples, jpgs.sizes[at[0]], jpgs.sizes[at[1]])
    # each row's two JPEG identities (when the digests were taken), checked by the writer
    all_identities = (np.concatenate([jpgs.identities[at[0]], jpgs.identities[at[1]]], axis=1)
                      if jpgs.identities is not None else None)
    segment_volumes = {day.replace("-", ""): count for day, count in volumes.items()}
    for split in splits_in(samples):
        members = np.flatnonzero(pc.equal(split_column, split).to_numpy(zero_copy_only=False))
        part = _take(samples, pa.array(members))
        part_digests = shards.json_digests(part)     # each sample's JSON digest: the shard names are made of them
        indices, plans = shardplan.plan_split(
            part, split, all_sample_bytes[members], max_samples=config.max_samples_per_shard,
            max_bytes=config.max_shard_bytes, min_shards=config.min_shards_per_split, seed=config.seed,
            shards_per_day=config.shards_per_day, min_shard_bytes=config.min_shard_bytes, day_volume=segment_volumes,
            row_digests=part_digests)
        rows = _take(part, indices)
        identities = all_identities[members[indices.to_numpy()]] if all_identities is not None else None
        digests = np.asarray(part_digests, dtype=object)[indices.to_numpy()].tolist()
        keys = rows.column("key").to_pylist()
        for plan in plans:
            digest = shardplan.plan_digest(plan.name, keys[plan.start:plan.stop], digests[plan.start:plan.stop])
            part_rows = rows.slice(plan.start, plan.stop - plan.start)  # zero-copy; a task pickles only its slice
            tasks.append(shards.ShardTask(split, plan.name, str(staging / split), str(home.root), part_rows, digest,
                                          config.fsync, config.fsync and config.direct_io,
                                          identities[plan.start:plan.stop] if identities is not None else None))
    return tasks


def _take(table: pa.Table, indices: pa.Array) -> pa.Table:
    """Rows ``indices`` as one contiguous copy, column by column (a take from a chunked table
    concatenates it on every call; a whole-table take is slower than its columns' takes)."""
    return pa.table({name: table.column(name).take(indices).combine_chunks() for name in table.column_names},
                    schema=table.schema)
