-- Inputs: split_assignments (splits_assign).
-- Output: split_pairs: kept rows under their home split, plus validation_unique / test_unique (one labelled
--         row per prompt_key, the row with the smallest salted digest; up to $unique_prompts prompts, chosen
--         by salted prompt digest) repeating their parent rows; num_example_per_prompt within each split.
-- Parameters: $salt, $unique_prompts.
WITH kept AS (
    SELECT * EXCLUDE (home, drop_reason, evidence, drop_cause), home AS split FROM split_assignments WHERE drop_reason IS NULL
),
one_per_prompt AS (
    SELECT * FROM kept
    WHERE split IN ('validation', 'test') AND has_label
    QUALIFY row_number() OVER (PARTITION BY split, prompt_key ORDER BY sha256($salt || '|row|' || pair_id), pair_id) = 1
),
uniq AS (
    SELECT * REPLACE (split || '_unique' AS split) FROM one_per_prompt
    QUALIFY row_number() OVER (PARTITION BY split ORDER BY sha256($salt || '|prompt|' || prompt_key), prompt_key)
            <= $unique_prompts
),
all_rows AS (SELECT * FROM kept UNION ALL SELECT * FROM uniq)
SELECT * EXCLUDE (split_order), count(*) OVER (PARTITION BY split, prompt_key) AS num_example_per_prompt
FROM (
    SELECT *, list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], split) AS split_order
    FROM all_rows
)
ORDER BY split_order, ranking_id, pair_index
