-- Inputs: hashes (rid, phash, dhash, informative: only these are nodes), bands (band, hash_kind 'phash'|'dhash', shift, mask).
-- Output: one row per (band, value) bucket with its size in nodes (distinct pHashes, as sql/dedup_nodes.sql: a
--         pHash group is one node, in a dHash band's bucket once whichever of its dHashes put it there); the
--         caller caps buckets above $cap.
-- Parameters: $cap (a bucket larger than this is reported and left out of the candidate join).
WITH keyed AS (
    SELECT b.band, b.hash_kind, (p.phash >> b.shift) & b.mask AS value, p.phash
    FROM (SELECT DISTINCT phash FROM hashes WHERE informative) p JOIN bands b ON b.hash_kind = 'phash'
    UNION ALL
    SELECT DISTINCT b.band, b.hash_kind, (n.dhash >> b.shift) & b.mask AS value, n.phash
    FROM (SELECT DISTINCT phash, dhash FROM hashes WHERE informative) n JOIN bands b ON b.hash_kind = 'dhash'
)
SELECT band, hash_kind, value, count(*) AS size
FROM keyed
GROUP BY ALL
HAVING count(*) > $cap
ORDER BY size DESC, band, value
