-- Inputs: pairs, prompt_keys (caption, prompt_key), user_splits (user_id, home: the split ledger).
-- Output: every pair with prompt_key, its user's home split (from the ledger),
--         and drop_reason (prompt_conflict | cluster_conflict | NULL) with the conflicting keys as JSON
--         (evidence; NULL on kept rows).
--         A key (normalized prompt, duplicate cluster) belongs to one split (its owner); a row is kept
--         only if every key it carries is owned by its home split, so no key spans two splits.
-- Parameters: $owner_mode ('first_use' | 'heldout_wins').
WITH rows AS (
    SELECT p.*, k.prompt_key, h.home
    FROM pairs p JOIN prompt_keys k ON k.caption = p.caption JOIN user_splits h USING (user_id)
),
keys AS (
    SELECT pair_id, 'prompt' AS kind, prompt_key AS key, home, dt, created_at, ranking_id, pair_index FROM rows
    UNION ALL
    SELECT pair_id, 'cluster', cluster_0, home, dt, created_at, ranking_id, pair_index FROM rows
    UNION ALL
    SELECT pair_id, 'cluster', cluster_1, home, dt, created_at, ranking_id, pair_index FROM rows
),
owners AS (
    SELECT kind, key,
           CASE WHEN $owner_mode = 'first_use' THEN arg_min(home, (dt, created_at, ranking_id, pair_index))
                WHEN bool_or(home = 'test') THEN 'test'
                WHEN bool_or(home = 'validation') THEN 'validation'
                ELSE 'train' END AS owner
    FROM keys GROUP BY kind, key
),
conflicts AS (
    SELECT k.pair_id,
           list(DISTINCT struct_pack(kind := k.kind, key := k.key, owner := o.owner)) AS conflicts,
           bool_or(k.kind = 'prompt') AS prompt_conflict
    FROM keys k JOIN owners o USING (kind, key)
    WHERE o.owner <> k.home
    GROUP BY k.pair_id
)
SELECT r.*,
       CASE WHEN c.pair_id IS NULL THEN NULL WHEN c.prompt_conflict THEN 'prompt_conflict' ELSE 'cluster_conflict' END
           AS drop_reason,
       CASE WHEN c.pair_id IS NOT NULL   -- evidence only where a row is dropped (split_rejects)
            THEN to_json(struct_pack(home := r.home, conflicts := list_sort(c.conflicts)))::VARCHAR END AS evidence
FROM rows r LEFT JOIN conflicts c USING (pair_id)
ORDER BY r.ranking_id, r.pair_index
