"""The run's scratch folder under the blob base: the driver's inputs for the workers and the pipeline's one sink.

Everything the pipeline emits goes through one Parquet sink (each extra file sink costs ~1 s of Beam
overhead); rows travel as JSON, which round-trips every value here exactly (floats via repr).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.features.blobs import is_local, join_url
from pipelines.features.config import FEATURES, REJECTS
from schemas import get_schema

# Reuse candidates found by the pipeline (bytes identical to an earlier image): resolved by the driver.
REUSED_SCHEMA = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("num_bytes", pa.int64(), nullable=False),
])
# Everything the pipeline emits goes through one sink (each extra file sink costs ~1 s of Beam
# overhead); rows travel as JSON, which round-trips every value here exactly (floats via repr).
STAGED_KINDS = ("features", "rejects", "reused")
STAGED_SCHEMA = pa.schema([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("payload", pa.string(), nullable=False),
])
TODO_SCHEMA = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
])



def reset_dir(url: str) -> None:
    remove_dir(url)
    if is_local(url):
        os.makedirs(url, exist_ok=True)


def remove_dir(url: str) -> None:
    if is_local(url):
        if os.path.isdir(url):
            shutil.rmtree(url)
        for parent in (os.path.dirname(url.rstrip("/")), os.path.dirname(os.path.dirname(url.rstrip("/")))):
            if os.path.basename(parent) in ("features", ".staging") and os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
        return
    matches = FileSystems.match([join_url(url, "**")])[0].metadata_list
    if matches:
        FileSystems.delete([m.path for m in matches])


def write_parquet_url(table: pa.Table, url: str) -> None:
    if is_local(url):
        pq.write_table(table, url)
        return
    with FileSystems.create(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        pq.write_table(table, handle)


def write_npy_url(array: np.ndarray, url: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with FileSystems.create(url, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(buffer.getvalue())


def staged_record(row: dict, kind: str) -> dict:
    """One pipeline output row as a staging record: kind, uid and the row as JSON (``dt`` dropped)."""
    return {"kind": kind, "image_uid": row["image_uid"],
            "payload": json.dumps({k: v for k, v in row.items() if k != "dt"}, sort_keys=True, allow_nan=False)}


def read_staged(prefix: str, day: dt.date) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(computed features, rejects, reuse candidates) from the staging files the pipeline wrote."""
    matches = FileSystems.match([prefix + "*.parquet"])[0].metadata_list
    rows: dict[str, list[dict]] = {kind: [] for kind in STAGED_KINDS}
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(io.BytesIO(handle.read()))
        for kind, payload in zip(table["kind"].to_pylist(), table["payload"].to_pylist()):
            rows[kind].append(json.loads(payload) | ({"dt": day} if kind != "reused" else {}))
    return (pa.Table.from_pylist(rows["features"], schema=get_schema(FEATURES)),
            pa.Table.from_pylist(rows["rejects"], schema=get_schema(REJECTS)),
            pa.Table.from_pylist(rows["reused"], schema=REUSED_SCHEMA))
