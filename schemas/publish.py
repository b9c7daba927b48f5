"""Published dataset: per-shard sidecars, the shard index, query snapshots and the PickScore export."""
import pyarrow as pa

from schemas.curation import SPLIT_PAIRS
from schemas.warehouse import QUARANTINE

TS = pa.timestamp("us")

# Every pair column a published sample carries, in its ``KEY.json`` member and its sidecar row: the
# split_pairs columns except the per-split count ``num_example_per_prompt`` (it changes for old samples
# whenever a new day reuses their prompt, so it lives in PROMPT_COUNTS, outside the content-stable
# shards), plus the sha256 of each training JPEG exactly as stored in the tar.
SAMPLE_COLUMNS = pa.schema(
    [field for field in SPLIT_PAIRS if field.name not in ("dt", "split", "prompt_key", "num_example_per_prompt")]
    + [
        pa.field("jpg_0_sha256", pa.string(), nullable=False),  # sha256 of the KEY.0.jpg bytes in the tar
        pa.field("jpg_1_sha256", pa.string(), nullable=False),
    ]
    + [SPLIT_PAIRS.field(name) for name in ("dt", "split", "prompt_key")])

# One row per sample of one tar shard: where each member's bytes are, then every sample column.
SHARD_SAMPLES = pa.schema([
    pa.field("key", pa.string(), nullable=False),              # WebDataset key: no dots, unique in the version
    pa.field("shard", pa.string(), nullable=False),            # tar file name, e.g. pickapic-train-20230301-3f9a1c22b0.tar
    pa.field("sample_index", pa.int32(), nullable=False),      # position of the sample inside the shard
    pa.field("jpg_0_offset", pa.int64(), nullable=False),      # byte offset of KEY.0.jpg's data in the tar
    pa.field("jpg_0_size", pa.int64(), nullable=False),
    pa.field("jpg_1_offset", pa.int64(), nullable=False),
    pa.field("jpg_1_size", pa.int64(), nullable=False),
    pa.field("json_offset", pa.int64(), nullable=False),
    pa.field("json_size", pa.int64(), nullable=False),
    pa.field("txt_offset", pa.int64(), nullable=False),
    pa.field("txt_size", pa.int64(), nullable=False),
] + list(SAMPLE_COLUMNS))

# One row per (split, prompt_key) of a version (<split>/prompt_counts.parquet): the loss weight's count.
PROMPT_COUNTS = pa.schema([
    pa.field("split", pa.string(), nullable=False),
    pa.field("prompt_key", pa.string(), nullable=False),
    pa.field("num_example_per_prompt", pa.int64(), nullable=False),  # rows of this prompt_key in the split
])

# One row per tar shard of a version (meta/shards.parquet).
SHARDS = pa.schema([
    pa.field("split", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("shard_index", pa.int32(), nullable=False),       # position in the split's shards, sorted by name
    pa.field("num_samples", pa.int64(), nullable=False),
    pa.field("num_bytes", pa.int64(), nullable=False),         # size of the tar file
    pa.field("jpg_bytes", pa.int64(), nullable=False),         # image payload inside it
    pa.field("sha256", pa.string(), nullable=False),           # of the tar file
    pa.field("sidecar", pa.string(), nullable=False),
    pa.field("sidecar_sha256", pa.string(), nullable=False),
    pa.field("first_key", pa.string(), nullable=False),
    pa.field("last_key", pa.string(), nullable=False),
])

# One row per split of a version (meta/splits_summary.parquet).
SPLITS_SUMMARY = pa.schema([
    pa.field("split", pa.string(), nullable=False),
    pa.field("num_pairs", pa.int64(), nullable=False),
    pa.field("num_rankings", pa.int64(), nullable=False),
    pa.field("num_users", pa.int64(), nullable=False),
    pa.field("num_prompts", pa.int64(), nullable=False),
    pa.field("num_ties", pa.int64(), nullable=False),
    pa.field("tie_rate", pa.float64(), nullable=False),
    pa.field("num_images", pa.int64(), nullable=False),
    pa.field("num_shards", pa.int64(), nullable=False),
    pa.field("num_bytes", pa.int64(), nullable=False),
    pa.field("min_created_at", TS, nullable=False),
    pa.field("max_created_at", TS, nullable=False),
])

# The quarantine snapshot in a published version: no raw line text (it may hold emails and names).
PUBLISHED_QUARANTINE = pa.schema([field for field in QUARANTINE if field.name != "raw_text"])

# The released Pick-a-Pic / PickScore column set (``pickapic export --format pickscore-parquet``), in the
# release's column order and types (yuvalkirstain/pickapic_v1 dataset card). Two differences by design:
# ``user_id`` is the keyed pseudonym (a string, never the app's int64 id) and ``num_example_per_prompt`` counts
# rows per normalized prompt (``prompt_key``) within the split, where the release counted exact captions.
PICKSCORE_EXPORT = pa.schema([
    pa.field("are_different", pa.bool_(), nullable=False),
    pa.field("best_image_uid", pa.string()),                   # null for a tie
    pa.field("caption", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("ns"), nullable=False),  # the release's timestamp[ns] (naive UTC)
    pa.field("has_label", pa.bool_(), nullable=False),
    pa.field("image_0_uid", pa.string(), nullable=False),
    pa.field("image_0_url", pa.string()),                      # training JPEG key relative to the data home
    pa.field("image_1_uid", pa.string(), nullable=False),
    pa.field("image_1_url", pa.string()),
    pa.field("jpg_0", pa.binary(), nullable=False),
    pa.field("jpg_1", pa.binary(), nullable=False),
    pa.field("label_0", pa.float64(), nullable=False),
    pa.field("label_1", pa.float64(), nullable=False),
    pa.field("model_0", pa.string(), nullable=False),
    pa.field("model_1", pa.string(), nullable=False),
    pa.field("ranking_id", pa.int64(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),          # pseudonym, never the app's user id
    pa.field("num_example_per_prompt", pa.int64(), nullable=False),
    # the pandas index column the release carries (PickScore's limit_examples_per_prompt drops it by name):
    # here the row's position in its split file
    pa.field("__index_level_0__", pa.int64(), nullable=False),
])

SCHEMAS = {
    "shard_samples": SHARD_SAMPLES,
    "prompt_counts": PROMPT_COUNTS,
    "shards": SHARDS,
    "splits_summary": SPLITS_SUMMARY,
    "published_quarantine": PUBLISHED_QUARANTINE,
    "pickscore_export": PICKSCORE_EXPORT,
}
