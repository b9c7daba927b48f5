"""WebDataset shards: the byte-exact tar writer, its sidecar and its commit marker.

A shard is ``<name>.tar`` (members ``KEY.0.jpg``, ``KEY.1.jpg``, ``KEY.json``, ``KEY.txt`` per
sample, in that order; the name comes from :mod:`pipelines.publish.plan`), its Parquet sidecar
``<name>.parquet`` (one row per sample: member offsets/sizes + every sample column) and
``<name>_stats.json``, written last as the shard's commit marker. Tar headers are built here (ustar, fixed mtime/uid/gid/mode,
byte-identical to :mod:`tarfile`'s) and JPEG bytes are copied verbatim, read straight into the
writer's buffer (:mod:`pipelines.publish.chunkwriter`, which writes it a chunk at a time, with
``O_DIRECT`` where it can), so one process keeps up with the disk (webdataset's ``TarWriter``
spends most of its time in ``tarfile``).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import queue
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.dataset import MEMBERS, STATS_SUFFIX, UNIQUE_SUFFIX, shard_paths
from formats.files import (
    PARQUET_OPTIONS,
    cast_to_schema,
    create_temp,
    full_disk_words,
    is_full_disk,
    open_regular_file,
    read_small_file,
)
from pipelines import faults
from pipelines.publish.chunkwriter import ChunkWriter
from schemas import get_schema

TAR_MTIME = 1672531200               # 2023-01-01T00:00:00Z, fixed so equal input gives equal tars
BLOCK = 512
_ZEROS = bytes(BLOCK)
RECORD = 20 * BLOCK                  # tarfile pads the archive to whole records; so do we

# ustar header pieces that never change (mode 0444, uid/gid 0, empty uname/gname, regular file).
_MODE_UID_GID = b"0000444\0" + b"0000000\0" + b"0000000\0"
_MTIME = b"%011o\0" % TAR_MTIME
_TAIL = (b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 32 + b"\0" * 32
         + b"\0" * 16 + b"\0" * 155 + b"\0" * 12)  # devmajor/minor empty, as tarfile writes them
_TAIL_SUM = sum(_TAIL) + 8 * ord(" ")  # the checksum field counts as eight spaces
assert 148 + 8 + len(_TAIL) == BLOCK


def tar_header(name: bytes, size: int) -> bytes:
    """The 512-byte ustar header of a regular file ``name`` of ``size`` bytes."""
    if len(name) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    if not 0 <= size < 8 ** 11:
        raise ValueError(f"tar member {name!r}: size {size} does not fit a ustar header")
    head = name.ljust(100, b"\0") + _MODE_UID_GID + b"%011o\0" % size + _MTIME
    return head + b"%06o\0 " % (sum(head) + _TAIL_SUM) + _TAIL


def padded(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar, header included."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_size(member_bytes: int) -> int:
    """Size of a tar whose members take ``member_bytes``: end-of-archive blocks, padded to a record."""
    return -(-(member_bytes + 2 * BLOCK) // RECORD) * RECORD


def sample_key(pair_id: str, split: str) -> str:
    """WebDataset key of a pair in ``split``: the pair id, suffixed in the ``_unique`` splits."""
    key = pair_id + UNIQUE_SUFFIX if split.endswith("_unique") else pair_id
    if not key or "." in key or "/" in key or not key.isascii() or not key.isprintable() or len(key) > 90:
        raise ValueError(f"pair_id {pair_id!r} cannot be a WebDataset key (no dots, slashes, non-ASCII; <= 90 chars)")
    return key


def estimate_sample_bytes(samples: pa.Table, jpg_0_bytes: np.ndarray, jpg_1_bytes: np.ndarray) -> np.ndarray:
    """Tar bytes each sample will take (exact for the JPEGs, whose sizes are given; the JSON is an upper estimate)."""
    text = np.zeros(samples.num_rows, dtype=np.int64)
    for field in samples.schema:
        if pa.types.is_string(field.type):
            text += pc.fill_null(pc.binary_length(samples.column(field.name)), 0).to_numpy()
    caption = pc.binary_length(samples.column("caption")).to_numpy().astype(np.int64)
    json_est = text + 40 * samples.num_columns
    ceil = lambda a: -(-a // BLOCK) * BLOCK  # noqa: E731
    return 4 * BLOCK + ceil(jpg_0_bytes.astype(np.int64)) + ceil(jpg_1_bytes.astype(np.int64)) + ceil(caption) + ceil(json_est)


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to write one shard (rows already in shard order, with ``key``).

    ``rows`` may be a zero-copy slice of the whole split: a task pickles its rows as an Arrow IPC
    stream, which holds only the slice (pickling a slice directly copies the parent's buffers).
    ``jpg_identities``, when given, holds per row the :func:`file_identity` of its two JPEGs as they
    were when their sha256 was taken (``JPG_IDENTITY_FIELDS`` for ``jpg_0``, then for ``jpg_1``): the
    writer refuses a JPEG that is no longer that file (:class:`JpgChangedError`), so the tar never
    holds other bytes than the digests the sidecar publishes. A row slice of one int64 array: it
    pickles as its own bytes.
    """

    split: str
    name: str
    out_dir: str
    home_root: str
    rows: pa.Table
    plan_sha256: str
    fsync: bool = True
    direct: bool = False     # write the tar with O_DIRECT where the file system takes it
    jpg_identities: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)   # (rows, 8) int64

    def __reduce__(self):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.rows.schema) as writer:
            writer.write_table(self.rows)
        return (_task_from_ipc, (self.split, self.name, self.out_dir, self.home_root, sink.getvalue(),
                                 self.plan_sha256, self.fsync, self.direct, self.jpg_identities))

    def paths(self) -> tuple[Path, Path, Path]:
        """The shard's tar, sidecar and stats paths."""
        return shard_paths(Path(self.out_dir), self.name)


