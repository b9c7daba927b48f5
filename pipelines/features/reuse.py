"""Incremental reuse: rows already fingerprinted (same uid) or of identical bytes (same sha256) are copied.

A row found by uid is copied unread only while its blob is the file it was read from
(:mod:`pipelines.features.blobidentity`, checked by the driver); else the blob is read and hashed again.

The driver finds both in the earlier ``image_features`` partitions; the workers get the known sha256
digests as one sorted ``.npy`` file and look each image up by binary search.

Only partitions written under the same output settings are reused: each partition's Parquet footer
holds :func:`output_key` of the settings that made it (``OUTPUT_KEY_FIELD``), and one with another key
or none (written before the key existed) is never a source. So after a change of ``train_size``,
``jpeg_quality``, ``max_side``, ... each day the stage reruns is computed afresh, exactly as a build
from scratch with the new settings would compute it.
"""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Sequence

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.home import DataHome
from formats.settings import config_digest
from pipelines.features.config import FEATURES, FeaturesConfig, parse_day

OUTPUT_KEY_FIELD = b"pickapic.features_output_key"   # footer key-value metadata of image_features partitions
OUTPUT_FORMAT = "features-output-2"                   # bump when the code changes what a row holds for equal settings
                                                      # 2: NudeNet NMS per class (nsfw.class_aware_nms)
                                                      # (rev24d/rev24h changed no row of an image they accept; the rows
                                                      # of homes built before that they refuse are re-judged from their
                                                      # bytes on reuse, and features code version 6 reruns every day
                                                      # once: no NudeNet run for the images kept)


def output_key(config: FeaturesConfig) -> str:
    """``OUTPUT_FORMAT`` and the digest of the settings that change a feature row (the stage's output
    settings, :func:`formats.settings.config_digest`, as in the stage's data version)."""
    return f"{OUTPUT_FORMAT}/{config_digest('features', config)}"


def with_output_key(schema: pa.Schema, key: str) -> pa.Schema:
    """``schema`` carrying ``key`` in its metadata (written into the partition's footer)."""
    return schema.with_metadata({**(schema.metadata or {}), OUTPUT_KEY_FIELD: key.encode("ascii")})


