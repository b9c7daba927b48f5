-- Inputs: duplicate_clusters, truth (group_id, image_uid, kind, transform, source_uid).
-- Output: one row of pair counts: predicted (same cluster), correct (same cluster and same truth
--         group or byte-identical), truth pairs, and per-kind planted/recovered counts.
-- Parameters: none. Images absent from the truth file are singleton groups.
WITH labelled AS (
    SELECT d.image_uid, d.cluster_id, d.exact_group,
           coalesce(t.group_id::VARCHAR, 'self:' || d.image_uid) AS truth_group
    FROM duplicate_clusters d LEFT JOIN (SELECT DISTINCT group_id, image_uid FROM truth) t USING (image_uid)
),
c AS (SELECT count(*) AS n FROM labelled GROUP BY cluster_id),
cg AS (SELECT count(*) AS n FROM labelled GROUP BY cluster_id, truth_group),
cs AS (SELECT count(*) AS n FROM labelled GROUP BY cluster_id, exact_group),
cgs AS (SELECT count(*) AS n FROM labelled GROUP BY cluster_id, truth_group, exact_group),
g AS (SELECT count(*) AS n FROM labelled GROUP BY truth_group),
planted AS (
    SELECT t.kind, t.image_uid, t.source_uid,
           d.cluster_id IS NOT NULL AND d.cluster_id = s.cluster_id AS recovered
    FROM truth t
    LEFT JOIN duplicate_clusters d ON d.image_uid = t.image_uid
    LEFT JOIN duplicate_clusters s ON s.image_uid = t.source_uid
    WHERE t.image_uid <> t.source_uid
      AND d.image_uid IS NOT NULL AND s.image_uid IS NOT NULL
)
SELECT
    (SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM c)::BIGINT AS predicted_pairs,
    (SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM cs)::BIGINT AS predicted_exact_pairs,
    (SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM cg)::BIGINT AS same_group_pairs,
    (SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM cgs)::BIGINT AS same_group_exact_pairs,
    (SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM g)::BIGINT AS truth_pairs,
    (SELECT count(*) FROM planted WHERE kind = 'exact')::BIGINT AS planted_exact,
    (SELECT count(*) FILTER (recovered) FROM planted WHERE kind = 'exact')::BIGINT AS recovered_exact,
    (SELECT count(*) FROM planted WHERE kind = 'near')::BIGINT AS planted_near,
    (SELECT count(*) FILTER (recovered) FROM planted WHERE kind = 'near')::BIGINT AS recovered_near
