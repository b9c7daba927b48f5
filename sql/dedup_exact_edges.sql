-- Inputs: hashes (rid, sha256, phash, informative).
-- Output: edges (r0, r1, kind) linking every member of a byte-identical group (kind 'sha256') and of an
--         equal-pHash group (kind 'same_hash', e.g. lossless re-encodes) to the group's smallest rid. Only
--         informative hashes form equal-pHash groups: every flat image (black, white, any colour) and a grey ramp
--         share one pHash, so an uninformative one is joined by its bytes (sha256) alone (review rev33u).
-- Parameters: none. Linear in the number of images, unlike a join inside one big bucket.
SELECT DISTINCT r0, r1, kind FROM (
    SELECT min(rid) OVER (PARTITION BY sha256) AS r0, rid AS r1, 'sha256' AS kind FROM hashes
    UNION ALL
    SELECT min(rid) OVER (PARTITION BY phash) AS r0, rid AS r1, 'same_hash' AS kind FROM hashes WHERE informative
)
WHERE r0 < r1
ORDER BY r0, r1, kind
