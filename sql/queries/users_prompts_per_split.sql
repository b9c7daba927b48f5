-- Distinct users (pseudonyms), prompts, rankings and images in each split.
-- Inputs: pairs. Output: split, pairs, rankings, users, prompts, images. Parameters: none.
SELECT
    split,
    count(*) AS pairs,
    count(DISTINCT ranking_id) AS rankings,
    count(DISTINCT user_id) AS users,
    count(DISTINCT prompt_key) AS prompts,
    count(DISTINCT image_uid) AS images
FROM (
    SELECT split, ranking_id, user_id, prompt_key, image_0_uid AS image_uid FROM pairs
    UNION ALL
    SELECT split, ranking_id, user_id, prompt_key, image_1_uid AS image_uid FROM pairs
)
GROUP BY split
ORDER BY list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], split), split