def partition_output_key(path: Path) -> str | None:
    """The output key in a partition's footer, or None (written before keys, or unreadable)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = metadata.get(OUTPUT_KEY_FIELD)
    return value.decode("ascii", "replace") if value is not None else None


# The known digests the workers get: each sha256 of the earlier partitions with the training-JPEG size its reuse
# source (earliest (dt, image_uid) row) records, so a worker reuses bytes only while that JPEG is there as recorded.
KNOWN_DTYPE = np.dtype([("sha256", "S32"), ("train_jpg_bytes", "<i8")])


def load_known_digests(path: str | None) -> np.ndarray:
    """Sorted ``KNOWN_DTYPE`` array of known sha256 digests from an ``.npy`` file (empty when ``path`` is None)."""
    if not path:
        return np.empty(0, dtype=KNOWN_DTYPE)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        digests = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    if digests.dtype != KNOWN_DTYPE:
        raise ValueError(f"known digests file {path} has dtype {digests.dtype}, expected {KNOWN_DTYPE}")
    return digests


def known_jpeg_bytes(known: np.ndarray, digest: bytes) -> int | None:
    """Binary search for ``digest`` in the sorted array: the recorded training-JPEG size, or None if unknown."""
    if known.size == 0:
        return None
    # numpy compares S32 values without trailing NUL bytes; comparing two S32 values is still exact
    # (same length), comparing one with raw ``bytes`` would not be.
    key = np.array(digest, dtype="S32")
    digests = known["sha256"]
    index = int(np.searchsorted(digests, key))
    if index < digests.size and bool(digests[index] == key):
        return int(known["train_jpg_bytes"][index])
    return None


def earlier_partitions(home: DataHome, day: str, key: str | None = None) -> list[tuple[str, Path]]:
    """(day, file) of every image_features partition on or before ``day``, oldest first; with ``key``,
    only those written under that :func:`output_key`. Only the day folders (``dt=YYYY-MM-DD``:
    :meth:`formats.home.DataHome.partition_days`, the folders every reader reads and the plan judges): an operator's
    copy ``dt=DAY.bak/`` is no day (review rev31b: a copy from it differed from a build from scratch, and the plan,
    which never reads it, found the copying day stale at every look)."""
    found = []
    for earlier in home.partition_days(FEATURES):
        if earlier <= day:
            path = home.partition_file(FEATURES, earlier)
            if path.is_file() and (key is None or partition_output_key(path) == key):
                found.append((earlier, path))
    return found


def _index(history: list[tuple[str, Path]], columns: Sequence[str], filter_expr=None) -> pa.Table:
    if not history:
        return pa.table({c: pa.array([], pa.string()) for c in columns} | {"dt_key": pa.array([], pa.string())})
    tables = []
    for key, path in history:
        table = pq.read_table(path, columns=list(columns), filters=filter_expr)
        tables.append(table.append_column("dt_key", pa.array([key] * table.num_rows, pa.string())))
    return pa.concat_tables(tables)


def rows_reused_by_uid(home: DataHome, day: str, inputs: pa.Table, history: list[tuple[str, Path]],
                       sources: dict[str, str] | None = None) -> list[dict]:
    """Copies of already-fingerprinted rows for input uids: from the earliest earlier day, else from the day's
    own partition (a rerun).

    A row is the same whatever order the days were built in: a copy of the day's own row gets the
    ``reused_from`` a build in day order gives it (its uid when an earlier day has the uid, which then is the
    source; else the earliest (day, uid) of an earlier day with the same sha256, as :func:`rows_reused_by_sha256`
    picks; else none), so a day built before an earlier one landed (a backfill) and built again after it holds
    the bytes a build in day order writes. ``sources``, when given, is filled with uid -> the day each row is
    copied from."""
    if inputs.num_rows == 0:  # an empty chunked array reads as type null in ``isin``
        return []
    uids = inputs["image_uid"].combine_chunks()
    hits = _index(history, ["image_uid"], pc.field("image_uid").isin(uids))
    if hits.num_rows == 0:
        return []
    blob_paths = dict(zip(inputs["image_uid"].to_pylist(), inputs["blob_path"].to_pylist()))
    source_day: dict[str, str] = {}
    for uid, key in zip(hits["image_uid"].to_pylist(), hits["dt_key"].to_pylist()):
        if uid not in source_day or (key == day, key) < (source_day[uid] == day, source_day[uid]):
            source_day[uid] = key
    if sources is not None:
        sources.update(source_day)
    rows = []
    day_date = parse_day(day)
    for key, path in history:
        wanted = sorted(uid for uid, k in source_day.items() if k == key)
        if not wanted:
            continue
        for row in pq.read_table(path, filters=pc.field("image_uid").isin(wanted)).to_pylist():
            if key != day:
                row.update(dt=day_date, reused_from=row["image_uid"])
            row["blob_path"] = blob_paths[row["image_uid"]]
            rows.append(row)
    own = [row for row in rows if source_day[row["image_uid"]] == day]
    if own:
        earliest = _earliest_by_sha256([item for item in history if item[0] < day], {row["sha256"] for row in own})
        for row in own:
            holder = earliest.get(row["sha256"])
            row["reused_from"] = holder[1] if holder is not None else None
    return rows


def _earliest_by_sha256(earlier: list[tuple[str, Path]], shas: set[str]) -> dict[str, tuple[str, str]]:
    """sha256 -> the earliest (day, image_uid) holding it in ``earlier`` partitions (the source a build in day
    order copies a row of those bytes from)."""
    if not shas or not earlier:
        return {}
    hits = _index(earlier, ["image_uid", "sha256"], pc.field("sha256").isin(pa.array(sorted(shas), pa.string())))
    source: dict[str, tuple[str, str]] = {}
    for uid, sha, key in zip(hits["image_uid"].to_pylist(), hits["sha256"].to_pylist(), hits["dt_key"].to_pylist()):
        if sha not in source or (key, uid) < source[sha]:
            source[sha] = (key, uid)
    return source


def known_digests(history: list[tuple[str, Path]]) -> np.ndarray:
    """Sorted unique sha256 digests of the given partitions (hex decoded with numpy), each with the
    ``train_jpg_bytes`` of its earliest ``(dt, image_uid)`` row, the row a reuse copies (``KNOWN_DTYPE``): the
    first in ``history`` order (oldest day first; the stage writes each partition sorted by ``image_uid``)."""
    table = _index(history, ["sha256", "train_jpg_bytes"])
    if table.num_rows == 0:
        return np.empty(0, dtype=KNOWN_DTYPE)
    hexes = np.asarray(table["sha256"].to_numpy(zero_copy_only=False), dtype="S64")
    chars = np.frombuffer(hexes.tobytes(), dtype=np.uint8).reshape(-1, 64).astype(np.int16)
    nibbles = np.where(chars >= ord("a"), chars - ord("a") + 10, chars - ord("0"))
    if ((nibbles < 0) | (nibbles > 15)).any():
        raise ValueError("image_features.sha256 holds a value that is not 64 lowercase hex characters")
    digests = np.ascontiguousarray(((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).astype(np.uint8)).view("S32").ravel()
    digests, first = np.unique(digests, return_index=True)   # sorted; each one's first row (a stable sort)
    known = np.empty(digests.size, dtype=KNOWN_DTYPE)
    known["sha256"] = digests
    known["train_jpg_bytes"] = np.asarray(table["train_jpg_bytes"].to_numpy(zero_copy_only=False), dtype="<i8")[first]
    return known


def rows_reused_by_sha256(day: dt.date, candidates: pa.Table, history: list[tuple[str, Path]]) -> list[dict]:
    """Copies of the earliest (dt, image_uid) row with the same sha256, for each reuse candidate."""
    if candidates.num_rows == 0:
        return []
    earlier = [item for item in history if item[0] < day.isoformat()]
    shas = pc.unique(candidates["sha256"])
    source = _earliest_by_sha256(earlier, set(shas.to_pylist()))
    missing = sorted(set(shas.to_pylist()) - set(source))
    if missing:
        raise RuntimeError(f"reuse candidates with sha256 {missing[:3]} have no source row in earlier partitions")
    source_rows: dict[str, dict] = {}
    paths = dict(earlier)
    for key in sorted({k for k, _ in source.values()}):
        wanted = sorted(uid for k, uid in source.values() if k == key)
        for row in pq.read_table(paths[key], filters=pc.field("image_uid").isin(wanted)).to_pylist():
            source_rows[row["image_uid"]] = row
    rows = []
    for candidate in candidates.to_pylist():
        _, source_uid = source[candidate["sha256"]]
        row = dict(source_rows[source_uid])
        row.update(image_uid=candidate["image_uid"], dt=day, blob_path=candidate["blob_path"],
                   reused_from=source_uid)
        rows.append(row)
    return rows