def _task_from_ipc(split: str, name: str, out_dir: str, home_root: str, rows: pa.Buffer,
                   plan_sha256: str, fsync: bool, direct: bool, jpg_identities: np.ndarray | None = None) -> ShardTask:
    return ShardTask(split, name, out_dir, home_root, pa.ipc.open_stream(rows).read_all(), plan_sha256, fsync,
                     direct, jpg_identities)


JPG_IDENTITY_FIELDS = ("bytes", "mtime_ns", "ctime_ns", "inode")


def file_identity(info: os.stat_result) -> list[int]:
    """What says a file is still the one whose sha256 was taken: size, mtime, ctime, inode
    (``JPG_IDENTITY_FIELDS``). A new file renamed in has another inode (and ctime); a change in
    place moves the ctime, which ``utime`` cannot put back. Each fits an int64 (an inode from 2**63
    is taken as its two's complement)."""
    inode = info.st_ino
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, inode - (1 << 64) if inode >= 1 << 63 else inode]


class JpgChangedError(RuntimeError):
    """A training JPEG is no longer the file whose sha256 the version carries (replaced or written
    since its digest was taken): the publish stops, nothing of it becomes visible, and a rerun
    hashes the JPEG again."""


DUCKDB_JSON_MIN_ROWS = 200    # below this, DuckDB's fixed cost per call (a plan, ~8 ms) loses: measured crossover ~200 rows


