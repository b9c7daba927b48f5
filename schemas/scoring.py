"""Tables of the scoring commands: evaluation prompts, per-image scores and best-of-n choices."""
import pyarrow as pa

# The benchmark prompt set (``pickapic export --format eval-prompts``): one row per test_unique prompt.
EVAL_PROMPTS = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),        # first 16 hex digits of sha256(prompt_key)
    pa.field("prompt_key", pa.string(), nullable=False),       # normalized prompt (the splits' key)
    pa.field("caption", pa.string(), nullable=False),          # the test_unique row's caption as typed
    pa.field("count", pa.int64(), nullable=False),             # pairs with this prompt_key in the test split
    pa.field("test_unique_key", pa.string(), nullable=False),  # the test_unique sample it comes from
    pa.field("dataset_version", pa.string(), nullable=False),
])

# ``pickapic score`` / ``rerank`` per image: score, softmax preference and rank within its prompt, or an error.
IMAGE_SCORES = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),        # the group the softmax runs over
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),            # path as given
    pa.field("score", pa.float64()),                           # logit_scale.exp() * cos(text, image)
    pa.field("preference", pa.float64()),                      # softmax of the prompt's scores
    pa.field("rank", pa.int32()),                              # 1 = highest score of the prompt
    pa.field("error", pa.string()),                            # why there is no score (null when scored)
])

# ``pickapic rerank``: the best-of-n choice per prompt.
RERANK_CHOICES = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("num_candidates", pa.int32(), nullable=False),
    pa.field("num_scored", pa.int32(), nullable=False),
    pa.field("best_image", pa.string()),                       # null when no candidate could be scored
    pa.field("best_score", pa.float64()),
    pa.field("best_preference", pa.float64()),                 # softmax probability of the choice
    pa.field("runner_up_image", pa.string()),
    pa.field("margin", pa.float64()),                          # best_score - runner-up score
    pa.field("preference_margin", pa.float64()),               # best_preference - runner-up preference
    pa.field("errors", pa.list_(pa.string()), nullable=False),  # "image: reason" per unscored candidate
])

SCHEMAS = {
    "eval_prompts": EVAL_PROMPTS,
    "image_scores": IMAGE_SCORES,
    "rerank_choices": RERANK_CHOICES,
}
