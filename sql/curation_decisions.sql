-- Inputs: ranking_base (curation_rankings), image_base (curation_images), candidate_pairs, image_decisions,
--         duplicate_clusters,
--         banned_users (user_id), phrase_matches (ranking_id, phrase: curation_phrase_matches),
--         user_pseudonyms (user_id, pseudonym).
-- Output: the decisions table: image rows, ranking rows (banned_user, prompt_phrase, conflicting_ranking,
--         invalid_best_image, four_image_tie, all_pairs_dropped), pair rows (image_dropped, same_cluster,
--         mismatched_image), ranking_export rows (duplicate_ranking) and user rows (banned_user). One row per
--         subject and reason.
-- Parameters: $four_image_ties.
WITH image_mismatches AS (
    -- a shown image generated for another prompt or by another user than the ranking's (the app's control image,
    -- an export that joined the wrong rows): the caption does not describe it, so the pairs with it are dropped
    -- (a pair decision, review rev25f), the ranking's pairs between matching images kept; an image with
    -- conflicting exports has its own decision
    SELECT s.ranking_id, s.image_uid, i.prompt <> s.prompt AS prompt_differs, i.user_id <> s.user_id AS user_differs
    FROM (SELECT ranking_id, user_id, prompt, unnest(shown) AS image_uid FROM ranking_base WHERE n_variants = 1) s
    JOIN image_base i USING (image_uid)
    WHERE i.n_variants = 1 AND (i.prompt <> s.prompt OR i.user_id <> s.user_id)
),
ranking_reasons AS (
    SELECT ranking_id, 'conflicting_ranking' AS reason,
           to_json(struct_pack(export_days := export_days, variants := n_variants))::VARCHAR AS evidence
    FROM ranking_base WHERE n_variants > 1
    UNION ALL
    SELECT r.ranking_id, 'banned_user', to_json(struct_pack(user_id := p.pseudonym))::VARCHAR
    FROM ranking_base r SEMI JOIN banned_users b USING (user_id) JOIN user_pseudonyms p USING (user_id)
    UNION ALL
    SELECT ranking_id, 'prompt_phrase',
           to_json(struct_pack(phrases := list(phrase ORDER BY phrase)))::VARCHAR
    FROM phrase_matches
    GROUP BY ranking_id
    UNION ALL
    SELECT ranking_id, 'invalid_best_image',
           to_json(struct_pack(best_image_uid := best_image_uid, shown := shown))::VARCHAR
    FROM ranking_base
    WHERE n_variants = 1 AND NOT is_tie AND NOT coalesce(list_contains(shown, best_image_uid), FALSE)
    UNION ALL
    SELECT ranking_id, 'four_image_tie', to_json(struct_pack(shown := shown, policy := $four_image_ties))::VARCHAR
    FROM ranking_base
    WHERE n_variants = 1 AND is_tie AND len(shown) > 2 AND $four_image_ties = 'drop'
),
live_pairs AS (
    SELECT cp.* FROM candidate_pairs cp ANTI JOIN ranking_reasons rr USING (ranking_id)
),
pair_reasons AS (
    SELECT lp.pair_id, lp.ranking_id, 'same_cluster' AS reason,
           to_json(struct_pack(cluster_id := c0.cluster_id, image_0_uid := lp.image_0_uid,
                               image_1_uid := lp.image_1_uid))::VARCHAR AS evidence
    FROM live_pairs lp
    JOIN duplicate_clusters c0 ON c0.image_uid = lp.image_0_uid
    JOIN duplicate_clusters c1 ON c1.image_uid = lp.image_1_uid
    WHERE c0.cluster_id = c1.cluster_id
    UNION ALL
    SELECT lp.pair_id, lp.ranking_id, 'image_dropped',
           to_json(struct_pack(images := list(struct_pack(image_uid := d.subject_id, reason := d.reason)
                                              ORDER BY d.subject_id, d.reason)))::VARCHAR
    FROM (SELECT pair_id, ranking_id, image_0_uid AS image_uid FROM live_pairs
          UNION
          SELECT pair_id, ranking_id, image_1_uid FROM live_pairs) lp
    JOIN image_decisions d ON d.subject_id = lp.image_uid AND NOT d.keep   -- an equi-join, not a nested loop
    GROUP BY lp.pair_id, lp.ranking_id
    UNION ALL
    SELECT lp.pair_id, lp.ranking_id, 'mismatched_image',
           to_json(struct_pack(images := list(struct_pack(image_uid := m.image_uid, prompt_differs := m.prompt_differs,
                                                          user_differs := m.user_differs)
                                              ORDER BY lp.pos)))::VARCHAR
    FROM (SELECT pair_id, ranking_id, 0 AS pos, image_0_uid AS image_uid FROM live_pairs
          UNION ALL
          SELECT pair_id, ranking_id, 1, image_1_uid FROM live_pairs) lp
    JOIN image_mismatches m ON m.ranking_id = lp.ranking_id AND m.image_uid = lp.image_uid
    GROUP BY lp.pair_id, lp.ranking_id
),
ranking_pair_counts AS (
    SELECT r.ranking_id,
           count(DISTINCT lp.pair_id) AS candidates,
           count(DISTINCT pr.pair_id) AS dropped,
           list(DISTINCT pr.reason ORDER BY pr.reason) FILTER (pr.reason IS NOT NULL) AS reasons
    FROM ranking_base r
    ANTI JOIN ranking_reasons rr USING (ranking_id)
    LEFT JOIN live_pairs lp ON lp.ranking_id = r.ranking_id
    LEFT JOIN pair_reasons pr ON pr.pair_id = lp.pair_id
    GROUP BY r.ranking_id
),
decided AS (
    SELECT subject, subject_id, keep, reason, evidence FROM image_decisions
    UNION ALL
    SELECT 'ranking', ranking_id::VARCHAR, FALSE, reason, evidence FROM ranking_reasons
    UNION ALL
    SELECT 'pair', pair_id, FALSE, reason, evidence FROM pair_reasons
    UNION ALL
    SELECT 'ranking', ranking_id::VARCHAR, FALSE,
           CASE WHEN candidates = 0 THEN 'no_candidate_pairs' ELSE 'all_pairs_dropped' END,
           to_json(struct_pack(candidate_pairs := candidates, pair_reasons := coalesce(reasons, [])))::VARCHAR
    FROM ranking_pair_counts WHERE dropped = candidates
    UNION ALL
    SELECT 'ranking_export', r.ranking_id::VARCHAR || '@' || day, FALSE, 'duplicate_ranking',
           to_json(struct_pack(ranking_id := r.ranking_id, kept_export_day := r.export_days[1],
                               export_day := day))::VARCHAR
    FROM (SELECT ranking_id, export_days, unnest(export_days[2:]) AS day FROM ranking_base WHERE n_variants = 1) r
    UNION ALL
    SELECT 'user', p.pseudonym, FALSE, 'banned_user',
           to_json(struct_pack(rankings := count(*)))::VARCHAR
    FROM ranking_base r SEMI JOIN banned_users b USING (user_id) JOIN user_pseudonyms p USING (user_id)
    GROUP BY p.pseudonym
)
SELECT DISTINCT subject, subject_id, keep, reason, evidence FROM decided
ORDER BY subject, subject_id, reason, evidence
