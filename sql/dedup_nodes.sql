-- Inputs: hashes (rid, phash, dhash).
-- Output: the nodes of the near-duplicate search: one row per distinct pHash value, represented by its
--         smallest rid and that image's dHash, ordered by rid. Images with equal pHashes are linked by
--         dedup_exact_edges; pipelines.curation.dedup.near_links bands these nodes and verifies candidates.
-- Parameters: none.
SELECT min(rid) AS rid, phash, arg_min(dhash, rid) AS dhash
FROM hashes
GROUP BY phash
ORDER BY rid
