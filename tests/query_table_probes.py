"""What rendering a `pickapic query` table costs, for the hostile-review tests of ``pipelines/query/output.py``:
the Python memory it peaks at, the Arrow memory it allocates, and the Arrow memory ``write_result`` holds
when the table is laid out."""
from __future__ import annotations

import io
import tracemalloc
from typing import Callable, Iterator, TypeVar

import pyarrow as pa

from pipelines.query import output

T = TypeVar("T")


def python_peak(work: Callable[[], T]) -> tuple[T, int]:
    """``work()``'s result and the peak bytes of Python memory (tracemalloc) it took."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def arrow_peak(work: Callable[[], T]) -> tuple[T, int]:
    """``work()``'s result and the most bytes of Arrow memory it held at once (a proxy of the default pool)."""
    pool, default = pa.proxy_memory_pool(pa.default_memory_pool()), pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        return work(), pool.max_memory()
    finally:
        pa.set_memory_pool(default)


def arrow_held_at_render(monkeypatch, schema: pa.Schema,
                         batches: Iterator[pa.RecordBatch]) -> tuple[output.Written, int]:
    """``write_result`` of ``batches`` as a table: its counts, and the Arrow bytes allocated since it started
    that are still held when the table is laid out (``output._render`` is called)."""
    held = []
    render = output._render

    def measured(table, *args, **kwargs):
        held.append(pa.total_allocated_bytes())
        return render(table, *args, **kwargs)

    monkeypatch.setattr(output, "_render", measured)
    before = pa.total_allocated_bytes()
    written = output.write_result(schema, batches, "table", io.BytesIO())
    return written, held[0] - before
