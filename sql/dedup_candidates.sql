-- Inputs: hashes (rid, phash, dhash), bands (band, hash_kind, shift, mask), giant_buckets (band, value).
-- Output: near-duplicate edges (r0 < r1) between distinct pHash values (each represented by its
--         smallest rid and that image's dHash) sharing a band value outside a giant bucket, verified
--         on the pHash distance (<= $k). Images with equal hashes are linked by dedup_exact_edges.
-- Parameters: $k (maximum pHash Hamming distance).
WITH nodes AS (SELECT min(rid) AS rid, phash, arg_min(dhash, rid) AS dhash FROM hashes GROUP BY phash),
band_values AS (
    SELECT (b.band::UBIGINT << 56)
           | (((CASE b.hash_kind WHEN 'phash' THEN h.phash ELSE h.dhash END) >> b.shift) & b.mask) AS key,
           h.rid, h.phash
    FROM nodes h CROSS JOIN bands b
),
open_values AS (
    SELECT v.* FROM band_values v
    ANTI JOIN (SELECT (band::UBIGINT << 56) | value AS key FROM giant_buckets) g USING (key)
),
candidates AS (
    SELECT a.rid AS r0, c.rid AS r1, a.phash AS p0, c.phash AS p1
    FROM open_values a JOIN open_values c ON a.key = c.key AND a.rid < c.rid
    WHERE bit_count(xor(a.phash, c.phash)) <= $k
)
SELECT DISTINCT c.r0, c.r1,
       bit_count(xor(c.p0, c.p1))::INTEGER AS phash_distance,
       bit_count(xor(h0.dhash, h1.dhash))::INTEGER AS dhash_distance
FROM candidates c
JOIN hashes h0 ON h0.rid = c.r0
JOIN hashes h1 ON h1.rid = c.r1
ORDER BY r0, r1
