"""The publish's JPEG digest index against the per-file version it replaced (run by hand).

    .venv/bin/python -m benchmarks.jpg_digests [--samples 8100] [--days 3] [--repeats 3] [--workers 2] [--dir D]

Every publish starts with :func:`pipelines.publish.jpgdigests.index_jpgs`: every JPEG key the version
references is ``stat``-ed (a changed file must be hashed again) and the JPEGs the digest cache does
not know are hashed. Until December 5 each of those files was a task of its own in the thread pool,
read into a new 1 MiB ``bytes``, and each key was ``stat``-ed through a ``Path``; now each thread
hashes a contiguous run of files through one reused buffer, and the stat loop builds no ``Path``.
On a synthetic home (:func:`benchmarks.shards.build_home`: distinct ~47 KB JPEGs, ``--samples`` pairs
over ``--days`` export days plus the nightly day) two cases are timed:

- ``night``: the cache holds every earlier day's JPEGs, the new day's are hashed (a nightly publish);
- ``cold``: no cache, every JPEG hashed (the first publish, or a lost cache);
each the new way and the old way (the old function rebuilt here, same cache code), alternated
``--repeats`` times, each run in a forked child whose peak RSS is reported; both must give the same
index. Prints median seconds, old / new ratio, and the peak RSS of each. The JPEGs are read from the
page cache (the home is built just before); a real night may read them from the disk.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def old_hash(path: Path, rel: str, column: str) -> tuple[str, list[int]]:
    """``jpgdigests._hash`` as it was until December 5: a new ``bytes`` for each read."""
    from formats.files import open_regular_file
    from pipelines.publish.shards import JpgChangedError, file_identity

    try:
        handle = open_regular_file(path)
    except OSError as exc:
        raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column}) cannot be read: {exc}") from exc
    digest = hashlib.sha256()
    read = 0
    with handle:
        before = file_identity(os.fstat(handle.fileno()))
        while block := handle.read(1 << 20):
            digest.update(block)
            read += len(block)
        after = file_identity(os.fstat(handle.fileno()))
    if after != before or read != before[0]:
        raise JpgChangedError(f"training JPEG {rel!r} changed during the publish")
    return digest.hexdigest(), before


def old_index_jpgs(home, columns: dict, workers: int = 1):
    """``index_jpgs`` as it was until December 5 (per-key checks and Path stats, one pool task a file)."""
    from pipelines.publish import jpgdigests
    from pipelines.publish.shards import JPG_IDENTITY_FIELDS, file_identity, jpg_key_is_safe

    unique = {name: pc.unique(column) for name, column in columns.items()}
    for name, values in unique.items():
        for rel in values.to_pylist():
            if not jpg_key_is_safe(rel):
                raise ValueError(f"split_pairs.{name} value {rel!r} is not a safe path inside the data home")
    keys = pc.unique(pa.chunked_array([v for v in unique.values()], pa.string()))
    keys = keys.take(pc.sort_indices(keys))
    column_of: dict[str, str] = {}
    for name, values in unique.items():
        for rel in values.to_pylist():
            column_of.setdefault(rel, name)
    stats = np.zeros((len(keys), len(JPG_IDENTITY_FIELDS)), dtype=np.int64)
    for i, rel in enumerate(keys.to_pylist()):
        st = os.stat(home.root / rel)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(rel)
        stats[i] = file_identity(st)
    with jpgdigests._Cache(home) as cache:
        cached = cache.read()
        hit = np.zeros(len(keys), dtype=bool)
        known = pa.nulls(len(keys), pa.string())
        if cached.num_rows:
            where = pc.index_in(keys, value_set=cached.column("key"))
            hit = pc.fill_null(pc.is_valid(where), False).to_numpy(zero_copy_only=False)
            slots = np.asarray(pc.fill_null(where, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            for j, name in enumerate(JPG_IDENTITY_FIELDS):
                hit &= cached.column(name).to_numpy()[slots] == stats[:, j]
            known = cached.column("sha256").take(pa.array(slots))
        missing = np.flatnonzero(~hit)
        key_list = keys.to_pylist()
        with ThreadPoolExecutor(max(1, workers)) as pool:
            done = list(pool.map(lambda i: old_hash(home.root / key_list[i], key_list[i], column_of[key_list[i]]),
                                 missing.tolist()))
        hashed = pa.array([sha for sha, _ in done], pa.string())
        if len(missing):
            stats[missing] = np.array([identity for _, identity in done], dtype=np.int64)
        sha256 = pc.replace_with_mask(known, pa.array(~hit), hashed) if len(missing) else known
        merge = cache.merge_due(int(hit.sum()))
        if merge:
            cache.record(pa.table({"key": keys, **{name: stats[:, j] for j, name in enumerate(JPG_IDENTITY_FIELDS)},
                                   "sha256": sha256}, schema=jpgdigests.CACHE_SCHEMA), merge=True)
        elif len(missing):
            cache.record(pa.table({"key": keys.take(pa.array(missing)),
                                   **{name: stats[missing, j] for j, name in enumerate(JPG_IDENTITY_FIELDS)},
                                   "sha256": hashed}, schema=jpgdigests.CACHE_SCHEMA), merge=False)
    return jpgdigests.JpgIndex(keys, stats[:, 0].copy(), sha256, int(len(missing)), int(stats[missing, 0].sum()), stats)


def _timed_index(function, *args) -> list:
    """In a forked child (:func:`benchmarks.in_child`): ``function(*args)``'s seconds, the digest of its index and
    the JPEGs it hashed."""
    started = time.perf_counter()
    index = function(*args)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    index.digest_update(digest)
    digest.update(index.identities.tobytes())
    return [seconds, digest.hexdigest(), index.hashed]


def _in_child(function, *args) -> tuple[float, int, str, int]:
    """Run ``function(*args)`` in a forked child: (seconds, peak RSS in KiB, digest of its index, JPEGs hashed)."""
    from benchmarks import in_child

    (seconds, digest, hashed), peak = in_child(_timed_index, function, *args)
    return seconds, peak, digest, hashed


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from benchmarks.shards import build_home
    from pipelines.publish import jpgdigests

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8100, help="pairs before the nightly day")
    parser.add_argument("--days", type=int, default=3, help="export days before the nightly one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="hashing threads (the publish gives one per CPU)")
    parser.add_argument("--dir", default=None, help="work folder (default: a new temporary folder, removed after)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-jpgdigests-", dir=args.dir))
    try:
        home = build_home(work / "home", args.samples + args.samples // args.days, days=args.days + 1)
        table = pq.read_table(home.table_file("split_pairs"))
        last = pc.max(table.column("dt"))
        columns = {c: table.column(c) for c in ("jpg_0_key", "jpg_1_key")}
        history = table.filter(pc.less(table.column("dt"), last))
        cache = jpgdigests.cache_dir(home)
        jpgdigests.index_jpgs(home, {c: history.column(c) for c in columns}, args.workers)   # earlier nights
        kept = work / "night-cache"
        shutil.copytree(cache, kept)
        results: dict = {"samples": args.samples, "days": args.days, "repeats": args.repeats, "workers": args.workers,
                         "keys": len(pc.unique(pa.chunked_array(list(columns.values())))), "cases": {}}
        for case in ("night", "cold"):
            runs: dict[str, list] = {"new": [], "old": []}
            for repeat in range(args.repeats):
                order = [("new", jpgdigests.index_jpgs), ("old", old_index_jpgs)]
                for label, function in (order if repeat % 2 == 0 else order[::-1]):
                    shutil.rmtree(cache)
                    if case == "night":
                        shutil.copytree(kept, cache)
                    runs[label].append(_in_child(function, home, columns, args.workers))
            digests = {run[2] for label in runs for run in runs[label]}
            assert len(digests) == 1, f"{case}: the two versions gave different indexes"
            new, old = (statistics.median(run[0] for run in runs[label]) for label in ("new", "old"))
            results["cases"][case] = {
                "hashed": runs["new"][0][3], "new_s": round(new, 3), "old_s": round(old, 3),
                "old_over_new": round(old / new, 2),
                "new_runs_s": [round(run[0], 3) for run in runs["new"]],
                "old_runs_s": [round(run[0], 3) for run in runs["old"]],
                "new_peak_rss_mib": round(max(run[1] for run in runs["new"]) / 1024, 1),
                "old_peak_rss_mib": round(max(run[1] for run in runs["old"]) / 1024, 1),
            }
        results["load_average"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
