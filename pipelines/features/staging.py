"""The run's scratch folder under the blob base: the driver's inputs for the workers and the pipeline's one sink.

Everything the pipeline emits goes through one Parquet sink (each extra file sink costs ~1 s of Beam
overhead); rows travel as JSON, which round-trips every value here exactly (floats via repr).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob
import io
import json
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.files import lstat_or_none
from pipelines.features.blobs import is_local, join_url
from pipelines.features.config import (
    FEATURES,
    REJECTS,
    STAGING_AREA,
    STAGING_MARKER,
    StagingRefused,
    has_marker,
    in_staging_area,
)
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
    # a reused row sent through the pipeline (its training JPEG lost or damaged, or judged again from its bytes):
    # the sha256 and training-JPEG size it records; null for the others
    pa.field("reuse_sha256", pa.string()),
    pa.field("reuse_jpeg_bytes", pa.int64()),
])



def glob_literal(url: str) -> str:
    """``url`` (a local path or ``scheme://`` URL) with its glob characters (``*``, ``?``, ``[``) escaped, to put
    before a pattern given to ``FileSystems.match``: a data home or staging folder at ``/data/homes[1]`` is no
    character class (``[[]1]``, :func:`glob.escape`; Beam's matcher reads ``[...]`` as fnmatch does)."""
    if is_local(url):
        return glob.escape(url)
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{glob.escape(rest)}"


def match_paths(pattern: str) -> list:
    """``FileSystems.match`` of one pattern: its metadata list (Beam compiles ``[[]`` with a FutureWarning of
    Python's ``re``, "possible nested set", harmless here: silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return FileSystems.match([pattern])[0].metadata_list


@contextlib.contextmanager
def beam_visible(url: str) -> Iterator[str]:
    """``url`` (the run's staging folder) as the Beam pipeline is given it: Beam's file sink globs the paths it
    writes (``WriteToParquet`` finalizes by matching ``<prefix>*``, unescaped), so a local folder whose path holds
    glob characters (a data home at ``/data/homes[1]``) is handed to Beam through a link without them, in a
    private folder of the system's temporary directory made for the run and removed after it (review rev24h:
    the stage could not build such a home, and with a folder ``homes1`` beside it read that one's files). A URL
    with glob characters is refused (one line: give a staging URL without them)."""
    if not glob.has_magic(url):
        yield url
        return
    if not is_local(url):
        raise StagingRefused(f"staging URL {url} holds a glob character ([, *, ?), which Beam's file sinks read as a "
                             "pattern: give a staging URL without them")
    holder = tempfile.mkdtemp(prefix="pickapic-features-staging-")
    alias = os.path.join(holder, "staging")
    try:
        if glob.has_magic(alias):
            raise StagingRefused(f"staging folder {url} holds a glob character ([, *, ?), which Beam's file sinks "
                                 f"read as a pattern, and so does the temporary directory {holder}: give a staging "
                                 "folder without them")
        os.symlink(url, alias)
        yield alias
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(alias)
        os.rmdir(holder)


def reset_dir(url: str, base: str) -> None:
    """Empty the run's staging folder ``url`` (blob base ``base``) and create it with the stage's marker.

    An existing folder is deleted only if the stage created it (it holds the marker) or it is a subfolder of
    the stage's own area ``<base>/.staging/features``; anything else (a symlink, a file, someone's folder)
    is refused with :class:`StagingRefused` and left untouched.
    """
    remove_dir(url, base)
    if is_local(url):
        os.makedirs(url, exist_ok=True)
        fd = os.open(os.path.join(url, STAGING_MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        os.close(fd)
        return
    with FileSystems.create(join_url(url, STAGING_MARKER), compression_type=CompressionTypes.UNCOMPRESSED):
        pass


def remove_dir(url: str, base: str) -> None:
    """Delete the staging folder ``url`` if the stage created it (see :func:`reset_dir`); refuse any other."""
    if is_local(url):
        info = lstat_or_none(url)
        if info is not None:
            if not stat.S_ISDIR(info.st_mode):
                raise StagingRefused(f"staging folder {url} is not a folder (a symlink, file or device): not deleted")
            if not (has_marker(url) or in_staging_area(url, base)):
                raise StagingRefused(f"staging folder {url} was not created by the feature stage (no {STAGING_MARKER} "
                                     "in it): not deleted; give a new folder")
            shutil.rmtree(url)
        area = os.path.join(base, STAGING_AREA) if is_local(base) else None
        for parent in ((area, os.path.dirname(area)) if area else ()):   # the stage's own area, once empty
            try:
                if stat.S_ISDIR(os.lstat(parent).st_mode) and not os.listdir(parent):
                    os.rmdir(parent)
            except OSError:
                pass
        return
    matches = match_paths(join_url(glob_literal(url), "**"))
    if not matches:
        return
    marker = join_url(url, STAGING_MARKER)
    if not (in_staging_area(url, base) or any(m.path.rstrip("/") == marker for m in matches)):
        raise StagingRefused(f"staging folder {url} was not created by the feature stage (no {STAGING_MARKER} in it): "
                             "not deleted; give a new folder")
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
    """(computed features, rejects, reuse candidates) from the staging files the pipeline wrote (``prefix`` is a
    path, its glob characters escaped here: review rev24h)."""
    matches = match_paths(glob_literal(prefix) + "*.parquet")
    rows: dict[str, list[dict]] = {kind: [] for kind in STAGED_KINDS}
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(io.BytesIO(handle.read()))
        for kind, payload in zip(table["kind"].to_pylist(), table["payload"].to_pylist()):
            rows[kind].append(json.loads(payload) | ({"dt": day} if kind != "reused" else {}))
    return (pa.Table.from_pylist(rows["features"], schema=get_schema(FEATURES)),
            pa.Table.from_pylist(rows["rejects"], schema=get_schema(REJECTS)),
            pa.Table.from_pylist(rows["reused"], schema=REUSED_SCHEMA))
