-- Inputs: hashes (rid, phash, dhash; one node per distinct pHash, with its smallest rid's dHash), bands (band, hash_kind 'phash'|'dhash', shift, mask).
-- Output: one row per (band, value) bucket with its size; the caller caps buckets above $cap.
-- Parameters: $cap (a bucket larger than this is reported and left out of the candidate join).
SELECT b.band, b.hash_kind,
       ((CASE b.hash_kind WHEN 'phash' THEN h.phash ELSE h.dhash END) >> b.shift) & b.mask AS value,
       count(*) AS size
FROM (SELECT phash, arg_min(dhash, rid) AS dhash FROM hashes GROUP BY phash) h CROSS JOIN bands b
GROUP BY ALL
HAVING count(*) > $cap
ORDER BY size DESC, band, value
