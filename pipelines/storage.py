"""Atomic, deterministic file writing: temp name in the same folder, fsync, rename."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

# Written into every Parquet file so identical tables give identical bytes.
PARQUET_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it over ``final``.

    Readers see the old file or the new one, never a half-written one. Temp names start
    with ``.`` and end in ``.tmp`` so globs such as ``*.parquet`` never match them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_parquet_atomic(table: pa.Table, final: Path, schema: pa.Schema | None = None) -> Path:
    """Cast ``table`` to ``schema`` (when given) and write it to ``final`` atomically."""
    if schema is not None:
        table = cast_to_schema(table, schema)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
    return Path(final)


def cast_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and order ``schema``'s columns from ``table`` and cast; errors name the column."""
    missing = [name for name in schema.names if name not in table.column_names]
    extra = [name for name in table.column_names if name not in schema.names]
    if missing or extra:
        raise ValueError(f"table columns do not match schema: missing {missing}, unexpected {extra}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"column {field.name!r}: cannot cast {column.type} to {field.type}: {exc}") from exc
        if not field.nullable and columns[-1].null_count:
            raise ValueError(f"column {field.name!r} is declared non-null but has {columns[-1].null_count} nulls")
    return pa.Table.from_arrays(columns, schema=schema)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_parquet_or_empty(path: Path, schema: pa.Schema) -> pa.Table:
    """Read ``path`` if it exists, else an empty table of ``schema``."""
    if Path(path).exists():
        return pq.read_table(path, schema=schema)
    return schema.empty_table()
