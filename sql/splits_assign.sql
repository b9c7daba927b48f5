-- Inputs: pairs, prompt_keys (caption, prompt_key), user_splits (user_id, home: the split ledger),
--         key_pins (kind 'prompt' | 'image', key, owner: the stored owner pins of this salt),
--         cluster_images (cluster_id, image_uid: duplicate_clusters' members, or empty).
-- Output: every pair with prompt_key, its user's home split (from the ledger),
--         and drop_reason (prompt_conflict | cluster_conflict | NULL) with the conflicting keys as JSON
--         (evidence; NULL on kept rows): kind, key, owner ('conflict' for a cluster whose images are pinned to
--         two splits); drop_cause (for the report, not written: cluster_merge when a conflicting cluster's images
--         are pinned to two splits, else pinned when a conflicting key's owner is a stored pin, else computed).
--         A key (normalized prompt, duplicate cluster) belongs to one split (its owner); a row is kept
--         only if every key it carries is owned by its home split, so no key spans two splits.
--         Owner of a prompt: its pin, else computed from the rows ($owner_mode); an unpinned key no row would be
--         kept with is computed again from the rows rejected only for such keys (review rev36f). Owner of a cluster: the one split
--         its pinned member images are pinned to; 'conflict' (no split may use it) when they are pinned to two or
--         more splits (clusters published in different splits merged); else computed from the rows. A cluster's
--         members: the images the rows carry in it (image_0_uid in cluster_0, image_1_uid in cluster_1) and its
--         images in duplicate_clusters (an image whose rows left pairs still pins its cluster).
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
computed AS (
    SELECT kind, key,
           CASE WHEN $owner_mode = 'first_use' THEN arg_min(home, (dt, created_at, ranking_id, pair_index))
                WHEN bool_or(home = 'test') THEN 'test'
                WHEN bool_or(home = 'validation') THEN 'validation'
                ELSE 'train' END AS owner
    FROM keys GROUP BY kind, key
),
members AS (
    SELECT cluster_0 AS cluster, image_0_uid AS image_uid FROM rows
    UNION
    SELECT cluster_1, image_1_uid FROM rows
    UNION
    SELECT c.cluster_id, c.image_uid
    FROM cluster_images c SEMI JOIN computed k ON k.kind = 'cluster' AND k.key = c.cluster_id
),
pinned AS (
    SELECT 'prompt' AS kind, key, owner FROM key_pins WHERE kind = 'prompt'
    UNION ALL
    SELECT 'cluster', m.cluster, CASE WHEN count(DISTINCT p.owner) > 1 THEN 'conflict' ELSE min(p.owner) END
    FROM members m JOIN key_pins p ON p.kind = 'image' AND p.key = m.image_uid
    GROUP BY m.cluster
),
first_owners AS (
    SELECT c.kind, c.key, coalesce(p.owner, c.owner) AS owner, p.owner IS NOT NULL AS pinned
    FROM computed c LEFT JOIN pinned p USING (kind, key)
),
first_conflicts AS (
    SELECT k.pair_id, k.kind, k.key FROM keys k JOIN first_owners o USING (kind, key) WHERE o.owner <> k.home
),
-- review rev36f: an unpinned key no row is kept with (its first use rejected for another key, a cluster owned by
-- another split) owns nothing kept, and would reject every later row of it for no leak: it is owned again, by the
-- same mode, from the rows rejected for such keys alone (a row kept so far carries none of them and stays kept)
orphans AS (
    SELECT c.kind, c.key FROM first_conflicts c JOIN first_owners o USING (kind, key) WHERE NOT o.pinned
    EXCEPT
    SELECT kind, key FROM (SELECT * FROM keys SEMI JOIN first_conflicts USING (kind, key))
    ANTI JOIN first_conflicts USING (pair_id)
),
orphaned_rows AS (
    SELECT c.pair_id FROM first_conflicts c LEFT JOIN orphans o USING (kind, key)
    GROUP BY c.pair_id HAVING bool_and(o.key IS NOT NULL)
),
recomputed AS (
    SELECT kind, key,
           CASE WHEN $owner_mode = 'first_use' THEN arg_min(home, (dt, created_at, ranking_id, pair_index))
                WHEN bool_or(home = 'test') THEN 'test'
                WHEN bool_or(home = 'validation') THEN 'validation'
                ELSE 'train' END AS owner
    FROM keys SEMI JOIN orphaned_rows USING (pair_id) SEMI JOIN orphans USING (kind, key)
    GROUP BY kind, key
),
owners AS (
    SELECT o.kind, o.key, coalesce(r.owner, o.owner) AS owner, o.pinned
    FROM first_owners o LEFT JOIN recomputed r USING (kind, key)
),
conflicts AS (
    SELECT k.pair_id,
           list(DISTINCT struct_pack(kind := k.kind, key := k.key, owner := o.owner)) AS conflicts,
           bool_or(k.kind = 'prompt') AS prompt_conflict,
           CASE WHEN bool_or(o.owner = 'conflict') THEN 'cluster_merge' WHEN bool_or(o.pinned) THEN 'pinned'
                ELSE 'computed' END AS drop_cause
    FROM keys k JOIN owners o USING (kind, key)
    WHERE o.owner <> k.home
    GROUP BY k.pair_id
)
SELECT r.*,
       CASE WHEN c.pair_id IS NULL THEN NULL WHEN c.prompt_conflict THEN 'prompt_conflict' ELSE 'cluster_conflict' END
           AS drop_reason,
       CASE WHEN c.pair_id IS NOT NULL   -- evidence only where a row is dropped (split_rejects)
            THEN to_json(struct_pack(home := r.home, conflicts := list_sort(c.conflicts)))::VARCHAR END AS evidence,
       c.drop_cause
FROM rows r LEFT JOIN conflicts c USING (pair_id)
ORDER BY r.ranking_id, r.pair_index
