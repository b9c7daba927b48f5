"""Writing the raw zone: JSON lines (the format lives in ``formats.rawlines``), PNG blobs, moderation lists."""
from __future__ import annotations

from pathlib import Path

from formats.files import write_bytes_atomic
from formats.rawlines import GZIP_LEVEL, download_line, gzip_bytes, image_line, jstr, ranking_line, user_line  # noqa: F401 - the simulator's modules use these through ``export``


def write_jsonl_gz(path: Path, lines: list[str]) -> int:
    """Write lines (each followed by a newline) gzip-compressed and atomically; returns bytes written."""
    payload = gzip_bytes(("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    write_bytes_atomic(path, payload)
    return len(payload)


def write_text_lines(path: Path, lines: list[str]) -> None:
    """Write a plain text file with one entry per line, atomically."""
    write_bytes_atomic(path, ("".join(f"{line}\n" for line in lines)).encode("utf-8"))
