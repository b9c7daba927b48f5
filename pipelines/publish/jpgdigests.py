"""The size and sha256 of every training JPEG a version publishes, remembered between publishes.

Each published sample carries the sha256 of its two JPEGs exactly as they sit in the tar (so a
reader can verify the tar bytes from the sidecar), and the shard plan compares those digests to
decide whether a shard changed. Hashing every JPEG on every publish would read the whole store each
night (~100 GB at Pick-a-Pic size); a file whose size, mtime and inode are those recorded when it
was hashed takes its digest from ``HOME/cache/train_jpg_sha256/`` instead, so a nightly publish hashes
only the new day's JPEGs. The cache is disposable: without it every JPEG is hashed again, with the
same result.
"""
from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import sha256_file, write_parquet_atomic
from formats.home import DataHome
from pipelines.publish.shards import jpg_key_is_safe

CACHE_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),         # training JPEG key, relative to the data home
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("inode", pa.int64(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])
MAX_PARTS = 16     # more cache files than this are merged into one


@dataclass
class JpgIndex:
    """Every JPEG key referenced (sorted, unique) with its size and sha256; ``hashed`` were read this time."""

    keys: pa.Array
    sizes: np.ndarray
    sha256: pa.Array
    hashed: int
    hashed_bytes: int

    def positions(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Index into ``keys`` of every value of ``column`` (all must be known)."""
        found = pc.index_in(column, value_set=self.keys)
        if found.null_count:
            raise KeyError(pc.filter(column, pc.is_null(found))[0].as_py())
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)

    def digest_update(self, digest: "hashlib._Hash") -> None:
        """Feed every (key, size, sha256) to ``digest``, in key order."""
        for key, size, sha in zip(self.keys.to_pylist(), self.sizes.tolist(), self.sha256.to_pylist()):
            digest.update(f"{key}\0{size}\0{sha}\0".encode())


def cache_dir(home: DataHome) -> Path:
    """Folder of the digest cache (Parquet parts)."""
    return home.cache / "train_jpg_sha256"


def index_jpgs(home: DataHome, columns: dict[str, pa.ChunkedArray], workers: int = 1) -> JpgIndex:
    """Size and sha256 of every JPEG named in ``columns`` (column name -> keys), cached by size/mtime/inode.

    Unsafe keys, then missing files and what is not a regular file (a FIFO, a device, a folder; a
    symlink counts as what it points to), are errors naming the key and its column.
    """
    unique = {name: pc.unique(column) for name, column in columns.items()}
    for name, values in unique.items():
        for rel in values.to_pylist():
            if not jpg_key_is_safe(rel):
                raise ValueError(f"split_pairs.{name} value {rel!r} is not a safe path inside the data home")
    keys = pc.unique(pa.chunked_array([v for v in unique.values()], pa.string()))
    keys = keys.take(pc.sort_indices(keys))
    column_of = {}
    for name, values in unique.items():
        for rel in values.to_pylist():
            column_of.setdefault(rel, name)
    stats = np.zeros((len(keys), 3), dtype=np.int64)
    for i, rel in enumerate(keys.to_pylist()):
        try:
            st = os.stat(home.root / rel)
        except OSError as exc:
            raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column_of[rel]}) is missing: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):    # a FIFO would block the reader forever, a device never end
            raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column_of[rel]}) is not a regular file")
        stats[i] = (st.st_size, st.st_mtime_ns, st.st_ino)

    cached = _read_cache(home)
    hit = np.zeros(len(keys), dtype=bool)
    known = pa.nulls(len(keys), pa.string())
    if cached.num_rows:
        where = pc.index_in(keys, value_set=cached.column("key"))
        hit = pc.fill_null(pc.is_valid(where), False).to_numpy(zero_copy_only=False)
        slots = np.asarray(pc.fill_null(where, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        for j, name in enumerate(("bytes", "mtime_ns", "inode")):
            hit &= cached.column(name).to_numpy()[slots] == stats[:, j]
        known = cached.column("sha256").take(pa.array(slots))
    missing = np.flatnonzero(~hit)
    key_list = keys.to_pylist()
    with ThreadPoolExecutor(max(1, workers)) as pool:   # hashlib and file reads release the GIL
        hashed = pa.array(list(pool.map(lambda i: sha256_file(home.root / key_list[i]), missing.tolist())), pa.string())
    sha256 = pc.replace_with_mask(known, pa.array(~hit), hashed) if len(missing) else known
    if len(missing):
        _append_cache(home, cached, pa.table({
            "key": keys.take(pa.array(missing)), "bytes": stats[missing, 0], "mtime_ns": stats[missing, 1],
            "inode": stats[missing, 2], "sha256": hashed}, schema=CACHE_SCHEMA))
    return JpgIndex(keys, stats[:, 0].copy(), sha256, int(len(missing)), int(stats[missing, 0].sum()))


def _read_cache(home: DataHome) -> pa.Table:
    """Every cached entry, one per key (of repeated keys, the one in the part sorting last)."""
    parts = sorted(cache_dir(home).glob("part-*.parquet"))
    if not parts:
        return CACHE_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=CACHE_SCHEMA) for p in parts])
    rows = pa.table({"key": table.column("key"), "row": pa.array(np.arange(table.num_rows))})
    table = table.take(pc.sort_indices(rows, sort_keys=[("key", "ascending"), ("row", "descending")]))
    keys = table.column("key").to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def _append_cache(home: DataHome, cached: pa.Table, new: pa.Table) -> None:
    """Add ``new`` entries as one more part; merge every part into one when there are too many."""
    folder = cache_dir(home)
    parts = sorted(folder.glob("part-*.parquet"))
    number = max((int(p.name.split("-")[1]) for p in parts), default=-1) + 1
    name = hashlib.sha256("\0".join(new.column("key").to_pylist()).encode()).hexdigest()[:16]
    if len(parts) < MAX_PARTS:
        write_parquet_atomic(new, folder / f"part-{number:06d}-{name}.parquet", CACHE_SCHEMA)
        return
    kept = cached.filter(pc.invert(pc.is_in(cached.column("key"), value_set=new.column("key"))))
    write_parquet_atomic(pa.concat_tables([kept, new]), folder / f"part-{number:06d}-{name}.parquet", CACHE_SCHEMA)
    for old in parts:   # the merged part holds every entry and sorts last
        old.unlink()
