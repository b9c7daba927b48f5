-- One row per split of a published version (query view `splits_summary`).
-- Inputs: pairs (the version's sidecars), shards (its shard index). Output: schema splits_summary.
-- Parameters: none. A tie is a pair whose two labels are equal (0.5 / 0.5).
WITH per_split AS (
    SELECT
        split,
        count(*) AS num_pairs,
        count(DISTINCT ranking_id) AS num_rankings,
        count(DISTINCT user_id) AS num_users,
        count(DISTINCT prompt_key) AS num_prompts,
        count(*) FILTER (WHERE label_0 = label_1) AS num_ties,
        min(created_at) AS min_created_at,
        max(created_at) AS max_created_at
    FROM pairs
    GROUP BY split
),
images_per_split AS (
    SELECT split, count(DISTINCT image_uid) AS num_images
    FROM (
        SELECT split, image_0_uid AS image_uid FROM pairs
        UNION ALL
        SELECT split, image_1_uid AS image_uid FROM pairs
    )
    GROUP BY split
),
shards_per_split AS (
    SELECT split, count(*) AS num_shards, sum(num_bytes) AS num_bytes
    FROM shards
    GROUP BY split
)
SELECT
    p.split,
    p.num_pairs,
    p.num_rankings,
    p.num_users,
    p.num_prompts,
    p.num_ties,
    p.num_ties / p.num_pairs AS tie_rate,
    i.num_images,
    s.num_shards,
    s.num_bytes,
    p.min_created_at,
    p.max_created_at
FROM per_split AS p
JOIN images_per_split AS i USING (split)
JOIN shards_per_split AS s USING (split)
ORDER BY list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], p.split), p.split
