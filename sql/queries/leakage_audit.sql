-- Leakage between splits: users, prompts, images, duplicate clusters and image bytes seen in both.
-- Inputs: pairs (train, validation, test). Output: one row per split pair (split_a, split_b) with
-- shared_users, shared_prompts, shared_images, shared_clusters, shared_image_bytes; 0 = no leak.
WITH base AS (
    SELECT * FROM pairs WHERE split IN ('train', 'validation', 'test')
),
facts AS (
    SELECT DISTINCT split, 'user' AS kind, user_id AS value FROM base
    UNION SELECT DISTINCT split, 'prompt', prompt_key FROM base
    UNION SELECT DISTINCT split, 'image', image_0_uid FROM base
    UNION SELECT DISTINCT split, 'image', image_1_uid FROM base
    UNION SELECT DISTINCT split, 'cluster', cluster_0 FROM base
    UNION SELECT DISTINCT split, 'cluster', cluster_1 FROM base
    UNION SELECT DISTINCT split, 'bytes', sha256_0 FROM base
    UNION SELECT DISTINCT split, 'bytes', sha256_1 FROM base
),
split_pairs (split_a, split_b) AS (
    VALUES ('train', 'validation'), ('train', 'test'), ('validation', 'test')
),
shared AS (
    SELECT s.split_a, s.split_b, a.kind, count(*) AS n
    FROM split_pairs AS s
    JOIN facts AS a ON a.split = s.split_a
    JOIN facts AS b ON b.split = s.split_b AND b.kind = a.kind AND b.value = a.value
    GROUP BY ALL
)
SELECT
    s.split_a,
    s.split_b,
    coalesce(sum(n) FILTER (WHERE kind = 'user'), 0)::BIGINT AS shared_users,
    coalesce(sum(n) FILTER (WHERE kind = 'prompt'), 0)::BIGINT AS shared_prompts,
    coalesce(sum(n) FILTER (WHERE kind = 'image'), 0)::BIGINT AS shared_images,
    coalesce(sum(n) FILTER (WHERE kind = 'cluster'), 0)::BIGINT AS shared_clusters,
    coalesce(sum(n) FILTER (WHERE kind = 'bytes'), 0)::BIGINT AS shared_image_bytes
FROM split_pairs AS s
LEFT JOIN shared AS x USING (split_a, split_b)
GROUP BY s.split_a, s.split_b
ORDER BY list_position(['train', 'validation', 'test'], s.split_a), list_position(['train', 'validation', 'test'], s.split_b)