def sample_json(rows: pa.Table, min_rows_for_duckdb: int | None = None) -> pa.Array:
    """Each row's ``.json`` member: compact UTF-8 JSON of every column but ``key``, in column order.

    Timestamps become ``YYYY-MM-DDTHH:MM:SS.ffffff`` and dates ``YYYY-MM-DD`` text; numbers stay
    numbers; NaN/Infinity are refused. From ``min_rows_for_duckdb`` rows DuckDB's ``to_json`` writes
    the whole shard in one call, about 8x faster than ``json.dumps`` per row; both give the same bytes
    (``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``; a unit test compares them row by row).
    ``min_rows_for_duckdb`` defaults to ``DUCKDB_JSON_MIN_ROWS`` as it is when called.

    Not for every value: floats from 1e16 or below 1e-4 and control characters written as ``\\u00XX``
    with a hex letter come out differently. So the path is chosen per shard, from the shard's own
    rows (:func:`batch_json`), never from a batch, and a shard's bytes never depend on its batch.
    """
    _check_finite(rows)
    if rows.num_rows < (DUCKDB_JSON_MIN_ROWS if min_rows_for_duckdb is None else min_rows_for_duckdb):
        return _json_dumps_rows(rows)
    return _duckdb_select(rows, f"{_json_sql(rows.schema)}::VARCHAR")


def batch_json(shard_rows: list[pa.Table]) -> list[list[str]]:
    """The ``.json`` members of several shards, each as :func:`sample_json` gives it for that shard
    alone: shards below the DuckDB threshold go through ``json.dumps`` together (row by row, so the
    same text), larger ones through DuckDB one by one."""
    out: list[list[str] | None] = [None] * len(shard_rows)
    small = []
    for i, rows in enumerate(shard_rows):
        if rows.num_rows < DUCKDB_JSON_MIN_ROWS:
            small.append(i)
        else:
            out[i] = sample_json(rows).to_pylist()
    if small:
        together = (pa.concat_tables([shard_rows[i] for i in small], promote_options="default") if len(small) > 1
                    else shard_rows[small[0]])
        _check_finite(together)
        texts = _json_dumps_rows(together).to_pylist()
        start = 0
        for i in small:
            out[i] = texts[start:start + shard_rows[i].num_rows]
            start += shard_rows[i].num_rows
    return out  # type: ignore[return-value]


def json_digests(rows: pa.Table) -> list[str]:
    """md5 (hex) of each row's ``.json`` member, computed in DuckDB without keeping the texts."""
    _check_finite(rows)
    return _duckdb_select(rows, f"md5({_json_sql(rows.schema)}::VARCHAR)").to_pylist()


def _check_finite(rows: pa.Table) -> None:
    """NaN / Infinity cannot be JSON: refuse them, naming the first sample that holds one."""
    for field in rows.schema:
        if pa.types.is_floating(field.type):
            finite = pc.is_finite(rows.column(field.name))   # null where the value is null: not a failure
            if pc.all(finite, skip_nulls=True, min_count=0).as_py() is False:
                bad = rows.filter(pc.invert(finite)).column("key")[0].as_py()   # the filter drops nulls
                raise ValueError(f"sample {bad!r}: pair columns are not valid JSON ({field.name} is not finite)")


def _json_sql(schema: pa.Schema) -> str:
    """DuckDB expression of a row's JSON text (every column but ``key``; json.dumps' formatting)."""
    members = []
    for field in schema:
        if field.name == "key":
            continue
        name = '"' + field.name.replace('"', '""') + '"'
        if pa.types.is_timestamp(field.type):
            value = f"strftime({name}, '%Y-%m-%dT%H:%M:%S.%f')"
        elif pa.types.is_date(field.type):
            value = f"strftime({name}, '%Y-%m-%d')"
        else:
            value = name
        members.append(f"{name} := {value}")
    return f"to_json(struct_pack({', '.join(members)}))"


def _duckdb_select(rows: pa.Table, expression: str) -> pa.Array:
    """One string column: ``expression`` evaluated per row of ``rows``, in row order."""
    con = _duckdb()
    con.register("samples", rows)
    try:
        result = con.sql(f"SELECT {expression} FROM samples").to_arrow_table()
    finally:
        con.unregister("samples")
    return result.column(0).combine_chunks().cast(pa.string())


