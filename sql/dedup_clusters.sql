-- Inputs: hashes (rid, image_uid, sha256), labels (rid, label: component minimum rid).
-- Output: duplicate_clusters, one row per hashed image; cluster_id = smallest image_uid of its component.
-- Parameters: none.
WITH member AS (
    SELECT h.image_uid, h.sha256, coalesce(l.label, h.rid) AS label, h.rid
    FROM hashes h LEFT JOIN labels l ON l.rid = h.rid
)
SELECT m.image_uid,
       c.image_uid AS cluster_id,
       count(*) OVER (PARTITION BY m.label) AS cluster_size,
       m.rid = m.label AS is_canonical,
       m.sha256 AS exact_group
FROM member m JOIN hashes c ON c.rid = m.label
ORDER BY m.image_uid
