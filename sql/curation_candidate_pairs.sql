-- Inputs: ranking_base (curation_rankings: one row per ranking_id, shown = image uids in display order).
-- Output: candidate pairs (ranking_id, pair_index, pair_id, image_0_uid, image_1_uid, label_0, label_1)
--         before any drop decision. 2 images: one pair. 4 images with a choice: the chosen image against
--         each other shown image. 4-image tie: all 6 pairs as ties, or none when $four_image_ties = 'drop'.
-- Parameters: $four_image_ties ('all_pairs' | 'drop'). Image order within a pair = display order.
WITH shown AS (
    SELECT ranking_id, unnest(range(len(shown))) AS pos, unnest(shown) AS image_uid
    FROM ranking_base
    WHERE n_variants = 1
),
pairs AS (
    SELECT a.ranking_id, a.pos AS pos_0, b.pos AS pos_1, a.image_uid AS image_0_uid, b.image_uid AS image_1_uid,
           r.is_tie, r.best_image_uid
    FROM shown a
    JOIN shown b ON a.ranking_id = b.ranking_id AND a.pos < b.pos
    JOIN ranking_base r ON r.ranking_id = a.ranking_id
    WHERE (r.is_tie AND (len(r.shown) = 2 OR $four_image_ties = 'all_pairs'))
       OR (NOT r.is_tie AND (a.image_uid = r.best_image_uid OR b.image_uid = r.best_image_uid))
)
SELECT ranking_id,
       (row_number() OVER (PARTITION BY ranking_id ORDER BY pos_0, pos_1) - 1)::TINYINT AS pair_index,
       ranking_id::VARCHAR || '_' || pair_index::VARCHAR AS pair_id,
       image_0_uid, image_1_uid,
       CASE WHEN is_tie THEN 0.5 WHEN image_0_uid = best_image_uid THEN 1.0 ELSE 0.0 END AS label_0,
       CASE WHEN is_tie THEN 0.5 WHEN image_1_uid = best_image_uid THEN 1.0 ELSE 0.0 END AS label_1
FROM pairs
ORDER BY ranking_id, pair_index