def _json_dumps_rows(rows: pa.Table) -> pa.Array:
    """``sample_json`` with the standard library, one row at a time (numbers already checked finite)."""
    columns = {}
    for field in rows.schema:
        if field.name == "key":
            continue
        column = rows.column(field.name)
        if pa.types.is_timestamp(field.type):
            column = pc.strftime(column, "%Y-%m-%dT%H:%M:%S")  # Arrow writes the seconds as SS.ffffff
        elif pa.types.is_date(field.type):
            column = column.cast(pa.string())
        columns[field.name] = column
    return pa.array([json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                     for record in pa.table(columns).to_pylist()], pa.string())


_DUCKDB: dict[int, object] = {}


def _duckdb():
    """One in-memory DuckDB per process (a forked worker opens its own; connecting costs ~20 ms).

    A connection inherited through fork is never closed or freed in the child: its threads do not
    exist there, and tearing it down crashes the process.
    """
    from pipelines.sqlrun import offline_connection  # DuckDB imported where it is used, as before

    pid = os.getpid()
    if pid not in _DUCKDB:
        con = offline_connection()
        con.execute("SET threads = 1")  # one per worker process: the pool already uses every core
        _DUCKDB[pid] = con
    return _DUCKDB[pid]


def sidecar_table(rows: pa.Table, tar_name: str, offsets: dict, sizes: dict) -> pa.Table:
    """A shard's sidecar: per sample its key, shard, position, each member's offset and size (per
    ``MEMBERS``, sequences in sample order) and every sample column."""
    return _sidecars_table(rows, [tar_name], [rows.num_rows], offsets, sizes)


def _sidecars_table(rows: pa.Table, tar_names: list[str], counts: list[int], offsets: dict, sizes: dict) -> pa.Table:
    """The sidecar rows of consecutive shards at once (``counts[i]`` samples in ``tar_names[i]``)."""
    return pa.table({
        "key": rows.column("key"),
        "shard": pa.array([name for name, n in zip(tar_names, counts) for _ in range(n)], pa.string()),
        "sample_index": pa.array([i for n in counts for i in range(n)], pa.int32()),
        **{f"{prefix}_{what}": pa.array(values[m], pa.int64())
           for m, prefix in zip(MEMBERS, ("jpg_0", "jpg_1", "json", "txt"))
           for what, values in (("offset", offsets), ("size", sizes))},
        **{name: rows.column(name) for name in rows.column_names if name != "key"},
    })


# A sidecar holds a shard's few samples: min/max statistics of its 37 columns would be 40% of the
# file. They are kept for the columns a query over every sidecar selects on, so DuckDB still skips
# the files without a given key, day or user from their footers. No dictionary pages and no
# compression: on a few rows neither makes the file much smaller (zstd: 8.3 KB instead of 8.8 for a
# 16-sample sidecar), and zstd alone more than doubled the time to write one (1.2 ms instead of 0.55).
SIDECAR_PARQUET_OPTIONS = {"write_statistics": ["key", "dt", "user_id"], "use_dictionary": False,
                           "compression": "none"}


def sidecar_bytes(table: pa.Table) -> bytes:
    """The sidecar's Parquet file, built in memory (it is hashed for the manifest and written in one call)."""
    return _parquet_bytes(cast_to_schema(table, get_schema("shard_samples")))


def _parquet_bytes(table: pa.Table) -> bytes:
    """``table`` (already in the sidecar schema) as a sidecar Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **{**PARQUET_OPTIONS, **SIDECAR_PARQUET_OPTIONS})
    return sink.getvalue().to_pybytes()


def write_shard(task: ShardTask) -> dict:
    """Write one shard's tar, sidecar and stats (last); return the stats dict (see :func:`write_batch`)."""
    return write_batch([task])[0]


