"""The raw zone's line format: one JSON line per app row, in the app's column order, gzip with fixed headers.

Both ways into the raw zone write through these functions: the simulator (``simulator``)
and the app-database export (``pipelines.appdb``), so a row gives the same bytes whichever wrote it.
Strings are JSON literals with ``ensure_ascii`` escaping, floats are Python's shortest ``repr``
(``NaN``/``Infinity`` as ``json.dumps`` writes them, which the ingest quarantines as
``invalid_value``), SQL NULL is ``null``. Every string field goes through ``enc`` (default
``jstr``), so a caller can carry bytes that are not UTF-8 (see ``pipelines.appdb.export``).
"""
from __future__ import annotations

import gzip
import io
import json
import math
from typing import Callable, Optional

GZIP_LEVEL = 3
Encoder = Callable[[Optional[str]], str]


def jstr(value: str | None) -> str:
    """JSON literal of an optional string (identifiers and generated names need no escaping)."""
    if value is None:
        return "null"
    if value.isascii() and '"' not in value and "\\" not in value and value.isprintable():
        return f'"{value}"'
    return json.dumps(value)


def jnum(value: int | float | None) -> str:
    """JSON literal of an optional number: ``repr`` for finite values, as ``json.dumps`` otherwise."""
    if value is None:
        return "null"
    if type(value) is float and not math.isfinite(value):
        return json.dumps(value)
    return repr(value)


def user_line(user_id: int | None, created_at: str | None, email: str | None, name: str | None,
              enc: Encoder = jstr) -> str:
    """One ``users`` export line."""
    return (f'{{"user_id": {jnum(user_id)}, "created_at": {enc(created_at)}, "email": {enc(email)}, '
            f'"name": {enc(name)}}}')


def image_line(image_id: int | None, created_at: str | None, image_uid: str | None, user_id: int | None,
               prompt_json: str, negative_json: str, seed: int | None, gs: float | None, steps: int | None,
               idx: int | None, num_generated: int | None, scheduler_cls: str | None, model_id: str | None,
               enc: Encoder = jstr) -> str:
    """One ``images`` export line (``prompt_json`` and ``negative_json`` are JSON literals)."""
    return (f'{{"image_id": {jnum(image_id)}, "created_at": {enc(created_at)}, "image_uid": {enc(image_uid)}, '
            f'"user_id": {jnum(user_id)}, "prompt": {prompt_json}, "negative_prompt": {negative_json}, '
            f'"seed": {jnum(seed)}, "gs": {jnum(gs)}, "steps": {jnum(steps)}, "idx": {jnum(idx)}, '
            f'"num_generated": {jnum(num_generated)}, "scheduler_cls": {enc(scheduler_cls)}, '
            f'"model_id": {enc(model_id)}}}')


def ranking_line(ranking_id: int | None, created_at: str | None, user_id: int | None, uids: list[str | None],
                 best: str | None, prompt_json: str, enc: Encoder = jstr) -> str:
    """One ``rankings`` export line; ``uids`` has four entries (None when not shown)."""
    return (f'{{"ranking_id": {jnum(ranking_id)}, "created_at": {enc(created_at)}, "user_id": {jnum(user_id)}, '
            f'"image_0_uid": {enc(uids[0])}, "image_1_uid": {enc(uids[1])}, "image_2_uid": {enc(uids[2])}, '
            f'"image_3_uid": {enc(uids[3])}, "best_image_uid": {enc(best)}, "prompt": {prompt_json}}}')


def download_line(download_id: int | None, created_at: str | None, user_id: int | None, image_uid: str | None,
                  prompt_json: str, enc: Encoder = jstr) -> str:
    """One ``downloads`` export line."""
    return (f'{{"download_id": {jnum(download_id)}, "created_at": {enc(created_at)}, "user_id": {jnum(user_id)}, '
            f'"image_uid": {enc(image_uid)}, "prompt": {prompt_json}}}')


def gzip_writer(fileobj: io.RawIOBase | io.BufferedIOBase) -> gzip.GzipFile:
    """A gzip stream with no file name and mtime 0 over ``fileobj``, so equal input gives equal bytes."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, mtime=0, compresslevel=GZIP_LEVEL)


def gzip_bytes(data: bytes) -> bytes:
    """``data`` compressed by ``gzip_writer``."""
    buffer = io.BytesIO()
    with gzip_writer(buffer) as handle:
        handle.write(data)
    return buffer.getvalue()
