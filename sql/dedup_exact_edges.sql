-- Inputs: hashes (rid, sha256, phash, dhash, informative, dhash_keyed).
-- Output: edges (r0, r1, kind) linking every member of a byte-identical group (kind 'sha256') and of an
--         equal-hash group (kind 'same_hash', e.g. lossless re-encodes) to the group's smallest rid. An informative
--         pHash groups by the pHash; a dHash-keyed one (sql/dedup_hashes.sql) by the pHash and the dHash together.
--         An image with neither (every flat image, black, white, any colour, and a grey ramp share one pHash) is
--         joined by its bytes (sha256) alone (review rev33u).
-- Parameters: none. Linear in the number of images, unlike a join inside one big bucket.
SELECT DISTINCT r0, r1, kind FROM (
    SELECT min(rid) OVER (PARTITION BY sha256) AS r0, rid AS r1, 'sha256' AS kind FROM hashes
    UNION ALL
    SELECT min(rid) OVER (PARTITION BY phash) AS r0, rid AS r1, 'same_hash' AS kind FROM hashes WHERE informative
    UNION ALL
    SELECT min(rid) OVER (PARTITION BY phash, dhash) AS r0, rid AS r1, 'same_hash' AS kind FROM hashes
    WHERE dhash_keyed AND NOT informative         -- an informative one is grouped by its pHash already
)
WHERE r0 < r1
ORDER BY r0, r1, kind