def write_batch(tasks: list[ShardTask]) -> list[dict]:
    """Write the tars, sidecars and stats of several shards; return their stats dicts, in order.

    A shard whose stats file already names the same plan and whose files have the recorded sizes is
    kept as is: that is how a rerun after a crash resumes. The stats file is the commit marker, so it
    is written only after the shard's tar and sidecar are on disk. A :class:`_Committer` thread does
    that while this one goes on writing: it fsyncs the files handed to it (all that are waiting, in
    one round: the first fsync commits the journal for all of them) and then writes the markers whose
    files are synced. Markers get no fsync of their own: a lost or torn one only means the shard is
    written again, and the publish fsyncs the whole version before it appears. The batch's sidecar
    tables are built in one go, and its small shards' JSON members together (:func:`batch_json`:
    each shard's JSON still as it would be alone).

    Every file is written under a temporary name and renamed (a file may be hard-linked from an
    older version: never write one in place); on any error the temporary files are removed, and a
    full disk is reported with the path.
    """
    results: list[dict | None] = [None] * len(tasks)
    todo = []
    for i, task in enumerate(tasks):
        results[i] = _committed_stats(task.paths()[2], task.plan_sha256)
        if results[i] is None:
            todo.append(i)
    if not todo:
        return results  # type: ignore[return-value]
    rows = (pa.concat_tables([tasks[i].rows for i in todo], promote_options="default") if len(todo) > 1
            else tasks[todo[0]].rows)
    texts = batch_json([tasks[i].rows for i in todo])
    committer = _Committer()
    try:
        written = []
        offsets: dict[str, list[int]] = {m: [] for m in MEMBERS}
        sizes: dict[str, list[int]] = {m: [] for m in MEMBERS}
        for i, shard_texts in zip(todo, texts):
            committer.check()
            task = tasks[i]
            tar_path = task.paths()[0]
            tar_path.parent.mkdir(parents=True, exist_ok=True)
            tar_info, fd = _write_new(tar_path, lambda fd: _write_tar(task.rows, shard_texts, task.home_root,
                                                                      fd, offsets, sizes, task.fsync, task.direct,
                                                                      task.jpg_identities),
                                         task.fsync)
            committer.put(fd, tar_path)
            faults.maybe_crash("shards.after_tar")  # tests: die mid-shard (tar in place, no sidecar, no stats)
            written.append((i, tar_info))
        tables = cast_to_schema(_sidecars_table(rows, [tasks[i].paths()[0].name for i in todo],
                                                [tasks[i].rows.num_rows for i in todo], offsets, sizes),
                                get_schema("shard_samples"))
        start = 0
        for i, (position, jpg_bytes, tar_sha256) in written:
            committer.check()
            task = tasks[i]
            n = task.rows.num_rows
            tar_path, sidecar_path, stats_path = task.paths()
            sidecar = _parquet_bytes(tables.slice(start, n))
            start += n
            keys = task.rows.column("key")
            results[i] = {
                "split": task.split,
                "shard": tar_path.name,
                "num_samples": n,
                "num_bytes": position,
                "jpg_bytes": jpg_bytes,
                "sha256": tar_sha256,
                "sidecar": sidecar_path.name,
                "sidecar_bytes": len(sidecar),
                "sidecar_sha256": hashlib.sha256(sidecar).hexdigest(),
                "first_key": keys[0].as_py() if n else "",
                "last_key": keys[n - 1].as_py() if n else "",
                "plan_sha256": task.plan_sha256,
            }
            marker = (json.dumps(results[i], indent=1, sort_keys=True) + "\n").encode()
            _, fd = _write_new(sidecar_path, lambda fd: _write_all(fd, [sidecar], len(sidecar)), task.fsync)
            committer.put(fd, sidecar_path, stats_path, marker)     # the open fd is the committer's from here
    except BaseException:
        committer.close(raise_error=False)   # the shards completed before the error still get their markers
        raise
    committer.close()
    return results  # type: ignore[return-value]


