"""Arrow tables of the accepted rows, one builder per raw table, plus ``ingest_files``.

The transformations: ``[single_quote]`` -> ``'`` in prompts and negative prompts; each
``[bracketed]`` part of a prompt (after unescaping) moves to ``bracket_negative_prompt`` (parts
stripped, joined with ``", "``, null when there are none) and is replaced by one space, then the
prompt is stripped of surrounding whitespace (downloads get the same prompt cleaning, without the
bracket column); ``created_at`` -> ``timestamp[us]``; rankings get ``num_shown`` (2 or 4),
``best_image_uid = 'none'`` -> null with ``is_tie = true``; images get ``blob_path =
raw/images/<image_uid>.png``; users keep only ``user_id`` and ``created_at`` (email and name never
leave the raw zone); every table gets ``dt``.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

import pyarrow as pa

from formats.home import DataHome
from pipelines.ingest import parse as rp
from pipelines.ingest.config import TableReport


# ---------------------------------------------------------------------------------------------
def _dt_column(day: dt.date, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(day, pa.date32()), n)


def _timestamps(texts: Sequence[str]) -> pa.Array:
    """Validated ``YYYY-MM-DD HH:MM:SS[.f]`` strings -> timestamp[us] (Arrow's ISO-8601 cast)."""
    return pa.array(texts, pa.string()).cast(pa.timestamp("us"))


def _users_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 4
    return pa.table({"user_id": pa.array(cols[0], pa.int64()),
                     "created_at": _timestamps(cols[1]),
                     "dt": _dt_column(day, len(rows))})


def _images_table(home: DataHome, rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 13
    split = [rp.split_prompt(p) for p in cols[4]]
    return pa.table({
        "image_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "image_uid": pa.array(cols[2], pa.string()),
        "user_id": pa.array(cols[3], pa.int64()),
        "prompt": pa.array([s[0] for s in split], pa.string()),
        "bracket_negative_prompt": pa.array([s[1] for s in split], pa.string()),
        "negative_prompt": pa.array([None if p is None else rp.unescape(p) for p in cols[5]], pa.string()),
        "seed": pa.array(cols[6], pa.int64()),
        "gs": pa.array(cols[7], pa.float64()),
        "steps": pa.array(cols[8], pa.int32()),
        "idx": pa.array(cols[9], pa.int32()),
        "num_generated": pa.array(cols[10], pa.int32()),
        "scheduler_cls": pa.array(cols[11], pa.string()),
        "model_id": pa.array(cols[12], pa.string()),
        "blob_path": pa.array([home.raw_image_relpath(uid) for uid in cols[2]], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def _rankings_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 9
    split = [rp.split_prompt(p) for p in cols[8]]
    return pa.table({
        "ranking_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "user_id": pa.array(cols[2], pa.int64()),
        "image_0_uid": pa.array(cols[3], pa.string()),
        "image_1_uid": pa.array(cols[4], pa.string()),
        "image_2_uid": pa.array(cols[5], pa.string()),
        "image_3_uid": pa.array(cols[6], pa.string()),
        "num_shown": pa.array([2 if u is None else 4 for u in cols[5]], pa.int8()),
        "best_image_uid": pa.array([None if b == rp.TIE else b for b in cols[7]], pa.string()),
        "is_tie": pa.array([b == rp.TIE for b in cols[7]], pa.bool_()),
        "prompt": pa.array([s[0] for s in split], pa.string()),
        "bracket_negative_prompt": pa.array([s[1] for s in split], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def _downloads_table(rows: list[tuple], day: dt.date) -> pa.Table:
    cols = list(zip(*rows)) or [()] * 5
    return pa.table({
        "download_id": pa.array(cols[0], pa.int64()),
        "created_at": _timestamps(cols[1]),
        "user_id": pa.array(cols[2], pa.int64()),
        "image_uid": pa.array(cols[3], pa.string()),
        "prompt": pa.array([None if p is None else rp.split_prompt(p)[0] for p in cols[4]], pa.string()),
        "dt": _dt_column(day, len(rows)),
    })


def ingest_files_table(reports: list[TableReport], day: dt.date) -> pa.Table:
    reports = sorted(reports, key=lambda r: r.table)
    return pa.table({
        "table": pa.array([r.table for r in reports], pa.string()),
        "dt": _dt_column(day, len(reports)),
        "file": pa.array([r.file for r in reports], pa.string()),
        "file_sha256": pa.array([r.file_sha256 if r.status != "missing" else None for r in reports], pa.string()),
        "file_bytes": pa.array([r.file_bytes for r in reports], pa.int64()),
        "status": pa.array([r.status for r in reports], pa.string()),
        "lines_in": pa.array([r.lines_in for r in reports], pa.int64()),
        "accepted": pa.array([r.accepted for r in reports], pa.int64()),
        "accepted_late_image": pa.array([r.accepted_late_image for r in reports], pa.int64()),
        "quarantined": pa.array([r.quarantined for r in reports], pa.int64()),
    })



BUILDERS = {
    "users": lambda home, rows, date: _users_table(rows, date),
    "images": _images_table,
    "rankings": lambda home, rows, date: _rankings_table(rows, date),
    "downloads": lambda home, rows, date: _downloads_table(rows, date),
}
