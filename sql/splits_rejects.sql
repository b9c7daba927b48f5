-- Inputs: split_assignments (splits_assign).
-- Output: split_rejects: the pairs dropped to keep splits leak-free, with their home split, the reason
--         (prompt_conflict before cluster_conflict) and the conflicting keys and their owners as JSON.
-- Parameters: none.
SELECT pair_id, ranking_id, user_id, prompt_key, home AS home_split, drop_reason AS reason, evidence
FROM split_assignments
WHERE drop_reason IS NOT NULL
ORDER BY ranking_id, pair_index
