-- Distinct users (pseudonyms), prompts, rankings and images in each split.
-- Inputs: pairs. Output: split, pairs, rankings, users, prompts, images. Parameters: none.
-- `pairs` counts each pair once (a pair's two images are counted in `images` only: review rev25b).
WITH per_split AS (
    SELECT
        split,
        count(*) AS pairs,
        count(DISTINCT ranking_id) AS rankings,
        count(DISTINCT user_id) AS users,
        count(DISTINCT prompt_key) AS prompts
    FROM pairs
    GROUP BY split
),
images_per_split AS (
    SELECT split, count(DISTINCT image_uid) AS images
    FROM (
        SELECT split, image_0_uid AS image_uid FROM pairs
        UNION ALL
        SELECT split, image_1_uid AS image_uid FROM pairs
    )
    GROUP BY split
)
SELECT p.split, p.pairs, p.rankings, p.users, p.prompts, coalesce(i.images, 0) AS images
FROM per_split AS p
LEFT JOIN images_per_split AS i ON i.split IS NOT DISTINCT FROM p.split
ORDER BY list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], p.split), p.split
