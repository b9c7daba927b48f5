"""Ingested (validated) daily tables and the quarantine table.

Every table carries ``dt`` (the export day it came from). Emails and names never leave the
raw zone: the ingested ``users`` table keeps only the id and the sign-up time.
"""
import pyarrow as pa

TS = pa.timestamp("us")

USERS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("created_at", TS, nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
])

IMAGES = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("created_at", TS, nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),            # unescaped, bracketed text removed
    pa.field("bracket_negative_prompt", pa.string()),           # text that was in [brackets]
    pa.field("negative_prompt", pa.string()),                   # the app's own field
    pa.field("seed", pa.int64()),
    pa.field("gs", pa.float64()),
    pa.field("steps", pa.int32()),
    pa.field("idx", pa.int32()),
    pa.field("num_generated", pa.int32()),
    pa.field("scheduler_cls", pa.string()),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),         # relative to the data home
    pa.field("dt", pa.date32(), nullable=False),
])

RANKINGS = pa.schema([
    pa.field("ranking_id", pa.int64(), nullable=False),
    pa.field("created_at", TS, nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("image_0_uid", pa.string(), nullable=False),
    pa.field("image_1_uid", pa.string(), nullable=False),
    pa.field("image_2_uid", pa.string()),
    pa.field("image_3_uid", pa.string()),
    pa.field("num_shown", pa.int8(), nullable=False),
    pa.field("best_image_uid", pa.string()),                    # null for a tie
    pa.field("is_tie", pa.bool_(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("bracket_negative_prompt", pa.string()),
    pa.field("dt", pa.date32(), nullable=False),
])

DOWNLOADS = pa.schema([
    pa.field("download_id", pa.int64(), nullable=False),
    pa.field("created_at", TS, nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("dt", pa.date32(), nullable=False),
])

QUARANTINE = pa.schema([
    pa.field("table", pa.string(), nullable=False),             # users | images | rankings | downloads
    pa.field("dt", pa.date32(), nullable=False),
    pa.field("file", pa.string(), nullable=False),              # relative to the data home
    pa.field("line_number", pa.int64(), nullable=False),        # 1-based; 0 = the whole file; the first of
                                                                # line_count identical bad lines
    pa.field("last_line_number", pa.int64(), nullable=False),   # the last of them (= line_number when one)
    pa.field("line_count", pa.int64(), nullable=False),         # identical lines (same reason, detail, bytes)
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("raw_text", pa.string()),                          # first 64 KiB, lossy UTF-8
    pa.field("raw_length", pa.int64(), nullable=False),         # bytes in the original line
    pa.field("raw_sha256", pa.string(), nullable=False),
])

SCHEMAS = {
    "users": USERS,
    "images": IMAGES,
    "rankings": RANKINGS,
    "downloads": DOWNLOADS,
    "quarantine": QUARANTINE,
}

# One row per raw file per day: how it was read and where its lines went (the reconciliation record).
INGEST_FILES = pa.schema([
    pa.field("table", pa.string(), nullable=False),             # users | images | rankings | downloads
    pa.field("dt", pa.date32(), nullable=False),
    pa.field("file", pa.string(), nullable=False),              # relative to the data home
    pa.field("file_sha256", pa.string()),                       # null when the file is missing
    pa.field("file_bytes", pa.int64(), nullable=False),         # compressed size on disk
    pa.field("status", pa.string(), nullable=False),            # ok | missing | unreadable | empty
    pa.field("lines_in", pa.int64(), nullable=False),
    pa.field("accepted", pa.int64(), nullable=False),           # rows in the table's partition
    pa.field("accepted_late_image", pa.int64(), nullable=False),  # of those, rows whose image only a later
                                                                # day's export (within late_image_days) has
    pa.field("quarantined", pa.int64(), nullable=False),        # quarantined lines: sum(line_count), line_number > 0
])

SCHEMAS["ingest_files"] = INGEST_FILES

# Entries of the raw zone that are not ingested (formats/rawzone.py): misnamed or linked-out day
# folders, stray files; one row per file under a skipped folder. Rewritten by every ingest.
RAW_ZONE_PROBLEMS = pa.schema([
    pa.field("path", pa.string(), nullable=False),              # relative to the data home
    pa.field("entry", pa.string(), nullable=False),             # the raw/app_logs child it lies under
    pa.field("reason", pa.string(), nullable=False),            # see formats/rawzone.py
    pa.field("detail", pa.string(), nullable=False),
    pa.field("file_bytes", pa.int64()),                         # null for folders, links, other kinds
])

SCHEMAS["raw_zone_problems"] = RAW_ZONE_PROBLEMS
