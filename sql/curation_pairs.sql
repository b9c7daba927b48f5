-- Inputs: ranking_base, candidate_pairs, decisions, image_base (curation_images), image_features, duplicate_clusters,
--         user_pseudonyms (user_id, pseudonym), model_names (model_id, short_name).
-- Output: pairs: every candidate pair whose ranking and pair have no drop decision, in the released
--         Pick-a-Pic columns plus cluster ids, sha256s and training-JPEG keys.
-- Parameters: none. Unknown model ids fall back to the id without its organisation prefix.
WITH dropped_rankings AS (
    SELECT DISTINCT TRY_CAST(subject_id AS BIGINT) AS ranking_id FROM decisions WHERE subject = 'ranking' AND NOT keep
),
dropped_pairs AS (
    SELECT DISTINCT subject_id AS pair_id FROM decisions WHERE subject = 'pair' AND NOT keep
),
img AS (SELECT image_uid, model_id FROM image_base),
feat AS (
    SELECT image_uid, arg_min(sha256, dt) AS sha256, arg_min(train_jpg_key, dt) AS train_jpg_key
    FROM image_features GROUP BY image_uid
),
shown AS (
    SELECT image_0_uid AS image_uid FROM candidate_pairs UNION SELECT image_1_uid FROM candidate_pairs
),
-- everything a pair needs about one image, in one row: two joins per pair instead of six
per_image AS (
    SELECT s.image_uid, i.model_id,
           coalesce(m.short_name,
                    -- every SDXL beta engine (decisions.SDXL_ENGINE): stable-diffusion-xl-beta-v2-2-4 -> sdxl-beta-v2.2.4
                    CASE WHEN regexp_full_match(i.model_id, 'stable-diffusion-xl-beta-v[0-9]+(-[0-9]+)*')
                         THEN 'sdxl-beta-v' || replace(i.model_id[27:], '-', '.') END,
                    regexp_replace(i.model_id, '^.*/', '')) AS short_name,
           c.cluster_id, f.sha256, f.train_jpg_key
    FROM shown s
    LEFT JOIN img i USING (image_uid)
    LEFT JOIN model_names m USING (model_id)
    LEFT JOIN duplicate_clusters c USING (image_uid)
    LEFT JOIN feat f USING (image_uid)
)
SELECT cp.pair_id, cp.ranking_id, cp.pair_index,
       u.pseudonym AS user_id,
       r.prompt AS caption,
       r.created_at,
       cp.image_0_uid, cp.image_1_uid, cp.label_0, cp.label_1,
       CASE WHEN r.is_tie THEN NULL ELSE r.best_image_uid END AS best_image_uid,
       TRUE AS has_label,
       i0.model_id <> i1.model_id AS are_different,
       i0.short_name AS model_0, i1.short_name AS model_1,
       i0.cluster_id AS cluster_0, i1.cluster_id AS cluster_1,
       i0.sha256 AS sha256_0, i1.sha256 AS sha256_1,
       i0.train_jpg_key AS jpg_0_key, i1.train_jpg_key AS jpg_1_key,
       r.dt
FROM candidate_pairs cp
JOIN ranking_base r USING (ranking_id)
ANTI JOIN dropped_rankings USING (ranking_id)
ANTI JOIN dropped_pairs dp ON dp.pair_id = cp.pair_id
LEFT JOIN user_pseudonyms u ON u.user_id = r.user_id
LEFT JOIN per_image i0 ON i0.image_uid = cp.image_0_uid
LEFT JOIN per_image i1 ON i1.image_uid = cp.image_1_uid
ORDER BY cp.ranking_id, cp.pair_index
