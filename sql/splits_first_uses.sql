-- Inputs: pairs, prompt_keys (caption, prompt_key).
-- Output: the rows where a user or a prompt_key appears for the first time, in history order
--         (dt, created_at, ranking_id, pair_index): user_id, prompt_key, user_first, prompt_first, dt.
--         The splits stage folds over them to assign new users (held-out splits filled to their minimum).
-- Parameters: none.
WITH rows AS (
    SELECT p.user_id, k.prompt_key, p.dt, p.created_at, p.ranking_id, p.pair_index
    FROM pairs p JOIN prompt_keys k ON k.caption = p.caption
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY user_id ORDER BY dt, created_at, ranking_id, pair_index) = 1 AS user_first,
           row_number() OVER (PARTITION BY prompt_key ORDER BY dt, created_at, ranking_id, pair_index) = 1 AS prompt_first
    FROM rows
)
SELECT user_id, prompt_key, user_first, prompt_first, dt
FROM ranked
WHERE user_first OR prompt_first
ORDER BY dt, created_at, ranking_id, pair_index
