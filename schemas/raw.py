"""Raw app-export tables: the app's own column names, as the JSON lines carry them.

Timestamps are naive UTC strings (``2023-03-22 14:11:18.787846``); ``best_image_uid`` is the
literal ``'none'`` for a tie; prompts carry ``[single_quote]`` escapes and ``[bracketed]``
negative-prompt text. These schemas describe a well-formed line after JSON parsing.
"""
import pyarrow as pa

RAW_USERS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("email", pa.string()),
    pa.field("name", pa.string()),
])

RAW_IMAGES = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("negative_prompt", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("gs", pa.float64()),
    pa.field("steps", pa.int64()),
    pa.field("idx", pa.int64()),
    pa.field("num_generated", pa.int64()),
    pa.field("scheduler_cls", pa.string()),
    pa.field("model_id", pa.string(), nullable=False),
])

RAW_RANKINGS = pa.schema([
    pa.field("ranking_id", pa.int64(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("image_0_uid", pa.string(), nullable=False),
    pa.field("image_1_uid", pa.string(), nullable=False),
    pa.field("image_2_uid", pa.string()),
    pa.field("image_3_uid", pa.string()),
    pa.field("best_image_uid", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
])

RAW_DOWNLOADS = pa.schema([
    pa.field("download_id", pa.int64(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
])

SCHEMAS = {
    "raw_users": RAW_USERS,
    "raw_images": RAW_IMAGES,
    "raw_rankings": RAW_RANKINGS,
    "raw_downloads": RAW_DOWNLOADS,
}

# Primary key of each raw table, by table name as it appears in the export file names.
PRIMARY_KEYS = {"users": "user_id", "images": "image_uid", "rankings": "ranking_id", "downloads": "download_id"}
RAW_TABLES = ("users", "images", "rankings", "downloads")
