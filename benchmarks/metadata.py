"""Metadata stages at Pick-a-Pic scale: ingest, curation, splits and sidecars on simulated rankings.

    .venv/bin/python -m benchmarks.metadata [--rankings 1000000] [--days 10] [--dir DIR] [--json-out F]

1. Setup (timed, not part of the goal): ``pickapic simulate --no-images`` (the same ``simulate`` call)
   writes ``--days`` days with ``--rankings`` rankings in all; then, because there are no image blobs,
   an ``image_features`` partition is synthesized per day for every ingested image: sha256, pHash and
   dHash are random (seeded digests of the uid, so there are no duplicates), no NSFW detection, a
   512x512 training JPEG key that does not exist; ``image_rejects`` partitions are empty. The
   simulator's planted-duplicate ground truth is removed (it describes image bytes that do not exist).
2. Measured, each stage exactly as the pipeline runs it: ``ingest_day`` per day; curation =
   ``build_clusters`` (dedup) + ``build_decisions`` + ``build_pairs``; ``build_splits``; sidecars =
   the publish stage without image bytes: sample keys, the content-stable shard plan with its
   per-sample JSON digests (``samples.with_keys`` / ``samples.plan_tasks``), then per shard the per-sample JSON and the Parquet
   sidecar with the member offsets a tar would have (``shards.sample_json``,
   JPEG sizes from the features table; no tar written), one process per CPU, and the query snapshots
   under ``meta/`` (``meta.write_meta``). Tar writing is measured by ``benchmarks.shards``.
3. Baselines, in the same run: ingest vs a bare single-process ``gzip`` + ``json.loads`` of the same raw
   lines; each DuckDB stage vs reading its input Parquet files into Arrow; sidecars vs writing the
   same ``split_pairs`` rows as one Parquet file.
Goal: the measured stages together under 120 s for 1M rankings on this 2-core machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import claim, report, work_folder
from formats import dataset
from formats.files import PARQUET_OPTIONS, cast_to_schema, write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.decisions import build_decisions, build_pairs
from pipelines.curation.dedup import PHASH_DC_BIT, build_clusters
from pipelines.ingest.day import ingest_day
from pipelines.publish import jpgdigests, meta, samples, shards
from pipelines.publish.config import PublishConfig
from pipelines.splits.assign import build_splits
from schemas import get_schema
from simulator import SimConfig, simulate

GOAL_SECONDS = 120.0
RAW_TABLES = ("users", "images", "rankings", "downloads")
TRAIN_JPG_BYTES = 50_000
_JPG_SIZES: dict[str, int] = {}   # set before the sidecar workers fork


def sim_config(rankings: int, days: int, users: int | None, seed: int) -> SimConfig:
    """The simulator config for ``rankings`` rankings over ``days`` days, metadata only."""
    per_day = max(10, rankings // days)
    return SimConfig(days=days, rankings_per_day=per_day, users=users or max(40, rankings // 50),
                     seed=seed, no_images=True)


def synthesize_features(home: DataHome, day: str, seed: int = 0) -> int:
    """Write ``image_features`` (random hashes, no NSFW) and an empty ``image_rejects`` for ``day``."""
    images = pq.read_table(home.partition_file("images", day), columns=["image_uid", "blob_path"])
    n = images.num_rows
    salt = f"bench-features:{seed}:".encode()
    digests = [hashlib.blake2b(salt + uid.encode(), digest_size=32).digest()
               for uid in images.column("image_uid").to_pylist()]
    sha = [d.hex() for d in digests]
    packed = np.frombuffer(b"".join(d[:16] for d in digests), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    schema = get_schema("image_features")
    nsfw_type = schema.field("nsfw_max").type
    zeros = pa.array(np.zeros(n, dtype=np.float32))
    detections_type = schema.field("nsfw_detections").type
    empty_lists = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)),
                                           pa.array([], type=detections_type.value_type))
    table = pa.table({
        "image_uid": images.column("image_uid"),
        "dt": pa.array([dt.date.fromisoformat(day)] * n, pa.date32()),
        "blob_path": images.column("blob_path"),
        "sha256": pa.array(sha, pa.string()),
        "num_bytes": pa.array(np.full(n, 400_000, dtype=np.int64)),
        "width": pa.array(np.full(n, 512, dtype=np.int32)),
        "height": pa.array(np.full(n, 512, dtype=np.int32)),
        "mode": pa.array(["RGB"] * n, pa.string()),
        "format": pa.array(["PNG"] * n, pa.string()),
        "phash": pa.array(packed[:, 0] | np.uint64(PHASH_DC_BIT)),
        "dhash": pa.array(packed[:, 1]),
        "nsfw_detections": empty_lists.cast(detections_type),
        "nsfw_max": pa.StructArray.from_arrays([zeros] * nsfw_type.num_fields,
                                               fields=[nsfw_type.field(i) for i in range(nsfw_type.num_fields)]),
        "train_jpg_key": pa.array([f"blobs/train/s512q90/{s[:2]}/{s}.jpg" for s in sha], pa.string()),
        "train_width": pa.array(np.full(n, 512, dtype=np.int32)),
        "train_height": pa.array(np.full(n, 512, dtype=np.int32)),
        "train_jpg_bytes": pa.array(np.full(n, TRAIN_JPG_BYTES, dtype=np.int64)),
        "reused_from": pa.nulls(n, pa.string()),
    })
    write_parquet_atomic(table, home.partition_file("image_features", day), schema)
    write_parquet_atomic(get_schema("image_rejects").empty_table(), home.partition_file("image_rejects", day))
    return n


def bare_parse(home: DataHome, days: list[str]) -> int:
    """Baseline for ingest: decompress and ``json.loads`` every raw line in one process; returns lines."""
    lines = 0
    for day in days:
        for table in RAW_TABLES:
            path = home.raw_file(day, table)
            if not path.exists():
                continue
            with gzip.open(path, "rb") as handle:
                for line in handle:
                    try:
                        json.loads(line)
                    except ValueError:
                        pass  # the simulator's malformed lines: parsing them is the work being measured
                    lines += 1
    return lines


def read_inputs(paths: list[Path]) -> int:
    """Baseline for a DuckDB stage: read its input Parquet files into Arrow; returns rows."""
    return sum(pq.read_table(p, partitioning=None).num_rows for p in paths)


def _sidecar_only(task: shards.ShardTask) -> dict:
    """One shard's per-sample JSON and Parquet sidecar, laid out as ``shards.write_shard`` would; no tar."""
    rows = task.rows
    texts = shards.sample_json(rows)
    member_sizes = np.stack([  # (samples, members) in tar order: 0.jpg, 1.jpg, json, txt
        np.array([_JPG_SIZES[k] for k in rows.column("jpg_0_key").to_pylist()], dtype=np.int64),
        np.array([_JPG_SIZES[k] for k in rows.column("jpg_1_key").to_pylist()], dtype=np.int64),
        pc.binary_length(texts).to_numpy().astype(np.int64),
        pc.binary_length(rows.column("caption")).to_numpy().astype(np.int64),
    ], axis=1)
    spans = shards.BLOCK + -(-member_sizes // shards.BLOCK) * shards.BLOCK   # header + padded data
    starts = np.cumsum(spans.ravel()).reshape(spans.shape) - spans             # each member's header
    position = int(spans.sum())
    offsets = {m: starts[:, i] + shards.BLOCK for i, m in enumerate(dataset.MEMBERS)}
    sizes = {m: member_sizes[:, i] for i, m in enumerate(dataset.MEMBERS)}
    n = rows.num_rows
    base = task.name
    sidecar = shards.sidecar_table(rows, f"{base}.tar", offsets, sizes)
    path = Path(task.out_dir) / f"{base}.parquet"
    write_parquet_atomic(sidecar, path, get_schema("shard_samples"))
    keys = rows.column("key")
    return {"split": task.split, "shard": f"{base}.tar", "num_samples": n,
            "num_bytes": shards.tar_size(position), "jpg_bytes": int(sizes["0.jpg"].sum() + sizes["1.jpg"].sum()),
            "sha256": "", "sidecar": path.name, "sidecar_bytes": path.stat().st_size, "sidecar_sha256": "",
            "first_key": keys[0].as_py() if n else "", "last_key": keys[n - 1].as_py() if n else ""}


def sidecars_without_images(home: DataHome, out: Path, config: PublishConfig = PublishConfig()) -> int:
    """The publish stage's metadata work (keys, shuffle, plan, JSON, sidecars, meta snapshots); returns samples."""
    global _JPG_SIZES
    table = cast_to_schema(pq.read_table(home.table_file("split_pairs")), get_schema("split_pairs"))
    table = samples.with_keys(table)
    features = pq.read_table(_files(home, "image_features"), columns=["train_jpg_key", "train_jpg_bytes", "sha256"],
                             partitioning=None)
    _JPG_SIZES = dict(zip(features.column("train_jpg_key").to_pylist(), features.column("train_jpg_bytes").to_pylist()))
    # no JPEG exists: the synthetic source sha256 stands in for the JPEG's own digest
    unique = features.group_by("train_jpg_key").aggregate([("train_jpg_bytes", "max"), ("sha256", "max")])
    unique = unique.take(pc.sort_indices(unique, sort_keys=[("train_jpg_key", "ascending")]))
    jpgs = jpgdigests.JpgIndex(unique.column("train_jpg_key").combine_chunks(),
                               unique.column("train_jpg_bytes_max").to_numpy(), unique.column("sha256_max").combine_chunks(),
                               0, 0)
    tasks = samples.plan_tasks(home, samples.sample_table(table, jpgs), jpgs, out, config, samples.day_volumes(home))
    for split in {t.split for t in tasks}:
        (out / split).mkdir(parents=True, exist_ok=True)
    workers = config.workers or os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        stats = pool.map(_sidecar_only, tasks, chunksize=1)
    meta.write_meta(out, stats, samples.meta_sources(home))
    return table.num_rows


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def _files(home: DataHome, *datasets: str) -> list[Path]:
    return [p for ds in datasets for p in sorted(home.table_dir(ds).glob("**/*.parquet"))]


def run(rankings: int = 1_000_000, days: int = 10, users: int | None = None, seed: int = 0,
        root: Path | None = None, keep: bool = False) -> dict:
    """Simulate, synthesize features, time every metadata stage and its baseline; return the numbers."""
    with work_folder(root, "bench-metadata-", keep=keep) as base:
        home = DataHome(claim(base / "home"))      # an earlier run's is wiped; a folder of someone else's refused
        scratch = claim(base / "scratch")          # the sidecars and the baseline's Parquet copy
        config = sim_config(rankings, days, users, seed)
        result: dict = {"benchmark": "metadata", "rankings_requested": rankings, "days": days,
                        "users": config.users, "cpus": os.cpu_count(), "goal_seconds": GOAL_SECONDS,
                        "load_average_before": round(os.getloadavg()[0], 2)}
        setup = {}
        setup["simulate_s"], _ = _timed(simulate, home, config)
        (home.ground_truth / "duplicates.parquet").unlink(missing_ok=True)
        day_list = home.raw_days()
        stages: dict[str, dict] = {}

        seconds, _ = _timed(lambda: [ingest_day(home, d) for d in day_list])
        ingested = {name: sum(pq.read_metadata(p).num_rows for p in _files(home, name)) for name in RAW_TABLES + ("quarantine",)}
        lines = sum(ingested.values())
        base_s, base_lines = _timed(bare_parse, home, day_list)
        stages["ingest"] = {"seconds": seconds, "rows": lines, "baseline": "gzip + json.loads, 1 process",
                            "baseline_seconds": base_s, "baseline_rows": base_lines}
        result["ingested_rows"] = ingested

        setup["synthesize_features_s"], images = _timed(lambda: sum(synthesize_features(home, d, seed) for d in day_list))
        result["images"] = images

        for name, fn, inputs in (
            ("dedup", build_clusters, ("image_features",)),
            ("decisions", build_decisions, ("rankings", "images", "image_features", "duplicate_clusters")),
            ("pairs", build_pairs, ("rankings", "images", "image_features", "duplicate_clusters", "decisions")),
            ("splits", build_splits, ("pairs",)),
        ):
            files = _files(home, *inputs)
            seconds, _ = _timed(fn, home)
            base_s, rows = _timed(read_inputs, files)
            stages[name] = {"seconds": seconds, "rows": rows, "baseline": "read the input Parquet into Arrow",
                            "baseline_seconds": base_s, "baseline_rows": rows}
        result["pairs"] = pq.read_metadata(home.table_file("pairs")).num_rows
        result["split_pairs"] = pq.read_metadata(home.table_file("split_pairs")).num_rows

        out = scratch / "sidecars"
        seconds, samples = _timed(sidecars_without_images, home, out)
        split_pairs = pq.read_table(home.table_file("split_pairs"))
        base_s, _ = _timed(lambda: pq.write_table(split_pairs, scratch / "copy.parquet", **PARQUET_OPTIONS))
        stages["sidecars"] = {"seconds": seconds, "rows": samples, "baseline": "write split_pairs as one Parquet file",
                              "baseline_seconds": base_s, "baseline_rows": split_pairs.num_rows}

        for values in stages.values():
            values["rows_per_s"] = round(values["rows"] / values["seconds"], 1)
            values["baseline_rows_per_s"] = round(values["baseline_rows"] / values["baseline_seconds"], 1)
            values["ratio_vs_baseline"] = round(values["rows_per_s"] / values["baseline_rows_per_s"], 3)
            values["seconds"] = round(values["seconds"], 2)
            values["baseline_seconds"] = round(values["baseline_seconds"], 2)
        total = sum(v["seconds"] for v in stages.values())
        curation = sum(stages[k]["seconds"] for k in ("dedup", "decisions", "pairs"))
        result.update({
            "setup_seconds": {k: round(v, 2) for k, v in setup.items()},
            "stages": stages,
            "curation_seconds": round(curation, 2),
            "total_seconds": round(total, 2),
            "ratio_goal_vs_total": round(GOAL_SECONDS / total, 3),
            "meets_goal": total <= GOAL_SECONDS,
            "load_average_after": round(os.getloadavg()[0], 2),
        })
    return result


def main(argv: list[str] | None = None) -> dict:
    """Command line: run, print JSON, optionally write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--users", type=int, default=None, help="default: rankings / 50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work folder, kept (default: a temporary one, removed); its home/ and scratch/ are "
                        "wiped by the next run, and refused if a benchmark did not make them")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = run(args.rankings, args.days, args.users, args.seed, args.dir)
    report(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
