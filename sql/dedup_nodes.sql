-- Inputs: hashes (rid, phash, dhash).
-- Output: the nodes of the near-duplicate search: one node per distinct pHash value, represented by its
--         smallest rid, with one row per distinct dHash among its images, ordered by (rid, dhash). Images with
--         equal pHashes are linked by dedup_exact_edges; pipelines.curation.dedup.near_links bands the node's
--         pHash and every one of its dHashes and verifies candidates on the pHash. (One dHash per node, its
--         smallest rid's, made a pair found only by the dHash bands depend on which image of a pHash group had
--         the smallest uid: a later twin with a smaller uid split the cluster, review rev28b.)
--         Only informative hashes (sql/dedup_hashes.sql) are nodes: a flat image's pHash joins nothing.
-- Parameters: none.
SELECT min(min(rid)) OVER (PARTITION BY phash) AS rid, phash, dhash
FROM hashes
WHERE informative
GROUP BY phash, dhash
ORDER BY rid, dhash
