-- Inputs: image_base (curation_images: one row per image_uid), rankings, image_features, image_rejects (every
--         partition), duplicate_clusters.
-- Output: image drop decisions (subject 'image', one row per image and reason): conflicting_image (one image_uid
--         exported on several days with different content: which export is true is unknown, so the image is
--         dropped, as conflicting_ranking drops a ranking), content_filtered, missing_image_row, feature_rejected,
--         missing_features, nsfw, nsfw_cluster (a flagged cluster mate: evidence the cluster, how many of its
--         members are flagged and the first $shown_flagged of them by image_uid).
-- Parameters: $nsfw_classes (VARCHAR[]), $nsfw_threshold (DOUBLE, compared as float32, as the scores are stored),
--             $shown_flagged (BIGINT).
WITH img AS (
    SELECT image_uid, model_id, n_variants, export_days FROM image_base
),
shown AS (
    SELECT DISTINCT unnest([image_0_uid, image_1_uid, image_2_uid, image_3_uid]) AS image_uid FROM rankings
),
universe AS (
    SELECT image_uid FROM img UNION SELECT image_uid FROM shown WHERE image_uid IS NOT NULL
),
feat AS (
    SELECT image_uid, arg_min(nsfw_detections, dt) AS detections FROM image_features GROUP BY image_uid
),
-- An image with features on any day is not feature_rejected: a reject of another day (a blob that was
-- missing when that day was fingerprinted, then landed and was fingerprinted with a later day) is stale,
-- and the image's features (its earliest row) are what every other rule and the publish use.
rej AS (
    SELECT image_uid,
           list(struct_pack(reason := reason, detail := detail, dt := strftime(dt, '%Y-%m-%d'))
                ORDER BY dt, reason, detail) AS rejects
    FROM image_rejects ANTI JOIN feat USING (image_uid) GROUP BY image_uid
),
-- scores are stored as float32 (image_features): each is compared, as float32, with the threshold rounded to float32,
-- so a score recorded as the threshold flags the image (0.7 is float32 0.69999999 < DOUBLE 0.7: review rev28d);
-- a threshold float32 holds exactly (0.5, the default) compares as before. The evidence rounds each score as a
-- DOUBLE: rounded as float32 it read 0.699999988079071, not 0.7
nsfw AS (
    SELECT image_uid,
           list_sort(list_transform(
               list_filter(detections, lambda d: list_contains($nsfw_classes::VARCHAR[], d.class)
                                                 AND CAST(d.score AS FLOAT) >= CAST($nsfw_threshold AS FLOAT)),
               lambda d: struct_pack(class := d.class, score := round(CAST(d.score AS DOUBLE), 4)))) AS hits
    FROM feat
),
flagged AS (SELECT image_uid, hits FROM nsfw WHERE len(hits) > 0),
-- the evidence of a cluster's nsfw_cluster rows names its first $shown_flagged flagged members (by image_uid) and
-- counts them all: every member's row naming every flagged member grew with the square of the cluster (review
-- rev28b: 2,000 near duplicates, half flagged, wrote ~12 MB of evidence; 16,000 took 3.1 GB)
flagged_clusters AS (
    SELECT c.cluster_id, count(*) AS flagged_count,
           list(c.image_uid ORDER BY c.image_uid)[1:$shown_flagged] AS flagged_members
    FROM duplicate_clusters c JOIN flagged f USING (image_uid)
    GROUP BY c.cluster_id
)
SELECT 'image' AS subject, image_uid AS subject_id, FALSE AS keep, 'conflicting_image' AS reason,
       to_json(struct_pack(export_days := export_days, variants := n_variants))::VARCHAR AS evidence
FROM img WHERE n_variants > 1
UNION ALL
SELECT 'image', image_uid, FALSE, 'content_filtered', to_json(struct_pack(model_id := model_id))::VARCHAR
FROM img WHERE model_id = 'CONTENT_FILTERED'
UNION ALL
SELECT 'image', u.image_uid, FALSE, 'missing_image_row', '{"detail":"shown in a ranking but absent from images"}'
FROM universe u ANTI JOIN img USING (image_uid)
UNION ALL
SELECT 'image', image_uid, FALSE, 'feature_rejected', to_json(struct_pack(rejects := rejects))::VARCHAR
FROM rej
UNION ALL
SELECT 'image', u.image_uid, FALSE, 'missing_features', '{"detail":"no image_features row and no image_rejects row"}'
FROM universe u ANTI JOIN feat USING (image_uid) ANTI JOIN rej USING (image_uid)
UNION ALL
SELECT 'image', image_uid, FALSE, 'nsfw',
       to_json(struct_pack(detections := hits, threshold := $nsfw_threshold))::VARCHAR
FROM flagged
UNION ALL
SELECT 'image', c.image_uid, FALSE, 'nsfw_cluster',
       to_json(struct_pack(cluster_id := c.cluster_id, flagged_count := fc.flagged_count,
                           flagged_members := fc.flagged_members))::VARCHAR
FROM duplicate_clusters c JOIN flagged_clusters fc USING (cluster_id)
ANTI JOIN flagged f ON f.image_uid = c.image_uid
ORDER BY subject_id, reason
