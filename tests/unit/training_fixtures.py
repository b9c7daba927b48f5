"""Helpers for the trainer's tests: damaging a shard the way a bad disk or copy would."""
from __future__ import annotations

import tarfile
from pathlib import Path


def damage_a_caption(shard: Path) -> None:
    """Change one letter of the last caption in ``shard`` in place: every sample still decodes, its sha256 differs."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".txt")][-1]
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        letter = handle.read(1)
        handle.seek(member.offset_data)
        handle.write(b"Q" if letter != b"Q" else b"R")
