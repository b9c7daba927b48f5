-- Inputs: hashes (rid, phash, dhash, dhash_keyed).
-- Output: the nodes of the dHash-keyed near-duplicate search (pipelines.curation.dedup.dhash_keyed_links): one
--         node per distinct (pHash, dHash) of the dHash-keyed images (sql/dedup_hashes.sql), represented by its
--         smallest rid, ordered by rid. Images with an equal pair are linked by dedup_exact_edges.
-- Parameters: none.
SELECT min(rid) AS rid, phash, dhash
FROM hashes
WHERE dhash_keyed
GROUP BY phash, dhash
ORDER BY rid
