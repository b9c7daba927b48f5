"""Per-image fingerprints from the Beam feature stage, and its dead-letter table."""
import pyarrow as pa

# NudeNet 3.x (320n) classes, in the model's output order.
NSFW_CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)

DETECTION = pa.struct([
    pa.field("class", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("box", pa.list_(pa.int32(), 4)),   # x, y, width, height in original pixels
])

NSFW_MAX = pa.struct([pa.field(name, pa.float32()) for name in NSFW_CLASSES])

IMAGE_FEATURES = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("num_bytes", pa.int64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("phash", pa.uint64(), nullable=False),
    pa.field("dhash", pa.uint64(), nullable=False),
    pa.field("nsfw_detections", pa.list_(DETECTION), nullable=False),
    pa.field("nsfw_max", NSFW_MAX, nullable=False),
    pa.field("train_jpg_key", pa.string(), nullable=False),   # relative to the data home
    pa.field("train_width", pa.int32(), nullable=False),
    pa.field("train_height", pa.int32(), nullable=False),
    pa.field("train_jpg_bytes", pa.int64(), nullable=False),
    pa.field("reused_from", pa.string()),                     # image_uid whose bytes were identical
])

IMAGE_REJECTS = pa.schema([
    pa.field("image_uid", pa.string(), nullable=False),
    pa.field("dt", pa.date32(), nullable=False),
    pa.field("blob_path", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("num_bytes", pa.int64()),
])

SCHEMAS = {"image_features": IMAGE_FEATURES, "image_rejects": IMAGE_REJECTS}