class _Committer:
    """A thread that fsyncs a writer's finished files and then writes the commit markers that follow them.

    ``put(fd, path)`` hands over the open file written at ``path`` to fsync and close (``fd`` None:
    nothing to sync); ``put(fd, path, marker, data)`` also a marker to write at ``marker`` once that
    file and everything handed over before it are synced. The first error stops all further syncing
    and every later marker; ``check`` and ``close`` raise it in the writer (a full disk names its file).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="shard-committer", daemon=True)
        self._thread.start()

    def put(self, fd: int | None, path: Path, marker: Path | None = None, data: bytes = b"") -> None:
        self._queue.put((fd, path, marker, data))

    def check(self) -> None:
        """Raise the thread's error, if it had one."""
        if self._error is not None:
            raise self._error

    def close(self, raise_error: bool = True) -> None:
        """Wait until everything handed over is synced and committed (or the thread failed)."""
        self._queue.put(None)
        self._thread.join()
        if not self._finished and self._error is None:
            self._error = RuntimeError("the shard committer thread stopped before its work was done")
        if raise_error:
            self.check()

    def _fail(self, exc: BaseException, path: Path) -> None:
        """Keep the first error (a full disk names ``path``)."""
        if self._error is None:
            is_full = is_full_disk(exc) and not says_where(exc)
            self._error = no_space_error(exc, path) if is_full else exc

    def _run(self) -> None:
        """Until the sentinel: sync and close what was handed over, then write its markers; after an
        error, only close (every fd is closed, whatever fails)."""
        done = False
        while not done:
            items = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while items[-1] is not None:
                    items.append(self._queue.get_nowait())
            if items[-1] is None:
                items.pop()
                done = True
            for fd, path, _, _ in items:
                if fd is None:
                    continue
                try:
                    if self._error is None:
                        os.fsync(fd)
                except BaseException as exc:   # noqa: BLE001 - handed to the writer thread
                    self._fail(exc, path)
                try:
                    os.close(fd)                # close may report a write error too (NFS): not committed
                except BaseException as exc:   # noqa: BLE001
                    self._fail(exc, path)
            for _, _, marker, data in items:
                if marker is None or self._error is not None:
                    continue
                try:
                    _write_new(marker, lambda fd: _write_all(fd, [data], len(data)), False)
                except BaseException as exc:   # noqa: BLE001
                    self._fail(exc, marker)
        self._finished = True


