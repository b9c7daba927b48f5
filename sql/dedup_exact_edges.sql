-- Inputs: hashes (rid, sha256, phash).
-- Output: edges (r0, r1, kind) linking every member of a byte-identical group (kind 'sha256') and of an
--         equal-pHash group (kind 'same_hash', e.g. blank images) to the group's smallest rid.
-- Parameters: none. Linear in the number of images, unlike a join inside one big bucket.
SELECT DISTINCT r0, r1, kind FROM (
    SELECT min(rid) OVER (PARTITION BY sha256) AS r0, rid AS r1, 'sha256' AS kind FROM hashes
    UNION ALL
    SELECT min(rid) OVER (PARTITION BY phash) AS r0, rid AS r1, 'same_hash' AS kind FROM hashes
)
WHERE r0 < r1
ORDER BY r0, r1, kind
