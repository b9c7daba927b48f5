"""Writing the raw zone: JSON lines in the app's column order, gzip with fixed headers, PNG blobs."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from pipelines.storage import write_bytes_atomic

GZIP_LEVEL = 3


def jstr(value: str | None) -> str:
    """JSON literal of an optional string (identifiers and generated names need no escaping)."""
    if value is None:
        return "null"
    if value.isascii() and '"' not in value and "\\" not in value and value.isprintable():
        return f'"{value}"'
    return json.dumps(value)


def user_line(user_id: int, created_at: str, email: str, name: str) -> str:
    """One ``users`` export line."""
    return (f'{{"user_id": {user_id}, "created_at": "{created_at}", "email": {jstr(email)}, '
            f'"name": {jstr(name)}}}')


def image_line(image_id: int, created_at: str, image_uid: str, user_id: int, prompt_json: str,
               negative_json: str, seed: int, gs: float, steps: int, idx: int, num_generated: int,
               scheduler_cls: str, model_id: str) -> str:
    """One ``images`` export line (``prompt_json`` and ``negative_json`` are JSON literals)."""
    return (f'{{"image_id": {image_id}, "created_at": "{created_at}", "image_uid": "{image_uid}", '
            f'"user_id": {user_id}, "prompt": {prompt_json}, "negative_prompt": {negative_json}, '
            f'"seed": {seed}, "gs": {gs!r}, "steps": {steps}, "idx": {idx}, "num_generated": {num_generated}, '
            f'"scheduler_cls": "{scheduler_cls}", "model_id": "{model_id}"}}')


def ranking_line(ranking_id: int, created_at: str, user_id: int, uids: list[str | None], best: str,
                 prompt_json: str) -> str:
    """One ``rankings`` export line; ``uids`` has four entries (None when not shown)."""
    return (f'{{"ranking_id": {ranking_id}, "created_at": "{created_at}", "user_id": {user_id}, '
            f'"image_0_uid": {jstr(uids[0])}, "image_1_uid": {jstr(uids[1])}, "image_2_uid": {jstr(uids[2])}, '
            f'"image_3_uid": {jstr(uids[3])}, "best_image_uid": "{best}", "prompt": {prompt_json}}}')


def download_line(download_id: int, created_at: str, user_id: int, image_uid: str, prompt_json: str) -> str:
    """One ``downloads`` export line."""
    return (f'{{"download_id": {download_id}, "created_at": "{created_at}", "user_id": {user_id}, '
            f'"image_uid": "{image_uid}", "prompt": {prompt_json}}}')


def gzip_bytes(data: bytes) -> bytes:
    """Gzip with no file name and mtime 0, so equal input gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=GZIP_LEVEL) as handle:
        handle.write(data)
    return buffer.getvalue()


def write_jsonl_gz(path: Path, lines: list[str]) -> int:
    """Write lines (each followed by a newline) gzip-compressed and atomically; returns bytes written."""
    payload = gzip_bytes(("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    write_bytes_atomic(path, payload)
    return len(payload)


def write_text_lines(path: Path, lines: list[str]) -> None:
    """Write a plain text file with one entry per line, atomically."""
    write_bytes_atomic(path, ("".join(f"{line}\n" for line in lines)).encode("utf-8"))