def _write_new(path: Path, write, keep_open: bool):
    """Write a new file at ``path``: ``write(fd)`` into a new temporary file beside it
    (:func:`formats.files.create_temp`: exclusive, no links followed, the umask's mode), then rename
    it over ``path``.

    Returns ``(write's result, fd)``: the fd still open when ``keep_open`` (the caller fsyncs and
    closes it), else None. The temporary file is removed on any error (a full disk names ``path``).
    """
    fd, name = create_temp(path.parent, path.name)
    tmp = path.parent / name
    try:
        result = write(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_full_disk(exc):
            raise no_space_error(exc, path) from exc
        raise
    if keep_open:
        return result, fd
    os.close(fd)
    return result, None


def _write_tar(rows: pa.Table, texts: list[str], home: str, fd: int, offsets: dict, sizes: dict,
               writeback: bool, direct: bool = False, identities: np.ndarray | None = None) -> tuple[int, int, str]:
    """Write the tar of ``rows`` (JSON members ``texts``) to ``fd``: (bytes, JPEG bytes, sha256).

    Appends each member's offset and size to ``offsets`` / ``sizes``. The tar is built in a
    :class:`~pipelines.publish.chunkwriter.ChunkWriter` (JPEGs read straight into its buffer) and
    written a chunk at a time: with ``direct`` by ``O_DIRECT`` where the file system takes it, else
    through the page cache, where ``writeback`` starts the disk on each chunk (the caller fsyncs).
    ``identities`` (see :class:`ShardTask`): each JPEG must still be that file, before and after it
    is read (two ``fstat`` calls, no second pass over its bytes).
    """
    jpg_bytes = 0
    columns = [rows.column(name).to_pylist() for name in ("key", "jpg_0_key", "jpg_1_key", "caption")]
    expected = identities.tolist() if identities is not None else [None] * rows.num_rows
    on_written = (lambda offset, length: start_writeback(fd, offset, length)) if writeback else None
    with ChunkWriter(fd, direct, on_written) as out:
        for key, jpg_0_key, jpg_1_key, caption, text, ids in zip(*columns, texts, expected):
            for side, member, relpath in zip((0, 4), MEMBERS[:2], (jpg_0_key, jpg_1_key)):
                size = _read_jpg_into(out, home, relpath, key, ids[side:side + 4] if ids is not None else None)
                jpg_bytes += size
                _finish_member(out, f"{key}.{member}", size, offsets[member], sizes[member])
            for member, data in zip(MEMBERS[2:], (text.encode("utf-8"), caption.encode("utf-8"))):
                out.reserve(2 * BLOCK + len(data))          # header, bytes, padding
                out.view[out.fill + BLOCK:out.fill + BLOCK + len(data)] = data
                _finish_member(out, f"{key}.{member}", len(data), offsets[member], sizes[member])
            out.maybe_write()
        out.add_bytes(bytes(tar_size(out.position) - out.position))
        position, sha256 = out.close()
    return position, jpg_bytes, sha256


def _finish_member(out: ChunkWriter, name: str, size: int, offsets: list[int], sizes: list[int]) -> None:
    """Put the header in front of the ``size`` bytes already placed a block past ``out``'s end, pad
    them to a block, count them as filled, and note where the bytes start and how many there are."""
    at = out.fill
    out.view[at:at + BLOCK] = tar_header(name.encode(), size)
    pad = -size % BLOCK
    if pad:
        out.view[at + BLOCK + size:at + BLOCK + size + pad] = _ZEROS[:pad]
    offsets.append(out.position + BLOCK)
    sizes.append(size)
    out.advance(BLOCK + size + pad)


_SYNC_FILE_RANGE_WRITE = 2         # <linux/fs.h>: start writeback of the range's dirty pages, do not wait
_sync_file_range = None
IOV_MAX = 1024                     # most buffers one writev takes (Linux)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes from ``offset`` to disk now, without waiting.

    Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; the final ``fsync`` still makes the file
    durable, it just finds most pages already written, so the disk works while the writer hashes
    and copies the next samples. A no-op where the call does not exist.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        with contextlib.suppress(OSError, AttributeError, TypeError):   # no libc handle or no such call
            function = ctypes.CDLL(None, use_errno=True).sync_file_range
            function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            function.restype = ctypes.c_int
            _sync_file_range = function
    if _sync_file_range:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _write_all(fd: int, pieces: list[bytes], total: int) -> None:
    """Write ``pieces`` (``total`` bytes) in order with ``os.writev``, continuing after a partial write."""
    written = os.writev(fd, pieces[:IOV_MAX])
    if written == total:
        return
    views = [memoryview(piece) for piece in pieces]
    while True:
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if not views:
            return
        if written:
            views[0] = views[0][written:]
        written = os.writev(fd, views[:IOV_MAX])


def no_space_error(exc: OSError, path: Path) -> OSError:
    """``OSError(ENOSPC)`` saying which file could not be written (the caller chains ``exc``); ``OSError(EDQUOT)``
    "disk quota exceeded at PATH" for an account over its quota (review rev33h). The path is in the text, which
    :func:`formats.files.no_space_message` reads (also carried in a step failure's text)."""
    code = exc.errno if is_full_disk(exc) else errno.ENOSPC
    return OSError(code, f"{full_disk_words(code)} at {path}")


def says_where(exc: BaseException) -> bool:
    """Whether ``exc``'s text is :func:`no_space_error`'s (a full disk at a path already named)."""
    return re.search(r"(?:no space left on device|disk quota exceeded) at ", str(exc)) is not None


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the writers' temporary files (``.NAME.tmp``, any depth) under ``folder``; return them."""
    removed = []
    if folder.is_dir():
        for path in sorted(folder.rglob(".*.tmp")):
            if path.is_file() or path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def _committed_stats(stats_path: Path, plan_sha256: str, raw: list[bytes] | None = None) -> dict | None:
    """The stats of a shard already written for the same plan with intact file sizes, else None.

    Only regular files count (a symlink put in place of one is never followed), and a shard this
    account cannot read (another account's version under a strict umask) is simply not there.
    ``raw``, when given, receives the stats file's bytes.
    """
    tar_path, sidecar_path, _ = shard_paths(stats_path.parent, stats_path.name[: -len(STATS_SUFFIX)])
    data = read_small_file(stats_path, 1 << 20)       # None: absent, a symlink, unreadable, not a file, too large
    if data is None:
        return None
    try:
        stats = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):   # a marker torn by a power cut (it has no fsync of its own)
        return None
    if (not isinstance(stats, dict) or set(stats) != STATS_KEYS or stats["plan_sha256"] != plan_sha256
            or stats["shard"] != tar_path.name or stats["sidecar"] != sidecar_path.name
            or not all(type(stats[key]) is int for key in STATS_INT_KEYS)):
        return None
    if regular_size(tar_path) == stats["num_bytes"] and regular_size(sidecar_path) == stats["sidecar_bytes"]:
        if raw is not None:
            raw.append(data)
        return stats
    return None


