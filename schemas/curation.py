"""Curation outputs: duplicate clusters, keep/drop decisions, preference pairs, split pairs."""
import pyarrow as pa

TS = pa.timestamp("us")

DUPLICATE_CLUSTERS = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("cluster_id", pa.string(), nullable=False),       # the canonical member's image_uid
    pa.field("cluster_size", pa.int64(), nullable=False),
    pa.field("is_canonical", pa.bool_(), nullable=False),
    pa.field("exact_group", pa.string(), nullable=False),      # sha256 of the bytes
])

DECISIONS = pa.schema([
    pa.field("subject", pa.string(), nullable=False),          # image | ranking | pair | user | prompt
    pa.field("subject_id", pa.string(), nullable=False),
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("evidence", pa.string(), nullable=False),         # JSON object
])

PAIRS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),          # "<ranking_id>_<pair_index>": no dots
    pa.field("ranking_id", pa.int64(), nullable=False),
    pa.field("pair_index", pa.int8(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),          # HMAC pseudonym, never the raw id
    pa.field("caption", pa.string(), nullable=False),
    pa.field("created_at", TS, nullable=False),
    pa.field("image_0_uid", pa.string(), nullable=False),
    pa.field("image_1_uid", pa.string(), nullable=False),
    pa.field("label_0", pa.float64(), nullable=False),
    pa.field("label_1", pa.float64(), nullable=False),
    pa.field("best_image_uid", pa.string()),                   # null for a tie
    pa.field("has_label", pa.bool_(), nullable=False),
    pa.field("are_different", pa.bool_(), nullable=False),
    pa.field("model_0", pa.string(), nullable=False),
    pa.field("model_1", pa.string(), nullable=False),
    pa.field("cluster_0", pa.string(), nullable=False),
    pa.field("cluster_1", pa.string(), nullable=False),
    pa.field("sha256_0", pa.string(), nullable=False),
    pa.field("sha256_1", pa.string(), nullable=False),
    pa.field("jpg_0_key", pa.string(), nullable=False),        # training JPEG, relative to the home
    pa.field("jpg_1_key", pa.string(), nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
])

SPLIT_PAIRS = pa.schema(list(PAIRS) + [
    pa.field("split", pa.string(), nullable=False),            # train | validation | test | validation_unique | test_unique
    pa.field("prompt_key", pa.string(), nullable=False),       # normalized caption
    pa.field("num_example_per_prompt", pa.int64(), nullable=False),
])

SPLIT_REJECTS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("ranking_id", pa.int64(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),          # pseudonym
    pa.field("prompt_key", pa.string(), nullable=False),
    pa.field("home_split", pa.string(), nullable=False),       # the split its user belongs to
    pa.field("reason", pa.string(), nullable=False),           # prompt_conflict | cluster_conflict
    pa.field("evidence", pa.string(), nullable=False),         # JSON: conflicting keys and their owner split
])

SPLIT_LEDGER = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),          # pseudonym
    pa.field("split", pa.string(), nullable=False),            # train | validation | test: changes only unpublished
    pa.field("rule", pa.string(), nullable=False),            # first_user | fill | hash | published (re-seeded)
    pa.field("position", pa.int64(), nullable=False),          # order of first appearance (0-based)
    pa.field("first_dt", pa.date32(), nullable=False),         # export day of the user's first pair
    pa.field("salt", pa.string(), nullable=False),             # SplitConfig.salt the entry was made under
    # the placement settings its split was decided under (assign.placement_settings); null: it stands under any
    # (re-seeded or confirmed published, or written before this column): review rev36f
    pa.field("settings", pa.string(), nullable=True),
])

SPLIT_KEY_OWNERS = pa.schema([
    pa.field("kind", pa.string(), nullable=False),             # prompt (a prompt_key) | image (an image_uid)
    pa.field("key", pa.string(), nullable=False),
    pa.field("owner", pa.string(), nullable=False),            # train | validation | test: never changes once written
    pa.field("first_dt", pa.date32(), nullable=False),         # export day of the earliest row that pinned it
    pa.field("salt", pa.string(), nullable=False),             # SplitConfig.salt the pin was made under
])

SCHEMAS = {
    "duplicate_clusters": DUPLICATE_CLUSTERS,
    "decisions": DECISIONS,
    "pairs": PAIRS,
    "split_pairs": SPLIT_PAIRS,
    "split_rejects": SPLIT_REJECTS,
    "split_ledger": SPLIT_LEDGER,
    "split_key_owners": SPLIT_KEY_OWNERS,
}