def regular_size(path: Path) -> int | None:
    """The size of ``path`` if it is a regular file itself (not a link to one), else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


STATS_KEYS = {"split", "shard", "num_samples", "num_bytes", "jpg_bytes", "sha256", "sidecar", "sidecar_bytes",
              "sidecar_sha256", "first_key", "last_key", "plan_sha256"}
STATS_INT_KEYS = ("num_samples", "num_bytes", "jpg_bytes", "sidecar_bytes")


def _read_jpg_into(out: ChunkWriter, home: str, relpath: str, key: str, expected: list[int] | None = None) -> int:
    """Read a training JPEG (copied verbatim, never decoded; a regular file, checked once open) into
    ``out``'s buffer, a header's length past its end; return its size.

    ``expected``: the JPEG's :func:`file_identity` when its sha256 was taken. The open file must
    have it, and still have it once read (with as many bytes read as its size), else
    :class:`JpgChangedError`: the bytes copied might not be those the digest describes.

    Only the JPEG's own errors say it cannot be read: a write that making room sets off (a full
    disk) keeps its own error.
    """
    def changed(now: list[int]) -> JpgChangedError:
        was = dict(zip(JPG_IDENTITY_FIELDS, expected))
        return JpgChangedError(f"sample {key!r}: training JPEG {relpath!r} changed during the publish (it is "
                               f"{dict(zip(JPG_IDENTITY_FIELDS, now))}, its sha256 was taken of {was}); "
                               "run it again")

    def unreadable(exc: OSError) -> FileNotFoundError:
        return FileNotFoundError(f"sample {key!r}: cannot read training JPEG {relpath!r}: {exc}")

    def readinto(view: memoryview) -> int:
        try:
            return handle.readinto(view)
        except OSError as exc:
            raise unreadable(exc) from exc

    try:
        handle = open_regular_file(os.path.join(home, relpath))
    except OSError as exc:
        raise unreadable(exc) from exc
    with handle:
        info = os.fstat(handle.fileno())
        if expected is not None and file_identity(info) != expected:
            raise changed(file_identity(info))
        size_hint = info.st_size
        out.reserve(2 * BLOCK + size_hint)             # header, bytes, padding (add_file keeps its room)
        size = out.add_file(readinto, BLOCK, size_hint)
        if expected is not None:
            after = file_identity(os.fstat(handle.fileno()))
            if after != expected or size != expected[0]:
                raise changed(after if after != expected else [size, *after[1:]])
        return size


def jpg_key_is_safe(relpath: str) -> bool:
    """A training JPEG key must be a plain relative path inside the home (no ``..``, no root)."""
    if not relpath or relpath.startswith("/") or "\\" in relpath or "\0" in relpath:
        return False
    return all(part not in ("", ".", "..") for part in relpath.split("/"))
